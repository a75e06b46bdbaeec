//! The [`SecurityModule`] interface the gateway calls, and the key-management steps both backends
//! share (decrypting and checking an imported key, making a new one).

use crate::error::{HsmError, Result};
use crate::keys::{Capabilities, ExportedKey, Family, KeyInfo, KeyType};
use crate::mac::MacAlgorithm;
use crate::ops::{KeyOps, SoftKey, constant_time_eq, kcv_matches};
use crate::pin_block::PinBlockFormat;
use crate::policy::KeyClass;
use crate::secret::{ClearKey, Pan, Pin, PinBlock};
use zeroize::Zeroizing;

/// A security module: PIN blocks, MACs and working keys, addressed by key label. Key bytes never
/// leave it except encrypted under a key-encryption key.
///
/// The operations mirror payment HSM host commands (Thales payShield CA/CC for PIN translation,
/// M6/M8 for MACs, A0/A6 for key generation and import, BU for check values) and jPOS's
/// `SMAdapter`.
///
/// **Calls are synchronous and may block** (a PKCS#11 call waits for the token, or for a free
/// session in the pool). Async callers run them through `tokio::task::spawn_blocking` with a
/// clone of the `Arc<dyn SecurityModule>`; never call them directly on a runtime worker thread.
pub trait SecurityModule: Send + Sync {
    /// What the module is and where clear PIN blocks and keys exist while it works.
    fn capabilities(&self) -> Capabilities;

    /// Checks that the module answers, for a readiness probe: a round trip to the HSM or token
    /// where there is one (the payShield's diagnostics command, NC). The default lists the keys.
    fn health(&self) -> Result<()> {
        self.list_keys().map(|_| ())
    }

    /// Every key in the module (label, type, check value), sorted by label.
    fn list_keys(&self) -> Result<Vec<KeyInfo>>;

    /// One key by label.
    fn find_key(&self, label: &str) -> Result<KeyInfo>;

    /// The standard check value of a key (3 bytes DES family, 5 bytes AES).
    fn kcv(&self, label: &str) -> Result<Vec<u8>>;

    /// Translates an encrypted PIN block from `src_key`/`src_format` to `dst_key`/`dst_format`.
    /// `pan` is needed when either format binds the PIN to the PAN (0, 3, 4).
    ///
    /// A change of format always needs the clear PIN (the block's structure changes), so it
    /// happens in host memory even on a token that can translate internally.
    fn translate_pin(
        &self,
        block: &PinBlock,
        src_key: &str,
        src_format: PinBlockFormat,
        dst_key: &str,
        dst_format: PinBlockFormat,
        pan: Option<&Pan>,
    ) -> Result<PinBlock>;

    /// Builds a PIN block from a clear PIN and encrypts it under `key`: what a terminal or a
    /// phone does at PIN entry (simulators and tests).
    fn encrypt_pin(
        &self,
        pin: &Pin,
        pan: &Pan,
        format: PinBlockFormat,
        key: &str,
    ) -> Result<PinBlock>;

    /// Computes a MAC over `data` with the key `key`.
    fn generate_mac(&self, key: &str, algorithm: MacAlgorithm, data: &[u8]) -> Result<Vec<u8>>;

    /// Verifies a MAC. `mac` may be the full MAC or its leftmost 4 or more bytes (dialects that
    /// truncate). Fails with [`HsmError::MacMismatch`] when it does not verify.
    fn verify_mac(
        &self,
        key: &str,
        algorithm: MacAlgorithm,
        data: &[u8],
        mac: &[u8],
    ) -> Result<()> {
        let computed = self.generate_mac(key, algorithm, data)?;
        if mac.len() < 4 || mac.len() > computed.len() {
            return Err(HsmError::invalid(format!(
                "MAC must be 4 to {} bytes, got {}",
                computed.len(),
                mac.len()
            )));
        }
        if constant_time_eq(&computed[..mac.len()], mac) {
            Ok(())
        } else {
            Err(HsmError::MacMismatch)
        }
    }

    /// Imports a key encrypted (ECB) under the key-encryption key `kek` and stores it as `label`,
    /// replacing a key of that label. Refuses with [`HsmError::KcvMismatch`] when the decrypted
    /// key's check value does not start with `expected_kcv` (2 to 8 bytes for DES family, e.g.
    /// the 4 bytes of UnionPay field 62); a refused import leaves any existing key untouched.
    /// A single-DES key (`KeyType::Des`) comes as an 8-byte cryptogram. `label` must name a key
    /// class ([`KeyClass`](crate::KeyClass)), whose usages the new key gets; `kek` must be allowed
    /// to import (a zone master key; a terminal master key only where the token unwraps).
    fn import_key(
        &self,
        kek: &str,
        label: &str,
        key_type: KeyType,
        cryptogram: &[u8],
        expected_kcv: &[u8],
    ) -> Result<KeyInfo>;

    /// Generates a random key of `key_type`, stores it as `label` (replacing a key of that label)
    /// and returns it encrypted (ECB) under the key-encryption key `export_under`, with its check
    /// value: what a sign-on response hands a terminal. `label` must name a key class; where the
    /// token can wrap, the key is generated in it and leaves only wrapped.
    fn generate_key(
        &self,
        label: &str,
        key_type: KeyType,
        export_under: &str,
    ) -> Result<ExportedKey>;

    /// Seals data at rest under the data key `key` (class `dek/`): AES-GCM with a random 12-byte
    /// nonce and `context` (what the data is and which journal row it belongs to) authenticated
    /// with it, so a sealed value moved to another row does not open. The result is
    /// `01 | nonce (12) | ciphertext | tag (16)`; the key never leaves the module.
    fn encrypt_data(&self, key: &str, context: &[u8], plaintext: &[u8]) -> Result<Vec<u8>>;

    /// Opens what [`Self::encrypt_data`] sealed, with the same key and context. Fails with
    /// [`HsmError::SealBroken`] when the value was tampered with, moved, or sealed under another
    /// key.
    fn decrypt_data(&self, key: &str, context: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>>;

    /// Removes a key. Removing a label that does not exist is [`HsmError::KeyNotFound`].
    fn delete_key(&self, label: &str) -> Result<()>;

    /// Computes the Visa PVV of a PIN (enrolment of a stored-value account): store the 4 digits,
    /// never the PIN. Uses the PIN's 4 leftmost digits, as the Visa method does.
    fn pin_verification_value(&self, pvk: &str, pan: &Pan, pin: &Pin, pvki: u8) -> Result<String>;

    /// Verifies an encrypted PIN block against a stored PVV. `Ok(false)` means a wrong PIN;
    /// `Err` means the request itself is bad (unknown key, a block that does not decode).
    #[allow(clippy::too_many_arguments)]
    fn verify_pin(
        &self,
        block: &PinBlock,
        pek: &str,
        format: PinBlockFormat,
        pan: &Pan,
        pvk: &str,
        pvki: u8,
        pvv: &str,
    ) -> Result<bool>;
}

/// Decrypts an imported key's cryptogram with the KEK and checks its check value; the clear key
/// is returned only when it matches. Shared by both backends.
pub(crate) fn decrypt_and_check(
    kek: &dyn KeyOps,
    label: &str,
    key_type: KeyType,
    cryptogram: &[u8],
    expected_kcv: &[u8],
) -> Result<ClearKey> {
    crate::keys::check_label(label)?;
    KeyClass::of_label(label)?;
    let expected_len = key_type.key_len();
    if cryptogram.len() != expected_len {
        return Err(HsmError::invalid(format!(
            "a {key_type} cryptogram is {expected_len} bytes, got {}",
            cryptogram.len()
        )));
    }
    if !cryptogram.len().is_multiple_of(kek.block_len()) {
        return Err(HsmError::wrong_key(
            kek.label(),
            format!(
                "a {key_type} key cannot be encrypted under a {} key",
                kek.key_type()
            ),
        ));
    }
    let clear = ClearKey::new(kek.ecb_decrypt(cryptogram)?.to_vec())?;
    let candidate = SoftKey::new(label, key_type, &clear)?;
    let (matches, computed) = kcv_matches(&candidate, expected_kcv)?;
    if !matches {
        return Err(HsmError::KcvMismatch {
            label: label.to_owned(),
            expected: hex::encode_upper(expected_kcv),
            computed: hex::encode_upper(computed),
        });
    }
    Ok(clear)
}

/// Turns random bytes into a new key of `key_type` (DES keys get odd parity, as terminals
/// expect), and exports it under `kek`. Returns the clear key for the backend to store.
pub(crate) fn new_key_exported(
    kek: &dyn KeyOps,
    label: &str,
    key_type: KeyType,
    mut random: Zeroizing<Vec<u8>>,
) -> Result<(ClearKey, ExportedKey)> {
    crate::keys::check_label(label)?;
    KeyClass::of_label(label)?;
    if random.len() != key_type.key_len() {
        return Err(HsmError::invalid("random material has the wrong length"));
    }
    if key_type.family() == Family::Des {
        crate::ops::set_odd_parity(&mut random);
    }
    if !random.len().is_multiple_of(kek.block_len()) {
        return Err(HsmError::wrong_key(
            kek.label(),
            format!(
                "a {key_type} key cannot be exported under a {} key",
                kek.key_type()
            ),
        ));
    }
    let clear = ClearKey::new(random.to_vec())?;
    let cryptogram = kek.ecb_encrypt(clear.expose_secret())?.to_vec();
    let soft = SoftKey::new(label, key_type, &clear)?;
    let mut kcv = crate::ops::check_block(&soft)?;
    kcv.truncate(if key_type.family() == Family::Des {
        4
    } else {
        5
    });
    let exported = ExportedKey {
        label: label.to_owned(),
        key_type,
        cryptogram,
        kcv,
    };
    Ok((clear, exported))
}

/// The generic PVV comparison shared by both backends.
pub(crate) fn pvv_equal(computed: &str, stored: &str) -> Result<bool> {
    if stored.len() != 4 || !stored.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HsmError::invalid("PVV must be 4 digits"));
    }
    Ok(constant_time_eq(computed.as_bytes(), stored.as_bytes()))
}
