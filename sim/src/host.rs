//! A real ISO 8583 host to test the upstream links against (`posbridge sim host`): it listens,
//! answers sign-on, echo and sign-off, authorises 0200 sales against its own accounts (PIN
//! verified through its own security module against the account's PVV, MAC checked), reverses
//! them idempotently (0400/0401, 0420/0421), keeps its own ledger for reconciliation, and
//! misbehaves on purpose when told to: latency, decline rules, and faults chosen by rule or at
//! random from a seed.
//!
//! The host verifies and generates MACs with ANSI X9.19 under `mac_key`; PIN blocks arrive in
//! ISO format 0 under `pin_key`. It can start a key change ([`SimHostHandle::key_exchange`]) that
//! delivers new zone keys under `zmk` (layout in [`posbridge::upstream::key_exchange`]).
//!
//! Response codes: 00 approved, 05 card on the decline list, 14 unknown card, 51 insufficient
//! funds, 55 wrong PIN, 61 over the amount limit, 94 duplicate transmission (a 0200 whose
//! acquirer + TID + STAN is already in the ledger), 25 reversal of a sale the host never saw,
//! A0 MAC error, 30 format error, 96 system error.

use futures_util::{SinkExt, StreamExt};
use posbridge::infra::security::{Security, SecurityError};
use posbridge::upstream::key_exchange::{self, KeyUsage, WrappedKey};
use posbridge::upstream::link::transmission_date_time;
use posbridge::upstream::message::{self, IsoMessage, mask_pan};
use posbridge_codecs::Spec;
use posbridge_hsm::{
    HsmConfig, HsmError, KeyType, MacAlgorithm, Pan, Pin, PinBlock, PinBlockFormat,
};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::codec::Framed;

/// The simulated host's configuration (TOML for `posbridge sim host --config`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimHostConfig {
    /// Dialect (spec name or path).
    pub dialect: String,
    /// Listen address.
    pub listen: String,
    /// Software security module key file; default: the embedded demo keys.
    pub key_file: Option<PathBuf>,
    /// MAC key label (X9.19); `None`: no MAC checks and no MACs on answers.
    pub mac_key: Option<String>,
    /// Zone PIN key label (PIN blocks arrive in format 0 under it).
    pub pin_key: String,
    /// PIN verification key label (Visa PVV).
    pub pvk: String,
    /// Zone master key label (key changes are exported under it).
    pub zmk: String,
    /// Decline a sale without a PIN block.
    pub require_pin: bool,
    /// Cardholder accounts.
    pub accounts: Vec<AccountConfig>,
    /// Delay before every answer.
    pub latency_ms: u64,
    /// Delay of an answer with the `late-response` fault (make it longer than the client's
    /// deadline).
    pub late_response_ms: u64,
    /// Decline rules, first match wins.
    pub decline: Vec<DeclineRule>,
    /// Deterministic faults, first match wins (before the random ones).
    pub faults: Vec<FaultRule>,
    /// Random faults.
    pub random_faults: Option<RandomFaults>,
    /// Match reversals and refund advices by card too, as some hosts do: one whose field 2 is
    /// missing or is not the sale's card number is answered 30 (format error).
    pub require_pan_in_reversals: bool,
}

impl Default for SimHostConfig {
    fn default() -> Self {
        SimHostConfig {
            dialect: "cups-host".into(),
            listen: "127.0.0.1:0".into(),
            key_file: None,
            mac_key: Some("zak/upstream".into()),
            pin_key: "zpk/upstream".into(),
            pvk: "pvk/wallet".into(),
            zmk: "zmk/upstream".into(),
            require_pin: false,
            accounts: vec![AccountConfig {
                pan: crate::demo::PAN.into(),
                balance_minor: 10_000_000,
                pin: Some(crate::demo::PIN.into()),
                pvv: None,
            }],
            latency_ms: 0,
            late_response_ms: 3_000,
            decline: Vec::new(),
            faults: Vec::new(),
            random_faults: None,
            require_pan_in_reversals: false,
        }
    }
}

/// One cardholder account.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountConfig {
    /// Card number.
    pub pan: String,
    /// Available balance in minor units.
    pub balance_minor: u64,
    /// Demo PIN, turned into a PVV at start (never kept).
    #[serde(default)]
    pub pin: Option<String>,
    /// PVV (4 digits, PVKI 1), when the PIN is not given.
    #[serde(default)]
    pub pvv: Option<String>,
}

/// Conditions on a financial request; every condition given must hold.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Condition {
    /// MTI (e.g. "0200"); absent: any financial request.
    pub mti: Option<String>,
    /// F4 ends with these digits (e.g. "91").
    pub amount_suffix: Option<String>,
    /// F4 above this many minor units.
    pub amount_above_minor: Option<u64>,
    /// F2 is one of these.
    pub pans: Vec<String>,
}

impl Condition {
    fn holds(&self, request: &IsoMessage) -> bool {
        let amount = request.text(4).unwrap_or_default();
        self.mti.as_ref().is_none_or(|m| *m == request.mti)
            && self
                .amount_suffix
                .as_ref()
                .is_none_or(|s| amount.ends_with(s.as_str()))
            && self
                .amount_above_minor
                .is_none_or(|limit| amount.parse::<u64>().is_ok_and(|a| a > limit))
            && (self.pans.is_empty()
                || request
                    .text(2)
                    .is_some_and(|pan| self.pans.iter().any(|p| p == pan)))
    }
}

/// Decline a sale matching `when` with `code`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeclineRule {
    /// When.
    #[serde(flatten)]
    pub when: Condition,
    /// F39 to answer.
    pub code: String,
}

/// Inject `fault` on requests matching `when`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRule {
    /// When.
    #[serde(flatten)]
    pub when: Condition,
    /// What goes wrong.
    pub fault: Fault,
}

/// A deliberate misbehaviour on one financial request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// Processed (money moves), never answered.
    NoResponse,
    /// Processed, answered after `late_response_ms`.
    LateResponse,
    /// Processed, answered twice.
    DuplicateResponse,
    /// Processed, then the connection is closed without an answer.
    Disconnect,
    /// Processed, answered with a corrupted MAC.
    WrongMac,
    /// Processed (money moves), answered with a decline (05) and no MAC: what a
    /// man in the middle would send to make the acquirer forget an approval.
    UnmacedDecline,
    /// Not processed, not answered (lost before the host).
    Drop,
}

/// Random faults: each financial request draws once from a generator seeded with `seed`; the
/// probabilities (0..=1, summing to at most 1) pick a fault. With several connections the draws
/// are assigned in the order requests arrive.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RandomFaults {
    /// Generator seed (printed at start so a run reproduces).
    pub seed: u64,
    /// Probability of [`Fault::NoResponse`].
    pub no_response: f64,
    /// Probability of [`Fault::LateResponse`].
    pub late_response: f64,
    /// Probability of [`Fault::DuplicateResponse`].
    pub duplicate_response: f64,
    /// Probability of [`Fault::Disconnect`].
    pub disconnect: f64,
    /// Probability of [`Fault::WrongMac`].
    pub wrong_mac: f64,
}

/// State of a sale in the host's ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LedgerState {
    /// Approved; the amount is debited.
    Approved,
    /// Approved and then reversed; the amount is credited back.
    Reversed,
    /// A reversal for a sale the host never saw (answered 25): nothing moved; a later 0200 with
    /// the same key is refused as a duplicate (94).
    ReversedUnseen,
}

/// One sale in the host's ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LedgerEntry {
    /// F32 of the sale.
    pub acquirer: String,
    /// F41.
    pub tid: String,
    /// F11 of the sale.
    pub stan: String,
    /// F37.
    pub rrn: String,
    /// Masked PAN.
    pub pan: String,
    /// F4.
    pub amount_minor: u64,
    /// State.
    pub state: LedgerState,
    /// F38 given (empty for [`LedgerState::ReversedUnseen`]).
    pub auth_code: String,
    /// Refunded so far (0220 refund advices), minor units.
    pub refunded_minor: u64,
}

type SaleKey = (String, String, String);

/// Requests of one connection handled concurrently (latency and late answers overlap).
const MAX_CONCURRENT_PER_CONNECTION: usize = 512;

struct Account {
    balance_minor: u64,
    pvv: Option<String>,
}

#[derive(Default)]
struct Books {
    accounts: HashMap<String, Account>,
    ledger: Vec<LedgerEntry>,
    /// The full PAN of each ledger entry (the ledger itself shows it masked).
    pans: Vec<String>,
    index: HashMap<SaleKey, usize>,
    /// F37 of every refund advice applied (a repeat 0221 moves no money).
    refunds: std::collections::HashSet<String>,
}

enum Out {
    Frame(Vec<u8>),
    Close,
}

struct Shared {
    config: SimHostConfig,
    spec: Spec,
    security: Security,
    books: Mutex<Books>,
    rng: Mutex<Option<rand::rngs::StdRng>>,
    counter: AtomicU64,
    /// Open connections: id -> writer, signed-on flag.
    connections: Mutex<HashMap<u64, (mpsc::Sender<Out>, bool)>>,
    /// Host-initiated requests waiting for an 0810, by F11.
    waiting: Mutex<HashMap<String, oneshot::Sender<IsoMessage>>>,
    requests_seen: AtomicU64,
    accepted: AtomicU64,
    /// The last key change sent (F11, frame), for [`SimHostHandle::replay_key_exchange`].
    last_key_change: Mutex<Option<(String, Vec<u8>)>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Starts simulated hosts.
#[derive(Debug)]
pub struct SimHost;

/// A running simulated host: its ledger, balances and controls. Clone freely.
#[derive(Clone)]
pub struct SimHostHandle {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
}

impl std::fmt::Debug for SimHostHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimHostHandle").finish_non_exhaustive()
    }
}

/// Why the simulated host failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimHostError {
    /// Configuration.
    #[error("sim host configuration: {0}")]
    Config(String),
    /// Listening socket.
    #[error("sim host socket: {0}")]
    Io(#[from] std::io::Error),
    /// Security module.
    #[error("sim host security module: {0}")]
    Security(String),
    /// No connection to send a host-initiated request on, or no answer.
    #[error("key exchange: {0}")]
    KeyExchange(String),
}

impl SimHost {
    /// Binds `config.listen`, builds the host's own security module and accounts (PVVs from the
    /// demo PINs) and serves in the background. Returns the bound address and the handle.
    pub async fn start(config: SimHostConfig) -> Result<(SocketAddr, SimHostHandle), SimHostError> {
        let spec = Spec::load(&config.dialect).map_err(|e| SimHostError::Config(e.to_string()))?;
        posbridge::infra::framing::frame_codec(&spec)
            .map_err(|e| SimHostError::Config(e.to_string()))?;
        let module = posbridge_hsm::open(&HsmConfig::Software {
            key_file: config.key_file.clone(),
            persist: false,
        })
        .map_err(|e| SimHostError::Security(e.to_string()))?;
        let security = Security::new(module);
        let mut books = Books::default();
        for account in &config.accounts {
            let pvv = match (&account.pvv, &account.pin) {
                (Some(pvv), _) => Some(pvv.clone()),
                (None, Some(pin)) => {
                    let pan =
                        Pan::new(&account.pan).map_err(|e| SimHostError::Config(e.to_string()))?;
                    let pin = Pin::new(pin).map_err(|e| SimHostError::Config(e.to_string()))?;
                    Some(
                        security
                            .pin_verification_value(config.pvk.clone(), pan, pin, 1)
                            .await
                            .map_err(|e| SimHostError::Security(e.to_string()))?,
                    )
                }
                (None, None) => None,
            };
            books.accounts.insert(
                account.pan.clone(),
                Account {
                    balance_minor: account.balance_minor,
                    pvv,
                },
            );
        }
        let rng = config
            .random_faults
            .as_ref()
            .map(|r| rand::rngs::StdRng::seed_from_u64(r.seed));
        let listener = TcpListener::bind(&config.listen).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            config,
            spec,
            security,
            books: Mutex::new(books),
            rng: Mutex::new(rng),
            counter: AtomicU64::new(1),
            connections: Mutex::new(HashMap::new()),
            waiting: Mutex::new(HashMap::new()),
            requests_seen: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            last_key_change: Mutex::new(None),
        });
        let (stop, stop_rx) = watch::channel(false);
        tokio::spawn(accept_loop(Arc::clone(&shared), listener, stop_rx));
        tracing::info!(%addr, dialect = %shared.spec.name, "simulated host listening");
        Ok((addr, SimHostHandle { shared, stop }))
    }
}

impl SimHostHandle {
    /// Every sale the host approved or reversed (or saw a reversal for), in arrival order.
    pub fn ledger(&self) -> Vec<LedgerEntry> {
        lock(&self.shared.books).ledger.clone()
    }

    /// An account's balance.
    pub fn balance(&self, pan: &str) -> Option<u64> {
        lock(&self.shared.books)
            .accounts
            .get(pan)
            .map(|a| a.balance_minor)
    }

    /// Financial and network requests received so far (including dropped ones).
    pub fn requests_seen(&self) -> u64 {
        self.shared.requests_seen.load(Ordering::Relaxed)
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        lock(&self.shared.connections).len()
    }

    /// Open connections that have signed on.
    pub fn signed_on_connections(&self) -> usize {
        lock(&self.shared.connections)
            .values()
            .filter(|(_, signed_on)| *signed_on)
            .count()
    }

    /// Connections accepted since start.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }

    /// Closes every open connection (the listener keeps accepting): a host restart as seen by
    /// the clients.
    pub async fn disconnect_all(&self) {
        let writers: Vec<_> = lock(&self.shared.connections)
            .values()
            .map(|(w, _)| w.clone())
            .collect();
        for writer in writers {
            let _ = writer.send(Out::Close).await;
        }
    }

    /// Stops accepting and closes every connection.
    pub async fn stop(&self) {
        let _ = self.stop.send(true);
        self.disconnect_all().await;
    }

    /// Starts a key change on a signed-on connection: new zone PIN and MAC keys generated in the
    /// host's module, sent under the zone master key in an 0800 (F70 = 101, F48 layout of
    /// [`posbridge::upstream::key_exchange`]). With `corrupt_mac_kcv` the MAC key's check value is altered, so
    /// a correct client refuses the change. The host switches to the new keys only when the
    /// client answers 00. Returns the client's F39.
    pub async fn key_exchange(
        &self,
        corrupt_mac_kcv: bool,
        timeout: Duration,
    ) -> Result<String, SimHostError> {
        self.send_key_exchange(corrupt_mac_kcv, true, timeout).await
    }

    /// A key change without its MAC, which a correct client refuses (A0).
    pub async fn key_exchange_without_mac(
        &self,
        timeout: Duration,
    ) -> Result<String, SimHostError> {
        self.send_key_exchange(false, false, timeout).await
    }

    /// Sends the last key change again, byte for byte (a replay an attacker could make); the
    /// host's own keys do not change whatever the answer. Returns the client's F39.
    pub async fn replay_key_exchange(&self, timeout: Duration) -> Result<String, SimHostError> {
        let shared = &self.shared;
        let (stan, frame) = lock(&shared.last_key_change)
            .clone()
            .ok_or_else(|| SimHostError::KeyExchange("no key change to replay".into()))?;
        let writer = signed_on_writer(shared)?;
        send_and_wait(shared, &writer, &stan, frame, timeout).await
    }

    async fn send_key_exchange(
        &self,
        corrupt_mac_kcv: bool,
        with_mac: bool,
        timeout: Duration,
    ) -> Result<String, SimHostError> {
        let shared = &self.shared;
        let Some(mac_key) = shared.config.mac_key.clone() else {
            return Err(SimHostError::KeyExchange("host has no MAC key".into()));
        };
        let writer = signed_on_writer(shared)?;
        let generate = |label: String| {
            shared
                .security
                .generate_key(label, KeyType::Tdes2, shared.config.zmk.clone())
        };
        let security_error = |e: SecurityError| SimHostError::Security(e.to_string());
        let pin = generate(format!("{}.next", shared.config.pin_key))
            .await
            .map_err(security_error)?;
        let mac = generate(format!("{mac_key}.next"))
            .await
            .map_err(security_error)?;
        let mut mac_kcv = mac.kcv.clone();
        if corrupt_mac_kcv && let Some(first) = mac_kcv.first_mut() {
            *first ^= 0xFF;
        }
        let keys = [
            WrappedKey {
                usage: KeyUsage::Pin,
                cryptogram: pin.cryptogram.clone(),
                kcv: pin.kcv.clone(),
            },
            WrappedKey {
                usage: KeyUsage::Mac,
                cryptogram: mac.cryptogram.clone(),
                kcv: mac_kcv,
            },
        ];
        let stan = format!(
            "{:06}",
            shared.counter.fetch_add(1, Ordering::Relaxed) % 1_000_000
        );
        let request = IsoMessage::new("0800")
            .with(7, transmission_date_time(std::time::SystemTime::now()))
            .with(11, stan.as_str())
            .with(48, key_exchange::encode(&keys))
            .with(70, key_exchange::NETWORK_CODE);
        // Authenticated under the current zone MAC key, as the client requires.
        let mut wire = message::encode(&shared.spec, &request, with_mac, None)
            .map_err(|e| SimHostError::KeyExchange(e.to_string()))?;
        if let Some(input) = wire.mac_input().map(<[u8]>::to_vec) {
            let value = shared
                .security
                .generate_mac(mac_key.clone(), MacAlgorithm::X919, input)
                .await
                .map_err(security_error)?;
            wire.patch_mac(&shared.spec, &value)
                .map_err(|e| SimHostError::KeyExchange(e.to_string()))?;
        }
        let frame = with_host_header(&shared.spec, wire.bytes);
        *lock(&shared.last_key_change) = Some((stan.clone(), frame.clone()));
        let code = send_and_wait(shared, &writer, &stan, frame, timeout).await?;
        if code == "00" {
            for (key, label) in [(&pin, shared.config.pin_key.clone()), (&mac, mac_key)] {
                shared
                    .security
                    .import_key(
                        shared.config.zmk.clone(),
                        label,
                        KeyType::Tdes2,
                        key.cryptogram.clone(),
                        key.kcv.clone(),
                    )
                    .await
                    .map_err(security_error)?;
            }
            tracing::info!("key change accepted; host uses the new zone keys");
        } else {
            tracing::warn!(
                code,
                "key change refused by the client; host keeps the old keys"
            );
        }
        Ok(code)
    }
}

fn signed_on_writer(shared: &Shared) -> Result<mpsc::Sender<Out>, SimHostError> {
    lock(&shared.connections)
        .values()
        .find(|(_, signed_on)| *signed_on)
        .map(|(w, _)| w.clone())
        .ok_or_else(|| SimHostError::KeyExchange("no signed-on connection".into()))
}

/// Sends a host-initiated 0800 and waits for the client's 0810; returns its F39.
async fn send_and_wait(
    shared: &Shared,
    writer: &mpsc::Sender<Out>,
    stan: &str,
    frame: Vec<u8>,
    timeout: Duration,
) -> Result<String, SimHostError> {
    let (tx, rx) = oneshot::channel();
    lock(&shared.waiting).insert(stan.to_owned(), tx);
    let _ = writer.send(Out::Frame(frame)).await;
    let answer = tokio::time::timeout(timeout, rx).await;
    lock(&shared.waiting).remove(stan);
    let answer = answer
        .map_err(|_| SimHostError::KeyExchange("no 0810 before the timeout".into()))?
        .map_err(|_| SimHostError::KeyExchange("connection closed".into()))?;
    Ok(answer.response_code().unwrap_or_default().to_owned())
}

/// A host-initiated frame's 46-byte header (cups-host): IDs left blank, total length written.
fn with_host_header(spec: &Spec, mut bytes: Vec<u8>) -> Vec<u8> {
    use posbridge_codecs::framing::HostHeader;
    if spec.header.length == HostHeader::LEN
        && let Ok(header) = HostHeader::new("", "")
        && let Ok(head) = header.to_bytes(bytes.len() - HostHeader::LEN)
    {
        bytes[..HostHeader::LEN].copy_from_slice(&head);
    }
    bytes
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    let mut next_id = 0u64;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.changed() => return,
        };
        match accepted {
            Ok((socket, _)) => {
                next_id += 1;
                shared.accepted.fetch_add(1, Ordering::Relaxed);
                let _ = socket.set_nodelay(true);
                tokio::spawn(connection(
                    Arc::clone(&shared),
                    next_id,
                    socket,
                    stop.clone(),
                ));
            }
            Err(error) => {
                tracing::warn!(%error, "sim host accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn connection(
    shared: Arc<Shared>,
    id: u64,
    socket: TcpStream,
    mut stop: watch::Receiver<bool>,
) {
    let Ok(codec) = posbridge::infra::framing::frame_codec(&shared.spec) else {
        return;
    };
    let mut framed = Framed::new(socket, codec);
    let (out_tx, mut out_rx) = mpsc::channel::<Out>(256);
    // At most this many requests of one connection are handled at once; beyond it the host
    // stops reading, and TCP pushes back on the client.
    let busy = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_PER_CONNECTION));
    lock(&shared.connections).insert(id, (out_tx.clone(), false));
    loop {
        tokio::select! {
            out = out_rx.recv() => match out {
                Some(Out::Frame(frame)) => {
                    if framed.send(frame.as_slice()).await.is_err() {
                        break;
                    }
                }
                Some(Out::Close) | None => break,
            },
            frame = framed.next(), if busy.available_permits() > 0 => match frame {
                Some(Ok(frame)) => {
                    let Ok(permit) = Arc::clone(&busy).try_acquire_owned() else { break };
                    let (shared, out) = (Arc::clone(&shared), out_tx.clone());
                    tokio::spawn(async move {
                        handle(&shared, id, frame.to_vec(), out).await;
                        drop(permit);
                    });
                }
                _ => break,
            },
            // Wakes the loop when a handler finishes while reading is paused.
            permit = Arc::clone(&busy).acquire_owned(), if busy.available_permits() == 0 => drop(permit),
            _ = stop.changed() => break,
        }
    }
    lock(&shared.connections).remove(&id);
}

/// What to send back for one request.
struct Answer {
    message: IsoMessage,
    header: Vec<u8>,
    mac: bool,
}

async fn handle(shared: &Shared, connection: u64, frame: Vec<u8>, out: mpsc::Sender<Out>) {
    let decoded = match message::decode(&shared.spec, &frame) {
        Ok(decoded) => decoded,
        Err(error) => {
            tracing::warn!(%error, "sim host: undecodable request ignored");
            return;
        }
    };
    let request = decoded.message;
    if !request.is_request() {
        // An answer to a host-initiated request (key change).
        if let Some(waiting) = request
            .text(11)
            .and_then(|s| lock(&shared.waiting).remove(s))
        {
            let _ = waiting.send(request);
        } else {
            tracing::warn!(mti = %request.mti, "sim host: unexpected answer ignored");
        }
        return;
    }
    shared.requests_seen.fetch_add(1, Ordering::Relaxed);
    let reply_header = reply_header(&shared.spec, &decoded.header);
    if request.mti.starts_with("08") {
        let code = match request.text(70).unwrap_or_default() {
            "001" => {
                if let Some(entry) = lock(&shared.connections).get_mut(&connection) {
                    entry.1 = true;
                }
                "00"
            }
            "002" | "301" => "00",
            _ => "30",
        };
        let answer = Answer {
            message: request.response(code),
            header: reply_header,
            mac: false,
        };
        send(shared, &answer, false, &out).await;
        return;
    }
    let fault = pick_fault(shared, &request);
    if fault == Some(Fault::Drop) {
        tracing::info!(mti = %request.mti, stan = request.text(11).unwrap_or_default(), "sim host fault: dropped unprocessed");
        return;
    }
    let mac_key = shared
        .config
        .mac_key
        .as_ref()
        .filter(|_| shared.spec.mac.is_some());
    let mac_ok = match mac_key {
        None => true,
        Some(label) => {
            let covered = decoded.mac_range.clone().and_then(|r| frame.get(r));
            let mac = message::mac_value(&shared.spec, &request);
            match (covered, mac) {
                (Some(covered), Some(mac)) => shared
                    .security
                    .verify_mac(
                        label.clone(),
                        MacAlgorithm::X919,
                        covered.to_vec(),
                        mac.to_vec(),
                    )
                    .await
                    .is_ok(),
                _ => false,
            }
        }
    };
    let answer = if !mac_ok {
        Answer {
            message: request.response("A0"),
            header: reply_header,
            mac: false,
        }
    } else {
        let message = match request.mti.as_str() {
            "0200" => sale(shared, &request).await,
            "0400" | "0401" | "0420" | "0421" => reversal(shared, &request),
            "0220" | "0221" => refund(shared, &request),
            _ => request.response("12"),
        };
        Answer {
            message,
            header: reply_header,
            mac: mac_key.is_some(),
        }
    };
    if shared.config.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(shared.config.latency_ms)).await;
    }
    match fault {
        None => send(shared, &answer, false, &out).await,
        Some(Fault::NoResponse) | Some(Fault::Drop) => {
            tracing::info!(
                stan = answer.message.text(11).unwrap_or_default(),
                "sim host fault: no response"
            );
        }
        Some(Fault::LateResponse) => {
            tokio::time::sleep(Duration::from_millis(shared.config.late_response_ms)).await;
            send(shared, &answer, false, &out).await;
        }
        Some(Fault::DuplicateResponse) => {
            send(shared, &answer, false, &out).await;
            send(shared, &answer, false, &out).await;
        }
        Some(Fault::Disconnect) => {
            tracing::info!(
                stan = answer.message.text(11).unwrap_or_default(),
                "sim host fault: disconnect"
            );
            let _ = out.send(Out::Close).await;
        }
        Some(Fault::WrongMac) => send(shared, &answer, true, &out).await,
        Some(Fault::UnmacedDecline) => {
            let mut message = answer.message.clone();
            message.set(39, b"05".to_vec());
            message.remove(64);
            message.remove(128);
            let forged = Answer {
                message,
                header: answer.header.clone(),
                mac: false,
            };
            send(shared, &forged, false, &out).await;
        }
    }
}

fn reply_header(spec: &Spec, header: &[u8]) -> Vec<u8> {
    use posbridge_codecs::framing::HostHeader;
    if spec.header.length == HostHeader::LEN
        && let Ok((parsed, _)) = HostHeader::parse(header)
    {
        // The total length is rewritten when the answer is encoded.
        return parsed
            .reply()
            .to_bytes(0)
            .map(|b| b.to_vec())
            .unwrap_or_default();
    }
    header.to_vec()
}

fn pick_fault(shared: &Shared, request: &IsoMessage) -> Option<Fault> {
    if let Some(rule) = shared.config.faults.iter().find(|r| r.when.holds(request)) {
        return Some(rule.fault);
    }
    let random = shared.config.random_faults.as_ref()?;
    let draw: f64 = lock(&shared.rng).as_mut()?.random();
    let mut edge = 0.0;
    for (p, fault) in [
        (random.no_response, Fault::NoResponse),
        (random.late_response, Fault::LateResponse),
        (random.duplicate_response, Fault::DuplicateResponse),
        (random.disconnect, Fault::Disconnect),
        (random.wrong_mac, Fault::WrongMac),
    ] {
        edge += p;
        if draw < edge {
            return Some(fault);
        }
    }
    None
}

async fn send(shared: &Shared, answer: &Answer, corrupt_mac: bool, out: &mpsc::Sender<Out>) {
    let header = posbridge_codecs::framing::HostHeader::parse(&answer.header)
        .ok()
        .map(|(h, _)| h);
    let mut wire = match message::encode(&shared.spec, &answer.message, answer.mac, header.as_ref())
    {
        Ok(wire) => wire,
        Err(error) => {
            tracing::error!(%error, "sim host could not encode its answer");
            return;
        }
    };
    if header.is_none() && !answer.header.is_empty() && answer.header.len() <= wire.bytes.len() {
        wire.bytes[..answer.header.len()].copy_from_slice(&answer.header);
    }
    if let (true, Some(label), Some(input)) = (answer.mac, &shared.config.mac_key, wire.mac_input())
    {
        match shared
            .security
            .generate_mac(label.clone(), MacAlgorithm::X919, input.to_vec())
            .await
        {
            Ok(mut mac) => {
                if corrupt_mac && let Some(first) = mac.first_mut() {
                    *first ^= 0x01;
                }
                if let Err(error) = wire.patch_mac(&shared.spec, &mac) {
                    tracing::error!(%error, "sim host could not write its MAC");
                    return;
                }
            }
            Err(error) => {
                tracing::error!(%error, "sim host could not compute its MAC");
                return;
            }
        }
    }
    let _ = out.send(Out::Frame(wire.bytes)).await;
}

fn sale_key(request: &IsoMessage, stan: &str) -> SaleKey {
    (
        request.text(32).unwrap_or_default().to_owned(),
        request.text(41).unwrap_or_default().to_owned(),
        stan.to_owned(),
    )
}

async fn sale(shared: &Shared, request: &IsoMessage) -> IsoMessage {
    let (Some(pan), Some(amount), Some(stan)) = (
        request.text(2),
        request.text(4).and_then(|a| a.parse::<u64>().ok()),
        request.text(11),
    ) else {
        return request.response("30");
    };
    let key = sale_key(request, stan);
    let pvv = {
        let books = lock(&shared.books);
        if books.index.contains_key(&key) {
            return request.response("94");
        }
        match books.accounts.get(pan) {
            None => return request.response("14"),
            Some(account) => account.pvv.clone(),
        }
    };
    if let Some(rule) = shared.config.decline.iter().find(|r| r.when.holds(request)) {
        return request.response(&rule.code);
    }
    match (request.get(52), pvv) {
        (Some(block), Some(pvv)) => {
            let checked = match (PinBlock::new(block.to_vec()), Pan::new(pan)) {
                (Ok(block), Ok(pan)) => {
                    shared
                        .security
                        .verify_pin(
                            block,
                            shared.config.pin_key.clone(),
                            PinBlockFormat::Iso0,
                            pan,
                            shared.config.pvk.clone(),
                            1,
                            pvv,
                        )
                        .await
                }
                _ => return request.response("30"),
            };
            match checked {
                Ok(true) => {}
                Ok(false) => return request.response("55"),
                Err(SecurityError::Hsm(HsmError::KeyNotFound { .. })) | Err(_) => {
                    return request.response("55");
                }
            }
        }
        (Some(_), None) => return request.response("55"),
        (None, _) if shared.config.require_pin => return request.response("55"),
        (None, _) => {}
    }
    let serial = shared.counter.fetch_add(1, Ordering::Relaxed);
    let auth_code = format!("{:06}", serial % 1_000_000);
    let rrn = request
        .text(37)
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{:012}", serial));
    let mut books = lock(&shared.books);
    if books.index.contains_key(&key) {
        return request.response("94");
    }
    let Some(account) = books.accounts.get_mut(pan) else {
        return request.response("14");
    };
    if account.balance_minor < amount {
        return request.response("51");
    }
    account.balance_minor -= amount;
    let position = books.ledger.len();
    books.ledger.push(LedgerEntry {
        acquirer: key.0.clone(),
        tid: key.1.clone(),
        stan: key.2.clone(),
        rrn: rrn.clone(),
        pan: mask_pan(pan.as_bytes()),
        amount_minor: amount,
        state: LedgerState::Approved,
        auth_code: auth_code.clone(),
        refunded_minor: 0,
    });
    books.pans.push(pan.to_owned());
    books.index.insert(key, position);
    let mut response = request.response("00");
    response.set(38, auth_code).set(37, rrn);
    response
}

/// 0220/0221 refund advice: the original sale is found as for a reversal; the refund's own
/// F37 makes a repeat idempotent. At most what is left of the sale is refunded (13 otherwise).
fn refund(shared: &Shared, request: &IsoMessage) -> IsoMessage {
    let original_stan = match request.get(90) {
        Some(f90) if f90.len() >= 10 => String::from_utf8_lossy(&f90[4..10]).into_owned(),
        _ => return request.response("30"),
    };
    let key = sale_key(request, &original_stan);
    let refund_id = request.text(37).unwrap_or_default().to_owned();
    let amount = request
        .text(4)
        .and_then(|a| a.parse::<u64>().ok())
        .unwrap_or(0);
    let mut books = lock(&shared.books);
    let Some(&position) = books.index.get(&key) else {
        return request.response("25");
    };
    if books.refunds.contains(&refund_id) {
        return request.response("00");
    }
    if shared.config.require_pan_in_reversals && !same_card(&books.pans[position], request) {
        return request.response("30");
    }
    let entry = books.ledger[position].clone();
    if entry.state != LedgerState::Approved {
        return request.response("12");
    }
    if amount == 0 || amount > entry.amount_minor - entry.refunded_minor {
        return request.response("13");
    }
    let pan = books.pans[position].clone();
    match books.accounts.get_mut(&pan) {
        Some(account) => account.balance_minor += amount,
        None => return request.response("96"),
    }
    books.ledger[position].refunded_minor += amount;
    books.refunds.insert(refund_id);
    request.response("00")
}

/// Whether a reversal or advice names the sale's card in field 2.
fn same_card(sale_pan: &str, request: &IsoMessage) -> bool {
    request.get(2).is_some_and(|pan| pan == sale_pan.as_bytes())
}

/// 0400/0401/0420/0421: the original is found by F32 + F41 + original STAN (F90 positions 5-10,
/// or F11 when F90 is absent). Idempotent: money moves at most once.
fn reversal(shared: &Shared, request: &IsoMessage) -> IsoMessage {
    let original_stan = match request.get(90) {
        Some(f90) if f90.len() >= 10 => String::from_utf8_lossy(&f90[4..10]).into_owned(),
        _ => request.text(11).unwrap_or_default().to_owned(),
    };
    let key = sale_key(request, &original_stan);
    let mut books = lock(&shared.books);
    let Some(&position) = books.index.get(&key) else {
        let amount = request
            .text(4)
            .and_then(|a| a.parse::<u64>().ok())
            .unwrap_or(0);
        let position = books.ledger.len();
        books.ledger.push(LedgerEntry {
            acquirer: key.0.clone(),
            tid: key.1.clone(),
            stan: key.2.clone(),
            rrn: request.text(37).unwrap_or_default().to_owned(),
            pan: mask_pan(request.get(2).unwrap_or_default()),
            amount_minor: amount,
            state: LedgerState::ReversedUnseen,
            auth_code: String::new(),
            refunded_minor: 0,
        });
        books.pans.push(String::new());
        books.index.insert(key, position);
        return request.response("25");
    };
    if shared.config.require_pan_in_reversals && !same_card(&books.pans[position], request) {
        return request.response("30");
    }
    let entry = books.ledger[position].clone();
    match entry.state {
        LedgerState::Approved => {
            let pan = books.pans[position].clone();
            match books.accounts.get_mut(&pan) {
                Some(account) => account.balance_minor += entry.amount_minor,
                None => return request.response("96"),
            }
            books.ledger[position].state = LedgerState::Reversed;
            request.response("00")
        }
        LedgerState::Reversed => request.response("00"),
        LedgerState::ReversedUnseen => request.response("25"),
    }
}
