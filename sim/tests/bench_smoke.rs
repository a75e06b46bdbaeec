//! `posbridge bench` as an operator runs it: a short spawned run on SQLite and on PostgreSQL
//! must complete exactly the sales asked for, report them in the documented JSON shape, and
//! never write a payer's card number or PIN to its logs. Counts only: no timing assertions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

// The gateway's test set-up (journals that clean up after themselves), shared rather than copied.
#[path = "../../tests/common/mod.rs"]
mod common;

use common::{Backend, TestJournal};
use std::path::Path;
use std::process::{Command, Output};

fn config_file(dir: &Path, journal: &TestJournal) -> std::path::PathBuf {
    let mut text = String::from("[journal]\n");
    match &journal.config.url {
        Some(url) => {
            text += &format!(
                "url = {url:?}\nschema = {:?}\npool_size = {}\n",
                journal.config.schema, journal.config.pool_size
            );
        }
        None => text += &format!("sqlite_path = {:?}\n", journal.config.sqlite_path),
    }
    let path = dir.join("posbridge.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `posbridge bench --spawn --config <config> --terminals 2 --json <args>`, which must succeed.
fn run_bench(config: &Path, args: &[&str], log_level: &str) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_posbridge"))
        .args(["bench", "--spawn", "--config"])
        .arg(config)
        .args(["--terminals", "2", "--json"])
        .args(args)
        .env("RUST_LOG", log_level)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn bench(config: &Path, extra: &[&str], log_level: &str) -> Output {
    run_bench(config, &[&["--count", "20"], extra].concat(), log_level)
}

fn report(output: &Output) -> serde_json::Value {
    let stdout = String::from_utf8(output.stdout.clone()).unwrap();
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "--json prints exactly one object: {stdout}");
    serde_json::from_str(lines[0]).unwrap()
}

fn check_counts(report: &serde_json::Value, journal: &str) {
    assert!(
        report["mode"].as_str().unwrap().starts_with("spawn"),
        "{report}"
    );
    assert_eq!(report["journal"], journal);
    assert_eq!(report["security_module"], "software");
    assert_eq!(report["terminals"], 2);
    assert_eq!(report["bound"]["count"], 20.0);
    assert_eq!(report["attempted"], 20, "{report}");
    assert_eq!(report["completed"], 20, "{report}");
    assert_eq!(report["errors"], serde_json::json!({}), "{report}");
    assert!(report["sales_per_s"].as_f64().unwrap() > 0.0);
    // A count has no steady part: its rate is over the whole run.
    assert!(report["steady_s"].is_null(), "{report}");
    assert_eq!(report["sales_per_s"], report["sales_per_s_overall"]);
    for step in ["order", "resolve", "pay", "result", "sale"] {
        let latency = &report["latency"][step];
        assert_eq!(latency["count"], 20, "{step}: {report}");
        let (p50, p99, max) = (
            latency["p50_ms"].as_f64().unwrap(),
            latency["p99_ms"].as_f64().unwrap(),
            latency["max_ms"].as_f64().unwrap(),
        );
        assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{step}: {latency}");
    }
}

#[test]
fn smoke_run_on_sqlite_completes_every_sale() {
    let journal = TestJournal::new(Backend::Sqlite);
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), &journal);
    let output = bench(&config, &[], "warn");
    let report = report(&output);
    check_counts(&report, "sqlite");
    assert!(report["ceiling"].is_null() && report["ceiling_ratio"].is_null());
    // A second run on the same journal reuses the bench's registrations and a fresh batch.
    check_counts(&self::report(&bench(&config, &[], "warn")), "sqlite");
}

/// A timed run reports its rate over the steady part of the duration (from a fifth of it to its
/// end), and beside it the rate over the whole run, drain included.
#[test]
fn a_timed_run_reports_its_steady_part() {
    let journal = TestJournal::new(Backend::Sqlite);
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), &journal);
    let output = run_bench(&config, &["--duration", "2s"], "warn");
    let report = report(&output);
    assert_eq!(report["bound"]["duration_s"], 2.0);
    assert_eq!(report["steady_s"], 1.6, "{report}");
    assert_eq!(report["errors"], serde_json::json!({}), "{report}");
    let completed = report["completed"].as_f64().unwrap();
    assert!(completed > 0.0, "{report}");
    let overall = completed / report["elapsed_s"].as_f64().unwrap();
    assert!((report["sales_per_s_overall"].as_f64().unwrap() - overall).abs() < 1e-9);
    // Timed are only the sales started in the steady part: not the first ones (started at 0 s).
    let timed = report["latency"]["sale"]["count"].as_f64().unwrap();
    assert!(0.0 < timed && timed < completed, "{report}");
}

/// With a rate, the ceiling's pgbench is held to the same rate and its two commits' percentiles
/// stand beside the sale's: no ratio then (both run at the rate), but what the sale adds at p99.
#[test]
fn a_rate_with_the_ceiling_holds_pgbench_to_that_rate() {
    let journal = TestJournal::new(Backend::Postgres);
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), &journal);
    let args = ["--duration", "5s", "--rate", "20", "--ceiling"];
    let output = run_bench(&config, &args, "warn");
    let report = report(&output);
    assert_eq!(report["errors"], serde_json::json!({}), "{report}");
    let pgbench = &report["ceiling_pgbench"];
    assert_eq!(pgbench["rate"], 20.0, "{report}");
    let latency = &pgbench["latency"];
    assert!(latency["count"].as_u64().unwrap() > 0, "{report}");
    assert!(latency["p50_ms"].as_f64().unwrap() <= latency["p99_ms"].as_f64().unwrap());
    assert!(report["ceiling_pgbench_ratio"].is_null(), "{report}");
    let over = report["sale_p99_over_pgbench_ms"].as_f64().unwrap();
    let expected =
        report["latency"]["sale"]["p99_ms"].as_f64().unwrap() - latency["p99_ms"].as_f64().unwrap();
    assert!((over - expected).abs() < 1e-9, "{report}");
}

#[test]
fn smoke_run_on_postgres_with_the_ceiling() {
    let journal = TestJournal::new(Backend::Postgres);
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), &journal);
    let output = bench(&config, &["--ceiling"], "warn");
    let report = report(&output);
    check_counts(&report, "postgres");
    let ceiling = &report["ceiling"];
    assert_eq!(ceiling["backend"], "postgres");
    assert_eq!(ceiling["commits_per_sale"], 2);
    assert_eq!(ceiling["sales"], 20, "same count as the load: {ceiling}");
    assert_eq!(
        ceiling["connections"], 2,
        "one per terminal, within the pool"
    );
    assert!(ceiling["sales_per_s"].as_f64().unwrap() > 0.0);
    let ratio = report["ceiling_ratio"].as_f64().unwrap();
    let expected =
        report["sales_per_s"].as_f64().unwrap() / ceiling["sales_per_s"].as_f64().unwrap();
    assert!((ratio - expected).abs() < 1e-9);
    // pgbench as fast as it goes: a ratio, and no latency comparison.
    let pgbench = &report["ceiling_pgbench"];
    assert!(
        pgbench["rate"].is_null() && pgbench["latency"].is_null(),
        "{report}"
    );
    let ratio = report["ceiling_pgbench_ratio"].as_f64().unwrap();
    let expected =
        report["sales_per_s"].as_f64().unwrap() / pgbench["sales_per_s"].as_f64().unwrap();
    assert!((ratio - expected).abs() < 1e-9);
    assert!(report["sale_p99_over_pgbench_ms"].is_null(), "{report}");
}

#[test]
fn no_log_line_of_a_bench_run_carries_a_card_number_or_pin() {
    let journal = TestJournal::new(Backend::Sqlite);
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), &journal);
    let output = bench(&config, &[], "debug");
    check_counts(&report(&output), "sqlite");
    let logs = String::from_utf8(output.stderr).unwrap();
    // The capture is real: debug lines of the terminal traffic are there.
    assert!(logs.contains("DEBUG"), "no debug lines captured:\n{logs}");
    assert!(
        logs.contains("90000001"),
        "no terminal traffic logged:\n{logs}"
    );
    let pans = [
        posbridge_sim::bench::seed::pan(0),
        posbridge_sim::bench::seed::pan(1),
    ];
    let pin = posbridge_sim::bench::seed::PIN;
    for line in logs.lines() {
        for pan in &pans {
            assert!(!line.contains(pan.as_str()), "PAN in a log line: {line}");
        }
        // A PIN would show as a number of its own (`pin=4321`, `"4321"`); digits inside
        // timestamps and hex identifiers are not it.
        assert!(
            !line
                .split(|c: char| !c.is_ascii_alphanumeric())
                .any(|token| token == pin),
            "PIN in a log line: {line}"
        );
    }
}

#[test]
fn smoke_run_through_the_simulated_host() {
    let journal = TestJournal::new(Backend::Sqlite);
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), &journal);
    let report = report(&bench(&config, &["--five-roles"], "warn"));
    assert_eq!(report["mode"], "spawn-five-roles");
    check_counts(&report, "sqlite");
}
