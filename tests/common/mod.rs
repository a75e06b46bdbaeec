//! Shared set-up for the end-to-end tests: a journal on SQLite or on a private PostgreSQL schema
//! (dropped afterwards), the software security module, and a seeded merchant, terminal, payer
//! and wallet app.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use posbridge::app::server::{self, Gateway};
use posbridge::domain::money::Money;
use posbridge::infra::config::Config;
use posbridge::registry::{self, Merchant, Terminal, WalletApp};
use posbridge::service::enrolment::NewPayer;
use posbridge::service::orders::OrderService;
use posbridge::store::journal::{self, JournalConfig, Store};
use posbridge_hsm::{Pan, Pin, PinBlock, PinBlockFormat};

/// The `posbridge` command. It is built by the `posbridge-sim` package (the command runs the
/// demo and simulators too), so `CARGO_BIN_EXE_posbridge` exists only in that package's tests;
/// here it is found next to this test's own executable: `target/<profile>/deps/<test>` ->
/// `target/<profile>/posbridge`. Cargo does not build another package's binary for these tests:
/// `scripts/test` builds it first, and so must anyone running them by hand.
pub fn posbridge_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let profile_dir = exe
        .parent()
        .and_then(std::path::Path::parent)
        .expect("the test executable lives in target/<profile>/deps");
    let bin = profile_dir.join(format!("posbridge{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "{} is missing: build it with `cargo build -p posbridge-sim` (scripts/test does)",
        bin.display()
    );
    bin
}

/// Which journal a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A journal that cleans up after itself.
pub struct TestJournal {
    pub config: JournalConfig,
    _dir: Option<tempfile::TempDir>,
}

impl TestJournal {
    pub fn new(backend: Backend) -> TestJournal {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("journal.sqlite").display().to_string();
                TestJournal {
                    config: JournalConfig {
                        sqlite_path: path,
                        ..JournalConfig::default()
                    },
                    _dir: Some(dir),
                }
            }
            Backend::Postgres => {
                let url = std::env::var("DATABASE_URL")
                    .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
                let schema = format!("pbtest_{}", journal::new_id());
                TestJournal {
                    config: JournalConfig {
                        url: Some(url),
                        schema,
                        pool_size: 8,
                        ..JournalConfig::default()
                    },
                    _dir: None,
                }
            }
        }
    }
}

impl Drop for TestJournal {
    fn drop(&mut self) {
        let Some(url) = self.config.url.clone() else {
            return;
        };
        let settings = JournalConfig {
            pool_size: 1,
            ..self.config.clone()
        };
        // Drop the schema from a fresh runtime on its own thread: Drop cannot await, and the
        // test's runtime may be gone already.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                if let Ok(store) = journal::db::PgStore::connect(&url, &settings).await {
                    let _ = store.drop_schema().await;
                }
            });
        })
        .join();
    }
}

pub fn config(journal: &TestJournal) -> Config {
    let mut config = Config::default();
    config.journal = journal.config.clone();
    config.terminal.listen = "127.0.0.1:0".parse().unwrap();
    config.wallet_api.listen = "127.0.0.1:0".parse().unwrap();
    // The tests pay with one card many times a minute; the velocity test sets its own limit.
    config.wallet_api.card_payments_per_minute = 0;
    config.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
    config.gateway.poll_interval_ms = 50;
    config.gateway.expiry_sweep_ms = 50;
    // Tests sign the same terminal on from several clients; the limit has its own test.
    config.terminal.sign_on_interval_secs = 0;
    config
}

pub const MID: &str = "898310048160001";
pub const TID: &str = "10000001";
pub const PAYER_PAN: &str = "6222021234567890123";
pub const PAYER_PIN: &str = "1234";
pub const OPENING: i64 = 100_000;
pub const APP_ID: &str = "wallet-test";
pub const APP_KEY: &str = "pbk_test_wallet_key";
pub const CNY: u16 = 156;

pub struct Seeded {
    pub gateway: Gateway,
    pub orders: OrderService,
    pub store: Store,
}

pub async fn seeded(journal: &TestJournal) -> Seeded {
    let gateway = server::open(config(journal))
        .await
        .map_err(|e| format!("{e:#}"))
        .unwrap();
    seed(gateway).await
}

/// Registers the test merchant, terminal, payer and wallet app on an opened gateway.
pub async fn seed(gateway: Gateway) -> Seeded {
    let orders = gateway.orders.clone();
    let store = orders.store().clone();
    registry::register_merchant(
        &store,
        &Merchant {
            mid: MID.into(),
            name: "BEST TRANSPORT".into(),
            city: "BEIJING".into(),
            mcc: "4111".into(),
            country: "CN".into(),
            currency: CNY,
            account_id: String::new(),
            webhook_url: None,
        },
    )
    .await
    .unwrap();
    gateway
        .webhook_secrets()
        .set(&store, MID, "merchant-webhook-secret")
        .await
        .unwrap();
    registry::register_terminal(
        &store,
        &Terminal {
            tid: TID.into(),
            mid: MID.into(),
            acquirer: "48020000".into(),
            master_key_label: "tmk/demo".into(),
            enabled: true,
            key_slot: 0,
        },
    )
    .await
    .unwrap();
    registry::register_wallet_app(
        &store,
        &WalletApp {
            app_id: APP_ID.into(),
            name: "Test wallet".into(),
            pek_label: "pek/wallet".into(),
        },
        Some(APP_KEY.into()),
    )
    .await
    .unwrap();
    posbridge::service::enrolment::register_payer(
        &orders,
        NewPayer {
            account_id: "payer-1".into(),
            holder: "Li Lei".into(),
            pan: Pan::new(PAYER_PAN).unwrap(),
            pin: Some(Pin::new(PAYER_PIN).unwrap()),
            opening: Money {
                amount_minor: OPENING,
                currency: CNY,
            },
            wallet_app: Some(APP_ID.into()),
        },
        &gateway.config.keys.pvk,
    )
    .await
    .unwrap();
    Seeded {
        gateway,
        orders,
        store,
    }
}

/// What the phone does at PIN entry: a format 4 block under the wallet's AES PIN key.
pub async fn pin_block(orders: &OrderService, pin: &str, pan: &str) -> PinBlock {
    orders
        .security()
        .encrypt_pin(
            Pin::new(pin).unwrap(),
            Pan::new(pan).unwrap(),
            PinBlockFormat::Iso4,
            "pek/wallet".into(),
        )
        .await
        .unwrap()
}

/// Sum of all balances must equal the sum of all postings, per currency.
pub async fn assert_ledger_conserved(store: &Store) -> i64 {
    let mut tx = store.begin().await.unwrap();
    let totals = posbridge::store::ledger::totals(&mut tx).await.unwrap();
    tx.commit().await.unwrap();
    let mut sum = 0;
    for (currency, balances, postings) in totals {
        assert_eq!(
            balances, postings,
            "currency {currency}: balances {balances} != postings {postings}"
        );
        sum += balances;
    }
    sum
}

/// Declares one test per journal backend.
#[macro_export]
macro_rules! on_both_journals {
    ($name:ident, $body:path) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                $body($crate::common::Backend::Sqlite).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                $body($crate::common::Backend::Postgres).await;
            }
        }
    };
}

/// A gateway serving on loopback ports for one test.
pub struct Running {
    pub seeded: Seeded,
    pub terminal: std::net::SocketAddr,
    pub wallet_url: String,
    pub metrics: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    /// Stops the gateway gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

pub async fn start(journal: &TestJournal) -> Running {
    serve(seeded(journal).await).await
}

/// The demo terminal: its own software module holding the terminal master key.
pub async fn terminal_client(running: &Running) -> posbridge_sim::terminal::TerminalClient {
    let spec = std::sync::Arc::new(posbridge_codecs::Spec::builtin("cups-pos").unwrap());
    let module = posbridge_hsm::open(&posbridge_hsm::HsmConfig::default()).unwrap();
    posbridge_sim::terminal::TerminalClient::connect(
        running.terminal,
        spec,
        posbridge_sim::terminal::TerminalIdentity {
            tid: TID.into(),
            mid: MID.into(),
            master_key: "tmk/demo".into(),
            operator: "01".into(),
            batch: "000001".into(),
        },
        module,
        100,
    )
    .await
    .unwrap()
}

pub fn wallet_client(running: &Running) -> posbridge_sim::wallet::WalletClient {
    let module = posbridge_hsm::open(&posbridge_hsm::HsmConfig::default()).unwrap();
    posbridge_sim::wallet::WalletClient::new(
        &running.wallet_url,
        APP_ID,
        APP_KEY,
        module,
        "pek/wallet",
    )
}

/// Like [`start`], with the configuration adjusted first (e.g. upstream hosts).
pub async fn start_with(journal: &TestJournal, adjust: impl FnOnce(&mut Config)) -> Running {
    let mut config = config(journal);
    adjust(&mut config);
    let gateway = server::open(config)
        .await
        .map_err(|e| format!("{e:#}"))
        .unwrap();
    let seeded = seed(gateway).await;
    serve(seeded).await
}

async fn serve(seeded: Seeded) -> Running {
    let listeners = server::Listeners::bind(&seeded.gateway.config)
        .await
        .unwrap();
    let terminal = listeners.terminal.local_addr().unwrap();
    let wallet = listeners.wallet_api.local_addr().unwrap();
    let metrics = listeners.metrics.as_ref().unwrap().local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let gateway = seeded.gateway.clone();
    let task = tokio::spawn(server::run(gateway, listeners, async move {
        let _ = stopped.await;
    }));
    Running {
        seeded,
        terminal,
        wallet_url: format!("http://{wallet}"),
        metrics,
        stop: Some(stop),
        task: Some(task),
    }
}

/// A `posbridge serve` process, killed if the test ends without stopping it.
pub struct ServeProcess {
    pub child: std::process::Child,
    pub terminal: std::net::SocketAddr,
    pub wallet_url: String,
    pub log: std::sync::Arc<std::sync::Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl ServeProcess {
    /// Starts `posbridge serve --config FILE` with extra environment and waits until it serves.
    pub fn start(config: &std::path::Path, env: &[(&str, &str)]) -> ServeProcess {
        use std::io::BufRead;
        let mut command = std::process::Command::new(posbridge_bin());
        command
            .args(["serve", "--config"])
            .arg(config)
            .env_remove("RUST_LOG")
            .stderr(std::process::Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (serving_tx, serving_rx) = std::sync::mpsc::channel();
        let reader = {
            let log = std::sync::Arc::clone(&log);
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stderr).lines() {
                    let line = line.unwrap_or_default();
                    if line.contains("posbridge serving") {
                        let _ = serving_tx.send(line.clone());
                    }
                    let mut log = log.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            })
        };
        let mut process = ServeProcess {
            child,
            terminal: "0.0.0.0:0".parse().unwrap(),
            wallet_url: String::new(),
            log,
            reader: Some(reader),
        };
        let serving = match serving_rx.recv_timeout(std::time::Duration::from_secs(60)) {
            Ok(line) => line,
            Err(_) => panic!(
                "posbridge serve did not start:\n{}",
                process.log.lock().unwrap()
            ),
        };
        let field = |name: &str| -> String {
            let start = serving
                .find(&format!("{name}="))
                .unwrap_or_else(|| panic!("{name} in {serving:?}"))
                + name.len()
                + 1;
            serving[start..]
                .split_whitespace()
                .next()
                .unwrap()
                .trim_matches('"')
                .to_owned()
        };
        process.terminal = field("terminal").parse().unwrap();
        process.wallet_url = format!("http://{}", field("wallet_api"));
        process
    }

    /// Sends a signal (`TERM`, `KILL`) and waits for the process; returns its exit status.
    pub fn signal(&mut self, signal: &str) -> std::process::ExitStatus {
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = self.child.wait().unwrap();
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        exit
    }

    /// Everything the process logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A new gateway on an existing (already seeded) journal: a restart.
pub async fn restart(journal: &TestJournal) -> Running {
    let gateway = server::open(config(journal))
        .await
        .map_err(|e| format!("{e:#}"))
        .unwrap();
    let orders = gateway.orders.clone();
    let store = orders.store().clone();
    serve(Seeded {
        gateway,
        orders,
        store,
    })
    .await
}

/// An account's balance in minor units.
pub async fn balance(store: &Store, account: &str) -> i64 {
    let mut tx = store.begin().await.unwrap();
    let account = posbridge::store::ledger::account(&mut tx, account)
        .await
        .unwrap()
        .unwrap();
    tx.commit().await.unwrap();
    account.balance.amount_minor
}

/// Runs `posbridge admin seed-demo --config FILE` (the demo's merchant, terminal, payer and
/// wallet app) and asserts it succeeded.
pub fn seed_demo(config: &std::path::Path) {
    let seed = std::process::Command::new(posbridge_bin())
        .args(["admin", "seed-demo", "--config"])
        .arg(config)
        .output()
        .unwrap();
    assert!(
        seed.status.success(),
        "{}",
        String::from_utf8_lossy(&seed.stderr)
    );
}

/// Waits (up to a minute, checking every 50 ms) until `check` holds; panics naming `what`.
pub async fn eventually(what: &str, check: impl Fn() -> bool) {
    for _ in 0..1_200 {
        if check() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("gave up waiting until {what}");
}
