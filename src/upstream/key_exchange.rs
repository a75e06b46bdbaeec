//! The key-change message a host sends on a link (0800, F70 = 101): new zone PIN and MAC keys,
//! each encrypted (TDES ECB) under the zone master key and followed by its check value.
//!
//! Layout of F48 (ASCII, documented in docs/host-interface.md):
//!
//! ```text
//! "KX01"                      layout tag and version
//! then one to two blocks of 42 characters:
//!   usage   2   "PK" zone PIN key | "MK" zone MAC key
//!   key    32   hex of the 16-byte double-length key under the ZMK (ECB)
//!   kcv     8   hex of the first 4 bytes of E_key(0000000000000000)
//! ```
//!
//! The 0800 must be MACed (X9.19, field 128 or 64 as the dialect has it) under the zone MAC key
//! in use. The 0810 answer's F39: `00` both keys imported; `A0` no MAC, or it does not verify;
//! `94` a replay (a key equal to the one in use or to one installed before); `30` F48 malformed
//! or one value for both purposes; `A7` a check value does not match (nothing imported: the old
//! keys stay in use); `96` the security module failed or no zone master key is configured.

use crate::infra::security::{Security, SecurityError};
use posbridge_hsm::{HsmError, KeyType};

/// Layout tag at the start of F48.
pub const TAG: &str = "KX01";
/// F70 of a key change.
pub const NETWORK_CODE: &str = "101";
/// F39: a check value did not match.
pub const KCV_MISMATCH: &str = "A7";
/// F39: F48 malformed.
pub const FORMAT_ERROR: &str = "30";
/// F39: security module failure.
pub const SYSTEM_ERROR: &str = "96";
/// F39: the key change is not MACed, or its MAC does not verify under the current zone MAC key.
pub const MAC_ERROR: &str = "A0";
/// F39: a replay: a key equal to the one in use or to an earlier one.
pub const DUPLICATE: &str = "94";

/// What a key is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyUsage {
    /// Zone PIN key ("PK").
    Pin,
    /// Zone MAC key ("MK").
    Mac,
}

impl KeyUsage {
    fn tag(self) -> &'static str {
        match self {
            KeyUsage::Pin => "PK",
            KeyUsage::Mac => "MK",
        }
    }
}

/// One key of a key change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedKey {
    /// PIN or MAC key.
    pub usage: KeyUsage,
    /// The key under the zone master key (16 bytes).
    pub cryptogram: Vec<u8>,
    /// Its check value (4 bytes).
    pub kcv: Vec<u8>,
}

/// Writes F48 for these keys.
pub fn encode(keys: &[WrappedKey]) -> String {
    let mut out = String::from(TAG);
    for key in keys {
        out.push_str(key.usage.tag());
        out.push_str(&hex::encode_upper(&key.cryptogram));
        out.push_str(&hex::encode_upper(&key.kcv));
    }
    out
}

/// Reads F48; `None` when it does not follow the layout.
pub fn decode(field: &[u8]) -> Option<Vec<WrappedKey>> {
    // ASCII only, so that the fixed offsets below are character boundaries.
    let text = std::str::from_utf8(field).ok().filter(|t| t.is_ascii())?;
    let mut rest = text.strip_prefix(TAG)?;
    let mut keys = Vec::new();
    while !rest.is_empty() {
        if rest.len() < 42 || keys.len() == 2 {
            return None;
        }
        let (block, tail) = rest.split_at(42);
        let usage = match &block[..2] {
            "PK" => KeyUsage::Pin,
            "MK" => KeyUsage::Mac,
            _ => return None,
        };
        let cryptogram = hex::decode(&block[2..34]).ok()?;
        let kcv = hex::decode(&block[34..42]).ok()?;
        if keys.iter().any(|k: &WrappedKey| k.usage == usage) {
            return None;
        }
        keys.push(WrappedKey {
            usage,
            cryptogram,
            kcv,
        });
        rest = tail;
    }
    (!keys.is_empty()).then_some(keys)
}

/// Imports a key change: every key is first imported under a staging label (which checks its
/// KCV); only when all pass are they imported under the working labels. So a bad check value on
/// either key leaves both working keys untouched. Returns the F39 to answer.
pub async fn import(
    security: &Security,
    zmk: &str,
    labels: (Option<&str>, Option<&str>),
    keys: &[WrappedKey],
) -> &'static str {
    let target = |usage: KeyUsage| match usage {
        KeyUsage::Pin => labels.0,
        KeyUsage::Mac => labels.1,
    };
    if keys.iter().any(|k| target(k.usage).is_none()) {
        tracing::warn!("key change for a key this link has no label for");
        return FORMAT_ERROR;
    }
    for pass in [true, false] {
        for key in keys {
            let Some(label) = target(key.usage) else {
                return FORMAT_ERROR;
            };
            let label = if pass {
                format!("{label}.staged")
            } else {
                label.to_owned()
            };
            let outcome = security
                .import_key(
                    zmk.to_owned(),
                    label.clone(),
                    KeyType::Tdes2,
                    key.cryptogram.clone(),
                    key.kcv.clone(),
                )
                .await;
            match outcome {
                Ok(_) => {}
                Err(SecurityError::Hsm(HsmError::KcvMismatch { .. })) => {
                    tracing::warn!(
                        label,
                        "key change refused: check value mismatch; old keys kept"
                    );
                    return KCV_MISMATCH;
                }
                Err(error) => {
                    tracing::error!(label, %error, "key change failed in the security module");
                    return SYSTEM_ERROR;
                }
            }
        }
    }
    // The staged copies are no longer needed; failing to remove them is harmless.
    let staged: Vec<String> = keys
        .iter()
        .filter_map(|k| target(k.usage).map(|label| format!("{label}.staged")))
        .collect();
    let module = std::sync::Arc::clone(security.module());
    let _ = tokio::task::spawn_blocking(move || {
        for label in staged {
            let _ = module.delete_key(&label);
        }
    })
    .await;
    tracing::info!("key change imported");
    "00"
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn layout_round_trips_and_rejects_garbage() {
        let keys = vec![
            WrappedKey {
                usage: KeyUsage::Pin,
                cryptogram: vec![0x11; 16],
                kcv: vec![1, 2, 3, 4],
            },
            WrappedKey {
                usage: KeyUsage::Mac,
                cryptogram: vec![0x22; 16],
                kcv: vec![5, 6, 7, 8],
            },
        ];
        let text = encode(&keys);
        assert_eq!(text.len(), 4 + 2 * 42);
        assert_eq!(decode(text.as_bytes()), Some(keys));
        assert_eq!(decode(b"KX01"), None);
        assert_eq!(decode(&text.as_bytes()[..50]), None);
        assert_eq!(decode(b"KX02"), None);
        let mut accented = text.clone().into_bytes();
        accented.splice(40..41, "é".bytes());
        assert_eq!(decode(&accented), None);
        let twice = format!("{TAG}{}{}", &text[4..46], &text[4..46]);
        assert_eq!(decode(twice.as_bytes()), None);
    }
}
