//! Reference data read on every request (terminals, wallet apps, merchants), kept in memory for
//! a short time so a sale does not pay a database round trip for each. They change only through
//! `posbridge admin` (and a terminal's sign-on), so the cache is invalidated three ways:
//!
//! - on PostgreSQL, a trigger on their tables notifies every gateway sharing the journal (the
//!   payload `registry` on the channel the order wake-ups use), and each clears its cache;
//! - when the listening connection comes back (notifications may have been missed), and
//! - at the latest after `gateway.registry_cache_ms` (the only way on SQLite, whose admin
//!   commands may run beside a serving gateway).
//!
//! A read that raced with an invalidation is not kept (a generation counter), so a cleared entry
//! never comes back stale.

use super::{Merchant, Terminal, WalletApp};
use crate::store::journal::{JournalError, Store, Tx};
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

type Entries<T> = Mutex<HashMap<String, (Instant, Option<T>)>>;

/// The cache; one per gateway.
#[derive(Debug)]
pub struct RegistryCache {
    ttl: Duration,
    generation: AtomicU64,
    terminals: Entries<Terminal>,
    apps: Entries<(WalletApp, Vec<u8>)>,
    merchants: Entries<Merchant>,
    hits: AtomicU64,
}

/// Entries held at most, per kind; beyond that the cache starts afresh (bounded memory even
/// under a flood of unknown terminal IDs).
const MAX_ENTRIES: usize = 100_000;

impl RegistryCache {
    /// A cache keeping entries for `ttl` (zero: no caching, every call reads the journal).
    pub fn new(ttl: Duration) -> RegistryCache {
        RegistryCache {
            ttl,
            generation: AtomicU64::new(0),
            terminals: Mutex::default(),
            apps: Mutex::default(),
            merchants: Mutex::default(),
            hits: AtomicU64::new(0),
        }
    }

    /// Forgets everything (a registry change here or in another gateway).
    pub fn clear(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        lock(&self.terminals).clear();
        lock(&self.apps).clear();
        lock(&self.merchants).clear();
    }

    /// Lookups answered from memory so far (tests, metrics).
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// A terminal, as [`super::terminal`].
    pub async fn terminal(
        &self,
        store: &Store,
        tid: &str,
    ) -> Result<Option<Terminal>, JournalError> {
        self.get(&self.terminals, tid, super::terminal(store, tid))
            .await
    }

    /// The wallet app an API key belongs to, as [`super::wallet_app_by_key`].
    pub async fn wallet_app_by_key(
        &self,
        store: &Store,
        app_id: &str,
        api_key: &str,
    ) -> Result<Option<WalletApp>, JournalError> {
        let record = self
            .get(&self.apps, app_id, super::wallet_app_record(store, app_id))
            .await?;
        Ok(record.and_then(|(app, hash)| {
            super::constant_time_eq(&hash, &super::key_hash(api_key)).then_some(app)
        }))
    }

    /// A merchant, as [`super::read_merchant`].
    pub async fn merchant(
        &self,
        store: &Store,
        mid: &str,
    ) -> Result<Option<Merchant>, JournalError> {
        self.get(&self.merchants, mid, super::read_merchant(store, mid))
            .await
    }

    /// A merchant, read (on a miss) in the caller's transaction: a transaction on the embedded
    /// journal holds its only connection, which a read of its own would wait for.
    pub async fn merchant_in(
        &self,
        tx: &mut Tx,
        mid: &str,
    ) -> Result<Option<Merchant>, JournalError> {
        self.get(&self.merchants, mid, super::merchant(tx, mid))
            .await
    }

    async fn get<T: Clone>(
        &self,
        entries: &Entries<T>,
        key: &str,
        read: impl std::future::Future<Output = Result<Option<T>, JournalError>>,
    ) -> Result<Option<T>, JournalError> {
        if let Some((at, value)) = lock(entries).get(key)
            && at.elapsed() < self.ttl
        {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(value.clone());
        }
        let generation = self.generation.load(Ordering::Acquire);
        let value = read.await?;
        if !self.ttl.is_zero() {
            let mut entries = lock(entries);
            if self.generation.load(Ordering::Acquire) == generation {
                if entries.len() >= MAX_ENTRIES {
                    entries.clear();
                }
                entries.insert(key.to_owned(), (Instant::now(), value.clone()));
            }
        }
        Ok(value)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
