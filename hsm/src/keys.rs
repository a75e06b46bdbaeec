//! What the module says about keys without exposing them: key types, labels, key information,
//! exported cryptograms and the module's capabilities.

use crate::error::{HsmError, Result};
use crate::policy::{KeyClass, Usages};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The type (algorithm and length) of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum KeyType {
    /// Single-length DES (8 bytes). Common on POS links (UnionPay MAC keys); a PKCS#11 token
    /// without single DES holds it as the double-length K|K, which computes the same results.
    Des,
    /// Double-length triple DES (16 bytes, K1|K2).
    Tdes2,
    /// Triple-length triple DES (24 bytes).
    Tdes3,
    /// AES-128.
    Aes128,
    /// AES-192.
    Aes192,
    /// AES-256.
    Aes256,
}

/// The block cipher family of a key: decides block length, check value method and which
/// algorithms it may be used with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// DES and triple DES: 8-byte blocks.
    Des,
    /// AES: 16-byte blocks.
    Aes,
}

impl KeyType {
    /// Every key type, for help texts and exhaustive tests.
    pub const ALL: [KeyType; 6] = [
        KeyType::Des,
        KeyType::Tdes2,
        KeyType::Tdes3,
        KeyType::Aes128,
        KeyType::Aes192,
        KeyType::Aes256,
    ];

    /// Key length in bytes.
    pub fn key_len(self) -> usize {
        match self {
            KeyType::Des => 8,
            KeyType::Tdes2 | KeyType::Aes128 => 16,
            KeyType::Tdes3 | KeyType::Aes192 => 24,
            KeyType::Aes256 => 32,
        }
    }

    /// The cipher family.
    pub fn family(self) -> Family {
        match self {
            KeyType::Des | KeyType::Tdes2 | KeyType::Tdes3 => Family::Des,
            KeyType::Aes128 | KeyType::Aes192 | KeyType::Aes256 => Family::Aes,
        }
    }

    /// Cipher block length in bytes.
    pub fn block_len(self) -> usize {
        match self.family() {
            Family::Des => 8,
            Family::Aes => 16,
        }
    }

    /// Length of the standard key check value: 3 bytes for DES family (X9.24), 5 for AES
    /// (X9.24-1-2017, CMAC of zeros).
    pub fn kcv_len(self) -> usize {
        match self.family() {
            Family::Des => 3,
            Family::Aes => 5,
        }
    }

    /// The DES-family type of a key length, for the operator's calculator.
    pub fn des_for_len(len: usize) -> Result<Self> {
        match len {
            8 => Ok(KeyType::Des),
            16 => Ok(KeyType::Tdes2),
            24 => Ok(KeyType::Tdes3),
            _ => Err(HsmError::invalid("a DES/TDES key is 8, 16 or 24 bytes")),
        }
    }

    /// The AES type of a key length.
    pub fn aes_for_len(len: usize) -> Result<Self> {
        match len {
            16 => Ok(KeyType::Aes128),
            24 => Ok(KeyType::Aes192),
            32 => Ok(KeyType::Aes256),
            _ => Err(HsmError::invalid("an AES key is 16, 24 or 32 bytes")),
        }
    }

    /// The name used in key files, configuration and the CLI.
    pub fn name(self) -> &'static str {
        match self {
            KeyType::Des => "des",
            KeyType::Tdes2 => "tdes2",
            KeyType::Tdes3 => "tdes3",
            KeyType::Aes128 => "aes128",
            KeyType::Aes192 => "aes192",
            KeyType::Aes256 => "aes256",
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for KeyType {
    type Err = HsmError;

    fn from_str(text: &str) -> Result<Self> {
        KeyType::ALL
            .into_iter()
            .find(|kind| kind.name().eq_ignore_ascii_case(text))
            .ok_or_else(|| {
                HsmError::invalid(format!(
                    "unknown key type {text:?} (des, tdes2, tdes3, aes128, aes192, aes256)"
                ))
            })
    }
}

/// Checks a key label: 1 to 64 characters of `A-Z a-z 0-9 / _ . : -` (terminal keys look like
/// `tak/12345678`). `#` is reserved for the module's own companion objects.
pub fn check_label(label: &str) -> Result<()> {
    let ok = !label.is_empty()
        && label.len() <= 64
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/_.:-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(HsmError::invalid(
            "key label must be 1 to 64 characters of A-Z a-z 0-9 / _ . : -",
        ))
    }
}

/// What the module tells about a stored key: never its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyInfo {
    /// The key's label.
    pub label: String,
    /// Its type.
    pub key_type: KeyType,
    /// Its standard check value (3 bytes DES family, 5 bytes AES).
    #[serde(with = "hex_upper")]
    pub kcv: Vec<u8>,
    /// Its class, from the label's prefix; `None` for a key whose label names no class (stored
    /// by another tool, or before key classes existed).
    pub class: Option<KeyClass>,
    /// What the key may be used for: read back from the token's attributes (PKCS#11), or the
    /// usages the class's policy allows (software module, which does not enforce them).
    pub usages: Usages,
}

/// A key generated inside the module and exported under a key-encryption key: what a UnionPay
/// sign-on response carries in field 62 for each working key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExportedKey {
    /// The new key's label.
    pub label: String,
    /// Its type.
    pub key_type: KeyType,
    /// The key encrypted under the KEK in ECB mode (8 bytes for single DES, else the key length).
    #[serde(with = "hex_upper")]
    pub cryptogram: Vec<u8>,
    /// The key's check value: 4 bytes for the DES family (what UnionPay field 62 carries; the
    /// first 3 are the X9.24 KCV), 5 bytes for AES.
    #[serde(with = "hex_upper")]
    pub kcv: Vec<u8>,
}

/// Where a PIN block is in clear while it is translated from one key (or format) to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PinTranslation {
    /// Only inside the token (unwrap as a sensitive secret, wrap under the destination key).
    /// Only possible when source and destination formats are the same.
    InToken,
    /// Decrypted into host memory (zeroised after use) and re-encrypted: not PCI PIN compliant.
    HostMemory,
}

/// Where a clear working key exists while it is imported or generated and exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyTransport {
    /// Only inside the token.
    InToken,
    /// In host memory, zeroised after use.
    HostMemory,
}

/// What a security module is and can do; `posbridge hsm info` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Capabilities {
    /// `software` or `pkcs11`.
    pub backend: String,
    /// One line on what is behind the module (library, token, firmware).
    pub description: String,
    /// Whether PIN blocks and working keys stay inside secure hardware throughout (PCI PIN). False
    /// for the software module, and for `pkcs11` until key import happens inside the token.
    pub production: bool,
    /// Where PIN blocks are in clear during a translation between keys of the same format.
    pub pin_translation: PinTranslation,
    /// Where working keys are in clear during import and generation: `in-token` only when every
    /// key type is generated, exported and imported without leaving the token.
    pub key_transport: KeyTransport,
    /// Human-readable warnings and facts an operator must know (printed by `posbridge hsm info`).
    pub notes: Vec<String>,
}

pub(crate) mod hex_upper {
    use serde::Serializer;

    pub(crate) fn serialize<S: Serializer>(
        bytes: &[u8],
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(&hex::encode_upper(bytes))
    }
}
