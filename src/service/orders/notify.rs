//! Wakes the requests a terminal holds open (result query, held sale) when their order changes.
//!
//! Changes made by this gateway wake its waiters directly; changes made by another gateway on the
//! same PostgreSQL journal arrive as notifications (`changed_elsewhere`). Notifications sent while
//! the listening connection was down are lost, so when it is listening again every waiter
//! re-reads its order at once (`resumed`); a waiter also re-reads on its periodic interval, the
//! last safety net.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Order-change notifications keyed by order id.
#[derive(Debug, Default)]
pub struct OrderNotifier {
    waiters: Mutex<HashMap<String, Arc<Notify>>>,
    /// Changes learnt from other gateways (PostgreSQL notifications), for tests and metrics.
    remote: std::sync::atomic::AtomicU64,
    /// Times the listening connection (re)started, for tests and metrics.
    resumptions: std::sync::atomic::AtomicU64,
}

impl OrderNotifier {
    /// The notification handle for an order; keep it while waiting.
    pub fn subscribe(&self, order_id: &str) -> Arc<Notify> {
        let mut waiters = self
            .waiters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Arc::clone(waiters.entry(order_id.to_owned()).or_default())
    }

    /// An order changed in the shared journal, as its PostgreSQL notification says (this
    /// gateway's own changes are announced too, and waking twice is harmless).
    pub fn changed_elsewhere(&self, order_id: &str) {
        self.remote
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.changed(order_id);
    }

    /// How many journal notifications this gateway has received.
    pub fn changes_from_elsewhere(&self) -> u64 {
        self.remote.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The journal's notifications flow again (first connection, or a reconnection after a
    /// loss during which some may have been missed): every waiter re-reads its order now.
    pub fn resumed(&self) {
        self.resumptions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let waiters = self
            .waiters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for notify in waiters.values() {
            notify.notify_waiters();
        }
    }

    /// How many times the journal's notifications started flowing.
    pub fn resumptions(&self) -> u64 {
        self.resumptions.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Orders someone is waiting on.
    pub fn waiting(&self) -> usize {
        self.waiters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
    }

    /// Wakes everyone waiting on the order.
    pub fn changed(&self, order_id: &str) {
        let waiters = self
            .waiters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(notify) = waiters.get(order_id) {
            notify.notify_waiters();
        }
    }

    /// Forgets an order nobody waits for any more (bounded memory).
    pub fn release(&self, order_id: &str, handle: Arc<Notify>) {
        let mut waiters = self
            .waiters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Two references: the map's and the caller's; nobody else waits.
        if Arc::strong_count(&handle) <= 2 {
            waiters.remove(order_id);
        }
    }
}
