//! The one store-and-forward queue engine, under the three queues of work a gateway sends to
//! another system: reversals and refund advices to hosts, notifications to merchants' webhooks.
//!
//! Every queue row has a `status` (work is due while it is `QUEUED` and its
//! `next_attempt_at_ms` has come), an `attempts` count and a `lease_token`. Work goes in three
//! steps, and no transaction is open across the network call of the second:
//!
//! 1. [`claim`]: in one short transaction, due rows are locked (`FOR UPDATE SKIP LOCKED` on
//!    PostgreSQL, so gateways sharing the journal never take the same row) and leased: a fresh
//!    token is written, the attempt counted, and the next attempt pushed out by the lease. The
//!    transaction commits before anything is sent.
//! 2. The caller sends (a host exchange, a webhook POST).
//! 3. [`finish`]: in the caller's transaction, the outcome is written only if the row still
//!    carries this claim's token and is still `QUEUED`. A gateway that dies between 1 and 3
//!    leaves its rows to come due again when the lease ends: another gateway (or itself after
//!    a restart) takes them over, as a repeat. A claim whose lease was taken over is not
//!    recorded twice: [`finish`] answers false and the taker records its own outcome.
//!
//! The attempt is counted when it is claimed, not when it is answered: once a message may have
//! left, the next one is a repeat (0401, 0221), even after a crash.

use crate::store::journal::{JournalError, Row, Store, Tx, Value, new_id, now_ms};

/// Row status: due (or leased) work.
pub const QUEUED: &str = "QUEUED";
/// Row status: the peer acknowledged it.
pub const DONE: &str = "DONE";

/// One queue: its table and what a claim reads from it.
#[derive(Debug, Clone, Copy)]
pub struct Queue {
    /// Table, aliased `q` in the statements.
    pub table: &'static str,
    /// Its key column.
    pub id: &'static str,
    /// Columns a claim returns (after the id and the attempt number), over `q` and `join`.
    pub columns: &'static str,
    /// Joined tables (SQL after `FROM table q`), or "".
    pub join: &'static str,
    /// A further condition on due rows (`AND ...`), which may use `$3`, or "".
    pub filter: &'static str,
}

/// A leased row.
#[derive(Debug, Clone)]
pub struct Claim {
    /// The row's key.
    pub id: String,
    /// This claim's token: only it may record the outcome.
    pub lease: String,
    /// The attempt this claim is (1 for the first).
    pub attempt: i64,
    /// The queue's `columns`.
    pub row: Row,
}

/// What becomes of a claimed row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// New status ([`QUEUED`] to retry).
    pub status: &'static str,
    /// When it is due again (for [`QUEUED`]).
    pub next_attempt_at_ms: i64,
    /// Why it is not done, kept on the row for the operator.
    pub error: Option<String>,
    /// False when nothing was sent (no host configured, expired): the attempt does not count.
    pub sent: bool,
}

impl Outcome {
    /// Acknowledged.
    pub fn done() -> Outcome {
        Outcome {
            status: DONE,
            next_attempt_at_ms: now_ms(),
            error: None,
            sent: true,
        }
    }

    /// Ended without acknowledgement (`status` is EXPIRED, REFUSED, FAILED, ...).
    pub fn ended(status: &'static str, error: String, sent: bool) -> Outcome {
        Outcome {
            status,
            next_attempt_at_ms: now_ms(),
            error: Some(error),
            sent,
        }
    }

    /// To be tried again at `at_ms`.
    pub fn retry(at_ms: i64, error: String, sent: bool) -> Outcome {
        Outcome {
            status: QUEUED,
            next_attempt_at_ms: at_ms,
            error: Some(error),
            sent,
        }
    }
}

/// Claims up to `limit` due rows of `queue` for `lease_ms` and commits. `extra` binds `$3` of
/// the queue's filter.
pub async fn claim(
    store: &Store,
    queue: &Queue,
    limit: i64,
    lease_ms: i64,
    extra: Option<Value>,
) -> Result<Vec<Claim>, JournalError> {
    let mut tx = store.begin().await?;
    let lock = match tx.dialect() {
        crate::store::journal::Dialect::Postgres => " FOR UPDATE OF q SKIP LOCKED",
        crate::store::journal::Dialect::Sqlite => "",
    };
    let Queue {
        table,
        id,
        columns,
        join,
        filter,
    } = *queue;
    let sql = format!(
        "SELECT q.{id}, q.attempts, {columns} FROM {table} q {join} WHERE q.status = 'QUEUED' \
         AND q.next_attempt_at_ms <= $1 {filter} ORDER BY q.next_attempt_at_ms LIMIT $2{lock}"
    );
    let now = now_ms();
    let mut params = vec![now.into(), limit.into()];
    params.extend(extra);
    let rows = tx.query(&sql, &params).await?;
    let lease_sql = format!(
        "UPDATE {table} SET attempts = attempts + 1, next_attempt_at_ms = $2, lease_token = $3, updated_at_ms = $4 \
         WHERE {id} = $1"
    );
    let mut claims = Vec::with_capacity(rows.len());
    for row in rows {
        let (key, attempts) = (row.text(0)?, row.i64(1)?);
        let lease = new_id();
        tx.execute(
            &lease_sql,
            &[
                key.as_str().into(),
                now.saturating_add(lease_ms).into(),
                lease.as_str().into(),
                now.into(),
            ],
        )
        .await?;
        claims.push(Claim {
            id: key,
            lease,
            attempt: attempts + 1,
            row: row.skip(2),
        });
    }
    tx.commit().await?;
    if !claims.is_empty() {
        crate::infra::failpoint::hit("queue.claimed").await;
    }
    Ok(claims)
}

/// Records a claim's outcome in the caller's transaction. False when the claim's lease was
/// taken over meanwhile (or its row changed by another writer): nothing is written, and the
/// caller must not act on the outcome.
pub async fn finish(
    tx: &mut Tx,
    queue: &Queue,
    claim: &Claim,
    outcome: &Outcome,
) -> Result<bool, JournalError> {
    let sql = format!(
        "UPDATE {table} SET status = $3, attempts = $4, next_attempt_at_ms = $5, last_error = $6, lease_token = NULL, \
         updated_at_ms = $7 WHERE {id} = $1 AND lease_token = $2 AND status = 'QUEUED'",
        table = queue.table,
        id = queue.id
    );
    let attempts = if outcome.sent {
        claim.attempt
    } else {
        claim.attempt - 1
    };
    let changed = tx
        .execute(
            &sql,
            &[
                claim.id.as_str().into(),
                claim.lease.as_str().into(),
                outcome.status.into(),
                attempts.into(),
                outcome.next_attempt_at_ms.into(),
                outcome.error.clone().into(),
                now_ms().into(),
            ],
        )
        .await?;
    if changed != 1 {
        tracing::warn!(
            table = queue.table,
            id = claim.id,
            attempt = claim.attempt,
            "lease taken over before the outcome was recorded; the taker records its own"
        );
    }
    Ok(changed == 1)
}
