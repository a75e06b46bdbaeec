//! The docs proven by an independent implementation: a terminal, a wallet app and an acquirer
//! host written in Python from the interface docs alone (scripts/interop/vendor, pyiso8583 with
//! its own field specs, not posbridge's codec), run against `posbridge serve` in both
//! deployments: way (a) and way (b) sales, a static code with its webhook, PIN retries and locks,
//! voids, refunds, repeats, settlement, and five roles with forwarded sales, reversals, refund
//! advices, key changes, a late approval and a crash. Every check prints one JSON line; this
//! test fails on any failed check and shows them. Its findings on the docs are in
//! scripts/interop/vendor/GAPS.md.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;

fn python() -> PathBuf {
    match std::env::var_os("POSBRIDGE_TEST_PYTHON") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv-test/bin/python"),
    }
}

#[test]
fn an_independent_terminal_wallet_and_host_written_from_the_docs_pass_every_check() {
    let python = python();
    assert!(
        python.exists(),
        "{} missing: run ./scripts/test, or set POSBRIDGE_TEST_PYTHON",
        python.display()
    );
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(&python)
        .arg(root.join("scripts/interop/vendor/run.py"))
        .arg("--posbridge")
        .arg(common::posbridge_bin())
        .current_dir(&root)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let failed: Vec<&str> = stdout
        .lines()
        .filter(|line| line.contains("\"ok\": false"))
        .collect();
    let summary = stdout
        .lines()
        .rev()
        .find(|line| line.contains("\"passed\""))
        .unwrap_or("no summary line");
    println!("{summary}");
    assert!(
        out.status.success() && failed.is_empty(),
        "{summary}\nfailed checks:\n{}\nstderr:\n{}",
        failed.join("\n"),
        String::from_utf8_lossy(&out.stderr)
    );
}
