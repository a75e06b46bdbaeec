//! The gateway's own commands as an operator first meets them: `posbridge serve` with no
//! configuration file, and `posbridge config check`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::posbridge_bin;
use std::process::Command;

#[test]
fn serve_without_a_config_file_says_it_runs_on_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(posbridge_bin())
        .arg("serve")
        .current_dir(dir.path())
        .env("POSBRIDGE__TERMINAL__LISTEN", "127.0.0.1:0")
        .env("POSBRIDGE__WALLET_API__LISTEN", "127.0.0.1:0")
        .env("POSBRIDGE__METRICS__LISTEN", "127.0.0.1:0")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    let mut seen = Vec::new();
    let mut serving = false;
    for line in lines.by_ref().take(20) {
        let line = line.unwrap();
        serving |= line.contains("posbridge serving");
        seen.push(line);
        if serving {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = seen.join("\n");
    assert!(text.contains("running on the embedded defaults"), "{text}");
    assert!(
        text.contains("DEVELOPMENT MODE"),
        "says loudly it is development: {text}"
    );
    assert!(serving, "{text}");
}

#[test]
fn production_mode_refuses_the_embedded_defaults_naming_the_keys() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(posbridge_bin())
        .arg("serve")
        .current_dir(dir.path())
        .env("POSBRIDGE__GATEWAY__MODE", "production")
        .env("POSBRIDGE__TERMINAL__LISTEN", "127.0.0.1:0")
        .env("POSBRIDGE__WALLET_API__LISTEN", "0.0.0.0:0")
        .env("POSBRIDGE__METRICS__LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    for key in ["hsm.backend", "published demo key", "wallet_api.tls_cert"] {
        assert!(stderr.contains(key), "{key}: {stderr}");
    }
    let seed = Command::new(posbridge_bin())
        .args(["admin", "seed-demo"])
        .current_dir(dir.path())
        .env("POSBRIDGE__GATEWAY__MODE", "production")
        .output()
        .unwrap();
    assert!(!seed.status.success(), "seed-demo is for development only");
}

#[test]
fn config_check_names_the_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[gateway]\norder_ttl_secs = 0\n").unwrap();
    let output = Command::new(posbridge_bin())
        .args(["config", "check"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("gateway.order_ttl_secs"), "{stderr}");
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/posbridge.example.toml");
    let output = Command::new(posbridge_bin())
        .args(["config", "check", example])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
