//! The operator's view after a small run: `/metrics` carries messages by MTI and response code,
//! the sale latency histogram, orders by state, terminal connections, security-module latency
//! and errors and journal pool usage; `/health/ready` turns 503 when the database goes away.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Backend, TestJournal};
use posbridge::app::server::{self, Gateway, Listeners};
use posbridge::domain::money::Money;
use posbridge::store::journal::JournalConfig;
use posbridge_sim::bench::{BenchOptions, Bound, Progress, Target};
use std::net::SocketAddr;
use std::sync::Arc;

struct Served {
    gateway: Gateway,
    terminal: SocketAddr,
    wallet_url: String,
    metrics: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// A gateway seeded like `posbridge admin seed-demo`, serving on loopback.
async fn serve(journal: JournalConfig) -> Served {
    let mut config = posbridge::infra::config::Config {
        journal,
        ..Default::default()
    };
    config.terminal.listen = "127.0.0.1:0".parse().unwrap();
    config.wallet_api.listen = "127.0.0.1:0".parse().unwrap();
    config.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
    config.gateway.poll_interval_ms = 50;
    // The run signs the demo terminal on, then this test does again.
    config.terminal.sign_on_interval_secs = 0;
    let gateway = server::open(config).await.unwrap();
    posbridge_sim::demo::seed(&gateway).await.unwrap();
    let listeners = Listeners::bind(&gateway.config).await.unwrap();
    let terminal = listeners.terminal.local_addr().unwrap();
    let wallet_url = format!("http://{}", listeners.wallet_api.local_addr().unwrap());
    let metrics = listeners.metrics.as_ref().unwrap().local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server::run(gateway.clone(), listeners, async move {
        let _ = stopped.await;
    }));
    Served {
        gateway,
        terminal,
        wallet_url,
        metrics,
        stop,
        task,
    }
}

async fn small_run(served: &Served, count: u64) -> posbridge_sim::bench::report::Report {
    posbridge_sim::bench::run(
        BenchOptions {
            target: Target::Running {
                terminal: served.terminal,
                wallet_url: served.wallet_url.clone(),
                gateway_pid: None,
                journal: None,
            },
            terminals: 2,
            rate: None,
            bound: Bound::Count(count),
            amount_minor: 1,
            ceiling: false,
            idle_connections: 0,
            five_roles: false,
            device_keys: None,
        },
        Arc::new(Progress::default()),
    )
    .await
    .unwrap()
}

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// The value of the first sample line that starts with `series` (name plus labels).
fn sample(metrics: &str, name: &str, labels: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(name) && labels.iter().all(|label| l.contains(label)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_a_small_run() {
    let journal = TestJournal::new(Backend::Sqlite);
    let served = serve(journal.config.clone()).await;
    let report = small_run(&served, 6).await;
    assert_eq!(
        (report.completed, report.errors.len()),
        (6, 0),
        "{report:?}"
    );

    // One refusal the security module reports as an error: a terminal message with a bad MAC.
    let spec = Arc::new(posbridge_codecs::Spec::builtin("cups-pos").unwrap());
    let module = posbridge_hsm::open(&posbridge_hsm::HsmConfig::default()).unwrap();
    let mut terminal = posbridge_sim::terminal::TerminalClient::connect(
        served.terminal,
        spec,
        posbridge_sim::terminal::TerminalIdentity {
            tid: posbridge_sim::demo::TID.into(),
            mid: posbridge_sim::demo::MID.into(),
            master_key: "tmk/demo".into(),
            operator: "01".into(),
            batch: "000001".into(),
        },
        module,
        500_000,
    )
    .await
    .unwrap();
    assert_eq!(terminal.sign_on().await.unwrap().response_code, "00");
    // A first request under the new keys makes them the terminal's (the A0 below is MACed
    // under the keys in use).
    let order = terminal
        .request_order(Money {
            amount_minor: 1,
            currency: 156,
        })
        .await
        .unwrap();
    assert_eq!(order.response_code, "00");
    let mut frame = terminal
        .encode_sale_request(Money {
            amount_minor: 1,
            currency: 156,
        })
        .unwrap();
    let last = frame.len() - 1;
    frame[last] ^= 0x01;
    terminal.send_raw(&frame).await.unwrap();
    assert_eq!(terminal.read_answer().await.unwrap().response_code, "A0");

    let (status, metrics) = get(served.metrics, "/metrics").await;
    assert_eq!(status, 200, "{metrics}");
    // Messages by MTI and response code (the recorder is shared by the tests of this binary,
    // so counts are at least this run's).
    let approved = sample(
        &metrics,
        "posbridge_messages_total",
        &["mti=\"0200\"", "response_code=\"00\""],
    )
    .unwrap_or(0.0);
    assert!(
        approved >= 12.0,
        "6 orders + 6 results approved:\n{metrics}"
    );
    assert!(
        sample(
            &metrics,
            "posbridge_messages_total",
            &["mti=\"0200\"", "response_code=\"A0\""]
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{metrics}"
    );
    assert!(sample(&metrics, "posbridge_messages_total", &["mti=\"0800\""]).unwrap_or(0.0) >= 1.0);
    // Sale latency histogram.
    assert!(
        sample(&metrics, "posbridge_sale_seconds_count", &[]).unwrap_or(0.0) >= 6.0,
        "{metrics}"
    );
    assert!(
        metrics.contains("posbridge_sale_seconds_bucket{le=\""),
        "{metrics}"
    );
    // Orders by state.
    assert!(
        sample(
            &metrics,
            "posbridge_order_transitions_total",
            &["state=\"PAID\""]
        )
        .unwrap_or(0.0)
            >= 6.0,
        "{metrics}"
    );
    assert!(
        sample(
            &metrics,
            "posbridge_order_transitions_total",
            &["state=\"CREATED\""]
        )
        .unwrap_or(0.0)
            >= 6.0
    );
    // Terminal connections: our terminal is still connected.
    assert!(
        sample(&metrics, "posbridge_terminal_connections", &[]).unwrap_or(0.0) >= 1.0,
        "{metrics}"
    );
    // Security module latency and errors.
    assert!(sample(&metrics, "posbridge_hsm_operation_seconds_count", &[]).unwrap_or(0.0) > 0.0);
    assert!(
        sample(&metrics, "posbridge_hsm_errors_total", &[]).unwrap_or(0.0) >= 1.0,
        "{metrics}"
    );
    // Journal pool usage.
    assert!(
        sample(&metrics, "posbridge_journal_pool_size", &[]).is_some(),
        "{metrics}"
    );
    assert!(sample(&metrics, "posbridge_journal_pool_in_use", &[]).is_some());

    let (status, _) = get(served.metrics, "/health/live").await;
    assert_eq!(status, 200);
    let (status, body) = get(served.metrics, "/health/ready").await;
    assert_eq!(status, 200, "{body}");
    drop(terminal);
    let _ = served.stop.send(());
    served.task.await.unwrap().unwrap();
    drop(served.gateway);
}

/// An administrative connection to the test server's maintenance database.
async fn admin_client() -> (tokio_postgres::Client, String) {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {url} (DATABASE_URL): {e}"));
    tokio::spawn(connection);
    (client, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_turns_503_when_the_database_goes_away() {
    let (admin, url) = admin_client().await;
    let database = format!("pbready_{}", &posbridge::store::journal::new_id()[..12]);
    admin
        .batch_execute(&format!("CREATE DATABASE {database}"))
        .await
        .unwrap();
    let (base, _) = url.rsplit_once('/').unwrap();
    let journal = JournalConfig {
        url: Some(format!("{base}/{database}")),
        schema: "posbridge".into(),
        pool_size: 4,
        ..JournalConfig::default()
    };
    let served = serve(journal).await;
    let report = small_run(&served, 4).await;
    assert_eq!(report.completed, 4, "{report:?}");
    let (status, body) = get(served.metrics, "/health/ready").await;
    assert_eq!(status, 200, "{body}");

    // The database goes away under the running gateway.
    admin
        .batch_execute(&format!("DROP DATABASE {database} WITH (FORCE)"))
        .await
        .unwrap();
    let (status, body) = get(served.metrics, "/health/ready").await;
    assert_eq!(status, 503, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_ne!(body["journal"], "ok", "{body}");
    assert_eq!(body["security_module"], "ok", "{body}");
    // Liveness is about the process, not its dependencies.
    assert_eq!(get(served.metrics, "/health/live").await.0, 200);
    let _ = served.stop.send(());
    let _ = served.task.await;
}
