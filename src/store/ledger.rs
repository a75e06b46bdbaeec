//! The stored-value ledger of the "standard" deployment: posbridge is issuer, acquirer and
//! clearing house, so it keeps the accounts itself.
//!
//! Money moves only as double-entry postings written in the same transaction as the balance
//! changes and the order's state change, so the sum of all balances never changes.

use crate::domain::money::Money;
use crate::store::journal::{JournalError, Later, Row, Tx, new_id, now_ms};

/// What kind of holder an account belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountKind {
    /// A payer: a stored-value or consumption card used from a wallet app.
    Payer,
    /// A merchant's settlement account.
    Merchant,
}

impl AccountKind {
    fn as_str(self) -> &'static str {
        match self {
            AccountKind::Payer => "payer",
            AccountKind::Merchant => "merchant",
        }
    }
}

/// A new account, as the admin command registers it.
#[derive(Debug, Clone)]
pub struct NewAccount {
    /// Stable identifier.
    pub account_id: String,
    /// Payer or merchant.
    pub kind: AccountKind,
    /// Holder's name.
    pub holder: String,
    /// Card number truncated to first 6 + last 4 (payers).
    pub pan_truncated: Option<String>,
    /// Keyed hash of the card number, for lookup (payers).
    pub pan_hash: Option<Vec<u8>>,
    /// Opening balance.
    pub opening: Money,
    /// PIN verification value (payers with a PIN).
    pub pvv: Option<String>,
    /// PIN verification key index.
    pub pvki: Option<u8>,
    /// The wallet app the card is bound to (payers; `None`: any app).
    pub app_id: Option<String>,
}

/// An account as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Identifier.
    pub account_id: String,
    /// `payer` or `merchant`.
    pub kind: String,
    /// Holder's name.
    pub holder: String,
    /// First 6 + last 4 of the card number.
    pub pan_truncated: Option<String>,
    /// Balance.
    pub balance: Money,
    /// PIN verification value.
    pub pvv: Option<String>,
    /// PIN verification key index.
    pub pvki: Option<u8>,
    /// Consecutive wrong PIN entries.
    pub pin_tries: i64,
    /// The wallet app the card is bound to (`None`: any app).
    pub app_id: Option<String>,
    /// When the PIN tries ran out (ms), if they did.
    pub pin_locked_at_ms: Option<i64>,
}

const ACCOUNT_COLUMNS: &str = "account_id, kind, holder, pan_truncated, balance_minor, currency, pvv, pvki, pin_tries, \
     app_id, pin_locked_at_ms";

fn account_from_row(row: &Row) -> Result<Account, JournalError> {
    Ok(Account {
        account_id: row.text(0)?,
        kind: row.text(1)?,
        holder: row.text(2)?,
        pan_truncated: row.opt_text(3)?,
        balance: Money {
            amount_minor: row.i64(4)?,
            currency: u16::try_from(row.i64(5)?)
                .map_err(|e| JournalError::Schema(e.to_string()))?,
        },
        pvv: row.opt_text(6)?,
        pvki: row
            .opt_i64(7)?
            .map(u8::try_from)
            .transpose()
            .map_err(|e| JournalError::Schema(e.to_string()))?,
        pin_tries: row.i64(8)?,
        app_id: row.opt_text(9)?,
        pin_locked_at_ms: row.opt_i64(10)?,
    })
}

/// The funding account of a currency: the issuer's side of every opening balance, so that every
/// transfer, funding included, has two legs that sum to zero. Its stored balance stays 0; what
/// it issued is the (negative) sum of its postings.
pub fn funding_account(currency: u16) -> String {
    format!("funding-{currency:03}")
}

/// Creates an account. A non-zero opening balance is a `funding` transfer from the currency's
/// funding account (created on first use), so the postings explain every balance.
pub async fn create_account(tx: &mut Tx, account: &NewAccount) -> Result<(), JournalError> {
    let now = now_ms();
    tx.execute(
        "INSERT INTO accounts (account_id, kind, holder, pan_truncated, pan_hash, currency, balance_minor, pvv, pvki, pin_tries, created_at_ms, app_id) \
         VALUES ($1, $2, $3, $4, $5, $6, 0, $7, $8, 0, $9, $10)",
        &[
            account.account_id.as_str().into(),
            account.kind.as_str().into(),
            account.holder.as_str().into(),
            account.pan_truncated.clone().into(),
            account.pan_hash.clone().into(),
            i64::from(account.opening.currency).into(),
            account.pvv.clone().into(),
            account.pvki.map(i64::from).into(),
            now.into(),
            account.app_id.clone().into(),
        ],
    )
    .await?;
    if account.opening.amount_minor > 0 {
        let funding = funding_account(account.opening.currency);
        tx.execute(
            "INSERT INTO accounts (account_id, kind, holder, currency, balance_minor, pin_tries, created_at_ms) \
             VALUES ($1, 'funding', 'issuer funding', $2, 0, 0, $3) ON CONFLICT DO NOTHING",
            &[funding.as_str().into(), i64::from(account.opening.currency).into(), now.into()],
        )
        .await?;
        insert_transfer(
            tx,
            "funding",
            &funding,
            &account.account_id,
            account.opening,
            "funding",
        )
        .await?;
    }
    Ok(())
}

/// Reads an account by identifier.
pub async fn account(tx: &mut Tx, account_id: &str) -> Result<Option<Account>, JournalError> {
    let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE account_id = $1");
    tx.query_opt(&sql, &[account_id.into()])
        .await?
        .as_ref()
        .map(account_from_row)
        .transpose()
}

/// Finds a payer account by the keyed hash of its card number, without a lock (one round trip
/// outside any transaction): the PIN is checked in the security module before the payment's
/// transaction takes its row locks.
pub async fn payer_by_pan_hash(
    store: &crate::store::journal::Store,
    pan_hash: &[u8],
) -> Result<Option<Account>, JournalError> {
    let sql =
        format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE pan_hash = $1 AND kind = 'payer'");
    store
        .read_opt(&sql, &[pan_hash.to_vec().into()])
        .await?
        .as_ref()
        .map(account_from_row)
        .transpose()
}

/// Finds a payer account by the keyed hash of its card number, locking it for this transaction.
pub async fn payer_by_pan_hash_for_update(
    tx: &mut Tx,
    pan_hash: &[u8],
) -> Result<Option<Account>, JournalError> {
    let later = payer_by_pan_hash_for_update_later(tx, pan_hash).await?;
    payer_found(tx, later).await
}

/// [`payer_by_pan_hash_for_update`] sent ahead ([`Tx::query_later`]), to travel with the
/// transaction's next statement; [`payer_found`] gives the account.
pub async fn payer_by_pan_hash_for_update_later(
    tx: &mut Tx,
    pan_hash: &[u8],
) -> Result<Later, JournalError> {
    let sql = format!(
        "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE pan_hash = $1 AND kind = 'payer'{}",
        tx.for_update()
    );
    tx.query_later(&sql, &[pan_hash.to_vec().into()]).await
}

/// The payer read by [`payer_by_pan_hash_for_update_later`].
pub async fn payer_found(tx: &mut Tx, later: Later) -> Result<Option<Account>, JournalError> {
    tx.rows(later)
        .await?
        .first()
        .map(account_from_row)
        .transpose()
}

/// Records the outcome of a PIN check: a wrong PIN counts a try, a right one clears the count.
pub async fn record_pin_result(
    tx: &mut Tx,
    account_id: &str,
    correct: bool,
    max_tries: i64,
) -> Result<i64, JournalError> {
    let sql = if correct {
        "UPDATE accounts SET pin_tries = 0, pin_locked_at_ms = NULL WHERE account_id = $1 RETURNING pin_tries"
    } else {
        "UPDATE accounts SET pin_tries = pin_tries + 1, pin_locked_at_ms = CASE WHEN pin_tries + 1 >= $2 \
         THEN $3 ELSE pin_locked_at_ms END WHERE account_id = $1 RETURNING pin_tries"
    };
    let params: Vec<crate::store::journal::Value> = if correct {
        vec![account_id.into()]
    } else {
        vec![account_id.into(), max_tries.into(), now_ms().into()]
    };
    let row = tx
        .query_opt(sql, &params)
        .await?
        .ok_or_else(|| JournalError::Internal(format!("account {account_id} vanished")))?;
    row.i64(0)
}

/// Result of trying to move money.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferOutcome {
    /// Posted.
    Done,
    /// The payer's balance is too low (response code 51); nothing was posted.
    InsufficientFunds,
    /// The payer's account is in another currency; nothing was posted.
    CurrencyMismatch,
}

/// Moves `amount` from account `from` to account `to` for `order_id` (a refund or a
/// reversal: merchant to payer): two balance updates and two postings. Both accounts are locked
/// first, in one statement, a payer's account before any other: the order every sale takes them
/// in (the payer's row lock, then the merchant's through the transfer's trigger), so a refund
/// and a sale between the same two accounts never deadlock.
pub async fn transfer(
    tx: &mut Tx,
    order_id: &str,
    from: &str,
    to: &str,
    amount: Money,
    kind: &str,
) -> Result<TransferOutcome, JournalError> {
    assert!(amount.amount_minor > 0, "transfers move a positive amount");
    assert_ne!(from, to, "an account cannot pay itself");
    let lock_sql = format!(
        "SELECT account_id, balance_minor, currency FROM accounts WHERE account_id IN ($1, $2) \
         ORDER BY CASE WHEN kind = 'payer' THEN 0 ELSE 1 END, account_id{}",
        tx.for_update()
    );
    let rows = tx.query(&lock_sql, &[from.into(), to.into()]).await?;
    let mut from_state = None;
    let mut to_currency = None;
    for row in &rows {
        let id = row.text(0)?;
        if id == from {
            from_state = Some((row.i64(1)?, row.i64(2)?));
        } else {
            to_currency = Some(row.i64(2)?);
        }
    }
    if to_currency.is_none() {
        return Err(JournalError::Internal(format!("account {to} missing")));
    }
    let (balance, currency) =
        from_state.ok_or_else(|| JournalError::Internal(format!("account {from} missing")))?;
    if currency != i64::from(amount.currency) {
        return Ok(TransferOutcome::CurrencyMismatch);
    }
    if balance < amount.amount_minor {
        return Ok(TransferOutcome::InsufficientFunds);
    }
    if to_currency != Some(currency) {
        return Ok(TransferOutcome::CurrencyMismatch);
    }
    insert_transfer(tx, order_id, from, to, amount, kind).await?;
    Ok(TransferOutcome::Done)
}

/// A sale's transfer from a payer account locked and read in this transaction
/// ([`payer_by_pan_hash_for_update`]) to `to`, whose currency the caller knows (a merchant's
/// account is opened in the merchant's currency and never changes). Decided on the locked
/// balance, with no further read: the transfer's trigger takes the second account's row lock
/// when it moves its balance, and refuses mixed currencies itself.
pub async fn transfer_from_locked(
    tx: &mut Tx,
    order_id: &str,
    from: &Account,
    to: (&str, u16),
    amount: Money,
    kind: &str,
) -> Result<TransferOutcome, JournalError> {
    assert!(amount.amount_minor > 0, "transfers move a positive amount");
    assert_ne!(from.account_id, to.0, "an account cannot pay itself");
    if from.balance.currency != amount.currency || to.1 != amount.currency {
        return Ok(TransferOutcome::CurrencyMismatch);
    }
    if from.balance.amount_minor < amount.amount_minor {
        return Ok(TransferOutcome::InsufficientFunds);
    }
    insert_transfer(tx, order_id, &from.account_id, to.0, amount, kind).await?;
    Ok(TransferOutcome::Done)
}

/// Gives back what is left of an order's sale after its refunds: one `reversal` transfer from
/// the merchant to the payer. Returns false when nothing was left to give back (no local sale,
/// fully refunded, or reversed already).
pub async fn reverse(tx: &mut Tx, order_id: &str) -> Result<bool, JournalError> {
    let rows = tx
        .query(
            "SELECT kind, from_account, to_account, amount_minor, currency FROM transfers \
             WHERE order_id = $1 AND kind IN ('sale', 'refund', 'reversal') ORDER BY created_at_ms",
            &[order_id.into()],
        )
        .await?;
    let mut sale = None;
    let mut returned = 0i64;
    for row in &rows {
        match row.text(0)?.as_str() {
            "sale" => sale = Some((row.text(1)?, row.text(2)?, row.i64(3)?, row.i64(4)?)),
            _ => returned += row.i64(3)?,
        }
    }
    let Some((payer, merchant, amount, currency)) = sale else {
        return Ok(false);
    };
    let left = amount - returned;
    assert!(left >= 0, "order {order_id}: more given back than its sale");
    if left == 0 {
        return Ok(false);
    }
    let currency = u16::try_from(currency).map_err(|e| JournalError::Schema(e.to_string()))?;
    let money = Money {
        amount_minor: left,
        currency,
    };
    // A merchant who no longer holds the money fails the balance CHECK: nothing moves.
    match transfer(tx, order_id, &merchant, &payer, money, "reversal").await? {
        TransferOutcome::Done => Ok(true),
        outcome => Err(JournalError::Database(format!(
            "reversal of order {order_id} refused: {outcome:?}"
        ))),
    }
}

/// Writes one transfer; the database's trigger writes its two postings and moves both balances.
async fn insert_transfer(
    tx: &mut Tx,
    order_id: &str,
    from: &str,
    to: &str,
    amount: Money,
    kind: &str,
) -> Result<(), JournalError> {
    tx.execute_later(
        "INSERT INTO transfers (transfer_id, order_id, kind, from_account, to_account, amount_minor, currency, created_at_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            new_id().into(),
            order_id.into(),
            kind.into(),
            from.into(),
            to.into(),
            amount.amount_minor.into(),
            i64::from(amount.currency).into(),
            now_ms().into(),
        ],
    )
    .await?;
    Ok(())
}

/// Per currency: the sum of the holders' balances (funding accounts excluded) and the sum of
/// their postings; equal when the ledger is sound. That all postings, funding included, sum to
/// zero is the database's own rule (each transfer's legs are written by its trigger).
pub async fn totals(tx: &mut Tx) -> Result<Vec<(u16, i64, i64)>, JournalError> {
    let balances = tx
        .query("SELECT currency, CAST(SUM(balance_minor) AS BIGINT) FROM accounts WHERE kind <> 'funding' GROUP BY currency ORDER BY currency", &[])
        .await?;
    let mut out = Vec::new();
    for row in balances {
        let currency = row.i64(0)?;
        let balance = row.opt_i64(1)?.unwrap_or(0);
        let postings = tx
            .query("SELECT CAST(COALESCE(SUM(p.amount_minor), 0) AS BIGINT) FROM postings p JOIN accounts a ON a.account_id = p.account_id \
                 WHERE p.currency = $1 AND a.kind <> 'funding'", &[currency.into()])
            .await?;
        let posted = match postings.first() {
            Some(row) => row.opt_i64(0)?.unwrap_or(0),
            None => 0,
        };
        out.push((
            u16::try_from(currency).map_err(|e| JournalError::Schema(e.to_string()))?,
            balance,
            posted,
        ));
    }
    Ok(out)
}

/// Lifts a payer's PIN lock (an operator's decision, or the lock period passed); returns false
/// when no such payer exists.
pub async fn unlock_pin(tx: &mut Tx, account_id: &str) -> Result<bool, JournalError> {
    let changed = tx
        .execute(
            "UPDATE accounts SET pin_tries = 0, pin_locked_at_ms = NULL WHERE account_id = $1 AND kind = 'payer'",
            &[account_id.into()],
        )
        .await?;
    Ok(changed == 1)
}

/// One line of an account's statement: a posting.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StatementLine {
    /// When it was posted (Unix ms).
    pub at_ms: i64,
    /// The order it belongs to.
    pub order_id: String,
    /// `funding`, `sale`, `refund` or `reversal`.
    pub kind: String,
    /// Signed amount in minor units: negative leaves the account, positive enters it.
    pub amount_minor: i64,
}

/// An account's recent postings, newest first (at most `limit`), read without a lock.
pub async fn statement(
    store: &crate::store::journal::Store,
    account_id: &str,
    limit: i64,
) -> Result<Vec<StatementLine>, JournalError> {
    let rows = store
        .read(
            "SELECT created_at_ms, order_id, kind, amount_minor FROM postings WHERE account_id = $1 \
             ORDER BY created_at_ms DESC, posting_id DESC LIMIT $2",
            &[account_id.into(), limit.clamp(1, 1_000).into()],
        )
        .await?;
    rows.iter()
        .map(|row| {
            Ok(StatementLine {
                at_ms: row.i64(0)?,
                order_id: row.text(1)?,
                kind: row.text(2)?,
                amount_minor: row.i64(3)?,
            })
        })
        .collect()
}

/// Reads an account by identifier, outside any transaction.
pub async fn read_account(
    store: &crate::store::journal::Store,
    account_id: &str,
) -> Result<Option<Account>, JournalError> {
    let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE account_id = $1");
    store
        .read_opt(&sql, &[account_id.into()])
        .await?
        .as_ref()
        .map(account_from_row)
        .transpose()
}
