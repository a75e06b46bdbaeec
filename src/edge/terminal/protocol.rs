//! What posbridge answers to each terminal message (cups-pos dialect); the wire layout of every
//! message is in docs/terminal-interface.md.
//!
//! | request | 60.1 / 60.3 | meaning | answer |
//! |---|---|---|---|
//! | 0800 | 60.3 = 003/004 | sign-on | 0810, fresh PIN + MAC keys in 62 |
//! | 0820 | 60.3 = 301 / 002 | echo / sign-off | 0830 |
//! | 0200 | 60.1 = 48 | (a) QR order request | 0210 at once, code in 62 tag 01 |
//! | 0200 | 60.1 = 49 | (a) result query (61 = original batch + voucher) | 0210 when final (held) |
//! | 0200 | 60.1 = 22 + 62 tag 01 | (b) sale with a terminal-made code | 0210 when final (held) |
//! | 0400 | 60.1 = 22 | reversal of voucher 11 in batch 60.2 | 0410 |
//! | 0500 | 60.3 = 201 | settlement, totals in 48 | 0510, 00 or 95 |
//!
//! Every 0200/0400/0500 carries a MAC (field 64, UnionPay ECB MAC under the terminal's MAC key
//! over MTI..field 63); a wrong one is answered A0 and nothing is recorded.

use crate::domain::money::Money;
use crate::registry;
use crate::service::Gateway;
use crate::service::orders::service::{NewOrder, OrderError, Voucher};
use crate::service::orders::{Order, OrderState, Origin, ReadAt, ResponseCode};
use crate::service::terminal_keys::KeyError;
use crate::store::terminal_requests::RequestKey;
use posbridge_codecs::framing::Tpdu;
use posbridge_codecs::{Message, MessageBuilder, Spec};
use posbridge_hsm::MacAlgorithm;
use std::time::Duration;
use tracing::Instrument;

/// 60.1 of a (a) QR order request.
pub const TYPE_QR_ORDER: &str = "48";
/// 60.1 of a (a) result query.
pub const TYPE_QR_QUERY: &str = "49";
/// 60.1 of a sale (standard UnionPay code).
pub const TYPE_SALE: &str = "22";
/// 60.1 of a sale void (standard UnionPay code; 61 = original batch + voucher).
pub const TYPE_VOID: &str = "23";
/// 60.1 of a refund (standard UnionPay code, MTI 0220; 61 = original batch + voucher).
pub const TYPE_REFUND: &str = "25";
/// F39 of a result query answered before the order is final: "query again".
pub const PENDING: &str = "09";

/// What the connection must do after answering.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The answer to write (frame body: header + message).
    pub response: Option<Vec<u8>>,
    /// An order this request waits on (result query / held sale): cancel it if the terminal goes.
    pub hold: Option<Hold>,
    /// Close the connection (the frame did not decode: no answer can be addressed to it, and
    /// silence would leave the terminal waiting).
    pub close: bool,
}

/// A request held open until its order is final.
#[derive(Debug)]
pub struct Hold {
    /// The order as read when the request arrived.
    pub order: ReadAt,
    /// The request, kept to build the answer.
    pub request: Vec<u8>,
}

/// Handles one request frame (header + message); never panics on bad input.
pub async fn handle(gateway: &Gateway, spec: &Spec, frame: &[u8]) -> Outcome {
    let message = match spec.decode(frame) {
        Ok(message) => message,
        Err(error) => {
            tracing::warn!(%error, "undecodable terminal message: closing the connection");
            return Outcome {
                close: true,
                ..Outcome::default()
            };
        }
    };
    let tid = field_text(&message, 41).unwrap_or_default();
    // One span per transaction: what an operator greps for (never the PAN).
    let span = tracing::info_span!(
        "terminal",
        mti = message.mti(),
        tid = %tid,
        batch = %sub_text(&message, "60.2").unwrap_or_default(),
        voucher = %field_text(&message, 11).unwrap_or_default(),
    );
    let result = dispatch(gateway, &message).instrument(span).await;
    match result {
        Ok(outcome) => outcome,
        Err(code) => Outcome {
            response: respond(gateway, &message, code, |_| Ok(())).await,
            hold: None,
            close: false,
        },
    }
}

async fn dispatch(gateway: &Gateway, message: &Message<'_>) -> Result<Outcome, ResponseCode> {
    let tid = &field_text(message, 41).ok_or(ResponseCode::FormatError)?;
    let terminal = gateway
        .orders
        .registry()
        .terminal(gateway.orders.store(), tid)
        .await
        .map_err(|_| ResponseCode::SystemError)?
        .filter(|t| t.enabled && Some(t.mid.as_str()) == field_text(message, 42).as_deref())
        .ok_or(ResponseCode::InvalidMerchant)?;
    let kind = message
        .get("60.1")
        .ok()
        .flatten()
        .map(|v| String::from_utf8_lossy(&v).into_owned());
    let network = message
        .get("60.3")
        .ok()
        .flatten()
        .map(|v| String::from_utf8_lossy(&v).into_owned());
    match message.mti() {
        "0800" => sign_on(gateway, message, &terminal).await.map(reply),
        "0820" => Ok(reply(
            respond(gateway, message, ResponseCode::Approved, |_| Ok(())).await,
        )),
        "0200" | "0220" | "0400" | "0500" => {
            verify_mac(gateway, message, tid).await?;
            match (message.mti(), kind.as_deref(), network.as_deref()) {
                ("0200", Some(TYPE_QR_ORDER), _) => {
                    order_request(gateway, message, &terminal).await.map(reply)
                }
                ("0200", Some(TYPE_QR_QUERY), _) => result_query(gateway, message).await,
                ("0200", Some(TYPE_SALE), _) => held_sale(gateway, message, &terminal).await,
                ("0200", Some(TYPE_VOID), _) => void(gateway, message).await.map(reply),
                ("0220", Some(TYPE_REFUND), _) => refund(gateway, message).await.map(reply),
                ("0400", _, _) => reversal(gateway, message).await.map(reply),
                ("0500", _, _) => settlement(gateway, message).await.map(reply),
                _ => Err(ResponseCode::InvalidTransaction),
            }
        }
        _ => Err(ResponseCode::InvalidTransaction),
    }
}

fn reply(response: Option<Vec<u8>>) -> Outcome {
    Outcome {
        response,
        hold: None,
        close: false,
    }
}

async fn verify_mac(
    gateway: &Gateway,
    message: &Message<'_>,
    tid: &str,
) -> Result<(), ResponseCode> {
    let (Some(covered), Some(mac)) = (message.mac_input(), message.raw(64)) else {
        return Err(ResponseCode::MacError);
    };
    let verified = gateway
        .orders
        .keyring()
        .verify(tid, MacAlgorithm::CupsEcb, covered.to_vec(), mac.to_vec())
        .await;
    match verified {
        Ok(()) => Ok(()),
        Err(KeyError::Refused) => {
            tracing::warn!("terminal MAC refused");
            Err(ResponseCode::MacError)
        }
        Err(error) => {
            tracing::error!(%error, "terminal MAC not checked");
            Err(ResponseCode::SystemError)
        }
    }
}

async fn sign_on(
    gateway: &Gateway,
    message: &Message<'_>,
    terminal: &registry::Terminal,
) -> Result<Option<Vec<u8>>, ResponseCode> {
    // A sign-on replaces the terminal's working keys: at most one per interval, whoever asks
    // (TID and MID are printed in the terminal's own QR codes).
    let interval_ms = i64::try_from(
        gateway
            .config
            .terminal
            .sign_on_interval_secs
            .saturating_mul(1000),
    )
    .unwrap_or(i64::MAX);
    match registry::claim_sign_on(gateway.orders.store(), &terminal.tid, interval_ms).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(tid = %terminal.tid, "sign-on refused: the previous one is too recent");
            return Err(ResponseCode::TooFrequent);
        }
        Err(_) => return Err(ResponseCode::SystemError),
    }
    // The new keys go into the slot the terminal does not use: its keys in use stay valid
    // until it MACs a request under the new ones, so a sign-on by someone else cannot lock it
    // out.
    let (pin_key, mac_key) = match gateway.orders.keyring().issue(terminal).await {
        Ok(keys) => keys,
        Err(error) => {
            tracing::error!(%error, "sign-on: no working keys issued");
            return Err(ResponseCode::SystemError);
        }
    };
    // Field 62 as UnionPay terminals expect: PIN key (16) + KCV (4), MAC key (8 + 8 zeros) + KCV (4).
    let mut keys = Vec::with_capacity(40);
    keys.extend_from_slice(&pin_key.cryptogram);
    keys.extend_from_slice(pin_key.kcv.get(..4).unwrap_or(&pin_key.kcv));
    keys.extend_from_slice(&mac_key.cryptogram);
    keys.extend_from_slice(&[0; 8]);
    keys.extend_from_slice(mac_key.kcv.get(..4).unwrap_or(&mac_key.kcv));
    Ok(respond(gateway, message, ResponseCode::Approved, |b| {
        b.set(62, keys.clone()).map(|_| ())
    })
    .await)
}

async fn order_request(
    gateway: &Gateway,
    message: &Message<'_>,
    terminal: &registry::Terminal,
) -> Result<Option<Vec<u8>>, ResponseCode> {
    let new = new_order(gateway, message, terminal, Origin::GatewayCode, None)?;
    match gateway.orders.create(new).await {
        Ok(order) => {
            let payload = order.payload.as_bytes();
            Ok(respond(gateway, message, ResponseCode::Approved, |b| {
                b.set_sub("62.01", payload).map(|_| ())
            })
            .await)
        }
        Err(error) => Err(refusal(error)),
    }
}

fn refusal(error: OrderError) -> ResponseCode {
    if !matches!(error, OrderError::Refused { .. }) {
        tracing::error!(%error, "order request failed");
    }
    error.response_code()
}

fn new_order(
    gateway: &Gateway,
    message: &Message<'_>,
    terminal: &registry::Terminal,
    origin: Origin,
    payload: Option<String>,
) -> Result<NewOrder, ResponseCode> {
    let amount = message
        .field(4)
        .and_then(|f| f.as_u64())
        .ok_or(ResponseCode::InvalidAmount)?;
    let currency = field_text(message, 49)
        .as_deref()
        .and_then(|c| c.parse().ok())
        .unwrap_or(156);
    let batch = sub_text(message, "60.2").ok_or(ResponseCode::FormatError)?;
    Ok(NewOrder {
        origin,
        mid: terminal.mid.clone(),
        tid: Some(terminal.tid.clone()),
        operator: Some(
            field_text(message, 63)
                .as_deref()
                .filter(|s| !s.is_empty())
                .unwrap_or("01")
                .to_owned(),
        ),
        acquirer: Some(terminal.acquirer.clone()),
        txn_type: TYPE_SALE.to_owned(),
        batch: Some(batch),
        voucher: Some(
            field_text(message, 11)
                .as_deref()
                .ok_or(ResponseCode::FormatError)?
                .to_owned(),
        ),
        amount: Money {
            amount_minor: i64::try_from(amount).map_err(|_| ResponseCode::InvalidAmount)?,
            currency,
        },
        ttl: Duration::from_secs(gateway.config.gateway.order_ttl_secs),
        terminal_payload: payload,
    })
}

/// A field's value as text (digits of BCD fields, characters of text fields).
pub fn field_text(message: &Message<'_>, number: u16) -> Option<String> {
    message
        .field(number)
        .map(|field| String::from_utf8_lossy(&field.value()).into_owned())
}

fn sub_text(message: &Message<'_>, path: &str) -> Option<String> {
    message
        .get(path)
        .ok()
        .flatten()
        .map(|v| String::from_utf8_lossy(&v).into_owned())
}

async fn result_query(gateway: &Gateway, message: &Message<'_>) -> Result<Outcome, ResponseCode> {
    let original = field_text(message, 61).ok_or(ResponseCode::FormatError)?;
    let (batch, voucher) = (
        original.get(..6).unwrap_or(""),
        original.get(6..12).unwrap_or(""),
    );
    let tid = &field_text(message, 41).unwrap_or_default();
    let sequence = gateway.orders.read_sequence();
    let order = gateway
        .orders
        .order_by_voucher(tid, batch, voucher)
        .await
        .map_err(|_| ResponseCode::SystemError)?
        .ok_or(ResponseCode::NotFound)?;
    Ok(Outcome {
        response: None,
        hold: Some(Hold {
            order: ReadAt { order, sequence },
            request: message.bytes().to_vec(),
        }),
        close: false,
    })
}

async fn held_sale(
    gateway: &Gateway,
    message: &Message<'_>,
    terminal: &registry::Terminal,
) -> Result<Outcome, ResponseCode> {
    let payload = sub_text(message, "62.01").ok_or(ResponseCode::FormatError)?;
    let new = new_order(
        gateway,
        message,
        terminal,
        Origin::TerminalCode,
        Some(payload),
    )?;
    let sequence = gateway.orders.read_sequence();
    let order = gateway.orders.create(new).await.map_err(refusal)?;
    Ok(Outcome {
        response: None,
        hold: Some(Hold {
            order: ReadAt { order, sequence },
            request: message.bytes().to_vec(),
        }),
        close: false,
    })
}

/// Answers a held request with the order as it stands (final, or 09 when still open).
pub async fn answer_hold(
    gateway: &Gateway,
    spec: &Spec,
    request: &[u8],
    order: Option<&Order>,
) -> Option<Vec<u8>> {
    let message = spec.decode(request).ok()?;
    let Some(order) = order else {
        return respond(gateway, &message, ResponseCode::NotFound, |_| Ok(())).await;
    };
    // The result of a held sale: its span carries what an operator looks up (never the PAN).
    let span = tracing::info_span!(
        "terminal",
        mti = message.mti(),
        tid = order.tid.as_deref().unwrap_or_default(),
        batch = order.batch.as_deref().unwrap_or_default(),
        voucher = order.voucher.as_deref().unwrap_or_default(),
        rrn = order.rrn.as_deref().unwrap_or_default(),
    );
    answer_order(gateway, &message, order)
        .instrument(span)
        .await
}

async fn answer_order(gateway: &Gateway, message: &Message<'_>, order: &Order) -> Option<Vec<u8>> {
    let code = match order.state() {
        OrderState::Created | OrderState::Authorizing => ResponseCode::InProgress,
        OrderState::Paid => ResponseCode::Approved,
        OrderState::Expired => ResponseCode::Expired,
        OrderState::Cancelled | OrderState::Reversed => ResponseCode::NotPermitted,
        OrderState::Declined => ResponseCode::parse(order.response_code.as_deref().unwrap_or("05")),
    };
    let masked = order.payer_pan_masked.clone().unwrap_or_default();
    let amount = order.amount.iso8583_amount();
    let rrn = order.rrn.clone();
    let auth = order.auth_code.clone();
    respond(gateway, message, code, move |b| {
        b.set(4, amount.clone().into_bytes())?;
        if let Some(rrn) = &rrn {
            b.set(37, rrn.clone().into_bytes())?;
        }
        if let Some(auth) = &auth {
            b.set(38, auth.clone().into_bytes())?;
        }
        if !masked.is_empty() {
            b.set_sub("62.02", masked.as_bytes())?;
        }
        Ok(())
    })
    .await
}

async fn reversal(
    gateway: &Gateway,
    message: &Message<'_>,
) -> Result<Option<Vec<u8>>, ResponseCode> {
    let tid = &field_text(message, 41).unwrap_or_default();
    let batch = sub_text(message, "60.2").ok_or(ResponseCode::FormatError)?;
    let voucher = &field_text(message, 11).ok_or(ResponseCode::FormatError)?;
    // A repeated 0400 is harmless: reversing a reversed order changes nothing and answers 00.
    let original = Voucher::of(tid, &batch, voucher);
    match gateway
        .orders
        .reverse(&original, "terminal reversal (0400)")
        .await
    {
        Ok(_) => Ok(respond(gateway, message, ResponseCode::Approved, |_| Ok(())).await),
        // Nothing to reverse is still a success for the terminal: it must stop resending.
        Err(OrderError::Refused {
            code: ResponseCode::NotFound,
            ..
        }) => Ok(respond(gateway, message, ResponseCode::Approved, |_| Ok(())).await),
        Err(error) => Err(refusal(error)),
    }
}

/// The original sale named by field 61 (batch n6 + voucher n6).
fn original(message: &Message<'_>) -> Result<(String, String), ResponseCode> {
    let original = field_text(message, 61).ok_or(ResponseCode::FormatError)?;
    match (original.get(..6), original.get(6..12)) {
        (Some(batch), Some(voucher)) => Ok((batch.to_owned(), voucher.to_owned())),
        _ => Err(ResponseCode::FormatError),
    }
}

/// The sale a void or refund is about (41 + field 61), and the request's own identity (TID,
/// MTI, 60.2, 11) so that a repeat is answered with the first answer and never applied twice.
fn original_voucher(message: &Message<'_>) -> Result<Voucher, ResponseCode> {
    let tid = field_text(message, 41).unwrap_or_default();
    let (batch, voucher) = original(message)?;
    let request = RequestKey {
        tid: tid.clone(),
        mti: message.mti().to_owned(),
        batch: sub_text(message, "60.2").ok_or(ResponseCode::FormatError)?,
        stan: field_text(message, 11).ok_or(ResponseCode::FormatError)?,
    };
    Ok(Voucher {
        tid,
        batch,
        voucher,
        request: Some(request),
    })
}

async fn void(gateway: &Gateway, message: &Message<'_>) -> Result<Option<Vec<u8>>, ResponseCode> {
    let voucher = original_voucher(message)?;
    gateway
        .orders
        .void(&voucher, "terminal void")
        .await
        .map_err(refusal)?;
    Ok(respond(gateway, message, ResponseCode::Approved, |_| Ok(())).await)
}

async fn refund(gateway: &Gateway, message: &Message<'_>) -> Result<Option<Vec<u8>>, ResponseCode> {
    let voucher = original_voucher(message)?;
    let amount = message
        .field(4)
        .and_then(|f| f.as_u64())
        .ok_or(ResponseCode::InvalidAmount)?;
    let currency = field_text(message, 49)
        .and_then(|c| c.parse().ok())
        .unwrap_or(156);
    let amount = Money {
        amount_minor: i64::try_from(amount).map_err(|_| ResponseCode::InvalidAmount)?,
        currency,
    };
    gateway
        .orders
        .refund(&voucher, amount)
        .await
        .map_err(refusal)?;
    Ok(respond(gateway, message, ResponseCode::Approved, |_| Ok(())).await)
}

async fn settlement(
    gateway: &Gateway,
    message: &Message<'_>,
) -> Result<Option<Vec<u8>>, ResponseCode> {
    let tid = &field_text(message, 41).unwrap_or_default();
    let batch = sub_text(message, "60.2").ok_or(ResponseCode::FormatError)?;
    let totals = field_text(message, 48).ok_or(ResponseCode::FormatError)?;
    // Field 48: debit amount n12, debit count n3, credit amount n12, credit count n3, flag.
    let number = |range: std::ops::Range<usize>| -> Result<i64, ResponseCode> {
        totals
            .get(range)
            .and_then(|s| s.parse().ok())
            .ok_or(ResponseCode::FormatError)
    };
    let terminal = crate::service::orders::service::BatchTotals {
        debit_count: number(12..15)?,
        debit_minor: number(0..12)?,
        credit_count: number(27..30)?,
        credit_minor: number(15..27)?,
    };
    let journal = gateway
        .orders
        .batch_totals(tid, &batch)
        .await
        .map_err(|_| ResponseCode::SystemError)?;
    let code = if terminal == journal {
        ResponseCode::Approved
    } else {
        ResponseCode::ReconcileError
    };
    tracing::info!(?terminal, ?journal, code = code.as_str(), "settlement");
    Ok(respond(gateway, message, code, |_| Ok(())).await)
}

/// Builds the response to `request`: response MTI, TPDU swapped, echoed key fields, F39, the
/// caller's fields, and the MAC when the terminal has a MAC key.
async fn respond(
    gateway: &Gateway,
    request: &Message<'_>,
    code: ResponseCode,
    extra: impl FnOnce(&mut MessageBuilder<'_>) -> Result<(), posbridge_codecs::EncodeError>,
) -> Option<Vec<u8>> {
    crate::infra::metrics::record_message(request.mti(), code.as_str());
    let spec = request.spec();
    let mti = response_mti(request.mti())?;
    let mut header = request.header().to_vec();
    if header.len() >= Tpdu::LEN {
        let _ = Tpdu::reply_in_place(&mut header);
    }
    let mut builder = spec.builder(&mti).ok()?;
    builder.set_header(header).ok()?;
    for number in [3u16, 11, 25, 41, 42, 49, 60] {
        if let Some(raw) = request.field(number) {
            builder.set(number, raw.value().into_owned()).ok()?;
        }
    }
    let now = chrono_now();
    builder.set(12, now.0.into_bytes()).ok()?;
    builder.set(13, now.1.into_bytes()).ok()?;
    builder.set(39, code.as_str().as_bytes().to_vec()).ok()?;
    extra(&mut builder).ok()?;
    let tid = request.str(41).unwrap_or("").to_owned();
    // Answers are MACed whenever the terminal has a MAC key, an A0 included (the terminal can
    // then trust the refusal); an unknown terminal (03) has none.
    let wants_mac = matches!(request.mti(), "0200" | "0220" | "0400" | "0500")
        && code != ResponseCode::InvalidMerchant;
    if wants_mac {
        builder.set(64, vec![0; 8]).ok()?;
    }
    let mut out = Vec::with_capacity(256);
    let encoded = builder.encode_into(&mut out).ok()?;
    if let (true, Some(span)) = (wants_mac, encoded.mac) {
        let covered = out.get(span.covered.clone())?.to_vec();
        match gateway
            .orders
            .security()
            .generate_mac(
                gateway.orders.keyring().mac_key(&tid).await,
                MacAlgorithm::CupsEcb,
                covered,
            )
            .await
        {
            Ok(mac) => posbridge_codecs::patch_mac(spec, &mut out, &span, &mac).ok()?,
            Err(error) => {
                tracing::warn!(%error, "response sent without MAC");
                let mut builder = builder;
                builder.remove(64);
                out.clear();
                builder.encode_into(&mut out).ok()?;
            }
        }
    }
    Some(out)
}

fn response_mti(mti: &str) -> Option<String> {
    let mut bytes = mti.as_bytes().to_vec();
    let class = bytes.get_mut(2)?;
    *class = match *class {
        b'0' => b'1',
        b'2' => b'3',
        _ => return None,
    };
    String::from_utf8(bytes).ok()
}

/// Local time fields 12 (hhmmss) and 13 (MMDD), UTC.
fn chrono_now() -> (String, String) {
    let secs = crate::infra::clock::now_ms() / 1000;
    match posbridge_codecs::calendar::Civil::from_unix_seconds(secs) {
        Some(c) => (c.hhmmss(), c.mmdd()),
        None => ("000000".to_owned(), "0101".to_owned()),
    }
}
