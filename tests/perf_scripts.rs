//! The performance trend scripts: `scripts/perf-plot` turns `posbridge bench --json` reports
//! into the throughput / p99 chart of docs/performance.md. Here on three small reports shaped
//! like the bench's (the bench itself runs in `bench_smoke`); the figures in the chart must be
//! the reports' own.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

fn python() -> String {
    std::env::var("POSBRIDGE_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Writes one `bench --json` report per (terminals, sales/s, sale p99 ms) and plots them all.
fn plot(runs: &[(u32, f64, f64)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for (i, (terminals, rate, p99)) in runs.iter().enumerate() {
        let report = serde_json::json!({
            "mode": "spawn", "journal": "postgres", "security_module": "software",
            "terminals": terminals, "sales_per_s": rate,
            "latency": {"sale": {"count": 10, "p50_ms": 1.0, "p95_ms": 2.0, "p99_ms": p99, "max_ms": 3.0}},
        });
        let path = dir.path().join(format!("r{i}.json"));
        std::fs::write(&path, report.to_string()).unwrap();
        paths.push(path);
    }
    let out = dir.path().join("chart.svg");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/perf-plot");
    let run = Command::new(python())
        .arg(script)
        .args(&paths)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    std::fs::read_to_string(&out).unwrap()
}

#[test]
fn perf_plot_draws_each_report_as_a_point_of_both_charts() {
    let svg = plot(&[(64, 455.5, 138.25), (16, 531.0, 51.0), (256, 475.0, 530.5)]);
    assert!(svg.starts_with("<svg"), "{svg}");
    assert_eq!(svg.matches("<circle").count(), 6, "three points per chart");
    for figure in ["531.0", "455.5", "475.0", "51.0", "138.2", "530.5"] {
        assert!(
            svg.contains(&format!(">{figure}<")),
            "{figure} missing: {svg}"
        );
    }
    // Terminals in increasing order along the x axis, whatever the order of the files.
    let at = |label: &str| svg.find(&format!(">{label}</text>")).unwrap();
    assert!(at("16") < at("64") && at("64") < at("256"));
    assert!(svg.contains("journal postgres, security module software"));
}

#[test]
fn perf_plot_draws_the_median_of_several_runs_of_the_same_terminals() {
    let svg = plot(&[
        (16, 500.0, 40.0),
        (64, 480.0, 200.0),
        (16, 700.0, 60.0),
        (64, 300.0, 100.0),
        (16, 600.0, 50.0),
        (64, 490.0, 300.0),
    ]);
    assert_eq!(svg.matches("<circle").count(), 4, "two points per chart");
    for figure in ["600.0", "480.0", "50.0", "200.0"] {
        assert!(
            svg.contains(&format!(">{figure}<")),
            "{figure} missing: {svg}"
        );
    }
    assert!(svg.contains("median of 3 runs per point"), "{svg}");
}
