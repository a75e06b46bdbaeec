//! The `pkcs11` backend: keys are objects on a PKCS#11 token, found by label; every cipher
//! operation runs in the token through `cryptoki`.
//!
//! - One `C_Initialize` per process and library (a process-wide context); a bounded pool of
//!   sessions opened at start, logged in once with the user PIN (read from a file or the
//!   environment, never logged).
//! - At start the module **probes** what the token really does rather than trusting its mechanism
//!   list: it unwraps a test block under a temporary key as a sensitive generic secret with
//!   `CKA_WRAP_WITH_TRUSTED` and wraps it back. Only when that round-trips does it translate PIN
//!   blocks inside the token. Otherwise (SoftHSM2, for one) it decrypts and re-encrypts with the
//!   clear block only in zeroised host memory, and says so loudly in the log and in
//!   [`Capabilities`]: "PIN translation in host memory: not PCI PIN compliant".
//!   SoftHSM2 2.6.1 answers `CKR_MECHANISM_INVALID` to `C_UnwrapKey` with DES3-ECB and DES3-CBC
//!   (measured), so on it both PIN translation and key import run in host memory.
//! - A change of PIN block format (e.g. 4 -> 0) always needs the clear PIN, so it always runs in
//!   host memory, whatever the token can do.
//! - Key import and generation decrypt/encrypt the working key with the key-encryption key in the
//!   token (`C_Decrypt`/`C_Encrypt`), check its value in host memory (zeroised) and create the
//!   object with `C_CreateObject`; reported as `key_transport: host-memory`.
//! - Tokens without single DES (SoftHSM2) hold a single-length key K as the DES2 key K|K. X9.19
//!   needs single DES under the left half K1 of a double-length key; the module keeps a companion
//!   object `<label>#k1` = K1|K1 next to each tdes2 key it stores.

mod context;
mod pool;

pub use context::UserPin;

use crate::config::MAX_POOL_SIZE;
use crate::error::{HsmError, Result};
use crate::keys::{
    Capabilities, ExportedKey, Family, KeyInfo, KeyTransport, KeyType, PinTranslation, check_label,
};
use crate::mac::{self, MacAlgorithm};
use crate::module::{SecurityModule, decrypt_and_check, new_key_exported, pvv_equal};
use crate::ops::{KeyOps, kcv};
use crate::pin_block::{self, PinBlockFormat};
use crate::pvv;
use crate::secret::{ClearKey, Pan, Pin, PinBlock};
use crate::software::KeyFile;
use context::token_error;
use cryptoki::context::Pkcs11;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType as CkKeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use pool::SessionPool;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{PoisonError, RwLock};
use zeroize::{Zeroize, Zeroizing};

/// `CKA_ID` of a single-length DES key held as K|K, so the module knows to treat it as `des`.
const ID_SINGLE_DES: &[u8] = b"posbridge:des";
/// `CKA_ID` of every other key the module stores.
const ID_KEY: &[u8] = b"posbridge";
/// Label suffix of the K1|K1 companion of a tdes2 key (X9.19 chaining).
const COMPANION_SUFFIX: &str = "#k1";

/// The warning an operator must see when PIN blocks are in clear in host memory.
pub const HOST_MEMORY_WARNING: &str = "PIN translation in host memory: not PCI PIN compliant";

/// Where to find the token.
#[derive(Debug, Clone)]
pub struct Pkcs11Options {
    /// Path of the PKCS#11 library.
    pub module: PathBuf,
    /// Label of the token.
    pub token_label: String,
    /// Number of sessions in the pool (1 to 64).
    pub pool_size: usize,
}

/// A key object on the token, as the module uses it.
#[derive(Debug, Clone, Copy)]
struct Entry {
    handle: ObjectHandle,
    companion: Option<ObjectHandle>,
    key_type: KeyType,
}

/// The PKCS#11 security module.
pub struct Pkcs11Module {
    context: Pkcs11,
    slot: Slot,
    pool: SessionPool,
    /// Handles by label. Token object handles stay valid across the application's sessions; the
    /// write lock also serialises key replacement against lookups.
    keys: RwLock<HashMap<String, Entry>>,
    translation: PinTranslation,
    /// What the start-up probe found, for `posbridge hsm info`.
    probe: String,
    description: String,
}

impl std::fmt::Debug for Pkcs11Module {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pkcs11Module({})", self.description)
    }
}

impl Pkcs11Module {
    /// Loads the library (once per process), finds the token by label, opens and logs in the
    /// session pool and probes whether PIN translation can stay inside the token.
    ///
    /// PKCS#11 login state belongs to the process: while another module of this process has the
    /// same token open, the token answers "already logged in" and `pin` is not checked again.
    pub fn open(options: &Pkcs11Options, pin: &UserPin) -> Result<Self> {
        if !(1..=MAX_POOL_SIZE).contains(&options.pool_size) {
            return Err(HsmError::Config(format!(
                "hsm.pool_size must be 1 to {MAX_POOL_SIZE}, got {}",
                options.pool_size
            )));
        }
        let context = context::context(&options.module)?;
        let slot = find_slot(&context, &options.token_label)?;
        let token = context
            .get_token_info(slot)
            .map_err(token_error("C_GetTokenInfo"))?;
        let library = context
            .get_library_info()
            .map_err(token_error("C_GetInfo"))?;
        let description = format!(
            "{} {}.{} ({}), token {:?} {} {} serial {}",
            library.library_description().trim(),
            library.library_version().major(),
            library.library_version().minor(),
            options.module.display(),
            options.token_label,
            token.manufacturer_id().trim(),
            token.model().trim(),
            token.serial_number().trim(),
        );
        let mut sessions = Vec::with_capacity(options.pool_size);
        for _ in 0..options.pool_size {
            sessions.push(
                context
                    .open_rw_session(slot)
                    .map_err(token_error("C_OpenSession"))?,
            );
        }
        // Login state belongs to the application, not the session: one login covers the pool.
        match sessions[0].login(UserType::User, Some(&pin.auth_pin())) {
            Ok(()) => {}
            Err(cryptoki::error::Error::Pkcs11(
                cryptoki::error::RvError::UserAlreadyLoggedIn,
                _,
            )) => {}
            Err(error) => return Err(token_error("C_Login")(error)),
        }
        let (translation, probe) = probe_in_token_translation(&sessions[0]);
        let module = Self {
            context,
            slot,
            pool: SessionPool::new(sessions),
            keys: RwLock::new(HashMap::new()),
            translation,
            probe,
            description,
        };
        tracing::info!(
            token = %options.token_label,
            pool_size = module.pool.size(),
            translation = ?translation,
            "PKCS#11 security module opened"
        );
        if translation == PinTranslation::HostMemory {
            tracing::warn!(
                "{HOST_MEMORY_WARNING} (the token cannot unwrap a PIN block as a secret object)"
            );
        }
        Ok(module)
    }

    /// The initialised library context and the token's slot, for benchmarks and diagnostics that
    /// need raw cryptoki calls on the same token.
    pub fn raw_context(&self) -> (Pkcs11, Slot) {
        (self.context.clone(), self.slot)
    }

    /// Creates (or replaces) a key from clear bytes: for key ceremonies and test tokens. The
    /// clear value is zeroised after the call; the object is sensitive and not extractable.
    pub fn provision_key(&self, label: &str, key_type: KeyType, key: &ClearKey) -> Result<KeyInfo> {
        check_label(label)?;
        if key.len() != key_type.key_len() {
            return Err(HsmError::invalid(format!(
                "a {key_type} key is {} bytes, got {}",
                key_type.key_len(),
                key.len()
            )));
        }
        {
            let session = self.pool.get()?;
            self.store_clear(&session, label, key_type, key)?;
        }
        self.find_key(label)
    }

    /// Provisions every key of a key file (see [`KeyFile`]); returns how many.
    pub fn provision_key_file(&self, file: KeyFile, origin: &str) -> Result<usize> {
        let keys = file.into_keys(origin)?;
        for (label, key_type, key) in &keys {
            self.provision_key(label, *key_type, key)?;
        }
        Ok(keys.len())
    }

    fn cache_read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Entry>> {
        self.keys.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn cache_write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Entry>> {
        self.keys.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn entry(&self, session: &Session, label: &str) -> Result<Entry> {
        if let Some(entry) = self.cache_read().get(label) {
            return Ok(*entry);
        }
        check_label(label)?;
        let mut cache = self.cache_write();
        let entry = lookup(session, label)?;
        cache.insert(label.to_owned(), entry);
        Ok(entry)
    }

    /// Runs `f` on the key `label` with a pooled session. A stale cached handle (the object was
    /// replaced by another process) is looked up again once.
    fn with_key<T>(&self, label: &str, f: impl Fn(&dyn KeyOps) -> Result<T>) -> Result<T> {
        let session = self.pool.get()?;
        let entry = self.entry(&session, label)?;
        match f(&TokenKey::new(&session, label, entry)) {
            Err(HsmError::Token { message, .. }) if message.contains("HandleInvalid") => {
                self.cache_write().remove(label);
                let entry = self.entry(&session, label)?;
                f(&TokenKey::new(&session, label, entry))
            }
            other => other,
        }
    }

    /// Stores a clear key under `label`: creates the new objects first, then destroys the old
    /// ones, so a failure leaves the old key in place.
    fn store_clear(
        &self,
        session: &Session,
        label: &str,
        key_type: KeyType,
        key: &ClearKey,
    ) -> Result<()> {
        let mut cache = self.cache_write();
        let old = find_labelled(session, label)?;
        let old_companion = find_labelled(session, &companion_label(label))?;
        let value: Zeroizing<Vec<u8>> = match key_type {
            KeyType::Des => Zeroizing::new([key.expose_secret(), key.expose_secret()].concat()),
            _ => Zeroizing::new(key.expose_secret().to_vec()),
        };
        let id = if key_type == KeyType::Des {
            ID_SINGLE_DES
        } else {
            ID_KEY
        };
        let handle = create_key(session, label, key_type, &value, id)?;
        let companion = if key_type == KeyType::Tdes2 {
            let k1 = Zeroizing::new([&value[..8], &value[..8]].concat());
            match create_key(
                session,
                &companion_label(label),
                KeyType::Tdes2,
                &k1,
                ID_KEY,
            ) {
                Ok(handle) => Some(handle),
                Err(error) => {
                    let _ = session.destroy_object(handle);
                    return Err(error);
                }
            }
        } else {
            None
        };
        for stale in old.into_iter().chain(old_companion) {
            session
                .destroy_object(stale)
                .map_err(token_error("C_DestroyObject"))?;
        }
        cache.insert(
            label.to_owned(),
            Entry {
                handle,
                companion,
                key_type,
            },
        );
        Ok(())
    }

    fn translate_in_token(&self, block: &PinBlock, src: &str, dst: &str) -> Result<PinBlock> {
        let session = self.pool.get()?;
        let src_entry = self.entry(&session, src)?;
        let dst_entry = self.entry(&session, dst)?;
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(CkKeyType::GENERIC_SECRET),
            Attribute::Token(false),
            Attribute::Sensitive(true),
            Attribute::Extractable(true),
            Attribute::WrapWithTrusted(true),
        ];
        let temporary = session
            .unwrap_key(
                &Mechanism::Des3Ecb,
                src_entry.handle,
                block.expose_secret(),
                &template,
            )
            .map_err(token_error("C_UnwrapKey (PIN block)"))?;
        let wrapped = session
            .wrap_key(&Mechanism::Des3Ecb, dst_entry.handle, temporary)
            .map_err(token_error("C_WrapKey (PIN block)"));
        let destroyed = session
            .destroy_object(temporary)
            .map_err(token_error("C_DestroyObject (PIN block)"));
        let wrapped = Zeroizing::new(wrapped?);
        destroyed?;
        PinBlock::from_slice(&wrapped)
    }
}

fn companion_label(label: &str) -> String {
    format!("{label}{COMPANION_SUFFIX}")
}

fn find_slot(context: &Pkcs11, token_label: &str) -> Result<Slot> {
    let slots = context
        .get_slots_with_token()
        .map_err(token_error("C_GetSlotList"))?;
    for slot in slots {
        let info = context
            .get_token_info(slot)
            .map_err(token_error("C_GetTokenInfo"))?;
        if info.label().trim_end() == token_label {
            return Ok(slot);
        }
    }
    Err(HsmError::Config(format!(
        "hsm.token_label: no token labelled {token_label:?}"
    )))
}

fn find_labelled(session: &Session, label: &str) -> Result<Vec<ObjectHandle>> {
    session
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
        .map_err(token_error("C_FindObjects"))
}

fn lookup(session: &Session, label: &str) -> Result<Entry> {
    let handle = match find_labelled(session, label)?.as_slice() {
        [] => {
            return Err(HsmError::KeyNotFound {
                label: label.to_owned(),
            });
        }
        [one] => *one,
        many => {
            return Err(HsmError::wrong_key(
                label,
                format!("{} objects carry this label", many.len()),
            ));
        }
    };
    let attributes = session
        .get_attributes(
            handle,
            &[
                AttributeType::KeyType,
                AttributeType::ValueLen,
                AttributeType::Id,
            ],
        )
        .map_err(token_error("C_GetAttributeValue"))?;
    let mut ck_type = None;
    let mut value_len = None;
    let mut id = Vec::new();
    for attribute in attributes {
        match attribute {
            Attribute::KeyType(kind) => ck_type = Some(kind),
            Attribute::ValueLen(len) => value_len = Some(u64::from(len)),
            Attribute::Id(bytes) => id = bytes,
            _ => {}
        }
    }
    let key_type = match (ck_type, value_len) {
        (Some(kind), _) if kind == CkKeyType::DES2 && id == ID_SINGLE_DES => KeyType::Des,
        (Some(kind), _) if kind == CkKeyType::DES2 => KeyType::Tdes2,
        (Some(kind), _) if kind == CkKeyType::DES3 => KeyType::Tdes3,
        (Some(kind), Some(16)) if kind == CkKeyType::AES => KeyType::Aes128,
        (Some(kind), Some(24)) if kind == CkKeyType::AES => KeyType::Aes192,
        (Some(kind), Some(32)) if kind == CkKeyType::AES => KeyType::Aes256,
        _ => {
            return Err(HsmError::wrong_key(
                label,
                "not a DES2, DES3 or AES secret key",
            ));
        }
    };
    let companion = if key_type == KeyType::Tdes2 {
        find_labelled(session, &companion_label(label))?
            .first()
            .copied()
    } else {
        None
    };
    Ok(Entry {
        handle,
        companion,
        key_type,
    })
}

/// Creates a sensitive, non-extractable token key. The template's copy of the value is zeroised
/// before returning.
fn create_key(
    session: &Session,
    label: &str,
    key_type: KeyType,
    value: &[u8],
    id: &[u8],
) -> Result<ObjectHandle> {
    let ck_type = match key_type {
        KeyType::Des | KeyType::Tdes2 => CkKeyType::DES2,
        KeyType::Tdes3 => CkKeyType::DES3,
        KeyType::Aes128 | KeyType::Aes192 | KeyType::Aes256 => CkKeyType::AES,
    };
    let mut template = vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(ck_type),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Sign(true),
        Attribute::Verify(true),
        Attribute::Wrap(true),
        Attribute::Unwrap(true),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
        Attribute::Value(value.to_vec()),
    ];
    let created = session
        .create_object(&template)
        .map_err(token_error("C_CreateObject"));
    for attribute in &mut template {
        if let Attribute::Value(bytes) = attribute {
            bytes.zeroize();
        }
    }
    created
}

/// Tries an in-token translation on a temporary session key: unwrap a test block as a sensitive
/// generic secret (with `CKA_WRAP_WITH_TRUSTED`), wrap it again, compare. Any failure means the
/// token cannot do it and PIN blocks will be translated in host memory.
fn probe_in_token_translation(session: &Session) -> (PinTranslation, String) {
    let result = (|| -> std::result::Result<bool, cryptoki::error::Error> {
        let probe_key = session.generate_key(
            &Mechanism::Des2KeyGen,
            &[
                Attribute::Token(false),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Encrypt(true),
                Attribute::Wrap(true),
                Attribute::Unwrap(true),
            ],
        )?;
        let block = session.generate_random_vec(8)?;
        let outcome = (|| {
            let wrapped = session.encrypt(&Mechanism::Des3Ecb, probe_key, &block)?;
            let temporary = session.unwrap_key(
                &Mechanism::Des3Ecb,
                probe_key,
                &wrapped,
                &[
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::KeyType(CkKeyType::GENERIC_SECRET),
                    Attribute::Token(false),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(true),
                    Attribute::WrapWithTrusted(true),
                ],
            )?;
            let again = session.wrap_key(&Mechanism::Des3Ecb, probe_key, temporary);
            let _ = session.destroy_object(temporary);
            Ok(again? == wrapped)
        })();
        let _ = session.destroy_object(probe_key);
        outcome
    })();
    match result {
        Ok(true) => (
            PinTranslation::InToken,
            "unwrap as a sensitive secret and wrap round-trip".into(),
        ),
        Ok(false) => (
            PinTranslation::HostMemory,
            "unwrap/wrap did not round-trip".into(),
        ),
        Err(cryptoki::error::Error::Pkcs11(rv, function)) => (
            PinTranslation::HostMemory,
            format!("{function:?} returned {rv:?}"),
        ),
        Err(error) => (PinTranslation::HostMemory, error.to_string()),
    }
}

/// A token key in use with one borrowed session.
struct TokenKey<'a> {
    session: &'a Session,
    label: &'a str,
    entry: Entry,
}

impl<'a> TokenKey<'a> {
    fn new(session: &'a Session, label: &'a str, entry: Entry) -> Self {
        Self {
            session,
            label,
            entry,
        }
    }

    fn ecb(&self) -> Mechanism<'static> {
        match self.entry.key_type.family() {
            Family::Des => Mechanism::Des3Ecb,
            Family::Aes => Mechanism::AesEcb,
        }
    }

    fn cbc_last_with(&self, handle: ObjectHandle, iv: &[u8], data: &[u8]) -> Result<Vec<u8>> {
        let block_len = self.block_len();
        if data.is_empty() || data.len() % block_len != 0 || iv.len() != block_len {
            return Err(HsmError::invalid(format!(
                "CBC needs whole {block_len}-byte blocks"
            )));
        }
        let mechanism = match self.entry.key_type.family() {
            Family::Des => Mechanism::Des3Cbc(
                iv.try_into()
                    .map_err(|_| HsmError::invalid("IV must be 8 bytes"))?,
            ),
            Family::Aes => Mechanism::AesCbc(
                iv.try_into()
                    .map_err(|_| HsmError::invalid("IV must be 16 bytes"))?,
            ),
        };
        let out = Zeroizing::new(
            self.session
                .encrypt(&mechanism, handle, data)
                .map_err(token_error("C_Encrypt (CBC)"))?,
        );
        Ok(out[out.len() - block_len..].to_vec())
    }
}

impl KeyOps for TokenKey<'_> {
    fn label(&self) -> &str {
        self.label
    }

    fn key_type(&self) -> KeyType {
        self.entry.key_type
    }

    fn ecb_encrypt(&self, data: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        self.session
            .encrypt(&self.ecb(), self.entry.handle, data)
            .map(Zeroizing::new)
            .map_err(token_error("C_Encrypt (ECB)"))
    }

    fn ecb_decrypt(&self, data: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        self.session
            .decrypt(&self.ecb(), self.entry.handle, data)
            .map(Zeroizing::new)
            .map_err(token_error("C_Decrypt (ECB)"))
    }

    fn cbc_last(&self, iv: &[u8], data: &[u8]) -> Result<Vec<u8>> {
        self.cbc_last_with(self.entry.handle, iv, data)
    }

    fn left_cbc_last(&self, iv: &[u8], data: &[u8]) -> Result<Vec<u8>> {
        let handle = match (self.entry.key_type, self.entry.companion) {
            (KeyType::Des, _) => self.entry.handle,
            (KeyType::Tdes2, Some(companion)) => companion,
            (KeyType::Tdes2, None) => {
                return Err(HsmError::wrong_key(
                    self.label,
                    "X9.19 needs the key's K1 companion object; re-import or re-provision the key",
                ));
            }
            _ => {
                return Err(HsmError::wrong_key(
                    self.label,
                    "ISO 9797-1 algorithm 3 needs a des or tdes2 key",
                ));
            }
        };
        self.cbc_last_with(handle, iv, data)
    }

    fn aes_cmac(&self, data: &[u8]) -> Result<Vec<u8>> {
        self.require_family(Family::Aes, "AES-CMAC")?;
        self.session
            .sign(&Mechanism::AesCMac, self.entry.handle, data)
            .map_err(token_error("C_Sign (AES-CMAC)"))
    }
}

impl SecurityModule for Pkcs11Module {
    fn capabilities(&self) -> Capabilities {
        let mut notes = Vec::new();
        match self.translation {
            PinTranslation::HostMemory => {
                notes.push(HOST_MEMORY_WARNING.to_owned());
                notes.push(format!("in-token translation probe: {}", self.probe));
            }
            PinTranslation::InToken => notes.push(
                "PIN translation inside the token for same-format DES blocks (destination keys must be CKA_TRUSTED)".into(),
            ),
        }
        notes.push(
            "PIN block format changes (e.g. 4 -> 0) and format 4 use the clear PIN in host memory, zeroised after use".into(),
        );
        notes.push(
            "key import/generation: working keys pass through host memory (zeroised) between C_Decrypt/C_Encrypt under the KEK and C_CreateObject".into(),
        );
        Capabilities {
            backend: "pkcs11".into(),
            description: format!("{}, {} sessions", self.description, self.pool.size()),
            // Working keys still pass through host memory on import, so not yet, on any token.
            production: false,
            pin_translation: self.translation,
            key_transport: KeyTransport::HostMemory,
            notes,
        }
    }

    fn list_keys(&self) -> Result<Vec<KeyInfo>> {
        let mut labels = Vec::new();
        {
            let session = self.pool.get()?;
            let handles = session
                .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])
                .map_err(token_error("C_FindObjects"))?;
            for handle in handles {
                let attributes = session
                    .get_attributes(handle, &[AttributeType::Label])
                    .map_err(token_error("C_GetAttributeValue"))?;
                for attribute in attributes {
                    if let Attribute::Label(bytes) = attribute {
                        let label = String::from_utf8_lossy(&bytes).into_owned();
                        if check_label(&label).is_ok() {
                            labels.push(label);
                        }
                    }
                }
            }
        }
        labels.sort();
        labels.dedup();
        labels.iter().map(|label| self.find_key(label)).collect()
    }

    fn find_key(&self, label: &str) -> Result<KeyInfo> {
        self.with_key(label, |key| {
            Ok(KeyInfo {
                label: label.to_owned(),
                key_type: key.key_type(),
                kcv: kcv(key)?,
            })
        })
    }

    fn kcv(&self, label: &str) -> Result<Vec<u8>> {
        self.with_key(label, kcv)
    }

    fn translate_pin(
        &self,
        block: &PinBlock,
        src_key: &str,
        src_format: PinBlockFormat,
        dst_key: &str,
        dst_format: PinBlockFormat,
        pan: Option<&Pan>,
    ) -> Result<PinBlock> {
        // Labels, formats and the masked PAN only: never the block, even encrypted (PCI PIN).
        tracing::debug!(src_key, %src_format, dst_key, %dst_format, pan = ?pan, "translate PIN block");
        let same_des_format = src_format == dst_format && src_format.family() == Family::Des;
        if self.translation == PinTranslation::InToken && same_des_format {
            return self.translate_in_token(block, src_key, dst_key);
        }
        // Host memory: the clear PIN exists only inside `Pin` (zeroised on drop).
        let session = self.pool.get()?;
        let src = self.entry(&session, src_key)?;
        let dst = self.entry(&session, dst_key)?;
        let pin = pin_block::decipher(
            &TokenKey::new(&session, src_key, src),
            src_format,
            block,
            pan,
        )?;
        pin_block::encipher(
            &TokenKey::new(&session, dst_key, dst),
            dst_format,
            &pin,
            pan,
        )
    }

    fn encrypt_pin(
        &self,
        pin: &Pin,
        pan: &Pan,
        format: PinBlockFormat,
        key: &str,
    ) -> Result<PinBlock> {
        self.with_key(key, |key| pin_block::encipher(key, format, pin, Some(pan)))
    }

    fn generate_mac(&self, key: &str, algorithm: MacAlgorithm, data: &[u8]) -> Result<Vec<u8>> {
        tracing::trace!(key, %algorithm, data_bytes = data.len(), "generate MAC");
        self.with_key(key, |key| mac::compute(key, algorithm, data))
    }

    fn import_key(
        &self,
        kek: &str,
        label: &str,
        key_type: KeyType,
        cryptogram: &[u8],
        expected_kcv: &[u8],
    ) -> Result<KeyInfo> {
        {
            let session = self.pool.get()?;
            let kek_entry = self.entry(&session, kek)?;
            let clear = decrypt_and_check(
                &TokenKey::new(&session, kek, kek_entry),
                label,
                key_type,
                cryptogram,
                expected_kcv,
            )?;
            self.store_clear(&session, label, key_type, &clear)?;
        }
        tracing::info!(label, kek, %key_type, "key imported");
        self.find_key(label)
    }

    fn generate_key(
        &self,
        label: &str,
        key_type: KeyType,
        export_under: &str,
    ) -> Result<ExportedKey> {
        let session = self.pool.get()?;
        let mut random = Zeroizing::new(vec![0u8; key_type.key_len()]);
        session
            .generate_random_slice(&mut random)
            .map_err(token_error("C_GenerateRandom"))?;
        let kek_entry = self.entry(&session, export_under)?;
        let (clear, exported) = new_key_exported(
            &TokenKey::new(&session, export_under, kek_entry),
            label,
            key_type,
            random,
        )?;
        self.store_clear(&session, label, key_type, &clear)?;
        tracing::info!(label, kek = export_under, %key_type, "key generated");
        Ok(exported)
    }

    fn delete_key(&self, label: &str) -> Result<()> {
        check_label(label)?;
        let session = self.pool.get()?;
        let mut cache = self.cache_write();
        let handles = find_labelled(&session, label)?;
        if handles.is_empty() {
            return Err(HsmError::KeyNotFound {
                label: label.to_owned(),
            });
        }
        for handle in handles
            .into_iter()
            .chain(find_labelled(&session, &companion_label(label))?)
        {
            session
                .destroy_object(handle)
                .map_err(token_error("C_DestroyObject"))?;
        }
        cache.remove(label);
        Ok(())
    }

    fn pin_verification_value(&self, pvk: &str, pan: &Pan, pin: &Pin, pvki: u8) -> Result<String> {
        self.with_key(pvk, |key| pvv::pvv(key, pan, pin, pvki))
    }

    fn verify_pin(
        &self,
        block: &PinBlock,
        pek: &str,
        format: PinBlockFormat,
        pan: &Pan,
        pvk: &str,
        pvki: u8,
        stored_pvv: &str,
    ) -> Result<bool> {
        let pin = self.with_key(pek, |key| {
            pin_block::decipher(key, format, block, Some(pan))
        })?;
        let computed = self.pin_verification_value(pvk, pan, &pin, pvki)?;
        pvv_equal(&computed, stored_pvv)
    }
}
