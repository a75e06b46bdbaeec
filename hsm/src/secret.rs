//! Secret values as types: a PAN, a PIN, a PIN block and a clear key each live in a wrapper that
//! masks itself in `Debug` and `Display`, zeroises its memory on drop, has no `Serialize`, and is
//! opened only by the greppable `expose_secret()`.

use crate::error::{HsmError, Result};
use std::fmt;
use zeroize::Zeroizing;

/// A primary account number: 8 to 19 decimal digits.
///
/// Displays as the first 6 and last 4 digits at most (`411111******1111`); PANs shorter than 13
/// digits show only their last 4.
#[derive(Clone, PartialEq, Eq)]
pub struct Pan(Zeroizing<String>);

impl Pan {
    /// Checks and wraps a PAN. Refuses anything but 8 to 19 ASCII digits.
    pub fn new(digits: &str) -> Result<Self> {
        if !(8..=19).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(HsmError::invalid("PAN must be 8 to 19 decimal digits"));
        }
        Ok(Self(Zeroizing::new(digits.to_owned())))
    }

    /// The PAN's digits. Every call site is a place where a full PAN leaves its wrapper.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }

    /// The masked form: first 6 and last 4 digits (last 4 only below 13 digits), `*` between;
    /// the one rule, [`posbridge_codecs::mask::mask_pan`].
    pub fn masked(&self) -> String {
        posbridge_codecs::mask::mask_pan(&self.0)
    }

    /// Number of digits.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false: a PAN has at least 8 digits. Present because `len` is.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Pan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pan({})", self.masked())
    }
}

impl fmt::Display for Pan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

/// A cardholder PIN: 4 to 12 decimal digits (ISO 9564-1).
#[derive(Clone, PartialEq, Eq)]
pub struct Pin(Zeroizing<String>);

impl Pin {
    /// Checks and wraps a PIN. Refuses anything but 4 to 12 ASCII digits.
    pub fn new(digits: &str) -> Result<Self> {
        if !(4..=12).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(HsmError::invalid("PIN must be 4 to 12 decimal digits"));
        }
        Ok(Self(Zeroizing::new(digits.to_owned())))
    }

    /// The PIN's digits. Every call site is a place where a clear PIN leaves its wrapper.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }

    /// Number of digits.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false: a PIN has at least 4 digits. Present because `len` is.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pin(****)")
    }
}

impl fmt::Display for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}

/// A PIN block, clear or encrypted: 8 bytes (ISO 9564 formats 0, 1, 3) or 16 bytes (format 4).
///
/// Even encrypted, a PIN block is never logged, stored or traced (PCI PIN), so it is a secret type.
#[derive(Clone, PartialEq, Eq)]
pub struct PinBlock(Zeroizing<Vec<u8>>);

impl PinBlock {
    /// Wraps 8 or 16 bytes.
    pub fn new(bytes: Vec<u8>) -> Result<Self> {
        let bytes = Zeroizing::new(bytes);
        if bytes.len() != 8 && bytes.len() != 16 {
            return Err(HsmError::invalid("PIN block must be 8 or 16 bytes"));
        }
        Ok(Self(bytes))
    }

    /// Wraps a copy of 8 or 16 bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self> {
        Self::new(bytes.to_vec())
    }

    /// Parses 16 or 32 hex digits.
    pub fn from_hex(text: &str) -> Result<Self> {
        let bytes = Zeroizing::new(
            hex::decode(text).map_err(|_| HsmError::invalid("PIN block is not valid hex"))?,
        );
        Self::from_slice(&bytes)
    }

    /// The block's bytes. Every call site is a place where a PIN block leaves its wrapper.
    pub fn expose_secret(&self) -> &[u8] {
        &self.0
    }

    /// 8 or 16.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false. Present because `len` is.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for PinBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PinBlock({} bytes)", self.0.len())
    }
}

impl fmt::Display for PinBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<PIN block, {} bytes>", self.0.len())
    }
}

/// A clear key or key component: 8, 16 or 24 bytes (DES family) or 16, 24 or 32 bytes (AES).
///
/// Clear keys exist in the software backend, in the operator's calculator and, for a token that
/// cannot unwrap, in the few microseconds of a host-memory key import.
#[derive(Clone, PartialEq, Eq)]
pub struct ClearKey(Zeroizing<Vec<u8>>);

impl ClearKey {
    /// Wraps key bytes of 8, 16, 24 or 32 bytes.
    pub fn new(bytes: Vec<u8>) -> Result<Self> {
        let bytes = Zeroizing::new(bytes);
        if ![8, 16, 24, 32].contains(&bytes.len()) {
            return Err(HsmError::invalid("key must be 8, 16, 24 or 32 bytes"));
        }
        Ok(Self(bytes))
    }

    /// Wraps a copy of key bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self> {
        Self::new(bytes.to_vec())
    }

    /// Parses 16, 32, 48 or 64 hex digits.
    pub fn from_hex(text: &str) -> Result<Self> {
        let bytes = Zeroizing::new(
            hex::decode(text.trim()).map_err(|_| HsmError::invalid("key is not valid hex"))?,
        );
        Self::from_slice(&bytes)
    }

    /// The key's bytes. Every call site is a place where key material leaves its wrapper.
    pub fn expose_secret(&self) -> &[u8] {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false. Present because `len` is.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for ClearKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClearKey({} bytes)", self.0.len())
    }
}

impl fmt::Display for ClearKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<clear key, {} bytes>", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn pan_masks_in_debug_and_display() {
        let pan = Pan::new("4321987654321098").unwrap();
        assert_eq!(pan.to_string(), "432198******1098");
        assert_eq!(format!("{pan:?}"), "Pan(432198******1098)");
        assert_eq!(Pan::new("12345678").unwrap().masked(), "****5678");
        assert_eq!(pan.expose_secret(), "4321987654321098");
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(Pan::new("4321x87654321098").is_err());
        assert!(Pan::new("1234567").is_err());
        assert!(Pin::new("123").is_err());
        assert!(Pin::new("1234567890123").is_err());
        assert!(Pin::new("12a4").is_err());
        assert!(PinBlock::from_hex("0011").is_err());
        assert!(ClearKey::from_hex("00112233").is_err());
        assert!(ClearKey::from_hex("zz").is_err());
    }

    #[test]
    fn secrets_do_not_print() {
        let pin = Pin::new("1234").unwrap();
        let block = PinBlock::from_hex("04122D789ABCDEF6").unwrap();
        let key = ClearKey::from_hex("0123456789ABCDEFFEDCBA9876543210").unwrap();
        let all = format!("{pin:?} {pin} {block:?} {block} {key:?} {key}");
        assert!(!all.contains("1234"), "{all}");
        assert!(!all.to_uppercase().contains("04122D"), "{all}");
        assert!(!all.to_uppercase().contains("0123456789"), "{all}");
    }
}
