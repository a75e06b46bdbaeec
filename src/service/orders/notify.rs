//! Wakes the requests a terminal holds open (result query, held sale) when their order changes.
//!
//! Changes made by this gateway wake its waiters directly, from the journal's store after each
//! commit that announced them (whichever code committed it); changes made by another gateway on
//! the same PostgreSQL journal arrive as notifications (`changed_elsewhere`), and this gateway's
//! own announcements are not heard again. Notifications sent while
//! the listening connection was down are lost, so when it is listening again every waiter
//! re-reads its order at once (`resumed`); a waiter also re-reads on its periodic interval, the
//! last safety net.
//!
//! A change made here hands its waiters the order as committed ([`OrderNotifier::changed_to`]),
//! so they need not read it back; a change learnt any other way makes them read it, except that
//! a final order this gateway committed is kept (a final order ends every wait). Every change also moves a sequence number
//! ([`OrderNotifier::sequence`]) and is remembered among the last [`RECENT`] changes: a waiter
//! that read its order before subscribing trusts that read if its order is not among the changes
//! learnt since ([`OrderNotifier::changed_since`]), whatever other orders changed meanwhile.

use crate::domain::order::Order;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
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

    /// A change learnt from the journal's notification: the waiters read the order, unless this
    /// gateway committed it final (a final order ends every wait).
    fn wake_to_read(&self) {
        let mut latest = self
            .latest
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !latest
            .as_ref()
            .is_some_and(|order| order.state().is_final())
        {
            *latest = None;
        }
        drop(latest);
        self.notify.notify_waiters();
    }
}

/// How many of the last changes [`OrderNotifier::changed_since`] remembers; a read older than
/// that many changes is not trusted.
pub const RECENT: usize = 4096;

/// The waiters and the changes learnt, under one lock so that a change and its record are seen
/// together.
struct State {
    waiters: HashMap<String, Arc<Watch>>,
    /// Moves with every change learnt, of any order.
    sequence: u64,
    /// The hash of the order changed at sequence `n`, at `n % RECENT`.
    recent: Box<[u64]>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            waiters: HashMap::new(),
            sequence: 0,
            recent: vec![0; RECENT].into_boxed_slice(),
        }
    }
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("waiting", &self.waiters.len())
            .field("sequence", &self.sequence)
            .finish_non_exhaustive()
    }
}

impl State {
    fn record(&mut self, order_id: &str) {
        let slot = (self.sequence % RECENT as u64) as usize;
        self.recent[slot] = order_hash(order_id);
        self.sequence += 1;
    }
}

/// A fixed-key hash of an order id: two ids with the same hash only cost a needless read.
fn order_hash(order_id: &str) -> u64 {
    BuildHasherDefault::<DefaultHasher>::default().hash_one(order_id)
}

/// Order-change notifications keyed by order id.
#[derive(Debug, Default)]
pub struct OrderNotifier {
    state: Mutex<State>,
    /// Changes learnt from other gateways (PostgreSQL notifications), for tests and metrics.
    remote: AtomicU64,
    /// Times the listening connection (re)started, for tests and metrics.
    resumptions: AtomicU64,
}

impl OrderNotifier {
    /// The notification handle for an order; keep it while waiting.
    pub fn subscribe(&self, order_id: &str) -> Arc<Watch> {
        Arc::clone(self.state().waiters.entry(order_id.to_owned()).or_default())
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// An order changed in the shared journal, as another gateway's PostgreSQL notification
    /// says.
    pub fn changed_elsewhere(&self, order_id: &str) {
        self.remote.fetch_add(1, Ordering::Relaxed);
        let mut state = self.state();
        state.record(order_id);
        if let Some(watch) = state.waiters.get(order_id) {
            watch.wake_to_read();
        }
    }

    /// The number of changes learnt so far (of any order), to take before reading an order for
    /// [`OrderNotifier::changed_since`].
    pub fn sequence(&self) -> u64 {
        self.state().sequence
    }

    /// Whether a change of the order may have been learnt since the sequence number was
    /// `sequence`: false only when it certainly was not (its id is not among the changes
    /// recorded since), so a read of the order taken after `sequence` is still current while
    /// a waiter is subscribed.
    pub fn changed_since(&self, order_id: &str, sequence: u64) -> bool {
        let state = self.state();
        let since = state.sequence.saturating_sub(sequence);
        if sequence > state.sequence || since > RECENT as u64 {
            return true;
        }
        let hash = order_hash(order_id);
        (sequence..state.sequence).any(|n| state.recent[(n % RECENT as u64) as usize] == hash)
    }

    /// How many journal notifications this gateway has received.
    pub fn changes_from_elsewhere(&self) -> u64 {
        self.remote.load(Ordering::Relaxed)
    }

    /// The journal's notifications flow again (first connection, or a reconnection after a
    /// loss during which some may have been missed): every waiter re-reads its order now.
    pub fn resumed(&self) {
        self.resumptions.fetch_add(1, Ordering::Relaxed);
        let mut state = self.state();
        // Further than RECENT: every read taken before now counts as changed.
        state.sequence += RECENT as u64 + 1;
        for watch in state.waiters.values() {
            watch.wake(None);
        }
    }

    /// How many times the journal's notifications started flowing.
    pub fn resumptions(&self) -> u64 {
        self.resumptions.load(Ordering::Relaxed)
    }

    /// Orders someone is waiting on.
    pub fn waiting(&self) -> usize {
        self.state().waiters.len()
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
        let mut state = self.state();
        state.record(order_id);
        if let Some(watch) = state.waiters.get(order_id) {
            watch.wake(order);
        }
    }

    /// Forgets an order nobody waits for any more (bounded memory).
    pub fn release(&self, order_id: &str, handle: Arc<Watch>) {
        let mut state = self.state();
        // Two references: the map's and the caller's; nobody else waits.
        if Arc::strong_count(&handle) <= 2 {
            state.waiters.remove(order_id);
        }
    }
}
