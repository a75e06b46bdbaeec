//! Registration of merchants, terminals, payer accounts and wallet apps: what the operator's
//! admin commands and the demo set up before the first payment.

pub mod cache;

use crate::domain::money::Money;
use crate::store::journal::{JournalError, Row, Store, Tx, new_id, now_ms};
use crate::store::ledger::{self, AccountKind, NewAccount};
use sha2::{Digest, Sha256};

/// A merchant.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct Merchant {
    /// Merchant number (F42, 15 characters on UnionPay).
    pub mid: String,
    /// Name shown on the code and the receipt (at most 25 characters in the code).
    pub name: String,
    /// City (at most 15 characters in the code).
    pub city: String,
    /// Merchant category code.
    pub mcc: String,
    /// ISO 3166 alpha-2 country.
    pub country: String,
    /// ISO 4217 numeric currency.
    pub currency: u16,
    /// Ledger account credited with its sales.
    #[serde(default)]
    pub account_id: String,
    /// Where static-code payments are notified (optional). The secret the notifications are
    /// signed with is set apart, sealed: [`crate::service::webhooks::Secrets::set`].
    #[serde(default)]
    pub webhook_url: Option<String>,
}

/// A registered terminal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terminal {
    /// Terminal ID (F41, 8 characters).
    pub tid: String,
    /// Its merchant.
    pub mid: String,
    /// Acquiring institution code.
    pub acquirer: String,
    /// Security-module label of its terminal master key.
    pub master_key_label: String,
    /// Whether it may transact.
    pub enabled: bool,
    /// Which of its two working-key slots it uses (set by the gateway at key change-over,
    /// ignored at registration; see [`crate::service::terminal_keys`]).
    pub key_slot: u8,
}

/// Registers a merchant and opens its settlement account.
pub async fn register_merchant(
    store: &Store,
    merchant: &Merchant,
) -> Result<Merchant, JournalError> {
    let mut merchant = merchant.clone();
    if merchant.account_id.is_empty() {
        merchant.account_id = format!("merchant:{}", merchant.mid);
    }
    let mut tx = store.begin().await?;
    ledger::create_account(
        &mut tx,
        &NewAccount {
            account_id: merchant.account_id.clone(),
            kind: AccountKind::Merchant,
            holder: merchant.name.clone(),
            pan_truncated: None,
            pan_hash: None,
            opening: Money {
                amount_minor: 0,
                currency: merchant.currency,
            },
            pvv: None,
            pvki: None,
            app_id: None,
        },
    )
    .await?;
    tx.execute(
        "INSERT INTO merchants (mid, name, city, mcc, country, currency, account_id, webhook_url, created_at_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[
            merchant.mid.as_str().into(),
            merchant.name.as_str().into(),
            merchant.city.as_str().into(),
            merchant.mcc.as_str().into(),
            merchant.country.as_str().into(),
            i64::from(merchant.currency).into(),
            merchant.account_id.as_str().into(),
            merchant.webhook_url.clone().into(),
            now_ms().into(),
        ],
    )
    .await?;
    tx.commit().await?;
    Ok(merchant)
}

const MERCHANT_SQL: &str = "SELECT mid, name, city, mcc, country, currency, account_id, webhook_url \
     FROM merchants WHERE mid = $1";

fn merchant_from_row(row: &Row) -> Result<Merchant, JournalError> {
    Ok(Merchant {
        mid: row.text(0)?,
        name: row.text(1)?,
        city: row.text(2)?,
        mcc: row.text(3)?,
        country: row.text(4)?,
        currency: u16::try_from(row.i64(5)?).map_err(|e| JournalError::Schema(e.to_string()))?,
        account_id: row.text(6)?,
        webhook_url: row.opt_text(7)?,
    })
}

/// Reads a merchant inside a transaction.
pub async fn merchant(tx: &mut Tx, mid: &str) -> Result<Option<Merchant>, JournalError> {
    tx.query_opt(MERCHANT_SQL, &[mid.into()])
        .await?
        .as_ref()
        .map(merchant_from_row)
        .transpose()
}

/// Reads a merchant on its own (one autocommit statement).
pub async fn read_merchant(store: &Store, mid: &str) -> Result<Option<Merchant>, JournalError> {
    store
        .read_opt(MERCHANT_SQL, &[mid.into()])
        .await?
        .as_ref()
        .map(merchant_from_row)
        .transpose()
}

/// Registers a terminal of a merchant.
pub async fn register_terminal(store: &Store, terminal: &Terminal) -> Result<(), JournalError> {
    let mut tx = store.begin().await?;
    tx.execute(
        "INSERT INTO terminals (tid, mid, acquirer, master_key_label, enabled, created_at_ms) VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            terminal.tid.as_str().into(),
            terminal.mid.as_str().into(),
            terminal.acquirer.as_str().into(),
            terminal.master_key_label.as_str().into(),
            i64::from(terminal.enabled).into(),
            now_ms().into(),
        ],
    )
    .await?;
    tx.commit().await
}

fn terminal_from_row(row: &Row) -> Result<Terminal, JournalError> {
    Ok(Terminal {
        tid: row.text(0)?,
        mid: row.text(1)?,
        acquirer: row.text(2)?,
        master_key_label: row.text(3)?,
        enabled: row.i64(4)? != 0,
        key_slot: key_slot(row.i64(5)?)?,
    })
}

/// Reads a terminal.
pub async fn terminal(store: &Store, tid: &str) -> Result<Option<Terminal>, JournalError> {
    let row = store
        .read_opt(
            "SELECT tid, mid, acquirer, master_key_label, enabled, key_slot FROM terminals WHERE tid = $1",
            &[tid.into()],
        )
        .await?;
    row.as_ref().map(terminal_from_row).transpose()
}

/// A wallet app allowed to call the wallet API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalletApp {
    /// Identifier.
    pub app_id: String,
    /// Name.
    pub name: String,
    /// Security-module key it encrypts PIN blocks under.
    pub pek_label: String,
}

/// Registers a wallet app and returns its API key (shown once; only its hash is kept).
pub async fn register_wallet_app(
    store: &Store,
    app: &WalletApp,
    api_key: Option<String>,
) -> Result<String, JournalError> {
    let api_key = api_key.unwrap_or_else(|| format!("pbk_{}", new_id()));
    let mut tx = store.begin().await?;
    tx.execute(
        "INSERT INTO wallet_apps (app_id, name, key_hash, pek_label, created_at_ms) VALUES ($1, $2, $3, $4, $5)",
        &[
            app.app_id.as_str().into(),
            app.name.as_str().into(),
            key_hash(&api_key).into(),
            app.pek_label.as_str().into(),
            now_ms().into(),
        ],
    )
    .await?;
    tx.commit().await?;
    Ok(api_key)
}

/// True when a wallet app of this id is registered.
pub async fn wallet_app_exists(store: &Store, app_id: &str) -> Result<bool, JournalError> {
    Ok(store
        .read_opt(
            "SELECT app_id FROM wallet_apps WHERE app_id = $1",
            &[app_id.into()],
        )
        .await?
        .is_some())
}

/// Finds the wallet app an API key belongs to.
pub async fn wallet_app_by_key(
    store: &Store,
    app_id: &str,
    api_key: &str,
) -> Result<Option<WalletApp>, JournalError> {
    Ok(wallet_app_record(store, app_id)
        .await?
        .and_then(|(app, hash)| constant_time_eq(&hash, &key_hash(api_key)).then_some(app)))
}

/// A wallet app and the hash of its API key.
async fn wallet_app_record(
    store: &Store,
    app_id: &str,
) -> Result<Option<(WalletApp, Vec<u8>)>, JournalError> {
    let row = store
        .read_opt(
            "SELECT app_id, name, pek_label, key_hash FROM wallet_apps WHERE app_id = $1",
            &[app_id.into()],
        )
        .await?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some((
        WalletApp {
            app_id: row.text(0)?,
            name: row.text(1)?,
            pek_label: row.text(2)?,
        },
        row.bytes(3)?,
    )))
}

/// Issues a merchant's API key for its payments list, replacing any earlier one; returns it
/// (it is kept only as a hash), or `None` when there is no such merchant.
pub async fn issue_merchant_api_key(
    store: &Store,
    mid: &str,
) -> Result<Option<String>, JournalError> {
    let api_key = format!("pbm_{}", new_id());
    let mut tx = store.begin().await?;
    let changed = tx
        .execute(
            "UPDATE merchants SET api_key_hash = $2 WHERE mid = $1",
            &[mid.into(), key_hash(&api_key).into()],
        )
        .await?;
    tx.commit().await?;
    Ok((changed == 1).then_some(api_key))
}

/// True when `api_key` is the merchant's current API key.
pub async fn merchant_api_key_valid(
    store: &Store,
    mid: &str,
    api_key: &str,
) -> Result<bool, JournalError> {
    let row = store
        .read_opt(
            "SELECT api_key_hash FROM merchants WHERE mid = $1",
            &[mid.into()],
        )
        .await?;
    let stored = match row {
        Some(row) => row.opt_bytes(0)?,
        None => None,
    };
    Ok(stored.is_some_and(|hash| constant_time_eq(&hash, &key_hash(api_key))))
}

fn key_hash(api_key: &str) -> Vec<u8> {
    Sha256::digest(api_key.as_bytes()).to_vec()
}

/// Compares secrets without an early exit (no timing hint).
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A set of a terminal's working keys as issued at a sign-on, encrypted under its master key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkingKeys {
    /// PIN key cryptogram and check value.
    pub pin_key: (Vec<u8>, Vec<u8>),
    /// MAC key cryptogram and check value.
    pub mac_key: (Vec<u8>, Vec<u8>),
}

/// Claims a sign-on for a terminal: true when its last one is at least `interval_ms` old (or it
/// never signed on), and the claim is recorded at once. One statement, so the limit holds across
/// gateway processes sharing the journal.
pub async fn claim_sign_on(
    store: &Store,
    tid: &str,
    interval_ms: i64,
) -> Result<bool, JournalError> {
    let now = now_ms();
    let mut tx = store.begin().await?;
    let changed = tx
        .execute(
            "UPDATE terminals SET signed_on_at_ms = $2 WHERE tid = $1 \
             AND (signed_on_at_ms IS NULL OR signed_on_at_ms <= $3)",
            &[tid.into(), now.into(), (now - interval_ms).into()],
        )
        .await?;
    tx.commit().await?;
    Ok(changed == 1)
}

/// A terminal's working keys in the journal (see [`crate::service::terminal_keys`]): the slot
/// it uses and that slot's keys, and the keys of its last sign-on waiting in the other slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TerminalKeys {
    /// The slot in use (0 or 1).
    pub slot: u8,
    /// The keys in use, if the terminal ever MACed under keys it was issued.
    pub active: Option<WorkingKeys>,
    /// The keys of a sign-on the terminal has not used yet (slot `1 - slot`).
    pub pending: Option<WorkingKeys>,
}

/// A set of working keys from four columns (cryptogram and check value of each), if all set.
fn working_keys_at(row: &Row, first: usize) -> Result<Option<WorkingKeys>, JournalError> {
    Ok(
        match (
            row.opt_bytes(first)?,
            row.opt_bytes(first + 1)?,
            row.opt_bytes(first + 2)?,
            row.opt_bytes(first + 3)?,
        ) {
            (Some(pin), Some(pin_kcv), Some(mac), Some(mac_kcv)) => Some(WorkingKeys {
                pin_key: (pin, pin_kcv),
                mac_key: (mac, mac_kcv),
            }),
            _ => None,
        },
    )
}

/// A terminal's working keys as the journal has them now (never cached).
pub async fn terminal_keys(store: &Store, tid: &str) -> Result<Option<TerminalKeys>, JournalError> {
    let row = store
        .read_opt(
            "SELECT key_slot, tpk_cryptogram, tpk_kcv, tak_cryptogram, tak_kcv, \
             next_tpk_cryptogram, next_tpk_kcv, next_tak_cryptogram, next_tak_kcv FROM terminals WHERE tid = $1",
            &[tid.into()],
        )
        .await?;
    row.map(|row| {
        Ok(TerminalKeys {
            slot: key_slot(row.i64(0)?)?,
            active: working_keys_at(&row, 1)?,
            pending: working_keys_at(&row, 5)?,
        })
    })
    .transpose()
}

fn key_slot(value: i64) -> Result<u8, JournalError> {
    match value {
        0 => Ok(0),
        1 => Ok(1),
        other => Err(JournalError::Schema(format!(
            "terminals.key_slot = {other}"
        ))),
    }
}

/// Records the keys a sign-on issued into the slot the terminal does not use, replacing any
/// earlier pending ones. False when the slot in use is no longer `in_use` (another gateway
/// changed the keys over meanwhile).
pub async fn store_pending_keys(
    store: &Store,
    tid: &str,
    in_use: u8,
    keys: &WorkingKeys,
) -> Result<bool, JournalError> {
    let mut tx = store.begin().await?;
    let changed = tx
        .execute(
            "UPDATE terminals SET next_tpk_cryptogram = $3, next_tpk_kcv = $4, next_tak_cryptogram = $5, \
             next_tak_kcv = $6 WHERE tid = $1 AND key_slot = $2",
            &[
                tid.into(),
                i64::from(in_use).into(),
                keys.pin_key.0.clone().into(),
                keys.pin_key.1.clone().into(),
                keys.mac_key.0.clone().into(),
                keys.mac_key.1.clone().into(),
            ],
        )
        .await?;
    tx.commit().await?;
    Ok(changed == 1)
}

/// Makes a terminal's pending keys the keys in use (it MACed under them): the slot changes over
/// and the pending columns empty. False when `from_slot` is no longer the slot in use or
/// nothing is pending (another gateway did it first).
pub async fn promote_pending_keys(
    store: &Store,
    tid: &str,
    from_slot: u8,
) -> Result<bool, JournalError> {
    let mut tx = store.begin().await?;
    let changed = tx
        .execute(
            "UPDATE terminals SET key_slot = 1 - key_slot, tpk_cryptogram = next_tpk_cryptogram, \
             tpk_kcv = next_tpk_kcv, tak_cryptogram = next_tak_cryptogram, tak_kcv = next_tak_kcv, \
             next_tpk_cryptogram = NULL, next_tpk_kcv = NULL, next_tak_cryptogram = NULL, next_tak_kcv = NULL \
             WHERE tid = $1 AND key_slot = $2 AND next_tak_cryptogram IS NOT NULL",
            &[tid.into(), i64::from(from_slot).into()],
        )
        .await?;
    tx.commit().await?;
    Ok(changed == 1)
}
