//! The terminal listener: one task per connection, a bounded number of connections (a permit
//! is taken before accept, so excess terminals wait in the kernel's backlog, not in memory),
//! read and idle timeouts, and a graceful stop that lets the request in progress finish.
//!
//! A connection handles one request at a time, as POS terminals send them. While a request is
//! held (result query, sale with a terminal-made code), the connection keeps reading: if the
//! terminal goes away, its unpaid order is cancelled; a message that arrives meanwhile (say, a
//! 0400 for that voucher) is handled right after.

use super::protocol::{self, Hold};
use crate::infra::framing::frame_codec;
use crate::service::Gateway;
use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use posbridge_codecs::Spec;
use posbridge_codecs::framing::FrameCodec;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_util::codec::Framed;

/// Serves terminals until `stop` turns true, then waits (bounded) for connections to finish.
pub async fn serve(
    gateway: Gateway,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let spec = Arc::new(Spec::load(&gateway.config.terminal.dialect)?);
    frame_codec(&spec)?;
    let permits = Arc::new(Semaphore::new(gateway.config.terminal.max_connections));
    let open = Arc::new(AtomicUsize::new(0));
    let per_address = PerAddress::new(gateway.config.terminal.max_connections_per_address);
    let mut connections = tokio::task::JoinSet::new();
    tracing::info!(addr = %listener.local_addr()?, dialect = %spec.name, "terminal listener ready");
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => permit?,
            _ = stop.changed() => break,
        };
        let (socket, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let Some(slot) = per_address.take(peer.ip()) else {
            tracing::warn!(%peer, limit = gateway.config.terminal.max_connections_per_address, "too many connections from one address: closed");
            continue;
        };
        let _ = socket.set_nodelay(true);
        let (gateway, spec, stop, open) = (
            gateway.clone(),
            Arc::clone(&spec),
            stop.clone(),
            Arc::clone(&open),
        );
        connections.spawn(async move {
            let _slot = slot;
            crate::infra::metrics::set_terminal_connections(
                open.fetch_add(1, Ordering::Relaxed) + 1,
            );
            if let Err(error) = connection(&gateway, &spec, socket, stop).await {
                tracing::debug!(%peer, %error, "terminal connection ended");
            }
            crate::infra::metrics::set_terminal_connections(
                open.fetch_sub(1, Ordering::Relaxed).saturating_sub(1),
            );
            drop(permit);
        });
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    let grace = Duration::from_secs(gateway.config.terminal.shutdown_grace_secs);
    if tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        tracing::warn!("shutdown grace period over; closing remaining terminal connections");
        connections.shutdown().await;
    }
    Ok(())
}

async fn connection(
    gateway: &Gateway,
    spec: &Spec,
    socket: TcpStream,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut framed = Framed::new(socket, frame_codec(spec)?);
    let limits = &gateway.config.terminal;
    let idle = Duration::from_secs(limits.idle_timeout_secs);
    let read_timeout = Duration::from_secs(limits.read_timeout_secs);
    let write_timeout = Duration::from_secs(limits.write_timeout_secs);
    let mut pending: Option<BytesMut> = None;
    loop {
        let frame = match pending.take() {
            Some(frame) => frame,
            None => tokio::select! {
                next = next_frame(&mut framed, idle, read_timeout) => match next? {
                    Some(frame) => frame,
                    None => return Ok(()),
                },
                // Stop between requests only.
                _ = stop.changed() => return Ok(()),
            },
        };
        let outcome = protocol::handle(gateway, spec, &frame).await;
        if let Some(response) = outcome.response {
            send_bounded(&mut framed, &response, write_timeout).await?;
        }
        if outcome.close {
            return Ok(());
        }
        if let Some(hold) = outcome.hold {
            match hold_open(gateway, spec, &mut framed, hold, &mut stop).await? {
                HoldEnd::Answered(next) => pending = next,
                HoldEnd::TerminalGone => return Ok(()),
            }
        }
    }
}

enum HoldEnd {
    Answered(Option<BytesMut>),
    TerminalGone,
}

/// Waits for the held order to become final (or the hold time, or shutdown), watching the
/// socket: a terminal that disconnects cancels its unpaid order.
async fn hold_open(
    gateway: &Gateway,
    spec: &Spec,
    framed: &mut Framed<TcpStream, FrameCodec>,
    hold: Hold,
    stop: &mut watch::Receiver<bool>,
) -> anyhow::Result<HoldEnd> {
    let hold_for = Duration::from_secs(gateway.config.terminal.hold_secs);
    let order_id = hold.order.order.order_id.clone();
    let wait = gateway.orders.wait_final_after(hold.order, hold_for);
    tokio::pin!(wait);
    let mut early: Option<BytesMut> = None;
    let order = loop {
        tokio::select! {
            order = &mut wait => break order.ok().flatten(),
            next = framed.next(), if early.is_none() => match next {
                Some(Ok(frame)) => early = Some(frame),
                Some(Err(_)) | None => {
                    match gateway.orders.cancel(&order_id, "terminal disconnected while waiting").await {
                        Ok(Some(order)) => tracing::info!(order_id = %order.order_id, state = %order.state, "terminal gone during hold"),
                        Ok(None) => {}
                        Err(error) => tracing::error!(%error, "could not cancel the order of a departed terminal"),
                    }
                    return Ok(HoldEnd::TerminalGone);
                }
            },
            _ = stop.changed() => break gateway.orders.order(&order_id).await.ok().flatten(),
        }
    };
    if let Some(response) =
        protocol::answer_hold(gateway, spec, &hold.request, order.as_ref()).await
    {
        let write_timeout = Duration::from_secs(gateway.config.terminal.write_timeout_secs);
        send_bounded(framed, &response, write_timeout).await?;
    }
    Ok(HoldEnd::Answered(early))
}

/// The next frame: silence before it may last `idle`; once its first byte has arrived, the
/// whole frame must be in within `read_timeout` (a half-sent frame is not held for the idle
/// timeout). `None` when the terminal closed the connection between frames.
async fn next_frame(
    framed: &mut Framed<TcpStream, FrameCodec>,
    idle: Duration,
    read_timeout: Duration,
) -> anyhow::Result<Option<BytesMut>> {
    if framed.read_buffer().is_empty() {
        // Wait for the request's first byte (or the end of the stream). A peek, because a
        // readiness wait (`readable`) may return with nothing to read: the read timeout below
        // would then run from the start of the silence and close an idle terminal early.
        let mut first = [0u8; 1];
        tokio::time::timeout(idle, framed.get_ref().peek(&mut first))
            .await
            .map_err(|_| anyhow::anyhow!("idle timeout"))??;
    }
    match tokio::time::timeout(read_timeout, framed.next()).await {
        Ok(Some(frame)) => Ok(Some(frame?)),
        Ok(None) => Ok(None),
        Err(_) => {
            anyhow::bail!("read timeout: frame not complete {read_timeout:?} after its first byte")
        }
    }
}

/// Writes an answer; a terminal that does not take it within `write_timeout` is dropped.
async fn send_bounded(
    framed: &mut Framed<TcpStream, FrameCodec>,
    response: &[u8],
    write_timeout: Duration,
) -> anyhow::Result<()> {
    tokio::time::timeout(write_timeout, framed.send(response))
        .await
        .map_err(|_| anyhow::anyhow!("write timeout"))??;
    Ok(())
}

/// Connections per peer address, bounded: a slot is taken at accept and given back on drop.
#[derive(Clone)]
struct PerAddress {
    limit: usize,
    open: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
}

impl PerAddress {
    fn new(limit: usize) -> PerAddress {
        PerAddress {
            limit,
            open: Arc::default(),
        }
    }

    fn take(&self, ip: std::net::IpAddr) -> Option<AddressSlot> {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = open.entry(ip).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            owner: self.clone(),
            ip,
        })
    }
}

/// One connection's place in its address's count.
struct AddressSlot {
    owner: PerAddress,
    ip: std::net::IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self
            .owner
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}
