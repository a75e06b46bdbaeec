//! A seeded simulation against the real thing: three `posbridge serve` processes on one
//! PostgreSQL journal, a simulated UnionPay host with seeded faults (silent, late, duplicate,
//! disconnect, bad MAC), terminals held on the processes and phones paying through any of them,
//! with injected database errors on commit (refused, and committed-but-unacknowledged) and
//! processes killed with SIGKILL and restarted in the middle of the traffic.
//!
//! Each round every lane (a terminal and its phone) takes one seeded step: a sale (half of them
//! with a card the host authorises, half on the gateway's own ledger), a void, a partial
//! refund or a terminal reversal of one of its sales. A terminal whose gateway died reconnects
//! to another and repeats its request byte for byte; a phone whose gateway died retries with the
//! same Idempotency-Key on another, as a load balancer would send it.
//!
//! After every round, from the journal: every transfer's postings sum to zero, every balance is
//! the sum of its postings and none is negative, no order is paid twice, nothing is refunded
//! beyond its sale, every order is in a state the lifecycle knows. At the end (every process up,
//! queues drained): every sale the host approved is paid here, every sale reversed here is
//! reversed at the host, the host's refunds are the advices delivered, and no reversal or advice
//! is left undelivered.
//!
//! The seed (printed) fixes every choice of the lanes and of the fault plan; where a kill lands
//! inside a request and which commit an injected error hits depend on timing, so a failing seed
//! replays the same plan, not always the same interleaving. `POSBRIDGE_CLUSTER_SIM_SEED` and
//! `POSBRIDGE_CLUSTER_SIM_ROUNDS` (default 500: 3,000 steps, about 1,800 sales) choose the run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use posbridge::domain::money::Money;
use posbridge::store::journal::Store;
use posbridge_hsm::{Pan, Pin};
use posbridge_sim::demo;
use posbridge_sim::host::{AccountConfig, LedgerState, RandomFaults, SimHost, SimHostConfig};
use posbridge_sim::terminal::{Receipt, TerminalClient, TerminalIdentity};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

const PROCESSES: usize = 3;
const LANES: usize = 6;
/// A card the host authorises (routed) and one on the gateway's own ledger.
const HOST_PAN: &str = demo::PAN;
const LOCAL_PAN: &str = "6250941234567890126";
const LOCAL_ACCOUNT: &str = "local-payer";
/// Injected on every process: every 97th COMMIT refused, every 89th unacknowledged.
const COMMIT_FAULTS: &str = "journal.commit.refused=every-97,journal.commit.lost=every-89";

fn config_text(journal: &TestJournal, host: SocketAddr) -> String {
    format!(
        "[journal]\nurl = \"{}\"\nschema = \"{}\"\n[terminal]\nlisten = \"127.0.0.1:0\"\nsign_on_interval_secs = 1\n\
         [wallet_api]\nlisten = \"127.0.0.1:0\"\ncard_payments_per_minute = 0\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
         [upstream]\nsale_timeout_ms = 400\nreversal_poll_ms = 100\nreversal_retry_initial_ms = 100\nreversal_retry_max_ms = 400\n\
         [[hosts]]\nname = \"cups\"\naddrs = [\"{host}\"]\ndialect = \"cups-host\"\nconnections = 1\nmac_key = \"zak/upstream\"\n\
         pin_key = \"zpk/upstream\"\nzmk = \"zmk/upstream\"\ndestination_id = \"0001000\"\nsource_id = \"48020000\"\n\
         backoff_initial_ms = 50\n[[routes]]\nprefix = \"622202\"\ntarget = \"cups\"\n",
        journal.config.url.as_deref().unwrap(),
        journal.config.schema,
    )
}

/// Three gateway processes, each either serving or dead.
struct Cluster {
    config: std::path::PathBuf,
    processes: Vec<Option<ServeProcess>>,
}

/// Where a live process answers.
#[derive(Clone)]
struct Endpoints {
    terminal: SocketAddr,
    wallet: String,
}

impl Cluster {
    fn start(config: std::path::PathBuf) -> Cluster {
        let processes = (0..PROCESSES)
            .map(|_| Some(Cluster::spawn(&config)))
            .collect();
        Cluster { config, processes }
    }

    fn spawn(config: &std::path::Path) -> ServeProcess {
        ServeProcess::start(config, &[("POSBRIDGE_FAILPOINTS", COMMIT_FAULTS)])
    }

    fn view(&self) -> Vec<Option<Endpoints>> {
        self.processes
            .iter()
            .map(|p| {
                p.as_ref().map(|p| Endpoints {
                    terminal: p.terminal,
                    wallet: p.wallet_url.clone(),
                })
            })
            .collect()
    }

    fn kill(&mut self, index: usize) {
        if let Some(mut process) = self.processes[index].take() {
            process.signal("KILL");
        }
    }

    fn restart_dead(&mut self) {
        for slot in &mut self.processes {
            if slot.is_none() {
                *slot = Some(Cluster::spawn(&self.config));
            }
        }
    }
}

#[derive(Debug, Clone)]
struct Sale {
    voucher: String,
    amount: i64,
    refunded: i64,
    open: bool,
}

struct Lane {
    rng: StdRng,
    identity: TerminalIdentity,
    spec: Arc<posbridge_codecs::Spec>,
    /// The terminal's own key store (its master key, and the working keys of its sign-ons).
    keys: Arc<dyn posbridge_hsm::SecurityModule>,
    terminal: Option<TerminalClient>,
    stan: u32,
    process: usize,
    sales: Vec<Sale>,
    payments: u64,
    /// What happened, for the run's summary line.
    tally: std::collections::BTreeMap<String, u64>,
}

impl Lane {
    fn live(&mut self, view: &[Option<Endpoints>]) -> usize {
        let live: Vec<usize> = (0..view.len()).filter(|&i| view[i].is_some()).collect();
        assert!(!live.is_empty(), "no gateway alive");
        if view[self.process].is_none() {
            self.process = live[self.rng.random_range(0..live.len())];
        }
        self.process
    }

    async fn connect(&mut self, view: &[Option<Endpoints>]) -> anyhow::Result<()> {
        let process = self.live(view);
        let endpoints = view[process].clone().unwrap();
        let terminal = TerminalClient::connect(
            endpoints.terminal,
            self.spec.clone(),
            self.identity.clone(),
            self.keys.clone(),
            self.stan,
        )
        .await?;
        self.terminal = Some(terminal);
        Ok(())
    }

    /// One terminal request; on a dead connection the terminal reconnects (to another gateway
    /// if its own died) and repeats the same bytes. An A0 (keys not known) signs on again.
    async fn call(&mut self, view: &[Option<Endpoints>], op: &Op) -> Option<Receipt> {
        let mut repeat: Option<Vec<u8>> = None;
        for _ in 0..4 {
            if self.terminal.is_none() && self.connect(view).await.is_err() {
                self.process = (self.process + 1) % view.len();
                continue;
            }
            let terminal = self.terminal.as_mut().unwrap();
            let outcome = match repeat.take() {
                Some(frame) => terminal.resend(frame).await,
                None => op.send(terminal).await,
            };
            self.stan = terminal.stan();
            match outcome {
                Ok(receipt) if receipt.response_code == "A0" => {
                    if self.sign_on().await.is_err() {
                        self.terminal = None;
                    }
                }
                Ok(receipt) => return Some(receipt),
                Err(error) => {
                    let first = format!("{error:#}");
                    self.note(&format!(
                        "terminal error: {}",
                        first.chars().take(80).collect::<String>()
                    ));
                    repeat = self.terminal.take().map(|t| t.last_frame().to_vec());
                    self.process = (self.process + 1) % view.len();
                }
            }
        }
        None
    }

    async fn sign_on(&mut self) -> anyhow::Result<()> {
        for _ in 0..40 {
            let terminal = self.terminal.as_mut().unwrap();
            let receipt = terminal.sign_on().await;
            self.stan = terminal.stan();
            let receipt = receipt?;
            if receipt.response_code == "00" {
                return Ok(());
            }
            // 65: signed on less than a second ago (sign_on_interval_secs).
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("sign-on refused")
    }

    async fn step(&mut self, view: &[Option<Endpoints>]) {
        let open: Vec<usize> = (0..self.sales.len())
            .filter(|&i| self.sales[i].open)
            .collect();
        let roll = self.rng.random_range(0..100);
        if open.is_empty() || roll < 64 {
            return self.sale(view).await;
        }
        let index = open[self.rng.random_range(0..open.len())];
        let sale = self.sales[index].clone();
        let cny = |amount_minor| Money {
            amount_minor,
            currency: CNY,
        };
        match roll {
            64..76 => {
                let receipt = self
                    .call(view, &Op::Void(sale.voucher, cny(sale.amount)))
                    .await;
                if receipt.is_some_and(|r| r.response_code == "00") {
                    self.sales[index].open = false;
                }
            }
            76..92 => {
                let left = sale.amount - sale.refunded;
                // Now and then more than is left: it must be refused.
                let amount = if self.rng.random_bool(0.1) {
                    left + 1
                } else {
                    self.rng.random_range(1..=left.max(1))
                };
                let receipt = self
                    .call(view, &Op::Refund(sale.voucher, cny(amount)))
                    .await;
                if receipt.is_some_and(|r| r.response_code == "00") {
                    self.sales[index].refunded += amount;
                    self.sales[index].open = self.sales[index].refunded < sale.amount;
                }
            }
            _ => {
                let receipt = self
                    .call(view, &Op::Reverse(sale.voucher, cny(sale.amount)))
                    .await;
                if receipt.is_some() {
                    self.sales[index].open = false;
                }
            }
        }
    }

    fn note(&mut self, what: &str) {
        *self.tally.entry(what.to_owned()).or_default() += 1;
    }

    async fn sale(&mut self, view: &[Option<Endpoints>]) {
        let amount = self.rng.random_range(100..5_000);
        let Some(order) = self
            .call(
                view,
                &Op::Order(Money {
                    amount_minor: amount,
                    currency: CNY,
                }),
            )
            .await
        else {
            return self.note("order: no answer");
        };
        let Some(payload) = order.payload.clone() else {
            return self.note(&format!("order: {}", order.response_code));
        };
        let pan = if self.rng.random_bool(0.5) {
            HOST_PAN
        } else {
            LOCAL_PAN
        };
        self.payments += 1;
        let key = format!("{}-{}", self.identity.tid, self.payments);
        let mut paid = None;
        for _ in 0..20 {
            let live: Vec<usize> = (0..view.len()).filter(|&i| view[i].is_some()).collect();
            let through = live[self.rng.random_range(0..live.len())];
            let wallet = wallet_for(&view[through].clone().unwrap().wallet);
            match wallet.pay(&payload, pan, Some(demo::PIN), &key, None).await {
                // 09: being authorised upstream (by the first try); ask again.
                Ok(answer) if answer.response_code() == Some("09") => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(answer) if answer.payment.is_some() => {
                    paid = answer.response_code().map(str::to_owned);
                    break;
                }
                // A 4xx without a result (the order expired meanwhile, ...): final.
                Ok(answer) if answer.status < 500 => break,
                // A 5xx (an injected commit error) or a dead gateway: the same key again.
                Ok(answer) => {
                    self.note(&format!("pay: retried after HTTP {}", answer.status));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(_) => {
                    self.note("pay: retried after a lost connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        self.note(&format!("pay: {}", paid.as_deref().unwrap_or("none")));
        if paid.as_deref() != Some("00") {
            return;
        }
        let Some(result) = self.call(view, &Op::Query(order.voucher.clone())).await else {
            return self.note("query: no answer");
        };
        self.note(&format!("query: {}", result.response_code));
        if result.response_code == "00" {
            self.sales.push(Sale {
                voucher: order.voucher,
                amount,
                refunded: 0,
                open: true,
            });
        }
    }
}

fn wallet_for(url: &str) -> posbridge_sim::wallet::WalletClient {
    let keys = posbridge_hsm::open(&posbridge_hsm::HsmConfig::default()).unwrap();
    posbridge_sim::wallet::WalletClient::new(url, demo::APP_ID, demo::APP_KEY, keys, "pek/wallet")
}

enum Op {
    Order(Money),
    Query(String),
    Void(String, Money),
    Refund(String, Money),
    Reverse(String, Money),
}

impl Op {
    async fn send(&self, terminal: &mut TerminalClient) -> anyhow::Result<Receipt> {
        match self {
            Op::Order(amount) => terminal.request_order(*amount).await,
            Op::Query(voucher) => terminal.query_result(voucher).await,
            Op::Void(voucher, amount) => terminal.void(voucher, *amount).await,
            Op::Refund(voucher, amount) => terminal.refund(voucher, *amount).await,
            Op::Reverse(voucher, amount) => terminal.reverse(voucher, *amount).await,
        }
    }
}

async fn count(store: &Store, sql: &str) -> i64 {
    store.read(sql, &[]).await.unwrap()[0].i64(0).unwrap()
}

/// The invariants that hold after every step, read from the journal.
async fn check_invariants(store: &Store, round: usize, seed: u64) {
    let at = format!("round {round}, seed {seed}");
    let checks = [
        (
            "a transfer's postings do not sum to zero",
            "SELECT COUNT(*) FROM (SELECT transfer_id FROM postings WHERE transfer_id IS NOT NULL \
             GROUP BY transfer_id HAVING SUM(amount_minor) <> 0) t",
        ),
        (
            "a posting outside any transfer",
            "SELECT COUNT(*) FROM postings WHERE transfer_id IS NULL",
        ),
        (
            "a balance is not the sum of its postings",
            "SELECT COUNT(*) FROM accounts a WHERE kind <> 'funding' AND balance_minor <> \
             (SELECT COALESCE(SUM(p.amount_minor), 0) FROM postings p WHERE p.account_id = a.account_id)",
        ),
        (
            "a negative balance",
            "SELECT COUNT(*) FROM accounts WHERE kind <> 'funding' AND balance_minor < 0",
        ),
        (
            "an order paid twice on the ledger",
            "SELECT COUNT(*) FROM (SELECT order_id FROM transfers WHERE kind = 'sale' GROUP BY order_id \
             HAVING COUNT(*) > 1) t",
        ),
        (
            "an order approved twice by the host",
            "SELECT COUNT(*) FROM (SELECT order_id FROM forwarded_sales WHERE state = 'APPROVED' \
             GROUP BY order_id HAVING COUNT(*) > 1) t",
        ),
        (
            "a local sale refunded beyond its amount",
            "SELECT COUNT(*) FROM orders o WHERE (SELECT COALESCE(SUM(t.amount_minor), 0) FROM transfers t \
             WHERE t.order_id = o.order_id AND t.kind IN ('refund', 'reversal')) > o.amount_minor",
        ),
        (
            "an upstream sale refunded beyond its amount",
            "SELECT COUNT(*) FROM orders o WHERE (SELECT COALESCE(SUM(a.amount_minor), 0) FROM advices a \
             JOIN forwarded_sales f ON f.forward_id = a.forward_id WHERE f.order_id = o.order_id \
             AND a.status <> 'CANCELLED') > o.amount_minor",
        ),
    ];
    for (what, sql) in checks {
        assert_eq!(count(store, sql).await, 0, "{what} ({at})");
    }
    for row in store
        .read("SELECT DISTINCT state FROM orders", &[])
        .await
        .unwrap()
    {
        let state = row.text(0).unwrap();
        assert!(
            posbridge::domain::order::OrderState::parse(&state).is_some(),
            "an order in state {state:?} ({at})"
        );
    }
}

/// At the end, with every queue drained: the journal and the host agree on every sale.
async fn reconcile(store: &Store, host: &posbridge_sim::host::SimHostHandle, seed: u64) {
    let ledger = host.ledger();
    let rows = store
        .read(
            "SELECT f.tid, f.stan, f.state, o.state, r.status, f.forward_id FROM forwarded_sales f \
             JOIN orders o ON o.order_id = f.order_id JOIN reversals r ON r.forward_id = f.forward_id",
            &[],
        )
        .await
        .unwrap();
    let mut approved_here = 0;
    for row in &rows {
        let (tid, stan) = (row.text(0).unwrap(), row.text(1).unwrap());
        let (forward, order, reversal) = (
            row.text(2).unwrap(),
            row.text(3).unwrap(),
            row.text(4).unwrap(),
        );
        let at_host = ledger.iter().find(|e| e.tid == tid && e.stan == stan);
        let what =
            format!("{tid}/{stan}: {forward}, order {order}, reversal {reversal} (seed {seed})");
        match reversal.as_str() {
            "DONE" => assert!(
                matches!(
                    at_host.map(|e| e.state),
                    None | Some(LedgerState::Reversed | LedgerState::ReversedUnseen)
                ),
                "reversed here, not at the host: {what}"
            ),
            "CANCELLED" if forward == "APPROVED" => {
                approved_here += 1;
                assert_eq!(
                    at_host.map(|e| e.state),
                    Some(LedgerState::Approved),
                    "approved here, not at the host: {what}"
                );
                assert_eq!(order, "PAID", "{what}");
                let advised = count(
                    store,
                    &format!(
                        "SELECT CAST(COALESCE(SUM(amount_minor), 0) AS BIGINT) FROM advices WHERE status = 'DONE' \
                         AND forward_id = '{}'",
                        row.text(5).unwrap()
                    ),
                )
                .await;
                assert_eq!(
                    at_host.unwrap().refunded_minor,
                    u64::try_from(advised).unwrap(),
                    "refunds here and at the host differ: {what}"
                );
            }
            "CANCELLED" => assert!(
                at_host.is_none(),
                "declined or never sent here, moved at the host: {what}"
            ),
            other => panic!("a reversal left {other}: {what}"),
        }
    }
    // STANs come from the journal: none repeats over three processes, their kills and restarts.
    let repeated = count(
        store,
        "SELECT COUNT(*) FROM (SELECT stan FROM forwarded_sales GROUP BY stan HAVING COUNT(*) > 1) t",
    )
    .await;
    assert_eq!(repeated, 0, "a sale STAN handed out twice (seed {seed})");
    let approved_at_host = ledger
        .iter()
        .filter(|e| e.state == LedgerState::Approved)
        .count();
    assert_eq!(
        approved_at_host, approved_here,
        "the host holds approvals the journal does not (seed {seed})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_gateways_with_kills_host_faults_and_commit_errors_keep_every_invariant() {
    let seed: u64 = std::env::var("POSBRIDGE_CLUSTER_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261201);
    let rounds: usize = std::env::var("POSBRIDGE_CLUSTER_SIM_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500);
    println!(
        "cluster simulation: seed {seed}, {rounds} rounds (POSBRIDGE_CLUSTER_SIM_SEED replays)"
    );
    let mut plan = StdRng::seed_from_u64(seed);
    let (host_addr, host) = SimHost::start(SimHostConfig {
        random_faults: Some(RandomFaults {
            seed,
            no_response: 0.02,
            late_response: 0.02,
            duplicate_response: 0.02,
            disconnect: 0.01,
            wrong_mac: 0.02,
        }),
        late_response_ms: 600,
        accounts: vec![AccountConfig {
            pan: HOST_PAN.into(),
            balance_minor: 1_000_000_000,
            pin: Some(demo::PIN.into()),
            pvv: None,
        }],
        ..SimHostConfig::default()
    })
    .await
    .unwrap();

    let journal = TestJournal::new(Backend::Postgres);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("posbridge.toml");
    std::fs::write(&config, config_text(&journal, host_addr)).unwrap();
    seed_demo(&config);
    seed_lanes_and_local_payer(&journal).await;
    let store = posbridge::store::journal::open(&journal.config)
        .await
        .unwrap();

    let mut cluster = Cluster::start(config);
    let spec = Arc::new(posbridge_codecs::Spec::builtin("cups-pos").unwrap());
    let mut lanes: Vec<Lane> = (0..LANES)
        .map(|n| Lane {
            rng: StdRng::seed_from_u64(seed ^ (n as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            identity: TerminalIdentity {
                tid: format!("300000{n:02}"),
                mid: demo::MID.into(),
                master_key: "tmk/demo".into(),
                operator: "01".into(),
                batch: "000001".into(),
            },
            spec: spec.clone(),
            keys: posbridge_hsm::open(&posbridge_hsm::HsmConfig::default()).unwrap(),
            terminal: None,
            stan: 100,
            process: n % PROCESSES,
            sales: Vec::new(),
            payments: 0,
            tally: Default::default(),
        })
        .collect();
    let view = cluster.view();
    for lane in &mut lanes {
        lane.connect(&view).await.unwrap();
        lane.sign_on().await.unwrap();
    }

    let mut kills = 0;
    for round in 0..rounds {
        let view = cluster.view();
        // The fault plan: now and then one gateway is killed in the middle of a round, and the
        // dead come back a few rounds later.
        let victim = (plan.random_bool(0.04) && view.iter().flatten().count() == PROCESSES)
            .then(|| plan.random_range(0..PROCESSES));
        let delay = Duration::from_millis(plan.random_range(0..40));
        let revive = plan.random_bool(0.2);
        let steps = futures_util::future::join_all(lanes.iter_mut().map(|l| l.step(&view)));
        let kill = async {
            if let Some(victim) = victim {
                tokio::time::sleep(delay).await;
                cluster.kill(victim);
                kills += 1;
            }
        };
        tokio::join!(steps, kill);
        if revive {
            cluster.restart_dead();
        }
        check_invariants(&store, round, seed).await;
    }

    cluster.restart_dead();
    wait_drained(&store, seed).await;
    check_invariants(&store, rounds, seed).await;
    reconcile(&store, &host, seed).await;
    let sales = count(
        &store,
        "SELECT COUNT(*) FROM orders WHERE state IN ('PAID', 'REVERSED')",
    )
    .await;
    let reversed = count(
        &store,
        "SELECT COUNT(*) FROM reversals WHERE status = 'DONE'",
    )
    .await;
    let advices = count(&store, "SELECT COUNT(*) FROM advices WHERE status = 'DONE'").await;
    println!(
        "seed {seed}: {rounds} rounds, {kills} kills, {sales} sales paid, {reversed} reversals and {advices} refund advices delivered"
    );
    let mut tally = std::collections::BTreeMap::<String, u64>::new();
    for lane in &lanes {
        for (what, n) in &lane.tally {
            *tally.entry(what.clone()).or_default() += n;
        }
    }
    println!("outcomes: {tally:?}");
    assert!(kills > 0, "the plan killed no gateway (seed {seed})");
    assert!(
        tally
            .keys()
            .any(|k| k.starts_with("pay: retried after HTTP 5")),
        "no injected commit error reached a phone (seed {seed})"
    );
    host.stop().await;
}

/// The lanes' terminals, and a payer on the gateway's own ledger that the demo wallet may use.
async fn seed_lanes_and_local_payer(journal: &TestJournal) {
    let gateway = posbridge::app::server::open(config(journal)).await.unwrap();
    let store = gateway.orders.store().clone();
    for n in 0..LANES {
        posbridge::registry::register_terminal(
            &store,
            &posbridge::registry::Terminal {
                tid: format!("300000{n:02}"),
                mid: demo::MID.into(),
                acquirer: "48020000".into(),
                master_key_label: "tmk/demo".into(),
                enabled: true,
                key_slot: 0,
            },
        )
        .await
        .unwrap();
    }
    posbridge::service::enrolment::register_payer(
        &gateway.orders,
        posbridge::service::enrolment::NewPayer {
            account_id: LOCAL_ACCOUNT.into(),
            holder: "Han Meimei".into(),
            pan: Pan::new(LOCAL_PAN).unwrap(),
            pin: Some(Pin::new(demo::PIN).unwrap()),
            opening: Money {
                amount_minor: 100_000_000,
                currency: CNY,
            },
            wallet_app: Some(demo::APP_ID.into()),
        },
        &gateway.config.keys.pvk,
    )
    .await
    .unwrap();
}

/// Waits until no reversal or advice is left to send (standby recovery and expired leases
/// included), then until nothing moves.
async fn wait_drained(store: &Store, seed: u64) {
    for _ in 0..1_200 {
        let pending = count(
            store,
            "SELECT (SELECT COUNT(*) FROM reversals WHERE status IN ('QUEUED', 'STANDBY')) + \
             (SELECT COUNT(*) FROM advices WHERE status = 'QUEUED')",
        )
        .await;
        if pending == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("reversals or advices still pending after two minutes (seed {seed})");
}
