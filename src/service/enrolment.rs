//! Enrolment: opening payer accounts (the PIN kept only as its verification value, the card
//! number only truncated and as a keyed hash) and issuing merchants' static codes. Use cases,
//! since both need the security module.

use crate::domain::money::Money;
use crate::domain::response::ResponseCode;
use crate::registry;
use crate::service::orders::OrderService;
use crate::service::orders::payload;
use crate::service::orders::service::OrderError;
use crate::store::journal::{Store, new_id, now_ms};
use crate::store::ledger::{self, AccountKind, NewAccount};
use posbridge_hsm::{Pan, Pin};

/// A payer account to open.
#[derive(Debug)]
pub struct NewPayer {
    /// Account identifier.
    pub account_id: String,
    /// Holder's name.
    pub holder: String,
    /// Card / account number the wallet app sends.
    pub pan: Pan,
    /// The PIN, if the account has one (only its verification value is kept).
    pub pin: Option<Pin>,
    /// Opening balance.
    pub opening: Money,
    /// The wallet app the card is bound to (`None`: any app). Another app paying with it is
    /// answered as for an unknown card.
    pub wallet_app: Option<String>,
}

/// Opens a stored-value payer account. Keeps the card number only truncated plus a keyed hash,
/// and the PIN only as its verification value computed by the security module.
pub async fn register_payer(
    orders: &OrderService,
    payer: NewPayer,
    pvk_label: &str,
) -> Result<(), OrderError> {
    // The Visa PVV covers the PIN's 4 leftmost digits only: a longer PIN would be accepted
    // with any digits after the fourth, so only 4-digit PINs are enrolled.
    if payer.pin.as_ref().is_some_and(|pin| pin.len() != 4) {
        return Err(OrderError::Refused {
            code: ResponseCode::FormatError,
            reason: "PINs are 4 digits (the PIN verification value covers 4 digits)".into(),
        });
    }
    // A misspelt app id would bind the card to no app: every payment then answers wrong_pin.
    if let Some(app_id) = &payer.wallet_app
        && !registry::wallet_app_exists(orders.store(), app_id).await?
    {
        return Err(OrderError::Refused {
            code: ResponseCode::InvalidTransaction,
            reason: format!("no wallet app {app_id}: register it first (admin wallet-app-add)"),
        });
    }
    let pan_hash = orders.pan_hash(&payer.pan).await?;
    const PVKI: u8 = 1;
    let pvv = match payer.pin {
        Some(pin) => Some(
            orders
                .security()
                .pin_verification_value(pvk_label.to_owned(), payer.pan.clone(), pin, PVKI)
                .await
                .map_err(|e| OrderError::Security(e.to_string()))?,
        ),
        None => None,
    };
    let mut tx = orders.store().begin().await?;
    ledger::create_account(
        &mut tx,
        &NewAccount {
            account_id: payer.account_id,
            kind: AccountKind::Payer,
            holder: payer.holder,
            pan_truncated: Some(payer.pan.masked()),
            pan_hash: Some(pan_hash),
            opening: payer.opening,
            pvki: pvv.as_ref().map(|_| PVKI),
            pvv,
            app_id: payer.wallet_app,
        },
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Issues a merchant's static (printed) code and records it, so payments against it are
/// recognised as the merchant's.
pub async fn create_static_code(
    store: &Store,
    gui: &str,
    mid: &str,
    label: Option<&str>,
) -> Result<String, OrderError> {
    let mut tx = store.begin().await?;
    let merchant = registry::merchant(&mut tx, mid)
        .await?
        .ok_or_else(|| OrderError::Refused {
            code: ResponseCode::InvalidMerchant,
            reason: format!("unknown merchant {mid}"),
        })?;
    let payload =
        payload::build_static(gui, &merchant, label).map_err(|e| OrderError::Refused {
            code: ResponseCode::FormatError,
            reason: e.to_string(),
        })?;
    tx.execute(
        "INSERT INTO static_codes (code_id, mid, label, payload, created_at_ms) VALUES ($1, $2, $3, $4, $5)",
        &[new_id().into(), mid.into(), label.unwrap_or("").into(), payload.as_str().into(), now_ms().into()],
    )
    .await?;
    tx.commit().await?;
    Ok(payload)
}
