//! Numbers that must never repeat among the gateways sharing a journal, nor across their
//! restarts: the upstream STAN (F11) and the retrieval reference number (F37). On PostgreSQL each
//! is a sequence (no row lock between concurrent sales, nothing handed out twice even by a
//! transaction that rolls back); on SQLite a counter row (one process holds the write lock).

use crate::store::journal::{Dialect, JournalError, Later, Row, Tx, Value};

/// The next upstream STAN (F11, 000001..=999999, cycling): unique among the gateways sharing the
/// journal and across restarts, within a cycle of 999,999 messages.
pub async fn next_stan(tx: &mut Tx) -> Result<String, JournalError> {
    let value = next(tx, "upstream_stan", 999_999).await?;
    Ok(format!("{value:06}"))
}

/// The next retrieval reference number (F37, twelve digits, cycling after 10^12 - 1): unique per
/// journal, so per acquirer; the journal's unique index per acquirer stays as the backstop.
pub async fn next_rrn(tx: &mut Tx) -> Result<String, JournalError> {
    let later = next_rrn_later(tx).await?;
    rrn(tx, later).await
}

/// [`next_rrn`] sent ahead ([`Tx::query_later`]), for a transaction that will need it: it travels
/// with the transaction's next statement, and [`rrn`] gives it. A number drawn for a transaction
/// that then does not use it is a gap in the sequence, never a repeat.
pub async fn next_rrn_later(tx: &mut Tx) -> Result<Later, JournalError> {
    let (sql, params) = next_statement(tx, "rrn", 999_999_999_999);
    tx.query_later(&sql, &params).await
}

/// The number drawn by [`next_rrn_later`].
pub async fn rrn(tx: &mut Tx, later: Later) -> Result<String, JournalError> {
    let value = drawn(tx.rows(later).await?.into_iter().next(), "rrn")?;
    Ok(format!("{value:012}"))
}

async fn next(tx: &mut Tx, name: &str, max: i64) -> Result<i64, JournalError> {
    let (sql, params) = next_statement(tx, name, max);
    drawn(tx.query_opt(&sql, &params).await?, name)
}

/// The statement that draws the next value of counter `name`.
fn next_statement(tx: &Tx, name: &str, max: i64) -> (String, Vec<Value>) {
    match tx.dialect() {
        // The sequence of the same name, created by the migrations with this maximum.
        Dialect::Postgres => (format!("SELECT nextval('{name}')"), Vec::new()),
        Dialect::Sqlite => (
            "UPDATE counters SET value = value % $2 + 1 WHERE name = $1 RETURNING value".into(),
            vec![name.into(), max.into()],
        ),
    }
}

fn drawn(row: Option<Row>, name: &str) -> Result<i64, JournalError> {
    row.ok_or_else(|| JournalError::Schema(format!("no counter {name}")))?
        .i64(0)
}
