//! ISO 9564-1 PIN block formats 0, 1, 3 (8 bytes, DES family) and 4 (16 bytes, AES).
//!
//! Encoding and decoding are pure; enciphering and deciphering run on a key of either backend.
//! Every intermediate clear value lives in zeroised memory.

use crate::error::{HsmError, Result};
use crate::keys::Family;
use crate::ops::KeyOps;
use crate::secret::{Pan, Pin, PinBlock};
use rand::{Rng, RngCore};
use std::fmt;
use std::str::FromStr;
use zeroize::Zeroizing;

/// An ISO 9564-1 PIN block format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PinBlockFormat {
    /// Format 0 (ANSI X9.8): PIN field XOR the 12 rightmost PAN digits before the check digit.
    Iso0,
    /// Format 1: PIN with random fill, no PAN.
    Iso1,
    /// Format 3: as format 0 with random fill A-F.
    Iso3,
    /// Format 4 (AES, 16 bytes): enciphered PIN field XOR PAN field, enciphered again.
    Iso4,
}

impl PinBlockFormat {
    /// Block length in bytes (8, or 16 for format 4).
    pub fn block_len(self) -> usize {
        match self {
            PinBlockFormat::Iso4 => 16,
            _ => 8,
        }
    }

    /// Whether the format binds the block to the PAN.
    pub fn needs_pan(self) -> bool {
        !matches!(self, PinBlockFormat::Iso1)
    }

    /// The cipher family a key for this format must have.
    pub fn family(self) -> Family {
        match self {
            PinBlockFormat::Iso4 => Family::Aes,
            _ => Family::Des,
        }
    }

    fn number(self) -> u8 {
        match self {
            PinBlockFormat::Iso0 => 0,
            PinBlockFormat::Iso1 => 1,
            PinBlockFormat::Iso3 => 3,
            PinBlockFormat::Iso4 => 4,
        }
    }
}

impl fmt::Display for PinBlockFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ISO-{}", self.number())
    }
}

impl FromStr for PinBlockFormat {
    type Err = HsmError;

    /// Accepts `0`, `1`, `3`, `4`, optionally prefixed `iso`, `iso-` or `iso_`.
    fn from_str(text: &str) -> Result<Self> {
        let lower = text.to_ascii_lowercase();
        let digits = lower
            .trim_start_matches("iso")
            .trim_start_matches(['-', '_']);
        match digits {
            "0" => Ok(PinBlockFormat::Iso0),
            "1" => Ok(PinBlockFormat::Iso1),
            "3" => Ok(PinBlockFormat::Iso3),
            "4" => Ok(PinBlockFormat::Iso4),
            _ => Err(HsmError::invalid(format!(
                "unknown PIN block format {text:?} (0, 1, 3 or 4)"
            ))),
        }
    }
}

fn pan_required(pan: Option<&Pan>, format: PinBlockFormat) -> Result<&Pan> {
    pan.ok_or_else(|| HsmError::invalid(format!("PIN block format {format} needs the PAN")))
}

/// The PAN field of formats 0 and 3: `0000` and the 12 rightmost digits before the check digit.
fn pan_field_0(pan: &Pan) -> Result<Zeroizing<[u8; 8]>> {
    let digits = pan.expose_secret().as_bytes();
    if digits.len() < 13 {
        return Err(HsmError::invalid(
            "PIN block formats 0 and 3 need a PAN of at least 13 digits",
        ));
    }
    let twelve = &digits[digits.len() - 13..digits.len() - 1];
    let mut field = Zeroizing::new([0u8; 8]);
    for (i, pair) in twelve.chunks(2).enumerate() {
        field[2 + i] = ((pair[0] - b'0') << 4) | (pair[1] - b'0');
    }
    Ok(field)
}

/// Builds the clear PIN field `C L P P ... fill` of formats 0, 1 and 3 (8 bytes, 16 nibbles).
fn pin_field_8(control: u8, pin: &Pin, mut fill: impl FnMut(usize) -> u8) -> Zeroizing<[u8; 8]> {
    let mut nibbles = Zeroizing::new([0u8; 16]);
    let digits = pin.expose_secret().as_bytes();
    nibbles[0] = control;
    nibbles[1] = digits.len() as u8;
    for (i, nibble) in nibbles.iter_mut().enumerate().skip(2) {
        *nibble = match digits.get(i - 2) {
            Some(d) => d - b'0',
            None => fill(i),
        };
    }
    pack(&nibbles[..])
}

fn pack<const N: usize>(nibbles: &[u8]) -> Zeroizing<[u8; N]> {
    let mut out = Zeroizing::new([0u8; N]);
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = (nibbles[2 * i] << 4) | nibbles[2 * i + 1];
    }
    out
}

fn unpack(bytes: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut nibbles = Zeroizing::new(Vec::with_capacity(bytes.len() * 2));
    for byte in bytes {
        nibbles.push(byte >> 4);
        nibbles.push(byte & 0x0F);
    }
    nibbles
}

/// Reads `C L PIN` from nibbles and checks the fill of the first `fill_end` nibbles.
fn read_pin_field(
    nibbles: &[u8],
    control: u8,
    fill_end: usize,
    fill_ok: impl Fn(u8) -> bool,
    format: PinBlockFormat,
) -> Result<Pin> {
    let bad = || HsmError::BadPinBlock {
        format: format.to_string(),
    };
    if nibbles[0] != control {
        return Err(bad());
    }
    let len = usize::from(nibbles[1]);
    if !(4..=12).contains(&len) {
        return Err(bad());
    }
    let mut digits = Zeroizing::new(String::with_capacity(len));
    for &nibble in &nibbles[2..2 + len] {
        if nibble > 9 {
            return Err(bad());
        }
        digits.push(char::from(b'0' + nibble));
    }
    if !nibbles[2 + len..fill_end].iter().all(|&n| fill_ok(n)) {
        return Err(bad());
    }
    Pin::new(&digits)
}

/// Builds a clear 8-byte PIN block of format 0, 1 or 3 (random fill from the OS-seeded CSPRNG).
pub fn clear_block(format: PinBlockFormat, pin: &Pin, pan: Option<&Pan>) -> Result<PinBlock> {
    let mut rng = rand::rng();
    let field = match format {
        PinBlockFormat::Iso0 => pin_field_8(0, pin, |_| 0xF),
        PinBlockFormat::Iso1 => pin_field_8(1, pin, |_| rng.random_range(0..16u8)),
        PinBlockFormat::Iso3 => pin_field_8(3, pin, |_| rng.random_range(10..16u8)),
        PinBlockFormat::Iso4 => {
            return Err(HsmError::invalid(
                "format 4 has no clear block: it exists only enciphered (see iso4_pin_field)",
            ));
        }
    };
    let mut block = Zeroizing::new(field.to_vec());
    if format.needs_pan() {
        let pan_field = pan_field_0(pan_required(pan, format)?)?;
        for (b, p) in block.iter_mut().zip(pan_field.iter()) {
            *b ^= p;
        }
    }
    PinBlock::from_slice(&block)
}

/// Decodes a clear 8-byte PIN block of format 0, 1 or 3 into its PIN.
pub fn decode_clear_block(
    format: PinBlockFormat,
    block: &PinBlock,
    pan: Option<&Pan>,
) -> Result<Pin> {
    if block.len() != 8 || format == PinBlockFormat::Iso4 {
        return Err(HsmError::BadPinBlock {
            format: format.to_string(),
        });
    }
    let mut field = Zeroizing::new(block.expose_secret().to_vec());
    if format.needs_pan() {
        let pan_field = pan_field_0(pan_required(pan, format)?)?;
        for (b, p) in field.iter_mut().zip(pan_field.iter()) {
            *b ^= p;
        }
    }
    let nibbles = unpack(&field);
    match format {
        PinBlockFormat::Iso0 => read_pin_field(&nibbles, 0, 16, |n| n == 0xF, format),
        PinBlockFormat::Iso1 => read_pin_field(&nibbles, 1, 16, |_| true, format),
        _ => read_pin_field(&nibbles, 3, 16, |n| n >= 0xA, format),
    }
}

/// The format 4 plain-text PIN field: `4 L PIN` filled with A to 16 nibbles, then 8 random bytes.
pub fn iso4_pin_field(pin: &Pin, random: [u8; 8]) -> Zeroizing<[u8; 16]> {
    let digits = pin.expose_secret().as_bytes();
    let mut nibbles = Zeroizing::new([0xAu8; 32]);
    nibbles[0] = 4;
    nibbles[1] = digits.len() as u8;
    for (i, d) in digits.iter().enumerate() {
        nibbles[2 + i] = d - b'0';
    }
    for (i, byte) in random.iter().enumerate() {
        nibbles[16 + 2 * i] = byte >> 4;
        nibbles[17 + 2 * i] = byte & 0x0F;
    }
    pack(&nibbles[..])
}

/// The format 4 PAN field: digit (PAN length - 12, 0 below 12), the PAN (left-padded with zeros
/// to 12 digits when shorter), zeros to 32 nibbles.
pub fn iso4_pan_field(pan: &Pan) -> Zeroizing<[u8; 16]> {
    let digits = pan.expose_secret().as_bytes();
    let mut nibbles = Zeroizing::new([0u8; 32]);
    let (m, pad) = if digits.len() >= 12 {
        (digits.len() - 12, 0)
    } else {
        (0, 12 - digits.len())
    };
    nibbles[0] = m as u8;
    for (i, d) in digits.iter().enumerate() {
        nibbles[1 + pad + i] = d - b'0';
    }
    pack(&nibbles[..])
}

fn decode_iso4_pin_field(field: &[u8]) -> Result<Pin> {
    let nibbles = unpack(field);
    read_pin_field(&nibbles, 4, 16, |n| n == 0xA, PinBlockFormat::Iso4)
}

fn xor_in_place(target: &mut [u8], other: &[u8]) {
    for (t, o) in target.iter_mut().zip(other) {
        *t ^= o;
    }
}

/// Enciphers format 4 from a given PIN field (the published vector fixes the random part).
pub(crate) fn encipher_iso4_field(
    key: &dyn KeyOps,
    pin_field: &[u8; 16],
    pan: &Pan,
) -> Result<PinBlock> {
    key.require_family(Family::Aes, "PIN block format 4")?;
    let mut intermediate = key.ecb_encrypt(pin_field)?;
    xor_in_place(&mut intermediate, &iso4_pan_field(pan)[..]);
    PinBlock::from_slice(&key.ecb_encrypt(&intermediate)?)
}

/// Builds and enciphers a PIN block under `key`.
pub(crate) fn encipher(
    key: &dyn KeyOps,
    format: PinBlockFormat,
    pin: &Pin,
    pan: Option<&Pan>,
) -> Result<PinBlock> {
    crate::ops::refuse_data_key(key, "a PIN block")?;
    key.require_family(format.family(), &format!("PIN block format {format}"))?;
    if format == PinBlockFormat::Iso4 {
        let mut random = Zeroizing::new([0u8; 8]);
        rand::rng().fill_bytes(&mut random[..]);
        let field = iso4_pin_field(pin, *random);
        return encipher_iso4_field(key, &field, pan_required(pan, format)?);
    }
    let clear = clear_block(format, pin, pan)?;
    PinBlock::from_slice(&key.ecb_encrypt(clear.expose_secret())?)
}

/// Deciphers a PIN block under `key` and decodes its PIN.
pub(crate) fn decipher(
    key: &dyn KeyOps,
    format: PinBlockFormat,
    block: &PinBlock,
    pan: Option<&Pan>,
) -> Result<Pin> {
    crate::ops::refuse_data_key(key, "a PIN block")?;
    key.require_family(format.family(), &format!("PIN block format {format}"))?;
    if block.len() != format.block_len() {
        return Err(HsmError::invalid(format!(
            "a {format} PIN block is {} bytes, got {}",
            format.block_len(),
            block.len()
        )));
    }
    if format == PinBlockFormat::Iso4 {
        let pan = pan_required(pan, format)?;
        let mut intermediate = key.ecb_decrypt(block.expose_secret())?;
        xor_in_place(&mut intermediate, &iso4_pan_field(pan)[..]);
        let field = key.ecb_decrypt(&intermediate)?;
        return decode_iso4_pin_field(&field);
    }
    let clear = PinBlock::from_slice(&key.ecb_decrypt(block.expose_secret())?)?;
    decode_clear_block(format, &clear, pan)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn format_0_vector() {
        let pin = Pin::new("1234").unwrap();
        let pan = Pan::new("4321987654321098").unwrap();
        let block = clear_block(PinBlockFormat::Iso0, &pin, Some(&pan)).unwrap();
        assert_eq!(hex::encode_upper(block.expose_secret()), "04122D789ABCDEF6");
        let back = decode_clear_block(PinBlockFormat::Iso0, &block, Some(&pan)).unwrap();
        assert_eq!(back.expose_secret(), "1234");
    }

    #[test]
    fn formats_1_and_3_round_trip_with_their_fill() {
        let pan = Pan::new("4111111111111111").unwrap();
        for digits in ["1234", "123456789012", "00000"] {
            let pin = Pin::new(digits).unwrap();
            for format in [PinBlockFormat::Iso1, PinBlockFormat::Iso3] {
                let block = clear_block(format, &pin, Some(&pan)).unwrap();
                let back = decode_clear_block(format, &block, Some(&pan)).unwrap();
                assert_eq!(back.expose_secret(), digits);
            }
        }
        // Format 3's fill is A-F: decoding a format 0 block as format 3 must fail.
        let pin = Pin::new("1234").unwrap();
        let block0 = clear_block(PinBlockFormat::Iso0, &pin, Some(&pan)).unwrap();
        assert!(decode_clear_block(PinBlockFormat::Iso3, &block0, Some(&pan)).is_err());
        let block1 = clear_block(PinBlockFormat::Iso1, &pin, None).unwrap();
        assert!(decode_clear_block(PinBlockFormat::Iso0, &block1, Some(&pan)).is_err());
    }

    #[test]
    fn format_4_fields() {
        let pin = Pin::new("1234").unwrap();
        let field = iso4_pin_field(&pin, [0x2F, 0x69, 0xAD, 0xDE, 0x2E, 0x9E, 0x7A, 0xCE]);
        assert_eq!(
            hex::encode_upper(&field[..]),
            "441234AAAAAAAAAA2F69ADDE2E9E7ACE"
        );
        let pan = Pan::new("4111111111111111").unwrap();
        assert_eq!(
            hex::encode_upper(&iso4_pan_field(&pan)[..]),
            "44111111111111111000000000000000"
        );
        let short = Pan::new("12345678").unwrap();
        assert_eq!(
            hex::encode_upper(&iso4_pan_field(&short)[..]),
            "00000123456780000000000000000000"
        );
    }

    #[test]
    fn format_names_parse() {
        assert_eq!("0".parse::<PinBlockFormat>().unwrap(), PinBlockFormat::Iso0);
        assert_eq!(
            "ISO-4".parse::<PinBlockFormat>().unwrap(),
            PinBlockFormat::Iso4
        );
        assert!("2".parse::<PinBlockFormat>().is_err());
    }
}
