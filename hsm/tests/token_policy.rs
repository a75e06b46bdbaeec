//! Key usage is enforced by the token, not only by the module: every key the PKCS#11 backend
//! provisions, generates or imports carries its class's template (read back here with raw
//! cryptoki calls), and what a template forbids fails in the token itself when called directly,
//! with the same PIN the gateway uses.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType as CkKeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use posbridge_hsm::pkcs11::Pkcs11Module;
use posbridge_hsm::{ClearKey, KeyClass, KeyType, KeyUsage, SecurityModule, TokenFeatures, Usages};

/// Keys the module makes itself, next to the provisioned fixtures: generated under terminal
/// master keys, imported under zone master keys.
fn make_working_keys(m: &Pkcs11Module) {
    for (label, kind, kek) in [
        ("tak/gen", KeyType::Des, "tmk/a"),
        ("tpk/gen", KeyType::Tdes2, "tmk/a"),
        ("zak/gen", KeyType::Tdes2, "tmk/a"),
        ("qr/gen", KeyType::Aes128, "tmk/aes"),
        ("pek/gen", KeyType::Aes128, "tmk/aes"),
    ] {
        m.generate_key(label, kind, kek).unwrap();
    }
    // The UnionPay field 62 example under its master key (a ZMK here: it imports).
    m.import_key(
        "zmk/cups",
        "tpk/12345678",
        KeyType::Tdes2,
        &hex::decode("6701EAD6A9AD51E51AA406E2C27FCFA9").unwrap(),
        &hex::decode("8D0A74B8").unwrap(),
    )
    .unwrap();
    m.import_key(
        "zmk/cups",
        "tak/12345678",
        KeyType::Des,
        &hex::decode("B651F9E9BACE9AE1").unwrap(),
        &hex::decode("AB7153CA").unwrap(),
    )
    .unwrap();
    m.provision_key(
        "pan/test",
        KeyType::Aes128,
        &ClearKey::from_hex("8E2B5C07D19F4A36B0C7E5821D4F6A93").unwrap(),
    )
    .unwrap();
}

fn raw_session(m: &Pkcs11Module) -> Session {
    let (context, slot) = m.raw_context();
    // Login state belongs to the process: the module's login covers this session.
    context.open_rw_session(slot).unwrap()
}

fn handle(session: &Session, label: &str) -> ObjectHandle {
    let found = session
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
        .unwrap();
    assert_eq!(found.len(), 1, "{label}: {found:?}");
    found[0]
}

fn labels(session: &Session) -> Vec<String> {
    let mut labels: Vec<String> = session
        .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])
        .unwrap()
        .into_iter()
        .filter_map(|h| {
            session
                .get_attributes(h, &[AttributeType::Label])
                .unwrap()
                .into_iter()
                .find_map(|a| match a {
                    Attribute::Label(bytes) => Some(String::from_utf8(bytes).unwrap()),
                    _ => None,
                })
        })
        .collect();
    labels.sort();
    labels
}

/// Reads back every key object's protections and usages and compares them with its class's
/// template on this token. Returns how many objects were checked.
fn every_key_has_its_template(m: &Pkcs11Module, session: &Session, copyable_known: bool) -> usize {
    let all = labels(session);
    for label in &all {
        let (owner, companion) = match label.strip_suffix("#k1") {
            Some(owner) => (owner, true),
            None => (label.as_str(), false),
        };
        let info = m.find_key(owner).unwrap();
        let class = KeyClass::of_label(owner).unwrap();
        let expected = m.usages_for(class, info.key_type);
        if companion {
            // Only double-length MAC keys have a K1 companion.
            assert!(class.is_mac() && info.key_type == KeyType::Tdes2, "{label}");
        } else if class.is_mac() && info.key_type == KeyType::Tdes2 {
            assert!(
                all.contains(&format!("{owner}#k1")),
                "{owner} lacks its companion"
            );
        }
        let object = handle(session, label);
        let mut wanted = vec![
            AttributeType::Token,
            AttributeType::Private,
            AttributeType::Sensitive,
            AttributeType::Extractable,
            AttributeType::Modifiable,
            AttributeType::Derive,
            AttributeType::Encrypt,
            AttributeType::Decrypt,
            AttributeType::Sign,
            AttributeType::Verify,
            AttributeType::Wrap,
            AttributeType::Unwrap,
            AttributeType::Value,
        ];
        if copyable_known {
            wanted.push(AttributeType::Copyable);
        }
        let attributes = session.get_attributes(object, &wanted).unwrap();
        let mut usages = Usages::NONE;
        let mut seen = Vec::new();
        for attribute in attributes {
            seen.push(attribute.attribute_type());
            match attribute {
                Attribute::Token(on) | Attribute::Private(on) | Attribute::Sensitive(on) => {
                    assert!(on, "{label}: {attribute:?}")
                }
                Attribute::Extractable(on)
                | Attribute::Modifiable(on)
                | Attribute::Copyable(on)
                | Attribute::Derive(on) => assert!(!on, "{label}: {attribute:?}"),
                Attribute::Value(_) => panic!("{label}: the token gave out CKA_VALUE"),
                Attribute::Encrypt(true) => usages = usages.with(KeyUsage::Encrypt),
                Attribute::Decrypt(true) => usages = usages.with(KeyUsage::Decrypt),
                Attribute::Sign(true) => usages = usages.with(KeyUsage::Sign),
                Attribute::Verify(true) => usages = usages.with(KeyUsage::Verify),
                Attribute::Wrap(true) => usages = usages.with(KeyUsage::Wrap),
                Attribute::Unwrap(true) => usages = usages.with(KeyUsage::Unwrap),
                _ => {}
            }
        }
        // Every protection was actually read (none silently unavailable); CKA_VALUE never is.
        assert_eq!(seen.len(), wanted.len() - 1, "{label}: read {seen:?}");
        assert_eq!(usages, expected, "{label} ({class}, {})", info.key_type);
        if !companion {
            assert_eq!(info.usages, expected, "{label}: listed usages");
        }
    }
    all.len()
}

fn refused(outcome: Result<impl std::fmt::Debug, Error>, what: &str) {
    match outcome {
        Err(Error::Pkcs11(RvError::KeyFunctionNotPermitted, _)) => {}
        other => panic!("{what}: expected CKR_KEY_FUNCTION_NOT_PERMITTED, got {other:?}"),
    }
}

/// An extractable session key to try wrapping with keys that must not wrap.
fn wrappable(session: &Session, ck_type: CkKeyType, len: usize) -> ObjectHandle {
    session
        .create_object(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(ck_type),
            Attribute::Token(false),
            Attribute::Extractable(true),
            Attribute::Sensitive(false),
            Attribute::Value(vec![0x5B; len]),
        ])
        .unwrap()
}

/// Direct cryptoki calls that each key's template forbids; the token must refuse every one.
fn forbidden_operations_fail_in_the_token(m: &Pkcs11Module, session: &Session) {
    let features = m.token_features();
    // A wrap mechanism the token has for AES keys, so a refusal is about the key, not the
    // mechanism.
    let aes_wrap = if features.aes_wrap {
        Mechanism::AesEcb
    } else {
        Mechanism::AesKeyWrap
    };
    let block = [0u8; 8];
    let aes_block = [0u8; 16];
    let des3 = Mechanism::Des3Ecb;
    // A terminal master key never decrypts: the working keys it exported stay secret.
    refused(
        session.decrypt(&des3, handle(session, "tmk/a"), &block),
        "C_Decrypt with a TMK",
    );
    refused(
        session.decrypt(&Mechanism::AesEcb, handle(session, "tmk/aes"), &aes_block),
        "C_Decrypt with an AES TMK",
    );
    // A zone master key only imports: it cannot encrypt (or wrap) anything of an attacker's.
    refused(
        session.encrypt(&des3, handle(session, "zmk/cups"), &block),
        "C_Encrypt with a ZMK",
    );
    if !features.des_wrap {
        // Where it cannot unwrap either, the ZMK decrypts; then it must not wrap.
        let key = wrappable(session, CkKeyType::DES2, 16);
        assert!(
            session
                .wrap_key(&des3, handle(session, "zmk/cups"), key)
                .is_err()
        );
    }
    // MAC keys (and their K1 companions) never decrypt, wrap or unwrap.
    for mac in [
        "tak/cups",
        "tak/single",
        "tak/gen",
        "zak/x919",
        "zak/x919#k1",
        "zak/gen",
        "zak/gen#k1",
    ] {
        let key = handle(session, mac);
        refused(
            session.decrypt(&des3, key, &block),
            &format!("C_Decrypt with {mac}"),
        );
        let target = wrappable(session, CkKeyType::DES2, 16);
        assert!(
            session.wrap_key(&des3, key, target).is_err(),
            "C_WrapKey with {mac} succeeded"
        );
    }
    // An AES MAC key signs; where the token has AES-CMAC it does nothing else.
    let qr = handle(session, "qr/rfc4493");
    refused(
        session.decrypt(&Mechanism::AesEcb, qr, &aes_block),
        "C_Decrypt with a QR key",
    );
    let target = wrappable(session, CkKeyType::AES, 16);
    refused(
        session.wrap_key(&aes_wrap, qr, target),
        "C_WrapKey with a QR key",
    );
    if features.aes_cmac {
        refused(
            session.encrypt(&Mechanism::AesEcb, qr, &aes_block),
            "C_Encrypt with a QR key",
        );
        let pan = handle(session, "pan/test");
        refused(
            session.verify(&Mechanism::AesCMac, pan, &aes_block, &aes_block),
            "C_Verify with the PAN-hash key",
        );
    }
    // The PIN verification key only encrypts: no PIN block or PVV input comes back out of it.
    refused(
        session.decrypt(&des3, handle(session, "pvk/vec"), &block),
        "C_Decrypt with the PVK",
    );
    // PIN keys encipher and decipher PIN blocks, nothing else.
    let pek = handle(session, "pek/aes-b");
    if features.aes_cmac {
        refused(
            session.sign(&Mechanism::AesCMac, pek, &aes_block),
            "C_Sign with a PEK",
        );
    }
    let target = wrappable(session, CkKeyType::AES, 16);
    refused(
        session.wrap_key(&aes_wrap, pek, target),
        "C_WrapKey with a PEK",
    );
    if features.aes_wrap {
        // Where AES key-encryption keys wrap, they do nothing else.
        let tmk = handle(session, "tmk/aes");
        refused(
            session.encrypt(&Mechanism::AesEcb, tmk, &aes_block),
            "C_Encrypt with a wrapping TMK",
        );
        let zmk = handle(session, "zmk/aes");
        refused(
            session.decrypt(&Mechanism::AesEcb, zmk, &aes_block),
            "C_Decrypt with an unwrapping ZMK",
        );
        let target = wrappable(session, CkKeyType::AES, 16);
        refused(
            session.wrap_key(&Mechanism::AesEcb, zmk, target),
            "C_WrapKey with a ZMK",
        );
    }
    // No key can be changed after the fact.
    let tmk = handle(session, "tmk/a");
    assert!(
        session
            .update_attributes(tmk, &[Attribute::Decrypt(true)])
            .is_err(),
        "C_SetAttributeValue gave a TMK CKA_DECRYPT"
    );
    let secret = session
        .get_attributes(tmk, &[AttributeType::Value])
        .unwrap();
    assert!(
        secret.is_empty(),
        "the token gave out a TMK's value: {secret:?}"
    );
}

/// The whole policy on one token: templates read back, forbidden calls refused, and the
/// copy loophole either closed by the token or reported by the module.
fn policy_holds(m: &Pkcs11Module) {
    make_working_keys(m);
    let session = raw_session(m);
    let caps = m.capabilities();
    let copyable_known = !caps
        .notes
        .iter()
        .any(|n| n.contains("does not know CKA_COPYABLE"));
    let checked = every_key_has_its_template(m, &session, copyable_known);
    assert!(checked >= 20, "only {checked} key objects");
    forbidden_operations_fail_in_the_token(m, &session);
    let tmk = handle(&session, "tmk/a");
    let copy = session.copy_object(tmk, &[Attribute::Token(false), Attribute::Decrypt(true)]);
    if copyable_known {
        assert!(copy.is_err(), "C_CopyObject of a TMK: {copy:?}");
    } else {
        // A token without CKA_COPYABLE copies, and the copy decrypts: the module must say so.
        let copy = copy.unwrap();
        assert!(
            session
                .decrypt(&Mechanism::Des3Ecb, copy, &[0u8; 8])
                .is_ok()
        );
        session.destroy_object(copy).unwrap();
        assert!(!caps.production, "{caps:?}");
    }
}

#[test]
fn softhsm_keys_carry_their_class_templates() {
    common::with_softhsm("softhsm_keys_carry_their_class_templates", |m| {
        // SoftHSM2 2.6.1: no DES3 or AES-ECB wrap, AES-CMAC yes, no in-token translation.
        assert_eq!(
            m.token_features(),
            TokenFeatures {
                des_wrap: false,
                aes_wrap: false,
                des_mac: false,
                aes_cmac: true,
                pin_translation_in_token: false,
            }
        );
        use KeyUsage::{Decrypt, Encrypt, Sign, Verify};
        let des = |class| m.usages_for(class, KeyType::Tdes2);
        assert_eq!(des(KeyClass::Tmk), Usages::of(&[Encrypt]));
        assert_eq!(des(KeyClass::Zmk), Usages::of(&[Decrypt]));
        assert_eq!(des(KeyClass::Tpk), Usages::of(&[Encrypt, Decrypt]));
        assert_eq!(des(KeyClass::Pvk), Usages::of(&[Encrypt]));
        assert_eq!(des(KeyClass::Tak), Usages::of(&[Encrypt]));
        assert_eq!(
            m.usages_for(KeyClass::Qr, KeyType::Aes128),
            Usages::of(&[Sign, Verify])
        );
        assert_eq!(
            m.usages_for(KeyClass::Pan, KeyType::Aes128),
            Usages::of(&[Sign])
        );
        policy_holds(m);
    });
}

#[test]
fn softhsm_reports_each_compromise() {
    common::with_softhsm("softhsm_reports_each_compromise", |m| {
        let caps = m.capabilities();
        assert_eq!(caps.key_transport, posbridge_hsm::KeyTransport::HostMemory);
        assert!(!caps.production);
        for expected in [
            "no working DES key wrap: DES terminal master keys encrypt only and zone master keys decrypt only",
            "no working AES key wrap",
            "no DES MAC mechanism",
            "DES3-ECB: the token lists no wrap/unwrap",
        ] {
            assert!(
                caps.notes.iter().any(|n| n.contains(expected)),
                "{expected:?} missing from {:#?}",
                caps.notes
            );
        }
        assert!(
            !caps.notes.iter().any(|n| n.contains("CKM_AES_CMAC")),
            "{caps:?}"
        );
        // An import under a terminal master key would need it to decrypt: refused, by name.
        let refused = m.import_key("tmk/a", "tpk/1", KeyType::Tdes2, &[0x11; 16], &[0; 3]);
        assert!(
            matches!(&refused, Err(posbridge_hsm::HsmError::WrongKey { reason, .. }) if reason.contains("CKA_DECRYPT")),
            "{refused:?}"
        );
    });
}

#[test]
fn opencryptoki_keys_carry_their_class_templates() {
    common::with_second_token(|m| {
        // opencryptoki 3.8's software token: AES-ECB wraps, DES2 keys cannot be wrapped at all
        // (CKR_KEY_NOT_WRAPPABLE), no CKM_AES_CMAC, no CKA_COPYABLE.
        assert_eq!(
            m.token_features(),
            TokenFeatures {
                des_wrap: false,
                aes_wrap: true,
                des_mac: false,
                aes_cmac: false,
                pin_translation_in_token: false,
            }
        );
        use KeyUsage::{Decrypt, Encrypt, Unwrap, Wrap};
        assert_eq!(
            m.usages_for(KeyClass::Tmk, KeyType::Tdes2),
            Usages::of(&[Encrypt])
        );
        assert_eq!(
            m.usages_for(KeyClass::Tmk, KeyType::Aes128),
            Usages::of(&[Wrap, Unwrap])
        );
        assert_eq!(
            m.usages_for(KeyClass::Zmk, KeyType::Aes128),
            Usages::of(&[Unwrap])
        );
        assert_eq!(
            m.usages_for(KeyClass::Zmk, KeyType::Tdes2),
            Usages::of(&[Decrypt])
        );
        assert_eq!(
            m.usages_for(KeyClass::Qr, KeyType::Aes128),
            Usages::of(&[Encrypt])
        );
        let caps = m.capabilities();
        for expected in [
            "does not know CKA_COPYABLE",
            "no CKM_AES_CMAC",
            "no working DES key wrap",
            "DES3-ECB wrap/unwrap of des, tdes2, tdes3: WrapKey returned KeyNotWrappable",
        ] {
            assert!(
                caps.notes.iter().any(|n| n.contains(expected)),
                "{expected:?} missing from {:#?}",
                caps.notes
            );
        }
        assert!(
            !caps
                .notes
                .iter()
                .any(|n| n.contains("no working AES key wrap"))
        );
        policy_holds(m);
    });
}
