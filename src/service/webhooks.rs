//! Merchant notifications for static-code payments, written to the journal in the payment's own
//! transaction and delivered from there with retries (the transactional outbox pattern), so a
//! payment is never notified twice as "new" nor lost because the merchant's server was down.
//!
//! Delivery: `POST` of the JSON body with `X-Posbridge-Event-Id` (for the receiver's
//! de-duplication) and `X-Posbridge-Signature: t=<ms>,v1=<hex HMAC-SHA256 of "t.body">` under
//! the merchant's webhook secret. Retries back off exponentially up to [`MAX_ATTEMPTS`].
//!
//! The webhook secret is sealed under the journal's data key ([`Secrets::set`]) and opened in the
//! security module only to sign a delivery; it is not the merchant's API key (that one is kept
//! as a hash) and it is never stored in clear.

use crate::infra::security::Security;
use crate::store::journal::{JournalError, Store, now_ms};
use crate::store::queue::{self, Claim, Queue};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::time::Duration;

/// Deliveries tried before an event is left for the operator (still queryable).
pub const MAX_ATTEMPTS: i64 = 12;

/// The signature header value for a body sent at `timestamp_ms`.
pub fn signature(secret: &[u8], timestamp_ms: i64, body: &str) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
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
    columns: "q.url, q.body, m.webhook_secret_sealed, q.mid",
    join: "JOIN merchants m ON m.mid = q.mid",
    filter: "",
};

/// Delivers the due events once; returns how many were delivered. A batch is claimed for as
/// long as its deliveries may take and a margin (on PostgreSQL `SKIP LOCKED`, so several
/// gateways share the outbox); the webhooks are then called outside any transaction, and each
/// result recorded in its own. A process that dies mid-way leaves its claims to expire:
/// delivery is at least once, and receivers de-duplicate by event id.
pub async fn deliver_due(
    store: &Store,
    client: &reqwest::Client,
    secrets: &Secrets,
) -> Result<usize, JournalError> {
    let lease_ms = CLAIM_BATCH * POST_TIMEOUT_MS + 30_000;
    let due = queue::claim(store, &OUTBOX, CLAIM_BATCH, lease_ms, None).await?;
    let mut delivered = 0;
    for event in due {
        let (url, body) = (event.row.text(0)?, event.row.text(1)?);
        let (sealed, mid) = (event.row.opt_bytes(2)?, event.row.text(3)?);
        let error = match secrets.open(&mid, sealed).await {
            Ok(secret) => post(client, &event.id, &url, &secret, body).await,
            Err(error) => Some(error),
        };
        delivered += usize::from(error.is_none());
        record_delivery(store, &event, error).await?;
    }
    Ok(delivered)
}

/// One delivery; `None` when the merchant's server accepted it, else why not.
async fn post(
    client: &reqwest::Client,
    event_id: &str,
    url: &str,
    secret: &[u8],
    body: String,
) -> Option<String> {
    let timestamp = now_ms();
    let outcome = client
        .post(url)
        .header("content-type", "application/json")
        .header("x-posbridge-event-id", event_id)
        .header("x-posbridge-signature", signature(secret, timestamp, &body))
        .body(body)
        .timeout(Duration::from_millis(POST_TIMEOUT_MS.unsigned_abs()))
        .send()
        .await;
    match outcome {
        Ok(response) if response.status().is_success() => None,
        Ok(response) => Some(format!("HTTP {}", response.status())),
        Err(error) => Some(error.to_string()),
    }
}

/// The merchants' webhook secrets: sealed in the journal under the data key, opened in the
/// security module only to sign a delivery.
#[derive(Debug, Clone)]
pub struct Secrets {
    security: Security,
    data_key: String,
}

impl Secrets {
    /// Secrets sealed under `data_key` (`[keys] data`) in `security`.
    pub fn new(security: Security, data_key: &str) -> Secrets {
        Secrets {
            security,
            data_key: data_key.to_owned(),
        }
    }

    fn context(mid: &str) -> String {
        format!("webhook-secret:{mid}")
    }

    /// `secret` sealed for `mid`.
    async fn seal(&self, mid: &str, secret: &str) -> anyhow::Result<Vec<u8>> {
        let plaintext = zeroize::Zeroizing::new(secret.as_bytes().to_vec());
        Ok(self
            .security
            .seal(&self.data_key, Self::context(mid), plaintext)
            .await?)
    }

    /// The clear secret of `mid` from its sealed value, or why it cannot be had (a delivery is
    /// never sent unsigned).
    async fn open(
        &self,
        mid: &str,
        sealed: Option<Vec<u8>>,
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, String> {
        let sealed = sealed.ok_or_else(|| "the merchant has no webhook secret".to_owned())?;
        self.security
            .open(&self.data_key, Self::context(mid), sealed)
            .await
            .map_err(|e| format!("webhook secret: {e}"))
    }

    /// Fails, naming the key, when the security module does not hold the data key (check before
    /// registering a merchant that is to have a secret).
    pub async fn ensure_key(&self) -> anyhow::Result<()> {
        self.security
            .find_key(self.data_key.clone())
            .await
            .map(|_| ())
            .map_err(|e| {
                anyhow::anyhow!(
                    "webhook secrets are sealed under [keys] data = {:?}: {e}",
                    self.data_key
                )
            })
    }

    /// Sets (or replaces) a merchant's webhook secret, sealed; the clear value is never written.
    pub async fn set(&self, store: &Store, mid: &str, secret: &str) -> anyhow::Result<()> {
        anyhow::ensure!(
            secret.len() >= 16,
            "a webhook secret must be at least 16 characters"
        );
        let sealed = self.seal(mid, secret).await?;
        let mut tx = store.begin().await?;
        let changed = tx
            .execute(
                "UPDATE merchants SET webhook_secret_sealed = $2, webhook_secret = NULL WHERE mid = $1",
                &[mid.into(), sealed.into()],
            )
            .await?;
        anyhow::ensure!(changed == 1, "no merchant {mid}");
        tx.commit().await?;
        Ok(())
    }

    /// Seals the webhook secrets an older posbridge stored in clear, and empties their clear
    /// column; returns how many. Run when the gateway opens its journal.
    pub async fn seal_clear(&self, store: &Store) -> anyhow::Result<usize> {
        let rows = store
            .read(
                "SELECT mid, webhook_secret FROM merchants WHERE webhook_secret IS NOT NULL",
                &[],
            )
            .await?;
        let mut sealed_count = 0;
        for row in rows {
            let (mid, clear) = (row.text(0)?, zeroize::Zeroizing::new(row.text(1)?));
            let sealed = self.seal(&mid, &clear).await?;
            let mut tx = store.begin().await?;
            sealed_count += tx
                .execute(
                    "UPDATE merchants SET webhook_secret_sealed = $2, webhook_secret = NULL \
                     WHERE mid = $1 AND webhook_secret = $3",
                    &[mid.as_str().into(), sealed.into(), clear.as_str().into()],
                )
                .await?;
            tx.commit().await?;
        }
        Ok(usize::try_from(sealed_count).unwrap_or(usize::MAX))
    }
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
