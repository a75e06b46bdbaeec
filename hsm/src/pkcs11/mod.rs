//! The `pkcs11` backend: keys are objects on a PKCS#11 token, found by label; every cipher
//! operation runs in the token through `cryptoki`.
//!
//! - One `C_Initialize` per process and library (a process-wide context); a bounded pool of
//!   sessions opened at start, logged in once with the user PIN (read from a file or the
//!   environment, never logged).
//! - **Key usage is policy, enforced by the token.** Every key belongs to a class named by its
//!   label ([`KeyClass`]) and is created with that class's template ([`template`]): sensitive,
//!   not extractable, not modifiable, not copyable, and only the usages the class needs on this
//!   token. What a template forbids fails in the token itself (`CKR_KEY_FUNCTION_NOT_PERMITTED`).
//! - At start the module **probes** what the token really does ([`features`]) rather than
//!   trusting its mechanism list or its name: DES3-ECB and AES-ECB wrap/unwrap, AES-CMAC,
//!   `CKA_COPYABLE`, key generation mechanisms, and in-token PIN translation. Where the token can
//!   wrap, working keys are generated in the token and leave it only wrapped under the terminal
//!   master key (`C_WrapKey`), and imports are `C_UnwrapKey`: no clear working key ever reaches
//!   host memory. Where it cannot (SoftHSM2 2.6.1 for DES and AES; opencryptoki 3.8 for DES, which
//!   cannot wrap a DES2 key), a terminal master key only encrypts, a zone master key only
//!   decrypts, and the working key passes through zeroised host memory; [`Capabilities`] says so.
//! - PIN translation stays inside the token only when the probe could unwrap a block as a
//!   sensitive secret and wrap it again; otherwise (SoftHSM2, opencryptoki) it decrypts and
//!   re-encrypts with the clear block only in zeroised host memory, and says so loudly:
//!   "PIN translation in host memory: not PCI PIN compliant". A change of PIN block format always
//!   needs the clear PIN.
//! - X9.19 needs single DES under the left half K1 of a double-length MAC key: MAC keys (and only
//!   they) get a companion object `<label>#k1`, K1|K1 (or a DES key K1 where it is unwrapped).
//! - A key that may neither encrypt nor sign cannot compute its check value: the module stores it
//!   in `CKA_ID` when it creates the key from a known value (key ceremonies, test tokens).

mod context;
mod features;
mod pool;
mod template;

pub use context::UserPin;

use crate::config::MAX_POOL_SIZE;
use crate::error::{HsmError, Result};
use crate::keys::{
    Capabilities, ExportedKey, Family, KeyInfo, KeyTransport, KeyType, PinTranslation, check_label,
};
use crate::mac::{self, MacAlgorithm};
use crate::module::{SecurityModule, decrypt_and_check, new_key_exported, pvv_equal};
use crate::ops::{KeyOps, SoftKey, computed_check_block, kcv, kcv_matches, set_odd_parity};
use crate::pin_block::{self, PinBlockFormat};
use crate::policy::{KeyClass, KeyUsage, TokenFeatures, Usages};
use crate::pvv;
use crate::secret::{ClearKey, Pan, Pin, PinBlock};
use crate::software::KeyFile;
use context::token_error;
use cryptoki::context::Pkcs11;
use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, AttributeType, KeyType as CkKeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use features::Probe;
use pool::SessionPool;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{PoisonError, RwLock};
use template::KeySpec;
use zeroize::{Zeroize, Zeroizing};

/// Label suffix of the K1 companion of a double-length MAC key (X9.19 chaining).
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
    /// The slot ID, where the token is to be found by slot: needed when cryptoki cannot read the
    /// token's information (opencryptoki 3.8 reports its clock in a form cryptoki 0.12 refuses).
    /// The label is still checked whenever it can be read.
    pub slot: Option<u64>,
    /// Number of sessions in the pool (1 to 64).
    pub pool_size: usize,
}

/// The companion of a double-length MAC key: K1 as a DES2 key K1|K1 or as a DES key.
#[derive(Debug, Clone, Copy)]
struct Companion {
    handle: ObjectHandle,
    single_des: bool,
}

/// A key object on the token, as the module uses it.
#[derive(Debug, Clone, Copy)]
struct Entry {
    handle: ObjectHandle,
    ck_type: CkKeyType,
    key_type: KeyType,
    usages: Usages,
    companion: Option<Companion>,
    /// The check value stored in `CKA_ID` at creation (up to 5 bytes), if any.
    stored_kcv: Option<([u8; 5], usize)>,
}

/// The PKCS#11 security module.
pub struct Pkcs11Module {
    context: Pkcs11,
    slot: Slot,
    pool: SessionPool,
    /// Handles by label. Token object handles stay valid across the application's sessions; the
    /// write lock also serialises key replacement against lookups.
    keys: RwLock<HashMap<String, Entry>>,
    probe: Probe,
    description: String,
}

impl std::fmt::Debug for Pkcs11Module {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pkcs11Module({})", self.description)
    }
}

impl Pkcs11Module {
    /// Loads the library (once per process), finds the token by label (or slot), opens and logs
    /// in the session pool and probes what the token can do.
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
        let (slot, token) = find_slot(&context, &options.token_label, options.slot)?;
        let library = context
            .get_library_info()
            .map_err(token_error("C_GetInfo"))?;
        let description = format!(
            "{} {}.{} ({}), token {:?} {}",
            library.library_description().trim(),
            library.library_version().major(),
            library.library_version().minor(),
            options.module.display(),
            options.token_label,
            token,
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
        let probe = features::probe(&context, slot, &sessions[0]);
        let module = Self {
            context,
            slot,
            pool: SessionPool::new(sessions),
            keys: RwLock::new(HashMap::new()),
            probe,
            description,
        };
        tracing::info!(
            token = %options.token_label,
            pool_size = module.pool.size(),
            translation = ?module.probe.translation,
            features = ?module.probe.features,
            copyable = module.probe.copyable,
            "PKCS#11 security module opened"
        );
        if module.probe.translation == PinTranslation::HostMemory {
            tracing::warn!(
                "{HOST_MEMORY_WARNING} (the token cannot unwrap a PIN block as a secret object)"
            );
        }
        for note in module.compromises() {
            tracing::warn!("{note}");
        }
        Ok(module)
    }

    /// The initialised library context and the token's slot, for benchmarks and diagnostics that
    /// need raw cryptoki calls on the same token.
    pub fn raw_context(&self) -> (Pkcs11, Slot) {
        (self.context.clone(), self.slot)
    }

    /// What the start-up probe found the token can do: the features each class's template
    /// depends on.
    pub fn token_features(&self) -> TokenFeatures {
        self.probe.features
    }

    /// The usages a key of `class` and `key_type` gets on this token.
    pub fn usages_for(&self, class: KeyClass, key_type: KeyType) -> Usages {
        class.usages(key_type.family(), &self.probe.features)
    }

    /// Creates (or replaces) a key from clear bytes: for key ceremonies and test tokens. The
    /// label must name a key class, whose template the key gets. The clear value is zeroised
    /// after the call.
    pub fn provision_key(&self, label: &str, key_type: KeyType, key: &ClearKey) -> Result<KeyInfo> {
        check_label(label)?;
        let class = KeyClass::of_label(label)?;
        if key.len() != key_type.key_len() {
            return Err(HsmError::invalid(format!(
                "a {key_type} key is {} bytes, got {}",
                key_type.key_len(),
                key.len()
            )));
        }
        {
            let session = self.pool.get()?;
            self.store_clear(&session, label, class, key_type, key)?;
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
        self.with_token_key(label, |key| f(key))
    }

    /// As [`Self::with_key`], with the key's token attributes at hand.
    fn with_token_key<T>(&self, label: &str, f: impl Fn(&TokenKey<'_>) -> Result<T>) -> Result<T> {
        let session = self.pool.get()?;
        let entry = self.entry(&session, label)?;
        let gcm = self.probe.aes_gcm;
        match f(&TokenKey::new(&session, label, entry).with_gcm(gcm)) {
            Err(HsmError::Token { message, .. }) if message.contains("HandleInvalid") => {
                self.cache_write().remove(label);
                let entry = self.entry(&session, label)?;
                f(&TokenKey::new(&session, label, entry).with_gcm(gcm))
            }
            other => other,
        }
    }

    fn spec<'a>(
        &self,
        label: &'a str,
        ck_type: CkKeyType,
        usages: Usages,
        id: Vec<u8>,
    ) -> KeySpec<'a> {
        KeySpec {
            label,
            ck_type,
            value_len: None,
            usages,
            id,
            copyable_known: self.probe.copyable,
        }
    }

    /// Stores a clear key under `label` with its class's template: creates the new objects first,
    /// then destroys the old ones, so a failure leaves the old key in place.
    fn store_clear(
        &self,
        session: &Session,
        label: &str,
        class: KeyClass,
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
        let usages = self.usages_for(class, key_type);
        // The check value travels in CKA_ID: a key that may neither encrypt nor sign could not
        // compute it later.
        let soft = SoftKey::new(label, key_type, key)?;
        let mut stored_kcv = computed_check_block(&soft)?;
        stored_kcv.truncate(key_type.kcv_len());
        let id = template::key_id(key_type, Some(&stored_kcv));
        let ck_type = ck_type_of(key_type, false);
        let handle = create_key(session, &self.spec(label, ck_type, usages, id), &value)?;
        let companion = if needs_companion(class, key_type) {
            let k1 = Zeroizing::new([&value[..8], &value[..8]].concat());
            let companion_label = companion_label(label);
            let spec = self.spec(
                &companion_label,
                CkKeyType::DES2,
                usages,
                template::key_id(KeyType::Tdes2, None),
            );
            match create_key(session, &spec, &k1) {
                Ok(handle) => Some(Companion {
                    handle,
                    single_des: false,
                }),
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
        let entry = lookup_handle(session, label, handle, companion)?;
        cache.insert(label.to_owned(), entry);
        Ok(())
    }

    /// Whether `kek` wraps and unwraps keys of `key_type` on this token (same family, and the
    /// probe found the family's wrap mechanism working).
    fn wraps(&self, kek: &Entry, key_type: KeyType, usage: KeyUsage) -> bool {
        let family = kek.key_type.family();
        kek.usages.contains(usage)
            && self.probe.features.wrap(family)
            && key_type.family() == family
            && kek.ck_type != CkKeyType::DES
    }

    /// Imports a key with `C_UnwrapKey` under `kek`: the clear key never leaves the token. The
    /// new object's check value is compared with `expected_kcv` before the old key is removed.
    #[allow(clippy::too_many_arguments)]
    fn import_unwrapped(
        &self,
        session: &Session,
        kek: (&str, Entry),
        label: &str,
        class: KeyClass,
        key_type: KeyType,
        cryptogram: &[u8],
        expected_kcv: &[u8],
    ) -> Result<()> {
        check_cryptogram(kek.1.key_type, key_type, cryptogram)?;
        let mut cache = self.cache_write();
        let old = find_labelled(session, label)?;
        let old_companion = find_labelled(session, &companion_label(label))?;
        let usages = self.usages_for(class, key_type);
        let handle = self.unwrap_into(session, kek.1, label, key_type, usages, cryptogram)?;
        let fresh = Entry {
            handle,
            ck_type: ck_type_of(key_type, true),
            key_type,
            usages,
            companion: None,
            stored_kcv: None,
        };
        let checked = kcv_matches(&TokenKey::new(session, label, fresh), expected_kcv);
        let refusal = match checked {
            Ok((true, _)) => None,
            Ok((false, computed)) => Some(HsmError::KcvMismatch {
                label: label.to_owned(),
                expected: hex::encode_upper(expected_kcv),
                computed: hex::encode_upper(computed),
            }),
            Err(error) => Some(error),
        };
        if let Some(error) = refusal {
            let _ = session.destroy_object(handle);
            return Err(error);
        }
        let companion = if needs_companion(class, key_type) {
            let label = companion_label(label);
            match self.unwrap_into(
                session,
                kek.1,
                &label,
                KeyType::Des,
                usages,
                &cryptogram[..8],
            ) {
                Ok(handle) => Some(Companion {
                    handle,
                    single_des: true,
                }),
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
        cache.insert(label.to_owned(), Entry { companion, ..fresh });
        Ok(())
    }

    /// `C_UnwrapKey` of an ECB cryptogram under `kek` into a token key with `usages`. Single DES
    /// becomes a DES key (the wrap path needs a token with single DES: the probe checked it).
    fn unwrap_into(
        &self,
        session: &Session,
        kek: Entry,
        label: &str,
        key_type: KeyType,
        usages: Usages,
        cryptogram: &[u8],
    ) -> Result<ObjectHandle> {
        let ck_type = ck_type_of(key_type, true);
        let mut spec = self.spec(label, ck_type, usages, template::key_id(key_type, None));
        if key_type.family() == Family::Aes {
            spec.value_len = Some(key_type.key_len());
        }
        let template = template::token_key(&spec);
        let handle = session
            .unwrap_key(&ecb_for(kek.ck_type), kek.handle, cryptogram, &template)
            .map_err(token_error("C_UnwrapKey"))?;
        if !self.probe.unwrap_ignores_template {
            return Ok(handle);
        }
        // The token did not apply the template (opencryptoki 3.8 leaves unwrapped keys
        // extractable and not sensitive): a copy may set what the template says (sensitive on,
        // extractable off, usages), then the original goes. A key that still differs from its
        // template is refused, never kept.
        let wanted = template::protections(&template);
        let copy = session
            .copy_object(handle, &wanted)
            .map_err(token_error("C_CopyObject (unwrapped key)"));
        let _ = session.destroy_object(handle);
        let copy = copy?;
        let types: Vec<AttributeType> = wanted.iter().map(Attribute::attribute_type).collect();
        let actual = session
            .get_attributes(copy, &types)
            .map_err(token_error("C_GetAttributeValue"))?;
        if wanted.iter().all(|attribute| actual.contains(attribute)) {
            Ok(copy)
        } else {
            let _ = session.destroy_object(copy);
            Err(HsmError::Token {
                operation: "C_UnwrapKey",
                message: "the token would not give the unwrapped key its class's template".into(),
            })
        }
    }

    /// Generates a key in the token (or, when the token has no generation mechanism for the
    /// type, from random bytes in host memory) as a wrappable session key, wraps it under `kek`,
    /// unwraps that cryptogram into the token object with the class's template and destroys the
    /// session key. Returns the cryptogram.
    fn generate_wrapped(
        &self,
        session: &Session,
        kek: Entry,
        label: &str,
        class: KeyClass,
        key_type: KeyType,
    ) -> Result<ExportedKey> {
        let ck_type = ck_type_of(key_type, true);
        let aes_len = (key_type.family() == Family::Aes).then_some(key_type.key_len());
        let generated = match self.keygen_mechanism(key_type) {
            Some(mechanism) => session
                .generate_key(
                    &mechanism,
                    &template::wrappable_session_key(ck_type, aes_len, self.probe.copyable),
                )
                .map_err(token_error("C_GenerateKey")),
            None => {
                let mut value = Zeroizing::new(vec![0u8; key_type.key_len()]);
                session
                    .generate_random_slice(&mut value)
                    .map_err(token_error("C_GenerateRandom"))?;
                if key_type.family() == Family::Des {
                    set_odd_parity(&mut value);
                }
                let mut template =
                    template::wrappable_session_key(ck_type, None, self.probe.copyable);
                template.push(Attribute::Value(value.to_vec()));
                let created = session
                    .create_object(&template)
                    .map_err(token_error("C_CreateObject"));
                zeroize_values(&mut template);
                created
            }
        }?;
        let wrapped = session
            .wrap_key(&ecb_for(kek.ck_type), kek.handle, generated)
            .map_err(token_error("C_WrapKey"));
        let _ = session.destroy_object(generated);
        let cryptogram = wrapped?;
        let mut cache = self.cache_write();
        let old = find_labelled(session, label)?;
        let old_companion = find_labelled(session, &companion_label(label))?;
        let usages = self.usages_for(class, key_type);
        let handle = self.unwrap_into(session, kek, label, key_type, usages, &cryptogram)?;
        let fresh = Entry {
            handle,
            ck_type,
            key_type,
            usages,
            companion: None,
            stored_kcv: None,
        };
        let check = match TokenKey::new(session, label, fresh).check_block() {
            Ok(check) => check,
            Err(error) => {
                let _ = session.destroy_object(handle);
                return Err(error);
            }
        };
        let companion = if needs_companion(class, key_type) {
            let label = companion_label(label);
            match self.unwrap_into(session, kek, &label, KeyType::Des, usages, &cryptogram[..8]) {
                Ok(handle) => Some(Companion {
                    handle,
                    single_des: true,
                }),
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
        cache.insert(label.to_owned(), Entry { companion, ..fresh });
        let mut kcv = check;
        kcv.truncate(if key_type.family() == Family::Des {
            4
        } else {
            5
        });
        Ok(ExportedKey {
            label: label.to_owned(),
            key_type,
            cryptogram,
            kcv,
        })
    }

    fn keygen_mechanism(&self, key_type: KeyType) -> Option<Mechanism<'static>> {
        let keygen = self.probe.keygen;
        match key_type {
            KeyType::Des if keygen.des => Some(Mechanism::DesKeyGen),
            KeyType::Tdes2 if keygen.des2 => Some(Mechanism::Des2KeyGen),
            KeyType::Tdes3 if keygen.des3 => Some(Mechanism::Des3KeyGen),
            KeyType::Aes128 | KeyType::Aes192 | KeyType::Aes256 if keygen.aes => {
                Some(Mechanism::AesKeyGen)
            }
            _ => None,
        }
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

    /// Whether every key type is generated, exported and imported without leaving the token.
    fn key_transport(&self) -> KeyTransport {
        let features = self.probe.features;
        let keygen = self.probe.keygen;
        if features.des_wrap
            && features.aes_wrap
            && keygen.des
            && keygen.des2
            && keygen.des3
            && keygen.aes
        {
            KeyTransport::InToken
        } else {
            KeyTransport::HostMemory
        }
    }

    /// Every place where this token makes the policy weaker than on an ideal token.
    fn compromises(&self) -> Vec<String> {
        let features = self.probe.features;
        let keygen = self.probe.keygen;
        let mut notes = Vec::new();
        for (family, name) in [(Family::Des, "DES"), (Family::Aes, "AES")] {
            if !features.wrap(family) {
                notes.push(format!(
                    "no working {name} key wrap: {name} terminal master keys encrypt only and zone master keys decrypt only (CKA_WRAP/CKA_UNWRAP impossible); {name} working keys are generated and imported through host memory (zeroised)"
                ));
            }
        }
        if features.des_wrap || features.aes_wrap {
            let missing: Vec<&str> = [
                (keygen.des && features.des_wrap, "des"),
                (keygen.des2 && features.des_wrap, "tdes2"),
                (keygen.des3 && features.des_wrap, "tdes3"),
                (keygen.aes && features.aes_wrap, "aes"),
            ]
            .into_iter()
            .filter(|(ok, _)| !ok)
            .map(|(_, name)| name)
            .collect();
            if !missing.is_empty() {
                notes.push(format!(
                    "no in-token generation with key wrap for {}: those working keys are generated from random bytes in host memory, then wrapped",
                    missing.join(", ")
                ));
            }
        }
        notes.push(
            "no DES MAC mechanism (X9.19, UnionPay MAC, ISO 9797-1 CBC-MAC): DES MAC keys have CKA_ENCRYPT (CBC chaining), never decrypt, wrap or unwrap".into(),
        );
        if !features.aes_cmac {
            notes.push(
                "no CKM_AES_CMAC: AES MAC keys have CKA_ENCRYPT; AES-CMAC is chained from C_Encrypt with its subkeys in host memory".into(),
            );
        }
        if !self.probe.aes_gcm {
            notes.push(
                "no working CKM_AES_GCM: data keys (dek/) seal with AES-GCM built from C_Encrypt (AES-ECB counter blocks), GHASH and its key H in host memory".into(),
            );
        }
        if !self.probe.copyable {
            notes.push(
                "the token does not know CKA_COPYABLE: anyone with the user PIN can C_CopyObject a key and give the copy other usages, so the usage policy does not hold against a PIN holder".into(),
            );
        }
        notes
    }
}

fn companion_label(label: &str) -> String {
    format!("{label}{COMPANION_SUFFIX}")
}

/// Only double-length MAC keys need K1 on its own (X9.19's single-DES chaining).
fn needs_companion(class: KeyClass, key_type: KeyType) -> bool {
    class.is_mac() && key_type == KeyType::Tdes2
}

/// The PKCS#11 key type of `key_type`: single DES is K|K (DES2) when created from a clear value,
/// a DES key when generated or unwrapped by the token.
fn ck_type_of(key_type: KeyType, in_token: bool) -> CkKeyType {
    match key_type {
        KeyType::Des if in_token => CkKeyType::DES,
        KeyType::Des | KeyType::Tdes2 => CkKeyType::DES2,
        KeyType::Tdes3 => CkKeyType::DES3,
        KeyType::Aes128 | KeyType::Aes192 | KeyType::Aes256 => CkKeyType::AES,
    }
}

fn ecb_for(ck_type: CkKeyType) -> Mechanism<'static> {
    if ck_type == CkKeyType::AES {
        Mechanism::AesEcb
    } else if ck_type == CkKeyType::DES {
        Mechanism::DesEcb
    } else {
        Mechanism::Des3Ecb
    }
}

fn check_cryptogram(kek_type: KeyType, key_type: KeyType, cryptogram: &[u8]) -> Result<()> {
    let expected_len = key_type.key_len();
    if cryptogram.len() != expected_len {
        return Err(HsmError::invalid(format!(
            "a {key_type} cryptogram is {expected_len} bytes, got {}",
            cryptogram.len()
        )));
    }
    if !cryptogram.len().is_multiple_of(kek_type.block_len()) {
        return Err(HsmError::invalid(format!(
            "a {key_type} key cannot be encrypted under a {kek_type} key"
        )));
    }
    Ok(())
}

fn zeroize_values(template: &mut [Attribute]) {
    for attribute in template {
        if let Attribute::Value(bytes) = attribute {
            bytes.zeroize();
        }
    }
}

/// The slot of the token and a description of it. With `slot`, that slot (its token's label is
/// checked when cryptoki can read it); otherwise the slot whose token has `token_label`.
fn find_slot(context: &Pkcs11, token_label: &str, slot: Option<u64>) -> Result<(Slot, String)> {
    let slots = context
        .get_slots_with_token()
        .map_err(token_error("C_GetSlotList"))?;
    let mut unreadable = Vec::new();
    for candidate in slots {
        if slot.is_some_and(|id| id != candidate.id()) {
            continue;
        }
        match context.get_token_info(candidate) {
            Ok(info) if info.label().trim_end() == token_label => {
                let description = format!(
                    "{} {} serial {}",
                    info.manufacturer_id().trim(),
                    info.model().trim(),
                    info.serial_number().trim()
                );
                return Ok((candidate, description));
            }
            Ok(info) if slot.is_some() => {
                return Err(HsmError::Config(format!(
                    "hsm.token_label: the token in slot {} is labelled {:?}, not {token_label:?}",
                    candidate.id(),
                    info.label().trim_end()
                )));
            }
            Ok(_) => {}
            Err(error) if slot.is_some() => {
                tracing::warn!(slot = candidate.id(), %error, "token information unreadable; using the configured slot");
                return Ok((
                    candidate,
                    format!(
                        "in slot {} (token information unreadable: {error})",
                        candidate.id()
                    ),
                ));
            }
            Err(error) => unreadable.push(format!("slot {}: {error}", candidate.id())),
        }
    }
    let mut message = match slot {
        Some(id) => format!("hsm.slot: no token in slot {id}"),
        None => format!("hsm.token_label: no token labelled {token_label:?}"),
    };
    if !unreadable.is_empty() {
        message.push_str(&format!(
            " (token information unreadable in {}; set hsm.slot)",
            unreadable.join(", ")
        ));
    }
    Err(HsmError::Config(message))
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
    let companion = match find_labelled(session, &companion_label(label))?.first() {
        Some(handle) => {
            let kind = session
                .get_attributes(*handle, &[AttributeType::KeyType])
                .map_err(token_error("C_GetAttributeValue"))?;
            Some(Companion {
                handle: *handle,
                single_des: kind
                    .iter()
                    .any(|a| matches!(a, Attribute::KeyType(k) if *k == CkKeyType::DES)),
            })
        }
        None => None,
    };
    lookup_handle(session, label, handle, companion)
}

/// Reads a key object's type, usages and stored check value.
fn lookup_handle(
    session: &Session,
    label: &str,
    handle: ObjectHandle,
    companion: Option<Companion>,
) -> Result<Entry> {
    let attributes = session
        .get_attributes(
            handle,
            &[
                AttributeType::KeyType,
                AttributeType::ValueLen,
                AttributeType::Id,
                AttributeType::Encrypt,
                AttributeType::Decrypt,
                AttributeType::Sign,
                AttributeType::Verify,
                AttributeType::Wrap,
                AttributeType::Unwrap,
            ],
        )
        .map_err(token_error("C_GetAttributeValue"))?;
    let mut ck_type = None;
    let mut value_len = None;
    let mut id = Vec::new();
    let mut usages = Usages::NONE;
    for attribute in attributes {
        let usage = match attribute {
            Attribute::KeyType(kind) => {
                ck_type = Some(kind);
                None
            }
            Attribute::ValueLen(len) => {
                value_len = Some(u64::from(len));
                None
            }
            Attribute::Id(bytes) => {
                id = bytes;
                None
            }
            Attribute::Encrypt(true) => Some(KeyUsage::Encrypt),
            Attribute::Decrypt(true) => Some(KeyUsage::Decrypt),
            Attribute::Sign(true) => Some(KeyUsage::Sign),
            Attribute::Verify(true) => Some(KeyUsage::Verify),
            Attribute::Wrap(true) => Some(KeyUsage::Wrap),
            Attribute::Unwrap(true) => Some(KeyUsage::Unwrap),
            _ => None,
        };
        if let Some(usage) = usage {
            usages = usages.with(usage);
        }
    }
    let id = String::from_utf8_lossy(&id).into_owned();
    let (marker, stored) = match id.split_once(template::ID_KCV) {
        Some((marker, kcv)) => (marker.to_owned(), hex::decode(kcv).ok()),
        None => (id.clone(), None),
    };
    let stored_kcv = stored.filter(|kcv| kcv.len() <= 5).map(|kcv| {
        let mut bytes = [0u8; 5];
        bytes[..kcv.len()].copy_from_slice(&kcv);
        (bytes, kcv.len())
    });
    // The type this module wrote into CKA_ID (`posbridge:tdes2`), where it made the key.
    let recorded: Option<KeyType> = marker
        .strip_prefix(template::ID_KEY)
        .and_then(|name| name.parse().ok());
    let aes = |len: Option<u64>| match len {
        Some(16) => Some(KeyType::Aes128),
        Some(24) => Some(KeyType::Aes192),
        Some(32) => Some(KeyType::Aes256),
        _ => None,
    };
    let key_type = match ck_type {
        Some(kind) if kind == CkKeyType::DES => Some(KeyType::Des),
        // A single-length key held as K|K (older keys: CKA_ID `posbridge:des` too).
        Some(kind) if kind == CkKeyType::DES2 && recorded == Some(KeyType::Des) => {
            Some(KeyType::Des)
        }
        Some(kind) if kind == CkKeyType::DES2 => Some(KeyType::Tdes2),
        Some(kind) if kind == CkKeyType::DES3 => Some(KeyType::Tdes3),
        Some(kind) if kind == CkKeyType::AES => {
            aes(value_len).or(recorded.filter(|t| t.family() == Family::Aes))
        }
        _ => None,
    };
    let Some(key_type) = key_type else {
        return Err(HsmError::wrong_key(
            label,
            "not a DES, DES2, DES3 or AES secret key (or an AES key of unknown length)",
        ));
    };
    Ok(Entry {
        handle,
        ck_type: ck_type.unwrap_or(CkKeyType::DES2),
        key_type,
        usages,
        companion,
        stored_kcv,
    })
}

/// Creates a token key from a clear value with `spec`'s template. The template's copy of the
/// value is zeroised before returning.
fn create_key(session: &Session, spec: &KeySpec<'_>, value: &[u8]) -> Result<ObjectHandle> {
    let mut template = template::token_key(spec);
    template.push(Attribute::Value(value.to_vec()));
    let created = session
        .create_object(&template)
        .map_err(token_error("C_CreateObject"));
    zeroize_values(&mut template);
    created
}

/// `CKM_AES_GCM` parameters for sealed data: the nonce, `aad`, and the 16-byte tag (in bits).
pub(crate) fn gcm_params<'a>(
    iv: &'a mut [u8],
    aad: &'a [u8],
) -> std::result::Result<GcmParams<'a>, cryptoki::error::Error> {
    let tag_bits = (crate::ops::TAG_LEN * 8) as std::os::raw::c_ulong;
    GcmParams::new(iv, aad, cryptoki::types::Ulong::from(tag_bits))
}

/// A token key in use with one borrowed session.
struct TokenKey<'a> {
    session: &'a Session,
    label: &'a str,
    entry: Entry,
    /// The token has a working `CKM_AES_GCM`; else AES-GCM is built from its AES-ECB.
    gcm_in_token: bool,
}

impl<'a> TokenKey<'a> {
    fn new(session: &'a Session, label: &'a str, entry: Entry) -> Self {
        Self {
            session,
            label,
            entry,
            gcm_in_token: false,
        }
    }

    fn with_gcm(mut self, in_token: bool) -> Self {
        self.gcm_in_token = in_token;
        self
    }

    /// Refuses, before calling the token, what the key's attributes do not allow: the token would
    /// refuse it too (`CKR_KEY_FUNCTION_NOT_PERMITTED`), this only names the reason.
    fn require(&self, usage: KeyUsage, what: &str) -> Result<()> {
        if self.entry.usages.contains(usage) {
            Ok(())
        } else {
            Err(HsmError::wrong_key(
                self.label,
                format!(
                    "{what} needs CKA_{}; this key may only {}",
                    usage.name().to_ascii_uppercase(),
                    self.entry.usages
                ),
            ))
        }
    }

    fn cbc_last_with(
        &self,
        handle: ObjectHandle,
        single_des: bool,
        iv: &[u8],
        data: &[u8],
    ) -> Result<Vec<u8>> {
        self.require(KeyUsage::Encrypt, "CBC chaining")?;
        let block_len = self.block_len();
        if data.is_empty() || !data.len().is_multiple_of(block_len) || iv.len() != block_len {
            return Err(HsmError::invalid(format!(
                "CBC needs whole {block_len}-byte blocks"
            )));
        }
        let mechanism = match self.entry.key_type.family() {
            Family::Des => {
                let iv = iv
                    .try_into()
                    .map_err(|_| HsmError::invalid("IV must be 8 bytes"))?;
                if single_des {
                    Mechanism::DesCbc(iv)
                } else {
                    Mechanism::Des3Cbc(iv)
                }
            }
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
        self.require(KeyUsage::Encrypt, "encryption")?;
        self.session
            .encrypt(&ecb_for(self.entry.ck_type), self.entry.handle, data)
            .map(Zeroizing::new)
            .map_err(token_error("C_Encrypt (ECB)"))
    }

    fn ecb_decrypt(&self, data: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        self.require(KeyUsage::Decrypt, "decryption")?;
        self.session
            .decrypt(&ecb_for(self.entry.ck_type), self.entry.handle, data)
            .map(Zeroizing::new)
            .map_err(token_error("C_Decrypt (ECB)"))
    }

    fn cbc_last(&self, iv: &[u8], data: &[u8]) -> Result<Vec<u8>> {
        let single = self.entry.ck_type == CkKeyType::DES;
        self.cbc_last_with(self.entry.handle, single, iv, data)
    }

    fn left_cbc_last(&self, iv: &[u8], data: &[u8]) -> Result<Vec<u8>> {
        let (handle, single_des) = match (self.entry.key_type, self.entry.companion) {
            (KeyType::Des, _) => (self.entry.handle, self.entry.ck_type == CkKeyType::DES),
            (KeyType::Tdes2, Some(companion)) => (companion.handle, companion.single_des),
            (KeyType::Tdes2, None) => {
                return Err(HsmError::wrong_key(
                    self.label,
                    "X9.19 needs a MAC key's K1 companion object; only tak/ and zak/ keys have one",
                ));
            }
            _ => {
                return Err(HsmError::wrong_key(
                    self.label,
                    "ISO 9797-1 algorithm 3 needs a des or tdes2 key",
                ));
            }
        };
        self.cbc_last_with(handle, single_des, iv, data)
    }

    fn aes_cmac(&self, data: &[u8]) -> Result<Vec<u8>> {
        self.require_family(Family::Aes, "AES-CMAC")?;
        if self.entry.usages.contains(KeyUsage::Sign) {
            return self
                .session
                .sign(&Mechanism::AesCMac, self.entry.handle, data)
                .map_err(token_error("C_Sign (AES-CMAC)"));
        }
        crate::ops::cmac_from_cipher(self, data)
    }

    fn gcm_seal(
        &self,
        nonce: &[u8; crate::ops::NONCE_LEN],
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>> {
        self.require(KeyUsage::Encrypt, "sealing data")?;
        if !self.gcm_in_token {
            return crate::ops::gcm_from_cipher(self, nonce, aad, plaintext, true)
                .map(|sealed| sealed.to_vec());
        }
        let mut iv = *nonce;
        let params = gcm_params(&mut iv, aad).map_err(token_error("CK_GCM_PARAMS"))?;
        self.session
            .encrypt(&Mechanism::AesGcm(params), self.entry.handle, plaintext)
            .map_err(token_error("C_Encrypt (AES-GCM)"))
    }

    fn gcm_open(
        &self,
        nonce: &[u8; crate::ops::NONCE_LEN],
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>> {
        self.require(KeyUsage::Decrypt, "opening sealed data")?;
        if !self.gcm_in_token {
            return crate::ops::gcm_from_cipher(self, nonce, aad, sealed, false);
        }
        let mut iv = *nonce;
        let params = gcm_params(&mut iv, aad).map_err(token_error("CK_GCM_PARAMS"))?;
        match self
            .session
            .decrypt(&Mechanism::AesGcm(params), self.entry.handle, sealed)
        {
            Ok(clear) => Ok(Zeroizing::new(clear)),
            // A tag that does not verify (SoftHSM2 2.6.1 answers CKR_GENERAL_ERROR to it).
            Err(cryptoki::error::Error::Pkcs11(
                RvError::EncryptedDataInvalid
                | RvError::EncryptedDataLenRange
                | RvError::GeneralError,
                _,
            )) => Err(HsmError::SealBroken {
                label: self.label.to_owned(),
            }),
            Err(other) => Err(token_error("C_Decrypt (AES-GCM)")(other)),
        }
    }

    fn check_block(&self) -> Result<Vec<u8>> {
        let usages = self.entry.usages;
        let computable = usages.contains(KeyUsage::Encrypt)
            || (self.key_type().family() == Family::Aes && usages.contains(KeyUsage::Sign));
        match self.entry.stored_kcv {
            _ if computable => computed_check_block(self),
            Some((bytes, len)) => Ok(bytes[..len].to_vec()),
            None => Err(HsmError::wrong_key(
                self.label,
                format!(
                    "no check value: the key may only {usages} and none was stored when it was made"
                ),
            )),
        }
    }
}

impl SecurityModule for Pkcs11Module {
    fn capabilities(&self) -> Capabilities {
        let mut notes = Vec::new();
        match self.probe.translation {
            PinTranslation::HostMemory => notes.push(HOST_MEMORY_WARNING.to_owned()),
            PinTranslation::InToken => notes.push(
                "PIN translation inside the token for same-format DES blocks (destination keys must be CKA_TRUSTED)".into(),
            ),
        }
        notes.push(
            "PIN block format changes (e.g. 4 -> 0) and format 4 use the clear PIN in host memory, zeroised after use".into(),
        );
        notes.extend(self.probe.findings.iter().cloned());
        notes.push(
            "key usage: each key class gets its own template (sensitive, not extractable, not modifiable, least usages); `posbridge hsm keys list` shows each key's".into(),
        );
        notes.extend(self.compromises());
        let key_transport = self.key_transport();
        Capabilities {
            backend: "pkcs11".into(),
            description: format!("{}, {} sessions", self.description, self.pool.size()),
            production: self.probe.translation == PinTranslation::InToken
                && key_transport == KeyTransport::InToken
                && self.probe.copyable,
            pin_translation: self.probe.translation,
            key_transport,
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
        self.with_token_key(label, |key| {
            Ok(KeyInfo {
                label: label.to_owned(),
                key_type: key.entry.key_type,
                kcv: kcv(key)?,
                class: KeyClass::of_label(label).ok(),
                usages: key.entry.usages,
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
        if self.probe.translation == PinTranslation::InToken && same_des_format {
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
        check_label(label)?;
        let class = KeyClass::of_label(label)?;
        {
            let session = self.pool.get()?;
            let kek_entry = self.entry(&session, kek)?;
            if self.wraps(&kek_entry, key_type, KeyUsage::Unwrap) {
                self.import_unwrapped(
                    &session,
                    (kek, kek_entry),
                    label,
                    class,
                    key_type,
                    cryptogram,
                    expected_kcv,
                )?;
            } else {
                // Through host memory: C_Decrypt under the KEK (refused by the token unless the
                // KEK may decrypt), checked, then C_CreateObject.
                let clear = decrypt_and_check(
                    &TokenKey::new(&session, kek, kek_entry),
                    label,
                    key_type,
                    cryptogram,
                    expected_kcv,
                )?;
                self.store_clear(&session, label, class, key_type, &clear)?;
            }
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
        check_label(label)?;
        let class = KeyClass::of_label(label)?;
        let session = self.pool.get()?;
        let kek_entry = self.entry(&session, export_under)?;
        let exported = if self.wraps(&kek_entry, key_type, KeyUsage::Wrap)
            && kek_entry.usages.contains(KeyUsage::Unwrap)
        {
            self.generate_wrapped(&session, kek_entry, label, class, key_type)?
        } else {
            // Through host memory: random bytes, C_Encrypt under the KEK (refused by the token
            // unless the KEK may encrypt), then C_CreateObject.
            let mut random = Zeroizing::new(vec![0u8; key_type.key_len()]);
            session
                .generate_random_slice(&mut random)
                .map_err(token_error("C_GenerateRandom"))?;
            let (clear, exported) = new_key_exported(
                &TokenKey::new(&session, export_under, kek_entry),
                label,
                key_type,
                random,
            )?;
            self.store_clear(&session, label, class, key_type, &clear)?;
            exported
        };
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

    fn encrypt_data(&self, key: &str, context: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
        self.with_key(key, |key| crate::ops::seal(key, context, plaintext))
    }

    fn decrypt_data(&self, key: &str, context: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        self.with_key(key, |key| crate::ops::open(key, context, sealed))
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
