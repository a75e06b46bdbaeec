//! What the token can really do, found out once at start: mechanism flags (`C_GetMechanismInfo`)
//! first, then a trial on throwaway session objects, since tokens advertise flags they do not
//! honour (SoftHSM2 2.6.1 lists `wrap` for DES3-CBC and answers `CKR_MECHANISM_INVALID` to
//! `C_WrapKey` with it). The result decides each key class's usages ([`TokenFeatures`]) and which
//! paths key import and generation take.

use crate::keys::PinTranslation;
use crate::ops::{KeyOps, SoftKey, set_odd_parity};
use crate::policy::TokenFeatures;
use crate::secret::ClearKey;
use cryptoki::context::Pkcs11;
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType as CkKeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use cryptoki::slot::Slot;
use zeroize::Zeroizing;

/// Which key types the token generates itself (`C_GenerateKey`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeyGen {
    pub(crate) des: bool,
    pub(crate) des2: bool,
    pub(crate) des3: bool,
    pub(crate) aes: bool,
}

/// Everything the start-up probe found.
#[derive(Debug, Clone)]
pub(crate) struct Probe {
    pub(crate) features: TokenFeatures,
    /// The token accepts `CKA_COPYABLE` (PKCS#11 2.40). Without it, `C_CopyObject` cannot be
    /// refused per key.
    pub(crate) copyable: bool,
    pub(crate) keygen: KeyGen,
    /// `C_UnwrapKey` did not apply its template's protections (opencryptoki 3.8 leaves the key
    /// extractable and not sensitive): the module then copies every unwrapped key with them.
    pub(crate) unwrap_ignores_template: bool,
    pub(crate) translation: PinTranslation,
    /// `CKM_AES_GCM` encrypts and decrypts as NIST SP 800-38D says (opencryptoki 3.8's software
    /// token has none): data keys seal in the token.
    pub(crate) aes_gcm: bool,
    /// One line per finding, for the log and `posbridge hsm info`.
    pub(crate) findings: Vec<String>,
}

type Outcome<T> = std::result::Result<T, Error>;

fn describe(error: &Error) -> String {
    match error {
        Error::Pkcs11(rv, function) => format!("{function:?} returned {rv:?}"),
        other => other.to_string(),
    }
}

/// Probes the token behind `slot` with the logged-in `session`.
pub(crate) fn probe(context: &Pkcs11, slot: Slot, session: &Session) -> Probe {
    let mut findings = Vec::new();
    let flags = |mechanism: MechanismType| context.get_mechanism_info(slot, mechanism).ok();
    let copyable = probe_copyable(session);
    let keygen = KeyGen {
        des: flags(MechanismType::DES_KEY_GEN).is_some_and(|i| i.generate()),
        des2: flags(MechanismType::DES2_KEY_GEN).is_some_and(|i| i.generate()),
        des3: flags(MechanismType::DES3_KEY_GEN).is_some_and(|i| i.generate()),
        aes: flags(MechanismType::AES_KEY_GEN).is_some_and(|i| i.generate()),
    };
    let wraps = |mechanism| flags(mechanism).is_some_and(|i| i.wrap() && i.unwrap());
    let mut insensitive = false;
    let des_wrap = if wraps(MechanismType::DES3_ECB) {
        trial(
            &mut findings,
            "DES3-ECB wrap/unwrap of des, tdes2, tdes3",
            || des_wrap_round_trip(session, copyable, &mut insensitive),
        )
    } else {
        findings.push("DES3-ECB: the token lists no wrap/unwrap".into());
        false
    };
    let aes_wrap = if wraps(MechanismType::AES_ECB) {
        trial(&mut findings, "AES-ECB wrap/unwrap of aes128", || {
            aes_wrap_round_trip(session, copyable, &mut insensitive)
        })
    } else {
        findings.push("AES-ECB: the token lists no wrap/unwrap".into());
        false
    };
    let aes_cmac = if flags(MechanismType::AES_CMAC).is_some_and(|i| i.sign() && i.verify()) {
        trial(&mut findings, "AES-CMAC sign", || aes_cmac_matches(session))
    } else {
        findings.push("AES-CMAC: the token lists no sign/verify".into());
        false
    };
    let aes_gcm = if flags(MechanismType::AES_GCM).is_some_and(|i| i.encrypt() && i.decrypt()) {
        trial(&mut findings, "AES-GCM seal", || aes_gcm_matches(session))
    } else {
        findings.push("AES-GCM: the token lists no encrypt/decrypt".into());
        false
    };
    if insensitive {
        findings.push(
            "C_UnwrapKey does not apply its template (the unwrapped key stays extractable or not sensitive): each unwrapped key is copied with its template's protections, the original destroyed".into(),
        );
    }
    let (translation, translation_finding) = probe_in_token_translation(session);
    findings.push(format!("in-token translation probe: {translation_finding}"));
    Probe {
        features: TokenFeatures {
            des_wrap,
            aes_wrap,
            des_mac: false,
            aes_cmac,
            pin_translation_in_token: translation == PinTranslation::InToken,
        },
        copyable,
        keygen,
        unwrap_ignores_template: insensitive,
        translation,
        aes_gcm,
        findings,
    }
}

/// Seals a block with `CKM_AES_GCM` under a session AES-256 key and compares with the host's
/// AES-GCM of the same key.
fn aes_gcm_matches(session: &Session) -> Outcome<bool> {
    let value = Zeroizing::new(session.generate_random_vec(32)?);
    let key = session_key(
        session,
        CkKeyType::AES,
        &value,
        false,
        &[Attribute::Encrypt(true), Attribute::Decrypt(true)],
    )?;
    let mut iv = [0x5Au8; crate::ops::NONCE_LEN];
    let outcome = (|| {
        let params = super::gcm_params(&mut iv, b"probe")?;
        session.encrypt(&Mechanism::AesGcm(params), key, &[0x42u8; 20])
    })();
    session.destroy_object(key)?;
    let sealed = outcome?;
    let Ok(soft) = ClearKey::new(value.to_vec())
        .and_then(|clear| SoftKey::new("probe", crate::keys::KeyType::Aes256, &clear))
    else {
        return Ok(false);
    };
    Ok(soft
        .gcm_seal(&[0x5Au8; crate::ops::NONCE_LEN], b"probe", &[0x42u8; 20])
        .is_ok_and(|expected| expected == sealed))
}

/// Runs a trial; a failure (or a wrong result) is recorded as a finding and means "cannot".
fn trial(findings: &mut Vec<String>, what: &str, f: impl FnOnce() -> Outcome<bool>) -> bool {
    match f() {
        Ok(true) => true,
        Ok(false) => {
            findings.push(format!("{what}: did not round-trip"));
            false
        }
        Err(error) => {
            findings.push(format!("{what}: {}", describe(&error)));
            false
        }
    }
}

/// A throwaway session key from random bytes the probe makes (they protect nothing).
fn session_key(
    session: &Session,
    ck_type: CkKeyType,
    value: &[u8],
    copyable: bool,
    usages: &[Attribute],
) -> Outcome<ObjectHandle> {
    let mut template = vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(ck_type),
        Attribute::Token(false),
        Attribute::Sensitive(true),
        Attribute::Extractable(true),
        Attribute::Value(value.to_vec()),
    ];
    if copyable {
        template.push(Attribute::Copyable(false));
    }
    template.extend_from_slice(usages);
    let created = session.create_object(&template);
    for attribute in &mut template {
        if let Attribute::Value(bytes) = attribute {
            zeroize::Zeroize::zeroize(bytes);
        }
    }
    created
}

fn random_des(session: &Session, len: usize) -> Outcome<Zeroizing<Vec<u8>>> {
    let mut value = Zeroizing::new(session.generate_random_vec(len as u32)?);
    set_odd_parity(&mut value);
    Ok(value)
}

fn probe_copyable(session: &Session) -> bool {
    let attempt = || -> Outcome<()> {
        let value = random_des(session, 16)?;
        let mut template = vec![
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(CkKeyType::DES2),
            Attribute::Token(false),
            Attribute::Copyable(false),
            Attribute::Value(value.to_vec()),
        ];
        let handle = session.create_object(&template);
        for attribute in &mut template {
            if let Attribute::Value(bytes) = attribute {
                zeroize::Zeroize::zeroize(bytes);
            }
        }
        session.destroy_object(handle?)
    };
    !matches!(
        attempt(),
        Err(Error::Pkcs11(RvError::AttributeTypeInvalid, _))
    )
}

/// Wraps a key of each DES type under a DES2 key with DES3-ECB, unwraps it again and compares
/// the two keys' check blocks.
fn des_wrap_round_trip(session: &Session, copyable: bool, insensitive: &mut bool) -> Outcome<bool> {
    let kek_value = random_des(session, 16)?;
    let kek = session_key(
        session,
        CkKeyType::DES2,
        &kek_value,
        copyable,
        &[Attribute::Wrap(true), Attribute::Unwrap(true)],
    )?;
    let cases = [
        (CkKeyType::DES, 8, Mechanism::DesEcb),
        (CkKeyType::DES2, 16, Mechanism::Des3Ecb),
        (CkKeyType::DES3, 24, Mechanism::Des3Ecb),
    ];
    let mut all = Ok(true);
    for (ck_type, len, ecb) in cases {
        let outcome = wrap_round_trip(
            session,
            copyable,
            kek,
            (&Mechanism::Des3Ecb, &ecb),
            (ck_type, len),
            insensitive,
        );
        match outcome {
            Ok(true) => {}
            other => {
                all = other;
                break;
            }
        }
    }
    let _ = session.destroy_object(kek);
    all
}

fn aes_wrap_round_trip(session: &Session, copyable: bool, insensitive: &mut bool) -> Outcome<bool> {
    let kek_value = Zeroizing::new(session.generate_random_vec(16)?);
    let kek = session_key(
        session,
        CkKeyType::AES,
        &kek_value,
        copyable,
        &[Attribute::Wrap(true), Attribute::Unwrap(true)],
    )?;
    let outcome = wrap_round_trip(
        session,
        copyable,
        kek,
        (&Mechanism::AesEcb, &Mechanism::AesEcb),
        (CkKeyType::AES, 16),
        insensitive,
    );
    let _ = session.destroy_object(kek);
    outcome
}

/// Wraps a fresh key of `ck_type` under `kek` with `wrap`, unwraps it as a sensitive key and
/// compares the two keys' `ecb` encryption of zeros. Records whether the token kept the unwrapped
/// key sensitive.
fn wrap_round_trip(
    session: &Session,
    copyable: bool,
    kek: ObjectHandle,
    (wrap, ecb): (&Mechanism, &Mechanism),
    (ck_type, len): (CkKeyType, usize),
    insensitive: &mut bool,
) -> Outcome<bool> {
    let value = random_des(session, len)?;
    let key = session_key(
        session,
        ck_type,
        &value,
        copyable,
        &[Attribute::Encrypt(true)],
    )?;
    let outcome = (|| {
        let wrapped = session.wrap_key(wrap, kek, key)?;
        let mut template = vec![
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(ck_type),
            Attribute::Token(false),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Encrypt(true),
        ];
        if ck_type == CkKeyType::AES {
            template.push(Attribute::ValueLen((len as u64).into()));
        }
        let back = session.unwrap_key(wrap, kek, &wrapped, &template)?;
        let protections = session.get_attributes(
            back,
            &[AttributeType::Sensitive, AttributeType::Extractable],
        )?;
        if !(protections.contains(&Attribute::Sensitive(true))
            && protections.contains(&Attribute::Extractable(false)))
        {
            *insensitive = true;
        }
        let block = vec![0u8; if ck_type == CkKeyType::AES { 16 } else { 8 }];
        let same = session.encrypt(ecb, back, &block)? == session.encrypt(ecb, key, &block)?;
        let _ = session.destroy_object(back);
        Ok(same)
    })();
    let _ = session.destroy_object(key);
    outcome
}

/// Signs zeros with CKM_AES_CMAC under a throwaway key and compares with RustCrypto.
fn aes_cmac_matches(session: &Session) -> Outcome<bool> {
    let value = Zeroizing::new(session.generate_random_vec(16)?);
    let key = session_key(
        session,
        CkKeyType::AES,
        &value,
        false,
        &[Attribute::Sign(true), Attribute::Verify(true)],
    )?;
    let signed = session.sign(&Mechanism::AesCMac, key, &[0u8; 16]);
    let _ = session.destroy_object(key);
    let signed = signed?;
    let expected = ClearKey::new(value.to_vec())
        .and_then(|clear| SoftKey::new("qr/probe", crate::KeyType::Aes128, &clear))
        .and_then(|soft| soft.aes_cmac(&[0u8; 16]));
    Ok(expected.is_ok_and(|expected| expected == signed))
}

/// Tries an in-token translation on a temporary session key: unwrap a test block as a sensitive
/// generic secret (with `CKA_WRAP_WITH_TRUSTED`), wrap it again, compare. Any failure means the
/// token cannot do it and PIN blocks will be translated in host memory.
fn probe_in_token_translation(session: &Session) -> (PinTranslation, String) {
    let result = (|| -> Outcome<bool> {
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
        Err(error) => (PinTranslation::HostMemory, describe(&error)),
    }
}
