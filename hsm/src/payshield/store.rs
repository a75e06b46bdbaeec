//! The payShield backend's key store: labels mapped to LMK cryptograms, in a TOML file only its
//! owner can read (0600). A cryptogram is useless without the HSM's LMK, but the file still
//! decides which key a label means, so it is written atomically (temporary file + rename) and
//! re-read when another process changed it.
//!
//! ```toml
//! [[keys]]
//! label = "zpk/upstream"
//! type = "001"                                  # payShield key type code (ZPK)
//! cryptogram = "U8E16D6D0A4B1C8A2E2F0F3A1B2C3D4E5"  # under the LMK, scheme U
//! kcv = "08D7B4"
//! ```

use super::wire;
use crate::error::{HsmError, Result};
use crate::keys::{KeyInfo, KeyType, check_label};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::SystemTime;

/// One key of the store.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StoredKey {
    /// The key's label.
    pub label: String,
    /// The payShield key type code (3 characters, e.g. `001` ZPK, `002` TPK/TMK/PVK, `003` TAK,
    /// `008` ZAK, `000` ZMK).
    #[serde(rename = "type")]
    pub type_code: String,
    /// The key under the LMK: 16 H (single length), `U` + 32 H or `T` + 48 H.
    pub cryptogram: String,
    /// The key's check value, 6 hex digits (what A0, A6 and BU return).
    pub kcv: String,
}

impl StoredKey {
    /// Checks the entry's fields (label, type code, cryptogram form, check value form).
    pub fn validate(&self) -> Result<KeyType> {
        check_label(&self.label)?;
        check_type_code(&self.type_code)?;
        let kind = wire::key_type_of_cryptogram(&self.cryptogram)?;
        if self.kcv.len() != 6 || !self.kcv.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(HsmError::invalid("a stored check value is 6 hex digits"));
        }
        Ok(kind)
    }

    /// The posbridge key type (from the cryptogram's length).
    pub fn key_type(&self) -> Result<KeyType> {
        wire::key_type_of_cryptogram(&self.cryptogram)
    }

    /// What the module reports about the key.
    /// The usages are the class's policy: the HSM itself enforces them through the key type
    /// (the LMK pair and variant the key is encrypted under).
    pub fn info(&self) -> Result<KeyInfo> {
        let key_type = self.key_type()?;
        let class = crate::policy::KeyClass::of_label(&self.label).ok();
        Ok(KeyInfo {
            label: self.label.clone(),
            key_type,
            kcv: hex::decode(&self.kcv).map_err(|_| HsmError::invalid("kcv is not hex"))?,
            class,
            usages: class.map_or(crate::policy::Usages::NONE, |class| {
                class.usages(key_type.family(), &crate::policy::TokenFeatures::IDEAL)
            }),
        })
    }
}

/// Checks a payShield key type code: 3 hex characters (variant digit + LMK pair code).
pub fn check_type_code(code: &str) -> Result<()> {
    if code.len() == 3 && code.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(HsmError::invalid(format!(
            "payShield key type {code:?}: 3 hex characters, e.g. 001 (ZPK), 002 (TPK/TMK/PVK), 003 (TAK), 008 (ZAK), 000 (ZMK)"
        )))
    }
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct StoreFile {
    #[serde(default)]
    keys: Vec<StoredKey>,
}

struct Loaded {
    keys: BTreeMap<String, StoredKey>,
    modified: Option<SystemTime>,
}

/// The key store of one payShield backend.
pub struct KeyStore {
    path: PathBuf,
    loaded: RwLock<Loaded>,
    /// Serialises read-modify-write cycles of this process.
    writing: std::sync::Mutex<()>,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyStore({})", self.path.display())
    }
}

fn store_error(path: &Path, message: impl Into<String>) -> HsmError {
    HsmError::KeyFile {
        path: path.display().to_string(),
        message: message.into(),
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn read_file(path: &Path) -> Result<BTreeMap<String, StoredKey>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        // A new site starts with no file: an empty store.
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(error) => return Err(store_error(path, error.to_string())),
    };
    let file: StoreFile =
        toml::from_str(&text).map_err(|error| store_error(path, error.message().to_owned()))?;
    let mut keys = BTreeMap::new();
    for key in file.keys {
        key.validate()
            .map_err(|error| store_error(path, format!("key {}: {error}", key.label)))?;
        let label = key.label.clone();
        if keys.insert(label.clone(), key).is_some() {
            return Err(store_error(path, format!("key {label} appears twice")));
        }
    }
    Ok(keys)
}

impl KeyStore {
    /// Opens (or, when the file does not exist yet, starts) a key store.
    pub fn open(path: &Path) -> Result<Self> {
        let keys = read_file(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            loaded: RwLock::new(Loaded {
                keys,
                modified: modified(path),
            }),
            writing: std::sync::Mutex::new(()),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Re-reads the file when another process changed it since it was last read.
    fn refresh(&self) -> Result<()> {
        let now = modified(&self.path);
        let stale = {
            let loaded = self
                .loaded
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            loaded.modified != now
        };
        if stale {
            let keys = read_file(&self.path)?;
            let mut loaded = self
                .loaded
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *loaded = Loaded {
                keys,
                modified: now,
            };
        }
        Ok(())
    }

    /// One key by label.
    pub fn get(&self, label: &str) -> Result<StoredKey> {
        self.refresh()?;
        let loaded = self
            .loaded
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        loaded
            .keys
            .get(label)
            .cloned()
            .ok_or_else(|| HsmError::KeyNotFound {
                label: label.to_owned(),
            })
    }

    /// Every key, sorted by label.
    pub fn all(&self) -> Result<Vec<StoredKey>> {
        self.refresh()?;
        let loaded = self
            .loaded
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(loaded.keys.values().cloned().collect())
    }

    /// Adds or replaces a key and writes the file.
    pub fn put(&self, key: StoredKey) -> Result<()> {
        key.validate()?;
        self.change(|keys| {
            keys.insert(key.label.clone(), key);
            Ok(())
        })
    }

    /// Removes a key and writes the file.
    pub fn remove(&self, label: &str) -> Result<()> {
        self.change(|keys| {
            keys.remove(label)
                .map(|_| ())
                .ok_or_else(|| HsmError::KeyNotFound {
                    label: label.to_owned(),
                })
        })
    }

    fn change(
        &self,
        edit: impl FnOnce(&mut BTreeMap<String, StoredKey>) -> Result<()>,
    ) -> Result<()> {
        let _writing = self
            .writing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Start from the file as it is now, so another process's change is not lost.
        let mut keys = read_file(&self.path)?;
        edit(&mut keys)?;
        let file = StoreFile {
            keys: keys.values().cloned().collect(),
        };
        let text = toml::to_string(&file).map_err(|e| store_error(&self.path, e.to_string()))?;
        let temporary = self.path.with_extension("tmp");
        write_private(&temporary, text.as_bytes())
            .and_then(|()| std::fs::rename(&temporary, &self.path))
            .map_err(|e| store_error(&self.path, e.to_string()))?;
        let mut loaded = self
            .loaded
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *loaded = Loaded {
            keys,
            modified: modified(&self.path),
        };
        Ok(())
    }
}

/// Writes a file only its owner can read or write.
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn key(label: &str) -> StoredKey {
        StoredKey {
            label: label.into(),
            type_code: "001".into(),
            cryptogram: format!("U{}", "0123456789ABCDEF".repeat(2)),
            kcv: "08D7B4".into(),
        }
    }

    #[test]
    fn keys_survive_a_reopen_and_the_file_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        let store = KeyStore::open(&path).unwrap();
        assert!(store.all().unwrap().is_empty());
        store.put(key("zpk/a")).unwrap();
        store.put(key("zpk/b")).unwrap();
        store.remove("zpk/a").unwrap();
        assert!(matches!(
            store.remove("zpk/a"),
            Err(HsmError::KeyNotFound { .. })
        ));
        let again = KeyStore::open(&path).unwrap();
        assert_eq!(again.get("zpk/b").unwrap(), key("zpk/b"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn bad_entries_are_refused_with_the_label() {
        let mut bad = key("zpk/x");
        bad.cryptogram = "U00".into();
        assert!(bad.validate().is_err());
        let mut bad = key("zpk/x");
        bad.type_code = "1".into();
        assert!(bad.validate().is_err());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        std::fs::write(
            &path,
            "[[keys]]\nlabel = \"zpk/x\"\ntype = \"001\"\ncryptogram = \"U00\"\nkcv = \"000000\"\n",
        )
        .unwrap();
        let error = KeyStore::open(&path).unwrap_err().to_string();
        assert!(error.contains("zpk/x"), "{error}");
    }
}
