//! The few block-cipher operations every algorithm in this crate is built from, as a trait both
//! backends implement for "a key in use": the software backend with RustCrypto over a clear key,
//! the PKCS#11 backend with token calls on key handles. PIN block, MAC, KCV and PVV logic is then
//! written once (in `pin_block`, `mac`, `pvv`) and the conformance suite checks both backends.

use crate::error::{HsmError, Result};
use crate::keys::{Family, KeyType};
use crate::secret::ClearKey;
use aes::{Aes128, Aes192, Aes256};
use aes_gcm::aead::Aead;
use cipher::{BlockDecrypt, BlockEncrypt, KeyInit, generic_array::GenericArray};
use cmac::{Cmac, Mac};
use des::{Des, TdesEde3};
use zeroize::Zeroizing;

/// One key, ready to use.
pub(crate) trait KeyOps {
    /// The key's label (for error messages).
    fn label(&self) -> &str;
    /// The key's type.
    fn key_type(&self) -> KeyType;
    /// ECB encryption of whole blocks.
    fn ecb_encrypt(&self, data: &[u8]) -> Result<Zeroizing<Vec<u8>>>;
    /// ECB decryption of whole blocks.
    fn ecb_decrypt(&self, data: &[u8]) -> Result<Zeroizing<Vec<u8>>>;
    /// CBC encryption of whole blocks from `iv`; returns only the last cipher block.
    fn cbc_last(&self, iv: &[u8], data: &[u8]) -> Result<Vec<u8>>;
    /// As `cbc_last`, with single DES under the key's left half K1 (ISO 9797-1 algorithm 3's
    /// chaining steps). Only for `Des` and `Tdes2` keys.
    fn left_cbc_last(&self, iv: &[u8], data: &[u8]) -> Result<Vec<u8>>;
    /// AES-CMAC (RFC 4493), full 16 bytes. Only for AES keys.
    fn aes_cmac(&self, data: &[u8]) -> Result<Vec<u8>>;
    /// AES-GCM encryption with a 12-byte nonce and a 16-byte tag: ciphertext then tag. Only for
    /// AES keys.
    fn gcm_seal(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>>;
    /// AES-GCM decryption of ciphertext then tag; [`HsmError::SealBroken`] when the tag does
    /// not verify.
    fn gcm_open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>>;

    /// The key's check block: DES family encrypts 8 zero bytes, AES takes the CMAC of 16 zero
    /// bytes. A token key that may neither encrypt nor sign answers with the check value stored
    /// when it was created (only as long as the standard check value).
    fn check_block(&self) -> Result<Vec<u8>> {
        computed_check_block(self)
    }

    /// Block length.
    fn block_len(&self) -> usize {
        self.key_type().block_len()
    }

    /// Fails with `WrongKey` unless the key is of `family`.
    fn require_family(&self, family: Family, what: &str) -> Result<()> {
        if self.key_type().family() == family {
            Ok(())
        } else {
            Err(HsmError::wrong_key(
                self.label(),
                format!(
                    "{what} needs a {family:?}-family key, this is {}",
                    self.key_type()
                ),
            ))
        }
    }
}

/// Length of an AES-GCM nonce in a sealed value.
pub(crate) const NONCE_LEN: usize = 12;
/// Length of an AES-GCM tag in a sealed value.
pub(crate) const TAG_LEN: usize = 16;
/// First byte of a sealed value: the format (AES-GCM, 12-byte nonce, 16-byte tag).
const SEALED_V1: u8 = 1;

/// Seals `plaintext` under the data key `key` (see
/// [`SecurityModule::encrypt_data`](crate::SecurityModule::encrypt_data)): `01 | nonce (12) |
/// ciphertext | tag (16)`, the nonce random, `context` authenticated with it.
pub(crate) fn seal(key: &dyn KeyOps, context: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
    require_data_key(key)?;
    let mut nonce = [0u8; NONCE_LEN];
    rand::fill(&mut nonce);
    let body = key.gcm_seal(&nonce, context, plaintext)?;
    let mut sealed = Vec::with_capacity(1 + NONCE_LEN + body.len());
    sealed.push(SEALED_V1);
    sealed.extend_from_slice(&nonce);
    sealed.extend_from_slice(&body);
    Ok(sealed)
}

/// Opens what [`seal`] made, with the same key and context.
pub(crate) fn open(key: &dyn KeyOps, context: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    require_data_key(key)?;
    let (version, rest) = sealed
        .split_first()
        .ok_or_else(|| HsmError::invalid("sealed data is empty"))?;
    if *version != SEALED_V1 || rest.len() < NONCE_LEN + TAG_LEN {
        return Err(HsmError::SealBroken {
            label: key.label().to_owned(),
        });
    }
    let (nonce, body) = rest.split_at(NONCE_LEN);
    let nonce: &[u8; NONCE_LEN] = nonce
        .try_into()
        .map_err(|_| HsmError::invalid("nonce length"))?;
    key.gcm_open(nonce, context, body)
}

/// Only data keys (`dek/`) seal and open: a PIN key's decrypt usage must not become a way to
/// read data, nor a data key a way to handle PIN blocks.
fn require_data_key(key: &dyn KeyOps) -> Result<()> {
    if crate::policy::KeyClass::of_label(key.label())? != crate::policy::KeyClass::Dek {
        return Err(HsmError::wrong_key(
            key.label(),
            "only dek/ keys seal and open data",
        ));
    }
    key.require_family(Family::Aes, "AES-GCM")
}

/// AES-GCM (NIST SP 800-38D, 96-bit IV, 128-bit tag) built from the key's block encryption, for
/// a token without `CKM_AES_GCM`: the counter blocks are enciphered in the token (one ECB call);
/// GHASH, its key `H = E(0)` and the keystream are in zeroised host memory, where the data is
/// anyway. `seal`: `data` is the plaintext, the result ciphertext then tag; else `data` is
/// ciphertext then tag and the result the plaintext (or `SealBroken`).
pub(crate) fn gcm_from_cipher<K: KeyOps + ?Sized>(
    key: &K,
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    data: &[u8],
    seal: bool,
) -> Result<Zeroizing<Vec<u8>>> {
    use ghash::universal_hash::{KeyInit as _, UniversalHash as _};
    key.require_family(Family::Aes, "AES-GCM")?;
    let (body, tag) = if seal {
        (data, &[][..])
    } else {
        if data.len() < TAG_LEN {
            return Err(HsmError::SealBroken {
                label: key.label().to_owned(),
            });
        }
        data.split_at(data.len() - TAG_LEN)
    };
    // H = E(0), then J0 = IV | 1 and the counter blocks inc32(J0), inc32(inc32(J0)), ...
    let blocks = body.len().div_ceil(16);
    let counter_blocks =
        u32::try_from(blocks + 1).map_err(|_| HsmError::invalid("AES-GCM data too long"))?;
    let mut input = Zeroizing::new(vec![0u8; 16 * (blocks + 2)]);
    for i in 0..counter_blocks {
        let block = &mut input[16 * (i as usize + 1)..16 * (i as usize + 2)];
        block[..NONCE_LEN].copy_from_slice(nonce);
        block[NONCE_LEN..].copy_from_slice(&(i + 1).to_be_bytes());
    }
    let stream = key.ecb_encrypt(&input)?;
    let h = ghash::Key::clone_from_slice(&stream[..16]);
    let mut out = Zeroizing::new(body.to_vec());
    for (byte, k) in out.iter_mut().zip(&stream[32..]) {
        *byte ^= k;
    }
    let ciphertext: &[u8] = if seal { &out } else { body };
    let mut hash = ghash::GHash::new(&h);
    hash.update_padded(aad);
    hash.update_padded(ciphertext);
    let mut lengths = [0u8; 16];
    lengths[..8].copy_from_slice(&((aad.len() as u64) * 8).to_be_bytes());
    lengths[8..].copy_from_slice(&((ciphertext.len() as u64) * 8).to_be_bytes());
    hash.update_padded(&lengths);
    let mut computed = Zeroizing::new(hash.finalize().to_vec());
    for (t, k) in computed.iter_mut().zip(&stream[16..32]) {
        *t ^= k;
    }
    if seal {
        out.extend_from_slice(&computed);
        Ok(out)
    } else if constant_time_eq(&computed, tag) {
        Ok(out)
    } else {
        Err(HsmError::SealBroken {
            label: key.label().to_owned(),
        })
    }
}

/// Refuses a data key (`dek/`) for anything but sealing: it never MACs, never handles a PIN
/// block. (Keys without a class label, the calculator's, pass.)
pub(crate) fn refuse_data_key(key: &dyn KeyOps, what: &str) -> Result<()> {
    if crate::policy::KeyClass::of_label(key.label()).ok() == Some(crate::policy::KeyClass::Dek) {
        return Err(HsmError::wrong_key(
            key.label(),
            format!("a data key only seals and opens data, never {what}"),
        ));
    }
    Ok(())
}

/// Full check block, computed with the key: DES family encrypts 8 zero bytes; AES takes the CMAC
/// of 16 zero bytes.
pub(crate) fn computed_check_block<K: KeyOps + ?Sized>(key: &K) -> Result<Vec<u8>> {
    match key.key_type().family() {
        Family::Des => Ok(key.ecb_encrypt(&[0u8; 8])?.to_vec()),
        Family::Aes => key.aes_cmac(&[0u8; 16]),
    }
}

/// The key's check block (see [`KeyOps::check_block`]).
pub(crate) fn check_block(key: &dyn KeyOps) -> Result<Vec<u8>> {
    key.check_block()
}

/// AES-CMAC (RFC 4493) built from the key's block encryption: for a token without a CMAC
/// mechanism. The subkeys derive from `L = E(0)`, which stays in zeroised host memory; the
/// chaining runs in the token (CBC encryption of the prepared message).
pub(crate) fn cmac_from_cipher<K: KeyOps + ?Sized>(key: &K, data: &[u8]) -> Result<Vec<u8>> {
    key.require_family(Family::Aes, "AES-CMAC")?;
    let dbl = |block: &[u8]| -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(vec![0u8; 16]);
        for i in 0..16 {
            let next = block.get(i + 1).map_or(0, |b| b >> 7);
            out[i] = (block[i] << 1) | next;
        }
        if block[0] & 0x80 != 0 {
            out[15] ^= 0x87;
        }
        out
    };
    let l = key.ecb_encrypt(&[0u8; 16])?;
    let k1 = dbl(&l);
    let k2 = dbl(&k1);
    let complete = !data.is_empty() && data.len().is_multiple_of(16);
    let mut message = Zeroizing::new(data.to_vec());
    if !complete {
        message.push(0x80);
        let short = (16 - message.len() % 16) % 16;
        let padded_len = message.len() + short;
        message.resize(padded_len, 0);
    }
    let last = message.len() - 16;
    let subkey = if complete { &k1 } else { &k2 };
    for (m, k) in message[last..].iter_mut().zip(subkey.iter()) {
        *m ^= k;
    }
    key.cbc_last(&[0u8; 16], &message)
}

/// Sets odd parity on every byte of a DES key, as terminals and some tokens expect.
pub(crate) fn set_odd_parity(key: &mut [u8]) {
    for byte in key.iter_mut() {
        let high = *byte & 0xFE;
        *byte = high | u8::from(high.count_ones() % 2 == 0);
    }
}

/// Standard key check value (3 bytes DES family, 5 bytes AES).
pub(crate) fn kcv(key: &dyn KeyOps) -> Result<Vec<u8>> {
    let mut block = check_block(key)?;
    block.truncate(key.key_type().kcv_len());
    Ok(block)
}

/// Compares `expected` (2 to 8 bytes DES family, 2 to 16 AES) with the key's check block prefix.
pub(crate) fn kcv_matches(key: &dyn KeyOps, expected: &[u8]) -> Result<(bool, Vec<u8>)> {
    let block = check_block(key)?;
    if expected.len() < 2 || expected.len() > block.len() {
        return Err(HsmError::invalid(format!(
            "check value must be 2 to {} bytes",
            block.len()
        )));
    }
    let computed = block[..expected.len()].to_vec();
    Ok((constant_time_eq(&computed, expected), computed))
}

/// Equality that does not stop at the first differing byte (MACs, PVVs, check values).
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn check_blocks(data: &[u8], block_len: usize) -> Result<()> {
    if data.len().is_multiple_of(block_len) {
        Ok(())
    } else {
        Err(HsmError::invalid(format!(
            "data must be whole {block_len}-byte blocks"
        )))
    }
}

/// The RustCrypto cipher behind a clear key.
enum SoftCipher {
    Tdes(Box<TdesEde3>),
    Aes128(Box<Aes128>),
    Aes192(Box<Aes192>),
    Aes256(Box<Aes256>),
}

/// A clear key in host memory, used by the software backend and the operator's calculator.
pub(crate) struct SoftKey {
    label: String,
    key_type: KeyType,
    cipher: SoftCipher,
    /// Single DES under the left half, for X9.19 (only `Des` and `Tdes2`).
    left: Option<Box<Des>>,
    /// Kept for CMAC, which needs its own key schedule.
    key: ClearKey,
}

impl SoftKey {
    /// Prepares a clear key of `key_type` for use.
    pub(crate) fn new(label: &str, key_type: KeyType, key: &ClearKey) -> Result<Self> {
        let bytes = key.expose_secret();
        if bytes.len() != key_type.key_len() {
            return Err(HsmError::wrong_key(
                label,
                format!(
                    "a {key_type} key is {} bytes, got {}",
                    key_type.key_len(),
                    bytes.len()
                ),
            ));
        }
        let bad = |_| HsmError::wrong_key(label, "key rejected by the cipher");
        // Triple DES with K1|K2|K3; single and double length expand to K|K|K and K1|K2|K1,
        // which compute the same results as DES and two-key TDES.
        let mut tdes_key = Zeroizing::new([0u8; 24]);
        let cipher = match key_type {
            KeyType::Des | KeyType::Tdes2 | KeyType::Tdes3 => {
                for (i, byte) in tdes_key.iter_mut().enumerate() {
                    *byte = bytes[i % bytes.len()];
                }
                SoftCipher::Tdes(Box::new(
                    TdesEde3::new_from_slice(&tdes_key[..]).map_err(bad)?,
                ))
            }
            KeyType::Aes128 => {
                SoftCipher::Aes128(Box::new(Aes128::new_from_slice(bytes).map_err(bad)?))
            }
            KeyType::Aes192 => {
                SoftCipher::Aes192(Box::new(Aes192::new_from_slice(bytes).map_err(bad)?))
            }
            KeyType::Aes256 => {
                SoftCipher::Aes256(Box::new(Aes256::new_from_slice(bytes).map_err(bad)?))
            }
        };
        let left = match key_type {
            KeyType::Des | KeyType::Tdes2 => {
                Some(Box::new(Des::new_from_slice(&bytes[..8]).map_err(bad)?))
            }
            _ => None,
        };
        Ok(Self {
            label: label.to_owned(),
            key_type,
            cipher,
            left,
            key: key.clone(),
        })
    }

    fn encrypt_block(&self, block: &mut [u8]) {
        match &self.cipher {
            SoftCipher::Tdes(c) => c.encrypt_block(GenericArray::from_mut_slice(block)),
            SoftCipher::Aes128(c) => c.encrypt_block(GenericArray::from_mut_slice(block)),
            SoftCipher::Aes192(c) => c.encrypt_block(GenericArray::from_mut_slice(block)),
            SoftCipher::Aes256(c) => c.encrypt_block(GenericArray::from_mut_slice(block)),
        }
    }

    fn decrypt_block(&self, block: &mut [u8]) {
        match &self.cipher {
            SoftCipher::Tdes(c) => c.decrypt_block(GenericArray::from_mut_slice(block)),
            SoftCipher::Aes128(c) => c.decrypt_block(GenericArray::from_mut_slice(block)),
            SoftCipher::Aes192(c) => c.decrypt_block(GenericArray::from_mut_slice(block)),
            SoftCipher::Aes256(c) => c.decrypt_block(GenericArray::from_mut_slice(block)),
        }
    }

    fn cbc_with(&self, iv: &[u8], data: &[u8], encrypt: impl Fn(&mut [u8])) -> Result<Vec<u8>> {
        let block_len = self.block_len();
        check_blocks(data, block_len)?;
        if iv.len() != block_len {
            return Err(HsmError::invalid("IV length differs from the block length"));
        }
        let mut chain = Zeroizing::new(iv.to_vec());
        for block in data.chunks(block_len) {
            for (c, d) in chain.iter_mut().zip(block) {
                *c ^= d;
            }
            encrypt(&mut chain);
        }
        Ok(chain.to_vec())
    }
}

impl KeyOps for SoftKey {
    fn label(&self) -> &str {
        &self.label
    }

    fn key_type(&self) -> KeyType {
        self.key_type
    }

    fn ecb_encrypt(&self, data: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        check_blocks(data, self.block_len())?;
        let mut out = Zeroizing::new(data.to_vec());
        for block in out.chunks_mut(self.block_len()) {
            self.encrypt_block(block);
        }
        Ok(out)
    }

    fn ecb_decrypt(&self, data: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        check_blocks(data, self.block_len())?;
        let mut out = Zeroizing::new(data.to_vec());
        for block in out.chunks_mut(self.block_len()) {
            self.decrypt_block(block);
        }
        Ok(out)
    }

    fn cbc_last(&self, iv: &[u8], data: &[u8]) -> Result<Vec<u8>> {
        self.cbc_with(iv, data, |block| self.encrypt_block(block))
    }

    fn left_cbc_last(&self, iv: &[u8], data: &[u8]) -> Result<Vec<u8>> {
        let left = self.left.as_ref().ok_or_else(|| {
            HsmError::wrong_key(
                &self.label,
                "ISO 9797-1 algorithm 3 needs a des or tdes2 key",
            )
        })?;
        self.cbc_with(iv, data, |block| {
            left.encrypt_block(GenericArray::from_mut_slice(block))
        })
    }

    fn aes_cmac(&self, data: &[u8]) -> Result<Vec<u8>> {
        let bytes = self.key.expose_secret();
        let bad = |_| HsmError::wrong_key(&self.label, "AES-CMAC needs an AES key");
        let tag = match self.key_type {
            KeyType::Aes128 => {
                let mut mac = <Cmac<Aes128> as Mac>::new_from_slice(bytes).map_err(bad)?;
                mac.update(data);
                mac.finalize().into_bytes().to_vec()
            }
            KeyType::Aes192 => {
                let mut mac = <Cmac<Aes192> as Mac>::new_from_slice(bytes).map_err(bad)?;
                mac.update(data);
                mac.finalize().into_bytes().to_vec()
            }
            KeyType::Aes256 => {
                let mut mac = <Cmac<Aes256> as Mac>::new_from_slice(bytes).map_err(bad)?;
                mac.update(data);
                mac.finalize().into_bytes().to_vec()
            }
            _ => {
                return Err(HsmError::wrong_key(
                    &self.label,
                    "AES-CMAC needs an AES key",
                ));
            }
        };
        Ok(tag)
    }

    fn gcm_seal(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
        let payload = aes_gcm::aead::Payload {
            msg: plaintext,
            aad,
        };
        let nonce = aes_gcm::Nonce::from_slice(nonce);
        let sealed = match self.gcm()? {
            Gcm::Aes128(c) => c.encrypt(nonce, payload),
            Gcm::Aes256(c) => c.encrypt(nonce, payload),
        };
        sealed.map_err(|_| HsmError::invalid("AES-GCM refused the input"))
    }

    fn gcm_open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>> {
        let payload = aes_gcm::aead::Payload { msg: sealed, aad };
        let nonce = aes_gcm::Nonce::from_slice(nonce);
        let opened = match self.gcm()? {
            Gcm::Aes128(c) => c.decrypt(nonce, payload),
            Gcm::Aes256(c) => c.decrypt(nonce, payload),
        };
        opened
            .map(Zeroizing::new)
            .map_err(|_| HsmError::SealBroken {
                label: self.label.clone(),
            })
    }
}

/// The AES-GCM ciphers the software backend seals with.
enum Gcm {
    Aes128(Box<aes_gcm::Aes128Gcm>),
    Aes256(Box<aes_gcm::Aes256Gcm>),
}

impl SoftKey {
    fn gcm(&self) -> Result<Gcm> {
        use aes_gcm::KeyInit as _;
        let bytes = self.key.expose_secret();
        let bad = |_| HsmError::wrong_key(&self.label, "key rejected by AES-GCM");
        match self.key_type {
            KeyType::Aes128 => Ok(Gcm::Aes128(Box::new(
                aes_gcm::Aes128Gcm::new_from_slice(bytes).map_err(bad)?,
            ))),
            KeyType::Aes256 => Ok(Gcm::Aes256(Box::new(
                aes_gcm::Aes256Gcm::new_from_slice(bytes).map_err(bad)?,
            ))),
            _ => Err(HsmError::wrong_key(
                &self.label,
                "AES-GCM needs an aes128 or aes256 key",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn gcm_from_the_block_cipher_matches_aes_gcm() {
        let key =
            ClearKey::from_hex("FEFFE9928665731C6D6A8F9467308308FEFFE9928665731C6D6A8F9467308308")
                .unwrap();
        let soft = SoftKey::new("dek/x", KeyType::Aes256, &key).unwrap();
        let nonce = [7u8; NONCE_LEN];
        for len in [0, 1, 15, 16, 17, 19, 64] {
            let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let sealed = soft.gcm_seal(&nonce, b"context", &data).unwrap();
            let built = gcm_from_cipher(&soft, &nonce, b"context", &data, true).unwrap();
            assert_eq!(&built[..], &sealed[..], "{len} bytes");
            let opened = gcm_from_cipher(&soft, &nonce, b"context", &sealed, false).unwrap();
            assert_eq!(&opened[..], &data[..]);
            assert!(matches!(
                gcm_from_cipher(&soft, &nonce, b"other", &sealed, false),
                Err(HsmError::SealBroken { .. })
            ));
        }
    }

    #[test]
    fn cmac_from_the_block_cipher_matches_rfc_4493() {
        let key = ClearKey::from_hex("2B7E151628AED2A6ABF7158809CF4F3C").unwrap();
        let soft = SoftKey::new("qr/x", KeyType::Aes128, &key).unwrap();
        let message = hex::decode(
            "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e5130c81c46a35ce411",
        )
        .unwrap();
        for len in [0, 16, 40] {
            assert_eq!(
                cmac_from_cipher(&soft, &message[..len]).unwrap(),
                soft.aes_cmac(&message[..len]).unwrap(),
                "{len} bytes"
            );
        }
        assert_eq!(
            hex::encode(cmac_from_cipher(&soft, &[]).unwrap()),
            "bb1d6929e95937287fa37d129b756746"
        );
    }
}
