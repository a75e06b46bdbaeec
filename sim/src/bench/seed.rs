//! The identities the bench uses: on a gateway it opens itself, one merchant, terminal, payer
//! and the bench's wallet app per simulated terminal (registered if missing, so a second run
//! on the same journal reuses them); on a running gateway, the demo's (`posbridge admin
//! seed-demo`).

use super::{Lane, Plan};
use crate::terminal::TerminalIdentity;
use anyhow::Context;
use posbridge::app::server::{self, Gateway, Listeners};
use posbridge::domain::money::Money;
use posbridge::infra::config::Config;
use posbridge::registry::{self, Merchant, Terminal, WalletApp};
use posbridge::service::enrolment::NewPayer;
use posbridge::store::journal::Store;
use posbridge_hsm::{Pan, Pin};
use std::net::SocketAddr;

/// The bench's wallet app.
pub const APP_ID: &str = "bench-wallet";
/// Its API key.
pub const APP_KEY: &str = "pbk_bench_wallet_key";
/// The PIN of every bench payer.
pub const PIN: &str = "4321";
/// Opening balance of every bench payer (minor units): enough for any run.
pub const OPENING_MINOR: i64 = 1_000_000_000_000;

/// Terminal ID of simulated terminal `i` (8 digits, starting 9).
pub fn tid(i: usize) -> String {
    format!("9{:07}", i + 1)
}

/// Merchant number of simulated terminal `i`'s shop (15 digits).
pub fn mid(i: usize) -> String {
    format!("898310049{:06}", i + 1)
}

/// Card number of payer `i`: 19 digits with a valid Luhn check digit.
pub fn pan(i: usize) -> String {
    let body = format!("622202999{:09}", i + 1);
    format!("{body}{}", luhn_digit(&body))
}

fn luhn_digit(body: &str) -> u32 {
    let sum: u32 = body
        .bytes()
        .rev()
        .enumerate()
        .map(|(n, b)| {
            let d = u32::from(b - b'0');
            if n % 2 == 0 {
                let doubled = d * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                d
            }
        })
        .sum();
    (10 - sum % 10) % 10
}

/// The plan for a running gateway seeded with the demo's identities. The demo has one
/// terminal: every simulated terminal is a connection of that TID (the first signs on and the
/// working keys are shared), with its own range of voucher numbers.
pub(crate) fn demo_plan(
    terminal: SocketAddr,
    wallet_url: &str,
    terminals: usize,
    batch: &str,
) -> Plan {
    let lanes = (0..terminals)
        .map(|_| Lane {
            identity: TerminalIdentity {
                tid: crate::demo::TID.into(),
                mid: crate::demo::MID.into(),
                master_key: "tmk/demo".into(),
                operator: "01".into(),
                batch: batch.to_owned(),
            },
            pan: crate::demo::PAN.into(),
            pin: crate::demo::PIN.into(),
            app_id: crate::demo::APP_ID.into(),
            app_key: crate::demo::APP_KEY.into(),
        })
        .collect();
    Plan {
        terminals: vec![terminal],
        wallet_urls: vec![wallet_url.to_owned()],
        lanes,
        accounts: 1,
    }
}

/// A gateway running in this process for the bench.
pub(crate) struct Spawned {
    pub gateway: Gateway,
    pub plan: Plan,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Spawned {
    /// Stops the gateway and waits for it.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task.await.context("gateway task")?
    }
}

/// Opens the configured journal and security module, seeds `terminals` lanes and serves on
/// loopback port 0.
pub(crate) async fn spawn(
    mut config: Config,
    terminals: usize,
    batch: &str,
) -> anyhow::Result<Spawned> {
    config.terminal.listen = ([127, 0, 0, 1], 0).into();
    config.wallet_api.listen = ([127, 0, 0, 1], 0).into();
    config.metrics.listen = Some(([127, 0, 0, 1], 0).into());
    // The bench's own gateway: its lanes sign on at every run, however close together.
    config.terminal.sign_on_interval_secs = 0;
    // Each bench card pays many times a second.
    config.wallet_api.card_payments_per_minute = 0;
    let gateway = server::open(config).await?;
    let lanes = seed(&gateway, terminals, batch).await?;
    let listeners = Listeners::bind(&gateway.config).await?;
    let terminal = listeners.terminal.local_addr()?;
    let wallet_url = format!("http://{}", listeners.wallet_api.local_addr()?);
    if let Some(metrics) = listeners.metrics.as_ref().and_then(|l| l.local_addr().ok()) {
        tracing::info!(%metrics, "bench gateway metrics");
    }
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server::run(gateway.clone(), listeners, async move {
        let _ = stopped.await;
    }));
    Ok(Spawned {
        gateway,
        plan: Plan {
            terminals: vec![terminal],
            wallet_urls: vec![wallet_url],
            lanes,
            accounts: terminals,
        },
        stop,
        task,
    })
}

async fn seed(gateway: &Gateway, terminals: usize, batch: &str) -> anyhow::Result<Vec<Lane>> {
    let store = gateway.orders.store();
    if registry::wallet_app_by_key(store, APP_ID, APP_KEY)
        .await?
        .is_none()
    {
        registry::register_wallet_app(
            store,
            &WalletApp {
                app_id: APP_ID.into(),
                name: "posbridge bench".into(),
                pek_label: "pek/wallet".into(),
            },
            Some(APP_KEY.into()),
        )
        .await?;
    }
    let mut lanes = Vec::with_capacity(terminals);
    for i in 0..terminals {
        seed_lane(gateway, i).await?;
        lanes.push(Lane {
            identity: TerminalIdentity {
                tid: tid(i),
                mid: mid(i),
                master_key: "tmk/demo".into(),
                operator: "01".into(),
                batch: batch.to_owned(),
            },
            pan: pan(i),
            pin: PIN.into(),
            app_id: APP_ID.into(),
            app_key: APP_KEY.into(),
        });
    }
    Ok(lanes)
}

async fn seed_lane(gateway: &Gateway, i: usize) -> anyhow::Result<()> {
    let store = gateway.orders.store();
    if !merchant_exists(store, i).await? {
        registry::register_merchant(
            store,
            &Merchant {
                mid: mid(i),
                name: format!("BENCH SHOP {}", i + 1),
                city: "BEIJING".into(),
                mcc: "5411".into(),
                country: "CN".into(),
                currency: 156,
                account_id: String::new(),
                webhook_url: None,
            },
        )
        .await?;
    }
    if registry::terminal(store, &tid(i)).await?.is_none() {
        registry::register_terminal(
            store,
            &Terminal {
                tid: tid(i),
                mid: mid(i),
                acquirer: "48020000".into(),
                master_key_label: "tmk/demo".into(),
                enabled: true,
                key_slot: 0,
            },
        )
        .await?;
    }
    if !payer_exists(store, i).await? {
        posbridge::service::enrolment::register_payer(
            &gateway.orders,
            NewPayer {
                account_id: payer_account(i),
                holder: format!("BENCH PAYER {}", i + 1),
                pan: Pan::new(&pan(i))?,
                pin: Some(Pin::new(PIN)?),
                opening: Money {
                    amount_minor: OPENING_MINOR,
                    currency: 156,
                },
                wallet_app: None,
            },
            &gateway.config.keys.pvk,
        )
        .await
        .map_err(|e| anyhow::anyhow!("registering bench payer {}: {e}", i + 1))?;
    }
    Ok(())
}

fn payer_account(i: usize) -> String {
    format!("bench-payer-{}", i + 1)
}

async fn merchant_exists(store: &Store, i: usize) -> anyhow::Result<bool> {
    Ok(registry::read_merchant(store, &mid(i)).await?.is_some())
}

async fn payer_exists(store: &Store, i: usize) -> anyhow::Result<bool> {
    let mut tx = store.begin().await?;
    let row = tx
        .query_opt(
            "SELECT 1 FROM accounts WHERE account_id = $1",
            &[payer_account(i).into()],
        )
        .await?;
    tx.commit().await?;
    Ok(row.is_some())
}

/// Gateways started as separate `posbridge serve` processes on one configured journal (the
/// scale-out shape), seeded with one merchant, terminal and payer per simulated terminal.
pub(crate) struct Processes {
    children: Vec<std::process::Child>,
    /// Their process ids (for CPU accounting).
    pub pids: Vec<u32>,
    pub plan: Plan,
}

impl Processes {
    /// Stops every gateway (SIGTERM, then waits).
    pub fn stop(mut self) {
        for child in &mut self.children {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        for child in &mut self.children {
            let _ = child.wait();
        }
        self.children.clear();
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Seeds the journal of `config`, then starts `processes` gateways (`posbridge serve --config
/// <config_path>`, listening on loopback port 0) and waits until each serves.
pub(crate) async fn spawn_processes(
    config: Config,
    config_path: &std::path::Path,
    processes: usize,
    terminals: usize,
    batch: &str,
) -> anyhow::Result<Processes> {
    anyhow::ensure!(
        config.journal.url.is_some(),
        "--processes needs a PostgreSQL journal (journal.url): an SQLite journal belongs to one process"
    );
    let gateway = server::open(config).await?;
    let lanes = seed(&gateway, terminals, batch).await?;
    drop(gateway);
    let exe = std::env::current_exe().context("the posbridge executable")?;
    let mut started = Processes {
        children: Vec::new(),
        pids: Vec::new(),
        plan: Plan {
            terminals: Vec::new(),
            wallet_urls: Vec::new(),
            lanes,
            accounts: terminals,
        },
    };
    for _ in 0..processes {
        let mut child = std::process::Command::new(&exe)
            .args(["serve", "--config"])
            .arg(config_path)
            .env("POSBRIDGE__TERMINAL__LISTEN", "127.0.0.1:0")
            .env("POSBRIDGE__WALLET_API__LISTEN", "127.0.0.1:0")
            .env("POSBRIDGE__METRICS__LISTEN", "127.0.0.1:0")
            .env("POSBRIDGE__TERMINAL__SIGN_ON_INTERVAL_SECS", "0")
            .env("POSBRIDGE__WALLET_API__CARD_PAYMENTS_PER_MINUTE", "0")
            // The "serving" line (with the bound addresses) is logged at info.
            .env("POSBRIDGE__LOG__LEVEL", "info")
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("starting posbridge serve")?;
        let stderr = child.stderr.take().context("the gateway's stderr")?;
        started.pids.push(child.id());
        started.children.push(child);
        let (serving_tx, serving_rx) = std::sync::mpsc::channel();
        // Reads the log for the "serving" line, then keeps draining it (a full pipe would stop
        // the gateway).
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("posbridge serving") {
                    let _ = serving_tx.send(line);
                }
            }
        });
        let line = serving_rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .context("a gateway process did not start serving within 60 s")?;
        let field = |name: &str| -> anyhow::Result<String> {
            let start = line
                .find(&format!("{name}="))
                .with_context(|| format!("{name} in {line:?}"))?
                + name.len()
                + 1;
            Ok(line[start..]
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .trim_matches('"')
                .to_owned())
        };
        started.plan.terminals.push(field("terminal")?.parse()?);
        started
            .plan
            .wallet_urls
            .push(format!("http://{}", field("wallet_api")?));
    }
    Ok(started)
}

/// CPU time (user + system) a process has used, from `/proc/<pid>/stat` (Linux; clock ticks
/// of 10 ms, the kernel's USER_HZ).
pub(crate) fn cpu_time(pid: u32) -> Option<std::time::Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(std::time::Duration::from_millis(ticks * 10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_pans_pass_the_luhn_check() {
        // 79927398713 is the textbook valid number.
        assert_eq!(luhn_digit("7992739871"), 3);
        for i in [0, 1, 9_999] {
            let pan = pan(i);
            assert_eq!(pan.len(), 19);
            assert!(Pan::new(&pan).is_ok());
        }
        assert_ne!(tid(0), tid(1));
        assert_eq!(mid(41).len(), 15);
    }
}
