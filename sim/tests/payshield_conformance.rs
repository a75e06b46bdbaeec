//! The hsm crate's conformance suite, unchanged, against the `payshield` backend talking to the
//! payShield simulator (test LMK) over loopback TCP; plus the payShield-specific checks.
//!
//! The hsm crate cannot depend on posbridge-sim, so the suite is shared by `#[path]`. The checks
//! the backend cannot pass by design are listed in [`EXPECTED_UNSUPPORTED`] with the reason and
//! the text their failure must carry: each of them is still run, and must fail for that reason.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common {
    use posbridge_hsm::software::KeyFile;
    use posbridge_hsm::{ClearKey, KeyType};
    use std::path::PathBuf;

    pub fn key_file_path() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/hsm/test-keys.toml")
    }

    /// The clear value of a fixture key (for cross-checks with the calculator).
    pub fn clear_key(label: &str) -> (KeyType, ClearKey) {
        let keys = KeyFile::load(&key_file_path())
            .unwrap()
            .into_keys("fixtures")
            .unwrap();
        let (_, kind, key) = keys.into_iter().find(|(l, _, _)| l == label).unwrap();
        (kind, key)
    }
}

#[path = "../../hsm/tests/suite/conformance.rs"]
#[macro_use]
mod suite;

use posbridge_hsm::payshield::PayshieldModule;
use posbridge_hsm::{
    HsmConfig, HsmError, KeyType, MacAlgorithm, Pan, Pin, PinBlockFormat, SecurityModule,
    calculator,
};
use posbridge_sim::payshield::{Settings, Simulator, keys, lmk, spawn_background};
use std::net::SocketAddr;
use std::sync::OnceLock;

/// What each fixture key is to a payShield (key separation: one label, one usage).
/// By label class (the fixture labels name their class, as every posbridge key label does).
const FIXTURE_TYPES: &[(&str, &str)] = &[
    ("zak/", "008"),
    ("zpk/", "001"),
    ("tak/", "003"),
    ("tpk/", "002"),
    ("pvk/", "002"),
    ("zmk/", "000"),
    // The sign-on import check imports under a TMK, which on a payShield is the A6 of a key
    // under a key-encryption key of the ZMK type.
    ("tmk/", "000"),
];

/// The checks the backend cannot pass by design: (check, why, text its failure carries).
const EXPECTED_UNSUPPORTED: &[(&str, &str, &str)] = &[
    (
        "kcv_vector",
        "qr/rfc4493 is an AES key: a variant LMK holds none, so the key store has no qr/rfc4493",
        "qr/rfc4493",
    ),
    (
        "aes_cmac_vector",
        "AES-CMAC needs an AES key (qr/rfc4493), which a variant LMK cannot hold",
        "qr/rfc4493",
    ),
    (
        "data_sealing",
        "data keys are AES (AES-GCM): a variant LMK holds none; they live in [hsm.aes_keys], absent here",
        "dek/gcm",
    ),
    (
        "keys_import_under_a_zmk",
        "it MACs with an imported zone PIN key; payShield key separation refuses a ZPK for MACs",
        "key separation",
    ),
    (
        "pin_format_4_vector",
        "ISO 9564 format 4 needs an AES key",
        "format 4",
    ),
    (
        "translations_round_trip",
        "the round trip goes through format 4 under AES keys",
        "format 4",
    ),
    (
        "cups_sign_on_import",
        "it encrypts a PIN under the imported TPK: no host command does (a PIN pad does)",
        "TPK",
    ),
    (
        "generated_keys_leave_under_the_tmk",
        "it generates AES keys under an AES TMK too",
        "",
    ),
    (
        "pvv_enrol_and_verify",
        "it verifies a format 4 block under an AES key",
        "format 4",
    ),
];

const HEADER: &str = "SSSS";

/// One simulator per test process: it keeps no state between commands.
fn simulator() -> SocketAddr {
    static ADDRESS: OnceLock<SocketAddr> = OnceLock::new();
    *ADDRESS.get_or_init(|| {
        spawn_background(Simulator {
            header_len: HEADER.len(),
            settings: Settings::default(),
        })
        .unwrap()
    })
}

fn config(store: &std::path::Path, pool_size: usize) -> HsmConfig {
    HsmConfig::Payshield {
        address: simulator().to_string(),
        header: HEADER.into(),
        key_store: store.to_path_buf(),
        pool_size,
        connect_timeout_ms: 2000,
        read_timeout_ms: 5000,
        encrypted_pin_length: 13,
        key_types: FIXTURE_TYPES
            .iter()
            .map(|(p, c)| ((*p).to_owned(), (*c).to_owned()))
            .collect(),
        aes_keys: None,
    }
}

/// A payShield module on the simulator with the fixture keys (DES family) as LMK cryptograms.
fn module(dir: &tempfile::TempDir) -> PayshieldModule {
    let store = dir.path().join("payshield-keys.toml");
    let file = posbridge_hsm::software::KeyFile::load(&common::key_file_path()).unwrap();
    let left_out = keys::provision(file, "fixtures", FIXTURE_TYPES, &store).unwrap();
    // The AES keys (a variant LMK holds none) stay out of the key store.
    assert!(
        left_out.iter().all(|l| l.contains("aes")
            || l.starts_with("qr/")
            || l.starts_with("dek/")
            || l == "pek/iso4"),
        "{left_out:?}"
    );
    posbridge_hsm::open_payshield(&config(&store, 2)).unwrap()
}

fn run(name: &str, check: fn(&dyn SecurityModule)) {
    let dir = tempfile::tempdir().unwrap();
    let m = module(&dir);
    match EXPECTED_UNSUPPORTED.iter().find(|(n, _, _)| *n == name) {
        None => check(&m),
        Some((_, why, marker)) => {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&m)));
            let Err(payload) = outcome else {
                panic!("{name} was expected to be unsupported ({why}) but passed: update the list");
            };
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            assert!(
                message.contains(marker),
                "{name} failed, but not for the expected reason ({why}): {message}"
            );
            println!("{name}: unsupported by design: {why}");
        }
    }
}

macro_rules! payshield {
    ($($name:ident),* $(,)?) => {
        mod payshield {
            $(
                #[test]
                fn $name() {
                    super::run(stringify!($name), super::suite::$name);
                }
            )*
        }
    };
}

for_each_test!(payshield);

#[test]
fn every_expected_unsupported_check_exists() {
    macro_rules! names {
        ($($name:ident),* $(,)?) => { [$(stringify!($name)),*] };
    }
    let all = for_each_test!(names);
    for (name, _, _) in EXPECTED_UNSUPPORTED {
        assert!(all.contains(name), "{name} is not a check of the suite");
    }
}

fn unhex(text: &str) -> Vec<u8> {
    hex::decode(text).unwrap()
}

#[test]
fn imports_under_a_zmk_give_the_test_lmk_cryptogram_and_refuse_a_wrong_check_value() {
    let dir = tempfile::tempdir().unwrap();
    let m = module(&dir);
    // UnionPay field 62 worked example: the PIN key under the master key, check value 8D0A74B8.
    let info = m
        .import_key(
            "zmk/cups",
            "tpk/12345678",
            KeyType::Tdes2,
            &unhex("6701EAD6A9AD51E51AA406E2C27FCFA9"),
            &unhex("8D0A74B8"),
        )
        .unwrap();
    assert_eq!(hex::encode_upper(&info.kcv), "8D0A74");
    // What a device with the test LMK stores for 807A23AD32B36D457AE91FDF927570EA as a TPK.
    let clear = posbridge_hsm::ClearKey::from_hex("807A23AD32B36D457AE91FDF927570EA").unwrap();
    let stored = m.store().get("tpk/12345678").unwrap();
    assert_eq!(stored.type_code, "002");
    assert_eq!(stored.cryptogram, lmk::encrypt(&clear, "002").unwrap());
    // The single-length MAC key: 8-byte cryptogram, check value AB7153CA; MACs as tak/single.
    m.import_key(
        "zmk/cups",
        "tak/12345678",
        KeyType::Des,
        &unhex("B651F9E9BACE9AE1"),
        &unhex("AB7153CA"),
    )
    .unwrap();
    let data = b"some message to MAC";
    assert_eq!(
        m.generate_mac("tak/12345678", MacAlgorithm::X919, data)
            .unwrap(),
        m.generate_mac("tak/single", MacAlgorithm::X919, data)
            .unwrap()
    );
    // A wrong check value is refused and the stored key stays.
    let refused = m.import_key(
        "zmk/cups",
        "tpk/12345678",
        KeyType::Tdes2,
        &unhex("B651F9E9BACE9AE1B651F9E9BACE9AE1"),
        &unhex("8D0A74B8"),
    );
    assert!(
        matches!(refused, Err(HsmError::KcvMismatch { .. })),
        "{refused:?}"
    );
    assert_eq!(m.store().get("tpk/12345678").unwrap(), stored);
    // Only a ZMK imports (A6); a TPK as key-encryption key is refused before the HSM sees it.
    let error = m
        .import_key("tpk/12345678", "tak/x", KeyType::Des, &[0; 8], &[0; 3])
        .unwrap_err();
    assert!(matches!(error, HsmError::Unsupported(_)), "{error:?}");
}

#[test]
fn generated_des_keys_reimport_and_travel_as_terminals_expect() {
    let dir = tempfile::tempdir().unwrap();
    let m = module(&dir);
    for kind in [KeyType::Des, KeyType::Tdes2, KeyType::Tdes3] {
        let exported = m.generate_key("tak/new", kind, "tmk/a").unwrap();
        assert_eq!(exported.cryptogram.len(), kind.key_len());
        assert_eq!(exported.kcv.len(), 4);
        // The terminal side: the cryptogram is plain ECB under the clear master key.
        let (_, tmk) = common::clear_key("tmk/a");
        let clear = lmk::tdes(tmk.expose_secret(), &exported.cryptogram, false);
        let clear = posbridge_hsm::ClearKey::from_slice(&clear).unwrap();
        assert_eq!(lmk::check_block(&clear)[..4], exported.kcv[..]);
        let info = m
            .import_key(
                "tmk/a",
                "tak/copy",
                kind,
                &exported.cryptogram,
                &exported.kcv,
            )
            .unwrap();
        assert_eq!(m.kcv("tak/new").unwrap(), info.kcv);
        let algorithm = MacAlgorithm::Iso9797Alg1 {
            padding: posbridge_hsm::Padding::M2,
        };
        assert_eq!(
            m.generate_mac("tak/new", algorithm, b"abc").unwrap(),
            calculator::mac(algorithm, &clear, b"abc").unwrap()
        );
    }
}

#[test]
fn pins_are_verified_and_translated_inside_the_hsm_in_des_formats() {
    let dir = tempfile::tempdir().unwrap();
    let m = module(&dir);
    let pan = Pan::new("1122334455667788").unwrap();
    let pin = Pin::new("4524").unwrap();
    // The psec PVV example, through BA + DG.
    assert_eq!(
        m.pin_verification_value("pvk/vec", &pan, &pin, 3).unwrap(),
        "4021"
    );
    for format in [
        PinBlockFormat::Iso0,
        PinBlockFormat::Iso1,
        PinBlockFormat::Iso3,
    ] {
        let block = m.encrypt_pin(&pin, &pan, format, "zpk/vec").unwrap();
        assert!(
            m.verify_pin(&block, "zpk/vec", format, &pan, "pvk/vec", 3, "4021")
                .unwrap()
        );
        let wrong = m
            .encrypt_pin(&Pin::new("4525").unwrap(), &pan, format, "zpk/vec")
            .unwrap();
        assert!(
            !m.verify_pin(&wrong, "zpk/vec", format, &pan, "pvk/vec", 3, "4021")
                .unwrap()
        );
    }
    // Translations between DES formats, each result checked with the clear key.
    let pan = Pan::new("6212345678901234567").unwrap();
    let pin = Pin::new("98765").unwrap();
    let steps = [
        ("zpk/a", PinBlockFormat::Iso0),
        ("zpk/b", PinBlockFormat::Iso0),
        ("zpk/a", PinBlockFormat::Iso3),
        ("zpk/b", PinBlockFormat::Iso1),
        ("zpk/vec", PinBlockFormat::Iso0),
    ];
    let mut block = m.encrypt_pin(&pin, &pan, steps[0].1, steps[0].0).unwrap();
    for pair in steps.windows(2) {
        let ((from, from_format), (to, to_format)) = (pair[0], pair[1]);
        block = m
            .translate_pin(&block, from, from_format, to, to_format, Some(&pan))
            .unwrap();
        let (_, clear) = common::clear_key(to);
        let decoded = calculator::decipher_pin_block(to_format, &block, &pan, &clear).unwrap();
        assert_eq!(decoded.expose_secret(), "98765");
    }
    // A PIN block cannot be translated to a TPK (CA and CC go to a ZPK).
    let error = m
        .translate_pin(
            &block,
            "zpk/vec",
            PinBlockFormat::Iso0,
            "pvk/vec",
            PinBlockFormat::Iso0,
            Some(&pan),
        )
        .unwrap_err();
    assert!(matches!(error, HsmError::WrongKey { .. }), "{error:?}");
}

#[test]
fn capabilities_report_the_hsm_and_that_pin_blocks_stay_inside() {
    let dir = tempfile::tempdir().unwrap();
    let m = module(&dir);
    let caps = m.capabilities();
    assert_eq!(caps.backend, "payshield");
    assert!(caps.production);
    assert_eq!(caps.pin_translation, posbridge_hsm::PinTranslation::InToken);
    assert_eq!(caps.key_transport, posbridge_hsm::KeyTransport::InToken);
    assert!(caps.description.contains("1000-SIM1"), "{caps:?}");
    assert!(
        caps.description.contains(&lmk::lmk_check_value()),
        "{caps:?}"
    );
    let diagnostics = m.diagnostics().unwrap();
    assert_eq!(diagnostics.firmware, "1000-SIM1");
    assert!(
        caps.notes.iter().any(|n| n.contains("never decrypts")),
        "{caps:?}"
    );
}

#[test]
fn lmk_cryptograms_are_provisioned_only_with_the_right_check_value() {
    let dir = tempfile::tempdir().unwrap();
    let m = module(&dir);
    let clear = posbridge_hsm::ClearKey::from_hex("0123456789ABCDEFFEDCBA9876543210").unwrap();
    let cryptogram = lmk::encrypt(&clear, "001").unwrap();
    let info = m
        .import_lmk_key("zpk/ceremony", "001", &cryptogram, &unhex("08D7B4"))
        .unwrap();
    assert_eq!(hex::encode_upper(&info.kcv), "08D7B4");
    let refused = m.import_lmk_key("zpk/other", "001", &cryptogram, &unhex("08D7B5"));
    assert!(
        matches!(refused, Err(HsmError::KcvMismatch { .. })),
        "{refused:?}"
    );
    // The same cryptogram as another key type is another key (key separation by LMK pair).
    let refused = m.import_lmk_key("tak/other", "003", &cryptogram, &unhex("08D7B4"));
    assert!(
        matches!(refused, Err(HsmError::KcvMismatch { .. })),
        "{refused:?}"
    );
    assert!(matches!(
        m.find_key("zpk/other"),
        Err(HsmError::KeyNotFound { .. })
    ));
}

#[test]
fn a_dead_or_wrong_hsm_gives_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("k.toml");
    // Nothing listens: a link error at open (NC).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = closed.local_addr().unwrap();
    drop(closed);
    let mut dead = config(&store, 1);
    if let HsmConfig::Payshield { address: a, .. } = &mut dead {
        *a = address.to_string();
    }
    let error = posbridge_hsm::open_payshield(&dead).unwrap_err();
    assert!(matches!(error, HsmError::Link(_)), "{error:?}");
    // A peer that answers garbage, a wrong header or a huge length: typed errors, no panic.
    for reply in [
        b"\x00\x04SSSS".to_vec(),
        b"\x00\x08XXXXND00".to_vec(),
        b"\x00\x08SSSSNE00".to_vec(),
        b"\xff\xffSSSS".to_vec(),
    ] {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            use std::io::{Read, Write};
            let (mut stream, _) = listener.accept().unwrap();
            let mut buffer = [0u8; 64];
            let _ = stream.read(&mut buffer);
            let _ = stream.write_all(&reply);
        });
        let mut wrong = config(&store, 1);
        if let HsmConfig::Payshield {
            address: a,
            read_timeout_ms,
            ..
        } = &mut wrong
        {
            *a = address.to_string();
            *read_timeout_ms = 500;
        }
        let error = posbridge_hsm::open_payshield(&wrong).unwrap_err();
        assert!(
            matches!(error, HsmError::Device { .. } | HsmError::Link(_)),
            "{error:?}"
        );
        server.join().unwrap();
    }
}

#[test]
fn health_is_a_round_trip_to_the_hsm() {
    // A "HSM" that answers the NC of open() and then goes away.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut stream, _) = listener.accept().unwrap();
        let mut prefix = [0u8; 2];
        stream.read_exact(&mut prefix).unwrap();
        let mut body = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
        stream.read_exact(&mut body).unwrap();
        let simulator = Simulator {
            header_len: HEADER.len(),
            settings: Settings::default(),
        };
        stream.write_all(&simulator.reply(&body).unwrap()).unwrap();
    });
    let dir = tempfile::tempdir().unwrap();
    let mut settings = config(&dir.path().join("k.toml"), 1);
    if let HsmConfig::Payshield { address: a, .. } = &mut settings {
        *a = address.to_string();
    }
    let m = posbridge_hsm::open_payshield(&settings).unwrap();
    server.join().unwrap();
    // capabilities() reports what NC said at open, without a round trip.
    assert!(m.capabilities().description.contains("1000-SIM1"));
    let error = m.health().unwrap_err();
    assert!(matches!(error, HsmError::Link(_)), "{error:?}");
    // Against the simulator, health is NC answering.
    let dir = tempfile::tempdir().unwrap();
    module(&dir).health().unwrap();
}

#[test]
fn posbridge_sim_payshield_serves_with_the_header_length_given() {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_posbridge"))
        .args([
            "sim",
            "payshield",
            "--listen",
            "127.0.0.1:0",
            "--header-len",
            "6",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let address = line
        .split_whitespace()
        .find(|word| word.starts_with("127.0.0.1:"))
        .map(|word| word.trim_end_matches(','))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_owned();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = config(&dir.path().join("k.toml"), 1);
    if let HsmConfig::Payshield {
        address: a, header, ..
    } = &mut settings
    {
        *a = address;
        *header = "ABCDEF".into();
    }
    let outcome = posbridge_hsm::open_payshield(&settings).map(|m| m.diagnostics());
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(outcome.unwrap().unwrap().firmware, "1000-SIM1");
}
