//! The orders table and its one writer. [`apply`] is the only code that changes an order's
//! state: it checks the state it expects (rows changed = 1; on SQLite at once, else
//! [`ApplyError::Conflict`]; on PostgreSQL by the database, whose error aborts the transaction),
//! writes the event row, and applies the transition's follow-up work (ledger transfers, queued
//! reversals and advices, webhooks) in the caller's transaction, so all of it commits or none.

use crate::domain::lifecycle::{self, Context, Settlement, Transition, Work};
use crate::domain::money::Money;
use crate::domain::order::{Order, OrderState, Origin};
use crate::domain::response::ResponseCode;
use crate::store::journal::{Dialect, JournalError, Later, Row, Store, Tx, Value, new_id, now_ms};
use crate::store::ledger::{self, TransferOutcome};

/// An order's own columns, in the order [`order_from_own_row`] reads them (for `RETURNING`), as
/// a literal for `concat!`.
macro_rules! order_own_columns {
    () => {
        "order_id, origin, mid, tid, operator, acquirer, txn_type, batch, voucher, \
         amount_minor, currency, reference, payload, state, response_code, rrn, auth_code, payer_pan_masked, \
         created_at_ms, expires_at_ms, updated_at_ms"
    };
}

/// The same columns of `orders o`, then its merchant's name and city (`JOIN merchants m`), as
/// [`order_from_row`] reads them.
pub(crate) fn order_columns() -> &'static str {
    static COLUMNS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let own: Vec<String> = order_own_columns!()
            .split(',')
            .map(|column| format!("o.{}", column.trim()))
            .collect();
        format!("{}, m.name, m.city", own.join(", "))
    });
    &COLUMNS
}

/// An order from a row of [`order_columns`].
pub(crate) fn order_from_row(row: &Row) -> Result<Order, JournalError> {
    order_from_own_row(row, row.text(21)?, row.text(22)?)
}

/// An order from a row of its own columns (`RETURNING` of an insert or update) and its
/// merchant's name and city, which never change with the order.
pub(crate) fn order_from_own_row(
    row: &Row,
    merchant_name: String,
    merchant_city: String,
) -> Result<Order, JournalError> {
    Ok(Order {
        order_id: row.text(0)?,
        origin: row.text(1)?,
        mid: row.text(2)?,
        merchant_name,
        merchant_city,
        tid: row.opt_text(3)?,
        operator: row.opt_text(4)?,
        acquirer: row.opt_text(5)?,
        txn_type: row.text(6)?,
        batch: row.opt_text(7)?,
        voucher: row.opt_text(8)?,
        amount: Money {
            amount_minor: row.i64(9)?,
            currency: u16::try_from(row.i64(10)?)
                .map_err(|e| JournalError::Schema(e.to_string()))?,
        },
        reference: row.text(11)?,
        payload: row.text(12)?,
        state: {
            let stored = row.text(13)?;
            OrderState::parse(&stored).ok_or_else(|| {
                JournalError::Schema(format!("order state {stored:?} is not a lifecycle state"))
            })?
        },
        response_code: row.opt_text(14)?,
        rrn: row.opt_text(15)?,
        auth_code: row.opt_text(16)?,
        payer_pan_masked: row.opt_text(17)?,
        created_at_ms: row.i64(18)?,
        expires_at_ms: row.i64(19)?,
        updated_at_ms: row.i64(20)?,
    })
}

/// Reads an order outside any transaction (no lock, one round trip).
pub async fn read(
    store: &Store,
    condition: &str,
    params: &[Value],
) -> Result<Option<Order>, JournalError> {
    let sql = format!(
        "SELECT {} FROM orders o JOIN merchants m ON m.mid = o.mid WHERE {condition}",
        order_columns()
    );
    store
        .read_opt(&sql, params)
        .await?
        .as_ref()
        .map(order_from_row)
        .transpose()
}

/// Reads an order inside a transaction; `lock` locks its row on PostgreSQL (SQLite holds the
/// database's write lock already).
pub async fn load(
    tx: &mut Tx,
    condition: &str,
    params: &[Value],
    lock: bool,
) -> Result<Option<Order>, JournalError> {
    let later = load_later(tx, condition, params, lock).await?;
    loaded(tx, later).await
}

/// [`load`] sent ahead ([`Tx::query_later`]), to travel with the transaction's next statement;
/// [`loaded`] gives the order.
pub async fn load_later(
    tx: &mut Tx,
    condition: &str,
    params: &[Value],
    lock: bool,
) -> Result<Later, JournalError> {
    let sql = load_sql(tx, condition, lock);
    tx.query_later(&sql, params).await
}

/// The order read by [`load_later`].
pub async fn loaded(tx: &mut Tx, later: Later) -> Result<Option<Order>, JournalError> {
    tx.rows(later)
        .await?
        .first()
        .map(order_from_row)
        .transpose()
}

fn load_sql(tx: &Tx, condition: &str, lock: bool) -> String {
    let lock = match (lock, tx.dialect()) {
        (true, Dialect::Postgres) => " FOR UPDATE OF o",
        _ => "",
    };
    format!(
        "SELECT {} FROM orders o JOIN merchants m ON m.mid = o.mid WHERE {condition}{lock}",
        order_columns()
    )
}

/// Reads an order by id inside a transaction, without a lock; an error if it is gone.
pub async fn reload(tx: &mut Tx, order_id: &str) -> Result<Order, JournalError> {
    load(tx, "o.order_id = $1", &[order_id.into()], false)
        .await?
        .ok_or_else(|| JournalError::Internal(format!("order {order_id} vanished")))
}

/// The facts the lifecycle needs about a locked order: where its money was decided, what was
/// refunded, whether an advice may have reached the host.
pub async fn context(tx: &mut Tx, order: &Order) -> Result<Context, JournalError> {
    let mut context = Context {
        amount_minor: order.amount.amount_minor,
        refunded_minor: 0,
        settlement: None,
        advice_sent: false,
        expired: now_ms() >= order.expires_at_ms,
        notify_merchant: order.origin() == Some(Origin::Static),
    };
    // Settlement, refunds and advices exist only for a paid sale: the payment path (an order
    // still CREATED or AUTHORIZING) needs no query.
    if !matches!(order.state, OrderState::Paid | OrderState::Reversed) {
        return Ok(context);
    }
    let row = tx
        .query_opt(
            "SELECT o.payer_account_id, \
             (SELECT CAST(COALESCE(SUM(t.amount_minor), 0) AS BIGINT) FROM transfers t WHERE t.order_id = o.order_id AND t.kind = 'refund'), \
             (SELECT COUNT(*) FROM forwarded_sales f WHERE f.order_id = o.order_id AND f.state = 'APPROVED'), \
             (SELECT CAST(COALESCE(SUM(a.amount_minor), 0) AS BIGINT) FROM advices a JOIN forwarded_sales f ON f.forward_id = a.forward_id \
                WHERE f.order_id = o.order_id AND a.status IN ('QUEUED', 'SENDING', 'DONE')), \
             (SELECT COUNT(*) FROM advices a JOIN forwarded_sales f ON f.forward_id = a.forward_id \
                WHERE f.order_id = o.order_id AND (a.status IN ('SENDING', 'DONE', 'REFUSED', 'EXPIRED') OR a.attempts > 0)) \
             FROM orders o WHERE o.order_id = $1",
            &[order.order_id.as_str().into()],
        )
        .await?
        .ok_or_else(|| JournalError::Internal(format!("order {} vanished", order.order_id)))?;
    let local = row.opt_text(0)?.is_some();
    context.settlement = match (local, row.i64(2)? > 0) {
        (true, _) => Some(Settlement::Local),
        (false, true) => Some(Settlement::Upstream),
        (false, false) => None,
    };
    context.refunded_minor = if local { row.i64(1)? } else { row.i64(3)? };
    context.advice_sent = row.i64(4)? > 0;
    Ok(context)
}

/// A new order's columns, as its creation writes them (state CREATED).
#[derive(Debug, Clone, Copy)]
pub struct NewRow<'a> {
    /// The new order's identifier.
    pub order_id: &'a str,
    /// Who made its code.
    pub origin: Origin,
    /// Merchant.
    pub mid: &'a str,
    /// Terminal (a terminal's sale).
    pub tid: Option<&'a str>,
    /// Batch number.
    pub batch: Option<&'a str>,
    /// Voucher number.
    pub voucher: Option<&'a str>,
    /// Operator.
    pub operator: Option<&'a str>,
    /// Acquirer.
    pub acquirer: Option<&'a str>,
    /// Transaction type.
    pub txn_type: &'a str,
    /// Amount and currency.
    pub amount: Money,
    /// The code's one-time reference.
    pub reference: &'a str,
    /// The code as issued.
    pub payload: &'a str,
    /// Creation time (ms).
    pub now_ms: i64,
    /// Expiry time (ms).
    pub expires_at_ms: i64,
}

/// Writes a new order and its creation event as one durable step, and returns the order's own
/// columns as written; `None` when an order for the same terminal, batch and voucher exists
/// already (then nothing is written). On PostgreSQL one statement on its own (the event inserted
/// by a data-modifying `WITH`): one round trip, no `BEGIN` or `COMMIT`.
pub async fn insert_created(store: &Store, new: &NewRow<'_>) -> Result<Option<Row>, JournalError> {
    const INSERT: &str = concat!(
        "INSERT INTO orders (order_id, origin, mid, tid, operator, acquirer, txn_type, batch, voucher, amount_minor, \
         currency, reference, payload, state, created_at_ms, expires_at_ms, updated_at_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 'CREATED', $14, $15, $14) \
         ON CONFLICT DO NOTHING RETURNING ",
        order_own_columns!()
    );
    let mut params: Vec<Value> = vec![
        new.order_id.into(),
        new.origin.as_str().into(),
        new.mid.into(),
        new.tid.into(),
        new.operator.into(),
        new.acquirer.into(),
        new.txn_type.into(),
        new.batch.into(),
        new.voucher.into(),
        new.amount.amount_minor.into(),
        i64::from(new.amount.currency).into(),
        new.reference.into(),
        new.payload.into(),
        new.now_ms.into(),
        new.expires_at_ms.into(),
    ];
    match store.dialect() {
        Dialect::Postgres => {
            static CREATE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
                format!(
                    "WITH created AS ({INSERT}), event AS (\
                     INSERT INTO order_events (event_id, order_id, from_state, to_state, detail, at_ms) \
                     SELECT $16, order_id, NULL, 'CREATED', '{CREATED_DETAIL}', created_at_ms FROM created) \
                     SELECT * FROM created"
                )
            });
            params.push(new_id().into());
            let inserted = store.write_one(&CREATE, &params).await?.into_iter().next();
            if inserted.is_some() {
                crate::infra::metrics::record_order_state(OrderState::Created.as_str());
            }
            Ok(inserted)
        }
        Dialect::Sqlite => {
            // No data-modifying WITH in SQLite: the same two writes in one transaction.
            let mut tx = store.begin().await?;
            let inserted = tx.query_opt(INSERT, &params).await?;
            if inserted.is_some() {
                record_event(
                    &mut tx,
                    new.order_id,
                    None,
                    OrderState::Created,
                    CREATED_DETAIL,
                )
                .await?;
            }
            // record_event counts the new state once the transaction commits.
            tx.commit().await?;
            Ok(inserted)
        }
    }
}

/// The creation event's detail.
const CREATED_DETAIL: &str = "created";

/// What a transition to PAID records besides the state.
#[derive(Debug, Clone, Copy)]
pub struct Paid<'a> {
    /// Retrieval reference number.
    pub rrn: &'a str,
    /// Authorisation code.
    pub auth_code: Option<&'a str>,
    /// The payer's ledger account (local sales only).
    pub payer_account_id: Option<&'a str>,
    /// The payer's card number, masked.
    pub payer_pan_masked: &'a str,
}

/// One transition to apply, with what its work needs.
#[derive(Debug, Clone, Copy)]
pub struct Apply<'a> {
    /// The order (as read under its row lock).
    pub order: &'a Order,
    /// What the lifecycle decided.
    pub transition: &'a Transition,
    /// The facts it decided on.
    pub context: &'a Context,
    /// Receipt data, for a move to PAID.
    pub paid: Option<Paid<'a>>,
    /// The forwarded sale the event is about (host answers), if any.
    pub forward_id: Option<&'a str>,
    /// Extra words for the event row (an amount, a reason).
    pub note: Option<&'a str>,
    /// How long a queued advice is tried before an operator must look (ms).
    pub queue_ttl_ms: i64,
}

impl<'a> Apply<'a> {
    /// A transition with no receipt data, forwarded sale or note.
    pub fn new(order: &'a Order, transition: &'a Transition, context: &'a Context) -> Apply<'a> {
        Apply {
            order,
            transition,
            context,
            paid: None,
            forward_id: None,
            note: None,
            queue_ttl_ms: 0,
        }
    }
}

/// Why a transition was not applied. The caller's transaction must then be rolled back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// The order was no longer in the state the transition expects (a race the caller lost).
    #[error("order {order_id} is not {expected} any more")]
    Conflict {
        /// The order.
        order_id: String,
        /// The state the transition expected.
        expected: OrderState,
    },
    /// The work could not be done for a business reason (the merchant's balance does not cover a
    /// refund, ...): answer with this code.
    #[error("refused ({code}): {reason}")]
    Refused {
        /// What to answer.
        code: ResponseCode,
        /// Why.
        reason: String,
    },
    /// The journal failed.
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// Applies a transition in the caller's transaction: the state change against the expected
/// previous state, its event row, then its work, in order. Returns the order as it now stands
/// (the updated row on SQLite; on PostgreSQL, where the change travels with the next statement
/// or the commit, the locked read with the values written). Metrics and wake-ups run after the commit.
pub async fn apply(tx: &mut Tx, apply: Apply<'_>) -> Result<Order, ApplyError> {
    let Apply {
        order,
        transition,
        context,
        ..
    } = apply;
    lifecycle::check_invariants(transition, context);
    assert_eq!(
        order.state, transition.from,
        "a transition is applied to the state it was decided for"
    );
    let now = now_ms();
    let detail = match apply.note {
        Some(note) => format!("{}: {note}", transition.detail),
        None => transition.detail.to_owned(),
    };
    let event = Event {
        event_id: new_id(),
        order_id: &order.order_id,
        from: Some(transition.from),
        to: transition.to,
        detail: &detail,
        at_ms: now,
    };
    let updated = match tx.dialect() {
        Dialect::Postgres => move_later(tx, &apply, &event).await?,
        Dialect::Sqlite => {
            let updated = move_now(tx, &apply, now).await?;
            insert_event(tx, &event).await?;
            updated
        }
    };
    event_recorded(tx, &event);
    for work in &transition.work {
        do_work(tx, &apply, *work).await?;
    }
    Ok(updated)
}

/// The response code a transition records: a refund keeps the order's 00, any other move
/// records its own code.
fn recorded_code(apply: &Apply<'_>) -> ResponseCode {
    let transition = apply.transition;
    if apply.paid.is_none() && transition.from == transition.to && transition.to == OrderState::Paid
    {
        ResponseCode::Approved
    } else {
        transition.code
    }
}

/// The order's new column values for a transition: its state, its [`recorded_code`] and, for a
/// move to PAID, the receipt.
fn moved_columns(apply: &Apply<'_>, now: i64) -> Vec<Value> {
    let (order, transition) = (apply.order, apply.transition);
    let mut values = vec![
        order.order_id.as_str().into(),
        transition.from.as_str().into(),
        transition.to.as_str().into(),
        recorded_code(apply).as_str().into(),
        now.into(),
    ];
    if let Some(paid) = apply.paid {
        assert_eq!(
            transition.to,
            OrderState::Paid,
            "receipt data only for PAID"
        );
        values.extend([
            paid.rrn.into(),
            paid.auth_code.into(),
            paid.payer_account_id.into(),
            paid.payer_pan_masked.into(),
        ]);
    }
    values
}

/// The `SET` list of [`moved_columns`] (`$1` order, `$2` expected state).
fn moved_set(paid: bool) -> &'static str {
    if paid {
        "state = $3, response_code = $4, updated_at_ms = $5, rrn = $6, auth_code = $7, \
         payer_account_id = COALESCE($8, payer_account_id), payer_pan_masked = $9"
    } else {
        "state = $3, response_code = $4, updated_at_ms = $5"
    }
}

/// PostgreSQL: the state change and its event row, one statement, travel with the transaction's
/// next statement or its commit (no round trip of their own), and the order as it now stands is
/// made here from the row read under its lock and the values written. Its check is the
/// database's: a change of no row (the order not in the state expected) raises an error there,
/// which aborts the transaction, so nothing sent with it commits (migration 16).
async fn move_later(
    tx: &mut Tx,
    apply: &Apply<'_>,
    event: &Event<'_>,
) -> Result<Order, ApplyError> {
    let mut values = moved_columns(apply, event.at_ms);
    // The event row is written by the same statement, from the changed row: no change, no
    // event (and the check's error aborts the transaction anyway). Its states and time are the
    // change's own parameters ($2, $3, $5).
    assert!(
        event.from == Some(apply.transition.from) && event.to == apply.transition.to,
        "the event is the transition's"
    );
    let first = values.len() + 1;
    values.extend([event.event_id.as_str().into(), event.detail.into()]);
    let sql = format!(
        "WITH moved AS (UPDATE orders SET {} WHERE order_id = $1 AND state = $2 RETURNING order_id), \
         event AS (INSERT INTO order_events (event_id, order_id, from_state, to_state, detail, at_ms) \
         SELECT ${first}, order_id, $2, $3, ${}, $5 FROM moved) \
         SELECT posbridge_expect_moved((SELECT COUNT(*) FROM moved), $1, $2)",
        moved_set(apply.paid.is_some()),
        first + 1,
    );
    tx.execute_later(&sql, &values).await?;
    let mut updated = apply.order.clone();
    updated.state = apply.transition.to;
    updated.response_code = Some(recorded_code(apply).as_str().to_owned());
    updated.updated_at_ms = event.at_ms;
    if let Some(paid) = apply.paid {
        updated.rrn = Some(paid.rrn.to_owned());
        updated.auth_code = paid.auth_code.map(str::to_owned);
        updated.payer_pan_masked = Some(paid.payer_pan_masked.to_owned());
    }
    Ok(updated)
}

/// SQLite (statements run at once): the state change, and the order as it now stands from the
/// updated row itself; no row changed is a conflict.
async fn move_now(tx: &mut Tx, apply: &Apply<'_>, now: i64) -> Result<Order, ApplyError> {
    let order = apply.order;
    let sql = format!(
        "UPDATE orders SET {} WHERE order_id = $1 AND state = $2 RETURNING {}",
        moved_set(apply.paid.is_some()),
        order_own_columns!()
    );
    let updated = tx.query(&sql, &moved_columns(apply, now)).await?;
    let [row] = updated.as_slice() else {
        return Err(ApplyError::Conflict {
            order_id: order.order_id.clone(),
            expected: apply.transition.from,
        });
    };
    Ok(order_from_own_row(
        row,
        order.merchant_name.clone(),
        order.merchant_city.clone(),
    )?)
}

async fn do_work(tx: &mut Tx, apply: &Apply<'_>, work: Work) -> Result<(), ApplyError> {
    let order = apply.order;
    let order_id = order.order_id.as_str();
    match work {
        Work::ReverseLocal => {
            ledger::reverse(tx, order_id).await?;
        }
        Work::QueueHostReversal => {
            crate::store::host_queue::queue_reversal(
                tx,
                order_id,
                apply.forward_id,
                apply.transition.detail,
                apply.queue_ttl_ms,
            )
            .await?;
        }
        Work::CancelStandbyReversal => {
            if let Some(forward_id) = apply.forward_id {
                crate::store::host_queue::cancel_standby(tx, forward_id).await?;
            }
        }
        Work::CancelQueuedAdvices => {
            crate::store::host_queue::cancel_queued_advices(tx, order_id).await?;
        }
        Work::RefundLocal(amount_minor) => {
            let refund = Money {
                amount_minor,
                currency: order.amount.currency,
            };
            let (merchant, payer) = local_parties(tx, order).await?;
            match ledger::transfer(tx, order_id, &merchant, &payer, refund, "refund").await? {
                TransferOutcome::Done => {}
                TransferOutcome::InsufficientFunds | TransferOutcome::CurrencyMismatch => {
                    return Err(ApplyError::Refused {
                        code: ResponseCode::InsufficientFunds,
                        reason: "the merchant's balance does not cover the refund".into(),
                    });
                }
            }
        }
        Work::QueueAdvice(amount_minor) => {
            let refund = Money {
                amount_minor,
                currency: order.amount.currency,
            };
            crate::store::host_queue::queue_refund(tx, order_id, refund, apply.queue_ttl_ms)
                .await?;
        }
        Work::NotifyMerchant => crate::store::outbox::enqueue_payment(tx, order_id).await?,
    }
    Ok(())
}

/// The merchant's and the payer's ledger accounts of a local sale.
async fn local_parties(tx: &mut Tx, order: &Order) -> Result<(String, String), JournalError> {
    let row = tx
        .query_opt(
            "SELECT m.account_id, o.payer_account_id FROM orders o JOIN merchants m ON m.mid = o.mid WHERE o.order_id = $1",
            &[order.order_id.as_str().into()],
        )
        .await?
        .ok_or_else(|| JournalError::Internal(format!("order {} vanished", order.order_id)))?;
    let payer = row
        .opt_text(1)?
        .ok_or_else(|| JournalError::Internal(format!("order {} has no payer", order.order_id)))?;
    Ok((row.text(0)?, payer))
}

/// One row of `order_events`: the first one (creation) or a state change.
struct Event<'a> {
    event_id: String,
    order_id: &'a str,
    from: Option<OrderState>,
    to: OrderState,
    detail: &'a str,
    at_ms: i64,
}

/// An event's columns: event id, order id, from and to state, detail, time.
fn event_values(event: &Event<'_>) -> Vec<Value> {
    vec![
        event.event_id.as_str().into(),
        event.order_id.into(),
        event.from.map(OrderState::as_str).into(),
        event.to.as_str().into(),
        event.detail.into(),
        event.at_ms.into(),
    ]
}

/// Writes an event row by a statement of its own.
async fn insert_event(tx: &mut Tx, event: &Event<'_>) -> Result<(), JournalError> {
    tx.execute_later(
        "INSERT INTO order_events (event_id, order_id, from_state, to_state, detail, at_ms) VALUES ($1, $2, $3, $4, $5, $6)",
        &event_values(event),
    )
    .await
}

/// What follows an event row once its transaction commits: the change's announcement (a held
/// terminal request may wait on it, here or on another gateway; a creation wakes nobody, as
/// nobody waits on an order before it exists) and the count of orders reaching its state.
fn event_recorded(tx: &mut Tx, event: &Event<'_>) {
    if event.from.is_some() {
        tx.announce_order(event.order_id);
    }
    let to = event.to;
    tx.after_commit(move || crate::infra::metrics::record_order_state(to.as_str()));
}

/// Writes an order's event row: the first one (creation) and every state change.
pub async fn record_event(
    tx: &mut Tx,
    order_id: &str,
    from: Option<OrderState>,
    to: OrderState,
    detail: &str,
) -> Result<(), JournalError> {
    let event = Event {
        event_id: new_id(),
        order_id,
        from,
        to,
        detail,
        at_ms: now_ms(),
    };
    insert_event(tx, &event).await?;
    event_recorded(tx, &event);
    Ok(())
}
