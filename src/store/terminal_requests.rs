//! Repeated terminal requests: a terminal that got no answer sends the same request again (same
//! TID, MTI, batch and STAN). The first one's answer is kept here, written in the same
//! transaction as what the request did, so a repeat is answered the same and never applied
//! twice.

use crate::domain::response::ResponseCode;
use crate::store::journal::{JournalError, Tx, now_ms};

/// What identifies a terminal request for repeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestKey {
    /// Terminal ID (41).
    pub tid: String,
    /// Request MTI.
    pub mti: String,
    /// Batch (60.2).
    pub batch: String,
    /// The terminal's STAN (11).
    pub stan: String,
}

/// Claims the key in the caller's transaction. `Some(code)`: a repeat, answer `code` and do
/// nothing. On PostgreSQL a concurrent first request makes this wait until it commits.
pub async fn claim(tx: &mut Tx, key: &RequestKey) -> Result<Option<ResponseCode>, JournalError> {
    let inserted = tx
        .execute(
            "INSERT INTO terminal_requests (tid, mti, batch, stan, response_code, created_at_ms) \
             VALUES ($1, $2, $3, $4, '', $5) ON CONFLICT DO NOTHING",
            &[
                key.tid.as_str().into(),
                key.mti.as_str().into(),
                key.batch.as_str().into(),
                key.stan.as_str().into(),
                now_ms().into(),
            ],
        )
        .await?;
    if inserted == 1 {
        return Ok(None);
    }
    let row = tx
        .query_opt(
            "SELECT response_code FROM terminal_requests WHERE tid = $1 AND mti = $2 AND batch = $3 AND stan = $4",
            &[
                key.tid.as_str().into(),
                key.mti.as_str().into(),
                key.batch.as_str().into(),
                key.stan.as_str().into(),
            ],
        )
        .await?
        .ok_or_else(|| JournalError::Internal("terminal request row vanished".into()))?;
    Ok(Some(ResponseCode::parse(&row.text(0)?)))
}

/// Records the answer of a claimed request, in the same transaction as its effects.
pub async fn record(tx: &mut Tx, key: &RequestKey, code: ResponseCode) -> Result<(), JournalError> {
    tx.execute(
        "UPDATE terminal_requests SET response_code = $5 WHERE tid = $1 AND mti = $2 AND batch = $3 AND stan = $4",
        &[
            key.tid.as_str().into(),
            key.mti.as_str().into(),
            key.batch.as_str().into(),
            key.stan.as_str().into(),
            code.as_str().into(),
        ],
    )
    .await?;
    Ok(())
}
