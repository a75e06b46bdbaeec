//! Merchant notifications for static-code payments, written to the journal in the payment's own
//! transaction and delivered from there with retries (the transactional outbox pattern), so a
//! payment is never notified twice as "new" nor lost because the merchant's server was down.
//!
//! Delivery: `POST` of the JSON body with `X-Posbridge-Event-Id` (for the receiver's
//! de-duplication) and `X-Posbridge-Signature: t=<ms>,v1=<hex HMAC-SHA256 of "t.body">` under
//! the merchant's webhook secret. Retries back off exponentially up to [`MAX_ATTEMPTS`].

use crate::store::journal::{JournalError, Store, now_ms};
use crate::store::queue::{self, Claim, Queue};
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

/// Events one claim takes, and the longest one delivery may take.
const CLAIM_BATCH: i64 = 5;
const POST_TIMEOUT_MS: i64 = 5_000;

/// The outbox over the one queue engine: the event, and its merchant's secret.
const OUTBOX: Queue = Queue {
    table: "outbox",
    id: "event_id",
    columns: "q.url, q.body, m.webhook_secret",
    join: "JOIN merchants m ON m.mid = q.mid",
    filter: "",
};

/// Delivers the due events once; returns how many were delivered. A batch is claimed for as
/// long as its deliveries may take and a margin (on PostgreSQL `SKIP LOCKED`, so several
/// gateways share the outbox); the webhooks are then called outside any transaction, and each
/// result recorded in its own. A process that dies mid-way leaves its claims to expire:
/// delivery is at least once, and receivers de-duplicate by event id.
pub async fn deliver_due(store: &Store, client: &reqwest::Client) -> Result<usize, JournalError> {
    let lease_ms = CLAIM_BATCH * POST_TIMEOUT_MS + 30_000;
    let due = queue::claim(store, &OUTBOX, CLAIM_BATCH, lease_ms, None).await?;
    let mut delivered = 0;
    for event in due {
        let (url, body) = (event.row.text(0)?, event.row.text(1)?);
        let secret = event.row.opt_text(2)?.unwrap_or_default();
        let timestamp = now_ms();
        let outcome = client
            .post(&url)
            .header("content-type", "application/json")
            .header("x-posbridge-event-id", &event.id)
            .header(
                "x-posbridge-signature",
                signature(&secret, timestamp, &body),
            )
            .body(body)
            .timeout(Duration::from_millis(POST_TIMEOUT_MS.unsigned_abs()))
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

async fn record_delivery(
    store: &Store,
    event: &Claim,
    error: Option<String>,
) -> Result<(), JournalError> {
    let mut tx = store.begin().await?;
    let outcome = match error {
        None => queue::Outcome::done(),
        Some(error) if event.attempt >= MAX_ATTEMPTS => {
            tracing::error!(
                event_id = event.id,
                attempts = event.attempt,
                error,
                "merchant notification failed for the last time; left for the operator"
            );
            queue::Outcome::ended("FAILED", error, true)
        }
        Some(error) => {
            tracing::warn!(
                event_id = event.id,
                attempts = event.attempt,
                error,
                "merchant notification failed; will retry"
            );
            let backoff_ms = 1_000_i64.saturating_mul(1 << event.attempt.min(10));
            queue::Outcome::retry(now_ms() + backoff_ms, error, true)
        }
    };
    if queue::finish(&mut tx, &OUTBOX, event, &outcome).await? && outcome.status == queue::DONE {
        tx.execute(
            "UPDATE outbox SET delivered_at_ms = $2 WHERE event_id = $1",
            &[event.id.as_str().into(), now_ms().into()],
        )
        .await?;
    }
    tx.commit().await
}
