//! End to end over real sockets: a cups-pos terminal on TCP, a wallet app over HTTP, the
//! gateway in between, on SQLite and on PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use posbridge::domain::money::Money;
use std::time::Duration;

/// The test merchant as a terminal puts it in a code it makes itself (way b).
fn test_merchant() -> posbridge_codecs::emv_qr::Merchant {
    posbridge_codecs::emv_qr::Merchant {
        gui: posbridge_codecs::emv_qr::POSBRIDGE_GUI.into(),
        merchant_id: MID.into(),
        mcc: "4111".into(),
        currency: CNY,
        country: "CN".into(),
        name: "BEST TRANSPORT".into(),
        city: "BEIJING".into(),
        alternate_language: None,
    }
}

fn cny(amount_minor: i64) -> Money {
    Money {
        amount_minor,
        currency: CNY,
    }
}

async fn both_flows_and_receipts(backend: Backend) {
    let journal = TestJournal::new(backend);
    let running = start(&journal).await;
    let mut terminal = terminal_client(&running).await;
    let wallet = wallet_client(&running);
    assert_eq!(terminal.sign_on().await.unwrap().response_code, "00");
    assert_eq!(terminal.echo().await.unwrap().response_code, "00");

    // (a) the gateway makes the code; the terminal then holds a result query open.
    let answer = terminal.request_order(cny(2372)).await.unwrap();
    assert_eq!(answer.response_code, "00", "{answer:?}");
    let payload = answer.payload.clone().unwrap();
    let voucher = answer.voucher.clone();
    let view = wallet.resolve(&payload).await.unwrap();
    assert_eq!(
        (view.amount_minor, view.merchant_name.as_str()),
        (2372, "BEST TRANSPORT")
    );
    let phone = {
        let wallet = wallet.clone();
        let payload = payload.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            wallet
                .pay(&payload, PAYER_PAN, Some(PAYER_PIN), "phone-1", None)
                .await
                .unwrap()
        })
    };
    let receipt = terminal.query_result(&voucher).await.unwrap();
    let paid = phone.await.unwrap();
    assert_eq!(paid.response_code(), Some("00"));
    assert_eq!(receipt.response_code, "00", "{receipt:?}");
    assert_eq!(receipt.amount_minor, Some(2372));
    assert_eq!(receipt.masked_pan.as_deref(), Some("622202*********0123"));
    assert_eq!(
        receipt.rrn,
        paid.payment.as_ref().unwrap().order.as_ref().unwrap().rrn
    );
    assert!(receipt.auth_code.is_some());

    // (b) the terminal makes and signs the code itself and holds the sale open.
    let merchant = test_merchant();
    let (voucher_b, payload_b) = terminal
        .send_sale_with_own_code(cny(1500), merchant, "48020000", 120)
        .await
        .unwrap();
    // The order exists once the gateway has read the sale; the phone retries until it does.
    let mut result = None;
    for attempt in 0..50 {
        let answer = wallet
            .pay(
                &payload_b,
                PAYER_PAN,
                Some(PAYER_PIN),
                &format!("phone-b{attempt}"),
                None,
            )
            .await
            .unwrap();
        if answer.response_code() == Some("00") {
            result = Some(answer);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(result.is_some(), "the terminal-made code was never payable");
    let receipt_b = terminal.read_answer().await.unwrap();
    assert_eq!(
        (receipt_b.response_code.as_str(), receipt_b.voucher.as_str()),
        ("00", voucher_b.as_str())
    );

    // Settlement: balanced with the journal, then not.
    assert_eq!(
        terminal.settle(2, 2372 + 1500).await.unwrap().response_code,
        "00"
    );
    assert_eq!(terminal.settle(1, 2372).await.unwrap().response_code, "95");

    // Reversal of a paid sale: money back.
    assert_eq!(
        terminal
            .reverse(&voucher, cny(2372))
            .await
            .unwrap()
            .response_code,
        "00"
    );
    assert_eq!(
        balance(&running.seeded.store, "payer-1").await,
        OPENING - 1500
    );
    assert_eq!(
        assert_ledger_conserved(&running.seeded.store).await,
        OPENING
    );
    running.stop().await;
}
on_both_journals!(both_flows_and_receipts, super::both_flows_and_receipts);

async fn refusals_on_the_wire(backend: Backend) {
    let journal = TestJournal::new(backend);
    let running = start(&journal).await;
    let mut terminal = terminal_client(&running).await;
    terminal.sign_on().await.unwrap();
    // Duplicate voucher: 94.
    let first = terminal.request_order(cny(100)).await.unwrap();
    assert_eq!(first.response_code, "00");
    let mut duplicate = terminal_client(&running).await;
    duplicate.sign_on().await.unwrap();
    // Same first STAN as the first client: the same voucher numbers.
    let again = duplicate.request_order(cny(100)).await.unwrap();
    assert_eq!(again.response_code, "94", "{again:?}");
    // A bad MAC: A0, and no order recorded. The A0 is itself MACed under the terminal's
    // current MAC key (the second client's sign-on replaced the first one's keys), and the
    // client checks that MAC.
    let mut frame = duplicate.encode_sale_request(cny(100)).unwrap();
    let last = frame.len() - 1;
    frame[last] ^= 0x01;
    duplicate.send_raw(&frame).await.unwrap();
    let refused = duplicate.read_answer().await.unwrap();
    assert_eq!(refused.response_code, "A0");
    let mut tx = running.seeded.store.begin().await.unwrap();
    let orders = tx.query("SELECT COUNT(*) FROM orders", &[]).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(orders[0].i64(0).unwrap(), 1);
    running.stop().await;
}
on_both_journals!(refusals_on_the_wire, super::refusals_on_the_wire);

async fn unknown_terminal_and_wallet_without_credentials(backend: Backend) {
    let journal = TestJournal::new(backend);
    let running = start(&journal).await;
    let spec = std::sync::Arc::new(posbridge_codecs::Spec::builtin("cups-pos").unwrap());
    let module = posbridge_hsm::open(&posbridge_hsm::HsmConfig::default()).unwrap();
    let mut stranger = posbridge_sim::terminal::TerminalClient::connect(
        running.terminal,
        spec,
        posbridge_sim::terminal::TerminalIdentity {
            tid: "99999999".into(),
            mid: MID.into(),
            master_key: "tmk/demo".into(),
            operator: "01".into(),
            batch: "000001".into(),
        },
        module,
        1,
    )
    .await
    .unwrap();
    let error = stranger.sign_on().await.unwrap_err().to_string();
    assert!(error.contains("03"), "{error}");
    // Wallet without credentials: 401, nothing touched.
    let http = reqwest::Client::new();
    let response = http
        .post(format!("{}/v1/payments", running.wallet_url))
        .header("idempotency-key", "x")
        .json(&serde_json::json!({"payload": "000201", "pan": PAYER_PAN}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    let wrong_key = http
        .post(format!("{}/v1/orders/resolve", running.wallet_url))
        .header("x-posbridge-app", APP_ID)
        .header("authorization", "Bearer nope")
        .json(&serde_json::json!({"payload": "000201"}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_key.status().as_u16(), 401);
    let mut tx = running.seeded.store.begin().await.unwrap();
    let attempts = tx
        .query("SELECT COUNT(*) FROM attempts", &[])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(attempts[0].i64(0).unwrap(), 0);
    running.stop().await;
}
on_both_journals!(
    unknown_terminal_and_wallet_without_credentials,
    super::unknown_terminal_and_wallet_without_credentials
);

async fn disconnect_during_hold_cancels(backend: Backend) {
    let journal = TestJournal::new(backend);
    let running = start(&journal).await;
    let mut terminal = terminal_client(&running).await;
    terminal.sign_on().await.unwrap();
    let answer = terminal.request_order(cny(300)).await.unwrap();
    let payload = answer.payload.unwrap();
    // Send the result query, then hang up before the phone pays.
    let query = {
        let voucher = answer.voucher.clone();
        async move {
            let _ =
                tokio::time::timeout(Duration::from_millis(300), terminal.query_result(&voucher))
                    .await;
            drop(terminal);
        }
    };
    query.await;
    let wallet = wallet_client(&running);
    let mut state = String::new();
    for _ in 0..50 {
        let view = wallet.resolve(&payload).await.unwrap();
        state = view.state;
        if state != "CREATED" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(state, "CANCELLED");
    let paid = wallet
        .pay(&payload, PAYER_PAN, Some(PAYER_PIN), "late", None)
        .await
        .unwrap();
    assert_eq!(paid.response_code(), Some("57"));
    assert_eq!(
        assert_ledger_conserved(&running.seeded.store).await,
        OPENING
    );
    running.stop().await;
}
on_both_journals!(
    disconnect_during_hold_cancels,
    super::disconnect_during_hold_cancels
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_endpoints() {
    let journal = TestJournal::new(Backend::Sqlite);
    let running = start(&journal).await;
    let mut terminal = terminal_client(&running).await;
    terminal.sign_on().await.unwrap();
    terminal.request_order(cny(100)).await.unwrap();
    let http = reqwest::Client::new();
    let ready = http
        .get(format!("http://{}/health/ready", running.metrics))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 200);
    let live = http
        .get(format!("http://{}/health/live", running.metrics))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status().as_u16(), 200);
    let metrics = http
        .get(format!("http://{}/metrics", running.metrics))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("posbridge_messages_total"), "{metrics}");
    assert!(
        metrics.contains("posbridge_hsm_operation_seconds"),
        "{metrics}"
    );
    running.stop().await;
}

async fn void_and_refund(backend: Backend) {
    let journal = TestJournal::new(backend);
    let running = start(&journal).await;
    let mut terminal = terminal_client(&running).await;
    let wallet = wallet_client(&running);
    terminal.sign_on().await.unwrap();
    let order = terminal.request_order(cny(2372)).await.unwrap();
    let paid = wallet
        .pay(
            order.payload.as_deref().unwrap(),
            PAYER_PAN,
            Some(PAYER_PIN),
            "vr-1",
            None,
        )
        .await
        .unwrap();
    assert_eq!(paid.response_code(), Some("00"));
    let balance = async || balance(&running.seeded.store, "payer-1").await;
    assert_eq!(balance().await, OPENING - 2372);
    // Settlement counts the sale as a debit.
    assert_eq!(terminal.settle(1, 2372).await.unwrap().response_code, "00");
    // Partial refund, then one that exceeds what is left.
    assert_eq!(
        terminal
            .refund(&order.voucher, cny(1000))
            .await
            .unwrap()
            .response_code,
        "00"
    );
    assert_eq!(balance().await, OPENING - 1372);
    // Regression (conformance issue): settlement ignored the credit totals. A partly refunded
    // sale is a debit at its full amount and its refund a credit; leaving the credit out no
    // longer balances.
    assert_eq!(
        terminal
            .settle_with_credits((1, 2372), (1, 1000))
            .await
            .unwrap()
            .response_code,
        "00"
    );
    assert_eq!(terminal.settle(1, 2372).await.unwrap().response_code, "95");
    assert_eq!(
        terminal
            .refund(&order.voucher, cny(1500))
            .await
            .unwrap()
            .response_code,
        "13"
    );
    // Void gives back the rest, exactly.
    assert_eq!(
        terminal
            .void(&order.voucher, cny(2372))
            .await
            .unwrap()
            .response_code,
        "00"
    );
    assert_eq!(balance().await, OPENING);
    assert_eq!(
        terminal
            .refund(&order.voucher, cny(1))
            .await
            .unwrap()
            .response_code,
        "12"
    );
    assert_eq!(
        assert_ledger_conserved(&running.seeded.store).await,
        OPENING
    );
    running.stop().await;
}
on_both_journals!(void_and_refund, super::void_and_refund);

/// Regression (lifecycle issue): the same MACed refund (0220, same STAN) sent twice was applied
/// twice, and voiding a sale a second time answered 00. Now the repeat gets the first answer and
/// moves nothing; the second void is refused with 12.
async fn repeated_refund_applies_once_and_second_void_is_refused(backend: Backend) {
    let journal = TestJournal::new(backend);
    let running = start(&journal).await;
    let mut terminal = terminal_client(&running).await;
    let wallet = wallet_client(&running);
    terminal.sign_on().await.unwrap();
    let order = terminal.request_order(cny(5000)).await.unwrap();
    let paid = wallet
        .pay(
            order.payload.as_deref().unwrap(),
            PAYER_PAN,
            Some(PAYER_PIN),
            "rr-1",
            None,
        )
        .await
        .unwrap();
    assert_eq!(paid.response_code(), Some("00"));
    let balance = async || balance(&running.seeded.store, "payer-1").await;
    let refund = terminal.refund(&order.voucher, cny(1000)).await.unwrap();
    assert_eq!(refund.response_code, "00");
    assert_eq!(balance().await, OPENING - 4000);
    let repeat = terminal.resend_last().await.unwrap();
    assert_eq!(repeat.response_code, "00", "a repeat gets the first answer");
    assert_eq!(balance().await, OPENING - 4000, "and moves nothing");
    let void = terminal.void(&order.voucher, cny(5000)).await.unwrap();
    assert_eq!(void.response_code, "00");
    assert_eq!(balance().await, OPENING, "the void gives back what is left");
    let again = terminal.void(&order.voucher, cny(5000)).await.unwrap();
    assert_eq!(again.response_code, "12", "a second void is refused");
    assert_eq!(balance().await, OPENING);
    let repeated_void = terminal.resend_last().await.unwrap();
    assert_eq!(repeated_void.response_code, "12");
    // Settlement: the voided sale is no debit; its refund stays a credit.
    assert_eq!(
        terminal
            .settle_with_credits((0, 0), (1, 1000))
            .await
            .unwrap()
            .response_code,
        "00"
    );
    assert_eq!(
        assert_ledger_conserved(&running.seeded.store).await,
        OPENING
    );
    running.stop().await;
}
on_both_journals!(
    repeated_refund_applies_once_and_second_void_is_refused,
    super::repeated_refund_applies_once_and_second_void_is_refused
);

async fn restart_keeps_terminals_signed_on(backend: Backend) {
    let journal = TestJournal::new(backend);
    let running = start(&journal).await;
    let mut terminal = terminal_client(&running).await;
    terminal.sign_on().await.unwrap();
    let unpaid = terminal.request_order(cny(700)).await.unwrap();
    running.stop().await;
    // A new gateway process: its software module starts with the demo keys only.
    let restarted = restart(&journal).await;
    let spec = std::sync::Arc::new(posbridge_codecs::Spec::builtin("cups-pos").unwrap());
    // The terminal keeps its keys and reconnects without signing on again.
    let mut again = terminal.reconnect(restarted.terminal, spec).await.unwrap();
    let order = again.request_order(cny(800)).await.unwrap();
    assert_eq!(order.response_code, "00", "{order:?}");
    // The order left unpaid before the restart can still be paid.
    let wallet = wallet_client(&restarted);
    let paid = wallet
        .pay(
            unpaid.payload.as_deref().unwrap(),
            PAYER_PAN,
            Some(PAYER_PIN),
            "after-restart",
            None,
        )
        .await
        .unwrap();
    assert_eq!(paid.response_code(), Some("00"));
    restarted.stop().await;
}
on_both_journals!(
    restart_keeps_terminals_signed_on,
    super::restart_keeps_terminals_signed_on
);

/// Reads until the gateway closes the connection; panics if it is still open after `within`
/// (far below the idle timeout the test configures, so only the rule under test can close it).
async fn closed_by_gateway(socket: &mut tokio::net::TcpStream, within: std::time::Duration) {
    use tokio::io::AsyncReadExt;
    let mut buffer = [0u8; 256];
    let closed = tokio::time::timeout(within, async {
        loop {
            match socket.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the gateway kept the connection open");
}

/// Regression (security issue): a half-sent terminal frame was held for the idle timeout
/// (300 s) instead of `read_timeout_secs`. Now the read timeout runs from the frame's first
/// byte; an undecodable frame closes the connection instead of being met with silence; and a
/// per-address cap closes connections beyond it at accept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_and_undecodable_frames_and_too_many_connections_are_closed() {
    use tokio::io::AsyncWriteExt;
    let journal = TestJournal::new(Backend::Sqlite);
    let running = start_with(&journal, |c| {
        c.terminal.idle_timeout_secs = 3_600;
        c.terminal.read_timeout_secs = 1;
        c.terminal.max_connections_per_address = 2;
    })
    .await;
    let long = std::time::Duration::from_secs(60);
    // A frame that announces 100 bytes and sends 3.
    let mut half = tokio::net::TcpStream::connect(running.terminal)
        .await
        .unwrap();
    half.write_all(&[0x00, 0x64, 0x60, 0x00, 0x03])
        .await
        .unwrap();
    closed_by_gateway(&mut half, long).await;
    // A whole frame that is not a message of the dialect.
    let mut junk = tokio::net::TcpStream::connect(running.terminal)
        .await
        .unwrap();
    junk.write_all(&[0x00, 0x04, 0xde, 0xad, 0xbe, 0xef])
        .await
        .unwrap();
    closed_by_gateway(&mut junk, long).await;
    // Two connections from this address are allowed; a third is closed at once.
    let mut first = terminal_client(&running).await;
    let _second = tokio::net::TcpStream::connect(running.terminal)
        .await
        .unwrap();
    let mut third = tokio::net::TcpStream::connect(running.terminal)
        .await
        .unwrap();
    closed_by_gateway(&mut third, long).await;
    assert_eq!(first.sign_on().await.unwrap().response_code, "00");
    running.stop().await;
}

/// Regression: a terminal connection that sent nothing was closed after `read_timeout_secs`
/// (30 s by default) instead of `idle_timeout_secs` (300 s), logged as "frame not complete": the
/// wait for a request's first byte (a readiness wait) returned with nothing to read, so the read
/// timeout ran from the start of the silence. `posbridge bench --idle-connections 10000` lost
/// 4,711 of its connections so. A silent connection now stays open until the idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_stays_open_until_the_idle_timeout() {
    let journal = TestJournal::new(Backend::Sqlite);
    let running = start_with(&journal, |c| {
        c.terminal.idle_timeout_secs = 10;
        c.terminal.read_timeout_secs = 1;
    })
    .await;
    let mut terminal = terminal_client(&running).await;
    let mut silent = tokio::net::TcpStream::connect(running.terminal)
        .await
        .unwrap();
    // Silent for three read timeouts, well within the idle timeout: still served.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(terminal.sign_on().await.unwrap().response_code, "00");
    // Silent past the idle timeout: closed.
    closed_by_gateway(&mut silent, std::time::Duration::from_secs(60)).await;
    running.stop().await;
}

/// Regression (security issue): 0800 sign-on was unlimited, and TID and MID are printed in the
/// terminal's own QR codes, so anyone could rotate a terminal's working keys in a loop. Now a
/// sign-on within `sign_on_interval_secs` of the previous one is refused (65) and changes
/// nothing: the terminal that signed on keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_on_flood_does_not_replace_a_terminals_keys() {
    let journal = TestJournal::new(Backend::Sqlite);
    let running = start_with(&journal, |c| c.terminal.sign_on_interval_secs = 3_600).await;
    let mut terminal = terminal_client(&running).await;
    assert_eq!(terminal.sign_on().await.unwrap().response_code, "00");
    for _ in 0..5 {
        let mut attacker = terminal_client(&running).await;
        let refused = attacker.sign_on().await.unwrap_err().to_string();
        assert!(refused.contains("65"), "{refused}");
    }
    let order = terminal.request_order(cny(100)).await.unwrap();
    assert_eq!(
        order.response_code, "00",
        "the real terminal's keys still work"
    );
    running.stop().await;
}

/// Security issue: a sign-on replaced the terminal's working keys at once, so anyone knowing
/// its TID and MID (printed on its codes) could lock it out once per interval. Now a sign-on's
/// keys wait in the other key slot: the keys in use stay valid until the terminal MACs a request
/// under the new ones, and only then are the previous ones refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_ons_by_someone_else_do_not_lock_the_terminal_out() {
    let journal = TestJournal::new(Backend::Sqlite);
    let running = start_with(&journal, |c| c.terminal.sign_on_interval_secs = 0).await;
    let mut terminal = terminal_client(&running).await;
    assert_eq!(terminal.sign_on().await.unwrap().response_code, "00");
    assert_eq!(
        terminal
            .request_order(cny(100))
            .await
            .unwrap()
            .response_code,
        "00"
    );
    for _ in 0..5 {
        let mut attacker = terminal_client(&running).await;
        assert_eq!(attacker.sign_on().await.unwrap().response_code, "00");
        assert_eq!(
            terminal
                .request_order(cny(101))
                .await
                .unwrap()
                .response_code,
            "00",
            "the keys in use still work after someone else's sign-on"
        );
    }
    // The terminal (here a second client with the same TID) signs on and uses its new keys:
    // they take over, and the keys used before are refused from then on.
    let mut renewed = terminal_client(&running).await;
    // Its own voucher numbers, apart from the first client's (the same terminal would go on
    // counting).
    for _ in 0..500 {
        renewed.next_stan();
    }
    assert_eq!(renewed.sign_on().await.unwrap().response_code, "00");
    assert_eq!(
        terminal
            .request_order(cny(102))
            .await
            .unwrap()
            .response_code,
        "00",
        "still the old keys until the new ones are used"
    );
    let order = renewed.request_order(cny(103)).await.unwrap();
    assert_eq!(order.response_code, "00", "{order:?}");
    // Refused (A0), and the refusal is MACed under the keys in use, which the old client no
    // longer holds.
    let old = terminal.request_order(cny(104)).await.unwrap_err();
    assert!(old.to_string().contains("wrong MAC"), "{old:#}");
    let made = running
        .seeded
        .store
        .read_opt("SELECT COUNT(*) FROM orders WHERE amount_minor = 104", &[])
        .await
        .unwrap()
        .unwrap()
        .i64(0)
        .unwrap();
    assert_eq!(made, 0, "no order under the previous keys");
    assert_eq!(
        renewed.request_order(cny(105)).await.unwrap().response_code,
        "00"
    );
    let slot = running
        .seeded
        .store
        .read_opt(
            "SELECT key_slot FROM terminals WHERE tid = $1",
            &[TID.into()],
        )
        .await
        .unwrap()
        .unwrap()
        .i64(0)
        .unwrap();
    assert_eq!(slot, 0, "two change-overs: slot 1, then slot 0 again");
    running.stop().await;
}

/// Scale-out: a terminal held on gateway A learns of a payment made through gateway B (both on
/// one PostgreSQL journal) from a PostgreSQL notification, not the periodic re-check: here the
/// re-check interval and the hold are an hour, so only the notification can answer it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_terminal_on_one_gateway_hears_of_a_payment_through_another() {
    let journal = TestJournal::new(Backend::Postgres);
    let slow = |c: &mut posbridge::infra::config::Config| {
        c.gateway.poll_interval_ms = 3_600_000;
        c.terminal.hold_secs = 3_600;
    };
    let a = start_with(&journal, slow).await;
    let b = restart(&journal).await;
    let mut terminal = terminal_client(&a).await;
    terminal.sign_on().await.unwrap();
    let order = terminal.request_order(cny(777)).await.unwrap();
    let payload = order.payload.clone().unwrap();
    let before = a.seeded.orders.notifier().changes_from_elsewhere();
    let phone = {
        let wallet = wallet_client(&b);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            wallet
                .pay(&payload, PAYER_PAN, Some(PAYER_PIN), "across-1", None)
                .await
                .unwrap()
        })
    };
    let receipt = tokio::time::timeout(
        Duration::from_secs(120),
        terminal.query_result(&order.voucher),
    )
    .await
    .expect("the held request was not woken (no notification reached gateway A)")
    .unwrap();
    assert_eq!(phone.await.unwrap().response_code(), Some("00"));
    assert_eq!(receipt.response_code, "00", "{receipt:?}");
    assert!(
        a.seeded.orders.notifier().changes_from_elsewhere() > before,
        "gateway A received the journal's notification"
    );
    b.stop().await;
    a.stop().await;
}

/// A gateway does not hear its own announcements: its commits woke its waiters already, and
/// hearing them again had cost a read of the order. Gateway A takes a payment of its own, then
/// one through gateway B: A hears B's alone (notifications arrive in commit order, so its own,
/// had it heard it, would have come first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_hears_the_other_gateways_announcements_not_its_own() {
    let journal = TestJournal::new(Backend::Postgres);
    let a = start_with(&journal, |_| {}).await;
    let b = restart(&journal).await;
    let notifier = a.seeded.orders.notifier().clone();
    eventually("gateway A listens", || notifier.resumptions() >= 1).await;
    let before = notifier.changes_from_elsewhere();
    let mut terminal = terminal_client(&a).await;
    terminal.sign_on().await.unwrap();
    for (n, wallet) in [wallet_client(&a), wallet_client(&b)].iter().enumerate() {
        let order = terminal.request_order(cny(100 + n as i64)).await.unwrap();
        let paid = wallet
            .pay(
                order.payload.as_deref().unwrap(),
                PAYER_PAN,
                Some(PAYER_PIN),
                &format!("own-{n}"),
                None,
            )
            .await
            .unwrap();
        assert_eq!(paid.response_code(), Some("00"));
        let receipt = terminal.query_result(&order.voucher).await.unwrap();
        assert_eq!(receipt.response_code, "00", "{receipt:?}");
    }
    eventually("gateway A hears B's payment", || {
        notifier.changes_from_elsewhere() > before
    })
    .await;
    assert_eq!(
        notifier.changes_from_elsewhere(),
        before + 1,
        "A heard B's announcement and not its own"
    );
    b.stop().await;
    a.stop().await;
}

/// A TCP relay to PostgreSQL the test can cut: while cut, every relayed connection is closed
/// and new ones are refused.
struct CuttableRelay {
    addr: std::net::SocketAddr,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    relays: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl CuttableRelay {
    async fn start(target: String) -> CuttableRelay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let relays = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (accept_open, accept_relays) = (open.clone(), relays.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !accept_open.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                let target = target.clone();
                let relay = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                accept_relays.lock().unwrap().push(relay);
            }
        });
        CuttableRelay { addr, open, relays }
    }

    fn cut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        for relay in self.relays.lock().unwrap().drain(..) {
            relay.abort();
        }
    }

    fn heal(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Scale-out: gateway A's connections to PostgreSQL (its LISTEN connection among them) are cut
/// while a terminal is held on it, and the payment made through gateway B in the meantime: its
/// notification never reaches A. When A listens again, every waiter re-reads its order, so the
/// held request is answered, with the re-check interval and the hold at an hour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_made_while_the_listen_connection_is_cut_is_seen_when_it_resumes() {
    let journal = TestJournal::new(Backend::Postgres);
    let url = journal.config.url.clone().unwrap();
    let (head, rest) = url.split_once('@').unwrap();
    let (server, database) = rest.split_once('/').unwrap();
    let relay = CuttableRelay::start(server.to_owned()).await;
    let relayed = format!("{head}@{}/{database}", relay.addr);
    let a = start_with(&journal, |c| {
        c.gateway.poll_interval_ms = 3_600_000;
        c.terminal.hold_secs = 3_600;
        c.journal.url = Some(relayed);
    })
    .await;
    let b = restart(&journal).await;
    let notifier = a.seeded.orders.notifier().clone();
    eventually("gateway A listens", || notifier.resumptions() >= 1).await;

    let mut terminal = terminal_client(&a).await;
    terminal.sign_on().await.unwrap();
    let order = terminal.request_order(cny(555)).await.unwrap();
    let payload = order.payload.clone().unwrap();
    let held = tokio::spawn(async move { terminal.query_result(&order.voucher).await });
    eventually("the terminal's request is held", || notifier.waiting() >= 1).await;

    relay.cut();
    let (heard, resumed) = (notifier.changes_from_elsewhere(), notifier.resumptions());
    let paid = wallet_client(&b)
        .pay(&payload, PAYER_PAN, Some(PAYER_PIN), "cut-1", None)
        .await
        .unwrap();
    assert_eq!(paid.response_code(), Some("00"));
    relay.heal();

    let receipt = tokio::time::timeout(Duration::from_secs(120), held)
        .await
        .expect("the held request was not answered after A listened again")
        .unwrap()
        .unwrap();
    assert_eq!(receipt.response_code, "00", "{receipt:?}");
    assert!(notifier.resumptions() > resumed, "A listened again");
    assert_eq!(
        notifier.changes_from_elsewhere(),
        heard,
        "the payment's notification was sent while A was cut off, and never reached it"
    );
    b.stop().await;
    a.stop().await;
}

/// Scale-out: the one thing a gateway keeps in memory that another gateway can change is a
/// terminal's working keys in its security module. A terminal signed on through gateway A, then
/// used gateway B (which loaded those keys from the journal), signs on again through A and comes
/// back to B: B's keys are stale, and B, seeing the journal's keys differ, loads the new ones
/// instead of answering A0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_holding_stale_working_keys_loads_the_newer_ones_from_the_journal() {
    let journal = TestJournal::new(Backend::Postgres);
    let a = start_with(&journal, |c| c.terminal.sign_on_interval_secs = 0).await;
    let b = restart(&journal).await;
    let spec = std::sync::Arc::new(posbridge_codecs::Spec::builtin("cups-pos").unwrap());
    let mut terminal = terminal_client(&a).await;
    assert_eq!(terminal.sign_on().await.unwrap().response_code, "00");
    let mut terminal = terminal.reconnect(b.terminal, spec.clone()).await.unwrap();
    assert_eq!(
        terminal
            .request_order(cny(101))
            .await
            .unwrap()
            .response_code,
        "00"
    );
    let mut terminal = terminal.reconnect(a.terminal, spec.clone()).await.unwrap();
    assert_eq!(
        terminal.sign_on().await.unwrap().response_code,
        "00",
        "new keys"
    );
    let mut terminal = terminal.reconnect(b.terminal, spec).await.unwrap();
    let order = terminal.request_order(cny(102)).await.unwrap();
    assert_eq!(order.response_code, "00", "B took the new keys: {order:?}");
    b.stop().await;
    a.stop().await;
}

/// Regression (conformance review): a terminal-made code whose signature was only the leftmost
/// 4 bytes of the MAC was accepted (the module's MAC check takes truncations); such a code is
/// easier to forge. Now anything but the whole 8 bytes is answered A0 and makes no order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_code_with_a_truncated_signature_is_refused() {
    let journal = TestJournal::new(Backend::Sqlite);
    let running = start(&journal).await;
    let mut terminal = terminal_client(&running).await;
    terminal.sign_on().await.unwrap();
    let merchant = test_merchant();
    terminal
        .send_sale_with_own_code_signed(cny(1500), merchant, "48020000", 120, 4)
        .await
        .unwrap();
    let answer = terminal.read_answer().await.unwrap();
    assert_eq!(answer.response_code, "A0", "{answer:?}");
    let orders = running
        .seeded
        .store
        .read("SELECT COUNT(*) FROM orders", &[])
        .await
        .unwrap();
    assert_eq!(orders[0].i64(0).unwrap(), 0, "no order made");
    running.stop().await;
}

/// Scale-out: terminals, wallet apps and merchants are kept in memory (`registry_cache_ms`),
/// and a change made elsewhere (another gateway, an admin command) reaches this gateway at once
/// on PostgreSQL: the registry tables' trigger notifies it and it clears its copy. Here the
/// cache would keep an entry for an hour, so only the notification can make the new app known.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wallet_app_registered_elsewhere_is_known_at_once_despite_the_cache() {
    let journal = TestJournal::new(Backend::Postgres);
    let running = start_with(&journal, |c| c.gateway.registry_cache_ms = 3_600_000).await;
    let http = reqwest::Client::new();
    let resolve = async |key: &str| {
        http.post(format!("{}/v1/orders/resolve", running.wallet_url))
            .header("x-posbridge-app", "late-app")
            .header("authorization", format!("Bearer {key}"))
            .json(&serde_json::json!({ "payload": "not a code" }))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    // The gateway listens (its first connection clears the cache, as every reconnection does).
    let notifier = running.seeded.orders.notifier().clone();
    eventually("the gateway listens", || notifier.resumptions() >= 1).await;
    assert_eq!(
        resolve("pbk_late").await,
        401,
        "unknown app (now cached as unknown)"
    );
    let registry = running.seeded.orders.registry().clone();
    let hits = registry.hits();
    assert_eq!(resolve("pbk_late").await, 401);
    assert!(registry.hits() > hits, "the second lookup came from memory");
    // Registered through another connection, as another gateway or `posbridge admin` would.
    let other = posbridge::store::journal::open(&journal.config)
        .await
        .unwrap();
    posbridge::registry::register_wallet_app(
        &other,
        &posbridge::registry::WalletApp {
            app_id: "late-app".into(),
            name: "Late wallet".into(),
            pek_label: "pek/wallet".into(),
        },
        Some("pbk_late".into()),
    )
    .await
    .unwrap();
    let mut status = 401;
    for _ in 0..600 {
        status = resolve("pbk_late").await;
        if status != 401 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_ne!(
        status, 401,
        "the registry notification never cleared the cache"
    );
    running.stop().await;
}
