//! The wallet API under a flood, over real sockets: slowloris connections are closed by the
//! header-read timeout while a normal request is answered; a body is read only after the caller
//! is authenticated, and an oversized one is refused with 413.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn wallet_addr(running: &Running) -> String {
    running.wallet_url.trim_start_matches("http://").to_owned()
}

/// Reads until the server closes the connection (or answers); panics if neither happens
/// within `within`, far below anything but the header-read timeout under test.
async fn closed_or_answered(socket: &mut tokio::net::TcpStream, within: Duration) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut buffer = [0u8; 1024];
    let done = tokio::time::timeout(within, async {
        loop {
            match socket.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    assert!(done.is_ok(), "the connection stayed open");
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_slowloris_connections_are_closed_while_a_real_request_is_answered() {
    let journal = TestJournal::new(Backend::Sqlite);
    let running = start_with(&journal, |c| {
        c.wallet_api.header_read_timeout_secs = 1;
        c.wallet_api.request_timeout_secs = 5;
    })
    .await;
    let addr = wallet_addr(&running);
    let mut slow = Vec::new();
    for _ in 0..50 {
        let mut socket = tokio::net::TcpStream::connect(&addr).await.unwrap();
        // Headers begun, never finished.
        socket
            .write_all(b"POST /v1/payments HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push(socket);
    }
    // A real request is answered meanwhile.
    let status = reqwest::Client::new()
        .get(format!("{}/v1/orders/none", running.wallet_url))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 401, "answered (unauthenticated)");
    for socket in &mut slow {
        closed_or_answered(socket, Duration::from_secs(30)).await;
    }
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_read_after_authentication_and_capped() {
    let journal = TestJournal::new(Backend::Sqlite);
    let running = start(&journal).await;
    let addr = wallet_addr(&running);
    // Unauthenticated, announcing a body it never sends: refused at once, body unread.
    let mut socket = tokio::net::TcpStream::connect(&addr).await.unwrap();
    socket
        .write_all(b"POST /v1/payments HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{")
        .await
        .unwrap();
    let answer = closed_or_answered(&mut socket, Duration::from_secs(30)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    // Authenticated, with a body over the limit: 413.
    let big = format!(
        "{{\"payload\": \"{}\", \"pan\": \"1\"}}",
        "X".repeat(64 * 1024)
    );
    let response = reqwest::Client::new()
        .post(format!("{}/v1/payments", running.wallet_url))
        .header("authorization", format!("Bearer {APP_KEY}"))
        .header("x-posbridge-app", APP_ID)
        .header("idempotency-key", "big-1")
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 413);
    running.stop().await;
}

/// Regression (conformance issue): a malformed PIN block (wrong key, wrong length) answered
/// HTTP 500 system_error. It is the caller's fault: 400 with a stable code, and nothing paid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_block_that_does_not_decode_is_a_400() {
    let journal = TestJournal::new(Backend::Sqlite);
    let running = start(&journal).await;
    let mut terminal = terminal_client(&running).await;
    terminal.sign_on().await.unwrap();
    let order = terminal
        .request_order(posbridge::domain::money::Money {
            amount_minor: 100,
            currency: CNY,
        })
        .await
        .unwrap();
    let response = reqwest::Client::new()
        .post(format!("{}/v1/payments", running.wallet_url))
        .header("authorization", format!("Bearer {APP_KEY}"))
        .header("x-posbridge-app", APP_ID)
        .header("idempotency-key", "bad-block-1")
        .json(&serde_json::json!({
            "payload": order.payload.unwrap(),
            "pan": PAYER_PAN,
            "pin_block": "00112233445566778899AABBCCDDEEFF",
            "pin_format": 4,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bad_request", "{body}");
    assert_eq!(balance(&running.seeded.store, "payer-1").await, OPENING);
    running.stop().await;
}
