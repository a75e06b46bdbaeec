//! Several `posbridge serve` processes on one PostgreSQL journal, and one of them killed
//! (SIGKILL) at a chosen place on a money path: the place is a failpoint
//! (`POSBRIDGE_FAILPOINTS=<point>=pause`), so the kill lands there every run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use posbridge::domain::money::Money;
use posbridge_sim::demo;
use std::time::Duration;

fn config_file(dir: &std::path::Path, journal: &TestJournal) -> std::path::PathBuf {
    let path = dir.join("posbridge.toml");
    let text = format!(
        "[journal]\nurl = \"{}\"\nschema = \"{}\"\n[terminal]\nlisten = \"127.0.0.1:0\"\nhold_secs = 3600\n\
         [wallet_api]\nlisten = \"127.0.0.1:0\"\ncard_payments_per_minute = 0\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
         [gateway]\npoll_interval_ms = 3600000\n",
        journal.config.url.as_deref().unwrap(),
        journal.config.schema,
    );
    std::fs::write(&path, text).unwrap();
    seed_demo(&path);
    path
}

async fn demo_terminal(process: &ServeProcess) -> posbridge_sim::terminal::TerminalClient {
    let spec = std::sync::Arc::new(posbridge_codecs::Spec::builtin("cups-pos").unwrap());
    let keys = posbridge_hsm::open(&posbridge_hsm::HsmConfig::default()).unwrap();
    let identity = posbridge_sim::terminal::TerminalIdentity {
        tid: demo::TID.into(),
        mid: demo::MID.into(),
        master_key: "tmk/demo".into(),
        operator: "01".into(),
        batch: "000001".into(),
    };
    let mut terminal = posbridge_sim::terminal::TerminalClient::connect(
        process.terminal,
        spec,
        identity,
        keys,
        700,
    )
    .await
    .unwrap();
    terminal.sign_on().await.unwrap();
    terminal
}

fn demo_wallet(process: &ServeProcess) -> posbridge_sim::wallet::WalletClient {
    let keys = posbridge_hsm::open(&posbridge_hsm::HsmConfig::default()).unwrap();
    posbridge_sim::wallet::WalletClient::new(
        &process.wallet_url,
        demo::APP_ID,
        demo::APP_KEY,
        keys,
        "pek/wallet",
    )
}

/// The terminal is on gateway A; the phone pays through gateway B, which is killed after the
/// payment committed and before its reply was written. The phone's retry with the same
/// Idempotency-Key goes to A (the load balancer's choice) and gets the same result; the payer
/// is debited once, and A's held terminal request is answered by B's commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_before_replying_leaves_the_retry_on_another_the_same_result() {
    let journal = TestJournal::new(Backend::Postgres);
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), &journal);
    let a = ServeProcess::start(&config, &[]);
    let mut b = ServeProcess::start(
        &config,
        &[("POSBRIDGE_FAILPOINTS", "wallet.pay.committed=pause")],
    );
    let store = posbridge::store::journal::open(&journal.config)
        .await
        .unwrap();
    let opening = balance(&store, "demo-payer").await;

    let mut terminal = demo_terminal(&a).await;
    let amount = Money {
        amount_minor: 1_234,
        currency: CNY,
    };
    let order = terminal.request_order(amount).await.unwrap();
    let payload = order.payload.clone().unwrap();
    let held = tokio::spawn(async move { terminal.query_result(&order.voucher).await });

    let first = {
        let (wallet, payload) = (demo_wallet(&b), payload.clone());
        tokio::spawn(async move {
            wallet
                .pay(&payload, demo::PAN, Some(demo::PIN), "retry-1", None)
                .await
        })
    };
    eventually("B committed the payment and paused before replying", || {
        b.log().contains("failpoint reached")
    })
    .await;
    b.signal("KILL");
    assert!(
        first.await.unwrap().is_err(),
        "the phone never got B's reply"
    );

    let retry = demo_wallet(&a)
        .pay(&payload, demo::PAN, Some(demo::PIN), "retry-1", None)
        .await
        .unwrap();
    assert_eq!(retry.response_code(), Some("00"), "{retry:?}");
    let receipt = tokio::time::timeout(Duration::from_secs(120), held)
        .await
        .expect("A's held terminal request was not answered")
        .unwrap()
        .unwrap();
    assert_eq!(receipt.response_code, "00");
    assert_eq!(
        balance(&store, "demo-payer").await,
        opening - 1_234,
        "debited exactly once"
    );
    let paid = store
        .read("SELECT COUNT(*) FROM transfers WHERE kind = 'sale'", &[])
        .await
        .unwrap();
    assert_eq!(paid[0].i64(0).unwrap(), 1, "one sale transfer");
    drop(a);
}
