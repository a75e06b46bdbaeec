//! Wakes the requests a terminal holds open (result query, held sale) when their order changes.
//!
//! Changes made by this gateway wake its waiters directly; changes made by another gateway on the
//! same PostgreSQL journal arrive as notifications (`changed_elsewhere`). Notifications sent while
//! the listening connection was down are lost, so when it is listening again every waiter
//! re-reads its order at once (`resumed`); a waiter also re-reads on its periodic interval, the
//! last safety net.
//!
//! A change made here hands its waiters the order as committed ([`OrderNotifier::changed_to`]),
//! so they need not read it back; a change learnt any other way makes them read it. Every change
//! also moves a sequence number ([`OrderNotifier::sequence`]): a waiter that read its order
//! before subscribing trusts that read only if the number has not moved since.

use crate::domain::order::Order;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;
use tokio::sync::futures::Notified;

/// What the waiters on one order share: their wake-up and, when the last change known here was
/// made by this gateway, the order as it committed it.
#[derive(Debug, Default)]
pub struct Watch {
    notify: Notify,
    latest: Mutex<Option<Order>>,
}

impl Watch {
    /// A wake-up for the next change (enable it before reading the order).
    pub fn notified(&self) -> Notified<'_> {
        self.notify.notified()
    }

    /// The order as this gateway committed it, if the last change known here was its own.
    pub fn latest(&self) -> Option<Order> {
        self.latest
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn wake(&self, order: Option<&Order>) {
        *self
            .latest
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = order.cloned();
        self.notify.notify_waiters();
    }
}

/// Order-change notifications keyed by order id.
#[derive(Debug, Default)]
pub struct OrderNotifier {
    waiters: Mutex<HashMap<String, Arc<Watch>>>,
    /// Moves with every change learnt, of any order.
    sequence: AtomicU64,
    /// Changes learnt from other gateways (PostgreSQL notifications), for tests and metrics.
    remote: std::sync::atomic::AtomicU64,
    /// Times the listening connection (re)started, for tests and metrics.
    resumptions: std::sync::atomic::AtomicU64,
}

impl OrderNotifier {
    /// The notification handle for an order; keep it while waiting.
    pub fn subscribe(&self, order_id: &str) -> Arc<Watch> {
        let mut waiters = self
            .waiters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Arc::clone(waiters.entry(order_id.to_owned()).or_default())
    }

    /// An order changed in the shared journal, as its PostgreSQL notification says (this
    /// gateway's own changes are announced too, and waking twice is harmless).
    pub fn changed_elsewhere(&self, order_id: &str) {
        self.remote.fetch_add(1, Ordering::Relaxed);
        self.changed(order_id);
    }

    /// The number of changes learnt so far (of any order). A read of an order taken after this
    /// number was `n` is still current while the number is `n` (and a waiter is subscribed).
    pub fn sequence(&self) -> u64 {
        self.sequence.load(Ordering::SeqCst)
    }

    /// How many journal notifications this gateway has received.
    pub fn changes_from_elsewhere(&self) -> u64 {
        self.remote.load(Ordering::Relaxed)
    }

    /// The journal's notifications flow again (first connection, or a reconnection after a
    /// loss during which some may have been missed): every waiter re-reads its order now.
    pub fn resumed(&self) {
        self.resumptions.fetch_add(1, Ordering::Relaxed);
        self.sequence.fetch_add(1, Ordering::SeqCst);
        let waiters = self
            .waiters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for watch in waiters.values() {
            watch.wake(None);
        }
    }

    /// How many times the journal's notifications started flowing.
    pub fn resumptions(&self) -> u64 {
        self.resumptions.load(Ordering::Relaxed)
    }

    /// Orders someone is waiting on.
    pub fn waiting(&self) -> usize {
        self.waiters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
    }

    /// Wakes everyone waiting on the order, to read it.
    pub fn changed(&self, order_id: &str) {
        self.wake(order_id, None);
    }

    /// Wakes everyone waiting on the order with the order as this gateway just committed it.
    pub fn changed_to(&self, order: &Order) {
        self.wake(&order.order_id, Some(order));
    }

    fn wake(&self, order_id: &str, order: Option<&Order>) {
        self.sequence.fetch_add(1, Ordering::SeqCst);
        let waiters = self
            .waiters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(watch) = waiters.get(order_id) {
            watch.wake(order);
        }
    }

    /// Forgets an order nobody waits for any more (bounded memory).
    pub fn release(&self, order_id: &str, handle: Arc<Watch>) {
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
