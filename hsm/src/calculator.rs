//! The operator's calculator: the same algorithms as the modules, on clear keys typed in at a key
//! ceremony or while chasing a MAC failure (`posbridge crypto ...`). Clear keys stay in
//! [`ClearKey`] wrappers and are zeroised when dropped.

use crate::error::{HsmError, Result};
use crate::keys::{Family, KeyType};
use crate::mac::{self, MacAlgorithm};
use crate::ops::{self, SoftKey};
use crate::pin_block::{self, PinBlockFormat};
use crate::secret::{ClearKey, Pan, Pin, PinBlock};
use zeroize::Zeroizing;

/// The standard check value of a clear key of `family` (3 bytes TDES, 5 bytes AES).
pub fn kcv(family: Family, key: &ClearKey) -> Result<Vec<u8>> {
    let soft = soft_key(family, key)?;
    ops::kcv(&soft)
}

/// The full check block (8 bytes TDES, 16 AES): for dialects that carry more than 3 bytes.
pub fn check_block(family: Family, key: &ClearKey) -> Result<Vec<u8>> {
    let soft = soft_key(family, key)?;
    ops::check_block(&soft)
}

fn soft_key(family: Family, key: &ClearKey) -> Result<SoftKey> {
    let key_type = match family {
        Family::Des => KeyType::des_for_len(key.len())?,
        Family::Aes => KeyType::aes_for_len(key.len())?,
    };
    SoftKey::new("calculator", key_type, key)
}

/// A MAC with a clear key. The key's family follows from the algorithm (AES for `aes-cmac`; an
/// ISO 9797-1 algorithm 1 key of 32 bytes is AES, otherwise DES family).
pub fn mac(algorithm: MacAlgorithm, key: &ClearKey, data: &[u8]) -> Result<Vec<u8>> {
    let family = match algorithm {
        MacAlgorithm::AesCmac => Family::Aes,
        MacAlgorithm::Iso9797Alg1 { .. } if key.len() == 32 => Family::Aes,
        _ => Family::Des,
    };
    mac::compute(&soft_key(family, key)?, algorithm, data)
}

/// A clear PIN block (formats 0, 1, 3).
pub fn clear_pin_block(format: PinBlockFormat, pin: &Pin, pan: &Pan) -> Result<PinBlock> {
    pin_block::clear_block(format, pin, Some(pan))
}

/// An encrypted PIN block under a clear key (TDES for formats 0, 1, 3; AES for format 4).
pub fn encrypted_pin_block(
    format: PinBlockFormat,
    pin: &Pin,
    pan: &Pan,
    key: &ClearKey,
) -> Result<PinBlock> {
    let soft = soft_key(format.family(), key)?;
    pin_block::encipher(&soft, format, pin, Some(pan))
}

/// Deciphers an encrypted PIN block under a clear key and returns the PIN.
pub fn decipher_pin_block(
    format: PinBlockFormat,
    block: &PinBlock,
    pan: &Pan,
    key: &ClearKey,
) -> Result<Pin> {
    let soft = soft_key(format.family(), key)?;
    pin_block::decipher(&soft, format, block, Some(pan))
}

/// Enciphers a format 4 block from a given PIN field (16 bytes): reproduces published vectors
/// whose random part is fixed.
pub fn encipher_iso4_pin_field(pin_field: &[u8], pan: &Pan, key: &ClearKey) -> Result<PinBlock> {
    let field: Zeroizing<[u8; 16]> = Zeroizing::new(
        pin_field
            .try_into()
            .map_err(|_| HsmError::invalid("a format 4 PIN field is 16 bytes"))?,
    );
    let soft = soft_key(Family::Aes, key)?;
    pin_block::encipher_iso4_field(&soft, &field, pan)
}

/// XOR of two or more clear key components of the same length (a key ceremony's combine step).
pub fn combine_components(components: &[ClearKey]) -> Result<ClearKey> {
    let first = components
        .first()
        .ok_or_else(|| HsmError::invalid("at least two components are needed"))?;
    if components.len() < 2 {
        return Err(HsmError::invalid("at least two components are needed"));
    }
    let mut out = Zeroizing::new(first.expose_secret().to_vec());
    for component in &components[1..] {
        if component.len() != out.len() {
            return Err(HsmError::invalid(
                "components must all have the same length",
            ));
        }
        for (o, c) in out.iter_mut().zip(component.expose_secret()) {
            *o ^= c;
        }
    }
    ClearKey::from_slice(&out)
}

/// A Visa PVV with a clear PVK (test tooling).
pub fn pvv(pvk: &ClearKey, pan: &Pan, pin: &Pin, pvki: u8) -> Result<String> {
    crate::pvv::pvv(&soft_key(Family::Des, pvk)?, pan, pin, pvki)
}
