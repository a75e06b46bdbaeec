//! A persistent client link to one upstream host: several TCP connections, each owned by one
//! task, and a multiplexer that matches answers to requests by key.
//!
//! A caller's [`HostLink::request`] takes an in-flight slot (waiting at most until its deadline:
//! backpressure, never an unbounded queue), completes STAN and F7, computes the MAC through the
//! security module, registers the match key (a duplicate in-flight key is refused before
//! anything is sent), and hands the frame to a signed-on connection's task through a bounded
//! mpsc with a oneshot for "written". The connection task writes frames, reads frames, routes
//! each answer to the waiting request by key, hands anything it cannot route to the unmatched
//! channel, answers host-initiated 0800s (echo, key change), sends an echo after
//! `echo_idle_secs` of silence, and reconnects with exponential backoff and jitter, signing on
//! before the connection carries traffic.
//!
//! The outcome tells, for the rule "a request that reached the host is never blindly resent",
//! whether the request may have reached the host ([`LinkError::is_ambiguous`]).

use super::config::HostConfig;
use super::key_exchange;
use super::message::{self, Decoded, IsoMessage, match_key};
use crate::infra::security::{Security, SecurityError};
use futures_util::{SinkExt, StreamExt};
use posbridge_codecs::Spec;
use posbridge_codecs::framing::{FrameCodec, HostHeader};
use posbridge_hsm::{HsmError, MacAlgorithm};
use rand::Rng;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::codec::Framed;

/// Capacity of each connection task's command queue. Small on purpose: the in-flight limit is
/// the real bound; this only smooths bursts between the caller and the writer.
const COMMAND_QUEUE: usize = 32;

/// F70 network management codes the link sends and answers.
pub mod network_code {
    /// Sign-on.
    pub const SIGN_ON: &str = "001";
    /// Sign-off.
    pub const SIGN_OFF: &str = "002";
    /// Echo test.
    pub const ECHO: &str = "301";
}

/// Why a request was not sent at all: it definitely never left posbridge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NotSentReason {
    /// No connection is up and signed on.
    #[error("no signed-on connection to the host")]
    LinkDown,
    /// Every in-flight slot stayed taken until the deadline.
    #[error("in-flight limit reached")]
    Busy,
    /// A request with the same match key is already waiting for its answer.
    #[error("a request with match key {0} is already in flight")]
    DuplicateKey(String),
    /// The message does not fit the host's dialect (a caller bug or bad data).
    #[error("message does not fit the dialect: {0}")]
    Invalid(String),
    /// The security module could not compute the MAC.
    #[error("MAC generation failed: {0}")]
    Security(String),
    /// The link is shutting down.
    #[error("link is shutting down")]
    ShuttingDown,
    /// The deadline passed while the frame still waited in the send queue: withdrawn unsent.
    #[error("deadline passed before the frame was written; withdrawn")]
    Withdrawn,
}

/// A request that did not produce a trustworthy answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// Never left posbridge: safe to retry or route elsewhere.
    #[error("not sent: {0}")]
    NotSent(NotSentReason),
    /// Sent, and no answer before the deadline: the host may have acted on it.
    #[error("no answer before the deadline")]
    Timeout,
    /// An answer arrived but its MAC did not verify: it cannot be trusted, and the host may have
    /// acted on the request.
    #[error("answer's MAC did not verify")]
    BadMac(IsoMessage),
    /// Sent (or being written), and the connection was lost before the answer.
    #[error("connection lost before the answer")]
    Disconnected,
}

impl LinkError {
    /// True when the host may have received and acted on the request: the caller must not
    /// resend it but reverse it (or advise).
    pub fn is_ambiguous(&self) -> bool {
        !matches!(self, LinkError::NotSent(_))
    }
}

/// What the link's connections are doing, for readiness checks and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkState {
    /// Configured connections.
    pub connections: usize,
    /// Connections with an open socket.
    pub up: usize,
    /// Connections signed on (carrying traffic).
    pub signed_on: usize,
}

/// Why a frame from the host could not be handed to a waiting request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnmatchedReason {
    /// No request with this key is waiting: a late answer (its request timed out), a duplicate
    /// answer, or an answer to something never sent.
    NoPendingRequest,
    /// The waiting request gave up just as its answer arrived.
    Late,
    /// The frame does not decode in the host's dialect.
    Undecodable,
    /// A host-initiated request this link does not handle.
    UnexpectedRequest,
}

/// A frame the link could not deliver: journal it. Its Debug output masks card data.
#[derive(Clone)]
pub struct Unmatched {
    /// Host name.
    pub host: String,
    /// Connection index it came on.
    pub connection: usize,
    /// Why it is unmatched.
    pub reason: UnmatchedReason,
    /// The decoded message, when it decodes.
    pub message: Option<IsoMessage>,
    /// The frame's length as received. The frame itself is not kept: it may hold card data.
    pub frame_len: usize,
}

impl std::fmt::Debug for Unmatched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unmatched")
            .field("host", &self.host)
            .field("connection", &self.connection)
            .field("reason", &self.reason)
            .field("message", &self.message)
            .field("frame_len", &self.frame_len)
            .finish()
    }
}

const DOWN: u8 = 0;
const CONNECTED: u8 = 1;
const SIGNED_ON: u8 = 2;

enum Command {
    /// Write a frame; `written` gets `true` once written, `false` when the write failed. Dropped
    /// unanswered: the frame was never written. The connection writes it only if it can take
    /// the gate from QUEUED to WRITING; a caller whose deadline passes first takes it to
    /// WITHDRAWN, so a request that timed out in the queue is never written after its reversal.
    Send {
        frame: Vec<u8>,
        written: oneshot::Sender<bool>,
        gate: Arc<AtomicU8>,
    },
    /// Close the connection and reconnect (sign-on refused, echo unanswered).
    Reconnect,
}

/// [`Command::Send`]'s gate states.
const GATE_QUEUED: u8 = 0;
const GATE_WRITING: u8 = 1;
const GATE_WITHDRAWN: u8 = 2;

fn take_gate(gate: &AtomicU8, to: u8) -> bool {
    gate.compare_exchange(GATE_QUEUED, to, Ordering::AcqRel, Ordering::Acquire)
        .is_ok()
}

struct Pending {
    id: u64,
    connection: usize,
    reply: oneshot::Sender<Reply>,
}

enum Reply {
    Answer { decoded: Decoded, frame: Vec<u8> },
    Lost,
}

struct Connection {
    commands: mpsc::Sender<Command>,
    status: AtomicU8,
}

struct Inner {
    config: HostConfig,
    spec: Arc<Spec>,
    security: Security,
    host_header: Option<HostHeader>,
    stan: AtomicU32,
    slots: Arc<Semaphore>,
    pending: Mutex<HashMap<String, Pending>>,
    /// Check values of zone keys installed by key changes since start (replays are refused).
    key_history: Mutex<Vec<Vec<u8>>>,
    next_id: AtomicU64,
    connections: Vec<Connection>,
    next_connection: AtomicU32,
    unmatched: mpsc::Sender<Unmatched>,
    closing: AtomicBool,
    stop: watch::Sender<bool>,
    state: watch::Sender<LinkState>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// A handle on one host's link; clone it freely (all clones share the connections). When the
/// last handle is dropped the connections close without a sign-off; call
/// [`HostLink::shutdown`] for an orderly end.
#[derive(Clone)]
pub struct HostLink {
    inner: Arc<Inner>,
    _last_handle: Arc<StopOnDrop>,
}

/// Stops the connection tasks when the last [`HostLink`] handle goes (the tasks themselves hold
/// `Inner`, so its own drop would never run while they do).
struct StopOnDrop(watch::Sender<bool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(true);
    }
}

impl std::fmt::Debug for HostLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostLink")
            .field("host", &self.inner.config.name)
            .field("state", &self.state())
            .finish()
    }
}

/// Why a link could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration is invalid (the message names the key).
    #[error("{0}")]
    Config(String),
    /// The dialect cannot be loaded or framed.
    #[error("dialect: {0}")]
    Dialect(String),
}

impl HostLink {
    /// Starts the link's connection tasks (they connect, sign on and reconnect on their own) and
    /// returns the handle and the channel of unmatched frames. Must run inside a tokio runtime.
    pub fn start(
        config: HostConfig,
        security: Security,
    ) -> Result<(HostLink, mpsc::Receiver<Unmatched>), StartError> {
        config.validate().map_err(StartError::Config)?;
        let spec = Spec::load(&config.dialect).map_err(|e| StartError::Dialect(e.to_string()))?;
        crate::infra::framing::frame_codec(&spec)
            .map_err(|e| StartError::Dialect(e.to_string()))?;
        let host_header = if spec.header.length == HostHeader::LEN {
            Some(
                HostHeader::new(&config.destination_id, &config.source_id)
                    .map_err(|e| StartError::Config(e.to_string()))?,
            )
        } else {
            None
        };
        let (unmatched, unmatched_rx) = mpsc::channel(config.unmatched_capacity);
        let (stop, _) = watch::channel(false);
        let (state, _) = watch::channel(LinkState {
            connections: config.connections,
            ..LinkState::default()
        });
        let mut receivers = Vec::new();
        let mut connections = Vec::new();
        for _ in 0..config.connections {
            let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
            connections.push(Connection {
                commands: tx,
                status: AtomicU8::new(DOWN),
            });
            receivers.push(rx);
        }
        let inner = Arc::new(Inner {
            slots: Arc::new(Semaphore::new(config.max_in_flight)),
            stan: AtomicU32::new(rand::rng().random_range(1..=999_999)),
            config,
            spec: Arc::new(spec),
            security,
            host_header,
            pending: Mutex::new(HashMap::new()),
            key_history: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
            connections,
            next_connection: AtomicU32::new(0),
            unmatched,
            closing: AtomicBool::new(false),
            stop,
            state,
            tasks: Mutex::new(Vec::new()),
        });
        let mut tasks = Vec::new();
        for (index, rx) in receivers.into_iter().enumerate() {
            tasks.push(tokio::spawn(run_connection(Arc::clone(&inner), index, rx)));
        }
        *lock(&inner.tasks) = tasks;
        let guard = Arc::new(StopOnDrop(inner.stop.clone()));
        Ok((
            HostLink {
                inner,
                _last_handle: guard,
            },
            unmatched_rx,
        ))
    }

    /// Sends a request and waits for its answer until `deadline` (measured from the call,
    /// including the wait for an in-flight slot).
    ///
    /// F11 (STAN) is assigned by the link when absent (reserve one with
    /// [`HostLink::next_stan`] to journal it before sending); F7 is set to the current UTC
    /// MMDDhhmmss when absent. The MAC field is computed when the dialect has one and a MAC key
    /// is configured (network management 08xx excepted), and the answer's MAC is verified.
    pub async fn request(
        &self,
        message: IsoMessage,
        deadline: Duration,
    ) -> Result<IsoMessage, LinkError> {
        let outcome = self.request_once(message, deadline).await;
        record_outcome(&self.inner.config.name, &outcome);
        outcome
    }

    async fn request_once(
        &self,
        message: IsoMessage,
        deadline: Duration,
    ) -> Result<IsoMessage, LinkError> {
        let until = Instant::now() + deadline;
        if self.inner.closing.load(Ordering::Acquire) {
            return Err(LinkError::NotSent(NotSentReason::ShuttingDown));
        }
        let permit =
            match tokio::time::timeout_at(until, Arc::clone(&self.inner.slots).acquire_owned())
                .await
            {
                Ok(Ok(permit)) => permit,
                _ => return Err(LinkError::NotSent(NotSentReason::Busy)),
            };
        let connection = self
            .inner
            .pick_connection()
            .ok_or(LinkError::NotSent(NotSentReason::LinkDown))?;
        let outcome = self.inner.exchange(connection, message, until).await;
        drop(permit);
        outcome
    }

    /// Reserves the next STAN of this link (six digits, 000001..=999999, wrapping).
    pub fn next_stan(&self) -> String {
        self.inner.next_stan()
    }

    /// Connections up and signed on.
    pub fn state(&self) -> LinkState {
        *self.inner.state.borrow()
    }

    /// Requests waiting for an answer.
    pub fn in_flight(&self) -> usize {
        self.inner.config.max_in_flight - self.inner.slots.available_permits()
    }

    /// The host's name.
    pub fn name(&self) -> &str {
        &self.inner.config.name
    }

    /// The host's configuration.
    pub fn config(&self) -> &HostConfig {
        &self.inner.config
    }

    /// Waits until at least `connections` connections are signed on; false on timeout.
    pub async fn wait_signed_on(&self, connections: usize, timeout: Duration) -> bool {
        let mut state = self.inner.state.subscribe();
        tokio::time::timeout(timeout, state.wait_for(|s| s.signed_on >= connections))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Signs off every signed-on connection (bounded by `request_timeout_ms`), then closes them
    /// and waits for the connection tasks. New requests are refused from the start.
    pub async fn shutdown(&self) {
        self.inner.closing.store(true, Ordering::Release);
        let deadline = Instant::now() + Duration::from_millis(self.inner.config.request_timeout_ms);
        let mut sign_offs = Vec::new();
        for (index, connection) in self.inner.connections.iter().enumerate() {
            if connection.status.load(Ordering::Acquire) == SIGNED_ON {
                let inner = Arc::clone(&self.inner);
                sign_offs.push(tokio::spawn(async move {
                    let message = inner.network_message(network_code::SIGN_OFF);
                    if let Err(error) = inner.exchange(index, message, deadline).await {
                        tracing::warn!(host = %inner.config.name, connection = index, %error, "sign-off unanswered");
                    }
                }));
            }
        }
        for task in sign_offs {
            let _ = task.await;
        }
        let _ = self.inner.stop.send(true);
        let tasks = std::mem::take(&mut *lock(&self.inner.tasks));
        for task in tasks {
            let _ = task.await;
        }
    }
}

/// Counts requests by host and outcome (`answered`, `not_sent`, `timeout`, `bad_mac`,
/// `disconnected`): the ambiguous ones are the reversals to expect.
fn record_outcome(host: &str, outcome: &Result<IsoMessage, LinkError>) {
    let label = match outcome {
        Ok(_) => "answered",
        Err(LinkError::NotSent(_)) => "not_sent",
        Err(LinkError::Timeout) => "timeout",
        Err(LinkError::BadMac(_)) => "bad_mac",
        Err(LinkError::Disconnected) => "disconnected",
    };
    metrics::counter!("posbridge_upstream_requests_total", "host" => host.to_owned(), "outcome" => label)
        .increment(1);
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned map only means another task panicked mid-update of plain data; keep going.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Inner {
    fn next_stan(&self) -> String {
        let stan = self
            .stan
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| Some(stan_after(s)))
            .unwrap_or(1);
        format!("{stan:06}")
    }

    fn pick_connection(&self) -> Option<usize> {
        let count = self.connections.len();
        let start = self.next_connection.fetch_add(1, Ordering::Relaxed) as usize;
        (0..count)
            .map(|offset| (start + offset) % count)
            .find(|&i| self.connections[i].status.load(Ordering::Acquire) == SIGNED_ON)
    }

    fn set_status(&self, connection: usize, status: u8) {
        self.connections[connection]
            .status
            .store(status, Ordering::Release);
        let (mut up, mut signed_on) = (0, 0);
        for c in &self.connections {
            match c.status.load(Ordering::Acquire) {
                SIGNED_ON => {
                    up += 1;
                    signed_on += 1;
                }
                CONNECTED => up += 1,
                _ => {}
            }
        }
        self.state.send_replace(LinkState {
            connections: self.connections.len(),
            up,
            signed_on,
        });
        metrics::gauge!("posbridge_upstream_connections_signed_on", "host" => self.config.name.clone())
            .set(signed_on as f64);
    }

    fn network_message(&self, code: &str) -> IsoMessage {
        let mut message = IsoMessage::new("0800").with(70, code);
        if let Some(acquirer) = &self.config.acquirer_id {
            message.set(32, acquirer.as_str());
        }
        message
    }

    fn mac_key_for(&self, message: &IsoMessage) -> Option<&str> {
        if message.mti.starts_with("08") || self.spec.mac.is_none() {
            return None;
        }
        self.config.mac_key.as_deref()
    }

    /// The match key of a message. Network management (08xx) always matches on the STAN the
    /// link assigned, whatever `match_fields` says: a per-host key such as the RRN is absent
    /// from 0800s, and sign-ons on several connections would otherwise collide.
    fn key_of(&self, message: &IsoMessage) -> Option<String> {
        if message.mti.starts_with("08") {
            match_key(message, &[11])
        } else {
            match_key(message, &self.config.match_fields)
        }
    }

    fn forget(&self, key: &str, id: u64) {
        let mut pending = lock(&self.pending);
        if pending.get(key).is_some_and(|p| p.id == id) {
            pending.remove(key);
        }
    }

    /// One request/answer on a given connection.
    async fn exchange(
        &self,
        connection: usize,
        mut message: IsoMessage,
        until: Instant,
    ) -> Result<IsoMessage, LinkError> {
        let not_sent = |reason| Err(LinkError::NotSent(reason));
        if !message.has(11) {
            message.set(11, self.next_stan());
        }
        if !message.has(7) {
            message.set(7, transmission_date_time(std::time::SystemTime::now()));
        }
        if !message.is_request() {
            return not_sent(NotSentReason::Invalid(format!(
                "MTI {:?} is not a request or advice",
                message.mti
            )));
        }
        let Some(key) = self.key_of(&message) else {
            return not_sent(NotSentReason::Invalid(format!("MTI {:?}", message.mti)));
        };
        let mac_key = self.mac_key_for(&message);
        let mut wire = match message::encode(
            &self.spec,
            &message,
            mac_key.is_some(),
            self.host_header.as_ref(),
        ) {
            Ok(wire) => wire,
            Err(error) => return not_sent(NotSentReason::Invalid(error.to_string())),
        };
        if let (Some(label), Some(input)) = (mac_key, wire.mac_input()) {
            let mac = self
                .security
                .generate_mac(label.to_owned(), MacAlgorithm::X919, input.to_vec())
                .await
                .map_err(|e| LinkError::NotSent(NotSentReason::Security(e.to_string())))?;
            if let Err(error) = wire.patch_mac(&self.spec, &mac) {
                return not_sent(NotSentReason::Security(error.to_string()));
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply_tx, reply_rx) = oneshot::channel();
        {
            let mut pending = lock(&self.pending);
            if pending.contains_key(&key) {
                return not_sent(NotSentReason::DuplicateKey(key));
            }
            pending.insert(
                key.clone(),
                Pending {
                    id,
                    connection,
                    reply: reply_tx,
                },
            );
        }
        let (written_tx, written_rx) = oneshot::channel();
        let gate = Arc::new(AtomicU8::new(GATE_QUEUED));
        let command = Command::Send {
            frame: wire.bytes,
            written: written_tx,
            gate: Arc::clone(&gate),
        };
        let queued =
            tokio::time::timeout_at(until, self.connections[connection].commands.send(command))
                .await;
        if !matches!(queued, Ok(Ok(()))) {
            self.forget(&key, id);
            return not_sent(NotSentReason::LinkDown);
        }
        match tokio::time::timeout_at(until, written_rx).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => {
                self.forget(&key, id);
                return Err(LinkError::Disconnected);
            }
            Ok(Err(_)) => {
                // The connection task dropped the frame unwritten (its connection went down).
                self.forget(&key, id);
                return not_sent(NotSentReason::LinkDown);
            }
            Err(_) => {
                self.forget(&key, id);
                // Still queued at the deadline: withdrawn, it is never written. Being written
                // right now, it may reach the host: ambiguous.
                if take_gate(&gate, GATE_WITHDRAWN) {
                    return not_sent(NotSentReason::Withdrawn);
                }
                return Err(LinkError::Timeout);
            }
        }
        let (decoded, frame) = match tokio::time::timeout_at(until, reply_rx).await {
            Ok(Ok(Reply::Answer { decoded, frame })) => (decoded, frame),
            Ok(Ok(Reply::Lost)) | Ok(Err(_)) => return Err(LinkError::Disconnected),
            Err(_) => {
                self.forget(&key, id);
                return Err(LinkError::Timeout);
            }
        };
        match mac_key {
            Some(label) => self.verify_answer(label, decoded, &frame).await,
            None => Ok(decoded.message),
        }
    }

    /// Checks an answer's MAC. An answer without one, or whose MAC does not verify, is
    /// [`LinkError::BadMac`] (ambiguous: the sale's reversal stays armed), whatever it says.
    async fn verify_answer(
        &self,
        label: &str,
        decoded: Decoded,
        frame: &[u8],
    ) -> Result<IsoMessage, LinkError> {
        let mac = message::mac_value(&self.spec, &decoded.message).map(<[u8]>::to_vec);
        let covered = decoded.mac_range.clone().and_then(|r| frame.get(r));
        // An answer without a MAC proves nothing, a decline included: believing an unMACed
        // decline would cancel the standby reversal of a sale the host may have approved.
        let (Some(mac), Some(covered)) = (mac, covered) else {
            tracing::warn!(host = %self.config.name, mti = %decoded.message.mti, "answer without a MAC: ambiguous");
            return Err(LinkError::BadMac(decoded.message));
        };
        match self
            .security
            .verify_mac(label.to_owned(), MacAlgorithm::X919, covered.to_vec(), mac)
            .await
        {
            Ok(()) => Ok(decoded.message),
            Err(SecurityError::Hsm(HsmError::MacMismatch)) => {
                tracing::warn!(host = %self.config.name, mti = %decoded.message.mti, stan = decoded.message.text(11).unwrap_or_default(), "answer MAC does not verify");
                Err(LinkError::BadMac(decoded.message))
            }
            Err(error) => {
                tracing::error!(host = %self.config.name, %error, "could not verify an answer's MAC");
                Err(LinkError::BadMac(decoded.message))
            }
        }
    }

    fn unmatched(&self, item: Unmatched) {
        tracing::warn!(
            host = %self.config.name,
            connection = item.connection,
            reason = ?item.reason,
            mti = item.message.as_ref().map(|m| m.mti.as_str()).unwrap_or("?"),
            stan = item.message.as_ref().and_then(|m| m.text(11)).unwrap_or("?"),
            tid = item.message.as_ref().and_then(|m| m.text(41)).unwrap_or("?"),
            rrn = item.message.as_ref().and_then(|m| m.text(37)).unwrap_or("?"),
            code = item.message.as_ref().and_then(|m| m.response_code()).unwrap_or("?"),
            "unmatched message from the host"
        );
        metrics::counter!("posbridge_upstream_unmatched_total", "host" => self.config.name.clone())
            .increment(1);
        if let Err(error) = self.unmatched.try_send(item) {
            tracing::error!(host = %self.config.name, %error, "unmatched channel full or closed: the message above is recorded in this log only");
        }
    }

    /// Routes one inbound frame.
    fn inbound(self: &Arc<Self>, connection: usize, frame: Vec<u8>, own: &mpsc::Sender<Command>) {
        let decoded = match message::decode(&self.spec, &frame) {
            Ok(decoded) => decoded,
            Err(error) => {
                tracing::warn!(host = %self.config.name, %error, "undecodable frame from the host");
                self.unmatched(Unmatched {
                    host: self.config.name.clone(),
                    connection,
                    reason: UnmatchedReason::Undecodable,
                    message: None,
                    frame_len: frame.len(),
                });
                return;
            }
        };
        if decoded.message.is_request() {
            self.host_request(connection, decoded, frame, own);
            return;
        }
        let key = self.key_of(&decoded.message);
        let waiting = key.and_then(|key| lock(&self.pending).remove(&key));
        let reason = match waiting {
            Some(pending) => match pending.reply.send(Reply::Answer {
                decoded,
                frame: frame.clone(),
            }) {
                Ok(()) => return,
                Err(Reply::Answer { decoded, .. }) => {
                    self.unmatched(Unmatched {
                        host: self.config.name.clone(),
                        connection,
                        reason: UnmatchedReason::Late,
                        message: Some(decoded.message),
                        frame_len: frame.len(),
                    });
                    return;
                }
                Err(Reply::Lost) => return,
            },
            None => UnmatchedReason::NoPendingRequest,
        };
        self.unmatched(Unmatched {
            host: self.config.name.clone(),
            connection,
            reason,
            message: Some(decoded.message),
            frame_len: frame.len(),
        });
    }

    /// A request the host sent us: echo and key change are answered, anything else is handed
    /// to the unmatched channel.
    fn host_request(
        self: &Arc<Self>,
        connection: usize,
        decoded: Decoded,
        frame: Vec<u8>,
        own: &mpsc::Sender<Command>,
    ) {
        let request = decoded.message;
        let code = request.text(70).unwrap_or_default().to_owned();
        if request.mti != "0800"
            || ![network_code::ECHO, key_exchange::NETWORK_CODE].contains(&code.as_str())
        {
            self.unmatched(Unmatched {
                host: self.config.name.clone(),
                connection,
                reason: UnmatchedReason::UnexpectedRequest,
                message: Some(request),
                frame_len: frame.len(),
            });
            return;
        }
        let mac = message::mac_value(&self.spec, &request).map(<[u8]>::to_vec);
        let covered = decoded
            .mac_range
            .clone()
            .and_then(|range| frame.get(range).map(<[u8]>::to_vec));
        let inner = Arc::clone(self);
        let own = own.clone();
        tokio::spawn(async move {
            let answer_code = if code == key_exchange::NETWORK_CODE {
                inner.key_change(&request, covered.zip(mac)).await
            } else {
                "00"
            };
            let mut answer = request.response(answer_code);
            answer.remove(48);
            match message::encode(&inner.spec, &answer, false, inner.host_header.as_ref()) {
                Ok(wire) => {
                    let (written, _) = oneshot::channel();
                    let _ = own
                        .send(Command::Send {
                            frame: wire.bytes,
                            written,
                            gate: Arc::new(AtomicU8::new(GATE_QUEUED)),
                        })
                        .await;
                }
                Err(error) => tracing::error!(%error, "could not encode the 0810"),
            }
        });
    }

    /// A host's key change (0800, F70 = 101): accepted only when MACed under the current zone
    /// MAC key (so no one else can rotate, roll back or swap the zone keys), with check values,
    /// one value per purpose, and keys that are neither the current ones nor earlier ones.
    async fn key_change(
        &self,
        request: &IsoMessage,
        mac: Option<(Vec<u8>, Vec<u8>)>,
    ) -> &'static str {
        let host = &self.config.name;
        let Some(zmk) = self.config.zmk.as_deref() else {
            tracing::warn!(%host, "key change refused: no zone master key configured");
            return key_exchange::SYSTEM_ERROR;
        };
        let Some(mac_key) = self.config.mac_key.as_deref() else {
            tracing::warn!(%host, "key change refused: no zone MAC key to authenticate it");
            return key_exchange::MAC_ERROR;
        };
        let Some((covered, value)) = mac else {
            tracing::warn!(%host, "key change refused: not MACed");
            return key_exchange::MAC_ERROR;
        };
        if self
            .security
            .verify_mac(mac_key.to_owned(), MacAlgorithm::X919, covered, value)
            .await
            .is_err()
        {
            tracing::warn!(%host, "key change refused: its MAC does not verify");
            return key_exchange::MAC_ERROR;
        }
        let Some(keys) = request.get(48).and_then(key_exchange::decode) else {
            tracing::warn!(%host, "key change refused: F48 malformed");
            return key_exchange::FORMAT_ERROR;
        };
        let labels = (
            self.config.pin_key.as_deref(),
            self.config.mac_key.as_deref(),
        );
        if let Some(refusal) = self.replayed(&keys, labels).await {
            return refusal;
        }
        let outcome = key_exchange::import(&self.security, zmk, labels, &keys).await;
        if outcome == "00" {
            lock(&self.key_history).extend(keys.iter().map(|k| k.kcv.clone()));
        }
        outcome
    }

    /// A replayed or rolled-back key change: a key equal to the one in use, to one installed
    /// before by a key change on this link (since start), or two purposes sharing one value.
    async fn replayed(
        &self,
        keys: &[key_exchange::WrappedKey],
        labels: (Option<&str>, Option<&str>),
    ) -> Option<&'static str> {
        let host = &self.config.name;
        if keys.windows(2).any(|pair| pair[0].kcv == pair[1].kcv) {
            tracing::warn!(%host, "key change refused: one value for two purposes");
            return Some(key_exchange::FORMAT_ERROR);
        }
        for key in keys {
            let label = match key.usage {
                key_exchange::KeyUsage::Pin => labels.0,
                key_exchange::KeyUsage::Mac => labels.1,
            };
            let current = match label {
                Some(label) => self
                    .security
                    .find_key(label.to_owned())
                    .await
                    .ok()
                    .map(|k| k.kcv),
                None => None,
            };
            let in_use = current.is_some_and(|kcv| kcv.starts_with(&key.kcv));
            let seen = lock(&self.key_history).contains(&key.kcv);
            if in_use || seen {
                tracing::warn!(%host, "key change refused: a replay (the key is in use or was used before)");
                return Some(key_exchange::DUPLICATE);
            }
        }
        None
    }

    fn fail_pending(&self, connection: usize) {
        let lost: Vec<Pending> = {
            let mut pending = lock(&self.pending);
            let keys: Vec<String> = pending
                .iter()
                .filter(|(_, p)| p.connection == connection)
                .map(|(k, _)| k.clone())
                .collect();
            keys.iter().filter_map(|k| pending.remove(k)).collect()
        };
        for pending in lost {
            let _ = pending.reply.send(Reply::Lost);
        }
    }
}

/// The connection task: connect, serve, reconnect with backoff, until the link stops.
async fn run_connection(inner: Arc<Inner>, index: usize, mut commands: mpsc::Receiver<Command>) {
    let own = inner.connections[index].commands.clone();
    let mut stop = inner.stop.subscribe();
    let addr = inner.config.addrs[index % inner.config.addrs.len()].clone();
    let mut backoff = Duration::from_millis(inner.config.backoff_initial_ms);
    let max_backoff = Duration::from_millis(inner.config.backoff_max_ms);
    loop {
        if *stop.borrow() {
            return;
        }
        // Frames queued while the connection was down were never written: refuse them.
        while commands.try_recv().is_ok() {}
        let connect = tokio::time::timeout(
            Duration::from_millis(inner.config.connect_timeout_ms),
            TcpStream::connect(&addr),
        );
        let connected = tokio::select! {
            connected = connect => connected,
            _ = stop.changed() => return,
        };
        match connected {
            Ok(Ok(stream)) => {
                tracing::info!(host = %inner.config.name, connection = index, %addr, "connected");
                backoff = Duration::from_millis(inner.config.backoff_initial_ms);
                let _ = stream.set_nodelay(true);
                serve(&inner, index, stream, &mut commands, &own, &mut stop).await;
                inner.set_status(index, DOWN);
                inner.fail_pending(index);
                tracing::warn!(host = %inner.config.name, connection = index, "connection closed");
            }
            Ok(Err(error)) => {
                tracing::warn!(host = %inner.config.name, connection = index, %addr, %error, "connect failed")
            }
            Err(_) => {
                tracing::warn!(host = %inner.config.name, connection = index, %addr, "connect timed out")
            }
        }
        // Exponential backoff with up to 50 % jitter, so many links do not reconnect in step.
        let jitter = rand::rng().random_range(0..=backoff.as_millis() as u64 / 2);
        let delay = backoff + Duration::from_millis(jitter);
        backoff = (backoff * 2).min(max_backoff);
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                _ = stop.changed() => return,
                // Refuse work while down: dropping the command tells its caller "not sent".
                command = commands.recv() => if command.is_none() { return },
            }
        }
    }
}

/// Serves one connected socket until it fails, the host closes it, or the link stops.
async fn serve(
    inner: &Arc<Inner>,
    index: usize,
    stream: TcpStream,
    commands: &mut mpsc::Receiver<Command>,
    own: &mpsc::Sender<Command>,
    stop: &mut watch::Receiver<bool>,
) {
    let codec: FrameCodec = match crate::infra::framing::frame_codec(&inner.spec) {
        Ok(codec) => codec,
        Err(error) => {
            tracing::error!(%error, "no frame codec");
            return;
        }
    };
    let mut framed = Framed::new(stream, codec);
    // Frames queued while connecting were meant for the previous connection: never written,
    // they are refused (their callers get NotSent) rather than sent before the sign-on.
    while commands.try_recv().is_ok() {}
    inner.set_status(index, CONNECTED);
    spawn_network(inner, index, network_code::SIGN_ON, own.clone());
    let echo_idle = Duration::from_secs(inner.config.echo_idle_secs);
    let write_timeout = Duration::from_millis(inner.config.request_timeout_ms);
    let mut last_activity = Instant::now();
    let mut ticker = tokio::time::interval(if echo_idle.is_zero() {
        Duration::from_secs(3600)
    } else {
        (echo_idle / 2).max(Duration::from_millis(100))
    });
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                Some(Command::Send { frame, written, gate }) => {
                    if !take_gate(&gate, GATE_WRITING) {
                        continue; // withdrawn by its caller at its deadline
                    }
                    // A host that stops reading must not wedge the connection forever.
                    let ok = tokio::time::timeout(write_timeout, framed.send(frame.as_slice()))
                        .await
                        .is_ok_and(|sent| sent.is_ok());
                    let _ = written.send(ok);
                    if !ok {
                        return;
                    }
                    last_activity = Instant::now();
                }
                Some(Command::Reconnect) | None => return,
            },
            frame = framed.next() => match frame {
                Some(Ok(frame)) => {
                    last_activity = Instant::now();
                    inner.inbound(index, frame.to_vec(), own);
                }
                Some(Err(error)) => {
                    tracing::warn!(host = %inner.config.name, connection = index, %error, "read failed");
                    return;
                }
                None => return,
            },
            _ = ticker.tick() => {
                if !echo_idle.is_zero()
                    && last_activity.elapsed() >= echo_idle
                    && inner.connections[index].status.load(Ordering::Acquire) == SIGNED_ON
                {
                    last_activity = Instant::now();
                    spawn_network(inner, index, network_code::ECHO, own.clone());
                }
            },
            _ = stop.changed() => return,
        }
    }
}

/// Sends a sign-on or echo on one connection; a refusal or no answer closes the connection so
/// that it reconnects (and signs on again) with backoff.
fn spawn_network(inner: &Arc<Inner>, index: usize, code: &'static str, own: mpsc::Sender<Command>) {
    let inner = Arc::clone(inner);
    tokio::spawn(async move {
        let until = Instant::now() + Duration::from_millis(inner.config.request_timeout_ms);
        let message = inner.network_message(code);
        match inner.exchange(index, message, until).await {
            Ok(answer) if answer.response_code() == Some("00") => {
                if code == network_code::SIGN_ON {
                    tracing::info!(host = %inner.config.name, connection = index, "signed on");
                    inner.set_status(index, SIGNED_ON);
                }
            }
            Ok(answer) => {
                tracing::warn!(host = %inner.config.name, connection = index, code, answer = answer.response_code().unwrap_or("none"), "network message refused; reconnecting");
                let _ = own.send(Command::Reconnect).await;
            }
            Err(LinkError::NotSent(_)) | Err(LinkError::Disconnected) => {}
            Err(error) => {
                tracing::warn!(host = %inner.config.name, connection = index, code, %error, "network message failed; reconnecting");
                let _ = own.send(Command::Reconnect).await;
            }
        }
    });
}

/// The STAN after `stan`: 000001..=999999, wrapping (000000 is never used).
fn stan_after(stan: u32) -> u32 {
    if stan >= 999_999 { 1 } else { stan + 1 }
}

/// F7: UTC transmission date and time, MMDDhhmmss.
pub fn transmission_date_time(now: std::time::SystemTime) -> String {
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(0))
        .unwrap_or(0);
    posbridge_codecs::calendar::Civil::from_unix_seconds(secs)
        .map(|c| c.mmddhhmmss())
        .unwrap_or_else(|| "0101000000".to_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn transmission_time_is_utc_mmddhhmmss() {
        // 2026-11-26 05:50:06 UTC
        let at = std::time::UNIX_EPOCH + Duration::from_secs(1_795_672_206);
        assert_eq!(transmission_date_time(at), "1126055006");
        let leap = std::time::UNIX_EPOCH + Duration::from_secs(1_709_251_199);
        assert_eq!(transmission_date_time(leap), "0229235959");
    }

    #[test]
    fn handles_are_shareable_across_tasks() {
        fn shareable<T: Clone + Send + Sync + 'static>() {}
        shareable::<HostLink>();
        fn sendable<T: Send + 'static>() {}
        sendable::<LinkError>();
        sendable::<Unmatched>();
    }

    #[test]
    fn stan_wraps_from_999999_to_000001() {
        assert_eq!(stan_after(1), 2);
        assert_eq!(stan_after(999_998), 999_999);
        assert_eq!(stan_after(999_999), 1);
    }

    #[test]
    fn only_not_sent_is_unambiguous() {
        assert!(!LinkError::NotSent(NotSentReason::Busy).is_ambiguous());
        assert!(LinkError::Timeout.is_ambiguous());
        assert!(LinkError::Disconnected.is_ambiguous());
        assert!(LinkError::BadMac(IsoMessage::new("0210")).is_ambiguous());
    }
}
