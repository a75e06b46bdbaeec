//! The journal's limits on PostgreSQL: a pool that stays exhausted fails the request after
//! `pool_wait_timeout_ms` instead of waiting forever; `statement_timeout` is set on every
//! connection; and the URL's `sslmode` is honoured (this test server has no TLS, so `require`
//! must fail rather than silently connect in clear).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use posbridge::store::journal::{self, JournalError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_wait_timeout_statement_timeout_and_sslmode() {
    let mut journal = TestJournal::new(Backend::Postgres);
    journal.config.pool_size = 1;
    journal.config.pool_wait_timeout_ms = 200;
    journal.config.statement_timeout_ms = 1_500;
    let store = journal::open(&journal.config).await.unwrap();
    let mut held = store.begin().await.unwrap();
    let rows = held.query("SHOW statement_timeout", &[]).await.unwrap();
    assert_eq!(rows[0].text(0).unwrap(), "1500ms");
    let Err(error) = store.begin().await else {
        panic!("a second transaction got a connection from a pool of one");
    };
    assert!(matches!(error, JournalError::Unavailable(_)), "{error}");
    // A statement that runs past statement_timeout is cancelled by the server.
    let slow = held.query("SELECT pg_sleep(5)", &[]).await;
    assert!(slow.is_err(), "statement_timeout did not apply");
    drop(held);
    let url = journal.config.url.clone().unwrap();
    let mut tls = journal.config.clone();
    tls.url = Some(format!("{url}?sslmode=require"));
    match journal::open(&tls).await {
        Ok(_) => panic!("sslmode=require connected to a server without TLS"),
        Err(error) => {
            let text = error.to_string().to_lowercase();
            assert!(text.contains("tls") || text.contains("ssl"), "{text}");
        }
    }
}

/// Regression (scale-out issue): the upstream STAN counter was per process and random at start,
/// so two gateways (or one after a restart) could send two sales with the same F11. STANs now
/// come from the journal: two gateways' stores drawing at once, then a third opened later (a
/// restart), never repeat one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_stans_are_unique_across_gateways_and_restarts() {
    use posbridge::store::counters::next_stan;
    let journal = TestJournal::new(Backend::Postgres);
    let a = journal::open(&journal.config).await.unwrap();
    let b = journal::open(&journal.config).await.unwrap();
    let draw = |store: posbridge::store::journal::Store| async move {
        let mut stans = Vec::new();
        for _ in 0..200 {
            let mut tx = store.begin().await.unwrap();
            stans.push(next_stan(&mut tx).await.unwrap());
            tx.commit().await.unwrap();
        }
        stans
    };
    let (first, second) = tokio::join!(draw(a), draw(b));
    let restarted = draw(journal::open(&journal.config).await.unwrap()).await;
    let mut all: Vec<String> = first.into_iter().chain(second).chain(restarted).collect();
    let drawn = all.len();
    assert!(all.iter().all(|s| s.len() == 6 && s != "000000"));
    all.sort();
    all.dedup();
    assert_eq!(all.len(), drawn, "a STAN was handed out twice");
}

/// Regression (scale-out issue): RRNs were twelve random digits, refused by the unique index
/// when two met (at a million sales the odds of one meeting are about 40%). They now come from
/// the journal: two gateways drawing at once and a third opened later never repeat one, on
/// both journals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rrns_are_unique_across_gateways_and_restarts() {
    use posbridge::store::counters::next_rrn;
    for backend in [Backend::Postgres, Backend::Sqlite] {
        let journal = TestJournal::new(backend);
        let draw = |store: posbridge::store::journal::Store| async move {
            let mut rrns = Vec::new();
            for _ in 0..200 {
                let mut tx = store.begin().await.unwrap();
                rrns.push(next_rrn(&mut tx).await.unwrap());
                tx.commit().await.unwrap();
            }
            rrns
        };
        let a = journal::open(&journal.config).await.unwrap();
        let first = draw(a).await;
        // SQLite belongs to one process: its "second gateway" is the same file opened again.
        let (second, third) = if backend == Backend::Postgres {
            let b = journal::open(&journal.config).await.unwrap();
            let c = journal::open(&journal.config).await.unwrap();
            tokio::join!(draw(b), draw(c))
        } else {
            let again = journal::open(&journal.config).await.unwrap();
            (draw(again.clone()).await, draw(again).await)
        };
        let mut all: Vec<String> = first.into_iter().chain(second).chain(third).collect();
        let drawn = all.len();
        assert!(
            all.iter()
                .all(|r| r.len() == 12 && r.bytes().all(|b| b.is_ascii_digit()))
        );
        all.sort();
        all.dedup();
        assert_eq!(all.len(), drawn, "{backend:?}: an RRN was handed out twice");
    }
}

/// Writes nobody reads the result of (`Tx::execute_later`) travel with the transaction's next
/// statement or its COMMIT on PostgreSQL, and reads sent ahead (`Tx::query_later`) with the
/// next statement. What that must not change: a later statement of the same transaction sees
/// them, in the order written; a deferred write that fails fails the
/// statement it travels with, or the COMMIT, and nothing of the transaction is kept; and a
/// transaction whose first statement fails leaves nothing behind either.
async fn deferred_writes_keep_order_and_fail_their_transaction(backend: Backend) {
    let journal = TestJournal::new(backend);
    let store = journal::open(&journal.config).await.unwrap();
    let insert = "INSERT INTO counters (name, value) VALUES ($1, $2)";
    let count = |store: journal::Store| async move {
        let rows = store
            .read(
                "SELECT COUNT(*) FROM counters WHERE name LIKE 'deferred-%'",
                &[],
            )
            .await
            .unwrap();
        rows[0].i64(0).unwrap()
    };
    // In order, and seen by the statement they travel with.
    let mut tx = store.begin().await.unwrap();
    tx.execute_later(insert, &["deferred-a".into(), 1i64.into()])
        .await
        .unwrap();
    tx.execute_later(
        "UPDATE counters SET value = value + 10 WHERE name = $1",
        &["deferred-a".into()],
    )
    .await
    .unwrap();
    let rows = tx
        .query(
            "SELECT value FROM counters WHERE name = $1",
            &["deferred-a".into()],
        )
        .await
        .unwrap();
    assert_eq!(rows[0].i64(0).unwrap(), 11, "both writes, in order");
    // Reads sent ahead travel in order too: each sees the writes queued before it, not after.
    let before = tx
        .query_later(
            "SELECT value FROM counters WHERE name = $1",
            &["deferred-a".into()],
        )
        .await
        .unwrap();
    tx.execute_later(
        "UPDATE counters SET value = value + 100 WHERE name = $1",
        &["deferred-a".into()],
    )
    .await
    .unwrap();
    let after = tx
        .query_later(
            "SELECT value FROM counters WHERE name = $1",
            &["deferred-a".into()],
        )
        .await
        .unwrap();
    let after = tx.rows(after).await.unwrap();
    let before = tx.rows(before).await.unwrap();
    assert_eq!(before[0].i64(0).unwrap(), 11);
    assert_eq!(after[0].i64(0).unwrap(), 111);
    tx.execute_later(insert, &["deferred-b".into(), 2i64.into()])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        count(store.clone()).await,
        2,
        "the write sent with COMMIT is kept"
    );
    // A failing deferred write (a duplicate key) fails the COMMIT it travels with.
    let mut tx = store.begin().await.unwrap();
    tx.execute(insert, &["deferred-c".into(), 3i64.into()])
        .await
        .unwrap();
    let duplicate = tx
        .execute_later(insert, &["deferred-a".into(), 4i64.into()])
        .await;
    match backend {
        // PostgreSQL has not sent it yet: the COMMIT reports it, and rolls back.
        Backend::Postgres => {
            duplicate.unwrap();
            assert!(tx.commit().await.is_err(), "the COMMIT must fail");
        }
        // SQLite runs it at once; the transaction is dropped (rolled back), which also frees
        // the embedded journal's one connection for the count below.
        Backend::Sqlite => {
            assert!(duplicate.is_err());
            drop(tx);
        }
    }
    assert_eq!(count(store.clone()).await, 2, "nothing of it was kept");
    // ... and the statement it travels with, and every statement after that.
    let mut tx = store.begin().await.unwrap();
    let duplicate = tx
        .execute_later(insert, &["deferred-a".into(), 5i64.into()])
        .await;
    if backend == Backend::Postgres {
        duplicate.unwrap();
        let next = tx
            .execute(insert, &["deferred-d".into(), 6i64.into()])
            .await;
        assert!(
            next.is_err(),
            "the statement after a failed write must fail"
        );
        let after = tx
            .execute(insert, &["deferred-e".into(), 7i64.into()])
            .await;
        assert!(after.is_err(), "the transaction is lost");
        assert!(tx.commit().await.is_err());
    } else {
        assert!(duplicate.is_err());
        drop(tx);
    }
    assert_eq!(count(store.clone()).await, 2, "nothing of it was kept");
    // A transaction that ran nothing commits nothing and returns its connection.
    store.begin().await.unwrap().commit().await.unwrap();
    assert_eq!(count(store).await, 2);
}
on_both_journals!(
    deferred_writes_keep_order_and_fail_their_transaction,
    super::deferred_writes_keep_order_and_fail_their_transaction
);

/// An order's change reaches the other gateways' listeners only once its transaction has
/// committed, announced by the gateway itself right after the COMMIT (one notification per
/// order, however often it was announced), and never for a transaction that rolled back. No
/// trigger on `order_events` notifies any more: a NOTIFY inside the transaction held
/// PostgreSQL's notification lock through the commit's flush, so payments committed one after
/// another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_change_is_announced_after_its_commit_and_only_then() {
    use posbridge::store::journal::db::{Announcement, listen_for_orders};
    let journal = TestJournal::new(Backend::Postgres);
    let store = journal::open(&journal.config).await.unwrap();
    let (heard_tx, mut heard) = tokio::sync::mpsc::unbounded_channel::<String>();
    let (resumed_tx, mut resumed) = tokio::sync::mpsc::unbounded_channel::<()>();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let settings = journal.config.clone();
    let listener = tokio::spawn(async move {
        listen_for_orders(
            &settings,
            move |payload| {
                let _ = heard_tx.send(payload.to_owned());
            },
            move || {
                let _ = resumed_tx.send(());
            },
            stop_rx,
        )
        .await;
    });
    resumed.recv().await.expect("the listener listens");
    // Rolled back: announced, but never heard.
    let mut tx = store.begin().await.unwrap();
    tx.announce_order("rolled-back");
    tx.execute("SELECT 1", &[]).await.unwrap();
    drop(tx);
    // Committed: each order once, in the order announced.
    let mut tx = store.begin().await.unwrap();
    tx.announce_order("committed-1");
    tx.announce_order("committed-2");
    tx.announce_order("committed-1");
    tx.execute("SELECT 1", &[]).await.unwrap();
    tx.commit().await.unwrap();
    let first = heard.recv().await.unwrap();
    let second = heard.recv().await.unwrap();
    let (first, second) = (Announcement::parse(&first), Announcement::parse(&second));
    assert_eq!(
        (first.order_id, second.order_id),
        ("committed-1", "committed-2")
    );
    // Each names its announcer: this store, which hears them as its own; another store on the
    // same journal does not.
    assert!(store.announced_here(&first) && store.announced_here(&second));
    let other = journal::open(&journal.config).await.unwrap();
    assert!(!other.announced_here(&first));
    assert!(!store.announced_here(&Announcement::parse("committed-1")));
    // A later commit's announcement is the next thing heard: nothing of the rollback came
    // between, nor a second committed-1.
    let mut tx = store.begin().await.unwrap();
    tx.announce_order("marker");
    tx.execute("SELECT 1", &[]).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        Announcement::parse(&heard.recv().await.unwrap()).order_id,
        "marker"
    );
    assert!(heard.try_recv().is_err(), "nothing else was announced");
    let triggers = store
        .read(
            "SELECT COUNT(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relname = 'order_events' AND n.nspname = current_schema() AND NOT t.tgisinternal",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        triggers[0].i64(0).unwrap(),
        0,
        "no trigger notifies inside the transaction"
    );
    stop.send(true).unwrap();
    listener.await.unwrap();
}
