//! A terminal's working keys: issued at sign-on, checked on every MACed request, and changed
//! over only when the terminal itself shows it holds the new ones.
//!
//! Each terminal has two key slots in the security module: slot 0 (`tak/<tid>`, `tpk/<tid>`)
//! and slot 1 (`tak/<tid>.1`, `tpk/<tid>.1`). The journal names the slot in use
//! (`terminals.key_slot`) and keeps both slots' keys encrypted under the terminal master key. A
//! sign-on issues new keys into the **other** slot and leaves the keys in use alone; the first
//! request (or terminal-made code) MACed under the new keys makes them the ones in use, and the
//! previous keys are then deleted. So a sign-on sent by anyone else (TID and MID are printed on
//! the terminal's own codes) cannot lock the real terminal out: its keys keep working until it
//! uses the new ones itself.
//!
//! The request path costs what it did: one MAC check under the slot in use (from the registry
//! cache). Only a check that fails reads the journal: the keys there may be newer than this
//! gateway's module holds (another gateway issued or changed them over, or a software module
//! restarted), and the pending slot may be the one the terminal now uses.

use crate::infra::security::{Security, SecurityError};
use crate::registry::cache::RegistryCache;
use crate::registry::{self, Terminal, TerminalKeys, WorkingKeys};
use crate::store::journal::{JournalError, Store};
use posbridge_hsm::{ExportedKey, HsmError, KeyType, MacAlgorithm};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The security-module label of a terminal's MAC key in `slot`.
pub fn mac_key_label(tid: &str, slot: u8) -> String {
    match slot {
        0 => format!("tak/{tid}"),
        _ => format!("tak/{tid}.1"),
    }
}

/// The security-module label of a terminal's PIN key in `slot`.
pub fn pin_key_label(tid: &str, slot: u8) -> String {
    match slot {
        0 => format!("tpk/{tid}"),
        _ => format!("tpk/{tid}.1"),
    }
}

/// Why a terminal's MAC was not accepted, or keys not issued.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The MAC verifies under none of the terminal's keys (answer A0).
    #[error("the MAC verifies under none of the terminal's keys")]
    Refused,
    /// The security module failed.
    #[error(transparent)]
    Security(#[from] SecurityError),
    /// The journal failed.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// Another gateway changed the terminal's keys over while this one issued new ones: the
    /// sign-on is not answered with them (the terminal signs on again).
    #[error("the terminal's keys changed over during the sign-on")]
    ChangedOver,
}

/// Issues and checks terminals' working keys (see the module documentation).
#[derive(Clone)]
pub struct Keyring {
    store: Store,
    security: Security,
    registry: Arc<RegistryCache>,
    /// One sign-on or change-over at a time per terminal in this process: a sign-on writing
    /// the pending slot must not race the change-over that makes that slot the one in use.
    /// Only the terminal's own key work waits; no other security-module call does.
    busy: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring").finish_non_exhaustive()
    }
}

impl Keyring {
    /// A keyring over the journal, the module and the registry cache.
    pub fn new(store: Store, security: Security, registry: Arc<RegistryCache>) -> Keyring {
        Keyring {
            store,
            security,
            registry,
            busy: Arc::default(),
        }
    }

    async fn exclusive(&self, tid: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(busy.entry(tid.to_owned()).or_default())
        };
        lock.lock_owned().await
    }

    /// The slot the terminal uses, as this gateway last read it.
    async fn slot_in_use(&self, tid: &str) -> u8 {
        self.registry
            .terminal(&self.store, tid)
            .await
            .ok()
            .flatten()
            .map_or(0, |terminal| terminal.key_slot)
    }

    /// The label of the MAC key the terminal uses now: its answers are MACed under it.
    pub async fn mac_key(&self, tid: &str) -> String {
        mac_key_label(tid, self.slot_in_use(tid).await)
    }

    /// Sign-on: new PIN and MAC keys, generated in the module into the slot the terminal does
    /// not use and exported under its master key, recorded in the journal as pending. The keys
    /// in use stay valid until the terminal MACs a request under the new ones.
    pub async fn issue(&self, terminal: &Terminal) -> Result<(ExportedKey, ExportedKey), KeyError> {
        let tid = terminal.tid.as_str();
        let _only = self.exclusive(tid).await;
        let in_use = registry::terminal_keys(&self.store, tid)
            .await?
            .map_or(0, |keys| keys.slot);
        let next = 1 - in_use;
        let tmk = terminal.master_key_label.clone();
        let pin = self
            .security
            .generate_key(pin_key_label(tid, next), KeyType::Tdes2, tmk.clone())
            .await?;
        let mac = self
            .security
            .generate_key(mac_key_label(tid, next), KeyType::Des, tmk)
            .await?;
        let issued = WorkingKeys {
            pin_key: (pin.cryptogram.clone(), pin.kcv.clone()),
            mac_key: (mac.cryptogram.clone(), mac.kcv.clone()),
        };
        if !registry::store_pending_keys(&self.store, tid, in_use, &issued).await? {
            return Err(KeyError::ChangedOver);
        }
        Ok((pin, mac))
    }

    /// Verifies a terminal's MAC over `data`: under the keys it uses, else (after reading the
    /// journal) under the keys it uses according to the journal, loaded into the module if this
    /// gateway does not hold them, or under the keys of its last sign-on, which then become
    /// the keys in use.
    pub async fn verify(
        &self,
        tid: &str,
        algorithm: MacAlgorithm,
        data: Vec<u8>,
        mac: Vec<u8>,
    ) -> Result<(), KeyError> {
        let slot = self.slot_in_use(tid).await;
        match self
            .security
            .verify_mac(
                mac_key_label(tid, slot),
                algorithm,
                data.clone(),
                mac.clone(),
            )
            .await
        {
            Ok(()) => return Ok(()),
            Err(SecurityError::Hsm(_)) => {}
            Err(other) => return Err(other.into()),
        }
        let _only = self.exclusive(tid).await;
        let (Some(terminal), Some(keys)) = (
            registry::terminal(&self.store, tid).await?,
            registry::terminal_keys(&self.store, tid).await?,
        ) else {
            return Err(KeyError::Refused);
        };
        let candidates = [
            (keys.slot, keys.active.as_ref(), false),
            (1 - keys.slot, keys.pending.as_ref(), true),
        ];
        for (slot, set, pending) in candidates {
            let Some(set) = set else { continue };
            if !self.holds(tid, slot, set).await
                && !self.load(tid, slot, &terminal.master_key_label, set).await
            {
                continue;
            }
            let verified = self
                .security
                .verify_mac(
                    mac_key_label(tid, slot),
                    algorithm,
                    data.clone(),
                    mac.clone(),
                )
                .await;
            match verified {
                Ok(()) if pending => {
                    self.change_over(tid, &keys).await?;
                    return Ok(());
                }
                Ok(()) => {
                    // This gateway's view of the slot in use was stale.
                    self.registry.clear();
                    return Ok(());
                }
                Err(SecurityError::Hsm(_)) => {}
                Err(other) => return Err(other.into()),
            }
        }
        Err(KeyError::Refused)
    }

    /// The terminal MACed under its pending keys: they become the keys in use, the previous
    /// ones are deleted from this module.
    async fn change_over(&self, tid: &str, keys: &TerminalKeys) -> Result<(), KeyError> {
        if registry::promote_pending_keys(&self.store, tid, keys.slot).await? {
            tracing::info!(tid, "the terminal uses the keys of its last sign-on");
        }
        self.registry.clear();
        for label in [mac_key_label(tid, keys.slot), pin_key_label(tid, keys.slot)] {
            match self.security.delete_key(label).await {
                Ok(()) | Err(SecurityError::Hsm(HsmError::KeyNotFound { .. })) => {}
                Err(error) => tracing::warn!(%error, "could not delete a previous working key"),
            }
        }
        Ok(())
    }

    /// Whether this gateway's module holds the MAC key of `set` in `slot` (by check value).
    async fn holds(&self, tid: &str, slot: u8, set: &WorkingKeys) -> bool {
        let Ok(held) = self.security.find_key(mac_key_label(tid, slot)).await else {
            return false;
        };
        let journal = &set.mac_key.1;
        let common = journal.len().min(held.kcv.len());
        common > 0 && journal[..common] == held.kcv[..common]
    }

    /// Imports a slot's keys from the journal (under the terminal master key, checked by check
    /// value). False when they do not import (a token whose master keys may not import: the
    /// terminal must sign on again).
    async fn load(&self, tid: &str, slot: u8, tmk: &str, set: &WorkingKeys) -> bool {
        let import = |label, key_type, (cryptogram, kcv): &(Vec<u8>, Vec<u8>)| {
            self.security.import_key(
                tmk.to_owned(),
                label,
                key_type,
                cryptogram.clone(),
                kcv.clone(),
            )
        };
        let pin = import(pin_key_label(tid, slot), KeyType::Tdes2, &set.pin_key).await;
        let mac = import(mac_key_label(tid, slot), KeyType::Des, &set.mac_key).await;
        match (pin, mac) {
            (Ok(_), Ok(_)) => {
                tracing::info!(tid, slot, "working keys loaded from the journal");
                true
            }
            (pin, mac) => {
                tracing::warn!(
                    tid,
                    slot,
                    pin_ok = pin.is_ok(),
                    mac_ok = mac.is_ok(),
                    "could not load the working keys; the terminal must sign on"
                );
                false
            }
        }
    }
}
