//! Merchant notifications for static-code payments, written to the journal in the payment's own
//! transaction and delivered from there with retries (the transactional outbox pattern), so a
//! payment is never notified twice as "new" nor lost because the merchant's server was down.
//!
//! Delivery: `POST` of the JSON body with `X-Posbridge-Event-Id` (for the receiver's
//! de-duplication) and `X-Posbridge-Signature: t=<ms>,v1=<hex HMAC-SHA256 of "t.body">` under
//! the merchant's webhook secret. Retries back off exponentially up to [`MAX_ATTEMPTS`].

use crate::store::journal::{JournalError, Store, now_ms};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::time::Duration;

/// Deliveries tried before an event is left for the operator (still queryable).
pub const MAX_ATTEMPTS: i64 = 12;

/// The signature header value for a body sent at `timestamp_ms`.
pub fn signature(secret: &str, timestamp_ms: i64, body: &str) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        // HMAC accepts keys of any length; this arm cannot be reached.
        Err(_) => return String::new(),
    };
    mac.update(timestamp_ms.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!(
        "t={timestamp_ms},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// How long a claimed event is left to the process that claimed it before another may take it.
const CLAIM_LEASE_MS: i64 = 60_000;

/// Delivers the due events once; returns how many were delivered. The due rows are claimed in
/// a short transaction (on PostgreSQL `SKIP LOCKED`, so several gateways share the outbox) by
/// pushing their next attempt out by a lease; the webhooks are then called outside any
/// transaction, and each result recorded in its own. A process that dies mid-way leaves its
/// claims to expire: delivery is at least once, and receivers de-duplicate by event id.
pub async fn deliver_due(store: &Store, client: &reqwest::Client) -> Result<usize, JournalError> {
    let due = claim_due(store).await?;
    let mut delivered = 0;
    for event in due {
        let timestamp = now_ms();
        let outcome = client
            .post(&event.url)
            .header("content-type", "application/json")
            .header("x-posbridge-event-id", &event.event_id)
            .header(
                "x-posbridge-signature",
                signature(&event.secret, timestamp, &event.body),
            )
            .body(event.body.clone())
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        let error = match outcome {
            Ok(response) if response.status().is_success() => None,
            Ok(response) => Some(format!("HTTP {}", response.status())),
            Err(error) => Some(error.to_string()),
        };
        delivered += usize::from(error.is_none());
        record_delivery(store, &event, error).await?;
    }
    Ok(delivered)
}

/// A claimed outbox row.
struct Claimed {
    event_id: String,
    url: String,
    body: String,
    attempts: i64,
    secret: String,
}

async fn claim_due(store: &Store) -> Result<Vec<Claimed>, JournalError> {
    let mut tx = store.begin().await?;
    let sql = format!(
        "SELECT o.event_id, o.url, o.body, o.attempts, m.webhook_secret FROM outbox o JOIN merchants m ON m.mid = o.mid \
         WHERE o.delivered_at_ms IS NULL AND o.attempts < $1 AND o.next_attempt_at_ms <= $2 \
         ORDER BY o.next_attempt_at_ms LIMIT 20{}",
        match tx.dialect() {
            crate::store::journal::Dialect::Postgres => " FOR UPDATE OF o SKIP LOCKED",
            crate::store::journal::Dialect::Sqlite => "",
        }
    );
    let now = now_ms();
    let rows = tx.query(&sql, &[MAX_ATTEMPTS.into(), now.into()]).await?;
    let mut claimed = Vec::with_capacity(rows.len());
    for row in rows {
        let event = Claimed {
            event_id: row.text(0)?,
            url: row.text(1)?,
            body: row.text(2)?,
            attempts: row.i64(3)? + 1,
            secret: row.opt_text(4)?.unwrap_or_default(),
        };
        tx.execute(
            "UPDATE outbox SET next_attempt_at_ms = $2 WHERE event_id = $1",
            &[
                event.event_id.as_str().into(),
                (now + CLAIM_LEASE_MS).into(),
            ],
        )
        .await?;
        claimed.push(event);
    }
    tx.commit().await?;
    Ok(claimed)
}

async fn record_delivery(
    store: &Store,
    event: &Claimed,
    error: Option<String>,
) -> Result<(), JournalError> {
    let mut tx = store.begin().await?;
    match error {
        None => {
            tx.execute(
                "UPDATE outbox SET attempts = $2, delivered_at_ms = $3, last_error = NULL WHERE event_id = $1",
                &[event.event_id.as_str().into(), event.attempts.into(), now_ms().into()],
            )
            .await?;
        }
        Some(error) => {
            tracing::warn!(
                event_id = event.event_id,
                attempts = event.attempts,
                error,
                "merchant notification failed; will retry"
            );
            let backoff_ms = 1_000_i64.saturating_mul(1 << event.attempts.min(10));
            tx.execute(
                "UPDATE outbox SET attempts = $2, next_attempt_at_ms = $3, last_error = $4 WHERE event_id = $1",
                &[
                    event.event_id.as_str().into(),
                    event.attempts.into(),
                    (now_ms() + backoff_ms).into(),
                    error.into(),
                ],
            )
            .await?;
        }
    }
    tx.commit().await
}
