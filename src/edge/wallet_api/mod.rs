//! The wallet API (S104-S106, S108): what a phone's wallet app calls, over HTTP/JSON.
//!
//! Every request names its app (`X-Posbridge-App`) and proves it with the app's key
//! (`Authorization: Bearer ...`); anything else gets 401 and touches nothing. Amount and
//! merchant always come from the stored order, never from the request. Errors are
//! `{"error":{"code":"...","message":"..."}}` with a stable `code`. See docs/wallet-api.md.

pub mod listener;

use crate::domain::money::Money;
use crate::registry::{self, WalletApp};
use crate::service::orders::service::OrderError;
use crate::service::orders::{Order, OrderService, PayRequest, PaymentResult, ResponseCode};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use posbridge_hsm::{Pan, PinBlock, PinBlockFormat};
use serde::{Deserialize, Serialize};

/// Largest request body accepted (a payment is a few hundred bytes).
const MAX_BODY_BYTES: usize = 16 * 1024;

/// The wallet API's routes over an order service.
pub fn router(orders: OrderService) -> Router {
    Router::new()
        .route("/v1/orders/resolve", post(resolve))
        .route("/v1/orders/{order_id}", get(order_status))
        .route("/v1/payments", post(pay))
        .route("/v1/accounts/statement", post(statement))
        .route("/v1/merchants/{mid}/payments", get(merchant_payments))
        .with_state(orders)
}

/// An API error: HTTP status, stable code, message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    result: Option<PaymentResult>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            result: None,
        }
    }

    fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or invalid wallet app credentials",
        )
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    fn too_large() -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is limited to {MAX_BODY_BYTES} bytes"),
        )
    }

    fn from_code(code: ResponseCode, message: String) -> ApiError {
        let (name, status) = code.api_error();
        ApiError::new(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            name,
            message,
        )
    }
}

impl From<OrderError> for ApiError {
    fn from(error: OrderError) -> ApiError {
        match &error {
            OrderError::Refused { code, reason } => ApiError::from_code(*code, reason.clone()),
            _ => {
                tracing::error!(%error, "wallet API request failed");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "system_error",
                    "internal error; the request had no effect",
                )
            }
        }
    }
}

impl From<crate::store::journal::JournalError> for ApiError {
    fn from(error: crate::store::journal::JournalError) -> ApiError {
        ApiError::from(OrderError::Journal(error))
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'a PaymentResult>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: &self.message,
            },
            result: self.result.as_ref(),
        };
        (self.status, Json(body)).into_response()
    }
}

async fn authenticate(orders: &OrderService, headers: &HeaderMap) -> Result<WalletApp, ApiError> {
    let app_id = headers
        .get("x-posbridge-app")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(ApiError::unauthorized)?;
    let key = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(ApiError::unauthorized)?;
    orders
        .registry()
        .wallet_app_by_key(orders.store(), app_id, key)
        .await?
        .ok_or_else(ApiError::unauthorized)
}

/// `POST /v1/orders/resolve` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolveRequest {
    /// The scanned payload.
    pub payload: String,
}

/// What the phone shows the payer (S104): from the stored order.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct OrderView {
    /// Order id.
    pub order_id: String,
    /// Merchant number.
    pub mid: String,
    /// Merchant name.
    pub merchant_name: String,
    /// Merchant city.
    pub merchant_city: String,
    /// Terminal ID.
    pub tid: Option<String>,
    /// Amount in minor units.
    pub amount_minor: i64,
    /// ISO 4217 numeric currency.
    pub currency: u16,
    /// Amount as text, e.g. `23.72 CNY`.
    pub amount_text: String,
    /// State.
    pub state: String,
    /// Expiry, ms since epoch.
    pub expires_at_ms: i64,
    /// Batch number.
    pub batch: Option<String>,
    /// Voucher number.
    pub voucher: Option<String>,
    /// Response code of the last attempt.
    pub response_code: Option<String>,
    /// Reference number once paid.
    pub rrn: Option<String>,
    /// Authorisation code once paid.
    pub auth_code: Option<String>,
    /// Masked card number once paid.
    pub masked_pan: Option<String>,
}

impl From<&Order> for OrderView {
    fn from(order: &Order) -> OrderView {
        OrderView {
            order_id: order.order_id.clone(),
            mid: order.mid.clone(),
            merchant_name: order.merchant_name.clone(),
            merchant_city: order.merchant_city.clone(),
            tid: order.tid.clone(),
            amount_minor: order.amount.amount_minor,
            currency: order.amount.currency,
            amount_text: order.amount.to_string(),
            state: order.state.as_str().to_owned(),
            expires_at_ms: order.expires_at_ms,
            batch: order.batch.clone(),
            voucher: order.voucher.clone(),
            response_code: order.response_code.clone(),
            rrn: order.rrn.clone(),
            auth_code: order.auth_code.clone(),
            masked_pan: order.payer_pan_masked.clone(),
        }
    }
}

/// Reads and parses a JSON body: called only after the caller is authenticated, so nobody
/// unauthenticated makes posbridge read (or buffer) a body; at most [`MAX_BODY_BYTES`] (413).
async fn json_body<T: serde::de::DeserializeOwned>(body: axum::body::Body) -> Result<T, ApiError> {
    let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| ApiError::too_large())?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request(format!("body: {e}")))
}

/// `POST /v1/accounts/statement`: a card the calling app enrolled, its balance and recent
/// postings. The card number travels in the body (never in a URL, which logs and proxies keep).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StatementRequest {
    pan: String,
    #[serde(default = "default_statement_limit")]
    limit: i64,
}

fn default_statement_limit() -> i64 {
    20
}

#[derive(Serialize)]
struct StatementView {
    masked_pan: Option<String>,
    currency: u16,
    balance_minor: i64,
    pin_locked: bool,
    postings: Vec<crate::store::ledger::StatementLine>,
}

async fn statement(
    State(orders): State<OrderService>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Json<StatementView>, ApiError> {
    let app = authenticate(&orders, &headers).await?;
    let request: StatementRequest = json_body(body).await?;
    if !(1..=100).contains(&request.limit) {
        return Err(ApiError::bad_request("limit: 1 to 100"));
    }
    let pan = Pan::new(&request.pan).map_err(|_| ApiError::bad_request("pan: 12-19 digits"))?;
    let hash = orders.pan_hash(&pan).await?;
    // A card of another app and an unknown card get the same answer: an app cannot learn which
    // card numbers exist.
    let account = crate::store::ledger::payer_by_pan_hash(orders.store(), &hash)
        .await?
        .filter(|account| account.app_id.as_deref() == Some(app.app_id.as_str()))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_account",
                "no card of this app with this number",
            )
        })?;
    let postings =
        crate::store::ledger::statement(orders.store(), &account.account_id, request.limit).await?;
    Ok(Json(StatementView {
        masked_pan: Some(pan.masked()),
        currency: account.balance.currency,
        balance_minor: account.balance.amount_minor,
        pin_locked: account.pin_locked_at_ms.is_some(),
        postings,
    }))
}

async fn resolve(
    State(orders): State<OrderService>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Json<OrderView>, ApiError> {
    authenticate(&orders, &headers).await?;
    let request: ResolveRequest = json_body(body).await?;
    let order = orders.resolve(&request.payload).await?;
    Ok(Json(OrderView::from(&order)))
}

async fn order_status(
    State(orders): State<OrderService>,
    headers: HeaderMap,
    Path(order_id): Path<String>,
) -> Result<Json<OrderView>, ApiError> {
    authenticate(&orders, &headers).await?;
    let order = orders
        .order(&order_id)
        .await?
        .ok_or_else(|| ApiError::from_code(ResponseCode::NotFound, "no such order".into()))?;
    Ok(Json(OrderView::from(&order)))
}

/// `POST /v1/payments` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentBody {
    /// The scanned payload.
    pub payload: String,
    /// The payer's card / account number.
    pub pan: String,
    /// The PIN block, hex, encrypted under the app's PIN key.
    #[serde(default)]
    pub pin_block: Option<String>,
    /// The PIN block format (0, 1, 3 or 4); 0 by default.
    #[serde(default)]
    pub pin_format: Option<u8>,
    /// Static codes only: the amount in minor units the payer entered.
    #[serde(default)]
    pub amount_minor: Option<i64>,
    /// Static codes only: the currency of that amount.
    #[serde(default)]
    pub currency: Option<u16>,
}

impl std::fmt::Debug for PaymentBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaymentBody")
            .field("payload", &self.payload)
            .finish_non_exhaustive()
    }
}

/// A processed payment (approved or refused), as the phone receives it (S108).
#[derive(Debug, Serialize, Deserialize)]
pub struct PaymentView {
    /// `approved` or `declined`.
    pub status: String,
    /// Field 39.
    pub response_code: String,
    /// Why.
    pub message: String,
    /// Attempt id.
    pub attempt_id: String,
    /// The order as it stands.
    pub order: Option<OrderView>,
}

async fn pay(
    State(orders): State<OrderService>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<(StatusCode, Json<PaymentView>), ApiError> {
    let app = authenticate(&orders, &headers).await?;
    let idempotency_key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .filter(|key| !key.is_empty() && key.len() <= 128)
        .ok_or_else(|| {
            ApiError::bad_request("an Idempotency-Key header (1-128 characters) is required")
        })?
        .to_owned();
    let body: PaymentBody = json_body(body).await?;
    let pan = Pan::new(&body.pan).map_err(|_| ApiError::bad_request("pan: 12-19 digits"))?;
    let pin_block = body
        .pin_block
        .as_deref()
        .map(PinBlock::from_hex)
        .transpose()
        .map_err(|_| ApiError::bad_request("pin_block: 16 or 32 hex digits"))?;
    let pin_format = match body.pin_format.unwrap_or(0) {
        0 => PinBlockFormat::Iso0,
        1 => PinBlockFormat::Iso1,
        3 => PinBlockFormat::Iso3,
        4 => PinBlockFormat::Iso4,
        _ => return Err(ApiError::bad_request("pin_format: 0, 1, 3 or 4")),
    };
    let amount = match (body.amount_minor, body.currency) {
        (Some(amount_minor), Some(currency)) => Some(Money {
            amount_minor,
            currency,
        }),
        (None, None) => None,
        _ => {
            return Err(ApiError::bad_request(
                "amount_minor and currency go together",
            ));
        }
    };
    let result = orders
        .pay(PayRequest {
            app_id: app.app_id,
            pek_label: app.pek_label,
            idempotency_key,
            payload: body.payload,
            pan,
            pin_block,
            pin_format,
            amount,
        })
        .await?;
    crate::infra::failpoint::hit("wallet.pay.committed").await;
    let code = result.code();
    let view = PaymentView {
        status: if code.is_approved() {
            "approved"
        } else {
            "declined"
        }
        .into(),
        response_code: result.response_code.clone(),
        message: result.message.clone(),
        attempt_id: result.attempt_id.clone(),
        order: result.order.as_ref().map(OrderView::from),
    };
    if code.is_approved() {
        return Ok((StatusCode::OK, Json(view)));
    }
    let mut error = ApiError::from_code(code, result.message.clone());
    error.result = Some(result);
    Err(error)
}

async fn merchant_payments(
    State(orders): State<OrderService>,
    headers: HeaderMap,
    Path(mid): Path<String>,
) -> Result<Json<Vec<OrderView>>, ApiError> {
    let key = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(ApiError::unauthorized)?;
    // The merchant's own API key (`posbridge admin merchant-api-key`), never its webhook
    // secret: that one only signs webhooks.
    if !registry::merchant_api_key_valid(orders.store(), &mid, key).await? {
        return Err(ApiError::unauthorized());
    }
    let paid = orders.merchant_orders(&mid, 100).await?;
    Ok(Json(paid.iter().map(OrderView::from).collect()))
}
