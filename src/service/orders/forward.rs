//! The five-role deployment: a paid QR order becomes a standard ISO 8583 sale (0200) to the
//! acquirer / UnionPay / issuer host its card's account range routes to, with the PIN block
//! re-encrypted for the host's zone by the security module.
//!
//! The money rule: a request that may have reached the host is never sent again. Before the sale
//! leaves, its reversal is written to the journal (status STANDBY) in the same transaction that
//! moves the order to AUTHORIZING. When the answer is clean (approved or declined) the reversal
//! is cancelled in the transaction that records the answer; when it is not (timeout, a MAC that
//! fails, a lost connection, a crash of posbridge), the reversal is QUEUED and the reversal
//! worker sends it (0400, repeats 0401; or 0420/0421 as advices) with back-off until the host
//! acknowledges it or it expires. Several posbridge processes may share the journal: a queued
//! reversal is claimed by one of them for a lease (the one queue engine, `store::queue`). A late
//! approval can never turn the order PAID: the answer is recorded only while the reversal is
//! still STANDBY.
//!
//! The host matches reversals and advices by TID + original STAN and by the original data
//! elements in field 90. They carry field 2 only for a host configured `pan_in_reversals`: the
//! card number is then sealed under the data key (AES-GCM in the security module, bound to the
//! forwarded sale's id) before the sale is armed, opened only to send, and destroyed when it can
//! no longer be needed ([`destroy_pans_no_longer_needed`]). The journal never holds a full PAN
//! in clear.

use super::service::{Decided, Details, Order, OrderError, decide};
use crate::domain::lifecycle;
use crate::domain::order::OrderState;
use crate::infra::config::{Config, RouteConfig, UpstreamConfig};
use crate::infra::security::{Security, SecurityError};
use crate::store::journal::{JournalError, Store, Tx, new_id, now_ms};
use crate::store::queue::{self, Claim, Queue};
use crate::store::{counters, host_queue, orders};
use crate::upstream::{HostLink, IsoMessage, LinkError, Unmatched};
use posbridge_hsm::{Pan, PinBlockFormat};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use tokio::sync::mpsc;
use zeroize::Zeroizing;

/// Reversal statuses in the journal.
pub mod status {
    /// Armed before the sale is sent; cancelled by a clean answer.
    pub const STANDBY: &str = "STANDBY";
    /// To be sent (ambiguous outcome, or a reversal asked for after approval).
    pub const QUEUED: &str = "QUEUED";
    /// Acknowledged by the host.
    pub const DONE: &str = "DONE";
    /// Not needed (the sale's answer was clean, or it was never sent).
    pub const CANCELLED: &str = "CANCELLED";
    /// Given up after `upstream.reversal_expiry_secs`: needs an operator.
    pub const EXPIRED: &str = "EXPIRED";
}

/// The upstream hosts and the account-range table.
pub struct Upstream {
    links: HashMap<String, HostLink>,
    routes: Vec<RouteConfig>,
    /// Settings of forwarded sales and reversals.
    pub config: UpstreamConfig,
    security: Security,
    /// `[keys] data`: seals the card numbers reversals and advices carry.
    data_key: String,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("hosts", &self.links.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// Starts a link per configured host; returns the receivers of their unmatched answers.
    pub fn start(
        config: &Config,
        security: &Security,
    ) -> anyhow::Result<(Upstream, Vec<mpsc::Receiver<Unmatched>>)> {
        let mut links = HashMap::new();
        let mut unmatched = Vec::new();
        for host in &config.hosts {
            let (link, rx) = HostLink::start(host.clone(), security.clone())
                .map_err(|e| anyhow::anyhow!("host {}: {e}", host.name))?;
            links.insert(host.name.clone(), link);
            unmatched.push(rx);
        }
        Ok((
            Upstream {
                links,
                routes: config.routes.clone(),
                config: config.upstream.clone(),
                security: security.clone(),
                data_key: config.keys.data.clone(),
            },
            unmatched,
        ))
    }

    /// The link of a host by name.
    pub fn link(&self, name: &str) -> Option<&HostLink> {
        self.links.get(name)
    }

    /// Every link, for readiness and metrics.
    pub fn links(&self) -> impl Iterator<Item = &HostLink> {
        self.links.values()
    }

    /// Where a card's payments go: `None` for the local ledger, else the host (its fallback when
    /// the primary has no signed-on connection).
    pub fn route(&self, pan: &str) -> Option<&HostLink> {
        let route = self
            .routes
            .iter()
            .filter(|route| pan.starts_with(&route.prefix))
            .max_by_key(|route| route.prefix.len())?;
        let primary = self.links.get(&route.target);
        let usable = |link: &&HostLink| link.state().signed_on > 0;
        match (
            primary,
            route
                .fallback
                .as_deref()
                .and_then(|name| self.links.get(name)),
        ) {
            (Some(primary), Some(fallback)) if !usable(&primary) && usable(&fallback) => {
                Some(fallback)
            }
            (Some(primary), _) => Some(primary),
            // Target "local" with a host fallback is not a thing: local is always up.
            (None, _) => None,
        }
    }

    /// Prepares the forwarded sale of a card routed to `link`, before the payment's transaction
    /// (the security module is called here, never under the transaction's row locks): its id,
    /// and the card number sealed for its reversals and advices when the host wants field 2.
    pub async fn prepare(&self, link: &HostLink, pan: &Pan) -> Result<Prepared, SecurityError> {
        let forward_id = new_id();
        let pan_sealed = if link.config().pan_in_reversals {
            let digits = Zeroizing::new(pan.expose_secret().as_bytes().to_vec());
            Some(
                self.security
                    .seal(&self.data_key, pan_context(&forward_id), digits)
                    .await?,
            )
        } else {
            None
        };
        Ok(Prepared {
            forward_id,
            pan_sealed,
        })
    }

    /// The card number of a forwarded sale, opened for one send.
    async fn open_pan(
        &self,
        forward_id: &str,
        sealed: Vec<u8>,
    ) -> Result<Zeroizing<Vec<u8>>, SecurityError> {
        self.security
            .open(&self.data_key, pan_context(forward_id), sealed)
            .await
    }

    /// Signs off and closes every link.
    pub async fn shutdown(&self) {
        for link in self.links.values() {
            link.shutdown().await;
        }
    }
}

/// What a forwarded sale needs from the security module, had before its transaction opens.
#[derive(Debug)]
pub struct Prepared {
    /// Journal id of the forwarded sale to arm.
    pub forward_id: String,
    /// The card number sealed under the data key, for a `pan_in_reversals` host.
    pub pan_sealed: Option<Vec<u8>>,
}

/// What a sealed card number is bound to: its forwarded sale.
fn pan_context(forward_id: &str) -> String {
    format!("pan:{forward_id}")
}

/// A forwarded sale armed in the journal, ready to send.
#[derive(Debug)]
pub struct Armed {
    /// The order, as it was when armed.
    pub order: Order,
    /// Journal id of the forwarded sale.
    pub forward_id: String,
    /// Host name.
    pub host: String,
    /// The 0200 without PIN data (added just before sending).
    pub message: IsoMessage,
    /// Armed time plus `sale_timeout_ms`: the sale is not written to the host after this, so
    /// standby recovery can measure from the arming.
    pub deadline: tokio::time::Instant,
}

fn text(value: &str) -> Vec<u8> {
    value.as_bytes().to_vec()
}

/// Field 43: name (25) + city (13) + country (2), space padded.
fn name_location(order: &Order, country: &str) -> String {
    let name: String = order.merchant_name.chars().take(25).collect();
    let city: String = order.merchant_city.chars().take(13).collect();
    format!("{name:<25}{city:<13}{country:<2}")
}

/// Writes the forwarded sale and its standby reversal and moves the order to AUTHORIZING, in
/// the caller's transaction (which also holds the order's row lock).
#[allow(clippy::too_many_arguments)]
pub async fn arm(
    tx: &mut Tx,
    upstream: &Upstream,
    link: &HostLink,
    prepared: Prepared,
    order: &Order,
    pan: &str,
    mcc: &str,
    country: &str,
) -> Result<Armed, JournalError> {
    let config = &upstream.config;
    let stan = counters::next_stan(tx).await?;
    let transmitted = crate::upstream::link::transmission_date_time(std::time::SystemTime::now());
    // The journal's RRN (never repeated among the gateways sharing it); a host that assigns its
    // own answers with it in F37, and that one is the order's.
    let rrn = counters::next_rrn(tx).await?;
    let tid = order.tid.clone().unwrap_or_else(|| "QRSTATIC".to_owned());
    let mut message = IsoMessage::new("0200");
    message
        .set(2, text(pan))
        .set(3, text("000000"))
        .set(4, text(&order.amount.iso8583_amount()))
        .set(7, text(&transmitted))
        .set(11, text(&stan))
        .set(12, text(&transmitted[4..10]))
        .set(13, text(&transmitted[0..4]))
        .set(18, text(mcc))
        .set(22, text(&config.entry_mode))
        .set(25, text(&config.condition_code))
        .set(32, text(&config.acquirer_id))
        .set(37, text(&rrn))
        .set(41, text(&tid))
        .set(42, text(&format!("{:<15}", order.mid)))
        .set(43, text(&name_location(order, country)))
        .set(49, text(&order.amount.iso8583_currency()));
    if let Some(forwarding) = &config.forwarding_id {
        message.set(33, text(forwarding));
    }
    // The reversal has a STAN of its own (ISO 8583: field 11 identifies this message; field 90
    // names the original), kept for its repeats.
    let reversal_stan = counters::next_stan(tx).await?;
    let reversal = reversal_message(&message, config, &reversal_stan);
    let Prepared {
        forward_id,
        pan_sealed,
    } = prepared;
    let now = now_ms();
    tx.execute(
        "INSERT INTO forwarded_sales (forward_id, order_id, host, mti, stan, rrn, tid, transmitted, amount_minor, currency, \
         pan_truncated, state, created_at_ms, updated_at_ms, pan_sealed) \
         VALUES ($1, $2, $3, '0200', $4, $5, $6, $7, $8, $9, $10, 'SENDING', $11, $11, $12)",
        &[
            forward_id.as_str().into(),
            order.order_id.as_str().into(),
            link.name().into(),
            stan.as_str().into(),
            rrn.as_str().into(),
            tid.as_str().into(),
            transmitted.as_str().into(),
            order.amount.amount_minor.into(),
            i64::from(order.amount.currency).into(),
            posbridge_codecs::mask::mask_pan(pan).into(),
            now.into(),
            pan_sealed.into(),
        ],
    )
    .await?;
    let expires = now
        + i64::try_from(config.reversal_expiry_secs.saturating_mul(1000)).unwrap_or(i64::MAX / 2);
    tx.execute(
        "INSERT INTO reversals (reversal_id, forward_id, host, status, message, attempts, next_attempt_at_ms, expires_at_ms, \
         created_at_ms, updated_at_ms) VALUES ($1, $2, $3, 'STANDBY', $4, 0, $5, $6, $5, $5)",
        &[
            new_id().into(),
            forward_id.as_str().into(),
            link.name().into(),
            reversal.into(),
            now.into(),
            expires.into(),
        ],
    )
    .await?;
    Ok(Armed {
        order: order.clone(),
        forward_id,
        host: link.name().to_owned(),
        message,
        deadline: tokio::time::Instant::now() + Duration::from_millis(config.sale_timeout_ms),
    })
}

/// The reversal's fields as JSON: the sale's identity (TID, original STAN, RRN, amount) and
/// field 90, never the card number.
fn reversal_message(sale: &IsoMessage, config: &UpstreamConfig, stan: &str) -> String {
    let mut fields = BTreeMap::new();
    for number in [3u16, 4, 12, 13, 22, 25, 32, 33, 37, 41, 42, 49] {
        if let Some(value) = sale.text(number) {
            fields.insert(number.to_string(), value.to_owned());
        }
    }
    fields.insert("11".into(), stan.to_owned());
    fields.insert("39".into(), "98".into());
    let original = format!(
        "0200{}{}{:0>11}{:0>11}",
        sale.text(11).unwrap_or("000000"),
        sale.text(7).unwrap_or("0000000000"),
        config.acquirer_id,
        config.forwarding_id.as_deref().unwrap_or("0")
    );
    fields.insert("90".into(), original);
    serde_json::json!({ "fields": fields }).to_string()
}

/// The ISO 9564 format the host expects.
pub fn host_pin_format(config: &UpstreamConfig) -> PinBlockFormat {
    if config.pin_format == 3 {
        PinBlockFormat::Iso3
    } else {
        PinBlockFormat::Iso0
    }
}

/// What the host's answer (or its absence) means for the order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 0210 with 00 and a good MAC.
    Approved {
        /// F38.
        auth_code: Option<String>,
        /// F37 as answered.
        rrn: Option<String>,
    },
    /// 0210 with another code (clean: nothing to reverse).
    Declined(String),
    /// Never left posbridge: nothing to reverse, the order may be paid again.
    NotSent(String),
    /// May have reached the host: reverse.
    Ambiguous(String),
}

impl Outcome {
    /// Classifies the link's result.
    pub fn of(result: &Result<IsoMessage, LinkError>) -> Outcome {
        match result {
            Ok(answer) => match answer.response_code() {
                Some("00") => Outcome::Approved {
                    auth_code: answer.text(38).map(str::to_owned),
                    rrn: answer.text(37).map(str::to_owned),
                },
                Some(code) => Outcome::Declined(code.to_owned()),
                None => Outcome::Ambiguous("answer without response code".into()),
            },
            Err(error) if error.is_ambiguous() => Outcome::Ambiguous(error.to_string()),
            Err(error) => Outcome::NotSent(error.to_string()),
        }
    }
}

/// Records the host's answer (or its absence) on the forwarded sale's row. What it means for
/// the order, and for its standby reversal, the lifecycle decides.
pub async fn settle(tx: &mut Tx, armed: &Armed, outcome: &Outcome) -> Result<(), JournalError> {
    let (state, code, auth) = match outcome {
        Outcome::Approved { auth_code, .. } => ("APPROVED", "00".to_owned(), auth_code.clone()),
        Outcome::Declined(code) => ("DECLINED", code.clone(), None),
        Outcome::NotSent(_) => ("NOT_SENT", "91".to_owned(), None),
        Outcome::Ambiguous(_) => ("AMBIGUOUS", "98".to_owned(), None),
    };
    // A sale declined or never sent has nothing to reverse or refund: its card number goes.
    tx.execute(
        "UPDATE forwarded_sales SET state = $2, response_code = $3, auth_code = $4, updated_at_ms = $5, \
         pan_sealed = CASE WHEN $2 IN ('DECLINED', 'NOT_SENT') THEN NULL ELSE pan_sealed END WHERE forward_id = $1",
        &[armed.forward_id.as_str().into(), state.into(), code.into(), auth.into(), now_ms().into()],
    )
    .await?;
    Ok(())
}

/// Queues the standby reversals of sales that can no longer be answered (posbridge stopped or
/// crashed while they were in flight). A sale is never sent after its deadline (armed time plus
/// `sale_timeout_ms`: a request still queued then is dropped unsent), so a standby reversal
/// older than that plus a margin belongs to a sale whose answer will never be recorded. Each
/// order goes through the lifecycle's `Recovery` event.
pub async fn recover_standby(store: &Store, config: &UpstreamConfig) -> Result<u64, JournalError> {
    let cutoff = now_ms() - i64::try_from(config.sale_timeout_ms).unwrap_or(i64::MAX / 4) - 5_000;
    let mut tx = store.begin().await?;
    let sql = format!(
        "SELECT r.forward_id, f.order_id FROM reversals r JOIN forwarded_sales f ON f.forward_id = r.forward_id \
         WHERE r.status = 'STANDBY' AND r.created_at_ms < $1 ORDER BY r.created_at_ms LIMIT 100{}",
        tx.for_update_skip_locked()
    );
    let rows = tx.query(&sql, &[cutoff.into()]).await?;
    let mut recovered = 0;
    for row in &rows {
        let (forward_id, order_id) = (row.text(0)?, row.text(1)?);
        let Some(order) = orders::load(
            &mut tx,
            "o.order_id = $1",
            &[order_id.as_str().into()],
            true,
        )
        .await?
        else {
            continue;
        };
        let details = Details {
            forward_id: Some(&forward_id),
            ..Details::default()
        };
        match decide(&mut tx, &order, lifecycle::Event::Recovery, details).await {
            Ok(Decided::Moved(..)) => {}
            // The order moved on (a reversal decided by the terminal): the sale still may
            // have reached the host, so its reversal is queued all the same.
            Ok(_) | Err(OrderError::Refused { .. }) => {
                host_queue::queue_reversal(
                    &mut tx,
                    &order_id,
                    Some(&forward_id),
                    "no answer recorded",
                    0,
                )
                .await?;
            }
            Err(error) => return Err(internal(error)),
        }
        tx.execute(
            "UPDATE forwarded_sales SET state = 'AMBIGUOUS', updated_at_ms = $2 WHERE forward_id = $1 AND state = 'SENDING'",
            &[forward_id.as_str().into(), now_ms().into()],
        )
        .await?;
        recovered += 1;
    }
    tx.commit().await?;
    if recovered > 0 {
        tracing::warn!(
            count = recovered,
            "queued the reversals of sales left in flight by a stopped posbridge"
        );
    }
    Ok(recovered)
}

/// A store-and-forward queue of messages to hosts: reversals, and refund advices, over the one
/// queue engine ([`queue`]).
struct HostQueue {
    /// The engine's view of the table.
    rows: Queue,
    /// MTI of the first send and of the repeats.
    mtis: (&'static str, &'static str),
    /// Answers that end the message as delivered.
    done: &'static [&'static str],
    /// Answers that end it as refused by the host (an operator must look).
    refused: &'static [&'static str],
    /// Delivery is the order's `ReversalAcknowledged` event.
    acknowledges_order: bool,
}

/// What a claim of a host queue reads: host, message, expiry, the forwarded sale and its sealed
/// card number.
const HOST_COLUMNS: &str = "q.host, q.message, q.expires_at_ms, f.forward_id, f.pan_sealed";

fn reversal_queue(config: &UpstreamConfig) -> HostQueue {
    HostQueue {
        rows: Queue {
            table: "reversals",
            id: "reversal_id",
            columns: HOST_COLUMNS,
            // A reversal waits while its sale is still in flight (answer not recorded, deadline
            // not passed): sent earlier it could overtake the sale, be answered 25, and leave
            // the sale's approval unreversed.
            join: "JOIN forwarded_sales f ON f.forward_id = q.forward_id",
            filter: "AND (f.state <> 'SENDING' OR f.created_at_ms < $3)",
        },
        mtis: if config.reversal_as_advice {
            ("0420", "0421")
        } else {
            ("0400", "0401")
        },
        // 25: the host never saw the sale, nothing to reverse; 12/94: already reversed.
        done: &["00", "25", "12", "94"],
        refused: &[],
        acknowledges_order: true,
    }
}

const ADVICE_QUEUE: HostQueue = HostQueue {
    rows: Queue {
        table: "advices",
        id: "advice_id",
        columns: HOST_COLUMNS,
        join: "JOIN forwarded_sales f ON f.forward_id = q.forward_id",
        filter: "",
    },
    mtis: ("0220", "0221"),
    done: &["00"],
    refused: &["12", "13", "25", "30"],
    acknowledges_order: false,
};

/// Sends the due queued reversals once; returns how many the hosts acknowledged.
pub async fn deliver_reversals(store: &Store, upstream: &Upstream) -> Result<usize, JournalError> {
    deliver(store, upstream, &reversal_queue(&upstream.config)).await
}

/// Sends the due refund advices once; returns how many the hosts acknowledged.
pub async fn deliver_advices(store: &Store, upstream: &Upstream) -> Result<usize, JournalError> {
    deliver(store, upstream, &ADVICE_QUEUE).await
}

/// Sends up to ten due messages of a queue, one at a time: each is claimed for one exchange
/// and a margin (so another gateway takes it over only after this one must have given up),
/// sent with no transaction open, and its outcome recorded in a transaction of its own.
async fn deliver(
    store: &Store,
    upstream: &Upstream,
    queue: &HostQueue,
) -> Result<usize, JournalError> {
    let timeout = i64::try_from(upstream.config.sale_timeout_ms).unwrap_or(i64::MAX / 4);
    let lease_ms = timeout.saturating_add(LEASE_MARGIN_MS);
    let mut acknowledged = 0;
    for _ in 0..10 {
        let in_flight_cutoff = now_ms() - timeout;
        let extra = (!queue.rows.filter.is_empty()).then(|| in_flight_cutoff.into());
        let claims = queue::claim(store, &queue.rows, 1, lease_ms, extra).await?;
        let Some(claim) = claims.into_iter().next() else {
            break;
        };
        let sent = send(upstream, queue, &claim).await?;
        let mut tx = store.begin().await?;
        let done = record(&mut tx, queue, &upstream.config, &claim, sent).await?;
        tx.commit().await?;
        acknowledged += usize::from(done);
    }
    Ok(acknowledged)
}

/// How much longer than one exchange a claim of a host message is held.
const LEASE_MARGIN_MS: i64 = 10_000;

/// What became of one queued message.
enum Sent {
    /// Past its expiry: not sent.
    Expired,
    /// Its host is not configured here: not sent.
    NoHost,
    /// Sent; the host's answer or the link's error.
    Answer(Result<IsoMessage, LinkError>),
}

async fn send(upstream: &Upstream, queue: &HostQueue, claim: &Claim) -> Result<Sent, JournalError> {
    let row = &claim.row;
    if now_ms() >= row.i64(2)? {
        return Ok(Sent::Expired);
    }
    let Some(link) = upstream.link(&row.text(0)?) else {
        return Ok(Sent::NoHost);
    };
    let mti = if claim.attempt > 1 {
        queue.mtis.1
    } else {
        queue.mtis.0
    };
    let mut message = stored_request(&row.text(1)?, mti)?;
    if link.config().pan_in_reversals {
        match row.opt_bytes(4)? {
            Some(sealed) => {
                let pan = upstream
                    .open_pan(&row.text(3)?, sealed)
                    .await
                    .map_err(|e| JournalError::Internal(format!("sealed card number: {e}")))?;
                message.set(2, pan.to_vec());
            }
            None => tracing::warn!(
                id = claim.id,
                host = link.name(),
                "the sale's card number is no longer held (upstream.pan_retention_secs): sent without field 2"
            ),
        }
    }
    let deadline = Duration::from_millis(upstream.config.sale_timeout_ms);
    Ok(Sent::Answer(link.request(message, deadline).await))
}

/// Destroys the sealed card numbers no reversal or advice will need: a sale whose reversal was
/// acknowledged or expired, and an approved sale older than `upstream.pan_retention_secs` with
/// no reversal or advice still queued. Returns how many.
pub async fn destroy_pans_no_longer_needed(
    store: &Store,
    config: &UpstreamConfig,
) -> Result<u64, JournalError> {
    let retention_ms =
        i64::try_from(config.pan_retention_secs.saturating_mul(1000)).unwrap_or(i64::MAX / 2);
    let mut tx = store.begin().await?;
    let destroyed = tx
        .execute(
            "UPDATE forwarded_sales SET pan_sealed = NULL WHERE pan_sealed IS NOT NULL AND (\
             forward_id IN (SELECT forward_id FROM reversals WHERE status IN ('DONE', 'EXPIRED')) \
             OR (created_at_ms < $1 \
                 AND forward_id NOT IN (SELECT forward_id FROM reversals WHERE status = 'QUEUED') \
                 AND forward_id NOT IN (SELECT forward_id FROM advices WHERE status = 'QUEUED')))",
            &[(now_ms() - retention_ms).into()],
        )
        .await?;
    tx.commit().await?;
    Ok(destroyed)
}

/// Records what happened to one queued message; true when the host acknowledged it.
async fn record(
    tx: &mut Tx,
    queue: &HostQueue,
    config: &UpstreamConfig,
    claim: &Claim,
    sent: Sent,
) -> Result<bool, JournalError> {
    let (table, id, host) = (queue.rows.table, &claim.id, claim.row.text(0)?);
    let attempts = claim.attempt;
    let answer = match sent {
        Sent::Expired => {
            tracing::error!(
                table,
                id,
                host,
                attempts,
                "EXPIRED without acknowledgement: reconcile by hand"
            );
            let outcome = queue::Outcome::ended(status::EXPIRED, "expired".into(), false);
            if queue::finish(tx, &queue.rows, claim, &outcome).await? && queue.acknowledges_order {
                destroy_pan(tx, &claim.row.text(3)?).await?;
            }
            return Ok(false);
        }
        Sent::NoHost => {
            let outcome =
                queue::Outcome::retry(now_ms() + 60_000, "host not configured".into(), false);
            queue::finish(tx, &queue.rows, claim, &outcome).await?;
            return Ok(false);
        }
        Sent::Answer(answer) => answer,
    };
    let code = answer
        .as_ref()
        .ok()
        .and_then(|a| a.response_code().map(str::to_owned));
    match code.as_deref() {
        Some(code) if queue.done.contains(&code) => {
            let recorded = queue::finish(tx, &queue.rows, claim, &queue::Outcome::done()).await?;
            if recorded && queue.acknowledges_order {
                acknowledge_reversal(tx, id).await?;
                // The sale is reversed: nothing more will carry its card number.
                destroy_pan(tx, &claim.row.text(3)?).await?;
            }
            Ok(recorded)
        }
        Some(code) if queue.refused.contains(&code) => {
            tracing::error!(
                table,
                id,
                host,
                code,
                "refused by the host: reconcile by hand"
            );
            let outcome = queue::Outcome::ended("REFUSED", format!("answered {code}"), true);
            queue::finish(tx, &queue.rows, claim, &outcome).await?;
            Ok(false)
        }
        _ => {
            let error = match (&answer, code) {
                (_, Some(code)) => format!("answered {code}"),
                (Err(error), None) => error.to_string(),
                (Ok(_), None) => "answer without response code".to_owned(),
            };
            tracing::warn!(
                table,
                id,
                host,
                attempts,
                error,
                "not acknowledged; will retry"
            );
            let next = now_ms() + backoff_ms(config, attempts - 1);
            queue::finish(
                tx,
                &queue.rows,
                claim,
                &queue::Outcome::retry(next, error, true),
            )
            .await?;
            Ok(false)
        }
    }
}

async fn destroy_pan(tx: &mut Tx, forward_id: &str) -> Result<(), JournalError> {
    tx.execute(
        "UPDATE forwarded_sales SET pan_sealed = NULL WHERE forward_id = $1",
        &[forward_id.into()],
    )
    .await?;
    Ok(())
}

fn backoff_ms(config: &UpstreamConfig, attempts: i64) -> i64 {
    let doubled = config
        .reversal_retry_initial_ms
        .saturating_mul(1u64 << attempts.clamp(0, 20));
    i64::try_from(doubled.min(config.reversal_retry_max_ms)).unwrap_or(i64::MAX / 4)
}

/// The order's side of an acknowledged reversal, through the lifecycle (a PAID order becomes
/// REVERSED; any other state has recorded its reversal already).
async fn acknowledge_reversal(tx: &mut Tx, reversal_id: &str) -> Result<(), JournalError> {
    let Some(row) = tx
        .query_opt(
            "SELECT f.order_id FROM forwarded_sales f JOIN reversals r ON r.forward_id = f.forward_id WHERE r.reversal_id = $1",
            &[reversal_id.into()],
        )
        .await?
    else {
        return Ok(());
    };
    let order_id = row.text(0)?;
    let Some(order) =
        orders::load(tx, "o.order_id = $1", &[order_id.as_str().into()], true).await?
    else {
        return Ok(());
    };
    match decide(
        tx,
        &order,
        lifecycle::Event::ReversalAcknowledged,
        Details::default(),
    )
    .await
    {
        Ok(_) | Err(OrderError::Refused { .. }) => Ok(()),
        Err(error) => Err(internal(error)),
    }
}

/// Rebuilds a queued message from its stored fields.
fn stored_request(stored: &str, mti: &str) -> Result<IsoMessage, JournalError> {
    let json: serde_json::Value = serde_json::from_str(stored)
        .map_err(|e| JournalError::Schema(format!("queued message: {e}")))?;
    let mut message = IsoMessage::new(mti);
    if let Some(fields) = json["fields"].as_object() {
        for (number, value) in fields {
            let number: u16 = number
                .parse()
                .map_err(|_| JournalError::Schema(format!("queued field {number}")))?;
            message.set(number, text(value.as_str().unwrap_or_default()));
        }
    }
    Ok(message)
}

/// An approval that arrived after its request gave up: the order's reversal was decided (or
/// will be, by recovery), and the lifecycle queues it again if it was acknowledged already (a
/// reversal that overtook its sale is answered 25 and marked done).
async fn late_approval(tx: &mut Tx, host: &str, stan: &str) -> Result<(), JournalError> {
    let Some(row) = tx
        .query_opt(
            "SELECT forward_id, order_id FROM forwarded_sales WHERE host = $1 AND stan = $2 ORDER BY created_at_ms DESC LIMIT 1",
            &[host.into(), stan.into()],
        )
        .await?
    else {
        return Ok(());
    };
    let (forward_id, order_id) = (row.text(0)?, row.text(1)?);
    let Some(order) =
        orders::load(tx, "o.order_id = $1", &[order_id.as_str().into()], true).await?
    else {
        return Ok(());
    };
    // Only the re-queue of a decided reversal applies here: an order still AUTHORIZING gets its
    // answer through its own request or through recovery.
    if order.state == OrderState::Authorizing {
        return Ok(());
    }
    let details = Details {
        forward_id: Some(&forward_id),
        ..Details::default()
    };
    match decide(tx, &order, lifecycle::Event::HostApproved, details).await {
        Ok(Decided::Moved(..)) => {
            tracing::warn!(
                order_id,
                host,
                stan,
                "late approval: the sale's reversal is queued again"
            );
            Ok(())
        }
        Ok(_) | Err(OrderError::Refused { .. }) => Ok(()),
        Err(error) => Err(internal(error)),
    }
}

/// A failure of the order writer inside a worker's transaction, as a journal error.
fn internal(error: OrderError) -> JournalError {
    match error {
        OrderError::Journal(error) => error,
        other => JournalError::Internal(other.to_string()),
    }
}

/// Journals every answer a host link could not match (late, duplicate, unexpected).
pub async fn journal_unmatched(store: Store, mut unmatched: mpsc::Receiver<Unmatched>) {
    while let Some(frame) = unmatched.recv().await {
        let message = frame.message.as_ref();
        let field = |n| message.and_then(|m| m.text(n)).map(str::to_owned);
        tracing::warn!(host = %frame.host, reason = ?frame.reason, mti = ?message.map(|m| m.mti.clone()),
            stan = ?field(11), "unmatched answer from host");
        let insert = async {
            let mut tx = store.begin().await?;
            tx.execute(
                "INSERT INTO unmatched_responses (unmatched_id, host, mti, stan, tid, rrn, response_code, detail, received_at_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                &[
                    new_id().into(),
                    frame.host.as_str().into(),
                    message.map(|m| m.mti.clone()).unwrap_or_else(|| "????".into()).into(),
                    field(11).into(),
                    field(41).into(),
                    field(37).into(),
                    field(39).into(),
                    format!("{:?}", frame.reason).into(),
                    now_ms().into(),
                ],
            )
            .await?;
            if let (Some("0210"), Some("00"), Some(stan)) = (
                message.map(|m| m.mti.as_str()),
                field(39).as_deref(),
                field(11),
            ) {
                late_approval(&mut tx, &frame.host, &stan).await?;
            }
            tx.commit().await
        };
        if let Err(error) = insert.await {
            tracing::error!(%error, "could not journal an unmatched answer");
        }
    }
}
