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
    let pan = posbridge_sim::demo::PAN;
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
    assert!(!stdout.contains(posbridge_sim::demo::PAN));
}
