//! The `software` backend: keys in process memory, cryptography by RustCrypto.
//!
//! **Not for production.** Clear keys live in host memory and, when a key file is used, in clear
//! on disk. It exists for `posbridge demo`, development, the operator's calculator and as an
//! independent implementation to cross-check the PKCS#11 backend against.

use crate::error::{HsmError, Result};
use crate::keys::{
    Capabilities, ExportedKey, KeyInfo, KeyTransport, KeyType, PinTranslation, check_label,
};
use crate::mac::{self, MacAlgorithm};
use crate::module::{SecurityModule, decrypt_and_check, new_key_exported, pvv_equal};
use crate::ops::{KeyOps, SoftKey, kcv};
use crate::pin_block::{self, PinBlockFormat};
use crate::policy::{KeyClass, TokenFeatures, Usages};
use crate::pvv;
use crate::secret::{ClearKey, Pan, Pin, PinBlock};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use zeroize::Zeroizing;

/// The demo key set used when no key file is configured. Published test values only: anyone can
/// read them here, so they protect nothing.
const DEMO_KEYS: &str = include_str!("demo_keys.toml");

/// A key file: `[[keys]]` tables with `label`, `type`, `value` (hex) and optionally `kcv` (hex),
/// which is checked at load time.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    /// The keys.
    #[serde(default)]
    pub keys: Vec<KeyFileEntry>,
}

/// One key of a key file.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFileEntry {
    /// The key's label.
    pub label: String,
    /// The key's type.
    #[serde(rename = "type")]
    pub key_type: KeyType,
    /// The clear key, hex.
    pub value: Zeroizing<String>,
    /// The expected check value, hex (optional; checked when present).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kcv: Option<String>,
}

impl std::fmt::Debug for KeyFileEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyFileEntry({}, {})", self.label, self.key_type)
    }
}

impl KeyFile {
    /// Parses a key file's text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        toml::from_str(text).map_err(|error| HsmError::KeyFile {
            path: origin.to_owned(),
            message: error.message().to_owned(),
        })
    }

    /// Reads and parses a key file.
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            Zeroizing::new(
                std::fs::read_to_string(path).map_err(|error| HsmError::KeyFile {
                    path: path.display().to_string(),
                    message: error.to_string(),
                })?,
            );
        Self::parse(&text, &path.display().to_string())
    }

    /// The embedded demo key set.
    pub fn demo() -> Result<Self> {
        Self::parse(DEMO_KEYS, "embedded demo keys")
    }

    /// Checks every entry (label and its key class, hex, length, check value) and returns the
    /// clear keys.
    pub fn into_keys(self, origin: &str) -> Result<Vec<(String, KeyType, ClearKey)>> {
        let mut out = Vec::with_capacity(self.keys.len());
        for entry in self.keys {
            let fail = |message: String| HsmError::KeyFile {
                path: origin.to_owned(),
                message: format!("key {}: {message}", entry.label),
            };
            check_label(&entry.label).map_err(|e| fail(e.to_string()))?;
            KeyClass::of_label(&entry.label).map_err(|e| fail(e.to_string()))?;
            let key = ClearKey::from_hex(&entry.value).map_err(|e| fail(e.to_string()))?;
            let soft = SoftKey::new(&entry.label, entry.key_type, &key)
                .map_err(|e| fail(e.to_string()))?;
            if let Some(expected) = &entry.kcv {
                let expected = hex::decode(expected).map_err(|_| fail("kcv is not hex".into()))?;
                let (ok, computed) =
                    crate::ops::kcv_matches(&soft, &expected).map_err(|e| fail(e.to_string()))?;
                if !ok {
                    return Err(fail(format!(
                        "check value {} does not match the key ({})",
                        hex::encode_upper(&expected),
                        hex::encode_upper(computed)
                    )));
                }
            }
            out.push((entry.label, entry.key_type, key));
        }
        Ok(out)
    }
}

struct Stored {
    key_type: KeyType,
    key: ClearKey,
}

/// The software security module. See the module documentation: not for production.
pub struct SoftwareModule {
    keys: RwLock<BTreeMap<String, Stored>>,
    /// Where to write the key set back after a change (`persist = true` in the configuration).
    persist_to: Option<PathBuf>,
    origin: String,
}

impl std::fmt::Debug for SoftwareModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SoftwareModule({})", self.origin)
    }
}

impl SoftwareModule {
    /// A module holding the embedded demo keys.
    pub fn demo() -> Result<Self> {
        Self::from_key_file(KeyFile::demo()?, "embedded demo keys", None)
    }

    /// A module holding the keys of a key file; with `persist`, imported and generated keys are
    /// written back to that file.
    pub fn open(path: &Path, persist: bool) -> Result<Self> {
        let file = KeyFile::load(path)?;
        let origin = path.display().to_string();
        Self::from_key_file(file, &origin, persist.then(|| path.to_path_buf()))
    }

    /// A module holding the keys of a parsed key file.
    pub fn from_key_file(file: KeyFile, origin: &str, persist_to: Option<PathBuf>) -> Result<Self> {
        let mut keys = BTreeMap::new();
        for (label, key_type, key) in file.into_keys(origin)? {
            if keys
                .insert(label.clone(), Stored { key_type, key })
                .is_some()
            {
                return Err(HsmError::KeyFile {
                    path: origin.to_owned(),
                    message: format!("key {label} appears twice"),
                });
            }
        }
        tracing::info!(
            keys = keys.len(),
            origin,
            "software security module opened (not for production)"
        );
        Ok(Self {
            keys: RwLock::new(keys),
            persist_to,
            origin: origin.to_owned(),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Stored>> {
        // A panic while holding the lock cannot leave the map half-changed (inserts are single
        // calls), so a poisoned lock is still consistent.
        self.keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Stored>> {
        self.keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn with_key<T>(&self, label: &str, f: impl FnOnce(&dyn KeyOps) -> Result<T>) -> Result<T> {
        let soft = {
            let keys = self.read();
            let stored = keys.get(label).ok_or_else(|| HsmError::KeyNotFound {
                label: label.to_owned(),
            })?;
            SoftKey::new(label, stored.key_type, &stored.key)?
        };
        f(&soft)
    }

    fn store(&self, label: &str, key_type: KeyType, key: ClearKey) -> Result<()> {
        let mut keys = self.write();
        keys.insert(label.to_owned(), Stored { key_type, key });
        if let Some(path) = &self.persist_to {
            save(path, &keys)?;
        }
        Ok(())
    }
}

fn save(path: &Path, keys: &BTreeMap<String, Stored>) -> Result<()> {
    let file = KeyFile {
        keys: keys
            .iter()
            .map(|(label, stored)| KeyFileEntry {
                label: label.clone(),
                key_type: stored.key_type,
                value: Zeroizing::new(hex::encode_upper(stored.key.expose_secret())),
                kcv: None,
            })
            .collect(),
    };
    let fail = |message: String| HsmError::KeyFile {
        path: path.display().to_string(),
        message,
    };
    let text = Zeroizing::new(toml::to_string(&file).map_err(|e| fail(e.to_string()))?);
    let temporary = path.with_extension("tmp");
    write_private(&temporary, text.as_bytes()).map_err(|e| fail(e.to_string()))?;
    std::fs::rename(&temporary, path).map_err(|e| fail(e.to_string()))
}

/// Writes a file only its owner can read: it holds clear keys.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

impl SecurityModule for SoftwareModule {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            backend: "software".into(),
            description: format!("RustCrypto in process memory, keys from {}", self.origin),
            production: false,
            pin_translation: PinTranslation::HostMemory,
            key_transport: KeyTransport::HostMemory,
            notes: vec![
                "software security module: clear keys in host memory, NOT for production".into(),
                "PIN translation in host memory: not PCI PIN compliant".into(),
                "key usages: each key's class policy on an ideal token is reported, not enforced (clear keys in process memory)".into(),
            ],
        }
    }

    fn list_keys(&self) -> Result<Vec<KeyInfo>> {
        let labels: Vec<String> = self.read().keys().cloned().collect();
        labels.iter().map(|label| self.find_key(label)).collect()
    }

    fn find_key(&self, label: &str) -> Result<KeyInfo> {
        self.with_key(label, |key| {
            let class = KeyClass::of_label(label).ok();
            Ok(KeyInfo {
                label: label.to_owned(),
                key_type: key.key_type(),
                kcv: kcv(key)?,
                class,
                usages: class.map_or(Usages::NONE, |class| {
                    class.usages(key.key_type().family(), &TokenFeatures::IDEAL)
                }),
            })
        })
    }

    fn kcv(&self, label: &str) -> Result<Vec<u8>> {
        self.with_key(label, kcv)
    }

    fn translate_pin(
        &self,
        block: &PinBlock,
        src_key: &str,
        src_format: PinBlockFormat,
        dst_key: &str,
        dst_format: PinBlockFormat,
        pan: Option<&Pan>,
    ) -> Result<PinBlock> {
        // Labels, formats and the masked PAN only: never the block, even encrypted (PCI PIN).
        tracing::debug!(src_key, %src_format, dst_key, %dst_format, pan = ?pan, "translate PIN block");
        let pin = self.with_key(src_key, |key| {
            pin_block::decipher(key, src_format, block, pan)
        })?;
        self.with_key(dst_key, |key| {
            pin_block::encipher(key, dst_format, &pin, pan)
        })
    }

    fn encrypt_pin(
        &self,
        pin: &Pin,
        pan: &Pan,
        format: PinBlockFormat,
        key: &str,
    ) -> Result<PinBlock> {
        self.with_key(key, |key| pin_block::encipher(key, format, pin, Some(pan)))
    }

    fn generate_mac(&self, key: &str, algorithm: MacAlgorithm, data: &[u8]) -> Result<Vec<u8>> {
        tracing::trace!(key, %algorithm, data_bytes = data.len(), "generate MAC");
        self.with_key(key, |key| mac::compute(key, algorithm, data))
    }

    fn import_key(
        &self,
        kek: &str,
        label: &str,
        key_type: KeyType,
        cryptogram: &[u8],
        expected_kcv: &[u8],
    ) -> Result<KeyInfo> {
        let clear = self.with_key(kek, |kek| {
            decrypt_and_check(kek, label, key_type, cryptogram, expected_kcv)
        })?;
        self.store(label, key_type, clear)?;
        tracing::info!(label, kek, %key_type, "key imported");
        self.find_key(label)
    }

    fn generate_key(
        &self,
        label: &str,
        key_type: KeyType,
        export_under: &str,
    ) -> Result<ExportedKey> {
        let mut random = Zeroizing::new(vec![0u8; key_type.key_len()]);
        rand::rng().fill_bytes(&mut random);
        let (clear, exported) = self.with_key(export_under, |kek| {
            new_key_exported(kek, label, key_type, random)
        })?;
        self.store(label, key_type, clear)?;
        tracing::info!(label, kek = export_under, %key_type, "key generated");
        Ok(exported)
    }

    fn delete_key(&self, label: &str) -> Result<()> {
        let mut keys = self.write();
        keys.remove(label).ok_or_else(|| HsmError::KeyNotFound {
            label: label.to_owned(),
        })?;
        if let Some(path) = &self.persist_to {
            save(path, &keys)?;
        }
        Ok(())
    }

    fn encrypt_data(&self, key: &str, context: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
        self.with_key(key, |key| crate::ops::seal(key, context, plaintext))
    }

    fn decrypt_data(&self, key: &str, context: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        self.with_key(key, |key| crate::ops::open(key, context, sealed))
    }

    fn pin_verification_value(&self, pvk: &str, pan: &Pan, pin: &Pin, pvki: u8) -> Result<String> {
        self.with_key(pvk, |key| pvv::pvv(key, pan, pin, pvki))
    }

    fn verify_pin(
        &self,
        block: &PinBlock,
        pek: &str,
        format: PinBlockFormat,
        pan: &Pan,
        pvk: &str,
        pvki: u8,
        stored_pvv: &str,
    ) -> Result<bool> {
        let pin = self.with_key(pek, |key| {
            pin_block::decipher(key, format, block, Some(pan))
        })?;
        let computed = self.pin_verification_value(pvk, pan, &pin, pvki)?;
        pvv_equal(&computed, stored_pvv)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn every_demo_key_has_a_class_and_a_value_of_its_own() {
        let keys = KeyFile::demo().unwrap().into_keys("demo").unwrap();
        let mut seen: Vec<(Vec<u8>, String)> = Vec::new();
        for (label, _, key) in &keys {
            KeyClass::of_label(label).unwrap();
            // Halves too: a tdes2 key whose half is another key's half shares its single-DES
            // steps (X9.19 chains with K1 alone).
            for chunk in key.expose_secret().chunks(8) {
                if let Some((_, other)) = seen.iter().find(|(bytes, _)| bytes == chunk) {
                    panic!("{label} shares a value with {other}");
                }
                seen.push((chunk.to_vec(), label.clone()));
            }
        }
        assert!(keys.len() >= 10);
    }
}
