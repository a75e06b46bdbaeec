//! The webhook outbox's rows: a merchant notification is written in the payment's own
//! transaction (the transactional outbox pattern); [`crate::service::webhooks`] delivers them.

use crate::store::journal::{JournalError, Tx, new_id, now_ms};

/// Queues the notification of a paid static-code order, if its merchant has a webhook.
pub async fn enqueue_payment(tx: &mut Tx, order_id: &str) -> Result<(), JournalError> {
    let row = tx
        .query_opt(
            "SELECT m.mid, m.webhook_url, o.amount_minor, o.currency, o.reference, o.state, o.rrn, o.auth_code, \
             o.payer_pan_masked, o.updated_at_ms FROM orders o JOIN merchants m ON m.mid = o.mid WHERE o.order_id = $1",
            &[order_id.into()],
        )
        .await?;
    let Some(row) = row else { return Ok(()) };
    let Some(url) = row.opt_text(1)? else {
        return Ok(());
    };
    let event_id = new_id();
    let body = serde_json::json!({
        "event_id": event_id,
        "type": "payment.approved",
        "order_id": order_id,
        "mid": row.text(0)?,
        "amount_minor": row.i64(2)?,
        "currency": row.i64(3)?,
        "reference": row.text(4)?,
        "state": row.text(5)?,
        "rrn": row.opt_text(6)?,
        "auth_code": row.opt_text(7)?,
        "masked_pan": row.opt_text(8)?,
        "paid_at_ms": row.i64(9)?,
    })
    .to_string();
    let now = now_ms();
    tx.execute(
        "INSERT INTO outbox (event_id, mid, url, body, status, attempts, next_attempt_at_ms, created_at_ms, updated_at_ms) \
         VALUES ($1, $2, $3, $4, 'QUEUED', 0, $5, $5, $5)",
        &[event_id.into(), row.text(0)?.into(), url.into(), body.into(), now.into()],
    )
    .await?;
    Ok(())
}
