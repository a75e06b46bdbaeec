//! The conformance checks every backend must pass: every published vector of REFERENCE.md plus
//! the behaviour the gateway relies on (key import refusing a wrong check value, generated keys
//! that re-import, PIN translations between formats, PVV verification, errors).
//!
//! Shared by `#[path]` between the hsm crate's `tests/conformance.rs` (software and PKCS#11) and
//! posbridge-sim's `tests/payshield_conformance.rs` (the payShield backend through the
//! simulator, which the hsm crate cannot depend on). Each including crate has a `common` module
//! with `clear_key(label)`. [`for_each_test!`] hands the one list of checks to a runner macro.
#![allow(dead_code)]

use crate::common;
use posbridge_hsm::calculator;
use posbridge_hsm::keys::Family;
use posbridge_hsm::{
    HsmError, KeyType, MacAlgorithm, Padding, Pan, Pin, PinBlock, PinBlockFormat, SecurityModule,
};

pub fn unhex(text: &str) -> Vec<u8> {
    hex::decode(text).unwrap()
}

pub fn upper(bytes: &[u8]) -> String {
    hex::encode_upper(bytes)
}

pub fn kcv_vector(m: &dyn SecurityModule) {
    assert_eq!(upper(&m.kcv("zak/x919").unwrap()), "08D7B4");
    let info = m.find_key("tak/single").unwrap();
    assert_eq!(info.key_type, KeyType::Des);
    assert_eq!(upper(&info.kcv), "AB7153");
    // AES check value: CMAC of 16 zero bytes, 5 bytes; must agree with the calculator.
    let (_, clear) = common::clear_key("qr/rfc4493");
    assert_eq!(
        m.kcv("qr/rfc4493").unwrap(),
        calculator::kcv(Family::Aes, &clear).unwrap()
    );
}

pub fn x919_vector(m: &dyn SecurityModule) {
    let data = b"Now is the time for all ";
    let mac = m
        .generate_mac("zak/x919", MacAlgorithm::X919, data)
        .unwrap();
    assert_eq!(upper(&mac), "A1C72E74EA3FA9B6");
    m.verify_mac("zak/x919", MacAlgorithm::X919, data, &mac)
        .unwrap();
    m.verify_mac("zak/x919", MacAlgorithm::X919, data, &mac[..4])
        .unwrap();
    let mut wrong = mac.clone();
    wrong[7] ^= 1;
    assert!(matches!(
        m.verify_mac("zak/x919", MacAlgorithm::X919, data, &wrong),
        Err(HsmError::MacMismatch)
    ));
    // Single-block and empty messages take the no-chaining path.
    let (_, clear) = common::clear_key("zak/x919");
    for data in [&b""[..], b"12345678", b"1234567890"] {
        assert_eq!(
            m.generate_mac("zak/x919", MacAlgorithm::X919, data)
                .unwrap(),
            calculator::mac(MacAlgorithm::X919, &clear, data).unwrap()
        );
    }
}

pub fn cups_ecb_vector(m: &dyn SecurityModule) {
    // The worked example publishes the XOR of the message blocks; a one-block message is its
    // own XOR.
    let data = unhex("1212B04E1227809C");
    let mac = m
        .generate_mac("tak/cups", MacAlgorithm::CupsEcb, &data)
        .unwrap();
    assert_eq!(mac, b"5FE058DB");
    assert_eq!(upper(&mac), "3546453035384442");
    // Splitting the same XOR over three blocks gives the same MAC.
    let mut split = unhex("0000000000000000FFFFFFFFFFFFFFFF");
    split.extend(unhex("EDED4FB1EDD87F63"));
    assert_eq!(
        m.generate_mac("tak/cups", MacAlgorithm::CupsEcb, &split)
            .unwrap(),
        b"5FE058DB"
    );
    m.verify_mac("tak/cups", MacAlgorithm::CupsEcb, &data, b"5FE058DB")
        .unwrap();
}

pub fn aes_cmac_vector(m: &dyn SecurityModule) {
    let mac = m
        .generate_mac(
            "qr/rfc4493",
            MacAlgorithm::AesCmac,
            &unhex("6bc1bee22e409f96e93d7e117393172a"),
        )
        .unwrap();
    assert_eq!(upper(&mac), "070A16B46B4D4144F79BDD9DD04A287C");
}

/// Data sealed under a data key (`dek/`): the GCM specification's test case 16 opens, seals
/// round-trip with fresh nonces, and a value tampered with, truncated, moved to another context
/// or given to another key class does not open.
pub fn data_sealing(m: &dyn SecurityModule) {
    let plaintext = "D9313225F88406E5A55909C5AFF5269A86A7A9531534F7DA2E4C303D8A318A721C3C0C95956809532FCF0E2449A6B525B16AEDF5AA0DE657BA637B39";
    let aad = unhex("FEEDFACEDEADBEEFFEEDFACEDEADBEEFABADDAD2");
    let sealed = unhex(concat!(
        "01",
        "CAFEBABEFACEDBADDECAF888",
        "522DC1F099567D07F47F37A32A84427D643A8CDCBFE5C0C97598A2BD2555D1AA8CB08E48590DBB3DA7B08B1056828838C5F61E6393BA7A0ABCC9F662",
        "76FC6ECE0F4E1768CDDF8853BB2D551B"
    ));
    assert_eq!(
        upper(&m.decrypt_data("dek/gcm", &aad, &sealed).unwrap()),
        plaintext
    );
    let pan = b"6212345678901234567";
    let first = m.encrypt_data("dek/gcm", b"forward:1", pan).unwrap();
    let second = m.encrypt_data("dek/gcm", b"forward:1", pan).unwrap();
    assert_eq!(first.len(), 1 + 12 + pan.len() + 16);
    assert_ne!(first, second, "every seal has a nonce of its own");
    for sealed in [&first, &second] {
        assert_eq!(
            &m.decrypt_data("dek/gcm", b"forward:1", sealed).unwrap()[..],
            pan
        );
    }
    let broken = |result: posbridge_hsm::Result<zeroize::Zeroizing<Vec<u8>>>| match result {
        Err(HsmError::SealBroken { label }) => assert_eq!(label, "dek/gcm"),
        other => panic!("expected SealBroken, got {:?}", other.map(|_| "opened")),
    };
    broken(m.decrypt_data("dek/gcm", b"forward:2", &first));
    let mut flipped = first.clone();
    flipped[20] ^= 0x01;
    broken(m.decrypt_data("dek/gcm", b"forward:1", &flipped));
    broken(m.decrypt_data("dek/gcm", b"forward:1", &first[..first.len() - 1]));
    broken(m.decrypt_data("dek/gcm", b"forward:1", &first[..20]));
    // Only data keys seal, and a data key does nothing else.
    assert!(matches!(
        m.encrypt_data("qr/rfc4493", b"x", pan),
        Err(HsmError::WrongKey { .. })
    ));
    assert!(matches!(
        m.generate_mac("dek/gcm", MacAlgorithm::AesCmac, pan),
        Err(HsmError::WrongKey { .. })
    ));
}

pub fn cbc_mac_matches_calculator(m: &dyn SecurityModule) {
    let (_, clear) = common::clear_key("tak/tdes3");
    let data = b"0200 message body of some length";
    for padding in [Padding::M1, Padding::M2] {
        let algorithm = MacAlgorithm::Iso9797Alg1 { padding };
        assert_eq!(
            m.generate_mac("tak/tdes3", algorithm, data).unwrap(),
            calculator::mac(algorithm, &clear, data).unwrap()
        );
    }
    // ISO 9797-1 algorithm 1 with padding 2 (psec's documented example).
    let algorithm = MacAlgorithm::Iso9797Alg1 {
        padding: Padding::M2,
    };
    assert_eq!(
        upper(
            &m.generate_mac("zak/x919", algorithm, &unhex("1234567890ABCDEF"))
                .unwrap()
        ),
        "925B1737EF681AD3"
    );
    // A single-length DES key as K|K: CBC-MAC equals single DES.
    let (_, single) = common::clear_key("tak/single");
    let algorithm = MacAlgorithm::Iso9797Alg1 {
        padding: Padding::M1,
    };
    assert_eq!(
        m.generate_mac("tak/single", algorithm, data).unwrap(),
        calculator::mac(algorithm, &single, data).unwrap()
    );
}

pub fn pin_format_0_vector(m: &dyn SecurityModule) {
    let pin = Pin::new("1234").unwrap();
    let pan = Pan::new("4321987654321098").unwrap();
    let block = m
        .encrypt_pin(&pin, &pan, PinBlockFormat::Iso0, "zpk/vec")
        .unwrap();
    assert_eq!(upper(block.expose_secret()), "A1CED0BFE25FDA02");
}

pub fn pin_format_4_vector(m: &dyn SecurityModule) {
    // The published block deciphers to PIN 1234: translating it to format 0 under a DES key gives
    // exactly the deterministic format 0 block of that PIN.
    let pan = Pan::new("4111111111111111").unwrap();
    let block = PinBlock::from_hex("A912150391AB65A67E52883D81CE2D15").unwrap();
    let translated = m
        .translate_pin(
            &block,
            "pek/iso4",
            PinBlockFormat::Iso4,
            "zpk/vec",
            PinBlockFormat::Iso0,
            Some(&pan),
        )
        .unwrap();
    let (_, zpk) = common::clear_key("zpk/vec");
    let pin =
        calculator::decipher_pin_block(PinBlockFormat::Iso0, &translated, &pan, &zpk).unwrap();
    assert_eq!(pin.expose_secret(), "1234");
    // The wrong PAN makes the block undecodable (format 4 binds the PAN).
    let other = Pan::new("4111111111111129").unwrap();
    assert!(
        m.translate_pin(
            &block,
            "pek/iso4",
            PinBlockFormat::Iso4,
            "zpk/vec",
            PinBlockFormat::Iso0,
            Some(&other)
        )
        .is_err()
    );
}

pub fn translations_round_trip(m: &dyn SecurityModule) {
    let pan = Pan::new("6212345678901234567").unwrap();
    let pin = Pin::new("98765").unwrap();
    let steps = [
        ("zpk/a", PinBlockFormat::Iso0),
        ("zpk/b", PinBlockFormat::Iso0),
        ("zpk/a", PinBlockFormat::Iso3),
        ("pek/aes-b", PinBlockFormat::Iso4),
        ("pek/iso4", PinBlockFormat::Iso4),
        ("zpk/b", PinBlockFormat::Iso1),
        ("zpk/vec", PinBlockFormat::Iso0),
    ];
    let (first_key, first_format) = steps[0];
    let mut block = m.encrypt_pin(&pin, &pan, first_format, first_key).unwrap();
    let mut previous = steps[0];
    for step in &steps[1..] {
        block = m
            .translate_pin(&block, previous.0, previous.1, step.0, step.1, Some(&pan))
            .unwrap();
        assert_eq!(block.len(), step.1.block_len());
        let (kind, clear) = common::clear_key(step.0);
        assert_eq!(kind.family(), step.1.family());
        let decoded = calculator::decipher_pin_block(step.1, &block, &pan, &clear).unwrap();
        assert_eq!(decoded.expose_secret(), "98765", "after {step:?}");
        previous = *step;
    }
}

pub fn cups_sign_on_import(m: &dyn SecurityModule) {
    // Field 62 of the worked example: PIN key under the master key with check value 8D0A74B8.
    let info = m
        .import_key(
            "zmk/cups",
            "tpk/12345678",
            KeyType::Tdes2,
            &unhex("6701EAD6A9AD51E51AA406E2C27FCFA9"),
            &unhex("8D0A74B8"),
        )
        .unwrap();
    assert_eq!(info.key_type, KeyType::Tdes2);
    assert_eq!(upper(&info.kcv), "8D0A74");
    // The imported key is 807A23AD32B36D457AE91FDF927570EA: its format 0 blocks match.
    let pin = Pin::new("1234").unwrap();
    let pan = Pan::new("4321987654321098").unwrap();
    let clear = posbridge_hsm::ClearKey::from_hex("807A23AD32B36D457AE91FDF927570EA").unwrap();
    assert_eq!(
        m.encrypt_pin(&pin, &pan, PinBlockFormat::Iso0, "tpk/12345678")
            .unwrap(),
        calculator::encrypted_pin_block(PinBlockFormat::Iso0, &pin, &pan, &clear).unwrap()
    );
    // The single-length MAC key: 8-byte cryptogram, check value AB7153CA.
    let info = m
        .import_key(
            "zmk/cups",
            "tak/12345678",
            KeyType::Des,
            &unhex("B651F9E9BACE9AE1"),
            &unhex("AB7153CA"),
        )
        .unwrap();
    assert_eq!(upper(&info.kcv), "AB7153");
    assert_eq!(info.key_type, KeyType::Des);
    let data = b"some message to MAC";
    assert_eq!(
        m.generate_mac("tak/12345678", MacAlgorithm::X919, data)
            .unwrap(),
        m.generate_mac("tak/single", MacAlgorithm::X919, data)
            .unwrap()
    );
    // A wrong check value is refused and the key already stored under the label stays.
    let refused = m.import_key(
        "zmk/cups",
        "tpk/12345678",
        KeyType::Tdes2,
        &unhex("B651F9E9BACE9AE1B651F9E9BACE9AE1"),
        &unhex("8D0A74B8"),
    );
    match refused {
        Err(HsmError::KcvMismatch { expected, .. }) => assert_eq!(expected, "8D0A74B8"),
        other => panic!("expected KcvMismatch, got {other:?}"),
    }
    assert_eq!(upper(&m.kcv("tpk/12345678").unwrap()), "8D0A74");
    // A refused import of a new label creates nothing.
    assert!(
        m.import_key(
            "zmk/cups",
            "tpk/never",
            KeyType::Tdes2,
            &unhex("6701EAD6A9AD51E51AA406E2C27FCFA9"),
            &unhex("000000"),
        )
        .is_err()
    );
    assert!(matches!(
        m.find_key("tpk/never"),
        Err(HsmError::KeyNotFound { .. })
    ));
}

/// Decrypts an ECB cryptogram with a fixture KEK in host memory (RustCrypto), to check what the
/// module exported without trusting the module.
pub fn host_ecb(kek_label: &str, data: &[u8], decrypt: bool) -> posbridge_hsm::ClearKey {
    use cipher::{BlockDecrypt, BlockEncrypt, KeyInit, generic_array::GenericArray};
    let (kind, kek) = common::clear_key(kek_label);
    let mut out = data.to_vec();
    match kind {
        KeyType::Tdes2 => {
            let cipher = des::TdesEde2::new_from_slice(kek.expose_secret()).unwrap();
            for block in out.chunks_mut(8) {
                let block = GenericArray::from_mut_slice(block);
                if decrypt {
                    cipher.decrypt_block(block);
                } else {
                    cipher.encrypt_block(block);
                }
            }
        }
        KeyType::Aes128 => {
            let cipher = aes::Aes128::new_from_slice(kek.expose_secret()).unwrap();
            for block in out.chunks_mut(16) {
                let block = GenericArray::from_mut_slice(block);
                if decrypt {
                    cipher.decrypt_block(block);
                } else {
                    cipher.encrypt_block(block);
                }
            }
        }
        other => panic!("no host cipher for a {other} KEK"),
    }
    posbridge_hsm::ClearKey::new(out).unwrap()
}

pub fn mac_for(kind: KeyType) -> MacAlgorithm {
    if kind.family() == Family::Aes {
        MacAlgorithm::AesCmac
    } else {
        MacAlgorithm::Iso9797Alg1 {
            padding: Padding::M2,
        }
    }
}

pub fn generated_keys_leave_under_the_tmk(m: &dyn SecurityModule) {
    for (kind, kek, label) in [
        (KeyType::Des, "tmk/a", "tak/gen-des"),
        (KeyType::Tdes2, "tmk/a", "tak/gen-tdes2"),
        (KeyType::Tdes3, "tmk/a", "zpk/gen-tdes3"),
        (KeyType::Aes128, "tmk/aes", "qr/gen-aes128"),
        (KeyType::Aes256, "tmk/aes", "pek/gen-aes256"),
    ] {
        let exported = m.generate_key(label, kind, kek).unwrap();
        assert_eq!(exported.cryptogram.len(), kind.key_len());
        // The cryptogram is the key under the KEK (ECB): decrypt it on the host, and the key, its
        // check values and its MACs agree with the module's.
        let clear = host_ecb(kek, &exported.cryptogram, true);
        let check = calculator::check_block(kind.family(), &clear).unwrap();
        assert_eq!(exported.kcv, check[..exported.kcv.len()], "{label}");
        assert_eq!(
            exported.kcv.len(),
            if kind.family() == Family::Aes { 5 } else { 4 }
        );
        let info = m.find_key(label).unwrap();
        assert_eq!(info.key_type, kind);
        assert_eq!(info.kcv, calculator::kcv(kind.family(), &clear).unwrap());
        let algorithm = mac_for(kind);
        assert_eq!(
            m.generate_mac(label, algorithm, b"abc").unwrap(),
            calculator::mac(algorithm, &clear, b"abc").unwrap(),
            "{label}"
        );
        if kind.family() == Family::Des {
            assert_eq!(
                calculator::kcv(Family::Des, &clear).unwrap(),
                m.kcv(label).unwrap()
            );
        }
    }
    // X9.19 with a generated double-length MAC key (its K1 companion is made with it).
    let exported = m.generate_key("zak/gen", KeyType::Tdes2, "tmk/a").unwrap();
    let clear = host_ecb("tmk/a", &exported.cryptogram, true);
    assert_eq!(
        m.generate_mac("zak/gen", MacAlgorithm::X919, b"Now is the time for all ")
            .unwrap(),
        calculator::mac(MacAlgorithm::X919, &clear, b"Now is the time for all ").unwrap()
    );
    // Two generated keys differ.
    let a = m.generate_key("tpk/a", KeyType::Tdes2, "tmk/a").unwrap();
    let b = m.generate_key("tpk/b", KeyType::Tdes2, "tmk/a").unwrap();
    assert_ne!(a.cryptogram, b.cryptogram);
    // An 8-byte DES key cannot travel under a 16-byte-block AES KEK.
    assert!(m.generate_key("tak/c", KeyType::Des, "tmk/aes").is_err());
}

pub fn keys_import_under_a_zmk(m: &dyn SecurityModule) {
    let cases = [
        (
            KeyType::Des,
            "zmk/cups",
            "tak/imported-des",
            "5BB5C72CD00B7338",
        ),
        (
            KeyType::Tdes2,
            "zmk/cups",
            "zak/imported",
            "C78061862CB0B910F4F475130D98A2A2",
        ),
        (
            KeyType::Tdes3,
            "zmk/cups",
            "zpk/imported",
            "5E8A1C3F7D2B9E4661A3C5E7092B4D6F8A1C3E5F7092B4D6",
        ),
        (
            KeyType::Aes128,
            "zmk/aes",
            "qr/imported",
            "2B7E151628AED2A6ABF7158809CF4F3C",
        ),
        (
            KeyType::Aes256,
            "zmk/aes",
            "pek/imported",
            "603DEB1015CA71BE2B73AEF0857D77811F352C073B6108D72D9810A30914DFF4",
        ),
    ];
    for (kind, zmk, label, value) in cases {
        let clear = posbridge_hsm::ClearKey::from_hex(value).unwrap();
        let cryptogram = host_ecb(zmk, clear.expose_secret(), false);
        let check = calculator::check_block(kind.family(), &clear).unwrap();
        let info = m
            .import_key(zmk, label, kind, cryptogram.expose_secret(), &check[..4])
            .unwrap();
        assert_eq!(info.kcv, calculator::kcv(kind.family(), &clear).unwrap());
        let algorithm = mac_for(kind);
        assert_eq!(
            m.generate_mac(label, algorithm, b"0800 key change")
                .unwrap(),
            calculator::mac(algorithm, &clear, b"0800 key change").unwrap(),
            "{label}"
        );
        // A wrong check value is refused and leaves the imported key as it was.
        let mut wrong = check[..4].to_vec();
        wrong[3] ^= 1;
        assert!(matches!(
            m.import_key(zmk, label, kind, cryptogram.expose_secret(), &wrong),
            Err(HsmError::KcvMismatch { .. })
        ));
        assert_eq!(m.kcv(label).unwrap(), info.kcv);
    }
    // The imported double-length MAC key computes X9.19 (the K1 companion came with it).
    let clear = posbridge_hsm::ClearKey::from_hex("C78061862CB0B910F4F475130D98A2A2").unwrap();
    assert_eq!(
        m.generate_mac("zak/imported", MacAlgorithm::X919, b"0810")
            .unwrap(),
        calculator::mac(MacAlgorithm::X919, &clear, b"0810").unwrap()
    );
}

pub fn pvv_enrol_and_verify(m: &dyn SecurityModule) {
    let pan = Pan::new("1122334455667788").unwrap();
    let pin = Pin::new("4524").unwrap();
    assert_eq!(
        m.pin_verification_value("pvk/vec", &pan, &pin, 3).unwrap(),
        "4021"
    );
    let block = m
        .encrypt_pin(&pin, &pan, PinBlockFormat::Iso4, "pek/aes-b")
        .unwrap();
    assert!(
        m.verify_pin(
            &block,
            "pek/aes-b",
            PinBlockFormat::Iso4,
            &pan,
            "pvk/vec",
            3,
            "4021"
        )
        .unwrap()
    );
    let wrong = m
        .encrypt_pin(
            &Pin::new("4525").unwrap(),
            &pan,
            PinBlockFormat::Iso4,
            "pek/aes-b",
        )
        .unwrap();
    assert!(
        !m.verify_pin(
            &wrong,
            "pek/aes-b",
            PinBlockFormat::Iso4,
            &pan,
            "pvk/vec",
            3,
            "4021"
        )
        .unwrap()
    );
    assert!(
        m.verify_pin(
            &block,
            "pek/aes-b",
            PinBlockFormat::Iso4,
            &pan,
            "pvk/vec",
            3,
            "40x1"
        )
        .is_err()
    );
}

pub fn errors_name_the_fault(m: &dyn SecurityModule) {
    assert!(matches!(
        m.kcv("no/such"),
        Err(HsmError::KeyNotFound { .. })
    ));
    assert!(matches!(
        m.generate_mac("zak/x919", MacAlgorithm::AesCmac, b"x"),
        Err(HsmError::WrongKey { .. })
    ));
    assert!(matches!(
        m.generate_mac("tak/tdes3", MacAlgorithm::X919, b"x"),
        Err(HsmError::WrongKey { .. })
    ));
    let pan = Pan::new("4321987654321098").unwrap();
    let pin = Pin::new("1234").unwrap();
    assert!(
        m.encrypt_pin(&pin, &pan, PinBlockFormat::Iso4, "zpk/vec")
            .is_err()
    );
    // A block under the wrong key does not decode as format 0 (its control nibble is random);
    // try a few so an accidental decode cannot make the test flaky.
    let block = m
        .encrypt_pin(&pin, &pan, PinBlockFormat::Iso0, "zpk/a")
        .unwrap();
    let bad = m.translate_pin(
        &block,
        "zpk/vec",
        PinBlockFormat::Iso0,
        "zpk/b",
        PinBlockFormat::Iso3,
        Some(&pan),
    );
    assert!(matches!(bad, Err(HsmError::BadPinBlock { .. })), "{bad:?}");
    assert!(
        m.import_key("zmk/cups", "bad label!", KeyType::Tdes2, &[0; 16], &[0; 3])
            .is_err()
    );
    assert!(
        m.import_key("zmk/cups", "tpk/y", KeyType::Tdes2, &[0; 15], &[0; 3])
            .is_err()
    );
    // Every key has a class, named by its label: a label without one is refused before anything
    // is decrypted or generated.
    let no_class = m.import_key(
        "zmk/cups",
        "x/y",
        KeyType::Tdes2,
        &unhex("6701EAD6A9AD51E51AA406E2C27FCFA9"),
        &unhex("8D0A74B8"),
    );
    assert!(
        matches!(&no_class, Err(HsmError::InvalidInput(m)) if m.contains("names no key class")),
        "{no_class:?}"
    );
    assert!(matches!(
        m.generate_key("x/y", KeyType::Tdes2, "tmk/a"),
        Err(HsmError::InvalidInput(_))
    ));
}

pub fn key_listing_and_deletion(m: &dyn SecurityModule) {
    let keys = m.list_keys().unwrap();
    let labels: Vec<&str> = keys.iter().map(|k| k.label.as_str()).collect();
    assert!(labels.contains(&"zak/x919"), "{labels:?}");
    assert!(labels.contains(&"tak/single"));
    // Every listed key says its class and what it may be used for.
    for key in &keys {
        assert!(key.class.is_some(), "{key:?}");
        assert!(!key.usages.is_empty(), "{key:?}");
    }
    assert!(labels.iter().all(|l| !l.contains('#')), "{labels:?}");
    let mut sorted = labels.clone();
    sorted.sort();
    assert_eq!(labels, sorted);
    m.generate_key("tak/deleted", KeyType::Tdes2, "tmk/a")
        .unwrap();
    m.delete_key("tak/deleted").unwrap();
    assert!(matches!(
        m.find_key("tak/deleted"),
        Err(HsmError::KeyNotFound { .. })
    ));
    assert!(matches!(
        m.delete_key("tak/deleted"),
        Err(HsmError::KeyNotFound { .. })
    ));
}

pub fn capabilities_are_honest(m: &dyn SecurityModule) {
    let caps = m.capabilities();
    if caps.pin_translation == posbridge_hsm::PinTranslation::HostMemory {
        assert!(
            caps.notes
                .iter()
                .any(|n| n == "PIN translation in host memory: not PCI PIN compliant"),
            "{caps:?}"
        );
        assert!(!caps.production);
    }
}

pub fn concurrent_callers(m: &dyn SecurityModule) {
    // More threads than the PKCS#11 pool has sessions (2 in the tests): callers wait for a
    // session and every result is still right.
    let pan = Pan::new("4321987654321098").unwrap();
    let pin = Pin::new("1234").unwrap();
    let expected = m
        .encrypt_pin(&pin, &pan, PinBlockFormat::Iso0, "zpk/vec")
        .unwrap();
    let source = m
        .encrypt_pin(&pin, &pan, PinBlockFormat::Iso0, "zpk/a")
        .unwrap();
    std::thread::scope(|scope| {
        for _ in 0..6 {
            scope.spawn(|| {
                for _ in 0..25 {
                    let out = m
                        .translate_pin(
                            &source,
                            "zpk/a",
                            PinBlockFormat::Iso0,
                            "zpk/vec",
                            PinBlockFormat::Iso0,
                            Some(&pan),
                        )
                        .unwrap();
                    assert_eq!(out, expected);
                    let mac = m
                        .generate_mac("zak/x919", MacAlgorithm::X919, b"Now is the time for all ")
                        .unwrap();
                    assert_eq!(upper(&mac), "A1C72E74EA3FA9B6");
                }
            });
        }
    });
}

/// Calls `$runner!(name, ...)` with every check of the suite.
macro_rules! for_each_test {
    ($runner:ident) => {
        $runner! {
            kcv_vector,
            x919_vector,
            cups_ecb_vector,
            aes_cmac_vector,
            data_sealing,
            cbc_mac_matches_calculator,
            pin_format_0_vector,
            pin_format_4_vector,
            translations_round_trip,
            cups_sign_on_import,
            generated_keys_leave_under_the_tmk,
            keys_import_under_a_zmk,
            pvv_enrol_and_verify,
            errors_name_the_fault,
            key_listing_and_deletion,
            capabilities_are_honest,
            concurrent_callers,
        }
    };
}
