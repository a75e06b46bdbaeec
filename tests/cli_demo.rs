//! The README's first command: `posbridge demo` on a machine with nothing installed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

#[test]
fn demo_pays_with_a_pin_and_prints_both_receipts_without_leaking_the_pan() {
    let output = Command::new(env!("CARGO_BIN_EXE_posbridge"))
        .arg("demo")
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("[phone] S108 00 APPROVED"), "{stdout}");
    assert!(stdout.contains("RESULT        00 APPROVED"), "{stdout}");
    assert!(
        stdout.contains("CARD NO.      622202*********0123"),
        "{stdout}"
    );
    assert!(stdout.contains("VOUCHER NO. 000102"), "{stdout}");
    let pan = posbridge::demo::PAN;
    assert!(
        !stdout.contains(pan) && !stderr.contains(pan),
        "full PAN in the demo's output"
    );
}

#[test]
fn five_roles_demo_goes_through_the_simulated_host() {
    let output = Command::new(env!("CARGO_BIN_EXE_posbridge"))
        .args(["demo", "--five-roles"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("approved by the host"), "{stdout}");
    assert!(
        stdout.contains("[host] ledger: 622202*********0123 2372"),
        "{stdout}"
    );
    assert!(!stdout.contains(posbridge::demo::PAN));
}

#[test]
fn serve_without_a_config_file_says_it_runs_on_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_posbridge"))
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
    assert!(serving, "{text}");
}

#[test]
fn config_check_names_the_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[gateway]\norder_ttl_secs = 0\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_posbridge"))
        .args(["config", "check"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("gateway.order_ttl_secs"), "{stderr}");
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/posbridge.example.toml");
    let output = Command::new(env!("CARGO_BIN_EXE_posbridge"))
        .args(["config", "check", example])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
