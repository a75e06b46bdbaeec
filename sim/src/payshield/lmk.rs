//! The variant LMK scheme of a Thales payShield, with the well-known public *test* LMK set.
//!
//! Twenty double-length LMK pairs (00-01 ... 38-39). A key is encrypted under the LMK pair of
//! its key type (the last two characters of the 3-character key type code: `00` = pair 04-05,
//! `01` = 06-07, `02` = 14-15, `03` = 16-17, ... `08` = 26-27), with the key type's variant
//! (its first character, 0-9) XORed into the first byte of the pair's left key. A double-length
//! key (scheme `U`) is encrypted half by half, the left half with `A6` and the right half with
//! `5A` XORed into the first byte of the pair's right key; a triple-length key (`T`) uses `6A`,
//! `DE`, `2B`. Single-length keys (`Z`) use the pair as it is. Encryption is two-key triple DES
//! (ECB) under the pair.
//!
//! These are published test values: anything encrypted under them protects nothing.

use des::TdesEde2;
use des::cipher::{BlockDecrypt, BlockEncrypt, KeyInit, generic_array::GenericArray};
use posbridge_hsm::ClearKey;
use zeroize::Zeroizing;

/// The public test LMK set, pairs 00-01 to 38-39 (left key | right key).
pub const TEST_LMK: [&str; 20] = [
    "01010101010101017902CD1FD36EF8BA",
    "20202020202020203131313131313131",
    "40404040404040405151515151515151",
    "61616161616161617070707070707070",
    "80808080808080809191919191919191",
    "A1A1A1A1A1A1A1A1B0B0B0B0B0B0B0B0",
    "C1C1010101010101D0D0010101010101",
    "E0E0010101010101F1F1010101010101",
    "1C587F1C13924FEF0101010101010101",
    "01010101010101010101010101010101",
    "02020202020202020404040404040404",
    "07070707070707071010101010101010",
    "13131313131313131515151515151515",
    "16161616161616161919191919191919",
    "1A1A1A1A1A1A1A1A1C1C1C1C1C1C1C1C",
    "23232323232323232525252525252525",
    "26262626262626262929292929292929",
    "2A2A2A2A2A2A2A2A2C2C2C2C2C2C2C2C",
    "2F2F2F2F2F2F2F2F3131313131313131",
    "01010101010101010101010101010101",
];

/// The key type variants 0-9, XORed into the first byte of the LMK pair's left key.
const VARIANTS: [u8; 10] = [0x00, 0xA6, 0x5A, 0x6A, 0xDE, 0x2B, 0x50, 0x74, 0x9C, 0xFA];
/// Scheme variants of the parts of a double-length key (U).
const DOUBLE: [u8; 2] = [0xA6, 0x5A];
/// Scheme variants of the parts of a triple-length key (T).
const TRIPLE: [u8; 3] = [0x6A, 0xDE, 0x2B];

/// Index into [`TEST_LMK`] of LMK pair 02-03 (PINs).
pub const PIN_PAIR: usize = 1;

/// Why a key cannot be handled (the command answers with an error code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LmkError {
    /// Not a key type code this scheme knows (error 04).
    KeyType,
    /// Not a 16 H, U + 32 H or T + 48 H cryptogram (error 15).
    Cryptogram,
}

/// The index into [`TEST_LMK`] of a key type code's LMK pair, and its variant.
pub fn pair_of(type_code: &str) -> Result<(usize, u8), LmkError> {
    let bytes = type_code.as_bytes();
    if bytes.len() != 3 {
        return Err(LmkError::KeyType);
    }
    let variant = match bytes[0] {
        digit @ b'0'..=b'9' => VARIANTS[usize::from(digit - b'0')],
        _ => return Err(LmkError::KeyType),
    };
    let pair = match &type_code[1..] {
        "00" => 2,
        "01" => 3,
        "02" => 7,
        "03" => 8,
        "04" => 9,
        "05" => 10,
        "06" => 11,
        "07" => 12,
        "08" => 13,
        "09" => 14,
        "0A" | "0a" => 15,
        "0B" | "0b" => 16,
        "0C" | "0c" => 17,
        "0D" | "0d" => 18,
        "0E" | "0e" => 19,
        _ => return Err(LmkError::KeyType),
    };
    Ok((pair, variant))
}

/// One LMK pair with a key type variant and a scheme variant applied.
fn lmk_cipher(pair: usize, variant: u8, scheme: u8) -> TdesEde2 {
    let mut key = Zeroizing::new([0u8; 16]);
    // TEST_LMK holds valid hex constants: decoding cannot fail.
    let _ = hex::decode_to_slice(TEST_LMK[pair], &mut key[..]);
    key[0] ^= variant;
    key[8] ^= scheme;
    TdesEde2::new(GenericArray::from_slice(&key[..]))
}

/// Two-key triple DES over 8-byte blocks under a clear 8/16/24-byte key (as K|K, K1|K2|K1, K1|K2|K3).
pub fn tdes(key: &[u8], data: &[u8], encrypt: bool) -> Zeroizing<Vec<u8>> {
    let mut full = Zeroizing::new([0u8; 24]);
    for (i, byte) in full.iter_mut().enumerate() {
        *byte = key[i % key.len()];
    }
    let cipher = des::TdesEde3::new(GenericArray::from_slice(&full[..]));
    let mut out = Zeroizing::new(data.to_vec());
    for block in out.chunks_mut(8) {
        let block = GenericArray::from_mut_slice(block);
        if encrypt {
            cipher.encrypt_block(block);
        } else {
            cipher.decrypt_block(block);
        }
    }
    out
}

fn parts(len: usize) -> &'static [u8] {
    match len {
        8 => &[0],
        16 => &DOUBLE,
        _ => &TRIPLE,
    }
}

/// Encrypts a clear key under the test LMK for `type_code`: 16 H, `U` + 32 H or `T` + 48 H.
pub fn encrypt(clear: &ClearKey, type_code: &str) -> Result<String, LmkError> {
    encrypt_under_pair(clear, pair_of(type_code)?)
}

fn encrypt_under_pair(clear: &ClearKey, (pair, variant): (usize, u8)) -> Result<String, LmkError> {
    let bytes = clear.expose_secret();
    let prefix = match bytes.len() {
        8 => "",
        16 => "U",
        24 => "T",
        _ => return Err(LmkError::Cryptogram),
    };
    let mut out = String::from(prefix);
    for (part, scheme) in bytes.chunks(8).zip(parts(bytes.len())) {
        let mut block = GenericArray::clone_from_slice(part);
        lmk_cipher(pair, variant, *scheme).encrypt_block(&mut block);
        out.push_str(&hex::encode_upper(block));
    }
    Ok(out)
}

/// Decrypts a key under the test LMK for `type_code`.
pub fn decrypt(cryptogram: &str, type_code: &str) -> Result<ClearKey, LmkError> {
    decrypt_under_pair(cryptogram, pair_of(type_code)?)
}

fn decrypt_under_pair(
    cryptogram: &str,
    (pair, variant): (usize, u8),
) -> Result<ClearKey, LmkError> {
    let hex_part = match (cryptogram.len(), cryptogram.as_bytes().first()) {
        (16, _) => cryptogram,
        (33, Some(b'U')) | (49, Some(b'T')) => &cryptogram[1..],
        _ => return Err(LmkError::Cryptogram),
    };
    let bytes = Zeroizing::new(hex::decode(hex_part).map_err(|_| LmkError::Cryptogram)?);
    let mut clear = Zeroizing::new(Vec::with_capacity(bytes.len()));
    for (part, scheme) in bytes.chunks(8).zip(parts(bytes.len())) {
        let mut block = GenericArray::clone_from_slice(part);
        lmk_cipher(pair, variant, *scheme).decrypt_block(&mut block);
        clear.extend_from_slice(&block);
    }
    ClearKey::from_slice(&clear).map_err(|_| LmkError::Cryptogram)
}

/// The 8-byte check block of a clear DES-family key (triple DES of a zero block).
pub fn check_block(clear: &ClearKey) -> Vec<u8> {
    tdes(clear.expose_secret(), &[0u8; 8], true).to_vec()
}

/// Whether every byte of a key has odd parity.
pub fn odd_parity(clear: &ClearKey) -> bool {
    clear
        .expose_secret()
        .iter()
        .all(|byte| byte.count_ones() % 2 == 1)
}

/// The key with odd parity forced on every byte (what A6 stores).
pub fn force_odd_parity(clear: &ClearKey) -> ClearKey {
    let mut bytes = Zeroizing::new(clear.expose_secret().to_vec());
    for byte in bytes.iter_mut() {
        let high = *byte & 0xFE;
        *byte = high | u8::from(high.count_ones() % 2 == 0);
    }
    // Same length as a valid key.
    ClearKey::from_slice(&bytes).unwrap_or_else(|_| clear.clone())
}

/// The simulator's LMK check value (NC): the 16 H encryption of a zero block under LMK pair
/// 00-01. The real device derives its value by a method its manual does not publish; the client
/// only displays it.
pub fn lmk_check_value() -> String {
    let mut block = GenericArray::clone_from_slice(&[0u8; 8]);
    lmk_cipher(0, 0, 0).encrypt_block(&mut block);
    hex::encode_upper(block)
}

/// The keystream of the simulator's PIN-under-LMK encryption for an account number: decimal
/// digits of triple DES (LMK pair 02-03) of the account number block. A real payShield uses a
/// proprietary method for PINs under LMK pair 02-03; posbridge treats that field as opaque, so
/// the simulator needs only a reversible stand-in bound to the account.
fn pin_keystream(account: &str, len: usize) -> Zeroizing<Vec<u8>> {
    let mut block = [0u8; 8];
    let digits = format!("0000{account:0>12}");
    let _ = hex::decode_to_slice(&digits[digits.len() - 16..], &mut block);
    let mut stream = Zeroizing::new(Vec::with_capacity(len));
    let cipher = lmk_cipher(PIN_PAIR, 0, 0);
    let mut state = GenericArray::clone_from_slice(&block);
    while stream.len() < len {
        cipher.encrypt_block(&mut state);
        stream.extend(state.iter().map(|b| b % 10));
    }
    stream.truncate(len);
    stream
}

/// Encrypts a clear PIN (digits) under "LMK pair 02-03" to `len` digits: the PIN's length less
/// 4, the PIN, zero fill, each digit added to the keystream mod 10.
pub fn encrypt_pin(pin: &str, account: &str, len: usize) -> Option<Zeroizing<String>> {
    if pin.len() < 4 || pin.len() >= len || !pin.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut plain = Zeroizing::new(Vec::with_capacity(len));
    plain.push(u8::try_from(pin.len() - 4).ok()?);
    plain.extend(pin.bytes().map(|b| b - b'0'));
    plain.resize(len, 0);
    let stream = pin_keystream(account, len);
    Some(Zeroizing::new(
        plain
            .iter()
            .zip(stream.iter())
            .map(|(p, k)| char::from(b'0' + (p + k) % 10))
            .collect(),
    ))
}

/// Decrypts [`encrypt_pin`]'s output.
pub fn decrypt_pin(encrypted: &str, account: &str) -> Option<Zeroizing<String>> {
    if encrypted.len() < 5 || !encrypted.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let stream = pin_keystream(account, encrypted.len());
    let plain: Zeroizing<Vec<u8>> = Zeroizing::new(
        encrypted
            .bytes()
            .zip(stream.iter())
            .map(|(c, k)| (c - b'0' + 10 - k) % 10)
            .collect(),
    );
    let pin_len = usize::from(plain[0]) + 4;
    if pin_len >= plain.len() {
        return None;
    }
    Some(Zeroizing::new(
        plain[1..=pin_len]
            .iter()
            .map(|d| char::from(b'0' + d))
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn key(text: &str) -> ClearKey {
        ClearKey::from_hex(text).unwrap()
    }

    #[test]
    fn scheme_u_halves_use_different_scheme_variants() {
        // A published cross-check of the variant scheme (an external Thales key tool): LMK pair
        // 00-01, variant 1, scheme U.
        let clear = key("0123456789ABCDEFFEDCBA9876543210");
        assert_eq!(
            encrypt_under_pair(&clear, (0, VARIANTS[1])).unwrap(),
            "UA12049CC30D20BE0DC6E5E2A98FADE9E"
        );
        assert_eq!(
            encrypt_under_pair(&clear, (0, VARIANTS[2])).unwrap(),
            "UBD7F64B9F9875B731BAED72101DEA65B"
        );
        let back =
            decrypt_under_pair("UA12049CC30D20BE0DC6E5E2A98FADE9E", (0, VARIANTS[1])).unwrap();
        assert_eq!(back, clear);
        assert_eq!(hex::encode_upper(&check_block(&clear)[..3]), "08D7B4");
    }

    #[test]
    fn key_types_select_pairs_and_round_trip() {
        assert_eq!(pair_of("000").unwrap(), (2, 0));
        assert_eq!(pair_of("001").unwrap(), (3, 0));
        assert_eq!(pair_of("002").unwrap(), (7, 0));
        assert_eq!(pair_of("003").unwrap(), (8, 0));
        assert_eq!(pair_of("008").unwrap(), (13, 0));
        assert_eq!(pair_of("402").unwrap(), (7, 0xDE));
        assert!(pair_of("0G0").is_err());
        for text in [
            "5BB5C72CD00B7338",
            "0123456789ABCDEFFEDCBA9876543210",
            "5E8A1C3F7D2B9E4661A3C5E7092B4D6F8A1C3E5F7092B4D6",
        ] {
            let clear = key(text);
            let zpk = encrypt(&clear, "001").unwrap();
            let tak = encrypt(&clear, "003").unwrap();
            assert_ne!(zpk, tak, "key separation: another pair, another cryptogram");
            assert_eq!(decrypt(&zpk, "001").unwrap(), clear);
            assert_ne!(decrypt(&zpk, "003").unwrap(), clear);
        }
    }

    #[test]
    fn pins_under_the_lmk_round_trip_and_bind_the_account() {
        let encrypted = encrypt_pin("918273645546", "123456789012", 13).unwrap();
        assert_eq!(encrypted.len(), 13);
        assert_ne!(&encrypted[1..], "918273645546");
        assert_eq!(
            decrypt_pin(&encrypted, "123456789012").unwrap().as_str(),
            "918273645546"
        );
        assert_ne!(
            decrypt_pin(&encrypted, "123456789013").map(|p| p.to_string()),
            Some("918273645546".into())
        );
        assert!(encrypt_pin("1234", "123456789012", 4).is_none());
        assert_eq!(
            decrypt_pin(&encrypt_pin("1234", "0", 5).unwrap(), "0")
                .unwrap()
                .as_str(),
            "1234"
        );
    }
}
