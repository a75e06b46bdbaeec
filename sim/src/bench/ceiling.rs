//! The database's own ceiling for what a sale writes, measured with no gateway in between.
//!
//! A sale in posbridge's journal makes two durable (fsynced) commits: creating the order (one
//! transaction: the order row and its event) and paying it (one transaction: the idempotency
//! claim, the order and the payer's and merchant's accounts locked, both balances moved, two
//! postings, the order marked paid, its event, the attempt, the stored result). Everything else
//! the gateway reads (terminal, merchant, wallet app, order lookups, the held result query) runs
//! in read-only transactions whose commit writes nothing to the log.
//!
//! This module replays exactly those two write transactions, with rows of the same size, in a
//! private scratch copy of the journal (a PostgreSQL schema created by the same migrations, or
//! a SQLite file beside the journal's), from the same number of client connections, as fast as
//! they go; then drops the scratch copy. The gateway's rate divided by this one is the share of
//! the database's limit the gateway reaches.

use super::report::{Histograms, Latency, Step};
use anyhow::Context;
use posbridge::domain::money::Money;
use posbridge::store::journal::{self, JournalConfig, Store, Tx, new_id, now_ms};
use posbridge::store::ledger::{self, AccountKind, NewAccount, TransferOutcome};
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// Durable commits per sale in posbridge's journal (create, pay).
pub const COMMITS_PER_SALE: u32 = 2;

/// How much to write.
#[derive(Debug, Clone, Copy)]
pub enum Limit {
    /// This many sales' worth.
    Count(u64),
    /// For this long.
    Duration(Duration),
}

/// The measured ceiling.
#[derive(Debug, Clone, Serialize)]
pub struct Ceiling {
    /// `postgres` or `sqlite`.
    pub backend: String,
    /// Client connections used (as many as the gateway's journal could use for the load).
    pub connections: usize,
    /// Durable commits per sale.
    pub commits_per_sale: u32,
    /// The server's `synchronous_commit` (PostgreSQL) or `synchronous` pragma (SQLite).
    pub synchronous: String,
    /// Sales' worth of writes done.
    pub sales: u64,
    /// Wall time, seconds.
    pub elapsed_s: f64,
    /// Sales' worth of writes per second.
    pub sales_per_s: f64,
    /// Commits per second.
    pub commits_per_s: f64,
    /// Time of one sale's two write transactions, from the database alone: what posbridge's
    /// sale latency is to be compared with.
    pub latency: Latency,
    /// Caveat, if any (SQLite).
    pub note: Option<String>,
}

/// Measures the ceiling on the database of `journal`.
pub async fn measure(
    journal: &JournalConfig,
    connections: usize,
    accounts: usize,
    payload_len: usize,
    limit: Limit,
) -> anyhow::Result<Ceiling> {
    let scratch = Scratch::create(journal, connections).await?;
    let outcome = run(&scratch, connections, accounts.max(1), payload_len, limit).await;
    let dropped = scratch.drop().await;
    let mut ceiling = outcome?;
    dropped.context("dropping the ceiling's scratch copy")?;
    if journal.url.is_none() {
        ceiling.note = Some(
            "SQLite: one writer at a time; the ceiling is meaningful with PostgreSQL (journal.url)"
                .into(),
        );
    }
    Ok(ceiling)
}

/// The private copy of the journal's tables the ceiling writes to.
struct Scratch {
    store: Store,
    sqlite_file: Option<String>,
    backend: &'static str,
}

impl Scratch {
    async fn create(journal: &JournalConfig, connections: usize) -> anyhow::Result<Scratch> {
        let id = &new_id()[..12];
        let (config, sqlite_file, backend) = match &journal.url {
            Some(_) => (
                JournalConfig {
                    schema: format!("posbridge_ceiling_{id}"),
                    pool_size: connections.max(1),
                    ..journal.clone()
                },
                None,
                "postgres",
            ),
            None if journal.sqlite_path == ":memory:" => (journal.clone(), None, "sqlite"),
            None => {
                let path = format!("{}.ceiling-{id}", journal.sqlite_path);
                (
                    JournalConfig {
                        sqlite_path: path.clone(),
                        ..journal.clone()
                    },
                    Some(path),
                    "sqlite",
                )
            }
        };
        let store = journal::open(&config)
            .await
            .context("creating the ceiling's scratch copy of the journal")?;
        Ok(Scratch {
            store,
            sqlite_file,
            backend,
        })
    }

    async fn drop(self) -> anyhow::Result<()> {
        if let Store::Postgres(pg) = &self.store {
            pg.drop_schema().await?;
        }
        drop(self.store);
        if let Some(path) = self.sqlite_file {
            for suffix in ["", "-wal", "-shm"] {
                let file = format!("{path}{suffix}");
                if std::path::Path::new(&file).exists() {
                    std::fs::remove_file(&file).with_context(|| format!("removing {file}"))?;
                }
            }
        }
        Ok(())
    }
}

async fn run(
    scratch: &Scratch,
    connections: usize,
    accounts: usize,
    payload_len: usize,
    limit: Limit,
) -> anyhow::Result<Ceiling> {
    let store = &scratch.store;
    let synchronous = synchronous_setting(store).await?;
    setup(store, accounts).await?;
    let started = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = match limit {
        Limit::Duration(d) => Some(start + d),
        Limit::Count(_) => None,
    };
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..connections.max(1) {
        let store = store.clone();
        let started = Arc::clone(&started);
        tasks.spawn(async move {
            let mut done = 0u64;
            let mut histograms = Histograms::empty();
            loop {
                let more = match (limit, deadline) {
                    (Limit::Count(n), _) => started.fetch_add(1, Ordering::Relaxed) < n,
                    (Limit::Duration(_), Some(deadline)) => Instant::now() < deadline,
                    (Limit::Duration(_), None) => false,
                };
                if !more {
                    return Ok::<(u64, Histograms), anyhow::Error>((done, histograms));
                }
                let began = Instant::now();
                sale(&store, worker % accounts, payload_len).await?;
                histograms.record(Step::Sale, began.elapsed());
                done += 1;
            }
        });
    }
    let mut sales = 0;
    let mut histograms = Histograms::new()?;
    while let Some(done) = tasks.join_next().await {
        let (done, worker) = done.context("ceiling worker")??;
        sales += done;
        histograms.add(&worker)?;
    }
    let elapsed_s = start.elapsed().as_secs_f64();
    let sales_per_s = if elapsed_s > 0.0 {
        sales as f64 / elapsed_s
    } else {
        0.0
    };
    Ok(Ceiling {
        backend: scratch.backend.into(),
        connections: connections.max(1),
        commits_per_sale: COMMITS_PER_SALE,
        synchronous,
        sales,
        elapsed_s,
        sales_per_s,
        commits_per_s: sales_per_s * f64::from(COMMITS_PER_SALE),
        latency: histograms.summary(Step::Sale),
        note: None,
    })
}

async fn synchronous_setting(store: &Store) -> anyhow::Result<String> {
    let sql = match store.dialect() {
        journal::Dialect::Postgres => "SHOW synchronous_commit",
        journal::Dialect::Sqlite => "PRAGMA synchronous",
    };
    let mut tx = store.begin().await?;
    let row = tx.query_opt(sql, &[]).await?;
    tx.commit().await?;
    Ok(match row {
        Some(row) => row
            .text(0)
            .or_else(|_| row.i64(0).map(|level| format!("level {level}")))?,
        None => "unknown".into(),
    })
}

/// A merchant (with a terminal-less merchant row, as orders reference merchants) and a payer
/// per account slot.
async fn setup(store: &Store, accounts: usize) -> anyhow::Result<()> {
    let mut tx = store.begin().await?;
    for slot in 0..accounts {
        let mid = format!("{:015}", slot + 1);
        tx.execute(
            "INSERT INTO merchants (mid, name, city, mcc, country, currency, account_id, created_at_ms) \
             VALUES ($1, 'CEILING SHOP', 'BEIJING', '5411', 'CN', 156, $2, $3)",
            &[mid.as_str().into(), merchant_account(slot).into(), now_ms().into()],
        )
        .await?;
        for (account_id, kind, pan_hash) in [
            (merchant_account(slot), AccountKind::Merchant, None),
            (
                payer_account(slot),
                AccountKind::Payer,
                Some(format!("ceiling-{slot}").into_bytes()),
            ),
        ] {
            ledger::create_account(
                &mut tx,
                &NewAccount {
                    account_id,
                    kind,
                    holder: "CEILING".into(),
                    pan_truncated: pan_hash.as_ref().map(|_| "622202*********0123".to_owned()),
                    pan_hash,
                    opening: Money {
                        amount_minor: 1_000_000_000_000,
                        currency: 156,
                    },
                    pvv: None,
                    pvki: None,
                    app_id: None,
                },
            )
            .await?;
        }
    }
    tx.commit().await?;
    Ok(())
}

fn merchant_account(slot: usize) -> String {
    format!("ceiling-merchant-{slot}")
}

fn payer_account(slot: usize) -> String {
    format!("ceiling-payer-{slot}")
}

/// The two write transactions of one sale, statement for statement as the order service
/// issues them (see `orders::service`: `create` and `pay`).
async fn sale(store: &Store, slot: usize, payload_len: usize) -> anyhow::Result<()> {
    let order_id = new_id();
    let reference = new_id();
    let mid = format!("{:015}", slot + 1);
    let payload = "X".repeat(payload_len.max(64));
    let now = now_ms();

    let mut tx = store.begin().await?;
    tx.query_opt(
        "INSERT INTO orders (order_id, origin, mid, tid, operator, acquirer, txn_type, batch, voucher, amount_minor, \
         currency, reference, payload, state, created_at_ms, expires_at_ms, updated_at_ms) \
         VALUES ($1, 'gateway-code', $2, '90000001', '01', '48020000', '00', $3, $4, 1, 156, $5, $6, 'CREATED', $7, $8, $7) \
         ON CONFLICT DO NOTHING RETURNING order_id",
        &[
            order_id.as_str().into(),
            mid.as_str().into(),
            order_id[..6].into(),
            order_id[6..12].into(),
            reference.as_str().into(),
            payload.into(),
            now.into(),
            (now + 120_000).into(),
        ],
    )
    .await?;
    event(&mut tx, &order_id, None, "CREATED", "created").await?;
    read_order(&mut tx, &order_id, "").await?;
    tx.commit().await?;

    let mut tx = store.begin().await?;
    let idem_key = new_id();
    tx.execute(
        "INSERT INTO idempotency (app_id, idem_key, request_hash, created_at_ms) VALUES ('bench-wallet', $1, $2, $3) ON CONFLICT DO NOTHING",
        &[idem_key.as_str().into(), vec![0x5a; 32].into(), now_ms().into()],
    )
    .await?;
    let lock = tx.for_update();
    tx.query_opt(
        &format!("SELECT request_hash, response FROM idempotency WHERE app_id = 'bench-wallet' AND idem_key = $1{lock}"),
        &[idem_key.as_str().into()],
    )
    .await?;
    read_order(&mut tx, &order_id, lock).await?;
    tx.query_opt(
        &format!("SELECT account_id FROM accounts WHERE pan_hash = $1 AND kind = 'payer'{lock}"),
        &[format!("ceiling-{slot}").into_bytes().into()],
    )
    .await?;
    let amount = Money {
        amount_minor: 1,
        currency: 156,
    };
    let moved = ledger::transfer(
        &mut tx,
        &order_id,
        &payer_account(slot),
        &merchant_account(slot),
        amount,
        "sale",
    )
    .await?;
    anyhow::ensure!(moved == TransferOutcome::Done, "ceiling transfer refused");
    tx.execute(
        "UPDATE orders SET state = 'PAID', response_code = '00', rrn = $2, auth_code = $3, payer_account_id = $4, \
         payer_pan_masked = $5, updated_at_ms = $6 WHERE order_id = $1 AND state = 'CREATED'",
        &[
            order_id.as_str().into(),
            // RRNs are unique per acquirer, as the gateway's are.
            format!("{:012}", rand::random::<u64>() % 1_000_000_000_000).into(),
            "123456".into(),
            payer_account(slot).into(),
            "622202*********0123".into(),
            now_ms().into(),
        ],
    )
    .await?;
    event(&mut tx, &order_id, Some("CREATED"), "PAID", "paid").await?;
    tx.execute(
        "INSERT INTO attempts (attempt_id, order_id, reference, app_id, pan_truncated, pan_hash, amount_minor, currency, \
         response_code, reason, created_at_ms) VALUES ($1, $2, $3, 'bench-wallet', '622202*********0123', $4, 1, 156, '00', 'approved', $5)",
        &[
            new_id().into(),
            order_id.as_str().into(),
            reference.as_str().into(),
            vec![0xa5; 32].into(),
            now_ms().into(),
        ],
    )
    .await?;
    read_order(&mut tx, &order_id, "").await?;
    // The stored result is the payment's JSON: the order view (with its code) plus a little.
    tx.execute(
        "UPDATE idempotency SET response = $2 WHERE app_id = 'bench-wallet' AND idem_key = $1",
        &[
            idem_key.as_str().into(),
            "R".repeat(payload_len.max(64) + 700).into(),
        ],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

async fn event(
    tx: &mut Tx,
    order_id: &str,
    from: Option<&str>,
    to: &str,
    detail: &str,
) -> anyhow::Result<()> {
    tx.execute(
        "INSERT INTO order_events (event_id, order_id, from_state, to_state, detail, at_ms) VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            new_id().into(),
            order_id.into(),
            from.into(),
            to.into(),
            detail.into(),
            now_ms().into(),
        ],
    )
    .await?;
    if from.is_some() {
        // Announced after the commit, as the gateway's state changes are.
        tx.announce_order(order_id);
    }
    Ok(())
}

async fn read_order(tx: &mut Tx, order_id: &str, lock: &str) -> anyhow::Result<()> {
    let sql = if lock.is_empty() {
        "SELECT o.order_id, o.state, o.payload, m.name FROM orders o JOIN merchants m ON m.mid = o.mid WHERE o.order_id = $1".to_owned()
    } else {
        "SELECT o.order_id, o.state, o.payload, m.name FROM orders o JOIN merchants m ON m.mid = o.mid WHERE o.order_id = $1 FOR UPDATE OF o".to_owned()
    };
    tx.query_opt(&sql, &[order_id.into()]).await?;
    Ok(())
}
