//! The payShield link's behaviour a gateway relies on, against scripted peers on loopback: a
//! connection the HSM closed while idle is replaced without the caller noticing; a command the
//! HSM does not answer fails after the read timeout and its connection is never reused.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use posbridge_hsm::{HsmConfig, HsmError};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

const HEADER: &[u8] = b"HDR1";

fn config(address: std::net::SocketAddr, dir: &tempfile::TempDir) -> HsmConfig {
    HsmConfig::Payshield {
        address: address.to_string(),
        header: String::from_utf8(HEADER.to_vec()).unwrap(),
        key_store: dir.path().join("keys.toml"),
        pool_size: 1,
        connect_timeout_ms: 1_000,
        read_timeout_ms: 300,
        encrypted_pin_length: 13,
        key_types: Default::default(),
        aes_keys: None,
    }
}

/// Reads one frame; false at end of stream.
fn read_frame(stream: &mut TcpStream) -> bool {
    let mut prefix = [0u8; 2];
    if stream.read_exact(&mut prefix).is_err() {
        return false;
    }
    let mut body = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
    stream.read_exact(&mut body).is_ok()
}

fn answer_nc(stream: &mut TcpStream) {
    let body = [HEADER, b"ND00", b"0123456789ABCDEF", b"0007-E000"].concat();
    let mut frame = u16::try_from(body.len()).unwrap().to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    stream.write_all(&frame).unwrap();
}

#[test]
fn a_connection_closed_while_idle_is_replaced_transparently() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        // The first connection answers open()'s NC, then the "HSM" closes it.
        let (mut first, _) = listener.accept().unwrap();
        assert!(read_frame(&mut first));
        answer_nc(&mut first);
        drop(first);
        // The client notices only when it uses the pooled connection again, and reconnects.
        let (mut second, _) = listener.accept().unwrap();
        assert!(read_frame(&mut second));
        answer_nc(&mut second);
    });
    let dir = tempfile::tempdir().unwrap();
    let module = posbridge_hsm::open_payshield(&config(address, &dir)).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let diagnostics = module.diagnostics().unwrap();
    assert_eq!(diagnostics.firmware, "0007-E000");
    server.join().unwrap();
}

#[test]
fn an_unanswered_command_times_out_and_its_connection_is_not_reused() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut first, _) = listener.accept().unwrap();
        assert!(read_frame(&mut first));
        answer_nc(&mut first);
        // The next command gets no answer; the client gives up after its read timeout.
        assert!(read_frame(&mut first));
        // A late answer on that connection must never be read as the next command's answer:
        // the client opens a new connection for it.
        let (mut second, _) = listener.accept().unwrap();
        answer_nc(&mut first);
        assert!(read_frame(&mut second));
        answer_nc(&mut second);
    });
    let dir = tempfile::tempdir().unwrap();
    let module = posbridge_hsm::open_payshield(&config(address, &dir)).unwrap();
    let started = Instant::now();
    let error = module.diagnostics().unwrap_err();
    assert!(matches!(error, HsmError::Link(_)), "{error:?}");
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(module.diagnostics().unwrap().firmware, "0007-E000");
    server.join().unwrap();
}
