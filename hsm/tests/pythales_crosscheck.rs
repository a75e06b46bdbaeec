//! posbridge's payShield client against an independent implementation: pythales 0.74 (PyPI),
//! run as a subprocess on a loopback port with a 4-character header and its own LMK, driven
//! through the `payshield` backend for the commands pythales implements (NC, BU, A0, CA, DC).
//!
//! pythales is partial and deviates from the device in places. Where it does, the check names
//! the deviation and asserts exactly what pythales does, instead of bending posbridge to it:
//! - one LMK for every key type, no variants (a `U` key is the whole key ECB under the LMK);
//! - BU returns the check value of the LMK *cryptogram*, not of the key;
//! - A0 ignores the requested key type and schemes and exports under the ZMK in scheme U;
//! - CA encrypts the destination PIN block under the ZPK's LMK cryptogram, not the ZPK;
//! - DC wants a PVK pair of 32 H without the `U` tag (and would use its hex text as the key);
//! - its key parity check wants even parity, where DES keys have odd parity;
//! - commands it lacks (A6, CC, M6, ...) end its server: the client must report a link error.
//!
//! Each check starts its own pythales (it serves one client and dies on what it does not know).
//! Skipped, with a message, when POSBRIDGE_TEST_PYTHON is unset (./scripts/test sets it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use des::TdesEde2;
use des::cipher::{BlockDecrypt, BlockEncrypt, KeyInit, generic_array::GenericArray};
use posbridge_hsm::payshield::PayshieldModule;
use posbridge_hsm::{
    ClearKey, HsmConfig, HsmError, KeyType, Pan, Pin, PinBlock, PinBlockFormat, SecurityModule,
    calculator,
};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const HEADER: &str = "SSSS";
/// pythales's LMK (one double-length key for everything).
const LMK: &str = "0F1E2D3C4B5A69788796A5B4C3D2E1F0";
// pythales's parity check passes only even parity (pynblock's parityOf is -1 for an odd count
// of set bits), where DES keys have odd parity: these keys are 0123456789ABCDEFFEDCBA9876543210
// and 89ABCDEF0123456776543210FEDCBA98 with the parity bits flipped, which DES ignores.
const TPK: &str = "0022446688AACCEEFFDDBB9977553311";
const ZPK: &str = "88AACCEE0022446677553311FFDDBB99";
const ZPK_ODD_PARITY: &str = "89ABCDEF0123456776543210FEDCBA98";
const ZMK: &str = "1C587F1C13924FEF0101010101010101";

/// Starts pythales's HSM on loopback (its own `run()` binds every interface; the launcher binds
/// 127.0.0.1 instead).
const LAUNCHER: &str = r#"
import socket, sys
from pythales.hsm import HSM

class Loopback(HSM):
    def init_connection(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(5)

Loopback(port=int(sys.argv[1]), header=sys.argv[2], key=sys.argv[3]).run()
"#;

fn python() -> Option<PathBuf> {
    match std::env::var_os("POSBRIDGE_TEST_PYTHON") {
        Some(path) => Some(PathBuf::from(path)),
        None => {
            eprintln!(
                "skipped: POSBRIDGE_TEST_PYTHON is unset (./scripts/test sets it to a venv with pythales)"
            );
            None
        }
    }
}

struct Pythales {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Pythales {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(python: &PathBuf) -> Pythales {
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new(python)
        .args(["-c", LAUNCHER, &port.to_string(), HEADER, LMK])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "pythales did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // That probe connection was pythales's client; it serves the next one once it is closed.
    std::thread::sleep(Duration::from_millis(100));
    Pythales {
        child,
        port,
        _dir: dir,
    }
}

fn lmk() -> TdesEde2 {
    TdesEde2::new(GenericArray::from_slice(&hex::decode(LMK).unwrap()))
}

fn tdes(key: &[u8], data: &[u8], encrypt: bool) -> Vec<u8> {
    let cipher = TdesEde2::new(GenericArray::from_slice(key));
    let mut out = data.to_vec();
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

/// A key "under the LMK" as pythales holds it: the whole key ECB under its single LMK.
fn under_lmk(clear: &str) -> String {
    let mut bytes = hex::decode(clear).unwrap();
    for block in bytes.chunks_mut(8) {
        lmk().encrypt_block(GenericArray::from_mut_slice(block));
    }
    format!("U{}", hex::encode_upper(bytes))
}

fn module(server: &Pythales, dir: &tempfile::TempDir) -> PayshieldModule {
    let store = dir.path().join("keys.toml");
    let entries = [
        ("tpk/t1", "002", TPK),
        ("zpk/z1", "001", ZPK),
        ("zmk/m1", "000", ZMK),
        ("pvk/p1", "002", TPK),
        // Odd parity in every byte, as DES keys have: pythales's parity check refuses it.
        ("zpk/odd", "001", ZPK_ODD_PARITY),
    ];
    let mut text = String::new();
    for (label, code, clear) in entries {
        let key = ClearKey::from_hex(clear).unwrap();
        let kcv =
            hex::encode_upper(calculator::kcv(posbridge_hsm::keys::Family::Des, &key).unwrap());
        text.push_str(&format!(
            "[[keys]]\nlabel = \"{label}\"\ntype = \"{code}\"\ncryptogram = \"{}\"\nkcv = \"{kcv}\"\n\n",
            under_lmk(clear)
        ));
    }
    std::fs::write(&store, text).unwrap();
    posbridge_hsm::open_payshield(&HsmConfig::Payshield {
        address: format!("127.0.0.1:{}", server.port),
        header: HEADER.into(),
        key_store: store,
        // pythales serves one connection at a time.
        pool_size: 1,
        connect_timeout_ms: 2000,
        read_timeout_ms: 5000,
        encrypted_pin_length: 13,
        key_types: Default::default(),
        aes_keys: None,
    })
    .unwrap()
}

#[test]
fn nc_framing_header_and_diagnostics_agree() {
    let Some(python) = python() else { return };
    let server = start(&python);
    let dir = tempfile::tempdir().unwrap();
    let m = module(&server, &dir);
    let diagnostics = m.diagnostics().unwrap();
    assert_eq!(diagnostics.firmware, "0007-E000");
    let mut zero = GenericArray::clone_from_slice(&[0u8; 8]);
    lmk().encrypt_block(&mut zero);
    assert_eq!(diagnostics.lmk_check, hex::encode_upper(zero));
    assert!(m.capabilities().description.contains("0007-E000"));
}

#[test]
fn bu_check_value_deviation_pythales_checks_the_cryptogram_not_the_key() {
    let Some(python) = python() else { return };
    let server = start(&python);
    let dir = tempfile::tempdir().unwrap();
    let m = module(&server, &dir);
    let cryptogram = under_lmk(ZPK);
    let block = m.check_block("001", &cryptogram).unwrap();
    // The BU request and response layouts agree (2-digit key type code, length flag, U key,
    // 16 H check value); the value is pythales's deviation.
    assert_eq!(block.len(), 8);
    let of_cryptogram = tdes(&hex::decode(&cryptogram[1..]).unwrap(), &[0u8; 8], true);
    assert_eq!(block, of_cryptogram, "pythales: KCV of the LMK cryptogram");
    let of_key = tdes(&hex::decode(ZPK).unwrap(), &[0u8; 8], true);
    assert_ne!(block, of_key);
    // So posbridge, which wants the key's check value, refuses the provisioning.
    let refused = m.import_lmk_key("zpk/new", "001", &cryptogram, &of_key[..3]);
    assert!(
        matches!(refused, Err(HsmError::KcvMismatch { .. })),
        "{refused:?}"
    );
}

#[test]
fn a0_deviation_pythales_exports_under_the_zmk_in_scheme_u() {
    let Some(python) = python() else { return };
    let server = start(&python);
    let dir = tempfile::tempdir().unwrap();
    let m = module(&server, &dir);
    // posbridge asks for scheme X (ANSI X9.17, what terminals decrypt); pythales answers U. The
    // A1 layout (key under LMK, key under ZMK, 6 H check value) parsed; the scheme is refused.
    let error = m
        .generate_key("tpk/new", KeyType::Tdes2, "zmk/m1")
        .unwrap_err();
    match error {
        HsmError::Device {
            command, meaning, ..
        } => {
            assert_eq!(command, "A0");
            assert!(meaning.contains("not in scheme X"), "{meaning}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        m.find_key("tpk/new"),
        Err(HsmError::KeyNotFound { .. })
    ));
}

#[test]
fn ca_translates_and_deviates_on_the_destination_key() {
    let Some(python) = python() else { return };
    let server = start(&python);
    let dir = tempfile::tempdir().unwrap();
    let m = module(&server, &dir);
    let pan = Pan::new("4321987654321098").unwrap();
    let pin = Pin::new("1234").unwrap();
    let tpk = ClearKey::from_hex(TPK).unwrap();
    let block = calculator::encrypted_pin_block(PinBlockFormat::Iso0, &pin, &pan, &tpk).unwrap();
    let translated = m
        .translate_pin(
            &block,
            "tpk/t1",
            PinBlockFormat::Iso0,
            "zpk/z1",
            PinBlockFormat::Iso0,
            Some(&pan),
        )
        .unwrap();
    let clear = calculator::clear_pin_block(PinBlockFormat::Iso0, &pin, &pan).unwrap();
    // pythales decrypts the source with the TPK (from its LMK cryptogram) as a device does, and
    // encrypts the result under the ZPK's cryptogram bytes, where a device uses the ZPK.
    let cryptogram = hex::decode(&under_lmk(ZPK)[1..]).unwrap();
    assert_eq!(
        translated.expose_secret(),
        tdes(&cryptogram, clear.expose_secret(), true).as_slice(),
        "pythales: destination block under the ZPK's LMK cryptogram"
    );
    let zpk = ClearKey::from_hex(ZPK).unwrap();
    assert_ne!(
        translated,
        calculator::encrypted_pin_block(PinBlockFormat::Iso0, &pin, &pan, &zpk).unwrap()
    );
    // Error code 11 (destination key parity) maps to WrongKey naming the destination. (pythales
    // refuses odd parity, the deviation above; a device refuses even parity when it checks.)
    let error = m
        .translate_pin(
            &block,
            "tpk/t1",
            PinBlockFormat::Iso0,
            "zpk/odd",
            PinBlockFormat::Iso0,
            Some(&pan),
        )
        .unwrap_err();
    assert!(
        matches!(&error, HsmError::WrongKey { label, .. } if label == "zpk/odd"),
        "{error:?}"
    );
}

#[test]
fn dc_deviation_pythales_wants_an_untagged_pvk_pair() {
    let Some(python) = python() else { return };
    let server = start(&python);
    let dir = tempfile::tempdir().unwrap();
    let m = module(&server, &dir);
    let pan = Pan::new("4321987654321098").unwrap();
    let tpk = ClearKey::from_hex(TPK).unwrap();
    let block = calculator::encrypted_pin_block(
        PinBlockFormat::Iso0,
        &Pin::new("1234").unwrap(),
        &pan,
        &tpk,
    )
    .unwrap();
    // posbridge sends the PVK pair as it holds it (U + 32 H); pythales answers 27 ("PVK not
    // double length"), which the client reports as a key that cannot be used.
    let error = m
        .verify_pin(
            &block,
            "tpk/t1",
            PinBlockFormat::Iso0,
            &pan,
            "pvk/p1",
            1,
            "1234",
        )
        .unwrap_err();
    assert!(
        matches!(&error, HsmError::WrongKey { reason, .. } if reason.contains("DC") && reason.contains("incompatible key length")),
        "{error:?}"
    );
    // The TPK parity check comes first and passed: the DC request layout parsed up to the PVK.
}

#[test]
fn commands_pythales_lacks_end_its_server_and_the_client_reports_the_link() {
    let Some(python) = python() else { return };
    let server = start(&python);
    let dir = tempfile::tempdir().unwrap();
    let m = module(&server, &dir);
    // CC (ZPK to ZPK) is not in pythales: its server raises and closes the connection.
    let pan = Pan::new("4321987654321098").unwrap();
    let block = PinBlock::from_hex("0011223344556677").unwrap();
    let error = m
        .translate_pin(
            &block,
            "zpk/z1",
            PinBlockFormat::Iso0,
            "zpk/z1",
            PinBlockFormat::Iso0,
            Some(&pan),
        )
        .unwrap_err();
    assert!(matches!(error, HsmError::Link(_)), "{error:?}");
}
