//! The simulator's TCP side: 2-byte big-endian length frames, a fixed-length message header
//! echoed back, one command per frame, a task per connection, frames bounded.

use super::commands::{self, Settings};
use posbridge_hsm::payshield::wire::{MAX_FRAME, response_code};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A simulator: its settings and header length.
#[derive(Debug, Clone)]
pub struct Simulator {
    /// The message header length the "HSM" is configured for.
    pub header_len: usize,
    /// Command behaviour.
    pub settings: Settings,
}

impl Simulator {
    /// Serves connections until `shutdown` completes.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> std::io::Result<()> {
        let this = Arc::new(self);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                accepted = listener.accept() => {
                    let (stream, peer) = accepted?;
                    let this = Arc::clone(&this);
                    tokio::spawn(async move {
                        if let Err(error) = this.connection(stream).await {
                            tracing::debug!(%peer, %error, "payShield simulator connection ended");
                        }
                    });
                }
            }
        }
    }

    async fn connection(&self, mut stream: TcpStream) -> std::io::Result<()> {
        stream.set_nodelay(true)?;
        loop {
            let mut prefix = [0u8; 2];
            match stream.read_exact(&mut prefix).await {
                Ok(_) => {}
                Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(error) => return Err(error),
            }
            let len = usize::from(u16::from_be_bytes(prefix));
            if len > MAX_FRAME {
                return Err(std::io::Error::other("frame over the limit"));
            }
            let mut body = zeroize::Zeroizing::new(vec![0u8; len]);
            stream.read_exact(&mut body).await?;
            let Some(reply) = self.reply(&body) else {
                // Too short for a header and a command code: a real device drops it.
                continue;
            };
            stream.write_all(&reply).await?;
        }
    }

    /// The framed reply to one frame body, or `None` for a body without a command code.
    pub fn reply(&self, body: &[u8]) -> Option<Vec<u8>> {
        if body.len() < self.header_len + 2 {
            return None;
        }
        let (header, rest) = body.split_at(self.header_len);
        let command = [rest[0], rest[1]];
        let (error, fields) = commands::answer(&self.settings, &command, &rest[2..]);
        let fields = zeroize::Zeroizing::new(fields);
        let response = response_code(&command);
        let body_len = header.len() + 4 + fields.len();
        let mut out = Vec::with_capacity(2 + body_len);
        out.extend_from_slice(&u16::try_from(body_len).ok()?.to_be_bytes());
        out.extend_from_slice(header);
        out.extend_from_slice(&response);
        out.extend_from_slice(error.as_bytes());
        out.extend_from_slice(&fields);
        Some(out)
    }
}

/// Runs a simulator on a loopback port in a thread of its own (tests and the sync callers of
/// the security module; callable from inside a runtime too); it stops when the process ends.
pub fn spawn_background(simulator: Simulator) -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let address = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("payshield-sim".into())
        .spawn(move || {
            runtime.block_on(async move {
                if let Ok(listener) = TcpListener::from_std(listener) {
                    let _ = simulator.serve(listener, std::future::pending()).await;
                }
            });
        })?;
    Ok(address)
}
