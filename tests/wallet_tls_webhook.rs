//! The wallet API over HTTPS (rustls) when a certificate is configured, and merchant webhooks for
//! static-code payments delivered from the outbox with a verifiable signature.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wallet_api_speaks_https_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_path = dir.path().join("wallet.crt");
    let key_path = dir.path().join("wallet.key");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();

    let journal = TestJournal::new(Backend::Sqlite);
    let mut config = config(&journal);
    config.wallet_api.tls_cert = Some(cert_path);
    config.wallet_api.tls_key = Some(key_path);
    let gateway = posbridge::app::server::open(config).await.unwrap();
    posbridge_sim::demo::seed(&gateway).await.unwrap();
    let listeners = posbridge::app::server::Listeners::bind(&gateway.config)
        .await
        .unwrap();
    let port = listeners.wallet_api.local_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(posbridge::app::server::run(
        gateway,
        listeners,
        async move {
            let _ = stopped.await;
        },
    ));

    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let answer = https
        .post(format!("https://localhost:{port}/v1/orders/resolve"))
        .header("x-posbridge-app", posbridge_sim::demo::APP_ID)
        .header(
            "authorization",
            format!("Bearer {}", posbridge_sim::demo::APP_KEY),
        )
        .json(&serde_json::json!({"payload": "not a code"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        answer.status().as_u16(),
        400,
        "authenticated over TLS, refused as a bad code"
    );
    let plain = reqwest::Client::new()
        .post(format!("http://localhost:{port}/v1/orders/resolve"))
        .json(&serde_json::json!({"payload": "x"}))
        .send()
        .await;
    assert!(
        plain.is_err() || !plain.unwrap().status().is_success(),
        "plain HTTP must not be served"
    );
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<(String, String, String)>>>);

async fn merchant_server(received: Received) -> std::net::SocketAddr {
    use axum::routing::post;
    let app = axum::Router::new()
        .route(
            "/hook",
            post(
                |axum::extract::State(received): axum::extract::State<Received>,
                 headers: axum::http::HeaderMap,
                 body: String| async move {
                    let header = |name: &str| {
                        headers
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_owned()
                    };
                    received.0.lock().unwrap().push((
                        header("x-posbridge-event-id"),
                        header("x-posbridge-signature"),
                        body,
                    ));
                    "ok"
                },
            ),
        )
        .with_state(received);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

async fn static_code_webhook(backend: Backend) {
    let received = Received::default();
    let hook = merchant_server(received.clone()).await;
    let journal = TestJournal::new(backend);
    let running = start(&journal).await;
    let store = &running.seeded.store;
    posbridge::registry::register_merchant(
        store,
        &posbridge::registry::Merchant {
            mid: "898310048169999".into(),
            name: "MARKET STALL 7".into(),
            city: "SHANGHAI".into(),
            mcc: "5411".into(),
            country: "CN".into(),
            currency: CNY,
            account_id: String::new(),
            webhook_url: Some(format!("http://{hook}/hook")),
        },
    )
    .await
    .unwrap();
    running
        .seeded
        .gateway
        .webhook_secrets()
        .set(store, "898310048169999", "stall-secret-0123456789")
        .await
        .unwrap();
    let code = posbridge::service::enrolment::create_static_code(
        store,
        &running.seeded.gateway.config.gateway.gui,
        "898310048169999",
        Some("STALL 7"),
    )
    .await
    .unwrap();
    let wallet = wallet_client(&running);
    let paid = wallet
        .pay(
            &code,
            PAYER_PAN,
            Some(PAYER_PIN),
            "stall-1",
            Some((1250, CNY)),
        )
        .await
        .unwrap();
    assert_eq!(paid.response_code(), Some("00"));
    let mut delivered = Vec::new();
    for _ in 0..200 {
        delivered = received.0.lock().unwrap().clone();
        if !delivered.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(delivered.len(), 1, "exactly one notification");
    let (event_id, signature, body) = &delivered[0];
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(json["event_id"], event_id.as_str());
    assert_eq!(json["amount_minor"], 1250);
    assert_eq!(json["masked_pan"], "622202*********0123");
    let timestamp: i64 = signature
        .split(',')
        .next()
        .unwrap()
        .trim_start_matches("t=")
        .parse()
        .unwrap();
    assert_eq!(
        signature,
        &posbridge::service::webhooks::signature(b"stall-secret-0123456789", timestamp, body)
    );
    assert!(!body.contains(PAYER_PAN));
    // The merchant queries its payments with its own API key; its webhook secret (which only
    // signs webhooks) and a wrong key are refused.
    let http = reqwest::Client::new();
    let url = format!(
        "{}/v1/merchants/898310048169999/payments",
        running.wallet_url
    );
    let api_key =
        posbridge::registry::issue_merchant_api_key(&running.seeded.store, "898310048169999")
            .await
            .unwrap()
            .unwrap();
    assert_eq!(
        http.get(&url)
            .bearer_auth("stall-secret-0123456789")
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        401,
        "the webhook secret is not a bearer token"
    );
    let listed: serde_json::Value = http
        .get(&url)
        .bearer_auth(&api_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(
        http.get(&url)
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        401
    );
    // The secret is in the journal only sealed; a secret an older posbridge kept in clear is
    // sealed when the gateway opens the journal, and still signs.
    let mut tx = store.begin().await.unwrap();
    let row = tx
        .query_opt(
            "SELECT webhook_secret, webhook_secret_sealed FROM merchants WHERE mid = '898310048169999'",
            &[],
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.opt_text(0).unwrap(), None);
    let sealed = row.bytes(1).unwrap();
    assert!(
        !sealed.windows(12).any(|w| w == b"stall-secret"),
        "sealed, not clear"
    );
    tx.execute(
        "UPDATE merchants SET webhook_secret = 'legacy-clear-secret', webhook_secret_sealed = NULL \
         WHERE mid = '898310048169999'",
        &[],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let secrets = running.seeded.gateway.webhook_secrets();
    assert_eq!(secrets.seal_clear(store).await.unwrap(), 1);
    assert_eq!(secrets.seal_clear(store).await.unwrap(), 0);
    let row = store
        .read_opt(
            "SELECT webhook_secret, webhook_secret_sealed FROM merchants WHERE mid = '898310048169999'",
            &[],
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.opt_text(0).unwrap(), None);
    let opened = running
        .seeded
        .gateway
        .orders
        .security()
        .open(
            "dek/journal",
            "webhook-secret:898310048169999".into(),
            row.bytes(1).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(&opened[..], b"legacy-clear-secret");
    running.stop().await;
}
on_both_journals!(static_code_webhook, super::static_code_webhook);

/// Regression (lifecycle issue): the outbox held one database transaction across its webhook
/// POSTs; on SQLite that is the only write lock, so one merchant endpoint that does not answer
/// stopped every payment. Now rows are claimed and committed first and the webhook is called
/// outside any transaction: a payment completes while the endpoint still holds the request
/// open (the client has not given up on it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_merchant_endpoint_does_not_stop_payments() {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = listener.local_addr().unwrap();
    let (received_tx, received_rx) = tokio::sync::oneshot::channel::<()>();
    let client_gave_up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let gave_up = client_gave_up.clone();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut buffer = vec![0u8; 4096];
        let mut received_tx = Some(received_tx);
        // Read the request and never answer; note when the client closes the connection.
        loop {
            match socket.read(&mut buffer).await {
                Ok(0) | Err(_) => {
                    gave_up.store(true, std::sync::atomic::Ordering::SeqCst);
                    return;
                }
                Ok(_) => {
                    if let Some(tx) = received_tx.take() {
                        let _ = tx.send(());
                    }
                }
            }
        }
    });
    let journal = TestJournal::new(Backend::Sqlite);
    let running = start(&journal).await;
    let store = &running.seeded.store;
    posbridge::registry::register_merchant(
        store,
        &posbridge::registry::Merchant {
            mid: "898310048168888".into(),
            name: "SLOW STALL".into(),
            city: "SHANGHAI".into(),
            mcc: "5411".into(),
            country: "CN".into(),
            currency: CNY,
            account_id: String::new(),
            webhook_url: Some(format!("http://{hook}/hook")),
        },
    )
    .await
    .unwrap();
    running
        .seeded
        .gateway
        .webhook_secrets()
        .set(store, "898310048168888", "slow-secret-0123456789")
        .await
        .unwrap();
    let code = posbridge::service::enrolment::create_static_code(
        store,
        &running.seeded.gateway.config.gateway.gui,
        "898310048168888",
        None,
    )
    .await
    .unwrap();
    let wallet = wallet_client(&running);
    let first = wallet
        .pay(
            &code,
            PAYER_PAN,
            Some(PAYER_PIN),
            "slow-1",
            Some((100, CNY)),
        )
        .await
        .unwrap();
    assert_eq!(first.response_code(), Some("00"));
    received_rx.await.unwrap(); // the outbox is now inside its POST
    let second = wallet
        .pay(
            &code,
            PAYER_PAN,
            Some(PAYER_PIN),
            "slow-2",
            Some((200, CNY)),
        )
        .await
        .unwrap();
    assert_eq!(second.response_code(), Some("00"));
    assert!(
        !client_gave_up.load(std::sync::atomic::Ordering::SeqCst),
        "the second payment completed while the first webhook was still in flight"
    );
    running.stop().await;
}
