//! The order service: create, resolve, pay, cancel, reverse, expire, and wait for an order.
//!
//! Every method that changes an order does it in one journal transaction; notifications to
//! waiting terminals go out only after the commit.

use super::forward::{self, Armed, Upstream};
use super::notify::OrderNotifier;
use super::payload::{self, PayloadSigner, ScannedPayload};
use super::{OrderState, Origin, ResponseCode};
use crate::journal::{JournalError, Row, Store, Tx, Value, new_id, now_ms};
use crate::ledger::{self, TransferOutcome};
use crate::money::Money;
use crate::security::Security;
use posbridge_hsm::{Pan, PinBlock, PinBlockFormat};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// Wrong PINs in a row after which an account is locked (75).
pub const MAX_PIN_TRIES: i64 = 3;

/// Errors of the order service that are not a payment refusal.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OrderError {
    /// The journal failed; the operation did not happen.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The security module failed; the operation did not happen.
    #[error("security module: {0}")]
    Security(String),
    /// The request itself is refused, with the code to answer.
    #[error("refused ({code}): {reason}")]
    Refused {
        /// What to answer on the wire.
        code: ResponseCode,
        /// Why, for the log and the attempt record.
        reason: String,
    },
}

impl OrderError {
    fn refused(code: ResponseCode, reason: impl Into<String>) -> OrderError {
        OrderError::Refused {
            code,
            reason: reason.into(),
        }
    }

    /// The response code this error answers with.
    pub fn response_code(&self) -> ResponseCode {
        match self {
            OrderError::Refused { code, .. } => *code,
            OrderError::Journal(_) | OrderError::Security(_) => ResponseCode::SystemError,
        }
    }
}

/// What a terminal (or the static-code flow) asks for.
#[derive(Debug, Clone)]
pub struct NewOrder {
    /// Where the code comes from.
    pub origin: Origin,
    /// Merchant number.
    pub mid: String,
    /// Terminal ID (none for static codes).
    pub tid: Option<String>,
    /// Operator (cashier) number.
    pub operator: Option<String>,
    /// Acquirer institution code.
    pub acquirer: Option<String>,
    /// Transaction type (UnionPay 60.1 code, `22` for a sale).
    pub txn_type: String,
    /// Batch number (n6).
    pub batch: Option<String>,
    /// Voucher (trace) number (n6).
    pub voucher: Option<String>,
    /// Amount.
    pub amount: Money,
    /// Time to live.
    pub ttl: Duration,
    /// For [`Origin::TerminalCode`]: the payload the terminal made and shows.
    pub terminal_payload: Option<String>,
}

/// An order as stored, with what a receipt needs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Order {
    /// Identifier.
    pub order_id: String,
    /// `gateway-code`, `terminal-code` or `static`.
    pub origin: String,
    /// Merchant number.
    pub mid: String,
    /// Merchant name.
    pub merchant_name: String,
    /// Merchant city.
    pub merchant_city: String,
    /// Terminal ID.
    pub tid: Option<String>,
    /// Operator number.
    pub operator: Option<String>,
    /// Acquirer.
    pub acquirer: Option<String>,
    /// Transaction type.
    pub txn_type: String,
    /// Batch number.
    pub batch: Option<String>,
    /// Voucher number.
    pub voucher: Option<String>,
    /// Amount.
    pub amount: Money,
    /// One-time reference carried in the code (62.05).
    pub reference: String,
    /// The EMV payload shown.
    pub payload: String,
    /// State name (`CREATED`, `PAID`, ...).
    pub state: String,
    /// Last response code.
    pub response_code: Option<String>,
    /// Retrieval reference number (F37).
    pub rrn: Option<String>,
    /// Authorisation code (F38).
    pub auth_code: Option<String>,
    /// Payer's card number, masked.
    pub payer_pan_masked: Option<String>,
    /// Created, ms since epoch.
    pub created_at_ms: i64,
    /// Expires, ms since epoch.
    pub expires_at_ms: i64,
    /// Last change, ms since epoch.
    pub updated_at_ms: i64,
}

impl Order {
    /// The parsed state.
    pub fn state(&self) -> OrderState {
        OrderState::parse(&self.state).unwrap_or(OrderState::Created)
    }
}

const ORDER_COLUMNS: &str = "o.order_id, o.origin, o.mid, m.name, m.city, o.tid, o.operator, o.acquirer, o.txn_type, \
     o.batch, o.voucher, o.amount_minor, o.currency, o.reference, o.payload, o.state, o.response_code, o.rrn, \
     o.auth_code, o.payer_pan_masked, o.created_at_ms, o.expires_at_ms, o.updated_at_ms";

fn order_from_row(row: &Row) -> Result<Order, JournalError> {
    Ok(Order {
        order_id: row.text(0)?,
        origin: row.text(1)?,
        mid: row.text(2)?,
        merchant_name: row.text(3)?,
        merchant_city: row.text(4)?,
        tid: row.opt_text(5)?,
        operator: row.opt_text(6)?,
        acquirer: row.opt_text(7)?,
        txn_type: row.text(8)?,
        batch: row.opt_text(9)?,
        voucher: row.opt_text(10)?,
        amount: Money {
            amount_minor: row.i64(11)?,
            currency: u16::try_from(row.i64(12)?)
                .map_err(|e| JournalError::Schema(e.to_string()))?,
        },
        reference: row.text(13)?,
        payload: row.text(14)?,
        state: row.text(15)?,
        response_code: row.opt_text(16)?,
        rrn: row.opt_text(17)?,
        auth_code: row.opt_text(18)?,
        payer_pan_masked: row.opt_text(19)?,
        created_at_ms: row.i64(20)?,
        expires_at_ms: row.i64(21)?,
        updated_at_ms: row.i64(22)?,
    })
}

/// A payment from a wallet app (S106).
#[derive(Debug)]
pub struct PayRequest {
    /// The authenticated wallet app.
    pub app_id: String,
    /// The security-module key the app encrypts PIN blocks under.
    pub pek_label: String,
    /// The app's idempotency key: a retry with the same key returns the first result.
    pub idempotency_key: String,
    /// The payload the phone scanned.
    pub payload: String,
    /// The payer's card / account number.
    pub pan: Pan,
    /// The PIN block, if the payer entered a PIN.
    pub pin_block: Option<PinBlock>,
    /// The PIN block's format.
    pub pin_format: PinBlockFormat,
    /// Static codes only: the amount the payer entered.
    pub amount: Option<Money>,
}

/// The outcome of a payment, for the phone and the terminal (S108).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PaymentResult {
    /// Field 39.
    pub response_code: String,
    /// Why, in words.
    pub message: String,
    /// The order, as it stands after this attempt (absent when no order was found).
    pub order: Option<Order>,
    /// The attempt's journal id.
    pub attempt_id: String,
}

impl PaymentResult {
    /// The parsed response code.
    pub fn code(&self) -> ResponseCode {
        ResponseCode::parse(&self.response_code)
    }
}

/// Security-module key labels the order service uses.
#[derive(Debug, Clone)]
pub struct OrderKeys {
    /// PIN verification key (Visa PVV).
    pub pvk: String,
    /// Key that signs gateway-made codes.
    pub qr_sign: String,
    /// Key that makes the keyed hash of card numbers.
    pub pan_hash: String,
}

/// Settings of the order service.
#[derive(Debug, Clone)]
pub struct OrderSettings {
    /// Key labels.
    pub keys: OrderKeys,
    /// The globally unique identifier in posbridge's merchant account template.
    pub gui: String,
    /// ISO 3166 country of the merchants.
    pub country: String,
    /// How often a waiting terminal re-reads the journal (changes by other processes).
    pub poll_interval: Duration,
}

/// The order service, shared by the terminal server, the wallet API and the admin commands.
#[derive(Clone)]
pub struct OrderService {
    store: Store,
    security: Security,
    notifier: Arc<OrderNotifier>,
    settings: Arc<OrderSettings>,
    upstream: Option<Arc<Upstream>>,
}

/// What a payment attempt leads to inside its first transaction.
enum Step {
    /// Decided here (local ledger, or refused): the result and the order that changed.
    Done(Box<PaymentResult>, Option<String>),
    /// Routed to a host: armed in the journal, to send after this transaction commits.
    Forward(Box<Armed>),
}

impl std::fmt::Debug for OrderService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderService")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl OrderService {
    /// A service over a journal and a security module.
    pub fn new(store: Store, security: Security, settings: OrderSettings) -> OrderService {
        OrderService {
            store,
            security,
            notifier: Arc::new(OrderNotifier::default()),
            settings: Arc::new(settings),
            upstream: None,
        }
    }

    /// The same service routing card ranges to upstream hosts (five-role deployment).
    pub fn with_upstream(mut self, upstream: Arc<Upstream>) -> OrderService {
        self.upstream = Some(upstream);
        self
    }

    /// The upstream hosts, if any.
    pub fn upstream(&self) -> Option<&Arc<Upstream>> {
        self.upstream.as_ref()
    }

    /// The journal.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The security module.
    pub fn security(&self) -> &Security {
        &self.security
    }

    /// The keyed hash of a card number (lookup without storing the PAN).
    pub async fn pan_hash(&self, pan: &Pan) -> Result<Vec<u8>, OrderError> {
        let digits = pan.expose_secret().as_bytes().to_vec();
        self.security
            .mac_aes_cmac(&self.settings.keys.pan_hash, digits)
            .await
            .map_err(|e| OrderError::Security(e.to_string()))
    }

    /// Creates an order and its code (S101/S102); the order is in the journal when this returns.
    /// A second order for the same terminal, batch and voucher is refused with 94.
    pub async fn create(&self, new: NewOrder) -> Result<Order, OrderError> {
        if new.amount.amount_minor <= 0 {
            return Err(OrderError::refused(
                ResponseCode::InvalidAmount,
                "amount must be positive",
            ));
        }
        let merchant = self.merchant(&new.mid).await?;
        let now = now_ms();
        let expires = now.saturating_add(i64::try_from(new.ttl.as_millis()).unwrap_or(i64::MAX));
        let (reference, payload) = match new.origin {
            Origin::TerminalCode => {
                let shown = new.terminal_payload.clone().ok_or_else(|| {
                    OrderError::refused(
                        ResponseCode::FormatError,
                        "terminal-made order without its code",
                    )
                })?;
                let scanned = payload::parse(&shown)
                    .map_err(|e| OrderError::refused(ResponseCode::FormatError, e))?;
                self.check_terminal_payload(&scanned, &new).await?;
                let reference = scanned.reference.clone().ok_or_else(|| {
                    OrderError::refused(ResponseCode::FormatError, "code has no one-time reference")
                })?;
                (reference, shown)
            }
            Origin::GatewayCode | Origin::Static => {
                let reference = payload::new_reference();
                let fields = payload::OrderFields {
                    gui: &self.settings.gui,
                    mid: &new.mid,
                    merchant_name: &merchant.name,
                    merchant_city: &merchant.city,
                    mcc: &merchant.mcc,
                    country: &self.settings.country,
                    amount: new.amount,
                    reference: &reference,
                    tid: new.tid.as_deref().unwrap_or(""),
                    batch: new.batch.as_deref().unwrap_or(""),
                    voucher: new.voucher.as_deref().unwrap_or(""),
                    operator: new.operator.as_deref().unwrap_or(""),
                    acquirer: new.acquirer.as_deref().unwrap_or(""),
                    txn_type: &new.txn_type,
                    expires_at_ms: expires,
                };
                let signer = PayloadSigner::gateway(
                    self.security.clone(),
                    self.settings.keys.qr_sign.clone(),
                );
                let payload = payload::build_dynamic(&fields, &signer)
                    .await
                    .map_err(|e| OrderError::Security(e.to_string()))?;
                (reference, payload)
            }
        };
        let order_id = new_id();
        let mut tx = self.store.begin().await?;
        let inserted = tx
            .query_opt(
                "INSERT INTO orders (order_id, origin, mid, tid, operator, acquirer, txn_type, batch, voucher, amount_minor, \
                 currency, reference, payload, state, created_at_ms, expires_at_ms, updated_at_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 'CREATED', $14, $15, $14) \
                 ON CONFLICT DO NOTHING RETURNING order_id",
                &[
                    order_id.as_str().into(),
                    new.origin.as_str().into(),
                    new.mid.as_str().into(),
                    new.tid.clone().into(),
                    new.operator.clone().into(),
                    new.acquirer.clone().into(),
                    new.txn_type.as_str().into(),
                    new.batch.clone().into(),
                    new.voucher.clone().into(),
                    new.amount.amount_minor.into(),
                    i64::from(new.amount.currency).into(),
                    reference.as_str().into(),
                    payload.as_str().into(),
                    now.into(),
                    expires.into(),
                ],
            )
            .await?;
        if inserted.is_none() {
            return Err(OrderError::refused(
                ResponseCode::Duplicate,
                "an order for this terminal, batch and voucher exists already",
            ));
        }
        record_event(&mut tx, &order_id, None, OrderState::Created, "created").await?;
        let order = load_order(&mut tx, "o.order_id = $1", &[order_id.as_str().into()], "").await?;
        tx.commit().await?;
        order.ok_or_else(|| {
            OrderError::Journal(JournalError::Internal("created order vanished".into()))
        })
    }

    async fn check_terminal_payload(
        &self,
        scanned: &ScannedPayload,
        new: &NewOrder,
    ) -> Result<(), OrderError> {
        let matches = scanned.tid.as_deref() == new.tid.as_deref()
            && scanned.batch.as_deref() == new.batch.as_deref()
            && scanned.voucher.as_deref() == new.voucher.as_deref()
            && scanned.amount == Some(new.amount);
        if !matches {
            return Err(OrderError::refused(
                ResponseCode::InvalidTransaction,
                "the terminal's code does not match its sale (TID, batch, voucher, amount)",
            ));
        }
        let tid = new.tid.as_deref().unwrap_or("");
        let signer = PayloadSigner::terminal(self.security.clone(), tid);
        if !signer
            .verify(scanned)
            .await
            .map_err(|e| OrderError::Security(e.to_string()))?
        {
            return Err(OrderError::refused(
                ResponseCode::MacError,
                "the terminal's code signature does not verify",
            ));
        }
        Ok(())
    }

    /// Reads an order by id.
    pub async fn order(&self, order_id: &str) -> Result<Option<Order>, OrderError> {
        Ok(read_order(&self.store, "o.order_id = $1", &[order_id.into()]).await?)
    }

    /// Reads an order by terminal, batch and voucher.
    pub async fn order_by_voucher(
        &self,
        tid: &str,
        batch: &str,
        voucher: &str,
    ) -> Result<Option<Order>, OrderError> {
        Ok(read_order(
            &self.store,
            "o.tid = $1 AND o.batch = $2 AND o.voucher = $3",
            &[tid.into(), batch.into(), voucher.into()],
        )
        .await?)
    }

    /// Reads a paid (or reversed) order by its retrieval reference number.
    pub async fn order_by_rrn(&self, rrn: &str) -> Result<Option<Order>, OrderError> {
        Ok(read_order(&self.store, "o.rrn = $1", &[rrn.into()]).await?)
    }

    /// Resolves a scanned payload to the order as stored on the server (S104): what the phone
    /// shows the payer comes from here, never from the code itself.
    pub async fn resolve(&self, scanned_text: &str) -> Result<Order, OrderError> {
        let scanned = payload::parse(scanned_text)
            .map_err(|e| OrderError::refused(ResponseCode::FormatError, e))?;
        let reference = scanned.reference.as_deref().ok_or_else(|| {
            OrderError::refused(
                ResponseCode::InvalidTransaction,
                "a static code has no order to resolve",
            )
        })?;
        let order = read_order(&self.store, "o.reference = $1", &[reference.into()])
            .await?
            .ok_or_else(|| OrderError::refused(ResponseCode::NotFound, "no order for this code"))?;
        if order.payload != scanned_text {
            return Err(OrderError::refused(
                ResponseCode::InvalidTransaction,
                "the code differs from the one issued",
            ));
        }
        Ok(order)
    }

    /// Pays an order (S106/S107). Refusals are results, not errors: every attempt is journaled
    /// with its response code; money moves only on 00. A retry with the same idempotency key
    /// returns the first result and never pays twice.
    pub async fn pay(&self, request: PayRequest) -> Result<PaymentResult, OrderError> {
        let pan_hash = self.pan_hash(&request.pan).await?;
        let request_hash = request_fingerprint(&request, &pan_hash);
        let mut tx = self.store.begin().await?;
        if let Some(previous) = claim_idempotency_key(&mut tx, &request, &request_hash).await? {
            return Ok(previous);
        }
        let outcome = self.pay_in(&mut tx, &request, &pan_hash).await;
        let (result, changed_order) = match outcome {
            Ok(Step::Done(result, changed)) => (*result, changed),
            Ok(Step::Forward(armed)) => {
                tx.commit().await?;
                self.notifier.changed(&armed.order.order_id);
                return self.forward_sale(*armed, &request, &pan_hash).await;
            }
            Err(OrderError::Refused { code, reason }) => {
                let attempt_id =
                    record_attempt(&mut tx, None, &request, &pan_hash, code, &reason).await?;
                (refusal(code, reason, None, attempt_id), None)
            }
            Err(other) => return Err(other),
        };
        // "Being authorised" is not an answer to remember: a retry must see the final one.
        if result.code() != ResponseCode::InProgress {
            store_idempotent_result(&mut tx, &request, &result).await?;
        }
        tx.commit().await?;
        if let Some(order_id) = changed_order {
            self.notifier.changed(&order_id);
        }
        Ok(result)
    }

    async fn pay_in(
        &self,
        tx: &mut Tx,
        request: &PayRequest,
        pan_hash: &[u8],
    ) -> Result<Step, OrderError> {
        let scanned = payload::parse(&request.payload)
            .map_err(|e| OrderError::refused(ResponseCode::FormatError, e))?;
        let order = match scanned.reference.as_deref() {
            Some(reference) => self.lock_dynamic_order(tx, reference, request).await?,
            None => self.static_order(tx, &scanned, request).await?,
        };
        let state = order.state();
        let now = now_ms();
        let refuse = |code| {
            Err(OrderError::refused(
                code,
                format!("order is {}", order.state),
            ))
        };
        match state {
            OrderState::Created if now >= order.expires_at_ms => {
                set_state(
                    tx,
                    &order.order_id,
                    state,
                    OrderState::Expired,
                    ResponseCode::Expired,
                    "expired at payment",
                )
                .await?;
                let result = self
                    .attempt_result(
                        tx,
                        &order,
                        request,
                        pan_hash,
                        ResponseCode::Expired,
                        "order expired",
                    )
                    .await?;
                return Ok(Step::Done(Box::new(result), Some(order.order_id.clone())));
            }
            OrderState::Created => {}
            OrderState::Authorizing => return refuse(ResponseCode::InProgress),
            OrderState::Paid | OrderState::Reversed => return refuse(ResponseCode::Duplicate),
            OrderState::Expired => return refuse(ResponseCode::Expired),
            OrderState::Declined | OrderState::Cancelled => {
                return refuse(ResponseCode::NotPermitted);
            }
        }
        if let Some(upstream) = &self.upstream {
            if let Some(link) = upstream.route(request.pan.expose_secret()) {
                let merchant = crate::admin::merchant(tx, &order.mid)
                    .await?
                    .ok_or_else(|| {
                        OrderError::refused(ResponseCode::InvalidMerchant, "merchant vanished")
                    })?;
                let armed = forward::arm(
                    tx,
                    upstream,
                    link,
                    &order,
                    request.pan.expose_secret(),
                    &merchant.mcc,
                    &merchant.country,
                )
                .await?;
                set_state(
                    tx,
                    &order.order_id,
                    state,
                    OrderState::Authorizing,
                    ResponseCode::InProgress,
                    "forwarded upstream",
                )
                .await?;
                return Ok(Step::Forward(Box::new(armed)));
            }
        }
        let payer = ledger::payer_by_pan_hash_for_update(tx, pan_hash)
            .await?
            .ok_or_else(|| {
                OrderError::refused(ResponseCode::InvalidCard, "no account for this card")
            })?;
        let pin_verdict = self.check_pin(tx, &payer, request).await?;
        if let Some(code) = pin_verdict {
            if code == ResponseCode::PinTriesExceeded {
                set_state(
                    tx,
                    &order.order_id,
                    state,
                    OrderState::Declined,
                    code,
                    "PIN tries exceeded",
                )
                .await?;
            }
            let result = self
                .attempt_result(tx, &order, request, pan_hash, code, "PIN not accepted")
                .await?;
            return Ok(Step::Done(Box::new(result), Some(order.order_id.clone())));
        }
        let merchant_account = self.merchant_account(tx, &order.mid).await?;
        match ledger::transfer(
            tx,
            &order.order_id,
            &payer.account_id,
            &merchant_account,
            order.amount,
            "sale",
        )
        .await?
        {
            TransferOutcome::Done => {}
            TransferOutcome::InsufficientFunds | TransferOutcome::CurrencyMismatch => {
                let code = ResponseCode::InsufficientFunds;
                set_state(
                    tx,
                    &order.order_id,
                    state,
                    OrderState::Declined,
                    code,
                    "insufficient funds",
                )
                .await?;
                let result = self
                    .attempt_result(tx, &order, request, pan_hash, code, "insufficient funds")
                    .await?;
                return Ok(Step::Done(Box::new(result), Some(order.order_id.clone())));
            }
        }
        let rrn = random_digits(12);
        let auth_code = random_digits(6);
        tx.execute(
            "UPDATE orders SET state = 'PAID', response_code = '00', rrn = $2, auth_code = $3, payer_account_id = $4, \
             payer_pan_masked = $5, updated_at_ms = $6 WHERE order_id = $1 AND state = 'CREATED'",
            &[
                order.order_id.as_str().into(),
                rrn.into(),
                auth_code.into(),
                payer.account_id.as_str().into(),
                request.pan.masked().into(),
                now_ms().into(),
            ],
        )
        .await?;
        record_event(tx, &order.order_id, Some(state), OrderState::Paid, "paid").await?;
        crate::metrics::record_sale_since_ms(order.created_at_ms);
        if order.origin == Origin::Static.as_str() {
            crate::outbox::enqueue_payment(tx, &order.order_id).await?;
        }
        let result = self
            .attempt_result(
                tx,
                &order,
                request,
                pan_hash,
                ResponseCode::Approved,
                "approved",
            )
            .await?;
        Ok(Step::Done(Box::new(result), Some(order.order_id.clone())))
    }

    async fn lock_dynamic_order(
        &self,
        tx: &mut Tx,
        reference: &str,
        request: &PayRequest,
    ) -> Result<Order, OrderError> {
        let lock = tx.for_update_of_orders();
        let order = load_order(tx, "o.reference = $1", &[reference.into()], lock)
            .await?
            .ok_or_else(|| OrderError::refused(ResponseCode::NotFound, "no order for this code"))?;
        if order.payload != request.payload {
            // A changed amount with a recomputed CRC lands here: the code must be the one issued.
            return Err(OrderError::refused(
                ResponseCode::InvalidTransaction,
                "the code differs from the one issued",
            ));
        }
        // No second signature check here: the stored payload is exactly the one whose signature
        // was made (gateway codes) or verified (terminal codes) when the order was created, so
        // equality is the stronger check; and a terminal that signed on again since then has a
        // new MAC key that would no longer verify its earlier codes.
        Ok(order)
    }

    async fn static_order(
        &self,
        tx: &mut Tx,
        scanned: &ScannedPayload,
        request: &PayRequest,
    ) -> Result<Order, OrderError> {
        let mid = scanned.mid.as_deref().ok_or_else(|| {
            OrderError::refused(
                ResponseCode::InvalidMerchant,
                "the code names no posbridge merchant",
            )
        })?;
        let known = tx
            .query_opt(
                "SELECT payload FROM static_codes WHERE mid = $1 AND payload = $2",
                &[mid.into(), request.payload.as_str().into()],
            )
            .await?;
        if known.is_none() {
            return Err(OrderError::refused(
                ResponseCode::InvalidMerchant,
                "not a static code this gateway issued",
            ));
        }
        let amount = request
            .amount
            .filter(|amount| amount.amount_minor > 0)
            .ok_or_else(|| {
                OrderError::refused(
                    ResponseCode::InvalidAmount,
                    "a static code needs the payer's amount",
                )
            })?;
        let order_id = new_id();
        let now = now_ms();
        tx.execute(
            "INSERT INTO orders (order_id, origin, mid, txn_type, amount_minor, currency, reference, payload, state, \
             created_at_ms, expires_at_ms, updated_at_ms) VALUES ($1, 'static', $2, '22', $3, $4, $5, $6, 'CREATED', $7, $8, $7)",
            &[
                order_id.as_str().into(),
                mid.into(),
                amount.amount_minor.into(),
                i64::from(amount.currency).into(),
                payload::new_reference().into(),
                request.payload.as_str().into(),
                now.into(),
                // Paid in this same transaction or never; the expiry only bounds a crash.
                (now + 60_000).into(),
            ],
        )
        .await?;
        record_event(
            tx,
            &order_id,
            None,
            OrderState::Created,
            "static code payment",
        )
        .await?;
        load_order(tx, "o.order_id = $1", &[order_id.as_str().into()], "")
            .await?
            .ok_or_else(|| {
                OrderError::Journal(JournalError::Internal("static order vanished".into()))
            })
    }

    /// Sends an armed sale to its host and records the answer (S107 in the five-role
    /// deployment). A sale is never sent twice: an unclear outcome queues its reversal, and the
    /// payer must start again with a new order (a new STAN).
    async fn forward_sale(
        &self,
        armed: Armed,
        request: &PayRequest,
        pan_hash: &[u8],
    ) -> Result<PaymentResult, OrderError> {
        let upstream = self
            .upstream
            .clone()
            .ok_or_else(|| OrderError::Journal(JournalError::Internal("no upstream".into())))?;
        let link = upstream.link(&armed.host).cloned().ok_or_else(|| {
            OrderError::Journal(JournalError::Internal(format!(
                "host {} vanished",
                armed.host
            )))
        })?;
        let mut message = armed.message.clone();
        let outcome = match self.host_pin_block(&upstream, &link, request).await {
            Err(reason) => forward::Outcome::NotSent(reason),
            Ok(pin_block) => {
                if let Some(block) = pin_block {
                    message.set(52, block.expose_secret().to_vec());
                    message.set(53, upstream.config.security_control.as_bytes().to_vec());
                }
                let deadline = Duration::from_millis(upstream.config.sale_timeout_ms);
                forward::Outcome::of(&link.request(message, deadline).await)
            }
        };
        let mut tx = self.store.begin().await?;
        let outcome = forward::settle(&mut tx, &armed, outcome).await?;
        let order_id = armed.order.order_id.as_str();
        let from = OrderState::Authorizing;
        let (code, reason) = match &outcome {
            forward::Outcome::Approved { auth_code, rrn } => {
                let changed = tx
                    .execute(
                        "UPDATE orders SET state = 'PAID', response_code = '00', rrn = $2, auth_code = $3, \
                         payer_pan_masked = $4, updated_at_ms = $5 WHERE order_id = $1 AND state = 'AUTHORIZING'",
                        &[
                            order_id.into(),
                            rrn.clone().or_else(|| armed.message.text(37).map(str::to_owned)).into(),
                            auth_code.clone().into(),
                            request.pan.masked().into(),
                            now_ms().into(),
                        ],
                    )
                    .await?;
                if changed == 1 {
                    record_event(
                        &mut tx,
                        order_id,
                        Some(from),
                        OrderState::Paid,
                        "approved by host",
                    )
                    .await?;
                }
                (ResponseCode::Approved, "approved by the host".to_owned())
            }
            forward::Outcome::Declined(code) => {
                let code = ResponseCode::parse(code);
                move_state(
                    &mut tx,
                    order_id,
                    from,
                    OrderState::Declined,
                    code,
                    "declined by host",
                )
                .await?;
                (code, "declined by the host".to_owned())
            }
            forward::Outcome::NotSent(reason) => {
                let code = ResponseCode::IssuerUnavailable;
                move_state(
                    &mut tx,
                    order_id,
                    from,
                    OrderState::Created,
                    code,
                    "not sent",
                )
                .await?;
                (code, format!("not sent to the host: {reason}"))
            }
            forward::Outcome::Ambiguous(reason) => {
                let code = ResponseCode::IssuerTimeout;
                move_state(
                    &mut tx,
                    order_id,
                    from,
                    OrderState::Declined,
                    code,
                    "reversal queued",
                )
                .await?;
                (code, format!("{reason}; the sale is being reversed"))
            }
        };
        let result = self
            .attempt_result(&mut tx, &armed.order, request, pan_hash, code, &reason)
            .await?;
        store_idempotent_result(&mut tx, request, &result).await?;
        tx.commit().await?;
        self.notifier.changed(order_id);
        Ok(result)
    }

    /// The PIN block re-encrypted for the host's zone, in the host's format.
    async fn host_pin_block(
        &self,
        upstream: &Upstream,
        link: &crate::upstream::HostLink,
        request: &PayRequest,
    ) -> Result<Option<PinBlock>, String> {
        let Some(block) = request.pin_block.clone() else {
            return Ok(None);
        };
        let zone_key = link
            .config()
            .pin_key
            .clone()
            .ok_or_else(|| format!("host {} has no PIN key configured", link.name()))?;
        self.security
            .translate_pin(
                block,
                (request.pek_label.clone(), request.pin_format),
                (zone_key, forward::host_pin_format(&upstream.config)),
                Some(request.pan.clone()),
            )
            .await
            .map(Some)
            .map_err(|e| format!("PIN translation: {e}"))
    }

    /// Checks the PIN against the account's verification value. `None` = accepted.
    async fn check_pin(
        &self,
        tx: &mut Tx,
        payer: &ledger::Account,
        request: &PayRequest,
    ) -> Result<Option<ResponseCode>, OrderError> {
        let (Some(pvv), Some(pvki)) = (payer.pvv.as_deref(), payer.pvki) else {
            return Ok(None); // an account without a PIN (S105: "if the account has one")
        };
        if payer.pin_tries >= MAX_PIN_TRIES {
            return Ok(Some(ResponseCode::PinTriesExceeded));
        }
        let Some(block) = request.pin_block.clone() else {
            return Ok(Some(ResponseCode::WrongPin));
        };
        let correct = self
            .security
            .verify_pin(
                block,
                request.pek_label.clone(),
                request.pin_format,
                request.pan.clone(),
                self.settings.keys.pvk.clone(),
                pvki,
                pvv.to_owned(),
            )
            .await
            .map_err(|e| OrderError::Security(e.to_string()))?;
        let tries = ledger::record_pin_result(tx, &payer.account_id, correct).await?;
        Ok(match (correct, tries >= MAX_PIN_TRIES) {
            (true, _) => None,
            (false, true) => Some(ResponseCode::PinTriesExceeded),
            (false, false) => Some(ResponseCode::WrongPin),
        })
    }

    async fn attempt_result(
        &self,
        tx: &mut Tx,
        order: &Order,
        request: &PayRequest,
        pan_hash: &[u8],
        code: ResponseCode,
        reason: &str,
    ) -> Result<PaymentResult, OrderError> {
        let attempt_id = record_attempt(tx, Some(order), request, pan_hash, code, reason).await?;
        let order =
            load_order(tx, "o.order_id = $1", &[order.order_id.as_str().into()], "").await?;
        Ok(refusal(code, reason.to_owned(), order, attempt_id))
    }

    async fn merchant(&self, mid: &str) -> Result<crate::admin::Merchant, OrderError> {
        let merchant = crate::admin::read_merchant(&self.store, mid).await?;
        merchant.ok_or_else(|| {
            OrderError::refused(
                ResponseCode::InvalidMerchant,
                format!("unknown merchant {mid}"),
            )
        })
    }

    async fn merchant_account(&self, tx: &mut Tx, mid: &str) -> Result<String, OrderError> {
        let merchant = crate::admin::merchant(tx, mid).await?.ok_or_else(|| {
            OrderError::refused(
                ResponseCode::InvalidMerchant,
                format!("unknown merchant {mid}"),
            )
        })?;
        Ok(merchant.account_id)
    }

    /// Cancels an unpaid order (terminal gone, operator); returns the order as it now stands.
    pub async fn cancel(&self, order_id: &str, reason: &str) -> Result<Option<Order>, OrderError> {
        let mut tx = self.store.begin().await?;
        let lock = tx.for_update_of_orders();
        let Some(order) = load_order(&mut tx, "o.order_id = $1", &[order_id.into()], lock).await?
        else {
            return Ok(None);
        };
        if order.state() == OrderState::Created {
            set_state(
                &mut tx,
                order_id,
                OrderState::Created,
                OrderState::Cancelled,
                ResponseCode::NotPermitted,
                reason,
            )
            .await?;
        }
        let order = load_order(&mut tx, "o.order_id = $1", &[order_id.into()], "").await?;
        tx.commit().await?;
        self.notifier.changed(order_id);
        Ok(order)
    }

    /// Voids a paid sale (terminal 0200 with 60.1 = 23, or the operator): the money goes back,
    /// locally in the same transaction, or through a queued reversal to the host that approved
    /// it. Only a paid order can be voided; voiding twice answers 00 and changes nothing.
    pub async fn void(
        &self,
        tid: &str,
        batch: &str,
        voucher: &str,
        reason: &str,
    ) -> Result<Order, OrderError> {
        let order = self
            .order_by_voucher(tid, batch, voucher)
            .await?
            .ok_or_else(|| {
                OrderError::refused(ResponseCode::NotFound, "no order for this voucher")
            })?;
        match order.state() {
            OrderState::Paid | OrderState::Reversed => {
                self.reverse(tid, batch, voucher, reason).await
            }
            _ => Err(OrderError::refused(
                ResponseCode::InvalidTransaction,
                format!("cannot void an order that is {}", order.state),
            )),
        }
    }

    /// Refunds part or all of a paid sale of the local ledger (terminal 0220 with 60.1 = 25, or
    /// the operator): moves `amount` from the merchant back to the payer, at most what is left
    /// of the sale after earlier refunds. Sales approved by an upstream host are voided instead.
    pub async fn refund(
        &self,
        tid: &str,
        batch: &str,
        voucher: &str,
        amount: Money,
    ) -> Result<Order, OrderError> {
        let mut tx = self.store.begin().await?;
        let lock = tx.for_update_of_orders();
        let order = load_order(
            &mut tx,
            "o.tid = $1 AND o.batch = $2 AND o.voucher = $3",
            &[tid.into(), batch.into(), voucher.into()],
            lock,
        )
        .await?
        .ok_or_else(|| OrderError::refused(ResponseCode::NotFound, "no order for this voucher"))?;
        if order.state() != OrderState::Paid {
            return Err(OrderError::refused(
                ResponseCode::InvalidTransaction,
                format!("cannot refund an order that is {}", order.state),
            ));
        }
        let payer = tx
            .query_opt(
                "SELECT payer_account_id FROM orders WHERE order_id = $1",
                &[order.order_id.as_str().into()],
            )
            .await?
            .and_then(|row| row.opt_text(0).ok().flatten());
        let Some(payer) = payer else {
            // Approved by an upstream host: the refund goes there as an advice.
            let upstream_config = self
                .upstream
                .as_ref()
                .map(|u| u.config.clone())
                .unwrap_or_default();
            return match forward::queue_refund(&mut tx, &order.order_id, amount, &upstream_config)
                .await?
            {
                Ok(()) => {
                    record_event(
                        &mut tx,
                        &order.order_id,
                        Some(OrderState::Paid),
                        OrderState::Paid,
                        &format!("refund advice of {amount} queued"),
                    )
                    .await?;
                    tx.commit().await?;
                    Ok(order)
                }
                Err((code, reason)) => Err(OrderError::refused(code, reason)),
            };
        };
        let refunded = tx
            .query_opt(
                "SELECT CAST(COALESCE(SUM(amount_minor), 0) AS BIGINT) FROM postings WHERE order_id = $1 AND kind = 'refund' AND account_id = $2",
                &[order.order_id.as_str().into(), payer.as_str().into()],
            )
            .await?
            .map(|row| row.i64(0))
            .transpose()?
            .unwrap_or(0);
        if amount.currency != order.amount.currency
            || amount.amount_minor <= 0
            || amount.amount_minor > order.amount.amount_minor - refunded
        {
            return Err(OrderError::refused(
                ResponseCode::InvalidAmount,
                format!(
                    "refund of {amount} exceeds what is left of the sale ({} refunded of {})",
                    refunded, order.amount
                ),
            ));
        }
        let merchant = self.merchant_account(&mut tx, &order.mid).await?;
        match ledger::transfer(
            &mut tx,
            &order.order_id,
            &merchant,
            &payer,
            amount,
            "refund",
        )
        .await?
        {
            TransferOutcome::Done => {}
            _ => {
                return Err(OrderError::refused(
                    ResponseCode::InsufficientFunds,
                    "the merchant's balance does not cover the refund",
                ));
            }
        }
        record_event(
            &mut tx,
            &order.order_id,
            Some(OrderState::Paid),
            OrderState::Paid,
            &format!("refunded {amount}"),
        )
        .await?;
        tx.commit().await?;
        Ok(order)
    }

    /// A reversal for a terminal's voucher (0400): cancels the order if unpaid, gives the money
    /// back if paid. Idempotent: reversing a reversed order changes nothing.
    pub async fn reverse(
        &self,
        tid: &str,
        batch: &str,
        voucher: &str,
        reason: &str,
    ) -> Result<Order, OrderError> {
        let mut tx = self.store.begin().await?;
        let lock = tx.for_update_of_orders();
        let order = load_order(
            &mut tx,
            "o.tid = $1 AND o.batch = $2 AND o.voucher = $3",
            &[tid.into(), batch.into(), voucher.into()],
            lock,
        )
        .await?
        .ok_or_else(|| OrderError::refused(ResponseCode::NotFound, "no order for this voucher"))?;
        match order.state() {
            OrderState::Created => {
                set_state(
                    &mut tx,
                    &order.order_id,
                    OrderState::Created,
                    OrderState::Cancelled,
                    ResponseCode::NotPermitted,
                    reason,
                )
                .await?;
            }
            OrderState::Paid => {
                // Money back: local postings are undone here; a sale approved by a host gets
                // its reversal queued (durably, in this transaction) for the reversal worker.
                ledger::reverse(&mut tx, &order.order_id).await?;
                forward::queue_reversal_of_order(&mut tx, &order.order_id, reason).await?;
                set_state(
                    &mut tx,
                    &order.order_id,
                    OrderState::Paid,
                    OrderState::Reversed,
                    ResponseCode::Approved,
                    reason,
                )
                .await?;
            }
            _ => {}
        }
        let order = load_order(
            &mut tx,
            "o.order_id = $1",
            &[order.order_id.as_str().into()],
            "",
        )
        .await?
        .ok_or_else(|| {
            OrderError::Journal(JournalError::Internal("reversed order vanished".into()))
        })?;
        tx.commit().await?;
        self.notifier.changed(&order.order_id);
        Ok(order)
    }

    /// Marks every unpaid order past its expiry as EXPIRED; returns their ids. Runs on a timer,
    /// so orders left by a stopped gateway expire after its restart too.
    pub async fn expire_due(&self) -> Result<Vec<String>, OrderError> {
        let now = now_ms();
        let mut tx = self.store.begin().await?;
        let sql = format!(
            "SELECT order_id FROM orders WHERE state = 'CREATED' AND expires_at_ms <= $1 ORDER BY expires_at_ms LIMIT 500{}",
            tx.for_update_skip_locked()
        );
        let rows = tx.query(&sql, &[now.into()]).await?;
        let mut expired = Vec::with_capacity(rows.len());
        for row in rows {
            let order_id = row.text(0)?;
            set_state(
                &mut tx,
                &order_id,
                OrderState::Created,
                OrderState::Expired,
                ResponseCode::Expired,
                "expired",
            )
            .await?;
            expired.push(order_id);
        }
        tx.commit().await?;
        for order_id in &expired {
            self.notifier.changed(order_id);
        }
        Ok(expired)
    }

    /// Waits until the order leaves CREATED or `timeout` passes; returns it as it then stands.
    pub async fn wait_final(
        &self,
        order_id: &str,
        timeout: Duration,
    ) -> Result<Option<Order>, OrderError> {
        let handle = self.notifier.subscribe(order_id);
        let deadline = tokio::time::Instant::now() + timeout;
        let result = loop {
            let notified = handle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let order = self.order(order_id).await?;
            match &order {
                Some(order)
                    if !order.state().is_final() && tokio::time::Instant::now() < deadline => {}
                _ => break order,
            }
            let wake = (tokio::time::Instant::now() + self.settings.poll_interval).min(deadline);
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep_until(wake) => {}
            }
        };
        self.notifier.release(order_id, handle);
        Ok(result)
    }

    /// A merchant's most recent orders (newest first), for its payment queries.
    pub async fn merchant_orders(&self, mid: &str, limit: i64) -> Result<Vec<Order>, OrderError> {
        let mut tx = self.store.begin().await?;
        let sql = format!(
            "SELECT {ORDER_COLUMNS} FROM orders o JOIN merchants m ON m.mid = o.mid WHERE o.mid = $1 \
             ORDER BY o.created_at_ms DESC LIMIT $2"
        );
        let rows = tx.query(&sql, &[mid.into(), limit.into()]).await?;
        tx.commit().await?;
        Ok(rows.iter().map(order_from_row).collect::<Result<_, _>>()?)
    }

    /// Count and sum of the paid orders of a terminal's batch, for settlement (0500).
    pub async fn batch_totals(&self, tid: &str, batch: &str) -> Result<(i64, i64), OrderError> {
        let mut tx = self.store.begin().await?;
        let row = tx
            .query_opt(
                "SELECT COUNT(*), CAST(COALESCE(SUM(amount_minor), 0) AS BIGINT) FROM orders WHERE tid = $1 AND batch = $2 AND state = 'PAID'",
                &[tid.into(), batch.into()],
            )
            .await?;
        tx.commit().await?;
        match row {
            Some(row) => Ok((row.i64(0)?, row.i64(1)?)),
            None => Ok((0, 0)),
        }
    }
}

impl Tx {
    /// Row lock on the orders row of a joined order query.
    fn for_update_of_orders(&self) -> &'static str {
        match self.dialect() {
            crate::journal::Dialect::Postgres => " FOR UPDATE OF o",
            crate::journal::Dialect::Sqlite => "",
        }
    }
}

/// Reads an order outside any transaction (no lock, one round trip).
async fn read_order(
    store: &Store,
    condition: &str,
    params: &[Value],
) -> Result<Option<Order>, JournalError> {
    let sql = format!(
        "SELECT {ORDER_COLUMNS} FROM orders o JOIN merchants m ON m.mid = o.mid WHERE {condition}"
    );
    store
        .read_opt(&sql, params)
        .await?
        .as_ref()
        .map(order_from_row)
        .transpose()
}

async fn load_order(
    tx: &mut Tx,
    condition: &str,
    params: &[Value],
    lock: &str,
) -> Result<Option<Order>, JournalError> {
    let sql = format!(
        "SELECT {ORDER_COLUMNS} FROM orders o JOIN merchants m ON m.mid = o.mid WHERE {condition}{lock}"
    );
    tx.query_opt(&sql, params)
        .await?
        .as_ref()
        .map(order_from_row)
        .transpose()
}

async fn set_state(
    tx: &mut Tx,
    order_id: &str,
    from: OrderState,
    to: OrderState,
    code: ResponseCode,
    detail: &str,
) -> Result<(), JournalError> {
    let changed = tx
        .execute(
            "UPDATE orders SET state = $3, response_code = $4, updated_at_ms = $5 WHERE order_id = $1 AND state = $2",
            &[order_id.into(), from.as_str().into(), to.as_str().into(), code.as_str().into(), now_ms().into()],
        )
        .await?;
    // The caller holds the row lock and read `from` under it: anything else is a bug.
    assert_eq!(changed, 1, "order {order_id} was not in state {from:?}");
    record_event(tx, order_id, Some(from), to, detail).await
}

/// Like [`set_state`], but a no-op when the order has meanwhile left `from` (a crash recovery
/// may have declined an order whose answer arrives late).
async fn move_state(
    tx: &mut Tx,
    order_id: &str,
    from: OrderState,
    to: OrderState,
    code: ResponseCode,
    detail: &str,
) -> Result<(), JournalError> {
    let changed = tx
        .execute(
            "UPDATE orders SET state = $3, response_code = $4, updated_at_ms = $5 WHERE order_id = $1 AND state = $2",
            &[order_id.into(), from.as_str().into(), to.as_str().into(), code.as_str().into(), now_ms().into()],
        )
        .await?;
    if changed == 1 {
        record_event(tx, order_id, Some(from), to, detail).await?;
    }
    Ok(())
}

async fn record_event(
    tx: &mut Tx,
    order_id: &str,
    from: Option<OrderState>,
    to: OrderState,
    detail: &str,
) -> Result<(), JournalError> {
    crate::metrics::record_order_state(to.as_str());
    tx.execute(
        "INSERT INTO order_events (event_id, order_id, from_state, to_state, detail, at_ms) VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            new_id().into(),
            order_id.into(),
            from.map(OrderState::as_str).into(),
            to.as_str().into(),
            detail.into(),
            now_ms().into(),
        ],
    )
    .await?;
    Ok(())
}

async fn record_attempt(
    tx: &mut Tx,
    order: Option<&Order>,
    request: &PayRequest,
    pan_hash: &[u8],
    code: ResponseCode,
    reason: &str,
) -> Result<String, JournalError> {
    let attempt_id = new_id();
    let amount = order.map(|o| o.amount).or(request.amount);
    tx.execute(
        "INSERT INTO attempts (attempt_id, order_id, reference, app_id, pan_truncated, pan_hash, amount_minor, currency, \
         response_code, reason, created_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        &[
            attempt_id.as_str().into(),
            order.map(|o| o.order_id.as_str()).into(),
            order.map(|o| o.reference.as_str()).into(),
            request.app_id.as_str().into(),
            request.pan.masked().into(),
            pan_hash.to_vec().into(),
            amount.map(|a| a.amount_minor).into(),
            amount.map(|a| i64::from(a.currency)).into(),
            code.as_str().into(),
            reason.into(),
            now_ms().into(),
        ],
    )
    .await?;
    Ok(attempt_id)
}

fn refusal(
    code: ResponseCode,
    message: String,
    order: Option<Order>,
    attempt_id: String,
) -> PaymentResult {
    PaymentResult {
        response_code: code.as_str().to_owned(),
        message,
        order,
        attempt_id,
    }
}

/// Claims the idempotency key for this request inside the payment's transaction. Returns the
/// stored result of an earlier request with the same key; refuses a different request reusing
/// a key.
async fn claim_idempotency_key(
    tx: &mut Tx,
    request: &PayRequest,
    request_hash: &[u8],
) -> Result<Option<PaymentResult>, OrderError> {
    tx.execute(
        "INSERT INTO idempotency (app_id, idem_key, request_hash, created_at_ms) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        &[request.app_id.as_str().into(), request.idempotency_key.as_str().into(), request_hash.to_vec().into(), now_ms().into()],
    )
    .await?;
    // On PostgreSQL a concurrent request with the same key waits here until the first commits.
    let sql = format!(
        "SELECT request_hash, response FROM idempotency WHERE app_id = $1 AND idem_key = $2{}",
        tx.for_update()
    );
    let row = tx
        .query_opt(
            &sql,
            &[
                request.app_id.as_str().into(),
                request.idempotency_key.as_str().into(),
            ],
        )
        .await?
        .ok_or_else(|| {
            OrderError::Journal(JournalError::Internal("idempotency row vanished".into()))
        })?;
    if row.bytes(0)? != request_hash {
        return Err(OrderError::refused(
            ResponseCode::InvalidTransaction,
            "idempotency key reused for a different request",
        ));
    }
    match row.opt_text(1)? {
        Some(stored) => serde_json::from_str(&stored).map(Some).map_err(|e| {
            OrderError::Journal(JournalError::Schema(format!(
                "stored idempotent result: {e}"
            )))
        }),
        None => Ok(None),
    }
}

async fn store_idempotent_result(
    tx: &mut Tx,
    request: &PayRequest,
    result: &PaymentResult,
) -> Result<(), OrderError> {
    let json = serde_json::to_string(result)
        .map_err(|e| OrderError::Journal(JournalError::Internal(e.to_string())))?;
    tx.execute(
        "UPDATE idempotency SET response = $3 WHERE app_id = $1 AND idem_key = $2",
        &[
            request.app_id.as_str().into(),
            request.idempotency_key.as_str().into(),
            json.into(),
        ],
    )
    .await?;
    Ok(())
}

/// What makes two requests "the same" for idempotency: the code, the card, the PIN-entry
/// presence and the amount (never the PIN block itself).
fn request_fingerprint(request: &PayRequest, pan_hash: &[u8]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(request.payload.as_bytes());
    hasher.update([0]);
    hasher.update(pan_hash);
    hasher.update([u8::from(request.pin_block.is_some())]);
    if let Some(amount) = request.amount {
        hasher.update(amount.amount_minor.to_be_bytes());
        hasher.update(amount.currency.to_be_bytes());
    }
    hasher.finalize().to_vec()
}

fn random_digits(count: usize) -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..count)
        .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
        .collect()
}
