//! The upstream link against the simulated host, over real loopback sockets: sales, declines,
//! the multiplexer's refusals and hand-offs, MAC failures, disconnects and key changes. Faults
//! are chosen by rule (amount suffix), never by timing; deadlines are generous except where a
//! test needs a request to give up.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use posbridge::infra::security::Security;
use posbridge::upstream::link::UnmatchedReason;
use posbridge::upstream::{HostConfig, HostLink, IsoMessage, LinkError, NotSentReason, Unmatched};
use posbridge_hsm::software::SoftwareModule;
use posbridge_hsm::{Pan, Pin, PinBlockFormat};
use posbridge_sim::host::{
    Condition, DeclineRule, Fault, FaultRule, LedgerState, SimHost, SimHostConfig, SimHostHandle,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

const PAN: &str = "6222021234567890123";
const TID: &str = "12345678";
const ACQUIRER: &str = "48020000";
const LONG: Duration = Duration::from_secs(20);

fn security() -> Security {
    Security::new(Arc::new(SoftwareModule::demo().unwrap()))
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

fn host_config() -> SimHostConfig {
    SimHostConfig {
        late_response_ms: 1_500,
        faults: vec![
            fault("91", Fault::NoResponse),
            fault("92", Fault::LateResponse),
            fault("93", Fault::DuplicateResponse),
            fault("94", Fault::WrongMac),
            fault("95", Fault::Disconnect),
        ],
        decline: vec![DeclineRule {
            when: Condition {
                amount_above_minor: Some(500_000),
                ..Condition::default()
            },
            code: "61".into(),
        }],
        ..SimHostConfig::default()
    }
}

fn link_config(addr: SocketAddr) -> HostConfig {
    let mut config = HostConfig::new("cups", vec![addr.to_string()], "cups-host");
    config.connections = 1;
    config.mac_key = Some("zak/upstream".into());
    config.pin_key = Some("zpk/upstream".into());
    config.zmk = Some("zmk/upstream".into());
    config.destination_id = "00010000".into();
    config.source_id = ACQUIRER.into();
    config.acquirer_id = Some(ACQUIRER.into());
    config.backoff_initial_ms = 20;
    config.backoff_max_ms = 200;
    config
}

struct Rig {
    host: SimHostHandle,
    link: HostLink,
    unmatched: mpsc::Receiver<Unmatched>,
    security: Security,
}

async fn rig_with(host: SimHostConfig, tweak: impl FnOnce(&mut HostConfig)) -> Rig {
    let (addr, host) = SimHost::start(host).await.unwrap();
    let mut config = link_config(addr);
    tweak(&mut config);
    let security = security();
    let (link, unmatched) = HostLink::start(config, security.clone()).unwrap();
    assert!(link.wait_signed_on(1, LONG).await, "link never signed on");
    Rig {
        host,
        link,
        unmatched,
        security,
    }
}

async fn rig() -> Rig {
    rig_with(host_config(), |_| {}).await
}

/// A forwarded sale as the order flow builds it; the link adds F7, F11 (unless given) and F128.
fn sale(amount_minor: u64) -> IsoMessage {
    IsoMessage::new("0200")
        .with(2, PAN)
        .with(3, "000000")
        .with(4, format!("{amount_minor:012}"))
        .with(22, "039")
        .with(25, "00")
        .with(32, ACQUIRER)
        .with(41, TID)
        .with(42, "898420154110001")
        .with(49, "156")
}

async fn with_pin(rig: &Rig, mut message: IsoMessage, pin: &str) -> IsoMessage {
    let block = rig
        .security
        .encrypt_pin(
            Pin::new(pin).unwrap(),
            Pan::new(PAN).unwrap(),
            PinBlockFormat::Iso0,
            "zpk/upstream".into(),
        )
        .await
        .unwrap();
    message.set(52, block.expose_secret().to_vec());
    message.set(53, "1000000000000000");
    message
}

async fn next_unmatched(rig: &mut Rig) -> Unmatched {
    tokio::time::timeout(LONG, rig.unmatched.recv())
        .await
        .expect("nothing reached the unmatched channel")
        .expect("unmatched channel closed")
}

async fn wait_in_flight(link: &HostLink, count: usize) {
    tokio::time::timeout(LONG, async {
        while link.in_flight() != count {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("in-flight count never reached");
}

/// Waits until the host booked a sale of this amount (a request it will not answer).
async fn wait_booked(host: &SimHostHandle, amount_minor: u64) {
    tokio::time::timeout(LONG, async {
        while !host.ledger().iter().any(|e| e.amount_minor == amount_minor) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the host never booked the sale");
}

#[tokio::test]
async fn happy_sale_with_pin_is_approved_and_booked() {
    let rig = rig().await;
    assert_eq!(rig.link.state().signed_on, 1);
    let request = with_pin(&rig, sale(2372), "1234").await;
    let answer = rig.link.request(request, LONG).await.unwrap();
    assert_eq!(answer.mti, "0210");
    assert_eq!(answer.response_code(), Some("00"));
    assert_eq!(answer.text(38).map(str::len), Some(6));
    assert_eq!(answer.text(41), Some(TID));
    let stan = answer.text(11).unwrap().to_owned();
    let ledger = rig.host.ledger();
    assert_eq!(ledger.len(), 1);
    assert_eq!(ledger[0].stan, stan);
    assert_eq!(ledger[0].amount_minor, 2372);
    assert_eq!(ledger[0].state, LedgerState::Approved);
    assert_eq!(rig.host.balance(PAN), Some(10_000_000 - 2372));
    assert_eq!(rig.link.in_flight(), 0);

    // A reversal of it (original STAN in F90) credits the money back, once.
    let original = format!("0200{stan}{:032}", 0);
    let reversal = sale(2372).with(90, original.clone());
    let mut reversal = reversal;
    reversal.mti = "0400".into();
    reversal.remove(52);
    let answer = rig.link.request(reversal.clone(), LONG).await.unwrap();
    assert_eq!(answer.mti, "0410");
    assert_eq!(answer.response_code(), Some("00"));
    reversal.mti = "0401".into();
    let again = rig.link.request(reversal, LONG).await.unwrap();
    assert_eq!(again.response_code(), Some("00"));
    assert_eq!(rig.host.balance(PAN), Some(10_000_000));
    assert_eq!(rig.host.ledger()[0].state, LedgerState::Reversed);

    rig.link.shutdown().await;
    assert_eq!(rig.link.state().signed_on, 0);
    let refused = rig.link.request(sale(100), LONG).await.unwrap_err();
    assert!(matches!(
        refused,
        LinkError::NotSent(NotSentReason::ShuttingDown)
    ));
}

#[tokio::test]
async fn declines_come_back_with_the_hosts_codes() {
    let rig = rig().await;
    let over_limit = rig.link.request(sale(600_000), LONG).await.unwrap();
    assert_eq!(over_limit.response_code(), Some("61"));
    let wrong_pin = with_pin(&rig, sale(100), "9999").await;
    let wrong_pin = rig.link.request(wrong_pin, LONG).await.unwrap();
    assert_eq!(wrong_pin.response_code(), Some("55"));
    let unknown = sale(100).with(2, "6222020000000000018");
    let unknown = rig.link.request(unknown, LONG).await.unwrap();
    assert_eq!(unknown.response_code(), Some("14"));
    assert!(rig.host.ledger().is_empty());
    assert_eq!(rig.host.balance(PAN), Some(10_000_000));
}

#[tokio::test]
async fn duplicate_in_flight_key_is_refused_before_sending() {
    let rig = rig().await;
    let link = rig.link.clone();
    let first =
        tokio::spawn(async move { link.request(sale(1091).with(11, "000777"), LONG).await });
    wait_in_flight(&rig.link, 1).await;
    wait_booked(&rig.host, 1091).await;
    let seen = rig.host.requests_seen();
    let duplicate = rig
        .link
        .request(sale(500).with(11, "000777"), LONG)
        .await
        .unwrap_err();
    assert!(
        matches!(
            duplicate,
            LinkError::NotSent(NotSentReason::DuplicateKey(_))
        ),
        "{duplicate:?}"
    );
    assert!(!duplicate.is_ambiguous());
    // A later request on the same connection is answered after anything sent before it.
    let other = rig.link.request(sale(600), LONG).await.unwrap();
    assert_eq!(other.response_code(), Some("00"));
    assert_eq!(rig.host.requests_seen(), seen + 1);
    assert!(rig.host.ledger().iter().all(|e| e.amount_minor != 500));
    first.abort();
}

#[tokio::test]
async fn late_answer_reaches_the_unmatched_channel() {
    let mut rig = rig().await;
    let error = rig
        .link
        .request(sale(1092).with(11, "000042"), Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(error, LinkError::Timeout), "{error:?}");
    assert!(error.is_ambiguous());
    let late = next_unmatched(&mut rig).await;
    assert_eq!(late.reason, UnmatchedReason::NoPendingRequest);
    let message = late.message.unwrap();
    assert_eq!(
        (message.mti.as_str(), message.text(11)),
        ("0210", Some("000042"))
    );
    assert_eq!(message.response_code(), Some("00"));
    // The host booked it: the order flow must reverse it.
    assert_eq!(rig.host.ledger()[0].state, LedgerState::Approved);
}

#[tokio::test]
async fn duplicate_answer_is_delivered_once_and_the_copy_is_unmatched() {
    let mut rig = rig().await;
    let answer = rig
        .link
        .request(sale(1093).with(11, "000043"), LONG)
        .await
        .unwrap();
    assert_eq!(answer.response_code(), Some("00"));
    let copy = next_unmatched(&mut rig).await;
    assert_eq!(copy.reason, UnmatchedReason::NoPendingRequest);
    assert_eq!(copy.message.unwrap().text(11), Some("000043"));
    assert!(rig.unmatched.try_recv().is_err());
}

#[tokio::test]
async fn wrong_mac_from_the_host_is_bad_mac() {
    let rig = rig().await;
    let error = rig.link.request(sale(1094), LONG).await.unwrap_err();
    let LinkError::BadMac(answer) = &error else {
        panic!("expected BadMac, got {error:?}");
    };
    assert_eq!(answer.response_code(), Some("00"));
    assert!(error.is_ambiguous());
    // The link itself is fine.
    let next = rig.link.request(sale(100), LONG).await.unwrap();
    assert_eq!(next.response_code(), Some("00"));
}

#[tokio::test]
async fn request_mac_is_checked_by_the_host() {
    // A link with another MAC key: the host answers A0 without MAC and books nothing. An
    // unMACed answer proves nothing, so the link reports it as BadMac (ambiguous: the sale's
    // reversal stays armed), with the host's answer attached.
    let rig = rig_with(host_config(), |config| {
        config.mac_key = Some("zpk/upstream".into());
    })
    .await;
    let error = rig.link.request(sale(100), LONG).await.unwrap_err();
    let LinkError::BadMac(answer) = &error else {
        panic!("expected BadMac, got {error:?}");
    };
    assert_eq!(answer.response_code(), Some("A0"));
    assert!(error.is_ambiguous());
    assert!(rig.host.ledger().is_empty());
}

#[tokio::test]
async fn disconnect_is_ambiguous_then_the_link_reconnects_and_signs_on() {
    let rig = rig().await;
    let error = rig.link.request(sale(1095), LONG).await.unwrap_err();
    assert!(matches!(error, LinkError::Disconnected), "{error:?}");
    assert!(error.is_ambiguous());
    assert!(rig.link.wait_signed_on(1, LONG).await, "no reconnect");
    let next = rig.link.request(sale(100), LONG).await.unwrap();
    assert_eq!(next.response_code(), Some("00"));

    // Host gone for good: requests are refused without being sent.
    rig.host.stop().await;
    tokio::time::timeout(LONG, async {
        while rig.link.state().signed_on != 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    let error = rig.link.request(sale(100), LONG).await.unwrap_err();
    assert!(
        matches!(error, LinkError::NotSent(NotSentReason::LinkDown)),
        "{error:?}"
    );
    assert!(!error.is_ambiguous());
}

#[tokio::test]
async fn host_restart_closes_connections_and_the_link_signs_on_again() {
    let rig = rig_with(host_config(), |config| config.connections = 2).await;
    assert!(rig.link.wait_signed_on(2, LONG).await);
    assert_eq!(rig.host.accepted(), 2);
    rig.host.disconnect_all().await;
    // Both connections are replaced (four accepted) and the new ones sign on.
    tokio::time::timeout(LONG, async {
        while rig.host.accepted() != 4 || rig.host.signed_on_connections() != 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the link did not reconnect both connections");
    assert!(rig.link.wait_signed_on(2, LONG).await);
    let answer = rig.link.request(sale(100), LONG).await.unwrap();
    assert_eq!(answer.response_code(), Some("00"));
}

#[tokio::test]
async fn in_flight_limit_refuses_instead_of_buffering() {
    let rig = rig_with(host_config(), |config| config.max_in_flight = 1).await;
    let link = rig.link.clone();
    let stuck = tokio::spawn(async move { link.request(sale(1091), LONG).await });
    wait_in_flight(&rig.link, 1).await;
    wait_booked(&rig.host, 1091).await;
    let seen = rig.host.requests_seen();
    let error = rig
        .link
        .request(sale(100), Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(
        matches!(error, LinkError::NotSent(NotSentReason::Busy)),
        "{error:?}"
    );
    stuck.abort();
    let _ = stuck.await;
    assert_eq!(rig.link.in_flight(), 0);
    let answer = rig.link.request(sale(100), LONG).await.unwrap();
    assert_eq!(answer.response_code(), Some("00"));
    assert_eq!(rig.host.requests_seen(), seen + 1);
}

async fn kcv(security: &Security, label: &str) -> Vec<u8> {
    security.find_key(label.into()).await.unwrap().kcv
}

#[tokio::test]
async fn key_exchange_installs_new_zone_keys() {
    let rig = rig().await;
    let (old_pin, old_mac) = (
        kcv(&rig.security, "zpk/upstream").await,
        kcv(&rig.security, "zak/upstream").await,
    );
    let code = rig.host.key_exchange(false, LONG).await.unwrap();
    assert_eq!(code, "00");
    assert_ne!(kcv(&rig.security, "zpk/upstream").await, old_pin);
    assert_ne!(kcv(&rig.security, "zak/upstream").await, old_mac);
    // Both sides now use the new keys: the PIN verifies and both MACs check.
    let request = with_pin(&rig, sale(2372), "1234").await;
    let answer = rig.link.request(request, LONG).await.unwrap();
    assert_eq!(answer.response_code(), Some("00"));
}

#[tokio::test]
async fn key_exchange_with_a_bad_check_value_keeps_the_old_keys() {
    let rig = rig().await;
    let (old_pin, old_mac) = (
        kcv(&rig.security, "zpk/upstream").await,
        kcv(&rig.security, "zak/upstream").await,
    );
    let code = rig.host.key_exchange(true, LONG).await.unwrap();
    assert_eq!(code, "A7");
    // Neither key changed, not even the PIN key whose check value was right.
    assert_eq!(kcv(&rig.security, "zpk/upstream").await, old_pin);
    assert_eq!(kcv(&rig.security, "zak/upstream").await, old_mac);
    let request = with_pin(&rig, sale(2372), "1234").await;
    let answer = rig.link.request(request, LONG).await.unwrap();
    assert_eq!(answer.response_code(), Some("00"));
}

#[tokio::test]
async fn idle_connection_echoes_and_shutdown_signs_off() {
    let rig = rig_with(host_config(), |config| config.echo_idle_secs = 1).await;
    // Sign-on was request 1; an echo follows once the connection has been idle a second.
    tokio::time::timeout(LONG, async {
        while rig.host.requests_seen() < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("no echo on an idle connection");
    assert_eq!(rig.link.state().signed_on, 1);
    let before = rig.host.requests_seen();
    rig.link.shutdown().await;
    // The sign-off was answered before shutdown returned; an echo may have slipped in too.
    assert!(rig.host.requests_seen() > before);
    assert_eq!(rig.link.state().up, 0);
}

/// Sends a message until the host answers it (any code) or gives up after many rounds;
/// ambiguous failures are retried with the repeat MTI, as the reversal queue does.
async fn until_answered(link: &HostLink, mut message: IsoMessage) -> IsoMessage {
    for _ in 0..200 {
        match link
            .request(message.clone(), Duration::from_millis(800))
            .await
        {
            Ok(answer) => return answer,
            Err(error) => {
                if error.is_ambiguous() && message.mti.ends_with('0') {
                    message.mti.replace_range(3..4, "1");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    panic!("no answer after 200 attempts");
}

#[tokio::test]
async fn random_faults_reconcile_with_the_hosts_ledger() {
    let host = SimHostConfig {
        late_response_ms: 1_500,
        random_faults: Some(posbridge_sim::host::RandomFaults {
            seed: 20_261_126,
            no_response: 0.04,
            late_response: 0.04,
            duplicate_response: 0.04,
            disconnect: 0.02,
            wrong_mac: 0.04,
        }),
        ..SimHostConfig::default()
    };
    println!("sim host random fault seed 20261126");
    let rig = rig_with(host, |config| config.connections = 2).await;
    let mut approved_total = 0u64;
    let mut to_reverse = Vec::new();
    let mut approved_stans = Vec::new();
    for batch in 0..10u64 {
        let mut sales = Vec::new();
        for i in 0..20u64 {
            let link = rig.link.clone();
            let amount = 100 + batch * 20 + i;
            let stan = link.next_stan();
            sales.push(tokio::spawn(async move {
                let message = sale(amount).with(11, stan.as_str());
                let outcome = link.request(message, Duration::from_millis(800)).await;
                (amount, stan, outcome)
            }));
        }
        for sale in sales {
            let (amount, stan, outcome) = sale.await.unwrap();
            match outcome {
                Ok(answer) if answer.response_code() == Some("00") => {
                    approved_total += amount;
                    approved_stans.push(stan);
                }
                Ok(answer) => panic!("unexpected decline {answer:?}"),
                Err(error) if error.is_ambiguous() => to_reverse.push((amount, stan)),
                Err(_) => {}
            }
        }
    }
    assert!(!to_reverse.is_empty(), "the seed injected no fault");
    for (amount, stan) in &to_reverse {
        let mut reversal = sale(*amount).with(90, format!("0200{stan}{:032}", 0));
        reversal.mti = "0400".into();
        let answer = until_answered(&rig.link, reversal).await;
        assert!(
            matches!(answer.response_code(), Some("00") | Some("25")),
            "{answer:?}"
        );
    }
    let ledger = rig.host.ledger();
    for entry in &ledger {
        let completed = approved_stans.contains(&entry.stan);
        let reversed = to_reverse.iter().any(|(_, s)| *s == entry.stan);
        match entry.state {
            LedgerState::Approved => assert!(completed, "approved at the host only: {entry:?}"),
            LedgerState::Reversed | LedgerState::ReversedUnseen => {
                assert!(reversed && !completed, "{entry:?}")
            }
        }
    }
    for stan in &approved_stans {
        assert!(
            ledger
                .iter()
                .any(|e| e.stan == *stan && e.state == LedgerState::Approved),
            "approved here, missing at the host: {stan}"
        );
    }
    assert_eq!(rig.host.balance(PAN), Some(10_000_000 - approved_total));
}

#[tokio::test]
async fn plain_iso8583_dialects_work_without_a_header_or_mac() {
    for dialect in ["iso87binary", "iso87ascii"] {
        let host = SimHostConfig {
            dialect: dialect.into(),
            ..host_config()
        };
        let rig = rig_with(host, |config| config.dialect = dialect.into()).await;
        let request = with_pin(&rig, sale(2372), "1234").await;
        let answer = rig.link.request(request, LONG).await.unwrap();
        assert_eq!(answer.response_code(), Some("00"), "{dialect}");
        let wrong_pin = with_pin(&rig, sale(100), "4321").await;
        let answer = rig.link.request(wrong_pin, LONG).await.unwrap();
        assert_eq!(answer.response_code(), Some("55"), "{dialect}");
        // These dialects have no MAC field, so a key change cannot be authenticated: refused,
        // and traffic goes on under the keys in use.
        assert_eq!(rig.host.key_exchange(false, LONG).await.unwrap(), "A0");
        let request = with_pin(&rig, sale(2372), "1234").await;
        let answer = rig.link.request(request, LONG).await.unwrap();
        assert_eq!(
            answer.response_code(),
            Some("00"),
            "{dialect} after the refused key change"
        );
        rig.link.shutdown().await;
    }
}

#[tokio::test]
async fn link_started_before_its_host_connects_with_backoff() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = free.local_addr().unwrap();
    drop(free);
    let (link, _unmatched) = HostLink::start(link_config(addr), security()).unwrap();
    let refused = link.request(sale(100), LONG).await.unwrap_err();
    assert!(
        matches!(refused, LinkError::NotSent(NotSentReason::LinkDown)),
        "{refused:?}"
    );
    assert_eq!(link.state().signed_on, 0);
    let (_, host) = SimHost::start(SimHostConfig {
        listen: addr.to_string(),
        ..host_config()
    })
    .await
    .unwrap();
    assert!(
        link.wait_signed_on(1, LONG).await,
        "no connect after backoff"
    );
    let answer = link.request(sale(100), LONG).await.unwrap();
    assert_eq!(answer.response_code(), Some("00"));
    assert_eq!(host.ledger().len(), 1);
}

#[tokio::test]
async fn match_key_override_by_rrn_keeps_same_stan_requests_apart() {
    let rig = rig_with(host_config(), |config| {
        config.match_fields = vec![37];
        config.connections = 2;
    })
    .await;
    // 0800s carry no RRN: both connections still sign on (network messages match on STAN).
    assert!(rig.link.wait_signed_on(2, LONG).await);
    let link = rig.link.clone();
    let first = tokio::spawn(async move {
        link.request(sale(1091).with(11, "000555").with(37, "000000000001"), LONG)
            .await
    });
    wait_booked(&rig.host, 1091).await;
    // Same TID + STAN, different RRN: it goes out (the default key would refuse it).
    let second = rig
        .link
        .request(sale(700).with(11, "000555").with(37, "000000000002"), LONG)
        .await
        .unwrap();
    assert_eq!(second.text(37), Some("000000000002"));
    // The host keys its ledger on acquirer + TID + STAN: the second is a duplicate to it.
    assert_eq!(second.response_code(), Some("94"));
    assert_eq!(rig.link.in_flight(), 1);
    first.abort();
}

#[tokio::test]
async fn reversal_advice_and_reversal_of_an_unknown_sale() {
    let rig = rig().await;
    let approved = rig.link.request(sale(1234), LONG).await.unwrap();
    let stan = approved.text(11).unwrap().to_owned();
    let mut advice = sale(1234).with(90, format!("0200{stan}{:032}", 0));
    advice.mti = "0420".into();
    let answer = rig.link.request(advice.clone(), LONG).await.unwrap();
    assert_eq!(
        (answer.mti.as_str(), answer.response_code()),
        ("0430", Some("00"))
    );
    advice.mti = "0421".into();
    let again = rig.link.request(advice, LONG).await.unwrap();
    assert_eq!(again.response_code(), Some("00"));
    assert_eq!(rig.host.balance(PAN), Some(10_000_000));

    // A reversal for a sale the host never saw: 25, nothing moves, and the sale, should it
    // arrive afterwards, is refused as a duplicate.
    let mut reversal = sale(999).with(90, format!("0200{}{:032}", "424242", 0));
    reversal.mti = "0400".into();
    let answer = rig.link.request(reversal, LONG).await.unwrap();
    assert_eq!(answer.response_code(), Some("25"));
    let late_sale = rig
        .link
        .request(sale(999).with(11, "424242"), LONG)
        .await
        .unwrap();
    assert_eq!(late_sale.response_code(), Some("94"));
    assert_eq!(rig.host.balance(PAN), Some(10_000_000));
    let ledger = rig.host.ledger();
    assert_eq!(ledger.len(), 2);
    assert_eq!(ledger[0].state, LedgerState::Reversed);
    assert_eq!(ledger[1].state, LedgerState::ReversedUnseen);
}

#[tokio::test]
async fn dropping_every_handle_closes_the_connections() {
    let rig = rig().await;
    assert_eq!(rig.host.connections(), 1);
    drop(rig.link);
    tokio::time::timeout(LONG, async {
        while rig.host.connections() != 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("connections stayed open after the last handle was dropped");
}

/// Regression (security issue): a host's key change was accepted unMACed and could be replayed
/// to roll the zone keys back. Now an unMACed key change is refused (A0), a replayed one is
/// refused (94), and in both cases the keys in use stay.
#[tokio::test]
async fn unmaced_and_replayed_key_changes_are_refused_and_the_keys_stay() {
    let rig = rig().await;
    let keys = async || {
        (
            kcv(&rig.security, "zpk/upstream").await,
            kcv(&rig.security, "zak/upstream").await,
        )
    };
    let before = keys().await;
    assert_eq!(rig.host.key_exchange_without_mac(LONG).await.unwrap(), "A0");
    assert_eq!(
        keys().await,
        before,
        "an unMACed key change changes nothing"
    );
    assert_eq!(rig.host.key_exchange(false, LONG).await.unwrap(), "00");
    let changed = keys().await;
    assert_ne!(changed, before);
    // The same frame again: a replay. (The host replays what it sent under the old MAC key, so
    // it would also fail the MAC check now; both refusals keep the keys.)
    let replay = rig.host.replay_key_exchange(LONG).await.unwrap();
    assert!(["94", "A0"].contains(&replay.as_str()), "{replay}");
    assert_eq!(
        keys().await,
        changed,
        "a replayed key change changes nothing"
    );
    // Traffic still flows on the new keys.
    let request = with_pin(&rig, sale(2372), "1234").await;
    let answer = rig.link.request(request, LONG).await.unwrap();
    assert_eq!(answer.response_code(), Some("00"));
}

/// Regression (lifecycle issue): a request that timed out while still in the link's send queue
/// was written afterwards, so its reversal could reach the host first. Over a real socket: the
/// host signs the link on, then stops reading, so the link's writes stall and later requests
/// wait in its send queue past their deadline. Those are withdrawn (`NotSent`), and when the
/// host reads again, none of them was ever written; every request answered `Timeout` (the
/// ambiguous outcome, which is reversed) was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_timed_out_in_the_send_queue_are_never_written() {
    use futures_util::{SinkExt, StreamExt};
    let spec = Arc::new(posbridge_codecs::Spec::builtin("iso87ascii").unwrap());
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(1024).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    let listener = socket.listen(4).unwrap();
    let (stall_tx, stall_rx) = tokio::sync::oneshot::channel::<()>();
    let (resume_tx, resume_rx) = tokio::sync::oneshot::channel::<()>();
    let host_spec = spec.clone();
    let host = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let codec = posbridge::infra::framing::frame_codec(&host_spec).unwrap();
        let mut framed = tokio_util::codec::Framed::new(stream, codec);
        // Sign the link on: answer its 0800 with 00, then read nothing until told.
        let frame = framed.next().await.unwrap().unwrap();
        let sign_on = posbridge_codecs::decode(&host_spec, &frame).unwrap();
        let mut answer = host_spec.builder("0810").unwrap();
        for number in [7, 11, 70] {
            if let Some(value) = sign_on.raw(number) {
                answer.set(number, value.to_vec()).unwrap();
            }
        }
        answer.set(39, b"00".to_vec()).unwrap();
        let mut out = Vec::new();
        answer.encode_into(&mut out).unwrap();
        framed.send(out.as_slice()).await.unwrap();
        let _ = stall_tx.send(());
        resume_rx.await.unwrap();
        let mut written = Vec::new();
        while let Ok(Some(Ok(frame))) =
            tokio::time::timeout(Duration::from_secs(2), framed.next()).await
        {
            let message = posbridge_codecs::decode(&host_spec, &frame).unwrap();
            if message.mti() == "0200" {
                written.push(message.str(11).unwrap().to_owned());
            }
        }
        written
    });
    let mut config = HostConfig::new("stalled", vec![addr.to_string()], "iso87ascii");
    config.connections = 1;
    config.max_in_flight = 4_096;
    config.request_timeout_ms = 60_000;
    config.echo_idle_secs = 0;
    let (link, _unmatched) = HostLink::start(config, security()).unwrap();
    assert!(link.wait_signed_on(1, LONG).await, "link never signed on");
    stall_rx.await.unwrap();

    // Big requests (3 KB), all at once (7.5 MB, more than the kernel buffers of a loopback
    // socket hold), each with a short deadline: the buffers fill, the writer stalls, the rest
    // wait in the send queue.
    let filler = "X".repeat(999);
    let requests = (1..=2_500u32).map(|n| {
        let link = link.clone();
        let message = sale(u64::from(n))
            .with(11, format!("{n:06}"))
            .with(48, filler.clone())
            .with(62, filler.clone())
            .with(63, filler.clone());
        async move {
            (
                format!("{n:06}"),
                link.request(message, Duration::from_millis(500)).await,
            )
        }
    });
    let outcomes = futures_util::future::join_all(requests).await;
    let withdrawn: Vec<&String> = outcomes
        .iter()
        .filter(|(_, r)| matches!(r, Err(LinkError::NotSent(_))))
        .map(|(stan, _)| stan)
        .collect();
    let timed_out: Vec<&String> = outcomes
        .iter()
        .filter(|(_, r)| matches!(r, Err(LinkError::Timeout)))
        .map(|(stan, _)| stan)
        .collect();
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for (_, outcome) in &outcomes {
        let kind = match outcome {
            Ok(answer) => format!("answer {:?}", answer.response_code()),
            Err(error) => error.to_string(),
        };
        *kinds.entry(kind).or_default() += 1;
    }
    assert!(
        !withdrawn.is_empty(),
        "no request waited in the send queue past its deadline: {kinds:?}"
    );
    assert_eq!(
        withdrawn.len() + timed_out.len(),
        outcomes.len(),
        "every request either withdrawn or timed out"
    );
    let _ = resume_tx.send(());
    let written = host.await.unwrap();
    for stan in &withdrawn {
        assert!(
            !written.contains(stan),
            "withdrawn request {stan} was written"
        );
    }
    for stan in &timed_out {
        assert!(
            written.contains(stan),
            "timed-out request {stan} never reached the host"
        );
    }
    println!(
        "{} withdrawn unsent, {} written and timed out",
        withdrawn.len(),
        timed_out.len()
    );
    link.shutdown().await;
}
