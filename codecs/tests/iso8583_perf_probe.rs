//! A quick timing probe of decode and encode (the criterion benchmark in `benches/` is the
//! reference; this one runs in seconds). Ignored by default because timings mean nothing in a
//! debug build: `cargo test --release -p posbridge-codecs --test iso8583_perf_probe -- --ignored
//! --nocapture`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::time::Instant;

use posbridge_codecs::{Spec, decode, from_hex};

fn fixture(path: &str) -> Vec<u8> {
    let p = format!("{}/../fixtures/iso8583/{path}", env!("CARGO_MANIFEST_DIR"));
    from_hex(std::fs::read_to_string(p).unwrap().trim()).unwrap()
}

/// Best of several rounds: on a shared machine the minimum is the figure least disturbed by
/// other processes.
fn time(label: &str, iterations: u32, mut f: impl FnMut()) {
    let mut best = f64::MAX;
    for _ in 0..7 {
        let start = Instant::now();
        for _ in 0..iterations {
            f();
        }
        best = best.min(start.elapsed().as_nanos() as f64 / f64::from(iterations));
    }
    println!("{label:<40} {best:>8.1} ns");
}

#[test]
#[ignore = "timing; run in release"]
fn probe() {
    for (dialect, path) in [
        ("iso87ascii", "iso87ascii/purchase-0200.hex"),
        ("cups-pos", "cups-pos/reversal-0400.hex"),
        ("cups-host", "cups-host/purchase-0200.hex"),
    ] {
        let spec = Spec::builtin(dialect).unwrap();
        let bytes = fixture(path);
        time(&format!("decode {path}"), 200_000, || {
            let m = decode(&spec, black_box(&bytes)).unwrap();
            black_box(m.raw(11));
        });
        let msg = decode(&spec, &bytes).unwrap();
        let builder = msg.to_builder();
        let mut buf = Vec::with_capacity(1024);
        time(&format!("encode {path}"), 200_000, || {
            buf.clear();
            black_box(builder.encode_into(&mut buf).unwrap());
        });
        let values: Vec<(u16, Vec<u8>)> = msg
            .fields()
            .map(|f| (f.number(), f.value().into_owned()))
            .collect();
        let mut reused = spec.builder("0200").unwrap();
        time(&format!("set+encode {path}"), 200_000, || {
            reused.clear("0200").unwrap();
            for (n, v) in &values {
                reused.set(*n, v.as_slice()).unwrap();
            }
            buf.clear();
            black_box(reused.encode_into(&mut buf).unwrap());
        });
    }
}
