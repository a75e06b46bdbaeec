//! The order service: create, resolve, pay, cancel, reverse, expire, and wait for an order.
//!
//! Every method that changes an order does it in one journal transaction; notifications to
//! waiting terminals go out only after the commit.

use super::forward::{self, Armed, Upstream};
use super::notify::OrderNotifier;
use super::payload::{self, PayloadSigner, ScannedPayload};
use super::{OrderState, Origin, ResponseCode};
use crate::domain::lifecycle::{self, Event, Verdict};
use crate::domain::money::Money;
pub use crate::domain::order::Order;
use crate::infra::clock::new_auth_code;
use crate::infra::security::Security;
use crate::service::terminal_keys::{KeyError, Keyring};
use crate::store::counters;
use crate::store::journal::{Dialect, JournalError, Later, Store, Tx, new_id, now_ms};
use crate::store::ledger::{self, TransferOutcome};
use crate::store::orders::{self as order_store, Apply, ApplyError, Paid};
use crate::store::terminal_requests::{self, RequestKey};
use crate::upstream::HostLink;
use posbridge_hsm::{Pan, PinBlock, PinBlockFormat};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// Wrong PINs in a row after which an account is locked (75).
pub const MAX_PIN_TRIES: i64 = 3;

/// The one refusal for a wrong PIN, an unknown card and a card of another app.
const CARD_OR_PIN: &str = "card or PIN not accepted";

/// A PIN block the module cannot read (wrong length, wrong key, wrong format or PAN) is the
/// caller's fault (30, HTTP 400), not the gateway's; any other module failure is the gateway's.
fn pin_block_error(error: crate::infra::security::SecurityError) -> OrderError {
    use crate::infra::security::SecurityError;
    use posbridge_hsm::HsmError;
    match error {
        SecurityError::Hsm(
            HsmError::BadPinBlock { .. } | HsmError::InvalidInput(_) | HsmError::WrongKey { .. },
        ) => OrderError::refused(
            ResponseCode::FormatError,
            "pin_block: does not decode under the app's PIN key (wrong key, format or PAN)",
        ),
        other => OrderError::Security(other.to_string()),
    }
}

/// The PIN verdict reached before the payment's transaction: the account it was checked
/// against, that account's verification value then, and whether the PIN matched.
#[derive(Debug, Default)]
struct PinCheck {
    verified: Option<(String, String, bool)>,
}

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
    /// Another request changed the order first (a race this one lost); nothing was written.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The request itself is refused, with the code to answer.
    #[error("refused ({code}): {reason}")]
    Refused {
        /// What to answer on the wire.
        code: ResponseCode,
        /// Why, for the log and the attempt record.
        reason: String,
    },
}

impl From<ApplyError> for OrderError {
    fn from(error: ApplyError) -> OrderError {
        match error {
            ApplyError::Conflict { .. } => OrderError::Conflict(error.to_string()),
            ApplyError::Refused { code, reason } => OrderError::Refused { code, reason },
            ApplyError::Journal(error) => OrderError::Journal(error),
        }
    }
}

impl From<lifecycle::Refusal> for OrderError {
    fn from(refusal: lifecycle::Refusal) -> OrderError {
        OrderError::refused(refusal.code, refusal.reason)
    }
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
            OrderError::Journal(_) | OrderError::Security(_) | OrderError::Conflict(_) => {
                ResponseCode::SystemError
            }
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
    /// How long a queued reversal or refund advice is tried before it needs an operator
    /// (`upstream.reversal_expiry_secs`). Set whether or not this process runs the host links:
    /// an operator's refund (`posbridge admin refund`) queues its advice for the gateway that does.
    pub host_queue_ttl: Duration,
    /// How long three wrong PINs lock a card (`gateway.pin_lock_secs`); `None`: until an
    /// operator unlocks it.
    pub pin_lock: Option<Duration>,
    /// Payment velocity limits.
    pub velocity: Velocity,
    /// How long reference data stays in memory (`gateway.registry_cache_ms`).
    pub registry_cache: Duration,
}

/// How many payments a card and an app may attempt per minute (0: no limit), counted from the
/// journal's attempts, so the limit holds across the gateways sharing it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Velocity {
    /// Per card (by the keyed hash of its number).
    pub card_per_minute: u32,
    /// Per wallet app.
    pub app_per_minute: u32,
}

/// The order service, shared by the terminal server, the wallet API and the admin commands.
#[derive(Clone)]
pub struct OrderService {
    store: Store,
    security: Security,
    notifier: Arc<OrderNotifier>,
    settings: Arc<OrderSettings>,
    upstream: Option<Arc<Upstream>>,
    registry: Arc<crate::registry::cache::RegistryCache>,
    keyring: Keyring,
}

/// An order as read, with [`OrderService::read_sequence`] as it was just before the read.
#[derive(Debug, Clone)]
pub struct ReadAt {
    /// The order.
    pub order: Order,
    /// The notifier's sequence number taken before the read.
    pub sequence: u64,
}

/// A payment's scanned code and its row locks sent ahead ([`Tx::query_later`]), taken in this
/// order.
struct Ahead {
    /// The code as parsed (once, for the locks and the payment).
    scanned: Result<ScannedPayload, String>,
    /// The dynamic code's order.
    order: Option<Later>,
    /// The payer's account (sales settled here).
    payer: Option<Later>,
    /// The sale's retrieval reference number (sales settled here).
    rrn: Option<Later>,
}

/// What a payment attempt leads to inside its first transaction.
enum Step {
    /// Decided here (local ledger, or refused): the result and the order that changed.
    Done(Box<PaymentResult>, Option<String>),
    /// Routed to a host: armed in the journal, to send after this transaction commits.
    Forward(Box<Armed>),
}

/// Decides `event` for a locked order with the lifecycle and applies the transition: the one
/// path by which the order services (the order service and the forwarder's workers) change an
/// order.
pub(super) async fn decide(
    tx: &mut Tx,
    order: &Order,
    event: Event,
    details: Details<'_>,
) -> Result<Decided, OrderError> {
    let context = order_store::context(tx, order).await?;
    match lifecycle::next(order.state, event, &context) {
        Verdict::Move(transition) => {
            let code = transition.code;
            let moved = order_store::apply(
                tx,
                Apply {
                    order,
                    transition: &transition,
                    context: &context,
                    paid: details.paid,
                    forward_id: details.forward_id,
                    note: details.note,
                    queue_ttl_ms: details.queue_ttl_ms,
                },
            )
            .await?;
            Ok(Decided::Moved(code, Box::new(moved)))
        }
        Verdict::Proceed => Ok(Decided::Proceed),
        Verdict::Unchanged(code) => Ok(Decided::Unchanged(code)),
        Verdict::Refuse(refusal) => Err(refusal.into()),
    }
}

/// What [`decide`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Decided {
    /// A transition was applied; its code and the order as it now stands.
    Moved(ResponseCode, Box<Order>),
    /// Allowed, nothing written yet.
    Proceed,
    /// Nothing to do; answer this.
    Unchanged(ResponseCode),
}

impl Decided {
    /// The order after the decision: the updated row when it moved, else `before` unchanged.
    pub(super) fn order_after<'a>(&'a self, before: &'a Order) -> &'a Order {
        match self {
            Decided::Moved(_, moved) => moved,
            Decided::Proceed | Decided::Unchanged(_) => before,
        }
    }
}

/// What a transition's work needs besides the order (see [`Apply`]).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Details<'a> {
    pub(super) paid: Option<Paid<'a>>,
    pub(super) forward_id: Option<&'a str>,
    pub(super) note: Option<&'a str>,
    pub(super) queue_ttl_ms: i64,
}

/// A batch's settlement totals (field 48 of 0500): debits (sales) and credits (refunds).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchTotals {
    /// Sales still paid.
    pub debit_count: i64,
    /// Their amount, minor units.
    pub debit_minor: i64,
    /// Refunds of the batch's sales.
    pub credit_count: i64,
    /// Their amount, minor units.
    pub credit_minor: i64,
}

/// A terminal's voucher: the order a void, refund or reversal is about, and the request's own
/// identity for repeats (`None` for operator requests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Voucher {
    /// Terminal ID.
    pub tid: String,
    /// Batch of the original sale.
    pub batch: String,
    /// Voucher (trace) number of the original sale.
    pub voucher: String,
    /// The terminal request (TID, MTI, batch, STAN) asking, so a repeat is answered the same.
    pub request: Option<RequestKey>,
}

impl Voucher {
    /// An operator's request for a sale (no terminal request to de-duplicate).
    pub fn of(tid: &str, batch: &str, voucher: &str) -> Voucher {
        Voucher {
            tid: tid.to_owned(),
            batch: batch.to_owned(),
            voucher: voucher.to_owned(),
            request: None,
        }
    }
}

/// The currency of the sale a voucher names (refunds must match it).
async fn voucher_currency(service: &OrderService, voucher: &Voucher) -> Result<u16, OrderError> {
    service
        .order_by_voucher(&voucher.tid, &voucher.batch, &voucher.voucher)
        .await?
        .map(|order| order.amount.currency)
        .ok_or_else(|| OrderError::refused(ResponseCode::NotFound, "no order for this voucher"))
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
        let registry = Arc::new(crate::registry::cache::RegistryCache::new(
            settings.registry_cache,
        ));
        let notifier = Arc::new(OrderNotifier::default());
        // Every committed change of an order wakes this gateway's waiters from the store, from
        // whichever path committed it (payments, the forwarder's background work, expiry).
        let wake = Arc::clone(&notifier);
        store.wake_orders_with(Arc::new(move |order_id, order| match order {
            Some(order) => wake.changed_to(order),
            None => wake.changed(order_id),
        }));
        OrderService {
            keyring: Keyring::new(store.clone(), security.clone(), Arc::clone(&registry)),
            store,
            security,
            notifier,
            registry,
            settings: Arc::new(settings),
            upstream: None,
        }
    }

    /// The terminals' working keys (sign-on, MAC checks, key change-over).
    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    /// Terminals, wallet apps and merchants as this gateway keeps them in memory.
    pub fn registry(&self) -> &Arc<crate::registry::cache::RegistryCache> {
        &self.registry
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

    /// Wakes the requests waiting on orders (held terminal requests).
    pub fn notifier(&self) -> &Arc<OrderNotifier> {
        &self.notifier
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
        if new.amount.currency != merchant.currency {
            // Refused at once: accepted, it would fail later at payment with a misleading 51.
            return Err(OrderError::refused(
                ResponseCode::InvalidAmount,
                format!(
                    "the merchant accepts currency {:03} only, not {:03}",
                    merchant.currency, new.amount.currency
                ),
            ));
        }
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
        let row = order_store::NewRow {
            order_id: &order_id,
            origin: new.origin,
            mid: &new.mid,
            tid: new.tid.as_deref(),
            batch: new.batch.as_deref(),
            voucher: new.voucher.as_deref(),
            operator: new.operator.as_deref(),
            acquirer: new.acquirer.as_deref(),
            txn_type: &new.txn_type,
            amount: new.amount,
            reference: &reference,
            payload: &payload,
            now_ms: now,
            expires_at_ms: expires,
        };
        let Some(inserted) = order_store::insert_created(&self.store, &row).await? else {
            return Err(OrderError::refused(
                ResponseCode::Duplicate,
                "an order for this terminal, batch and voucher exists already",
            ));
        };
        Ok(order_store::order_from_own_row(
            &inserted,
            merchant.name,
            merchant.city,
        )?)
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
        let refused = || {
            OrderError::refused(
                ResponseCode::MacError,
                "the terminal's code signature does not verify",
            )
        };
        let (input, signature) = payload::signed_parts(scanned).ok_or_else(refused)?;
        match self
            .keyring
            .verify(tid, payload::TERMINAL_SIGNATURE, input, signature)
            .await
        {
            Ok(()) => Ok(()),
            Err(KeyError::Refused) => Err(refused()),
            Err(other) => Err(OrderError::Security(other.to_string())),
        }
    }

    /// Reads an order by id.
    pub async fn order(&self, order_id: &str) -> Result<Option<Order>, OrderError> {
        Ok(order_store::read(&self.store, "o.order_id = $1", &[order_id.into()]).await?)
    }

    /// Reads an order by terminal, batch and voucher.
    pub async fn order_by_voucher(
        &self,
        tid: &str,
        batch: &str,
        voucher: &str,
    ) -> Result<Option<Order>, OrderError> {
        Ok(order_store::read(
            &self.store,
            "o.tid = $1 AND o.batch = $2 AND o.voucher = $3",
            &[tid.into(), batch.into(), voucher.into()],
        )
        .await?)
    }

    /// Reads a paid (or reversed) order by its retrieval reference number.
    pub async fn order_by_rrn(&self, rrn: &str) -> Result<Option<Order>, OrderError> {
        Ok(order_store::read(&self.store, "o.rrn = $1", &[rrn.into()]).await?)
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
        let order = order_store::read(&self.store, "o.reference = $1", &[reference.into()])
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
        // The security module is asked before the payment's transaction takes any row lock.
        let pin = self.pin_check(&request, &pan_hash).await?;
        let route = self.prepare_route(&request.pan).await?;
        let mut tx = self.store.begin().await?;
        // The idempotency claim, the order's row lock and the payer's row lock travel together,
        // in this order, in one round trip: each is needed whatever the others find, except
        // after a repeated key, whose locks go with the rolled-back transaction.
        let claim = claim_later(&mut tx, &request, &request_hash).await?;
        let ahead = self
            .locks_later(&mut tx, &request, &pan_hash, &route)
            .await?;
        if let Some(previous) =
            claim_idempotency_key(&mut tx, &request, &request_hash, claim).await?
        {
            return Ok(previous);
        }
        let outcome = match self.over_velocity(&mut tx, &request, &pan_hash).await? {
            Some(reason) => Err(OrderError::refused(ResponseCode::TooFrequent, reason)),
            None => {
                self.pay_in(&mut tx, &request, &pan_hash, &pin, route, ahead)
                    .await
            }
        };
        let (result, changed_order) = match outcome {
            Ok(Step::Done(result, changed)) => (*result, changed),
            Ok(Step::Forward(armed)) => {
                tx.commit().await?;
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
        match (changed_order, &result.order) {
            (Some(order_id), Some(order)) if order.order_id == order_id => {
                tx.announce_order_as(order);
            }
            (Some(order_id), _) => tx.announce_order(&order_id),
            (None, _) => {}
        }
        tx.commit().await?;
        Ok(result)
    }

    /// Where a card's payment goes (a host link, or `None` for the local ledger), with what its
    /// forwarded sale needs from the security module, had before the payment's transaction.
    async fn prepare_route(
        &self,
        pan: &Pan,
    ) -> Result<Option<(&HostLink, forward::Prepared)>, OrderError> {
        let Some(upstream) = &self.upstream else {
            return Ok(None);
        };
        let Some(link) = upstream.route(pan.expose_secret()) else {
            return Ok(None);
        };
        let prepared = upstream
            .prepare(link, pan)
            .await
            .map_err(|e| OrderError::Security(e.to_string()))?;
        Ok(Some((link, prepared)))
    }

    /// The row locks a payment takes, sent ahead: the dynamic code's order (a static code's
    /// order is made in the transaction) and, for a sale settled here, the payer's account.
    async fn locks_later(
        &self,
        tx: &mut Tx,
        request: &PayRequest,
        pan_hash: &[u8],
        route: &Option<(&HostLink, forward::Prepared)>,
    ) -> Result<Ahead, OrderError> {
        let scanned = payload::parse(&request.payload);
        let reference = scanned.as_ref().ok().and_then(|s| s.reference.as_deref());
        let order = match reference {
            Some(reference) => Some(
                order_store::load_later(tx, "o.reference = $1", &[reference.into()], true).await?,
            ),
            None => None,
        };
        let (payer, rrn) = match route {
            None => (
                Some(ledger::payer_by_pan_hash_for_update_later(tx, pan_hash).await?),
                Some(counters::next_rrn_later(tx).await?),
            ),
            Some(_) => (None, None),
        };
        Ok(Ahead {
            scanned,
            order,
            payer,
            rrn,
        })
    }

    async fn pay_in(
        &self,
        tx: &mut Tx,
        request: &PayRequest,
        pan_hash: &[u8],
        pin: &PinCheck,
        route: Option<(&HostLink, forward::Prepared)>,
        ahead: Ahead,
    ) -> Result<Step, OrderError> {
        let scanned = ahead
            .scanned
            .map_err(|e| OrderError::refused(ResponseCode::FormatError, e))?;
        let order = match (scanned.reference.as_deref(), ahead.order) {
            (Some(_), Some(lock)) => self.lock_dynamic_order(tx, lock, request).await?,
            (None, _) => self.static_order(tx, &scanned, request).await?,
            (Some(_), None) => {
                // locks_later parsed the same payload: a dynamic code always has its lock.
                return Err(OrderError::Journal(JournalError::Internal(
                    "the order's lock was not sent ahead".into(),
                )));
            }
        };
        match decide(tx, &order, Event::PayAttempt, Details::default()).await? {
            Decided::Proceed => {}
            decided @ (Decided::Moved(code, _) | Decided::Unchanged(code)) => {
                let now = decided.order_after(&order);
                let result = self
                    .attempt_result(tx, now, request, pan_hash, code, "order expired")
                    .await?;
                return Ok(Step::Done(Box::new(result), Some(order.order_id.clone())));
            }
        }
        if let Some(upstream) = &self.upstream
            && let Some((link, prepared)) = route
        {
            let merchant = self.merchant_in(tx, &order.mid).await?;
            let armed = forward::arm(
                tx,
                upstream,
                link,
                prepared,
                &order,
                request.pan.expose_secret(),
                &merchant.mcc,
                &merchant.country,
            )
            .await?;
            decide(tx, &order, Event::Forward, Details::default()).await?;
            return Ok(Step::Forward(Box::new(armed)));
        }
        // An unknown card, and a card enrolled by another app, get the wrong-PIN answer: the
        // answer must not tell a prober which card numbers exist.
        let payer = match ahead.payer {
            Some(lock) => ledger::payer_found(tx, lock).await?,
            None => ledger::payer_by_pan_hash_for_update(tx, pan_hash).await?,
        };
        let Some(payer) = payer.filter(|payer| {
            payer
                .app_id
                .as_deref()
                .is_none_or(|app| app == request.app_id)
        }) else {
            return self
                .refused_payment(tx, &order, request, pan_hash, Event::WrongPin)
                .await;
        };
        if let Some(code) = self.check_pin(tx, &payer, request, pin).await? {
            let event = match code {
                ResponseCode::PinTriesExceeded => Event::LocalDeclined(code),
                _ => Event::WrongPin,
            };
            return self
                .refused_payment(tx, &order, request, pan_hash, event)
                .await;
        }
        let merchant = self.merchant_in(tx, &order.mid).await?;
        match ledger::transfer_from_locked(
            tx,
            &order.order_id,
            &payer,
            (&merchant.account_id, merchant.currency),
            order.amount,
            "sale",
        )
        .await?
        {
            TransferOutcome::Done => {}
            TransferOutcome::InsufficientFunds | TransferOutcome::CurrencyMismatch => {
                let event = Event::LocalDeclined(ResponseCode::InsufficientFunds);
                return self
                    .refused_payment(tx, &order, request, pan_hash, event)
                    .await;
            }
        }
        // locks_later drew it for every sale settled here, with the payer's lock.
        let drawn = ahead.rrn.ok_or_else(|| {
            OrderError::Journal(JournalError::Internal(
                "the sale's RRN was not drawn ahead".into(),
            ))
        })?;
        let rrn = counters::rrn(tx, drawn).await?;
        let (auth_code, masked) = (new_auth_code(), request.pan.masked());
        let paid = Paid {
            rrn: &rrn,
            auth_code: Some(&auth_code),
            payer_account_id: Some(&payer.account_id),
            payer_pan_masked: &masked,
        };
        let details = Details {
            paid: Some(paid),
            ..Details::default()
        };
        let decided = decide(tx, &order, Event::LocalApproved, details).await?;
        let paid_order = decided.order_after(&order);
        let created_at_ms = order.created_at_ms;
        tx.after_commit(move || crate::infra::metrics::record_sale_since_ms(created_at_ms));
        let result = self
            .attempt_result(
                tx,
                paid_order,
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
        lock: Later,
        request: &PayRequest,
    ) -> Result<Order, OrderError> {
        let order = order_store::loaded(tx, lock)
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
        order_store::record_event(
            tx,
            &order_id,
            None,
            OrderState::Created,
            "static code payment",
        )
        .await?;
        Ok(order_store::reload(tx, &order_id).await?)
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
                let left = armed
                    .deadline
                    .saturating_duration_since(tokio::time::Instant::now());
                forward::Outcome::of(&link.request(message, left).await)
            }
        };
        let mut tx = self.store.begin().await?;
        forward::settle(&mut tx, &armed, &outcome).await?;
        let order_id = armed.order.order_id.as_str();
        let order = order_store::load(&mut tx, "o.order_id = $1", &[order_id.into()], true)
            .await?
            .ok_or_else(|| OrderError::Journal(JournalError::Internal("order vanished".into())))?;
        let (event, reason) = match &outcome {
            forward::Outcome::Approved { .. } => {
                (Event::HostApproved, "approved by the host".to_owned())
            }
            forward::Outcome::Declined(code) => (
                Event::HostDeclined(ResponseCode::parse(code)),
                "declined by the host".to_owned(),
            ),
            forward::Outcome::NotSent(why) => {
                (Event::NotSent, format!("not sent to the host: {why}"))
            }
            forward::Outcome::Ambiguous(why) => (
                Event::HostAmbiguous,
                format!("{why}; the sale is being reversed"),
            ),
        };
        let (rrn, auth_code) = match &outcome {
            forward::Outcome::Approved { auth_code, rrn } => (
                rrn.clone()
                    .or_else(|| armed.message.text(37).map(str::to_owned)),
                auth_code.clone(),
            ),
            _ => (None, None),
        };
        let masked = request.pan.masked();
        let paid = rrn.as_deref().map(|rrn| Paid {
            rrn,
            auth_code: auth_code.as_deref(),
            payer_account_id: None,
            payer_pan_masked: &masked,
        });
        let details = Details {
            paid: paid
                .filter(|_| order.state == OrderState::Authorizing && event == Event::HostApproved),
            forward_id: Some(&armed.forward_id),
            ..Details::default()
        };
        let (code, order) = match decide(&mut tx, &order, event, details).await {
            Ok(Decided::Moved(code, moved)) => (code, *moved),
            Ok(Decided::Unchanged(code)) => (code, order),
            Ok(Decided::Proceed) => (ResponseCode::SystemError, order),
            Err(OrderError::Refused { code, .. }) => (code, order),
            Err(other) => return Err(other),
        };
        let reason = if code == ResponseCode::IssuerTimeout && event == Event::HostApproved {
            "approved after the reversal was decided; the sale is being reversed".to_owned()
        } else {
            reason
        };
        let result = self
            .attempt_result(&mut tx, &order, request, pan_hash, code, &reason)
            .await?;
        store_idempotent_result(&mut tx, request, &result).await?;
        match &result.order {
            Some(order) => tx.announce_order_as(order),
            None => tx.announce_order(order_id),
        }
        tx.commit().await?;
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

    /// Verifies the PIN block in the security module, outside any transaction: against the
    /// verification value of the account the card maps to, as read (unlocked) now.
    async fn pin_check(
        &self,
        request: &PayRequest,
        pan_hash: &[u8],
    ) -> Result<PinCheck, OrderError> {
        let Some(payer) = ledger::payer_by_pan_hash(&self.store, pan_hash).await? else {
            return Ok(PinCheck::default());
        };
        let (Some(pvv), Some(pvki), Some(block)) =
            (payer.pvv.clone(), payer.pvki, request.pin_block.clone())
        else {
            return Ok(PinCheck::default());
        };
        if self.pin_locked(&payer) {
            return Ok(PinCheck::default());
        }
        let correct = self
            .security
            .verify_pin(
                block,
                request.pek_label.clone(),
                request.pin_format,
                request.pan.clone(),
                self.settings.keys.pvk.clone(),
                pvki,
                pvv.clone(),
            )
            .await
            .map_err(pin_block_error)?;
        Ok(PinCheck {
            verified: Some((payer.account_id, pvv, correct)),
        })
    }

    /// Why this payment is one too many for its card or its app in the last minute, if it is.
    /// A retry with the same idempotency key never gets here (it gets its first result).
    async fn over_velocity(
        &self,
        tx: &mut Tx,
        request: &PayRequest,
        pan_hash: &[u8],
    ) -> Result<Option<&'static str>, OrderError> {
        let since = now_ms() - 60_000;
        let limits = self.settings.velocity;
        if tx.dialect() == Dialect::Postgres {
            // Counted one at a time per card (and per app, when limited) across the gateways
            // sharing the journal: two gateways counting at the same instant would otherwise
            // each let one more through. The locks end with the transaction.
            if limits.card_per_minute > 0 {
                tx.execute(
                    "SELECT pg_advisory_xact_lock(8583002, hashtext($1))",
                    &[hex::encode(pan_hash).into()],
                )
                .await?;
            }
            if limits.app_per_minute > 0 {
                tx.execute(
                    "SELECT pg_advisory_xact_lock(8583003, hashtext($1))",
                    &[request.app_id.as_str().into()],
                )
                .await?;
            }
        }
        if limits.card_per_minute > 0 {
            let row = tx
                .query_opt(
                    "SELECT COUNT(*) FROM attempts WHERE pan_hash = $1 AND created_at_ms >= $2",
                    &[pan_hash.to_vec().into(), since.into()],
                )
                .await?;
            if row.map_or(Ok(0), |r| r.i64(0))? >= i64::from(limits.card_per_minute) {
                return Ok(Some("too many payments with this card in the last minute"));
            }
        }
        if limits.app_per_minute > 0 {
            let row = tx
                .query_opt(
                    "SELECT COUNT(*) FROM attempts WHERE app_id = $1 AND created_at_ms >= $2",
                    &[request.app_id.as_str().into(), since.into()],
                )
                .await?;
            if row.map_or(Ok(0), |r| r.i64(0))? >= i64::from(limits.app_per_minute) {
                return Ok(Some("too many payments by this app in the last minute"));
            }
        }
        Ok(None)
    }

    /// True while the card's PIN tries are used up and its lock has not run out.
    fn pin_locked(&self, payer: &ledger::Account) -> bool {
        if payer.pin_tries < MAX_PIN_TRIES {
            return false;
        }
        match (self.settings.pin_lock, payer.pin_locked_at_ms) {
            (Some(lock), Some(at)) => {
                let lock_ms = i64::try_from(lock.as_millis()).unwrap_or(i64::MAX);
                now_ms() < at.saturating_add(lock_ms)
            }
            _ => true,
        }
    }

    /// Applies the PIN verdict under the account's lock. `None` = accepted.
    async fn check_pin(
        &self,
        tx: &mut Tx,
        payer: &ledger::Account,
        request: &PayRequest,
        pin: &PinCheck,
    ) -> Result<Option<ResponseCode>, OrderError> {
        let Some(pvv) = payer.pvv.as_deref() else {
            return Ok(None); // an account without a PIN (S105: "if the account has one")
        };
        if self.pin_locked(payer) {
            return Ok(Some(ResponseCode::PinTriesExceeded));
        }
        if payer.pin_tries >= MAX_PIN_TRIES {
            // The lock ran out: the count starts again.
            ledger::unlock_pin(tx, &payer.account_id).await?;
            tracing::info!(account = %payer.account_id, "PIN lock expired");
        }
        if request.pin_block.is_none() {
            return Ok(Some(ResponseCode::WrongPin));
        }
        let correct = match &pin.verified {
            Some((account, verified_pvv, correct))
                if *account == payer.account_id && verified_pvv == pvv =>
            {
                *correct
            }
            // The account's PIN changed between the check and the lock: nothing is decided.
            _ => {
                return Err(OrderError::Conflict(
                    "the account changed while its PIN was checked; try again".into(),
                ));
            }
        };
        let tries = if correct && payer.pin_tries == 0 && payer.pin_locked_at_ms.is_none() {
            0 // nothing to reset: the row (locked and read in this transaction) stays as it is
        } else {
            ledger::record_pin_result(tx, &payer.account_id, correct, MAX_PIN_TRIES).await?
        };
        Ok(match (correct, tries >= MAX_PIN_TRIES) {
            (true, _) => None,
            (false, true) => Some(ResponseCode::PinTriesExceeded),
            (false, false) => Some(ResponseCode::WrongPin),
        })
    }

    /// Records the attempt on `order` (as it stands after the attempt's decision) and makes
    /// its result.
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
        Ok(refusal(
            code,
            reason.to_owned(),
            Some(order.clone()),
            attempt_id,
        ))
    }

    /// [`OrderService::merchant`] inside a transaction (see [`RegistryCache::merchant_in`]).
    ///
    /// [`RegistryCache::merchant_in`]: crate::registry::cache::RegistryCache::merchant_in
    async fn merchant_in(
        &self,
        tx: &mut Tx,
        mid: &str,
    ) -> Result<crate::registry::Merchant, OrderError> {
        let merchant = self.registry.merchant_in(tx, mid).await?;
        merchant.ok_or_else(|| {
            OrderError::refused(
                ResponseCode::InvalidMerchant,
                format!("unknown merchant {mid}"),
            )
        })
    }

    async fn merchant(&self, mid: &str) -> Result<crate::registry::Merchant, OrderError> {
        let merchant = self.registry.merchant(&self.store, mid).await?;
        merchant.ok_or_else(|| {
            OrderError::refused(
                ResponseCode::InvalidMerchant,
                format!("unknown merchant {mid}"),
            )
        })
    }

    /// Cancels an unpaid order (terminal gone, operator); returns the order as it now stands.
    pub async fn cancel(&self, order_id: &str, reason: &str) -> Result<Option<Order>, OrderError> {
        let mut tx = self.store.begin().await?;
        let Some(order) =
            order_store::load(&mut tx, "o.order_id = $1", &[order_id.into()], true).await?
        else {
            return Ok(None);
        };
        let details = Details {
            note: Some(reason),
            ..Details::default()
        };
        // Anything but CREATED stays as it is: cancelling is not a refusal here.
        decide(&mut tx, &order, Event::Cancel, details).await?;
        let order = order_store::reload(&mut tx, order_id).await?;
        tx.commit().await?;
        Ok(Some(order))
    }

    /// Voids a paid sale (terminal 0200 with 60.1 = 23, or the operator): the money goes back,
    /// locally in the same transaction, or through a queued reversal to the host that approved
    /// it. Voiding a voided sale is refused (12); so is voiding an upstream sale whose refund
    /// advices may have reached the host (refund the rest instead).
    pub async fn void(&self, voucher: &Voucher, reason: &str) -> Result<Order, OrderError> {
        self.after_sale(voucher, Event::Void, reason).await
    }

    /// Refunds part or all of a paid sale (terminal 0220 with 60.1 = 25, or the operator): at
    /// most what is left of it after earlier refunds; through the local ledger, or as a refund
    /// advice to the host that approved it.
    pub async fn refund(&self, voucher: &Voucher, amount: Money) -> Result<Order, OrderError> {
        if amount.currency != voucher_currency(self, voucher).await? {
            return Err(OrderError::refused(
                ResponseCode::InvalidAmount,
                "a refund is in the sale's currency",
            ));
        }
        let note = format!("{amount}");
        let event = Event::Refund {
            amount_minor: amount.amount_minor,
        };
        self.after_sale(voucher, event, &note).await
    }

    /// A reversal for a terminal's voucher (0400): cancels the order if unpaid, queues the
    /// host reversal if it is being authorised, gives the money back if paid. Reversing what
    /// never moved money answers 00 and changes nothing.
    pub async fn reverse(&self, voucher: &Voucher, reason: &str) -> Result<Order, OrderError> {
        self.after_sale(voucher, Event::TerminalReversal, reason)
            .await
    }

    /// One terminal or operator request on an existing order: claims a repeated terminal
    /// request (answered with its first answer), decides, applies, records the answer, commits.
    async fn after_sale(
        &self,
        voucher: &Voucher,
        event: Event,
        note: &str,
    ) -> Result<Order, OrderError> {
        let mut tx = self.store.begin().await?;
        if let Some(key) = &voucher.request
            && let Some(code) = terminal_requests::claim(&mut tx, key).await?
        {
            tx.commit().await?;
            return self.repeated(voucher, code).await;
        }
        let order = order_store::load(
            &mut tx,
            "o.tid = $1 AND o.batch = $2 AND o.voucher = $3",
            &[
                voucher.tid.as_str().into(),
                voucher.batch.as_str().into(),
                voucher.voucher.as_str().into(),
            ],
            true,
        )
        .await?
        .ok_or_else(|| OrderError::refused(ResponseCode::NotFound, "no order for this voucher"))?;
        let upstream_ttl_ms =
            i64::try_from(self.settings.host_queue_ttl.as_millis()).unwrap_or(i64::MAX / 2);
        let details = Details {
            note: Some(note),
            queue_ttl_ms: upstream_ttl_ms,
            ..Details::default()
        };
        let code = match decide(&mut tx, &order, event, details).await? {
            Decided::Moved(..) | Decided::Proceed => ResponseCode::Approved,
            Decided::Unchanged(code) => code,
        };
        if let Some(key) = &voucher.request {
            terminal_requests::record(&mut tx, key, code).await?;
        }
        let order = order_store::reload(&mut tx, &order.order_id).await?;
        tx.commit().await?;
        Ok(order)
    }

    /// The answer to a repeated terminal request: its first answer, and the order as it stands.
    async fn repeated(&self, voucher: &Voucher, code: ResponseCode) -> Result<Order, OrderError> {
        let order = self
            .order_by_voucher(&voucher.tid, &voucher.batch, &voucher.voucher)
            .await?
            .ok_or_else(|| {
                OrderError::refused(ResponseCode::NotFound, "no order for this voucher")
            })?;
        match code {
            ResponseCode::Approved => Ok(order),
            code => Err(OrderError::refused(
                code,
                "repeated request: its first answer",
            )),
        }
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
            let order = order_store::reload(&mut tx, &order_id).await?;
            if let Decided::Moved(..) =
                decide(&mut tx, &order, Event::Expire, Details::default()).await?
            {
                expired.push(order_id);
            }
        }
        tx.commit().await?;
        Ok(expired)
    }

    /// A payment the lifecycle declines (51, 75) or leaves open (55): the decision applied,
    /// the attempt recorded, the pay transaction committed with the PIN-try count.
    async fn refused_payment(
        &self,
        tx: &mut Tx,
        order: &Order,
        request: &PayRequest,
        pan_hash: &[u8],
        event: Event,
    ) -> Result<Step, OrderError> {
        let (code, reason, moved) = match decide(tx, order, event, Details::default()).await {
            Ok(Decided::Moved(code, moved)) => (code, "declined", Some(moved)),
            Err(OrderError::Refused { code, .. }) => (code, CARD_OR_PIN, None),
            Ok(Decided::Proceed | Decided::Unchanged(_)) => {
                (ResponseCode::SystemError, "no decision", None)
            }
            Err(other) => return Err(other),
        };
        let reason = match code {
            ResponseCode::InsufficientFunds => "insufficient funds",
            ResponseCode::PinTriesExceeded => "PIN tries exceeded",
            _ => reason,
        };
        let now = moved.as_deref().unwrap_or(order);
        let result = self
            .attempt_result(tx, now, request, pan_hash, code, reason)
            .await?;
        Ok(Step::Done(Box::new(result), Some(order.order_id.clone())))
    }

    /// Waits until the order leaves CREATED or `timeout` passes; returns it as it then stands.
    pub async fn wait_final(
        &self,
        order_id: &str,
        timeout: Duration,
    ) -> Result<Option<Order>, OrderError> {
        self.wait(order_id, None, timeout).await
    }

    /// [`OrderService::wait_final`] for an order the caller has just read: that read is
    /// answered from if nothing changed since, instead of reading the order again.
    pub async fn wait_final_after(
        &self,
        read: ReadAt,
        timeout: Duration,
    ) -> Result<Option<Order>, OrderError> {
        let order_id = read.order.order_id.clone();
        self.wait(&order_id, Some(read), timeout).await
    }

    /// The sequence number to take before reading an order for [`ReadAt`].
    pub fn read_sequence(&self) -> u64 {
        self.notifier.sequence()
    }

    /// Each round: the wake-up is armed first, then the order is had, from the fastest source
    /// that is certainly current: the caller's read if no change of its order was learnt since
    /// it (first round), the order as this gateway committed it when its change woke us, else the journal.
    async fn wait(
        &self,
        order_id: &str,
        mut known: Option<ReadAt>,
        timeout: Duration,
    ) -> Result<Option<Order>, OrderError> {
        let handle = self.notifier.subscribe(order_id);
        let deadline = tokio::time::Instant::now() + timeout;
        let mut woken = false;
        let result = loop {
            let notified = handle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let current = match known.take() {
                Some(read) if !self.notifier.changed_since(order_id, read.sequence) => {
                    Some(read.order)
                }
                _ if woken => handle.latest(),
                _ => None,
            };
            let order = match current {
                Some(order) => Some(order),
                None => self.order(order_id).await?,
            };
            match &order {
                Some(order)
                    if !order.state().is_final() && tokio::time::Instant::now() < deadline => {}
                _ => break order,
            }
            let wake = (tokio::time::Instant::now() + self.settings.poll_interval).min(deadline);
            woken = tokio::select! {
                () = &mut notified => true,
                () = tokio::time::sleep_until(wake) => false,
            };
        };
        self.notifier.release(order_id, handle);
        Ok(result)
    }

    /// A merchant's most recent orders (newest first), for its payment queries.
    pub async fn merchant_orders(&self, mid: &str, limit: i64) -> Result<Vec<Order>, OrderError> {
        let mut tx = self.store.begin().await?;
        let sql = format!(
            "SELECT {} FROM orders o JOIN merchants m ON m.mid = o.mid WHERE o.mid = $1 \
             ORDER BY o.created_at_ms DESC LIMIT $2",
            order_store::order_columns()
        );
        let rows = tx.query(&sql, &[mid.into(), limit.into()]).await?;
        tx.commit().await?;
        Ok(rows
            .iter()
            .map(order_store::order_from_row)
            .collect::<Result<_, _>>()?)
    }

    /// A terminal batch's totals as settlement (0500) compares them: debits are the sales still
    /// paid (a voided or reversed sale is out; a partly refunded one counts at its full amount),
    /// credits are the refunds of the batch's sales (settled with their sale's batch).
    pub async fn batch_totals(&self, tid: &str, batch: &str) -> Result<BatchTotals, OrderError> {
        let row = self
            .store
            .read_opt(
                "SELECT COUNT(*), CAST(COALESCE(SUM(o.amount_minor), 0) AS BIGINT), \
                 (SELECT COUNT(*) FROM transfers t JOIN orders r ON r.order_id = t.order_id \
                    WHERE r.tid = $1 AND r.batch = $2 AND t.kind = 'refund'), \
                 (SELECT CAST(COALESCE(SUM(t.amount_minor), 0) AS BIGINT) FROM transfers t JOIN orders r ON r.order_id = t.order_id \
                    WHERE r.tid = $1 AND r.batch = $2 AND t.kind = 'refund'), \
                 (SELECT COUNT(*) FROM advices a JOIN forwarded_sales f ON f.forward_id = a.forward_id JOIN orders r ON r.order_id = f.order_id \
                    WHERE r.tid = $1 AND r.batch = $2 AND a.status IN ('QUEUED', 'SENDING', 'DONE')), \
                 (SELECT CAST(COALESCE(SUM(a.amount_minor), 0) AS BIGINT) FROM advices a JOIN forwarded_sales f ON f.forward_id = a.forward_id \
                    JOIN orders r ON r.order_id = f.order_id WHERE r.tid = $1 AND r.batch = $2 AND a.status IN ('QUEUED', 'SENDING', 'DONE')) \
                 FROM orders o WHERE o.tid = $1 AND o.batch = $2 AND o.state = 'PAID'",
                &[tid.into(), batch.into()],
            )
            .await?;
        match row {
            Some(row) => Ok(BatchTotals {
                debit_count: row.i64(0)?,
                debit_minor: row.i64(1)?,
                credit_count: row.i64(2)? + row.i64(4)?,
                credit_minor: row.i64(3)? + row.i64(5)?,
            }),
            None => Ok(BatchTotals::default()),
        }
    }
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
    tx.execute_later(
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

/// Sends the claim of the request's idempotency key ahead (see [`claim_idempotency_key`]).
async fn claim_later(
    tx: &mut Tx,
    request: &PayRequest,
    request_hash: &[u8],
) -> Result<Later, OrderError> {
    Ok(tx
        .query_later(
            "INSERT INTO idempotency (app_id, idem_key, request_hash, created_at_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT DO NOTHING RETURNING app_id",
            &[
                request.app_id.as_str().into(),
                request.idempotency_key.as_str().into(),
                request_hash.to_vec().into(),
                now_ms().into(),
            ],
        )
        .await?)
}

/// Claims the idempotency key for this request inside the payment's transaction (the insert
/// sent ahead by [`claim_later`]). Returns the stored result of an earlier request with the
/// same key; refuses a different request reusing a key.
async fn claim_idempotency_key(
    tx: &mut Tx,
    request: &PayRequest,
    request_hash: &[u8],
    claim: Later,
) -> Result<Option<PaymentResult>, OrderError> {
    if tx.rows(claim).await?.len() == 1 {
        // The key is new and ours until this transaction ends: nothing to compare or return.
        return Ok(None);
    }
    // The key exists. On PostgreSQL the insert above waited for a concurrent request with the
    // same key to commit; its row is read (and locked) here.
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
    tx.execute_later(
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
