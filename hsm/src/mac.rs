//! Message authentication codes: ISO 9797-1 algorithm 1 (CBC-MAC), algorithm 3 (ANSI X9.19
//! retail MAC), the UnionPay POS "ECB" MAC and AES-CMAC, written once over the crate's
//! block-cipher trait so both backends compute them the same way.

use crate::error::{HsmError, Result};
use crate::keys::{Family, KeyType};
use crate::ops::KeyOps;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// ISO 9797-1 padding method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Padding {
    /// Method 1: zeros to a whole block (an empty message becomes one zero block).
    M1,
    /// Method 2: one 0x80 byte, then zeros to a whole block.
    M2,
}

/// A MAC algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum MacAlgorithm {
    /// ISO 9797-1 algorithm 1: CBC-MAC with the whole key (DES, TDES or AES), zero IV. Output:
    /// one cipher block.
    Iso9797Alg1 {
        /// Padding method.
        padding: Padding,
    },
    /// ISO 9797-1 algorithm 3 = ANSI X9.19 retail MAC (padding method 1): single-DES CBC with
    /// K1, last block decrypted with K2 and encrypted with K1. Key: des or tdes2. Output: 8 bytes.
    X919,
    /// UnionPay POS "ECB" MAC: XOR of all 8-byte blocks, expanded to hex, two encryptions; the
    /// output is the 8 ASCII hex characters the message carries in field 64 (as bytes).
    CupsEcb,
    /// AES-CMAC (RFC 4493). Output: 16 bytes.
    AesCmac,
}

impl MacAlgorithm {
    /// The name used by the CLI and configuration.
    pub fn name(self) -> &'static str {
        match self {
            MacAlgorithm::Iso9797Alg1 {
                padding: Padding::M1,
            } => "iso9797-1",
            MacAlgorithm::Iso9797Alg1 {
                padding: Padding::M2,
            } => "iso9797-1-m2",
            MacAlgorithm::X919 => "x919",
            MacAlgorithm::CupsEcb => "cups-ecb",
            MacAlgorithm::AesCmac => "aes-cmac",
        }
    }
}

impl fmt::Display for MacAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for MacAlgorithm {
    type Err = HsmError;

    /// `iso9797-1` (padding 1), `iso9797-1-m2`, `x919` (or `iso9797-3`), `cups-ecb`, `aes-cmac`.
    fn from_str(text: &str) -> Result<Self> {
        match text.to_ascii_lowercase().as_str() {
            "iso9797-1" | "iso9797-1-m1" => Ok(MacAlgorithm::Iso9797Alg1 {
                padding: Padding::M1,
            }),
            "iso9797-1-m2" => Ok(MacAlgorithm::Iso9797Alg1 {
                padding: Padding::M2,
            }),
            "x919" | "x9.19" | "iso9797-3" => Ok(MacAlgorithm::X919),
            "cups-ecb" => Ok(MacAlgorithm::CupsEcb),
            "aes-cmac" => Ok(MacAlgorithm::AesCmac),
            _ => Err(HsmError::invalid(format!(
                "unknown MAC algorithm {text:?} (iso9797-1, iso9797-1-m2, x919, cups-ecb, aes-cmac)"
            ))),
        }
    }
}

/// Pads `data` to whole blocks with ISO 9797-1 method 1 or 2.
pub fn pad(data: &[u8], padding: Padding, block_len: usize) -> Vec<u8> {
    let mut out = data.to_vec();
    if padding == Padding::M2 {
        out.push(0x80);
    }
    let short = (block_len - out.len() % block_len) % block_len;
    out.resize(out.len() + short, 0);
    if out.is_empty() {
        out.resize(block_len, 0);
    }
    out
}

/// Computes a MAC with `key`.
pub(crate) fn compute(key: &dyn KeyOps, algorithm: MacAlgorithm, data: &[u8]) -> Result<Vec<u8>> {
    crate::ops::refuse_data_key(key, "a MAC")?;
    match algorithm {
        MacAlgorithm::Iso9797Alg1 { padding } => {
            let block_len = key.block_len();
            key.cbc_last(&vec![0; block_len], &pad(data, padding, block_len))
        }
        MacAlgorithm::X919 => x919(key, data),
        MacAlgorithm::CupsEcb => cups_ecb(key, data),
        MacAlgorithm::AesCmac => {
            key.require_family(Family::Aes, "AES-CMAC")?;
            key.aes_cmac(data)
        }
    }
}

fn x919(key: &dyn KeyOps, data: &[u8]) -> Result<Vec<u8>> {
    if !matches!(key.key_type(), KeyType::Des | KeyType::Tdes2) {
        return Err(HsmError::wrong_key(
            key.label(),
            format!("X9.19 needs a des or tdes2 key, this is {}", key.key_type()),
        ));
    }
    let padded = pad(data, Padding::M1, 8);
    let (head, last) = padded.split_at(padded.len() - 8);
    let chain = if head.is_empty() {
        vec![0; 8]
    } else {
        key.left_cbc_last(&[0; 8], head)?
    };
    // The last block under two-key TDES (K1, K2, K1) is E_K1(D_K2(E_K1(chain XOR last))).
    key.cbc_last(&chain, last)
}

/// The XOR of all 8-byte blocks of `data`, the last one zero-padded (UnionPay's first step).
pub fn cups_xor(data: &[u8]) -> [u8; 8] {
    let mut acc = [0u8; 8];
    for block in data.chunks(8) {
        for (a, b) in acc.iter_mut().zip(block) {
            *a ^= b;
        }
    }
    acc
}

fn cups_ecb(key: &dyn KeyOps, data: &[u8]) -> Result<Vec<u8>> {
    key.require_family(Family::Des, "the UnionPay ECB MAC")?;
    let expanded = hex::encode_upper(cups_xor(data)).into_bytes();
    // E(K, E(K, first half) XOR second half) is the last block of a zero-IV CBC encryption of
    // the 16 bytes: one operation in the module instead of two ECB encryptions.
    let last = key.cbc_last(&[0; 8], &expanded)?;
    Ok(hex::encode_upper(&last[..]).into_bytes()[..8].to_vec())
}
