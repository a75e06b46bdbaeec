//! A wallet app reads the balance and recent postings of a card it enrolled
//! (`POST /v1/accounts/statement`); another app's card and an unknown card get the same 404.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use posbridge::domain::money::Money;
use posbridge::registry::{self, WalletApp};

async fn statement(running: &Running, app: (&str, &str), pan: &str) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/accounts/statement", running.wallet_url))
        .header("x-posbridge-app", app.0)
        .header("authorization", format!("Bearer {}", app.1))
        .json(&serde_json::json!({ "pan": pan, "limit": 10 }))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_reads_the_balance_and_postings_of_its_own_cards_only() {
    let journal = TestJournal::new(Backend::Sqlite);
    let running = start(&journal).await;
    let mut terminal = terminal_client(&running).await;
    terminal.sign_on().await.unwrap();
    let order = terminal
        .request_order(Money {
            amount_minor: 2_500,
            currency: CNY,
        })
        .await
        .unwrap();
    let paid = wallet_client(&running)
        .pay(
            order.payload.as_ref().unwrap(),
            PAYER_PAN,
            Some(PAYER_PIN),
            "st-1",
            None,
        )
        .await
        .unwrap();
    assert_eq!(paid.response_code(), Some("00"));

    let (status, body) = statement(&running, (APP_ID, APP_KEY), PAYER_PAN).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["balance_minor"], OPENING - 2_500);
    assert_eq!(body["currency"], 156);
    assert_eq!(body["masked_pan"], "622202*********0123");
    assert_eq!(body["pin_locked"], false);
    let postings = body["postings"].as_array().unwrap();
    assert_eq!(postings.len(), 2, "{body}");
    assert_eq!(postings[0]["kind"], "sale");
    assert_eq!(postings[0]["amount_minor"], -2_500);
    assert_eq!(postings[1]["kind"], "funding");
    assert_eq!(postings[1]["amount_minor"], OPENING);
    assert!(!body.to_string().contains(PAYER_PAN), "no full card number");

    registry::register_wallet_app(
        &running.seeded.store,
        &WalletApp {
            app_id: "other-wallet".into(),
            name: "Another wallet".into(),
            pek_label: "pek/wallet".into(),
        },
        Some("pbk_other_wallet_key".into()),
    )
    .await
    .unwrap();
    let (other, other_body) = statement(
        &running,
        ("other-wallet", "pbk_other_wallet_key"),
        PAYER_PAN,
    )
    .await;
    let (unknown, unknown_body) =
        statement(&running, (APP_ID, APP_KEY), "6222020000000000000").await;
    assert_eq!((other, unknown), (404, 404));
    assert_eq!(
        other_body, unknown_body,
        "the same answer: no card enumeration"
    );
    assert_eq!(other_body["error"]["code"], "unknown_account");
    let (unauthorised, _) = statement(&running, (APP_ID, "wrong-key"), PAYER_PAN).await;
    assert_eq!(unauthorised, 401);
    running.stop().await;
}
