//! What the upstream link puts on the wire, checked by other implementations: the X9.19 MAC of a
//! real 0200 frame recomputed with psec (python), and the key-change worked example of
//! fixtures/upstream/key_change.json (computed with psec) imported by the link's code.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use posbridge::infra::security::Security;
use posbridge::upstream::key_exchange;
use posbridge::upstream::{HostConfig, HostLink, IsoMessage};
use posbridge_codecs::Spec;
use posbridge_hsm::software::SoftwareModule;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn security() -> Security {
    Security::new(Arc::new(SoftwareModule::demo().unwrap()))
}

fn python() -> PathBuf {
    match std::env::var_os("POSBRIDGE_TEST_PYTHON") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv-test/bin/python"),
    }
}

/// X9.19 MAC (padding 1) with psec.
fn psec_retail_mac(key_hex: &str, data: &[u8]) -> String {
    let python = python();
    assert!(
        python.exists(),
        "{} missing: run ./scripts/test or create the venv (see notes), or set POSBRIDGE_TEST_PYTHON",
        python.display()
    );
    let script = "import sys, psec.mac as m\n\
                  k = bytes.fromhex(sys.argv[1]); d = bytes.fromhex(sys.stdin.read().strip())\n\
                  print(m.generate_retail_mac(k[:8], k[8:], d, 1).hex().upper())";
    let mut child = Command::new(&python)
        .args(["-W", "ignore", "-c", script, key_hex])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(hex::encode(data).as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "psec failed");
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

async fn read_frame(stream: &mut TcpStream) -> Vec<u8> {
    let mut length = [0u8; 4];
    stream.read_exact(&mut length).await.unwrap();
    let length: usize = std::str::from_utf8(&length).unwrap().parse().unwrap();
    let mut frame = vec![0u8; length];
    stream.read_exact(&mut frame).await.unwrap();
    frame
}

async fn write_frame(stream: &mut TcpStream, frame: &[u8]) {
    stream
        .write_all(format!("{:04}", frame.len()).as_bytes())
        .await
        .unwrap();
    stream.write_all(frame).await.unwrap();
}

#[tokio::test]
async fn the_wire_0200_carries_a_mac_psec_agrees_with() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = HostConfig::new(
        "raw",
        vec![listener.local_addr().unwrap().to_string()],
        "cups-host",
    );
    config.connections = 1;
    config.mac_key = Some("zak/upstream".into());
    config.destination_id = "00010000".into();
    config.source_id = "48020000".into();
    let (link, _unmatched) = HostLink::start(config, security()).unwrap();
    let (mut socket, _) = listener.accept().await.unwrap();
    let spec = Spec::builtin("cups-host").unwrap();

    // Sign-on first, answered by hand.
    let sign_on = read_frame(&mut socket).await;
    let decoded = spec.decode(&sign_on).unwrap();
    assert_eq!(decoded.mti(), "0800");
    assert_eq!(decoded.str(70), Some("001"));
    assert!(decoded.mac().is_none(), "network management carries no MAC");
    let mut answer = decoded.to_builder();
    answer.set_mti("0810").unwrap().set_str(39, "00").unwrap();
    let mut bytes = Vec::new();
    answer.encode_into(&mut bytes).unwrap();
    write_frame(&mut socket, &bytes).await;
    assert!(link.wait_signed_on(1, Duration::from_secs(20)).await);

    let request = IsoMessage::new("0200")
        .with(3, "000000")
        .with(4, "000000002372")
        .with(41, "12345678")
        .with(49, "156");
    let pending = {
        let link = link.clone();
        tokio::spawn(async move { link.request(request, Duration::from_secs(20)).await })
    };
    let frame = read_frame(&mut socket).await;
    // The 46-byte header: length byte, total length = the frame, IDs from the configuration.
    assert_eq!(frame[0], 46);
    assert_eq!(
        std::str::from_utf8(&frame[2..6]).unwrap(),
        format!("{:04}", frame.len())
    );
    assert_eq!(&frame[6..17], b"00010000   ");
    assert_eq!(&frame[17..28], b"48020000   ");
    let decoded = spec.decode(&frame).unwrap();
    assert_eq!(decoded.mti(), "0200");
    assert_eq!(decoded.str(11).map(str::len), Some(6));
    assert_eq!(decoded.str(7).map(str::len), Some(10));
    let mac = hex::encode_upper(decoded.raw(128).unwrap());
    let covered = decoded.mac_input().unwrap();
    assert_eq!(&covered[..4], b"0200");
    assert_eq!(
        psec_retail_mac("54B9D3620807D5E9D0C7042CF85D8C3E", covered),
        mac
    );
    pending.abort();
}

#[derive(serde::Deserialize)]
struct KeyChange {
    pin_key_kcv: String,
    mac_key_kcv: String,
    field_48: String,
    field_48_bad_mac_kcv: String,
}

fn fixture() -> KeyChange {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/upstream/key_change.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

async fn kcv(security: &Security, label: &str) -> String {
    hex::encode_upper(security.find_key(label.into()).await.unwrap().kcv)
}

#[tokio::test]
async fn key_change_worked_example_imports_and_a_bad_check_value_changes_nothing() {
    let fixture = fixture();
    let labels = (Some("zpk/upstream"), Some("zak/upstream"));

    let security = security();
    let before = (
        kcv(&security, "zpk/upstream").await,
        kcv(&security, "zak/upstream").await,
    );
    let bad = key_exchange::decode(fixture.field_48_bad_mac_kcv.as_bytes()).unwrap();
    let code = key_exchange::import(&security, "zmk/upstream", labels, &bad).await;
    assert_eq!(code, key_exchange::KCV_MISMATCH);
    assert_eq!(kcv(&security, "zpk/upstream").await, before.0);
    assert_eq!(kcv(&security, "zak/upstream").await, before.1);

    let good = key_exchange::decode(fixture.field_48.as_bytes()).unwrap();
    assert_eq!(key_exchange::encode(&good), fixture.field_48);
    let code = key_exchange::import(&security, "zmk/upstream", labels, &good).await;
    assert_eq!(code, "00");
    // The module reports the 3-byte X9.24 check value: the fixture's first 3 bytes.
    assert_eq!(
        kcv(&security, "zpk/upstream").await,
        fixture.pin_key_kcv[..6]
    );
    assert_eq!(
        kcv(&security, "zak/upstream").await,
        fixture.mac_key_kcv[..6]
    );
    assert!(
        security
            .find_key("zak/upstream.staged".into())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn garbage_from_the_host_is_unmatched_not_fatal() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = HostConfig::new(
        "raw",
        vec![listener.local_addr().unwrap().to_string()],
        "cups-host",
    );
    config.connections = 1;
    let (link, mut unmatched) = HostLink::start(config, security()).unwrap();
    let (mut socket, _) = listener.accept().await.unwrap();
    let spec = Spec::builtin("cups-host").unwrap();
    let sign_on = read_frame(&mut socket).await;
    // Junk first: a frame too short for the header, then one whose MTI is not digits.
    write_frame(&mut socket, b"garbage").await;
    let mut junk = sign_on.clone();
    junk[46..50].copy_from_slice(b"X8Y0");
    write_frame(&mut socket, &junk).await;
    for _ in 0..2 {
        let item = tokio::time::timeout(Duration::from_secs(20), unmatched.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            item.reason,
            posbridge::upstream::UnmatchedReason::Undecodable
        );
    }
    // The connection survived: the real answer still signs it on.
    let mut answer = spec.decode(&sign_on).unwrap().to_builder();
    answer.set_mti("0810").unwrap().set_str(39, "00").unwrap();
    let mut bytes = Vec::new();
    answer.encode_into(&mut bytes).unwrap();
    write_frame(&mut socket, &bytes).await;
    assert!(link.wait_signed_on(1, Duration::from_secs(20)).await);
}

#[tokio::test]
async fn garbage_to_the_sim_host_is_ignored() {
    use posbridge_sim::host::{SimHost, SimHostConfig};
    let (addr, host) = SimHost::start(SimHostConfig::default()).await.unwrap();
    let mut socket = TcpStream::connect(addr).await.unwrap();
    write_frame(&mut socket, b"garbage").await;
    write_frame(&mut socket, &[0x2E; 60]).await;
    let mut config = HostConfig::new("after-garbage", vec![addr.to_string()], "cups-host");
    config.connections = 1;
    config.mac_key = Some("zak/upstream".into());
    let (link, _unmatched) = HostLink::start(config, security()).unwrap();
    assert!(link.wait_signed_on(1, Duration::from_secs(20)).await);
    let answer = link
        .request(
            IsoMessage::new("0200")
                .with(2, "6222021234567890123")
                .with(3, "000000")
                .with(4, "000000000100")
                .with(41, "12345678"),
            Duration::from_secs(20),
        )
        .await
        .unwrap();
    assert_eq!(answer.response_code(), Some("00"));
    assert_eq!(host.ledger().len(), 1);
}
