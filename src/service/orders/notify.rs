//! Wakes the requests a terminal holds open (result query, held sale) when their order changes.
//!
//! In-process only: a waiter also re-reads the journal on a short interval, so a change made by
//! another posbridge process on the same database is seen too, just later.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Order-change notifications keyed by order id.
#[derive(Debug, Default)]
pub struct OrderNotifier {
    waiters: Mutex<HashMap<String, Arc<Notify>>>,
    /// Changes learnt from other gateways (PostgreSQL notifications), for tests and metrics.
    remote: std::sync::atomic::AtomicU64,
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
