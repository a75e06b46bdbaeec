//! The store-and-forward queue rows of the five-role deployment, as the order writer changes
//! them: reversals (armed in STANDBY before a sale leaves, QUEUED when it must be reversed) and
//! refund advices. Delivery lives in [`crate::service::orders::forward`].

use crate::domain::money::Money;
use crate::store::counters;
use crate::store::journal::{JournalError, Tx, new_id, now_ms};

/// Queues the reversal of an order's forwarded sale: `forward_id` when the event is about one
/// sale, else every sale of the order that may have reached its host. A reversal that was
/// standing by, cancelled by a clean answer, or acknowledged already (a late approval after a
/// reversal the host answered 25) is queued again; one that was sent before goes again as a
/// repeat (0401 / 0421, same STAN), since the host may have seen it. Its expiry is pushed out to
/// `ttl_ms` from now when that is later (a void a day after the sale must not expire at once).
pub async fn queue_reversal(
    tx: &mut Tx,
    order_id: &str,
    forward_id: Option<&str>,
    reason: &str,
    ttl_ms: i64,
) -> Result<u64, JournalError> {
    let now = now_ms();
    let expires = now.saturating_add(ttl_ms);
    let changed = match forward_id {
        Some(forward_id) => {
            tx.execute(
                "UPDATE reversals SET status = 'QUEUED', reason = $2, next_attempt_at_ms = $3, updated_at_ms = $3, \
                 expires_at_ms = CASE WHEN expires_at_ms < $4 THEN $4 ELSE expires_at_ms END \
                 WHERE forward_id = $1 AND status IN ('STANDBY', 'CANCELLED', 'DONE')",
                &[forward_id.into(), reason.into(), now.into(), expires.into()],
            )
            .await?
        }
        None => {
            tx.execute(
                "UPDATE reversals SET status = 'QUEUED', reason = $2, next_attempt_at_ms = $3, updated_at_ms = $3, \
                 expires_at_ms = CASE WHEN expires_at_ms < $4 THEN $4 ELSE expires_at_ms END \
                 WHERE forward_id IN (SELECT forward_id FROM forwarded_sales WHERE order_id = $1 \
                 AND state IN ('SENDING', 'APPROVED', 'AMBIGUOUS')) AND status IN ('STANDBY', 'CANCELLED')",
                &[order_id.into(), reason.into(), now.into(), expires.into()],
            )
            .await?
        }
    };
    Ok(changed)
}

/// Cancels a sale's standby reversal: its answer was clean, or it never left.
pub async fn cancel_standby(tx: &mut Tx, forward_id: &str) -> Result<(), JournalError> {
    tx.execute(
        "UPDATE reversals SET status = 'CANCELLED', updated_at_ms = $2 WHERE forward_id = $1 AND status = 'STANDBY'",
        &[forward_id.into(), now_ms().into()],
    )
    .await?;
    Ok(())
}

/// Withdraws an order's refund advices that were never sent (the sale is reversed whole).
pub async fn cancel_queued_advices(tx: &mut Tx, order_id: &str) -> Result<u64, JournalError> {
    tx.execute(
        "UPDATE advices SET status = 'CANCELLED', last_error = 'sale reversed', updated_at_ms = $2 \
         WHERE status = 'QUEUED' AND attempts = 0 AND forward_id IN (SELECT forward_id FROM forwarded_sales WHERE order_id = $1)",
        &[order_id.into(), now_ms().into()],
    )
    .await
}

/// Queues a refund advice (0220) for an order's approved forwarded sale. The lifecycle checked
/// the amount against what is left; the advice carries the original data elements (field 90)
/// and its own RRN (the host's key against repeats).
pub async fn queue_refund(
    tx: &mut Tx,
    order_id: &str,
    amount: Money,
    ttl_ms: i64,
) -> Result<(), JournalError> {
    let row = tx
        .query_opt(
            "SELECT f.forward_id, f.host, r.message FROM forwarded_sales f \
             JOIN reversals r ON r.forward_id = f.forward_id WHERE f.order_id = $1 AND f.state = 'APPROVED'",
            &[order_id.into()],
        )
        .await?
        .ok_or_else(|| JournalError::Internal(format!("order {order_id}: no approved sale")))?;
    let (forward_id, host) = (row.text(0)?, row.text(1)?);
    let mut json: serde_json::Value = serde_json::from_str(&row.text(2)?)
        .map_err(|e| JournalError::Schema(format!("reversal message: {e}")))?;
    // The advice's own STAN, the same on its repeats (0221), like a reversal's.
    let stan = counters::next_stan(tx).await?;
    if let Some(fields) = json["fields"].as_object_mut() {
        for number in ["12", "13", "39"] {
            fields.remove(number);
        }
        fields.insert("11".into(), stan.into());
        fields.insert("3".into(), "200000".into());
        fields.insert("4".into(), amount.iso8583_amount().into());
        fields.insert("37".into(), counters::next_rrn(tx).await?.into());
    }
    let now = now_ms();
    tx.execute(
        "INSERT INTO advices (advice_id, forward_id, host, kind, amount_minor, status, message, attempts, next_attempt_at_ms, \
         expires_at_ms, created_at_ms, updated_at_ms) VALUES ($1, $2, $3, 'refund', $4, 'QUEUED', $5, 0, $6, $7, $6, $6)",
        &[
            new_id().into(),
            forward_id.into(),
            host.into(),
            amount.amount_minor.into(),
            json.to_string().into(),
            now.into(),
            now.saturating_add(ttl_ms).into(),
        ],
    )
    .await?;
    Ok(())
}
