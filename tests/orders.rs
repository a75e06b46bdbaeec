//! The order flow (S101-S108) against the journal and ledger, on SQLite and PostgreSQL, with the
//! software security module: every refusal of the issue's list, idempotency, concurrency,
//! restarts and ledger conservation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use posbridge::domain::money::Money;
use posbridge::service::orders::service::Voucher;
use posbridge::service::orders::service::{NewOrder, OrderError};
use posbridge::service::orders::{
    OrderService, OrderState, Origin, PayRequest, PaymentResult, ResponseCode,
};
use posbridge_hsm::{Pan, PinBlockFormat};
use std::time::Duration;

fn new_order(voucher: &str, amount_minor: i64) -> NewOrder {
    NewOrder {
        origin: Origin::GatewayCode,
        mid: MID.into(),
        tid: Some(TID.into()),
        operator: Some("01".into()),
        acquirer: Some("48020000".into()),
        txn_type: "22".into(),
        batch: Some("000001".into()),
        voucher: Some(voucher.into()),
        amount: Money {
            amount_minor,
            currency: CNY,
        },
        ttl: Duration::from_secs(120),
        terminal_payload: None,
    }
}

async fn pay(orders: &OrderService, payload: &str, pin: Option<&str>, key: &str) -> PaymentResult {
    pay_with(orders, payload, PAYER_PAN, pin, key, None).await
}

async fn pay_with(
    orders: &OrderService,
    payload: &str,
    pan: &str,
    pin: Option<&str>,
    key: &str,
    amount: Option<Money>,
) -> PaymentResult {
    let pin_block = match pin {
        Some(pin) => Some(pin_block(orders, pin, pan).await),
        None => None,
    };
    orders
        .pay(PayRequest {
            app_id: APP_ID.into(),
            pek_label: "pek/wallet".into(),
            idempotency_key: key.into(),
            payload: payload.into(),
            pan: Pan::new(pan).unwrap(),
            pin_block,
            pin_format: PinBlockFormat::Iso4,
            amount,
        })
        .await
        .unwrap()
}

async fn balance(orders: &OrderService, account: &str) -> i64 {
    common::balance(orders.store(), account).await
}

async fn happy_path(backend: Backend) {
    let journal = TestJournal::new(backend);
    let s = seeded(&journal).await;
    let order = s.orders.create(new_order("000011", 2372)).await.unwrap();
    assert_eq!(order.state(), OrderState::Created);
    // The phone sees the stored order.
    let resolved = s.orders.resolve(&order.payload).await.unwrap();
    assert_eq!(resolved.amount.amount_minor, 2372);
    assert_eq!(resolved.merchant_name, "BEST TRANSPORT");
    // The terminal waits while the phone pays.
    let waiter = {
        let orders = s.orders.clone();
        let id = order.order_id.clone();
        tokio::spawn(async move { orders.wait_final(&id, Duration::from_secs(30)).await })
    };
    let result = pay(&s.orders, &order.payload, Some(PAYER_PIN), "k1").await;
    assert_eq!(result.code(), ResponseCode::Approved, "{result:?}");
    let paid = result.order.unwrap();
    assert_eq!(paid.state(), OrderState::Paid);
    assert_eq!(paid.rrn.as_ref().unwrap().len(), 12);
    assert_eq!(paid.auth_code.as_ref().unwrap().len(), 6);
    assert_eq!(
        paid.payer_pan_masked.as_deref(),
        Some("622202*********0123")
    );
    let seen = waiter.await.unwrap().unwrap().unwrap();
    assert_eq!(seen.state(), OrderState::Paid);
    assert_eq!(balance(&s.orders, "payer-1").await, OPENING - 2372);
    assert_eq!(balance(&s.orders, &format!("merchant:{MID}")).await, 2372);
    assert_eq!(assert_ledger_conserved(&s.store).await, OPENING);
}
on_both_journals!(happy_path_gateway_code, super::happy_path);

async fn wrong_pin_then_lockout(backend: Backend) {
    let journal = TestJournal::new(backend);
    let s = seeded(&journal).await;
    let order = s.orders.create(new_order("000012", 100)).await.unwrap();
    let first = pay(&s.orders, &order.payload, Some("9999"), "w1").await;
    assert_eq!(first.code(), ResponseCode::WrongPin);
    assert_eq!(
        first.order.as_ref().unwrap().state(),
        OrderState::Created,
        "a wrong PIN leaves the order open"
    );
    assert_eq!(
        pay(&s.orders, &order.payload, Some("9998"), "w2")
            .await
            .code(),
        ResponseCode::WrongPin
    );
    let third = pay(&s.orders, &order.payload, Some("9997"), "w3").await;
    assert_eq!(third.code(), ResponseCode::PinTriesExceeded);
    assert_eq!(third.order.unwrap().state(), OrderState::Declined);
    // Locked: even the right PIN is refused on a new order.
    let next = s.orders.create(new_order("000013", 100)).await.unwrap();
    assert_eq!(
        pay(&s.orders, &next.payload, Some(PAYER_PIN), "w4")
            .await
            .code(),
        ResponseCode::PinTriesExceeded
    );
    assert_eq!(balance(&s.orders, "payer-1").await, OPENING);
    // An operator lifts the lock (posbridge admin pin-unlock): the right PIN pays again.
    let mut tx = s.store.begin().await.unwrap();
    assert!(
        posbridge::store::ledger::unlock_pin(&mut tx, "payer-1")
            .await
            .unwrap()
    );
    tx.commit().await.unwrap();
    let after = s.orders.create(new_order("000014", 100)).await.unwrap();
    assert_eq!(
        pay(&s.orders, &after.payload, Some(PAYER_PIN), "w5")
            .await
            .code(),
        ResponseCode::Approved
    );
}
on_both_journals!(wrong_pin_then_lockout, super::wrong_pin_then_lockout);

/// Regression (security issue): an unknown card (14) and a wrong PIN (55) were told apart, so
/// card numbers could be enumerated, and any wallet app could debit any card by its number.
/// Now an unknown card, a card enrolled by another app and a wrong PIN get one answer.
async fn unknown_cards_other_apps_and_wrong_pins_look_the_same(backend: Backend) {
    let journal = TestJournal::new(backend);
    let s = seeded(&journal).await;
    let shape = |r: &PaymentResult| {
        let order = r.order.as_ref().map(|o| (o.state, o.response_code.clone()));
        (r.response_code.clone(), r.message.clone(), order)
    };
    let order = s.orders.create(new_order("000031", 100)).await.unwrap();
    let wrong_pin = pay(&s.orders, &order.payload, Some("9999"), "u1").await;
    let unknown = pay_with(
        &s.orders,
        &order.payload,
        "6222020000000000991",
        Some("9999"),
        "u2",
        None,
    )
    .await;
    assert_eq!(shape(&unknown), shape(&wrong_pin));
    // The payer's card is bound to APP_ID; another app using it is answered the same.
    posbridge::registry::register_wallet_app(
        &s.store,
        &posbridge::registry::WalletApp {
            app_id: "other-app".into(),
            name: "Other".into(),
            pek_label: "pek/wallet".into(),
        },
        Some("pbk_other_app_key".into()),
    )
    .await
    .unwrap();
    let other_app = s
        .orders
        .pay(PayRequest {
            app_id: "other-app".into(),
            pek_label: "pek/wallet".into(),
            idempotency_key: "u3".into(),
            payload: order.payload.clone(),
            pan: Pan::new(PAYER_PAN).unwrap(),
            pin_block: Some(pin_block(&s.orders, PAYER_PIN, PAYER_PAN).await),
            pin_format: PinBlockFormat::Iso4,
            amount: None,
        })
        .await
        .unwrap();
    assert_eq!(shape(&other_app), shape(&wrong_pin));
    assert_eq!(wrong_pin.code(), ResponseCode::WrongPin);
    assert_eq!(
        balance(&s.orders, "payer-1").await,
        OPENING,
        "nothing moved"
    );
    // And PINs longer than the verification value covers are not enrolled.
    let long_pin = posbridge::service::enrolment::register_payer(
        &s.orders,
        posbridge::service::enrolment::NewPayer {
            account_id: "payer-long".into(),
            holder: "Long Pin".into(),
            pan: Pan::new("6222020000000000026").unwrap(),
            pin: Some(posbridge_hsm::Pin::new("123456").unwrap()),
            opening: Money {
                amount_minor: 0,
                currency: CNY,
            },
            wallet_app: None,
        },
        &s.gateway.config.keys.pvk,
    )
    .await;
    assert!(long_pin.is_err(), "a 6-digit PIN is refused at enrolment");
}
on_both_journals!(
    unknown_cards_other_apps_and_wrong_pins_look_the_same,
    super::unknown_cards_other_apps_and_wrong_pins_look_the_same
);

async fn insufficient_funds(backend: Backend) {
    let journal = TestJournal::new(backend);
    let s = seeded(&journal).await;
    let order = s
        .orders
        .create(new_order("000014", OPENING + 1))
        .await
        .unwrap();
    let result = pay(&s.orders, &order.payload, Some(PAYER_PIN), "i1").await;
    assert_eq!(result.code(), ResponseCode::InsufficientFunds);
    assert_eq!(result.order.unwrap().state(), OrderState::Declined);
    assert_eq!(balance(&s.orders, "payer-1").await, OPENING);
    assert_ledger_conserved(&s.store).await;
}
on_both_journals!(insufficient_funds, super::insufficient_funds);

async fn expired_and_restart(backend: Backend) {
    let journal = TestJournal::new(backend);
    let s = seeded(&journal).await;
    let mut short = new_order("000015", 100);
    short.ttl = Duration::from_millis(1);
    let order = s.orders.create(short).await.unwrap();
    let unpaid = s.orders.create(new_order("000016", 100)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    // A new gateway on the same journal (a restart) still expires the old order.
    drop(s);
    let restarted = posbridge::app::server::open(config(&journal))
        .await
        .unwrap();
    let expired = restarted.orders.expire_due().await.unwrap();
    assert_eq!(expired, vec![order.order_id.clone()]);
    let result = pay(&restarted.orders, &order.payload, Some(PAYER_PIN), "e1").await;
    assert_eq!(result.code(), ResponseCode::Expired);
    assert_eq!(
        restarted
            .orders
            .order(&unpaid.order_id)
            .await
            .unwrap()
            .unwrap()
            .state(),
        OrderState::Created
    );
}
on_both_journals!(expired_and_restart, super::expired_and_restart);

async fn replay_tamper_duplicate(backend: Backend) {
    let journal = TestJournal::new(backend);
    let s = seeded(&journal).await;
    let order = s.orders.create(new_order("000017", 500)).await.unwrap();
    // Duplicate voucher: refused with 94.
    match s.orders.create(new_order("000017", 500)).await {
        Err(OrderError::Refused {
            code: ResponseCode::Duplicate,
            ..
        }) => {}
        other => panic!("expected 94, got {other:?}"),
    }
    // Changed amount with a recomputed CRC: the CRC is fine, the code is not ours.
    let tampered = tamper_amount(&order.payload, "5.00", "0.01");
    assert!(
        posbridge_codecs::emv_qr::Payload::parse(&tampered).is_ok(),
        "CRC recomputed"
    );
    let result = pay(&s.orders, &tampered, Some(PAYER_PIN), "t1").await;
    assert_eq!(result.code(), ResponseCode::InvalidTransaction);
    assert!(s.orders.resolve(&tampered).await.is_err());
    // Paid once; the replayed reference is refused.
    assert_eq!(
        pay(&s.orders, &order.payload, Some(PAYER_PIN), "t2")
            .await
            .code(),
        ResponseCode::Approved
    );
    assert_eq!(
        pay(&s.orders, &order.payload, Some(PAYER_PIN), "t3")
            .await
            .code(),
        ResponseCode::Duplicate
    );
    // The same idempotency key returns the first result and pays nothing more.
    let again = pay(&s.orders, &order.payload, Some(PAYER_PIN), "t2").await;
    assert_eq!(again.code(), ResponseCode::Approved);
    assert_eq!(balance(&s.orders, "payer-1").await, OPENING - 500);
    // Every attempt is recorded, refused ones too.
    let mut tx = s.store.begin().await.unwrap();
    let rows = tx
        .query(
            "SELECT response_code FROM attempts ORDER BY created_at_ms",
            &[],
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let codes: Vec<String> = rows.iter().map(|r| r.text(0).unwrap()).collect();
    assert_eq!(codes, vec!["12", "00", "94"]);
}
on_both_journals!(replay_tamper_duplicate, super::replay_tamper_duplicate);

/// Rewrites tag 54 and recomputes the CRC, as an attacker can.
fn tamper_amount(payload: &str, from: &str, to: &str) -> String {
    let old = format!("54{:02}{from}", from.len());
    let new = format!("54{:02}{to}", to.len());
    assert!(payload.contains(&old), "{payload} has no {old}");
    let body = payload.replacen(&old, &new, 1);
    let body = &body[..body.len() - 4];
    format!(
        "{body}{:04X}",
        posbridge_codecs::emv_qr::crc16(body.as_bytes())
    )
}

async fn concurrent_payers_one_wins(backend: Backend) {
    let journal = TestJournal::new(backend);
    let s = seeded(&journal).await;
    let order = s.orders.create(new_order("000018", 700)).await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for attempt in 0..50 {
        let orders = s.orders.clone();
        let payload = order.payload.clone();
        tasks.spawn(async move {
            pay(&orders, &payload, Some(PAYER_PIN), &format!("c{attempt}"))
                .await
                .code()
        });
    }
    let mut approved = 0;
    while let Some(code) = tasks.join_next().await {
        match code.unwrap() {
            ResponseCode::Approved => approved += 1,
            ResponseCode::Duplicate => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(approved, 1);
    assert_eq!(balance(&s.orders, "payer-1").await, OPENING - 700);
    assert_ledger_conserved(&s.store).await;
}
on_both_journals!(
    concurrent_payers_one_wins,
    super::concurrent_payers_one_wins
);

async fn reversal_and_cancel(backend: Backend) {
    let journal = TestJournal::new(backend);
    let s = seeded(&journal).await;
    let paid = s.orders.create(new_order("000019", 900)).await.unwrap();
    assert_eq!(
        pay(&s.orders, &paid.payload, Some(PAYER_PIN), "r1")
            .await
            .code(),
        ResponseCode::Approved
    );
    let reversed = s
        .orders
        .reverse(&Voucher::of(TID, "000001", "000019"), "terminal reversal")
        .await
        .unwrap();
    assert_eq!(reversed.state(), OrderState::Reversed);
    assert_eq!(balance(&s.orders, "payer-1").await, OPENING, "money back");
    // Reversing twice changes nothing.
    s.orders
        .reverse(&Voucher::of(TID, "000001", "000019"), "again")
        .await
        .unwrap();
    assert_eq!(balance(&s.orders, "payer-1").await, OPENING);
    // An unpaid order is cancelled and can no longer be paid.
    let unpaid = s.orders.create(new_order("000020", 900)).await.unwrap();
    s.orders
        .cancel(&unpaid.order_id, "terminal disconnected")
        .await
        .unwrap();
    assert_eq!(
        pay(&s.orders, &unpaid.payload, Some(PAYER_PIN), "r2")
            .await
            .code(),
        ResponseCode::NotPermitted
    );
    assert_eq!(balance(&s.orders, "payer-1").await, OPENING);
    assert_eq!(assert_ledger_conserved(&s.store).await, OPENING);
}
on_both_journals!(reversal_and_cancel, super::reversal_and_cancel);

async fn static_code(backend: Backend) {
    let journal = TestJournal::new(backend);
    let s = seeded(&journal).await;
    let payload = posbridge::service::enrolment::create_static_code(
        &s.store,
        &s.gateway.config.gateway.gui,
        MID,
        Some("STALL 7"),
    )
    .await
    .unwrap();
    let parsed = posbridge_codecs::emv_qr::Payload::parse(&payload).unwrap();
    assert_eq!(
        parsed.amount_text(),
        None,
        "a static code carries no amount"
    );
    let amount = Money {
        amount_minor: 1250,
        currency: CNY,
    };
    let result = pay_with(
        &s.orders,
        &payload,
        PAYER_PAN,
        Some(PAYER_PIN),
        "s1",
        Some(amount),
    )
    .await;
    assert_eq!(result.code(), ResponseCode::Approved, "{result:?}");
    let second = pay_with(
        &s.orders,
        &payload,
        PAYER_PAN,
        Some(PAYER_PIN),
        "s2",
        Some(amount),
    )
    .await;
    assert_eq!(
        second.code(),
        ResponseCode::Approved,
        "a static code is paid many times"
    );
    assert_eq!(balance(&s.orders, &format!("merchant:{MID}")).await, 2500);
    let none = pay_with(&s.orders, &payload, PAYER_PAN, Some(PAYER_PIN), "s3", None).await;
    assert_eq!(none.code(), ResponseCode::InvalidAmount);
    let listed = s.orders.merchant_orders(MID, 10).await.unwrap();
    assert_eq!(
        listed
            .iter()
            .filter(|o| o.state() == OrderState::Paid)
            .count(),
        2
    );
}
on_both_journals!(static_code, super::static_code);

async fn randomised_run_conserves_money(backend: Backend) {
    use rand::{Rng, SeedableRng};
    let seed: u64 = std::env::var("POSBRIDGE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8583);
    println!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let journal = TestJournal::new(backend);
    let s = seeded(&journal).await;
    // A second payer without a PIN, so most operations move money.
    posbridge::service::enrolment::register_payer(
        &s.orders,
        posbridge::service::enrolment::NewPayer {
            account_id: "payer-2".into(),
            holder: "Han Meimei".into(),
            pan: Pan::new("6222020000000000018").unwrap(),
            pin: None,
            opening: Money {
                amount_minor: 50_000,
                currency: CNY,
            },
            wallet_app: None,
        },
        &s.gateway.config.keys.pvk,
    )
    .await
    .unwrap();
    let total = assert_ledger_conserved(&s.store).await;
    let mut open: Vec<(String, String)> = Vec::new();
    let mut paid: Vec<String> = Vec::new();
    for step in 0..2_000u32 {
        match rng.random_range(0..12) {
            // Partial refunds of paid sales; more than is left is refused (13).
            10 if !paid.is_empty() => {
                let voucher = paid[rng.random_range(0..paid.len())].clone();
                let amount = Money {
                    amount_minor: rng.random_range(1..15_000),
                    currency: CNY,
                };
                match s
                    .orders
                    .refund(&Voucher::of(TID, "000001", &voucher), amount)
                    .await
                {
                    Ok(_) => {}
                    Err(e) => assert_eq!(e.response_code(), ResponseCode::InvalidAmount, "{e}"),
                }
            }
            // A void gives back what is left; a second void is refused (12).
            11 if !paid.is_empty() => {
                let voucher = paid.swap_remove(rng.random_range(0..paid.len()));
                let target = Voucher::of(TID, "000001", &voucher);
                s.orders.void(&target, "random void").await.unwrap();
                let again = s.orders.void(&target, "random void again").await;
                assert_eq!(
                    again.unwrap_err().response_code(),
                    ResponseCode::InvalidTransaction
                );
            }
            0..=3 => {
                let voucher = format!("{:06}", 100_000 + step);
                let order = s
                    .orders
                    .create(new_order(&voucher, rng.random_range(1..20_000)))
                    .await
                    .unwrap();
                open.push((order.payload, voucher));
            }
            4..=6 if !open.is_empty() => {
                let (payload, voucher) = open.swap_remove(rng.random_range(0..open.len()));
                let result = pay_with(
                    &s.orders,
                    &payload,
                    "6222020000000000018",
                    None,
                    &format!("p{step}"),
                    None,
                )
                .await;
                if result.code() == ResponseCode::Approved {
                    paid.push(voucher);
                }
            }
            7 if !paid.is_empty() => {
                let voucher = paid.swap_remove(rng.random_range(0..paid.len()));
                s.orders
                    .reverse(&Voucher::of(TID, "000001", &voucher), "random reversal")
                    .await
                    .unwrap();
            }
            8 if !open.is_empty() => {
                let (_, voucher) = open.swap_remove(rng.random_range(0..open.len()));
                s.orders
                    .reverse(&Voucher::of(TID, "000001", &voucher), "random cancel")
                    .await
                    .unwrap();
            }
            _ => {
                let (payload, _) = match open.last() {
                    Some(last) => last.clone(),
                    None => continue,
                };
                // A replay with another key never pays twice.
                let _ = pay_with(
                    &s.orders,
                    &payload,
                    "6222020000000000018",
                    None,
                    &format!("x{step}"),
                    None,
                )
                .await;
                open.pop();
            }
        }
    }
    assert_eq!(
        assert_ledger_conserved(&s.store).await,
        total,
        "seed {seed}"
    );
    // Nothing was given back beyond its sale, order by order.
    let mut tx = s.store.begin().await.unwrap();
    let over = tx
        .query(
            "SELECT COUNT(*) FROM (SELECT t.order_id FROM transfers t GROUP BY t.order_id HAVING \
             SUM(CASE WHEN t.kind IN ('refund', 'reversal') THEN t.amount_minor ELSE 0 END) > \
             SUM(CASE WHEN t.kind = 'sale' THEN t.amount_minor ELSE 0 END)) x",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        over[0].i64(0).unwrap(),
        0,
        "seed {seed}: refunds within their sales"
    );
}
on_both_journals!(
    randomised_run_conserves_money,
    super::randomised_run_conserves_money
);

/// A direct insert of a transfer `id` of `amount` (in `currency`) from `from` to `to`.
fn transfer_sql(id: &str, kind: &str, from: &str, to: &str, amount: i64, currency: i64) -> String {
    format!(
        "INSERT INTO transfers (transfer_id, order_id, kind, from_account, to_account, amount_minor, currency, created_at_ms) \
         VALUES ('t-{id}', 'o-{id}', '{kind}', '{from}', '{to}', {amount}, {currency}, 0)"
    )
}

/// A direct insert of a posting `id` of `amount` CNY to `account`, as a leg of `transfer`.
fn posting_sql(id: &str, kind: &str, account: &str, amount: i64, transfer: &str) -> String {
    format!(
        "INSERT INTO postings (posting_id, order_id, account_id, amount_minor, currency, kind, created_at_ms, transfer_id) \
         VALUES ('p-{id}', 'o-{id}', '{account}', {amount}, 156, '{kind}', 0, '{transfer}')"
    )
}

/// Regression (lifecycle issue): postings were written by the application alone, opening
/// balances were single-sided and nothing enforced that a transfer sums to zero. Now the
/// database refuses a posting that is not a leg of its transfer, any change to a posting, and a
/// transfer across currencies; opening balances come from a funding account.
async fn the_database_enforces_the_money_rules(backend: Backend) {
    let journal = TestJournal::new(backend);
    let s = seeded(&journal).await;
    let mut tx = s.store.begin().await.unwrap();
    let rows = tx
        .query(
            "SELECT CAST(SUM(amount_minor) AS BIGINT), COUNT(*) FROM postings WHERE kind = 'funding'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows[0].i64(0).unwrap(), 0, "funding transfers sum to zero");
    assert!(rows[0].i64(1).unwrap() >= 2, "two legs per opening");
    tx.commit().await.unwrap();
    let refused = async |sql: &str| {
        let mut tx = s.store.begin().await.unwrap();
        let result = tx.execute(sql, &[]).await;
        assert!(result.is_err(), "the database must refuse: {sql}");
    };
    refused(&posting_sql(
        "x",
        "sale",
        "payer-1",
        500,
        "no-such-transfer",
    ))
    .await;
    refused(
        "INSERT INTO postings (posting_id, order_id, account_id, amount_minor, currency, kind, created_at_ms) \
         VALUES ('p-y', 'o-y', 'payer-1', 500, 156, 'sale', 0)",
    )
    .await;
    // A statement of its own naming a real transfer: a leg it does not have (an account of no
    // transfer, or one already posted) is refused all the same.
    let mut tx = s.store.begin().await.unwrap();
    let transfer = tx
        .query_opt(
            "SELECT transfer_id, to_account, amount_minor FROM transfers WHERE kind = 'funding' ORDER BY transfer_id LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .unwrap();
    let (transfer_id, to_account, amount) = (
        transfer.text(0).unwrap(),
        transfer.text(1).unwrap(),
        transfer.i64(2).unwrap(),
    );
    drop(tx);
    refused(&posting_sql(
        "z",
        "funding",
        "no-such-account",
        amount,
        &transfer_id,
    ))
    .await;
    refused(&posting_sql(
        "w",
        "funding",
        &to_account,
        amount,
        &transfer_id,
    ))
    .await;
    refused("UPDATE postings SET amount_minor = amount_minor + 1").await;
    refused("DELETE FROM postings").await;
    // A transfer names two known accounts, and an account with transfers is kept.
    refused(&transfer_sql(
        "u",
        "sale",
        "payer-1",
        "no-such-account",
        10,
        156,
    ))
    .await;
    refused(&transfer_sql(
        "v",
        "sale",
        "no-such-account",
        "payer-1",
        10,
        156,
    ))
    .await;
    refused(&format!(
        "DELETE FROM accounts WHERE account_id = '{to_account}'"
    ))
    .await;
    refused(&format!(
        "UPDATE accounts SET account_id = 'renamed' WHERE account_id = '{to_account}'"
    ))
    .await;
    let mut tx = s.store.begin().await.unwrap();
    tx.execute(
        "INSERT INTO accounts (account_id, kind, holder, currency, balance_minor, pin_tries, created_at_ms) \
         VALUES ('usd-1', 'payer', 'usd holder', 840, 0, 0, 0)",
        &[],
    )
    .await
    .unwrap();
    let mixed = tx
        .execute(&transfer_sql("x", "sale", "payer-1", "usd-1", 10, 156), &[])
        .await;
    assert!(
        mixed.is_err(),
        "a transfer to an account in another currency is refused"
    );
    drop(tx);
    assert_eq!(assert_ledger_conserved(&s.store).await, OPENING);
}
on_both_journals!(
    the_database_enforces_the_money_rules,
    super::the_database_enforces_the_money_rules
);

/// Regression (lifecycle issue): an order whose stored state did not parse was treated as
/// CREATED, i.e. payable. Now reading it is an error and the payment is not made.
async fn an_unknown_stored_state_stops_the_request(backend: Backend) {
    let journal = TestJournal::new(backend);
    let s = seeded(&journal).await;
    let order = s.orders.create(new_order("000071", 100)).await.unwrap();
    let mut tx = s.store.begin().await.unwrap();
    tx.execute(
        "UPDATE orders SET state = 'HALF_WRITTEN' WHERE order_id = $1",
        &[order.order_id.as_str().into()],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert!(s.orders.order(&order.order_id).await.is_err());
    let request = PayRequest {
        app_id: APP_ID.into(),
        pek_label: "pek/wallet".into(),
        idempotency_key: "unknown-state".into(),
        payload: order.payload.clone(),
        pan: Pan::new(PAYER_PAN).unwrap(),
        pin_block: Some(pin_block(&s.orders, PAYER_PIN, PAYER_PAN).await),
        pin_format: PinBlockFormat::Iso4,
        amount: None,
    };
    assert!(matches!(
        s.orders.pay(request).await,
        Err(OrderError::Journal(_))
    ));
    assert_eq!(
        balance(&s.orders, "payer-1").await,
        OPENING,
        "no money moved"
    );
}
on_both_journals!(
    an_unknown_stored_state_stops_the_request,
    super::an_unknown_stored_state_stops_the_request
);

/// Regression (lifecycle issue): `upstream.reversal_poll_ms = 0` panicked the reversal worker
/// at start (and the panic was swallowed). Now the configuration is refused with the key named.
#[tokio::test]
async fn zero_intervals_are_refused_at_load() {
    let journal = TestJournal::new(Backend::Sqlite);
    for (key, adjust) in [
        (
            "upstream.reversal_poll_ms",
            (|c: &mut posbridge::infra::config::Config| c.upstream.reversal_poll_ms = 0)
                as fn(&mut _),
        ),
        ("upstream.sale_timeout_ms", |c| {
            c.upstream.sale_timeout_ms = 0
        }),
        ("upstream.reversal_retry_initial_ms", |c| {
            c.upstream.reversal_retry_initial_ms = 0
        }),
    ] {
        let mut config = config(&journal);
        adjust(&mut config);
        let Err(error) = posbridge::app::server::open(config).await else {
            panic!("{key} = 0 must be refused");
        };
        assert!(format!("{error:#}").contains(key), "{key}: {error:#}");
    }
}

/// Regression (lifecycle issue): metrics were counted inside transactions that could roll
/// back. What a transaction means to tell the world after its commit runs only if it commits.
async fn after_commit_actions_run_only_on_commit(backend: Backend) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let journal = TestJournal::new(backend);
    let s = seeded(&journal).await;
    let ran = Arc::new(AtomicUsize::new(0));
    let mut rolled_back = s.store.begin().await.unwrap();
    let counter = ran.clone();
    rolled_back.after_commit(move || {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    drop(rolled_back);
    assert_eq!(
        ran.load(Ordering::SeqCst),
        0,
        "a rolled-back transaction tells nobody"
    );
    let mut committed = s.store.begin().await.unwrap();
    let counter = ran.clone();
    committed.after_commit(move || {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    committed.commit().await.unwrap();
    assert_eq!(ran.load(Ordering::SeqCst), 1);
}
on_both_journals!(
    after_commit_actions_run_only_on_commit,
    super::after_commit_actions_run_only_on_commit
);

/// Regression (conformance issue): an order in a currency the merchant does not accept was
/// created and failed later with a misleading 51. Now it is refused at once (13).
async fn an_order_in_another_currency_is_refused_at_once(backend: Backend) {
    let journal = TestJournal::new(backend);
    let s = seeded(&journal).await;
    let mut usd = new_order("000041", 100);
    usd.amount.currency = 840;
    let refused = s.orders.create(usd).await.unwrap_err();
    assert_eq!(
        refused.response_code(),
        ResponseCode::InvalidAmount,
        "{refused}"
    );
}
on_both_journals!(
    an_order_in_another_currency_is_refused_at_once,
    super::an_order_in_another_currency_is_refused_at_once
);

/// Expiry on tokio's paused clock, which the journal's times follow: an order is payable until
/// its time to live has passed, to the millisecond, and expired by the sweep right after.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_order_expires_when_the_runtime_clock_reaches_its_deadline() {
    posbridge::infra::clock::follow_runtime_clock();
    let journal = TestJournal::new(Backend::Sqlite);
    let s = seeded(&journal).await;
    let first = s.orders.create(new_order("000031", 100)).await.unwrap();
    let second = s.orders.create(new_order("000032", 100)).await.unwrap();
    tokio::time::advance(Duration::from_millis(119_990)).await;
    assert!(
        s.orders.expire_due().await.unwrap().is_empty(),
        "10 ms left"
    );
    let paid = pay(&s.orders, &first.payload, Some(PAYER_PIN), "x1").await;
    assert_eq!(
        paid.code(),
        ResponseCode::Approved,
        "payable 10 ms before its deadline"
    );
    tokio::time::advance(Duration::from_millis(20)).await;
    assert_eq!(
        s.orders.expire_due().await.unwrap(),
        vec![second.order_id.clone()]
    );
    let late = pay(&s.orders, &second.payload, Some(PAYER_PIN), "x2").await;
    assert_eq!(late.code(), ResponseCode::Expired);
    assert_ledger_conserved(&s.store).await;
}

/// Regression (security review): three wrong PINs locked a card for ever (only an operator
/// could lift it), so anyone with an app key and a victim's card number could block the card.
/// The lock now runs out after `gateway.pin_lock_secs` (a day by default), on tokio's paused
/// clock here: locked a millisecond before, payable right after, with a fresh count.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_pin_lock_runs_out_after_its_time() {
    posbridge::infra::clock::follow_runtime_clock();
    let journal = TestJournal::new(Backend::Sqlite);
    let s = seeded(&journal).await;
    let order = s.orders.create(new_order("000041", 100)).await.unwrap();
    for (n, expected) in [
        ResponseCode::WrongPin,
        ResponseCode::WrongPin,
        ResponseCode::PinTriesExceeded,
    ]
    .into_iter()
    .enumerate()
    {
        let wrong = pay(&s.orders, &order.payload, Some("9999"), &format!("w{n}")).await;
        assert_eq!(wrong.code(), expected, "wrong PIN {}", n + 1);
    }
    tokio::time::advance(Duration::from_secs(86_399)).await;
    let early = s.orders.create(new_order("000042", 100)).await.unwrap();
    let refused = pay(&s.orders, &early.payload, Some(PAYER_PIN), "early").await;
    assert_eq!(
        refused.code(),
        ResponseCode::PinTriesExceeded,
        "still locked"
    );
    tokio::time::advance(Duration::from_secs(2)).await;
    let later = s.orders.create(new_order("000043", 100)).await.unwrap();
    let one_wrong = pay(&s.orders, &later.payload, Some("9999"), "later-w").await;
    assert_eq!(
        one_wrong.code(),
        ResponseCode::WrongPin,
        "a fresh count after the lock"
    );
    let paid = pay(&s.orders, &later.payload, Some(PAYER_PIN), "later").await;
    assert_eq!(paid.code(), ResponseCode::Approved);
    assert_ledger_conserved(&s.store).await;
}

/// Security review: nothing limited how often one card could be tried (a stolen card number
/// against a PIN, or a flood of payments). Now a card may attempt
/// `wallet_api.card_payments_per_minute` payments per minute (here 3), counted from the
/// journal's attempts so the limit holds across gateways; more are answered 65. A retry with
/// the same idempotency key gets its first result, and a minute later (tokio's paused clock)
/// the card pays again.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_card_is_limited_to_its_payments_per_minute() {
    posbridge::infra::clock::follow_runtime_clock();
    let journal = TestJournal::new(Backend::Sqlite);
    let mut cfg = config(&journal);
    cfg.wallet_api.card_payments_per_minute = 3;
    let s = seed(posbridge::app::server::open(cfg).await.unwrap()).await;
    let mut first_payload = String::new();
    for n in 0..3 {
        let order = s
            .orders
            .create(new_order(&format!("00005{n}"), 100))
            .await
            .unwrap();
        if n == 0 {
            first_payload = order.payload.clone();
        }
        let paid = pay(&s.orders, &order.payload, Some(PAYER_PIN), &format!("v{n}")).await;
        assert_eq!(paid.code(), ResponseCode::Approved, "payment {}", n + 1);
    }
    let fourth = s.orders.create(new_order("000059", 100)).await.unwrap();
    let refused = pay(&s.orders, &fourth.payload, Some(PAYER_PIN), "v3").await;
    assert_eq!(refused.code(), ResponseCode::TooFrequent);
    assert_eq!(refused.code().as_str(), "65");
    assert_eq!(refused.code().api_error(), ("too_many_payments", 429));
    let retry = pay(&s.orders, &first_payload, Some(PAYER_PIN), "v0").await;
    assert_eq!(
        retry.code(),
        ResponseCode::Approved,
        "an idempotent retry is not a new payment"
    );
    tokio::time::advance(Duration::from_secs(61)).await;
    let later = s.orders.create(new_order("000060", 100)).await.unwrap();
    let paid = pay(&s.orders, &later.payload, Some(PAYER_PIN), "v4").await;
    assert_eq!(paid.code(), ResponseCode::Approved, "a minute later");
    assert_eq!(balance(&s.orders, "payer-1").await, OPENING - 400);
}

/// Race (journal migration 18): a transfer's trigger reads a funding account, whose balance it
/// does not move, with a key-share lock, as the foreign key it replaced did. Without it, the
/// account could be deleted while a transfer from it is being written (the delete's check sees
/// no committed transfer) and that transfer then commit from a deleted account. Replayed: the
/// transfer written and not committed, the delete must wait for it (and gives up on its lock
/// timeout); once it is committed, the delete is refused.
#[tokio::test]
async fn an_account_cannot_go_while_a_transfer_from_it_is_written() {
    let journal = TestJournal::new(Backend::Postgres);
    let s = seeded(&journal).await;
    let mut tx = s.store.begin().await.unwrap();
    tx.execute(
        "INSERT INTO accounts (account_id, kind, holder, currency, balance_minor, pin_tries, created_at_ms) \
         VALUES ('funding-978', 'funding', 'EUR funding', 978, 0, 0, 0), ('eur-1', 'payer', 'EUR holder', 978, 0, 0, 0)",
        &[],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let mut writer = s.store.begin().await.unwrap();
    let transfer = transfer_sql("eur", "funding", "funding-978", "eur-1", 100, 978);
    writer.execute(&transfer, &[]).await.unwrap();
    let delete = async || {
        let mut tx = s.store.begin().await.unwrap();
        tx.execute("SET LOCAL lock_timeout = '200ms'", &[])
            .await
            .unwrap();
        let result = tx
            .execute("DELETE FROM accounts WHERE account_id = 'funding-978'", &[])
            .await;
        let error = result.expect_err("the account must stay").to_string();
        drop(tx);
        error
    };
    let waited = delete().await;
    assert!(
        waited.contains("55P03"),
        "the delete waits for the transfer: {waited}"
    );
    writer.commit().await.unwrap();
    let refused = delete().await;
    assert!(refused.contains("has transfers"), "{refused}");
    assert_eq!(balance(&s.orders, "eur-1").await, 100);
}

/// Security issue: two gateways sharing a PostgreSQL journal each counted a card's payments
/// of the last minute before either had written its attempt, so at the same instant both could
/// let one more through. Now a card's payments are counted one at a time (a transaction-scoped
/// advisory lock): with a limit of 1, of two payments through two gateways at once exactly one
/// is paid, every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_card_limit_holds_across_gateways_paying_at_once() {
    let journal = TestJournal::new(Backend::Postgres);
    let limited = || {
        let mut cfg = config(&journal);
        cfg.wallet_api.card_payments_per_minute = 1;
        cfg
    };
    let a = seed(posbridge::app::server::open(limited()).await.unwrap()).await;
    let b = posbridge::app::server::open(limited()).await.unwrap();
    for round in 0..5 {
        let first = a
            .orders
            .create(new_order(&format!("0007{round}0"), 100))
            .await
            .unwrap();
        let second = a
            .orders
            .create(new_order(&format!("0007{round}1"), 100))
            .await
            .unwrap();
        let (key_a, key_b) = (format!("race-{round}-a"), format!("race-{round}-b"));
        let (one, two) = tokio::join!(
            pay(&a.orders, &first.payload, Some(PAYER_PIN), &key_a),
            pay(&b.orders, &second.payload, Some(PAYER_PIN), &key_b),
        );
        let mut codes = [one.code(), two.code()];
        codes.sort_by_key(|code| code.as_str().to_owned());
        assert_eq!(
            codes,
            [ResponseCode::Approved, ResponseCode::TooFrequent],
            "round {round}"
        );
        // The next round starts with the minute's window empty again.
        let mut tx = a.store.begin().await.unwrap();
        tx.execute("DELETE FROM attempts", &[]).await.unwrap();
        tx.commit().await.unwrap();
    }
}

/// Regression (conformance review): `account-add --wallet-app` took an app id that did not
/// exist, binding the card to no app (every payment then answered wrong_pin). Now refused.
#[tokio::test]
async fn a_card_cannot_be_bound_to_an_unknown_wallet_app() {
    let journal = TestJournal::new(Backend::Sqlite);
    let s = seeded(&journal).await;
    let refused = posbridge::service::enrolment::register_payer(
        &s.orders,
        posbridge::service::enrolment::NewPayer {
            account_id: "payer-typo".into(),
            holder: "Typo".into(),
            pan: Pan::new("6222020000000000034").unwrap(),
            pin: None,
            opening: Money {
                amount_minor: 100,
                currency: CNY,
            },
            wallet_app: Some("my-walet".into()),
        },
        &s.gateway.config.keys.pvk,
    )
    .await;
    assert!(
        matches!(&refused, Err(OrderError::Refused { reason, .. }) if reason.contains("no wallet app my-walet")),
        "{refused:?}"
    );
}

/// A held terminal request answers from the read it made before it subscribed only if no change
/// was learnt since (the notifier's sequence). Here the order is paid between that read and the
/// wait: the wait must not trust the stale CREATED read. Trusted, it would sit until its deadline
/// (an hour, with an hour's poll interval: no re-read before) and the guard below would fail the
/// test; not trusted, it reads PAID at once.
async fn a_change_between_the_read_and_the_wait_is_not_missed(backend: Backend) {
    let journal = TestJournal::new(backend);
    let mut config = config(&journal);
    config.gateway.poll_interval_ms = 3_600_000;
    let s = seed(posbridge::app::server::open(config).await.unwrap()).await;
    let order = s.orders.create(new_order("000091", 300)).await.unwrap();
    let sequence = s.orders.read_sequence();
    let read = s.orders.order(&order.order_id).await.unwrap().unwrap();
    assert_eq!(read.state(), OrderState::Created);
    let result = pay(&s.orders, &order.payload, Some(PAYER_PIN), "between").await;
    assert_eq!(result.code(), ResponseCode::Approved, "{result:?}");
    let stale = posbridge::service::orders::ReadAt {
        order: read,
        sequence,
    };
    let waited = s.orders.wait_final_after(stale, Duration::from_secs(3_600));
    let seen = tokio::time::timeout(Duration::from_secs(120), waited)
        .await
        .expect("the stale read was trusted: the wait sat on it")
        .unwrap()
        .unwrap();
    assert_eq!(seen.state(), OrderState::Paid);
    // A read taken with no change since is trusted as it is (nothing final to wait for here:
    // the paid order is answered at once either way).
    let sequence = s.orders.read_sequence();
    let fresh = s.orders.order(&order.order_id).await.unwrap().unwrap();
    let seen = s
        .orders
        .wait_final_after(
            posbridge::service::orders::ReadAt {
                order: fresh,
                sequence,
            },
            Duration::from_secs(5),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen.state(), OrderState::Paid);
}
on_both_journals!(
    a_change_between_the_read_and_the_wait_is_not_missed,
    super::a_change_between_the_read_and_the_wait_is_not_missed
);

/// The other half: a change of *another* order between the read and the wait leaves the read
/// trusted (under load some order changes during almost every read, and the held request would
/// otherwise read its order again). Observed through a change the notifier never hears of: the
/// order's operator rewritten in the journal behind the gateway's back. A wait with no time left
/// answers from the one source its first round picks: the trusted read (the old operator), or the
/// journal (the new one).
async fn a_change_of_another_order_leaves_the_read_trusted(backend: Backend) {
    let journal = TestJournal::new(backend);
    let s = seeded(&journal).await;
    let held = s.orders.create(new_order("000093", 300)).await.unwrap();
    let other = s.orders.create(new_order("000094", 400)).await.unwrap();
    let sequence = s.orders.read_sequence();
    let read = s.orders.order(&held.order_id).await.unwrap().unwrap();
    let result = pay(&s.orders, &other.payload, Some(PAYER_PIN), "other").await;
    assert_eq!(result.code(), ResponseCode::Approved, "{result:?}");
    let rewritten = s
        .orders
        .store()
        .write_one(
            "UPDATE orders SET operator = 'behind-its-back' WHERE order_id = $1",
            &[held.order_id.as_str().into()],
        )
        .await;
    rewritten.unwrap();
    let read_at = |order| posbridge::service::orders::ReadAt { order, sequence };
    let seen = s
        .orders
        .wait_final_after(read_at(read.clone()), Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen.operator, read.operator, "the read was not trusted");
    // The same read after a change of its own order (announced here) is not trusted.
    s.orders.notifier().changed(&held.order_id);
    let seen = s
        .orders
        .wait_final_after(read_at(read), Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen.operator.as_deref(), Some("behind-its-back"));
}
on_both_journals!(
    a_change_of_another_order_leaves_the_read_trusted,
    super::a_change_of_another_order_leaves_the_read_trusted
);

/// The one writer's check of a state change: applied to an order that is no longer in the state
/// it was decided for (here a stale CREATED read of an order cancelled since), nothing commits.
/// SQLite sees it at once (a conflict); PostgreSQL, where the change travels with the commit,
/// raises it there (migration 16), and the commit fails. Either way the order keeps its state and
/// its events.
async fn a_state_change_on_a_stale_order_commits_nothing(backend: Backend) {
    use posbridge::domain::lifecycle::{self, Event, Verdict};
    use posbridge::store::orders::{self as order_store, Apply, ApplyError};
    let journal = TestJournal::new(backend);
    let s = seeded(&journal).await;
    let order = s.orders.create(new_order("000096", 300)).await.unwrap();
    let stale = s.orders.order(&order.order_id).await.unwrap().unwrap();
    let cancelled = s
        .orders
        .cancel(&order.order_id, "by the test")
        .await
        .unwrap();
    assert_eq!(cancelled.map(|o| o.state()), Some(OrderState::Cancelled));
    let events = || async {
        s.orders
            .store()
            .read_opt(
                "SELECT COUNT(*) FROM order_events WHERE order_id = $1",
                &[order.order_id.as_str().into()],
            )
            .await
            .unwrap()
            .unwrap()
            .i64(0)
            .unwrap()
    };
    let before = events().await;
    let mut tx = s.orders.store().begin().await.unwrap();
    let context = order_store::context(&mut tx, &stale).await.unwrap();
    let Verdict::Move(transition) = lifecycle::next(stale.state(), Event::Expire, &context) else {
        panic!("CREATED expires");
    };
    let applied = order_store::apply(&mut tx, Apply::new(&stale, &transition, &context)).await;
    match backend {
        Backend::Sqlite => {
            assert!(
                matches!(applied, Err(ApplyError::Conflict { .. })),
                "{applied:?}"
            );
            drop(tx); // rolled back (it holds the embedded journal's write lock)
        }
        Backend::Postgres => {
            assert!(
                applied.is_ok(),
                "the change travels with the commit: {applied:?}"
            );
            let committed = tx.commit().await;
            let error = committed.expect_err("the database refuses the stale change");
            assert!(
                error.to_string().contains("was not in state CREATED"),
                "{error}"
            );
        }
    }
    let now = s.orders.order(&order.order_id).await.unwrap().unwrap();
    assert_eq!(now.state(), OrderState::Cancelled);
    assert_eq!(events().await, before, "no event row committed");
}
on_both_journals!(
    a_state_change_on_a_stale_order_commits_nothing,
    super::a_state_change_on_a_stale_order_commits_nothing
);

/// Every committed change of an order wakes this gateway's waiters from the journal's store,
/// whichever code committed it: here a transition applied in a bare transaction of the store, as
/// the forwarder's background work (standby recovery, late approvals, reversal answers) applies
/// its changes, with no call to the notifier; on SQLite, which has no notifications, such a
/// change had waited for the waiters' periodic re-read. A rolled-back change wakes nobody; a
/// change committed with the order hands the order to the waiters.
async fn a_committed_change_wakes_the_waiters_from_the_store(backend: Backend) {
    use futures_util::FutureExt;
    use posbridge::domain::lifecycle::{self, Event, Verdict};
    use posbridge::store::orders::{self as order_store, Apply};
    let journal = TestJournal::new(backend);
    let s = seeded(&journal).await;
    let order = s.orders.create(new_order("000097", 300)).await.unwrap();
    let notifier = s.orders.notifier();
    let watch = notifier.subscribe(&order.order_id);
    let sequence = notifier.sequence();
    let mut tx = s.orders.store().begin().await.unwrap();
    tx.announce_order(&order.order_id);
    tx.query("SELECT 1", &[]).await.unwrap();
    drop(tx);
    assert_eq!(notifier.sequence(), sequence, "a rollback wakes nobody");
    {
        let woken = watch.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let mut tx = s.orders.store().begin().await.unwrap();
        let context = order_store::context(&mut tx, &order).await.unwrap();
        let Verdict::Move(transition) = lifecycle::next(order.state(), Event::Expire, &context)
        else {
            panic!("CREATED expires");
        };
        order_store::apply(&mut tx, Apply::new(&order, &transition, &context))
            .await
            .unwrap();
        assert!(
            woken.as_mut().now_or_never().is_none(),
            "nobody is woken before the commit"
        );
        tx.commit().await.unwrap();
        assert!(woken.now_or_never().is_some(), "the commit woke the waiter");
    }
    assert!(watch.latest().is_none(), "told to read the order");
    assert!(notifier.changed_since(&order.order_id, sequence));
    let expired = s.orders.order(&order.order_id).await.unwrap().unwrap();
    assert_eq!(expired.state(), OrderState::Expired);
    let mut tx = s.orders.store().begin().await.unwrap();
    tx.announce_order_as(&expired);
    tx.query("SELECT 1", &[]).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        watch.latest(),
        Some(expired),
        "handed the order as committed"
    );
    notifier.release(&order.order_id, watch);
}
on_both_journals!(
    a_committed_change_wakes_the_waiters_from_the_store,
    super::a_committed_change_wakes_the_waiters_from_the_store
);

/// A journal notification (another gateway's change of the order) does not make the waiters
/// read back a final order this gateway committed; it does make them read an order that is not
/// final, which the other gateway may have moved.
#[tokio::test]
async fn a_notification_keeps_a_final_order_committed_here() {
    let journal = TestJournal::new(Backend::Sqlite);
    let s = seeded(&journal).await;
    let order = s.orders.create(new_order("000095", 300)).await.unwrap();
    let notifier = s.orders.notifier();
    let watch = notifier.subscribe(&order.order_id);
    notifier.changed_to(&order);
    notifier.changed_elsewhere(&order.order_id);
    assert!(
        watch.latest().is_none(),
        "a CREATED order must be read again"
    );
    let result = pay(&s.orders, &order.payload, Some(PAYER_PIN), "final").await;
    let paid = result.order.clone().expect("the paid order");
    assert_eq!(paid.state(), OrderState::Paid);
    notifier.changed_to(&paid);
    notifier.changed_elsewhere(&order.order_id);
    assert_eq!(watch.latest().map(|o| o.state()), Some(OrderState::Paid));
    notifier.resumed();
    assert!(
        watch.latest().is_none(),
        "after a gap in notifications, everything is read"
    );
    notifier.release(&order.order_id, watch);
}

/// Regression: a refund locked its two accounts in identifier order, while a sale locks the
/// payer's and then (through its transfer's trigger) the merchant's; a refund and a sale between
/// the same two accounts at once could each hold one and wait for the other, and PostgreSQL
/// aborted one of them. A refund now takes the payer's lock first, as a sale does. Replayed step
/// by step: the sale holds the payer's lock, the refund is seen waiting for a lock, then the sale
/// moves its money and commits; both must commit, and the balances show both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_and_a_sale_between_the_same_accounts_do_not_deadlock() {
    use posbridge::store::journal::{self, Value};
    use posbridge::store::ledger::{self, AccountKind, NewAccount, TransferOutcome};
    let journal = TestJournal::new(Backend::Postgres);
    let store = journal::open(&journal.config).await.unwrap();
    let cny = |amount_minor| Money {
        amount_minor,
        currency: CNY,
    };
    // The merchant's identifier sorts first: identifier order would lock it before the payer.
    let (merchant, payer, pan_hash) = ("a-merchant", "b-payer", vec![7u8; 32]);
    let mut tx = store.begin().await.unwrap();
    for (id, kind, hash, opening) in [
        (merchant, AccountKind::Merchant, None, 100),
        (payer, AccountKind::Payer, Some(pan_hash.clone()), 1_000),
    ] {
        let account = NewAccount {
            account_id: id.into(),
            kind,
            holder: id.into(),
            pan_truncated: None,
            pan_hash: hash,
            opening: cny(opening),
            pvv: None,
            pvki: None,
            app_id: None,
        };
        ledger::create_account(&mut tx, &account).await.unwrap();
    }
    tx.commit().await.unwrap();

    // The sale's first lock: the payer's row.
    let mut sale = store.begin().await.unwrap();
    let locked = ledger::payer_by_pan_hash_for_update(&mut sale, &pan_hash)
        .await
        .unwrap()
        .expect("the payer exists");

    // The refund, from its own connection, until it waits for a lock.
    let (pid_tx, pid_rx) = tokio::sync::oneshot::channel();
    let refund_store = store.clone();
    let refund = tokio::spawn(async move {
        let mut tx = refund_store.begin().await?;
        let pid = tx.query_opt("SELECT pg_backend_pid()", &[]).await?;
        let _ = pid_tx.send(pid.map(|row| row.i64(0)));
        let outcome =
            ledger::transfer(&mut tx, "order-r", merchant, payer, cny(1), "refund").await?;
        tx.commit().await?;
        Ok::<_, journal::JournalError>(outcome)
    });
    let pid = pid_rx.await.unwrap().unwrap().unwrap();
    loop {
        let waiting = store
            .read_opt(
                "SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1",
                &[Value::I64(pid)],
            )
            .await
            .unwrap()
            .and_then(|row| row.opt_text(0).ok().flatten());
        if waiting.as_deref() == Some("Lock") {
            break;
        }
        assert!(
            !refund.is_finished(),
            "the refund did not wait for the sale's lock"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // The sale moves its money (its trigger locks the merchant's row) and commits.
    let moved = ledger::transfer_from_locked(
        &mut sale,
        "order-s",
        &locked,
        (merchant, CNY),
        cny(5),
        "sale",
    )
    .await
    .unwrap();
    assert_eq!(moved, TransferOutcome::Done);
    sale.commit().await.expect("the sale commits");
    let refunded = refund.await.unwrap().expect("the refund commits");
    assert_eq!(refunded, TransferOutcome::Done);
    assert_eq!(common::balance(&store, merchant).await, 100 + 5 - 1);
    assert_eq!(common::balance(&store, payer).await, 1_000 - 5 + 1);
    assert_ledger_conserved(&store).await;
}
