//! The upstream link and the simulated host never log a card number, even on the paths that log
//! the most (unmatched answers, MAC failures, disconnects, key changes), and their Debug output
//! masks it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use posbridge::infra::security::Security;
use posbridge::upstream::{HostConfig, HostLink, IsoMessage};
use posbridge_hsm::software::SoftwareModule;
use posbridge_hsm::{Pan, Pin, PinBlockFormat};
use posbridge_sim::host::{Condition, Fault, FaultRule};
use posbridge_sim::host::{SimHost, SimHostConfig};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const PAN: &str = "6222021234567890123";
const LONG: Duration = Duration::from_secs(20);

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn fault(suffix: &str, fault: Fault) -> FaultRule {
    FaultRule {
        when: Condition {
            amount_suffix: Some(suffix.into()),
            ..Condition::default()
        },
        fault,
    }
}

fn sale(amount_minor: u64) -> IsoMessage {
    IsoMessage::new("0200")
        .with(2, PAN)
        .with(3, "000000")
        .with(4, format!("{amount_minor:012}"))
        .with(32, "48020000")
        .with(41, "12345678")
        .with(49, "156")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_card_number_in_logs_or_debug_output() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let (addr, host) = SimHost::start(SimHostConfig {
        late_response_ms: 500,
        faults: vec![
            fault("92", Fault::LateResponse),
            fault("93", Fault::DuplicateResponse),
            fault("94", Fault::WrongMac),
            fault("95", Fault::Disconnect),
        ],
        ..SimHostConfig::default()
    })
    .await
    .unwrap();
    let mut config = HostConfig::new("cups", vec![addr.to_string()], "cups-host");
    config.connections = 1;
    config.mac_key = Some("zak/upstream".into());
    config.pin_key = Some("zpk/upstream".into());
    config.zmk = Some("zmk/upstream".into());
    config.backoff_initial_ms = 20;
    let security = Security::new(Arc::new(SoftwareModule::demo().unwrap()));
    let (link, mut unmatched) = HostLink::start(config, security.clone()).unwrap();
    assert!(link.wait_signed_on(1, LONG).await);

    let block = security
        .encrypt_pin(
            Pin::new("1234").unwrap(),
            Pan::new(PAN).unwrap(),
            PinBlockFormat::Iso0,
            "zpk/upstream".into(),
        )
        .await
        .unwrap();
    let with_pin = sale(100).with(52, block.expose_secret().to_vec());
    let mut debug = Vec::new();
    debug.push(format!("{:?}", link.request(with_pin, LONG).await));
    debug.push(format!(
        "{:?}",
        link.request(sale(192), Duration::from_millis(200)).await
    ));
    debug.push(format!("{:?}", link.request(sale(193), LONG).await));
    debug.push(format!("{:?}", link.request(sale(194), LONG).await));
    for _ in 0..2 {
        let item = tokio::time::timeout(LONG, unmatched.recv())
            .await
            .unwrap()
            .unwrap();
        debug.push(format!("{item:?}"));
    }
    debug.push(format!("{:?}", link.request(sale(195), LONG).await));
    tokio::time::timeout(LONG, async {
        while host.accepted() != 2 || host.signed_on_connections() != 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("no reconnect after the disconnect");
    assert_eq!(host.key_exchange(false, LONG).await.unwrap(), "00");
    debug.push(format!("{:?}", host.ledger()));
    link.shutdown().await;

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("unmatched message from the host"), "{logs}");
    assert!(logs.contains("sim host fault: disconnect"), "{logs}");
    for text in debug.iter().chain(std::iter::once(&logs)) {
        assert!(!text.contains(PAN), "card number in {text}");
        assert!(!text.contains("123456789"), "card digits in {text}");
    }
}
