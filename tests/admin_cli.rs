//! The operator's commands against a journal file: register, then refund and void a paid sale
//! by its RRN.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::posbridge_bin;
use posbridge::domain::money::Money;
use posbridge::service::orders::service::NewOrder;
use posbridge::service::orders::{Origin, PayRequest};
use posbridge_hsm::{Pan, Pin, PinBlockFormat};
use std::process::Command;
use std::time::Duration;

fn admin(config: &std::path::Path, args: &[&str]) -> String {
    let output = Command::new(posbridge_bin())
        .arg("admin")
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refund_and_void_by_rrn() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("posbridge.toml");
    std::fs::write(
        &config,
        format!(
            "[journal]\nsqlite_path = \"{}\"\n",
            dir.path().join("journal.sqlite").display()
        ),
    )
    .unwrap();
    assert!(admin(&config, &["seed-demo"]).contains("registered"));
    let (loaded, _) = posbridge::infra::config::load(Some(&config)).unwrap();
    let gateway = posbridge::app::server::open(loaded).await.unwrap();
    let orders = gateway.orders.clone();
    let order = orders
        .create(NewOrder {
            origin: Origin::GatewayCode,
            mid: posbridge_sim::demo::MID.into(),
            tid: Some(posbridge_sim::demo::TID.into()),
            operator: Some("01".into()),
            acquirer: Some("48020000".into()),
            txn_type: "22".into(),
            batch: Some("000001".into()),
            voucher: Some("000042".into()),
            amount: Money {
                amount_minor: 5_000,
                currency: 156,
            },
            ttl: Duration::from_secs(60),
            terminal_payload: None,
        })
        .await
        .unwrap();
    let pan = Pan::new(posbridge_sim::demo::PAN).unwrap();
    let block = orders
        .security()
        .encrypt_pin(
            Pin::new(posbridge_sim::demo::PIN).unwrap(),
            pan.clone(),
            PinBlockFormat::Iso4,
            "pek/wallet".into(),
        )
        .await
        .unwrap();
    let paid = orders
        .pay(PayRequest {
            app_id: posbridge_sim::demo::APP_ID.into(),
            pek_label: "pek/wallet".into(),
            idempotency_key: "admin-cli".into(),
            payload: order.payload.clone(),
            pan,
            pin_block: Some(block),
            pin_format: PinBlockFormat::Iso4,
            amount: None,
        })
        .await
        .unwrap();
    let rrn = paid.order.unwrap().rrn.unwrap();
    let balance = async || {
        let mut tx = orders.store().begin().await.unwrap();
        let account = posbridge::store::ledger::account(&mut tx, "demo-payer")
            .await
            .unwrap()
            .unwrap();
        tx.commit().await.unwrap();
        account.balance.amount_minor
    };
    assert_eq!(balance().await, 100_000 - 5_000);
    assert!(
        admin(
            &config,
            &["refund", "--rrn", &rrn, "--amount-minor", "1000"]
        )
        .contains("refunded")
    );
    assert_eq!(balance().await, 100_000 - 4_000);
    assert!(admin(&config, &["void", "--rrn", &rrn]).contains("REVERSED"));
    assert_eq!(balance().await, 100_000);
    // The statement explains the balance: opening, sale, refund, and the void of what was left.
    let shown = admin(&config, &["account-show", "--account", "demo-payer"]);
    assert!(shown.contains("balance 1000.00 CNY"), "{shown}");
    assert!(shown.contains("postings, newest first (4)"), "{shown}");
    for (kind, amount) in [
        ("reversal", "40.00"),
        ("refund", "10.00"),
        ("sale", "-50.00"),
        ("funding", "1000.00"),
    ] {
        assert!(
            shown
                .lines()
                .any(|l| l.contains(kind) && l.contains(amount)),
            "{kind} {amount} missing:\n{shown}"
        );
    }
    assert!(
        !shown.contains(posbridge_sim::demo::PAN),
        "no full card number"
    );
    let merchant = admin(
        &config,
        &["merchant-show", "--mid", posbridge_sim::demo::MID],
    );
    assert!(merchant.contains("balance 0.00 CNY"), "{merchant}");
    assert!(
        merchant.contains("postings, newest first (3)"),
        "{merchant}"
    );
    let refused = Command::new(posbridge_bin())
        .args(["admin", "void", "--rrn", "000000000000", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("no sale with RRN"));
}
