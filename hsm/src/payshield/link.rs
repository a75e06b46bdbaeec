//! The TCP link to the HSM: a small pool of connections, each carrying one command at a time.
//!
//! A caller takes a connection (waiting for one when all are busy), sends one frame, reads one
//! frame back and returns the connection. Connections are opened lazily with a connect timeout
//! and every read and write has a timeout; a connection that failed or timed out is dropped, not
//! returned, so a late answer can never be read as the answer to the next command. A command
//! whose write failed on a connection that had been idle in the pool is sent once more on a new
//! connection (the HSM cannot have seen it); one that failed after it was written is not resent.

use super::wire::{self, MAX_FRAME, Response};
use crate::error::{HsmError, Result};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// Where and how to reach the HSM.
#[derive(Debug, Clone)]
pub struct LinkOptions {
    /// `HOST:PORT` of the HSM's host port.
    pub address: String,
    /// The message header the HSM is configured for (its length is the HSM's header length).
    pub header: Vec<u8>,
    /// Number of connections (1 to [`crate::config::MAX_POOL_SIZE`]).
    pub pool_size: usize,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Read and write timeout of one command.
    pub read_timeout: Duration,
}

struct Slots {
    idle: Vec<TcpStream>,
    /// Connections that exist (idle or lent out).
    open: usize,
}

/// The pool of connections.
pub struct Link {
    options: LinkOptions,
    slots: Mutex<Slots>,
    freed: Condvar,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Link({}, {} connections)",
            self.options.address, self.options.pool_size
        )
    }
}

/// A connection lent out; returned to the pool only when the command completed cleanly.
struct Lent<'a> {
    link: &'a Link,
    stream: Option<TcpStream>,
    reused: bool,
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        let mut slots = self.link.lock();
        match self.stream.take() {
            Some(stream) => slots.idle.push(stream),
            None => slots.open -= 1,
        }
        drop(slots);
        self.link.freed.notify_one();
    }
}

impl Link {
    /// A pool that connects on first use.
    pub fn new(options: LinkOptions) -> Result<Self> {
        if options.pool_size == 0 || options.pool_size > crate::config::MAX_POOL_SIZE {
            return Err(HsmError::Config(format!(
                "hsm.pool_size must be 1 to {}",
                crate::config::MAX_POOL_SIZE
            )));
        }
        if options.header.len() > 64 || !options.header.iter().all(u8::is_ascii_graphic) {
            return Err(HsmError::Config(
                "hsm.header must be at most 64 printable ASCII characters".into(),
            ));
        }
        Ok(Self {
            options,
            slots: Mutex::new(Slots {
                idle: Vec::new(),
                open: 0,
            }),
            freed: Condvar::new(),
        })
    }

    /// The configured address.
    pub fn address(&self) -> &str {
        &self.options.address
    }

    /// The configured number of connections.
    pub fn size(&self) -> usize {
        self.options.pool_size
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        // The slot counters are updated in single statements; a poisoned lock is consistent.
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn connect(&self) -> Result<TcpStream> {
        let addresses: Vec<SocketAddr> = self
            .options
            .address
            .to_socket_addrs()
            .map_err(|error| {
                HsmError::Config(format!("hsm.address {:?}: {error}", self.options.address))
            })?
            .collect();
        let mut last = None;
        for address in addresses {
            match TcpStream::connect_timeout(&address, self.options.connect_timeout) {
                Ok(stream) => {
                    let timeout = Some(self.options.read_timeout);
                    let set = stream
                        .set_read_timeout(timeout)
                        .and_then(|()| stream.set_write_timeout(timeout))
                        .and_then(|()| stream.set_nodelay(true));
                    set.map_err(|error| HsmError::Link(format!("{address}: {error}")))?;
                    return Ok(stream);
                }
                Err(error) => last = Some(format!("connect {address}: {error}")),
            }
        }
        Err(HsmError::Link(last.unwrap_or_else(|| {
            format!("{} resolves to no address", self.options.address)
        })))
    }

    /// Takes an idle connection, opens a new one while fewer than `pool_size` exist, or waits.
    fn take(&self) -> Result<Lent<'_>> {
        let mut slots = self.lock();
        loop {
            if let Some(stream) = slots.idle.pop() {
                return Ok(Lent {
                    link: self,
                    stream: Some(stream),
                    reused: true,
                });
            }
            if slots.open < self.options.pool_size {
                slots.open += 1;
                drop(slots);
                // Counted before connecting so concurrent callers cannot exceed the pool; a
                // failed connect gives the slot back through Lent's drop.
                let mut lent = Lent {
                    link: self,
                    stream: None,
                    reused: false,
                };
                lent.stream = Some(self.connect()?);
                return Ok(lent);
            }
            slots = self
                .freed
                .wait(slots)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    /// Sends one command and returns its checked response (header, response code and error code
    /// format checked; the error code's meaning is the caller's).
    pub fn call(&self, command: &[u8; 2], fields: &[u8]) -> Result<Response> {
        // The frame may carry a clear PIN (BA) or a PIN block: zeroised when dropped.
        let frame = zeroize::Zeroizing::new(wire::frame(&self.options.header, command, fields)?);
        let mut lent = self.take()?;
        let outcome = exchange(&mut lent, &frame);
        let body = match outcome {
            Ok(body) => body,
            Err(Failure::BeforeSend(error)) if lent.reused => {
                // An idle connection the HSM (or a firewall) had closed: the command never left.
                tracing::debug!(%error, "payShield connection was closed while idle; reconnecting");
                lent.stream = None;
                drop(lent);
                let mut fresh = self.take()?;
                match exchange(&mut fresh, &frame) {
                    Ok(body) => body,
                    Err(failure) => {
                        fresh.stream = None;
                        return Err(failure.into_error(&self.options.address));
                    }
                }
            }
            Err(failure) => {
                lent.stream = None;
                return Err(failure.into_error(&self.options.address));
            }
        };
        wire::parse_response(&body, &self.options.header, command)
    }
}

enum Failure {
    /// Nothing of the command reached the socket, or the peer had closed it before.
    BeforeSend(std::io::Error),
    /// The command may have reached the HSM.
    AfterSend(String),
}

impl Failure {
    fn into_error(self, address: &str) -> HsmError {
        match self {
            Failure::BeforeSend(error) => HsmError::Link(format!("{address}: {error}")),
            Failure::AfterSend(message) => HsmError::Link(format!("{address}: {message}")),
        }
    }
}

fn exchange(
    lent: &mut Lent<'_>,
    frame: &[u8],
) -> std::result::Result<zeroize::Zeroizing<Vec<u8>>, Failure> {
    let Some(stream) = lent.stream.as_mut() else {
        return Err(Failure::AfterSend("no connection".into()));
    };
    stream.write_all(frame).map_err(Failure::BeforeSend)?;
    let mut prefix = [0u8; 2];
    if let Err(error) = stream.read_exact(&mut prefix) {
        // A closed idle connection shows as EOF or reset on the first read, with no answer.
        return Err(
            if lent.reused
                && matches!(
                    error.kind(),
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
                )
            {
                Failure::BeforeSend(error)
            } else {
                Failure::AfterSend(format!("reading the response: {error}"))
            },
        );
    }
    let len = usize::from(u16::from_be_bytes(prefix));
    if len > MAX_FRAME {
        return Err(Failure::AfterSend(format!(
            "response frame of {len} bytes is over the {MAX_FRAME}-byte limit"
        )));
    }
    let mut body = zeroize::Zeroizing::new(vec![0u8; len]);
    stream
        .read_exact(&mut body)
        .map_err(|error| Failure::AfterSend(format!("reading the response: {error}")))?;
    Ok(body)
}
