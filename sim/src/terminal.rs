//! A terminal as posbridge sees one: the client side of the cups-pos messages, used by
//! `posbridge sim terminal`, the demo, the load generator and the tests. It holds its own
//! (software) security module with its terminal master key, as a real terminal's secure chip
//! does, and imports the working keys of each sign-on from field 62, checking their KCVs.

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use posbridge::domain::money::Money;
use posbridge::edge::terminal::protocol::{TYPE_QR_ORDER, TYPE_QR_QUERY, TYPE_SALE, field_text};
use posbridge::infra::framing::frame_codec;
use posbridge::service::terminal_keys::{mac_key_label, pin_key_label};
use posbridge_codecs::emv_qr::{self, Expiry};
use posbridge_codecs::framing::FrameCodec;
use posbridge_codecs::{MessageBuilder, Spec};
use posbridge_hsm::{KeyType, MacAlgorithm, Padding, SecurityModule};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

/// TPDU (to the centre 0003 from terminal 0000) + the UnionPay POS application header.
const REQUEST_HEADER: [u8; 11] = [
    0x60, 0x00, 0x03, 0x00, 0x00, 0x60, 0x31, 0x00, 0x31, 0x00, 0x00,
];

/// Who the terminal is.
#[derive(Debug, Clone)]
pub struct TerminalIdentity {
    /// Terminal ID (8 characters).
    pub tid: String,
    /// Merchant number (15 characters).
    pub mid: String,
    /// Label of the terminal master key in the terminal's own security module.
    pub master_key: String,
    /// Operator (cashier) number.
    pub operator: String,
    /// Batch number (6 digits).
    pub batch: String,
}

/// What the terminal prints (S108).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// MTI of the answer.
    pub mti: String,
    /// Field 39.
    pub response_code: String,
    /// Terminal ID.
    pub tid: String,
    /// Merchant number.
    pub mid: String,
    /// Batch.
    pub batch: String,
    /// Voucher.
    pub voucher: String,
    /// Amount in minor units (field 4).
    pub amount_minor: Option<u64>,
    /// Reference number (37).
    pub rrn: Option<String>,
    /// Authorisation code (38).
    pub auth_code: Option<String>,
    /// Masked card number (62 tag 02).
    pub masked_pan: Option<String>,
    /// Date MMDD and time hhmmss.
    pub date_time: String,
    /// The QR payload (62 tag 01), on an order request's answer.
    pub payload: Option<String>,
}

impl std::fmt::Display for Receipt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let amount = self.amount_minor.map(|a| {
            Money {
                amount_minor: i64::try_from(a).unwrap_or(0),
                currency: 156,
            }
            .to_string()
        });
        writeln!(f, "  MERCHANT NO.  {}", self.mid)?;
        writeln!(f, "  TERMINAL ID   {}", self.tid)?;
        writeln!(
            f,
            "  CARD NO.      {}",
            self.masked_pan.as_deref().unwrap_or("-")
        )?;
        writeln!(f, "  TXN TYPE      SALE (QR)")?;
        writeln!(
            f,
            "  BATCH NO.     {}   VOUCHER NO. {}",
            self.batch, self.voucher
        )?;
        writeln!(f, "  DATE/TIME     {}", self.date_time)?;
        writeln!(f, "  REF. NO.      {}", self.rrn.as_deref().unwrap_or("-"))?;
        writeln!(
            f,
            "  AUTH NO.      {}",
            self.auth_code.as_deref().unwrap_or("-")
        )?;
        writeln!(f, "  AMOUNT        {}", amount.as_deref().unwrap_or("-"))?;
        write!(f, "  RESULT        {}", describe(&self.response_code))
    }
}

/// A few words for a response code, for receipts and the CLI.
pub fn describe(code: &str) -> String {
    let words = match code {
        "00" => "APPROVED",
        "09" => "PENDING",
        "03" => "INVALID MERCHANT / TERMINAL",
        "12" => "INVALID TRANSACTION",
        "25" => "ORIGINAL NOT FOUND",
        "51" => "INSUFFICIENT FUNDS",
        "54" => "EXPIRED",
        "55" => "INCORRECT PIN",
        "57" => "NOT PERMITTED (CANCELLED)",
        "75" => "PIN TRIES EXCEEDED",
        "94" => "DUPLICATE",
        "95" => "RECONCILE ERROR",
        "96" => "SYSTEM ERROR",
        "A0" => "MAC ERROR",
        _ => "DECLINED",
    };
    format!("{code} {words}")
}

/// A connected terminal.
pub struct TerminalClient {
    framed: Framed<TcpStream, FrameCodec>,
    spec: Arc<Spec>,
    identity: TerminalIdentity,
    security: Arc<dyn SecurityModule>,
    stan: u32,
    /// The last request frame, for [`TerminalClient::resend_last`].
    last: Vec<u8>,
}

impl std::fmt::Debug for TerminalClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TerminalClient")
            .field("tid", &self.identity.tid)
            .finish_non_exhaustive()
    }
}

impl TerminalClient {
    /// Connects to a gateway's terminal port.
    pub async fn connect(
        addr: SocketAddr,
        spec: Arc<Spec>,
        identity: TerminalIdentity,
        security: Arc<dyn SecurityModule>,
        first_stan: u32,
    ) -> anyhow::Result<TerminalClient> {
        let socket = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        socket.set_nodelay(true)?;
        let framed = Framed::new(socket, frame_codec(&spec)?);
        Ok(TerminalClient {
            framed,
            spec,
            identity,
            security,
            stan: first_stan,
            last: Vec::new(),
        })
    }

    /// The same terminal (identity, keys, trace counter) on a new connection.
    pub async fn reconnect(
        self,
        addr: SocketAddr,
        spec: Arc<Spec>,
    ) -> anyhow::Result<TerminalClient> {
        TerminalClient::connect(addr, spec, self.identity, self.security, self.stan).await
    }

    /// The terminal's identity.
    pub fn identity(&self) -> &TerminalIdentity {
        &self.identity
    }

    /// The next voucher (trace) number.
    pub fn next_stan(&mut self) -> String {
        self.stan = if self.stan >= 999_999 {
            1
        } else {
            self.stan + 1
        };
        format!("{:06}", self.stan)
    }

    fn builder<'s>(
        &self,
        spec: &'s Spec,
        mti: &str,
        stan: &str,
    ) -> anyhow::Result<MessageBuilder<'s>> {
        let mut b = spec.builder(mti)?;
        b.set_header(REQUEST_HEADER.to_vec())?;
        b.set(11, stan.as_bytes().to_vec())?;
        b.set(41, self.identity.tid.as_bytes().to_vec())?;
        b.set(42, self.identity.mid.as_bytes().to_vec())?;
        Ok(b)
    }

    async fn exchange(&mut self, frame: Vec<u8>) -> anyhow::Result<Receipt> {
        self.framed.send(frame.as_slice()).await?;
        self.last = frame;
        self.read_answer().await
    }

    /// The last request sent, as written (empty before the first).
    pub fn last_frame(&self) -> &[u8] {
        &self.last
    }

    /// The trace counter (the last STAN used).
    pub fn stan(&self) -> u32 {
        self.stan
    }

    /// Sends `frame`, a request written before (on another connection, say), byte for byte.
    pub async fn resend(&mut self, frame: Vec<u8>) -> anyhow::Result<Receipt> {
        self.exchange(frame).await
    }

    /// Sends the last request again, byte for byte (a terminal that got no answer repeats its
    /// request with the same STAN).
    pub async fn resend_last(&mut self) -> anyhow::Result<Receipt> {
        let frame = std::mem::take(&mut self.last);
        self.exchange(frame).await
    }

    fn encode(&self, mut builder: MessageBuilder<'_>, mac: bool) -> anyhow::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(256);
        if mac {
            builder.set(64, vec![0; 8])?;
            let encoded = builder.encode_into(&mut out)?;
            let span = encoded.mac.context("dialect has no MAC field")?;
            let covered = out.get(span.covered.clone()).context("MAC range")?;
            let value = self.security.generate_mac(
                &mac_key_label(&self.identity.tid, 0),
                MacAlgorithm::CupsEcb,
                covered,
            )?;
            posbridge_codecs::patch_mac(&self.spec, &mut out, &span, &value)?;
        } else {
            builder.encode_into(&mut out)?;
        }
        Ok(out)
    }

    /// Reads the next answer; checks its MAC when it carries one.
    pub async fn read_answer(&mut self) -> anyhow::Result<Receipt> {
        let frame = self
            .framed
            .next()
            .await
            .context("the gateway closed the connection")??;
        let message = self.spec.decode(&frame)?;
        if let (Some(covered), Some(mac)) = (message.mac_input(), message.raw(64)) {
            self.security
                .verify_mac(
                    &mac_key_label(&self.identity.tid, 0),
                    MacAlgorithm::CupsEcb,
                    covered,
                    mac,
                )
                .context("the gateway's answer has a wrong MAC")?;
        }
        let text = |n| field_text(&message, n);
        let sub = |path: &str| {
            message
                .get(path)
                .ok()
                .flatten()
                .map(|v| String::from_utf8_lossy(&v).into_owned())
        };
        Ok(Receipt {
            mti: message.mti().to_owned(),
            response_code: text(39).unwrap_or_default(),
            tid: text(41).unwrap_or_default(),
            mid: text(42).unwrap_or_default(),
            batch: message
                .get("60.2")
                .ok()
                .flatten()
                .map(|v| String::from_utf8_lossy(&v).into_owned())
                .unwrap_or_default(),
            voucher: text(11).unwrap_or_default(),
            amount_minor: message.field(4).and_then(|f| f.as_u64()),
            rrn: text(37),
            auth_code: text(38),
            masked_pan: sub("62.02"),
            date_time: format!(
                "{} {}",
                text(13).unwrap_or_default(),
                text(12).unwrap_or_default()
            ),
            payload: if message.mti() == "0810" {
                None
            } else {
                sub("62.01")
            },
        })
    }

    /// Signs on (0800) and installs the working keys from field 62 in the terminal's module.
    pub async fn sign_on(&mut self) -> anyhow::Result<Receipt> {
        let stan = self.next_stan();
        let spec = Arc::clone(&self.spec);
        let mut b = self.builder(&spec, "0800", &stan)?;
        b.set(60, format!("00{}004", self.identity.batch).into_bytes())?;
        b.set(63, self.identity.operator.as_bytes().to_vec())?;
        let frame = self.encode(b, false)?;
        self.framed.send(frame.as_slice()).await?;
        let frame = self
            .framed
            .next()
            .await
            .context("the gateway closed the connection")??;
        let message = self.spec.decode(&frame)?;
        let code = field_text(&message, 39).as_deref().unwrap_or("").to_owned();
        if code != "00" {
            bail!("sign-on refused: {}", describe(&code));
        }
        let keys = message.raw(62).context("sign-on answer without keys")?;
        if keys.len() != 40 {
            bail!(
                "sign-on answer: field 62 is {} bytes, expected 40",
                keys.len()
            );
        }
        let tid = self.identity.tid.clone();
        let tmk = self.identity.master_key.clone();
        self.security
            .import_key(
                &tmk,
                &pin_key_label(&tid, 0),
                KeyType::Tdes2,
                &keys[..16],
                &keys[16..20],
            )
            .context("PIN key check value")?;
        self.security
            .import_key(
                &tmk,
                &mac_key_label(&tid, 0),
                KeyType::Des,
                &keys[20..28],
                &keys[36..40],
            )
            .context("MAC key check value")?;
        Ok(Receipt {
            mti: message.mti().to_owned(),
            response_code: code,
            tid,
            mid: self.identity.mid.clone(),
            batch: self.identity.batch.clone(),
            voucher: stan,
            amount_minor: None,
            rrn: field_text(&message, 37).as_deref().map(str::to_owned),
            auth_code: None,
            masked_pan: None,
            date_time: String::new(),
            payload: None,
        })
    }

    /// Echo test (0820, 60.3 = 301).
    pub async fn echo(&mut self) -> anyhow::Result<Receipt> {
        let stan = self.next_stan();
        let spec = Arc::clone(&self.spec);
        let mut b = self.builder(&spec, "0820", &stan)?;
        b.set(60, format!("00{}301", self.identity.batch).into_bytes())?;
        let frame = self.encode(b, false)?;
        self.exchange(frame).await
    }

    /// A financial request: processing code (3), amount (4), condition code (25), currency (49)
    /// and field 60 (transaction type, this terminal's batch, and what follows).
    fn financial<'s>(
        &self,
        spec: &'s Spec,
        (mti, stan): (&str, &str),
        processing_code: &[u8],
        amount: Money,
        (type_code, suffix): (&str, &str),
    ) -> anyhow::Result<MessageBuilder<'s>> {
        let mut b = self.builder(spec, mti, stan)?;
        b.set(3, processing_code.to_vec())?;
        b.set(4, amount.iso8583_amount().into_bytes())?;
        b.set(25, b"00".to_vec())?;
        b.set(49, amount.iso8583_currency().into_bytes())?;
        b.set(
            60,
            format!("{type_code}{}{suffix}", self.identity.batch).into_bytes(),
        )?;
        Ok(b)
    }

    fn sale_builder<'s>(
        &self,
        spec: &'s Spec,
        type_code: &str,
        stan: &str,
        amount: Money,
    ) -> anyhow::Result<MessageBuilder<'s>> {
        let mut b = self.financial(spec, ("0200", stan), b"000000", amount, (type_code, "000"))?;
        b.set(22, b"032".to_vec())?;
        b.set(63, self.identity.operator.as_bytes().to_vec())?;
        Ok(b)
    }

    /// (a) Asks the gateway for an order's code; returns the answer (its `payload` is the code).
    pub async fn request_order(&mut self, amount: Money) -> anyhow::Result<Receipt> {
        let stan = self.next_stan();
        let spec = Arc::clone(&self.spec);
        let b = self.sale_builder(&spec, TYPE_QR_ORDER, &stan, amount)?;
        let frame = self.encode(b, true)?;
        self.exchange(frame).await
    }

    /// (a) Asks for the result of the order of `voucher` (answered when final, or 09).
    pub async fn query_result(&mut self, voucher: &str) -> anyhow::Result<Receipt> {
        let stan = self.next_stan();
        let spec = Arc::clone(&self.spec);
        let mut b = self.builder(&spec, "0200", &stan)?;
        b.set(3, b"000000".to_vec())?;
        b.set(
            60,
            format!("{TYPE_QR_QUERY}{}000", self.identity.batch).into_bytes(),
        )?;
        b.set(61, format!("{}{voucher}", self.identity.batch).into_bytes())?;
        let frame = self.encode(b, true)?;
        let mut receipt = self.exchange(frame).await?;
        // The receipt names the sale's voucher, not the query's own trace number.
        receipt.voucher = voucher.to_owned();
        Ok(receipt)
    }

    /// (b) Makes the code itself, signed with its MAC key, and sends the held sale; returns the
    /// voucher and the payload to show. Read the result with [`TerminalClient::read_answer`].
    pub async fn send_sale_with_own_code(
        &mut self,
        amount: Money,
        merchant: emv_qr::Merchant,
        acquirer: &str,
        ttl_secs: u64,
    ) -> anyhow::Result<(String, String)> {
        self.send_sale_with_own_code_signed(amount, merchant, acquirer, ttl_secs, 8)
            .await
    }

    /// [`TerminalClient::send_sale_with_own_code`] with the signature cut to `signature_bytes`
    /// (a misbehaving terminal, for tests).
    pub async fn send_sale_with_own_code_signed(
        &mut self,
        amount: Money,
        merchant: emv_qr::Merchant,
        acquirer: &str,
        ttl_secs: u64,
        signature_bytes: usize,
    ) -> anyhow::Result<(String, String)> {
        let stan = self.next_stan();
        let expires =
            posbridge::store::journal::now_ms() / 1000 + i64::try_from(ttl_secs).unwrap_or(60);
        let reference = posbridge::service::orders::payload::new_reference();
        let order = emv_qr::Order {
            merchant,
            amount_minor: u64::try_from(amount.amount_minor)?,
            reference,
            terminal_label: self.identity.tid.clone(),
            tid: self.identity.tid.clone(),
            batch: self.identity.batch.clone(),
            voucher: stan.clone(),
            operator: self.identity.operator.clone(),
            acquirer: acquirer.to_owned(),
            transaction_type: TYPE_SALE.to_owned(),
            expires_at: Expiry::from_unix_seconds(u64::try_from(expires)?).context("expiry")?,
            key_id: None,
        };
        let unsigned = order.unsigned()?;
        let mut signature = self.security.generate_mac(
            &mac_key_label(&self.identity.tid, 0),
            MacAlgorithm::Iso9797Alg1 {
                padding: Padding::M2,
            },
            &unsigned.signing_input(),
        )?;
        signature.truncate(signature_bytes);
        let payload = unsigned.with_signature(&signature)?.encode();
        let spec = Arc::clone(&self.spec);
        let mut b = self.sale_builder(&spec, TYPE_SALE, &stan, amount)?;
        b.set_sub("62.01", payload.as_bytes())?;
        let frame = self.encode(b, true)?;
        self.framed.send(frame.as_slice()).await?;
        Ok((stan, payload))
    }

    /// Reverses the sale of `voucher` (0400).
    pub async fn reverse(&mut self, voucher: &str, amount: Money) -> anyhow::Result<Receipt> {
        let spec = Arc::clone(&self.spec);
        let mut b = self.financial(&spec, ("0400", voucher), b"000000", amount, (TYPE_SALE, ""))?;
        b.set(39, b"98".to_vec())?;
        let frame = self.encode(b, true)?;
        self.exchange(frame).await
    }

    /// Voids the sale of `voucher` (0200, 60.1 = 23, 61 = original batch + voucher).
    pub async fn void(&mut self, voucher: &str, amount: Money) -> anyhow::Result<Receipt> {
        self.after_sale(
            "0200",
            posbridge::edge::terminal::protocol::TYPE_VOID,
            voucher,
            amount,
        )
        .await
    }

    /// Refunds `amount` of the sale of `voucher` (0220, 60.1 = 25).
    pub async fn refund(&mut self, voucher: &str, amount: Money) -> anyhow::Result<Receipt> {
        self.after_sale(
            "0220",
            posbridge::edge::terminal::protocol::TYPE_REFUND,
            voucher,
            amount,
        )
        .await
    }

    async fn after_sale(
        &mut self,
        mti: &str,
        type_code: &str,
        voucher: &str,
        amount: Money,
    ) -> anyhow::Result<Receipt> {
        let stan = self.next_stan();
        let spec = Arc::clone(&self.spec);
        let mut b = self.financial(&spec, (mti, &stan), b"200000", amount, (type_code, "000"))?;
        b.set(61, format!("{}{voucher}", self.identity.batch).into_bytes())?;
        let frame = self.encode(b, true)?;
        self.exchange(frame).await
    }

    /// Settlement (0500) with the terminal's own totals of approved sales (no refunds).
    pub async fn settle(&mut self, count: u32, amount_minor: u64) -> anyhow::Result<Receipt> {
        self.settle_with_credits((count, amount_minor), (0, 0))
            .await
    }

    /// Settlement (0500) with debit (sales) and credit (refunds) totals: (count, amount).
    pub async fn settle_with_credits(
        &mut self,
        (count, amount_minor): (u32, u64),
        (credit_count, credit_minor): (u32, u64),
    ) -> anyhow::Result<Receipt> {
        let stan = self.next_stan();
        let spec = Arc::clone(&self.spec);
        let mut b = self.builder(&spec, "0500", &stan)?;
        let totals = format!("{amount_minor:012}{count:03}{credit_minor:012}{credit_count:03}0");
        b.set(48, totals.into_bytes())?;
        b.set(49, b"156".to_vec())?;
        b.set(60, format!("00{}201", self.identity.batch).into_bytes())?;
        b.set(63, self.identity.operator.as_bytes().to_vec())?;
        let frame = self.encode(b, true)?;
        self.exchange(frame).await
    }

    /// Sends raw bytes as one frame (tests of bad input).
    pub async fn send_raw(&mut self, frame: &[u8]) -> anyhow::Result<()> {
        self.framed.send(frame).await?;
        Ok(())
    }

    /// Encodes a message as this terminal would, MAC included (tests tamper with the result).
    pub fn encode_sale_request(&mut self, amount: Money) -> anyhow::Result<Vec<u8>> {
        let stan = self.next_stan();
        let spec = Arc::clone(&self.spec);
        let b = self.sale_builder(&spec, TYPE_QR_ORDER, &stan, amount)?;
        self.encode(b, true)
    }
}
