//! The codes themselves: posbridge's EMV merchant-presented payloads for orders (dynamic) and
//! merchants (static), signed through the security module.
//!
//! Gateway-made codes are signed with AES-CMAC under the gateway's QR signing key; codes a
//! terminal makes itself are signed with its MAC key (ISO 9797-1 algorithm 1, padding 2), so
//! the gateway can tell both are genuine. Layout: docs/qr-payload.md.

use crate::domain::money::Money;
use crate::infra::security::{Security, SecurityError};
use posbridge_codecs::emv_qr::{self, Expiry, Payload};
use posbridge_hsm::{MacAlgorithm, Padding};

/// Signature bytes carried in the code (a truncated MAC: 64 bits).
const SIGNATURE_LEN: usize = 8;

/// The facts of an order that go into its code.
#[derive(Debug, Clone)]
pub struct OrderFields<'a> {
    /// posbridge's globally unique identifier (merchant account template 26.00).
    pub gui: &'a str,
    /// Merchant number.
    pub mid: &'a str,
    /// Merchant name.
    pub merchant_name: &'a str,
    /// Merchant city.
    pub merchant_city: &'a str,
    /// Merchant category code.
    pub mcc: &'a str,
    /// ISO 3166 country.
    pub country: &'a str,
    /// Amount.
    pub amount: Money,
    /// One-time reference.
    pub reference: &'a str,
    /// Terminal ID.
    pub tid: &'a str,
    /// Batch number.
    pub batch: &'a str,
    /// Voucher number.
    pub voucher: &'a str,
    /// Operator.
    pub operator: &'a str,
    /// Acquirer.
    pub acquirer: &'a str,
    /// Transaction type.
    pub txn_type: &'a str,
    /// Expiry, ms since epoch.
    pub expires_at_ms: i64,
}

/// A one-time reference: 96 random bits as 24 uppercase hex digits.
pub fn new_reference() -> String {
    hex::encode_upper(crate::infra::clock::random_bytes::<12>())
}

/// Who signs (and verifies) a code, with which key.
#[derive(Debug, Clone)]
pub struct PayloadSigner {
    security: Security,
    key: String,
    algorithm: MacAlgorithm,
}

impl PayloadSigner {
    /// The gateway's own signature (AES-CMAC under `key`).
    pub fn gateway(security: Security, key: String) -> PayloadSigner {
        PayloadSigner {
            security,
            key,
            algorithm: MacAlgorithm::AesCmac,
        }
    }

    /// Signs the exact input bytes of an order.
    pub async fn sign(&self, input: Vec<u8>) -> Result<Vec<u8>, SecurityError> {
        let mut mac = self
            .security
            .generate_mac(self.key.clone(), self.algorithm, input)
            .await?;
        mac.truncate(SIGNATURE_LEN);
        Ok(mac)
    }

    /// True when the code's signature is this signer's over its order.
    pub async fn verify(&self, scanned: &ScannedPayload) -> Result<bool, SecurityError> {
        let Some((input, signature)) = signed_parts(scanned) else {
            return Ok(false);
        };
        match self
            .security
            .verify_mac(self.key.clone(), self.algorithm, input, signature)
            .await
        {
            Ok(()) => Ok(true),
            Err(SecurityError::Hsm(
                posbridge_hsm::HsmError::MacMismatch | posbridge_hsm::HsmError::InvalidInput(_),
            )) => Ok(false),
            Err(other) => Err(other),
        }
    }
}

/// The algorithm of a terminal-made code's signature (under the terminal's MAC key).
pub const TERMINAL_SIGNATURE: MacAlgorithm = MacAlgorithm::Iso9797Alg1 {
    padding: Padding::M2,
};

/// A code's signing input and signature, if it carries the whole 8 bytes posbridge and the
/// terminals write: a shorter signature (which a MAC check would accept as a truncation) is
/// easier to forge.
pub fn signed_parts(scanned: &ScannedPayload) -> Option<(Vec<u8>, Vec<u8>)> {
    let signature = scanned.signature.clone()?;
    (signature.len() == 8).then(|| (emv_qr::order_signing_input(&scanned.payload), signature))
}

/// Lays out an order's dynamic code, signs it and returns the payload text.
pub async fn build_dynamic(
    fields: &OrderFields<'_>,
    signer: &PayloadSigner,
) -> Result<String, BuildError> {
    let order = emv_qr::Order {
        merchant: merchant(
            fields.gui,
            fields.mid,
            fields.mcc,
            fields.amount.currency,
            fields.country,
            fields.merchant_name,
            fields.merchant_city,
        ),
        amount_minor: u64::try_from(fields.amount.amount_minor)
            .map_err(|_| BuildError::Layout("negative amount".into()))?,
        reference: fields.reference.to_owned(),
        terminal_label: if fields.tid.is_empty() {
            fields.mid.to_owned()
        } else {
            fields.tid.to_owned()
        },
        tid: fields.tid.to_owned(),
        batch: fields.batch.to_owned(),
        voucher: fields.voucher.to_owned(),
        operator: fields.operator.to_owned(),
        acquirer: fields.acquirer.to_owned(),
        transaction_type: fields.txn_type.to_owned(),
        expires_at: Expiry::from_unix_seconds(
            u64::try_from(fields.expires_at_ms / 1000).unwrap_or(0),
        )
        .ok_or_else(|| BuildError::Layout("expiry out of range".into()))?,
        key_id: None,
    };
    let unsigned = order
        .unsigned()
        .map_err(|e| BuildError::Layout(e.to_string()))?;
    let signature = signer
        .sign(unsigned.signing_input())
        .await
        .map_err(BuildError::Security)?;
    let payload = unsigned
        .with_signature(&signature)
        .map_err(|e| BuildError::Layout(e.to_string()))?;
    Ok(payload.encode())
}

/// The static code of a merchant (no amount, no one-time reference).
pub fn build_static(
    gui: &str,
    merchant_row: &crate::registry::Merchant,
    label: Option<&str>,
) -> Result<String, BuildError> {
    let code = emv_qr::StaticCode {
        merchant: merchant(
            gui,
            &merchant_row.mid,
            &merchant_row.mcc,
            merchant_row.currency,
            &merchant_row.country,
            &merchant_row.name,
            &merchant_row.city,
        ),
        store_label: None,
        terminal_label: label.map(str::to_owned),
    };
    Ok(code
        .payload()
        .map_err(|e| BuildError::Layout(e.to_string()))?
        .encode())
}

fn merchant(
    gui: &str,
    mid: &str,
    mcc: &str,
    currency: u16,
    country: &str,
    name: &str,
    city: &str,
) -> emv_qr::Merchant {
    emv_qr::Merchant {
        gui: gui.to_owned(),
        merchant_id: mid.to_owned(),
        mcc: mcc.to_owned(),
        currency,
        country: country.to_owned(),
        name: name.to_owned(),
        city: city.to_owned(),
        alternate_language: None,
    }
}

/// Why a code could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The order's facts do not fit the payload layout (e.g. a TID that is not 8 characters).
    #[error("QR layout: {0}")]
    Layout(String),
    /// The security module could not sign.
    #[error("signing the code: {0}")]
    Security(SecurityError),
}

/// What posbridge reads from a scanned code.
#[derive(Debug, Clone)]
pub struct ScannedPayload {
    /// The parsed payload.
    pub payload: Payload,
    /// 62.05, the one-time reference (dynamic codes).
    pub reference: Option<String>,
    /// Merchant number from posbridge's merchant account template.
    pub mid: Option<String>,
    /// Terminal ID (80.01).
    pub tid: Option<String>,
    /// Batch (80.02).
    pub batch: Option<String>,
    /// Voucher (80.03).
    pub voucher: Option<String>,
    /// Amount (54) with currency (53).
    pub amount: Option<Money>,
    /// Signature bytes (81.02).
    pub signature: Option<Vec<u8>>,
}

/// Parses a scanned code: CRC checked, every field well-formed.
pub fn parse(text: &str) -> Result<ScannedPayload, String> {
    let payload = Payload::parse(text).map_err(|e| e.to_string())?;
    let gui = posbridge_gui(&payload);
    let mid = gui.as_deref().and_then(|gui| {
        payload
            .merchant_account(gui)
            .and_then(|(_, fields)| emv_qr::find_text(fields, emv_qr::Id::new(1)?))
            .map(str::to_owned)
    });
    let order = gui
        .as_deref()
        .and_then(|gui| emv_qr::read_order(&payload, gui).ok());
    let amount = match (
        payload.amount_minor().map_err(|e| e.to_string())?,
        payload.currency(),
    ) {
        (Some(minor), Some(currency)) => Some(Money {
            amount_minor: i64::try_from(minor).map_err(|_| "amount too large".to_owned())?,
            currency,
        }),
        _ => None,
    };
    Ok(ScannedPayload {
        reference: payload
            .additional_data()
            .reference_label()
            .map(str::to_owned),
        mid,
        tid: order.as_ref().map(|o| o.tid.clone()),
        batch: order.as_ref().map(|o| o.batch.clone()),
        voucher: order.as_ref().map(|o| o.voucher.clone()),
        signature: order.map(|o| o.signature),
        amount,
        payload,
    })
}

/// The GUI of the first merchant account template that looks like posbridge's (26-51 with a
/// sub-field 00); posbridge installations may configure their own identifier.
fn posbridge_gui(payload: &Payload) -> Option<String> {
    payload
        .template(emv_qr::ORDER_TEMPLATE)
        .and_then(|fields| emv_qr::find_text(fields, emv_qr::Id::GUI))
        .map(str::to_owned)
        .or_else(|| {
            payload
                .merchant_accounts()
                .find_map(|(_, value)| {
                    value
                        .as_template()
                        .and_then(|fields| emv_qr::find_text(fields, emv_qr::Id::GUI))
                })
                .map(str::to_owned)
        })
}
