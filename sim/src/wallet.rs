//! A wallet app as posbridge sees one: the client side of the wallet API, used by
//! `posbridge sim wallet`, the demo, the load generator and the tests. It encrypts the PIN
//! with its own (software) security module holding the app's PIN key, as a phone's secure
//! keyboard would.

use anyhow::Context;
use posbridge::edge::wallet_api::{OrderView, PaymentView};
use posbridge_hsm::{Pan, Pin, PinBlockFormat, SecurityModule};
use std::sync::Arc;

/// A wallet app's connection to the wallet API.
#[derive(Clone)]
pub struct WalletClient {
    http: reqwest::Client,
    base_url: String,
    app_id: String,
    api_key: String,
    security: Arc<dyn SecurityModule>,
    pek_label: String,
}

impl std::fmt::Debug for WalletClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalletClient")
            .field("base_url", &self.base_url)
            .field("app_id", &self.app_id)
            .finish_non_exhaustive()
    }
}

/// A payment answer: HTTP status plus the body (a processed payment, or an error).
#[derive(Debug)]
pub struct PayAnswer {
    /// HTTP status.
    pub status: u16,
    /// The payment, when the request was processed (approved or declined).
    pub payment: Option<PaymentView>,
    /// The error code, when refused.
    pub error_code: Option<String>,
}

impl PayAnswer {
    /// Field 39 of the processed payment, if any.
    pub fn response_code(&self) -> Option<&str> {
        self.payment.as_ref().map(|p| p.response_code.as_str())
    }
}

impl WalletClient {
    /// A client for the API at `base_url` (e.g. `http://127.0.0.1:8080`).
    pub fn new(
        base_url: &str,
        app_id: &str,
        api_key: &str,
        security: Arc<dyn SecurityModule>,
        pek_label: &str,
    ) -> WalletClient {
        WalletClient {
            http: reqwest::Client::new(),
            base_url: base_url.trim_end_matches('/').to_owned(),
            app_id: app_id.to_owned(),
            api_key: api_key.to_owned(),
            security,
            pek_label: pek_label.to_owned(),
        }
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}{path}", self.base_url))
            .header("x-posbridge-app", &self.app_id)
            .header("authorization", format!("Bearer {}", self.api_key))
    }

    /// S104: what the phone shows for a scanned code (from the server's stored order).
    pub async fn resolve(&self, payload: &str) -> anyhow::Result<OrderView> {
        let response = self
            .post("/v1/orders/resolve")
            .json(&serde_json::json!({ "payload": payload }))
            .send()
            .await
            .context("wallet API")?;
        let status = response.status();
        let body: serde_json::Value = response.json().await?;
        if !status.is_success() {
            anyhow::bail!("resolve refused ({status}): {body}");
        }
        Ok(serde_json::from_value(body)?)
    }

    /// S105/S106: pays with the card number and, if given, a PIN, encrypted here under the
    /// app's PIN key: an ISO 9564 format 4 block under an AES key, a format 3 block under a TDES
    /// key (what a variant-LMK payment HSM such as a payShield can verify). `amount` is for
    /// static codes only.
    pub async fn pay(
        &self,
        payload: &str,
        pan: &str,
        pin: Option<&str>,
        idempotency_key: &str,
        amount: Option<(i64, u16)>,
    ) -> anyhow::Result<PayAnswer> {
        let format = match self.security.find_key(&self.pek_label)?.key_type.family() {
            posbridge_hsm::keys::Family::Aes => PinBlockFormat::Iso4,
            posbridge_hsm::keys::Family::Des => PinBlockFormat::Iso3,
        };
        let format_code = match format {
            PinBlockFormat::Iso4 => 4,
            _ => 3,
        };
        let pin_block = match pin {
            Some(pin) => {
                let block = self.security.encrypt_pin(
                    &Pin::new(pin)?,
                    &Pan::new(pan)?,
                    format,
                    &self.pek_label,
                )?;
                Some(hex::encode_upper(block.expose_secret()))
            }
            None => None,
        };
        let mut body =
            serde_json::json!({ "payload": payload, "pan": pan, "pin_format": format_code });
        if let Some(block) = pin_block {
            body["pin_block"] = serde_json::Value::String(block);
        }
        if let Some((amount_minor, currency)) = amount {
            body["amount_minor"] = amount_minor.into();
            body["currency"] = currency.into();
        }
        let response = self
            .post("/v1/payments")
            .header("idempotency-key", idempotency_key)
            .json(&body)
            .send()
            .await
            .context("wallet API")?;
        let status = response.status().as_u16();
        let value: serde_json::Value = response.json().await?;
        if status == 200 {
            return Ok(PayAnswer {
                status,
                payment: Some(serde_json::from_value(value)?),
                error_code: None,
            });
        }
        let error_code = value["error"]["code"].as_str().map(str::to_owned);
        let payment = value
            .get("result")
            .filter(|r| !r.is_null())
            .map(|result| PaymentView {
                status: "declined".into(),
                response_code: result["response_code"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                message: result["message"].as_str().unwrap_or_default().to_owned(),
                attempt_id: result["attempt_id"].as_str().unwrap_or_default().to_owned(),
                order: None,
            });
        Ok(PayAnswer {
            status,
            payment,
            error_code,
        })
    }
}
