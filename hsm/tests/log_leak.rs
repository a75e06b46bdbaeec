//! Captures every log line (all levels, including `log` records bridged into tracing) of a run
//! that opens a module, imports a key, translates PIN blocks, verifies a PIN and computes MACs,
//! and asserts that neither the PIN, a clear or encrypted PIN block, a clear key nor the full PAN
//! appears in it. Runs on both backends.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use posbridge_hsm::software::SoftwareModule;
use posbridge_hsm::{
    ClearKey, KeyType, MacAlgorithm, Pan, Pin, PinBlockFormat, SecurityModule, calculator,
};
use std::io::Write;
use std::sync::{Arc, Mutex};

/// A writer that appends everything to a shared buffer.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;

    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

/// Installs a process-wide TRACE subscriber writing to the returned buffer (and bridging the
/// `log` crate, which cryptoki uses). Timestamps are off so digits in them cannot mask a leak.
fn capture_logs() -> Capture {
    use tracing_subscriber::util::SubscriberInitExt;
    let capture = Capture::default();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(capture.clone())
        .without_time()
        .with_ansi(false)
        .finish()
        .try_init()
        .expect("only one subscriber per test process");
    capture
}

const PIN: &str = "918273645546";
const PAN: &str = "6212345678901234567";

/// Runs the sensitive operations on `m`; returns every secret that must stay out of the logs.
fn sensitive_run(m: &dyn SecurityModule) -> Vec<String> {
    let pin = Pin::new(PIN).unwrap();
    let pan = Pan::new(PAN).unwrap();
    // The UnionPay sign-on import: the clear PIN key must not be logged.
    m.import_key(
        "zmk/cups",
        "tpk/leak",
        KeyType::Tdes2,
        &hex::decode("6701EAD6A9AD51E51AA406E2C27FCFA9").unwrap(),
        &hex::decode("8D0A74B8").unwrap(),
    )
    .unwrap();
    let terminal_block = m
        .encrypt_pin(&pin, &pan, PinBlockFormat::Iso0, "tpk/leak")
        .unwrap();
    let zone_block = m
        .translate_pin(
            &terminal_block,
            "tpk/leak",
            PinBlockFormat::Iso0,
            "zpk/a",
            PinBlockFormat::Iso0,
            Some(&pan),
        )
        .unwrap();
    let aes_block = m
        .translate_pin(
            &zone_block,
            "zpk/a",
            PinBlockFormat::Iso0,
            "pek/aes-b",
            PinBlockFormat::Iso4,
            Some(&pan),
        )
        .unwrap();
    let pvv = m.pin_verification_value("pvk/vec", &pan, &pin, 1).unwrap();
    assert!(
        m.verify_pin(
            &aes_block,
            "pek/aes-b",
            PinBlockFormat::Iso4,
            &pan,
            "pvk/vec",
            1,
            &pvv
        )
        .unwrap()
    );
    let mac = m
        .generate_mac("zak/x919", MacAlgorithm::X919, b"0200 message")
        .unwrap();
    m.verify_mac("zak/x919", MacAlgorithm::X919, b"0200 message", &mac)
        .unwrap();
    m.generate_mac("tak/cups", MacAlgorithm::CupsEcb, b"0200 message")
        .unwrap();
    // A failing translation logs its error path too.
    let _ = m.translate_pin(
        &terminal_block,
        "zpk/b",
        PinBlockFormat::Iso0,
        "zpk/a",
        PinBlockFormat::Iso3,
        Some(&pan),
    );
    // And the secret types themselves, logged by a careless caller, stay masked.
    tracing::info!(?pin, ?pan, block = ?terminal_block, "careless caller");
    tracing::info!("careless caller: pin {pin}, pan {pan}, block {zone_block}");

    let clear_block = calculator::clear_pin_block(PinBlockFormat::Iso0, &pin, &pan).unwrap();
    let mut secrets = vec![
        PIN.to_owned(),
        PAN.to_owned(),
        hex::encode_upper(clear_block.expose_secret()),
        hex::encode_upper(terminal_block.expose_secret()),
        hex::encode_upper(zone_block.expose_secret()),
        hex::encode_upper(aes_block.expose_secret()),
        "807A23AD32B36D457AE91FDF927570EA".to_owned(),
    ];
    for label in [
        "zmk/cups",
        "zpk/a",
        "zpk/b",
        "pek/aes-b",
        "zak/x919",
        "tak/cups",
        "pvk/vec",
    ] {
        let (_, key): (KeyType, ClearKey) = common::clear_key(label);
        secrets.push(hex::encode_upper(key.expose_secret()));
    }
    secrets
}

fn assert_clean(capture: &Capture, secrets: &[String]) {
    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("translate PIN block"),
        "nothing was captured: {logs}"
    );
    assert!(
        logs.contains("621234*********4567"),
        "masked PAN expected: {logs}"
    );
    let upper = logs.to_uppercase();
    for secret in secrets {
        assert!(
            !upper.contains(&secret.to_uppercase()),
            "{secret} leaked into the logs:\n{logs}"
        );
    }
    // The PIN block's 8 bytes as a decimal byte list would be Debug of a Vec<u8>.
    assert!(!logs.contains(&PIN[..8]), "{logs}");
}

#[test]
fn software_module_logs_no_secret() {
    let capture = capture_logs();
    let module = SoftwareModule::open(&common::key_file_path(), false).unwrap();
    let secrets = sensitive_run(&module);
    assert_clean(&capture, &secrets);
}

#[test]
fn pkcs11_module_logs_no_secret() {
    common::in_softhsm_child("pkcs11_module_logs_no_secret", || {
        let capture = capture_logs();
        let module = common::open_test_token(2);
        let secrets = sensitive_run(&module);
        let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
        assert!(
            logs.contains("PIN translation in host memory: not PCI PIN compliant"),
            "{logs}"
        );
        assert_clean(&capture, &secrets);
    });
}
