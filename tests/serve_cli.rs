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

/// Regression (scale-out issue): nothing stopped two processes from opening one SQLite journal
/// (the reversal worker then sends each reversal from both). The second `posbridge serve` on the
/// same file is refused with a clear message while the first runs.
#[test]
fn a_second_process_on_one_sqlite_journal_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let serve = || {
        Command::new(posbridge_bin())
            .arg("serve")
            .current_dir(dir.path())
            .env("POSBRIDGE__JOURNAL__SQLITE_PATH", "shared.sqlite")
            .env("POSBRIDGE__TERMINAL__LISTEN", "127.0.0.1:0")
            .env("POSBRIDGE__WALLET_API__LISTEN", "127.0.0.1:0")
            .env("POSBRIDGE__METRICS__LISTEN", "127.0.0.1:0")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut first = serve();
    let stderr = first.stderr.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    let serving = lines
        .by_ref()
        .take(40)
        .any(|line| line.unwrap().contains("posbridge serving"));
    assert!(serving, "the first gateway did not start");
    let second = serve().wait_with_output().unwrap();
    let _ = first.kill();
    let _ = first.wait();
    assert!(!second.status.success(), "the second gateway started");
    let text = String::from_utf8_lossy(&second.stderr);
    assert!(
        text.contains("in use by another posbridge process"),
        "{text}"
    );
}
