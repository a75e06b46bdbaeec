//! Decode and encode of a reference 0200 (21 fields: PAN, processing code, amount, dates, STAN,
//! expiry, entry mode, track 2, RRN, auth code, TID, MID, name/location, currency, PIN block,
//! field 55 TLV, MAC) in `iso87ascii` and `cups-pos`, and the same `iso87ascii` message through the
//! other Rust ISO 8583 codecs on crates.io, side by side in one run:
//! - `iso_8583_rs` 0.2 (YAML-spec-driven, zero-copy): given a spec equal to iso87ascii for these
//!   fields, it produces byte-identical messages (checked before measuring);
//! - `iso8583_rs` 0.1.10: its bitmap is always binary, so its message is the same except for an
//!   8-byte binary bitmap instead of 16 hex characters (it cannot write a hex-text bitmap).
//!
//! Three operations per codec: `decode` (parse and validate the whole message), `encode` (write an
//! already built message into a reused buffer) and `build+encode` (set every field from its value,
//! then encode). posbridge's builder checks each value when it is set and writes the wire form
//! when it encodes, like the other codecs, so `encode` includes the conversions (binary values to
//! hex text for fields 52, 55 and 64, which the other codecs are given as text already);
//! `build+encode` is the like-for-like comparison of encoding work.
//!
//! Before criterion runs, the bench counts heap allocations of one decode and one encode per
//! codec with a counting global allocator (`stats_alloc`: the workspace forbids `unsafe`, which a
//! hand-written `GlobalAlloc` needs) and prints a table.
//!
//! Run: `cargo bench -p posbridge-codecs --bench iso8583`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::alloc::System;
use std::hint::black_box;
use std::path::PathBuf;
use std::process::Command;

use criterion::{Criterion, Throughput};
use posbridge_codecs::{MessageBuilder, Spec, decode};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// EMV data of a contact chip sale (BER-TLV): cryptogram, CID, IAD, unpredictable number, ATC,
/// TVR, date, type, amount, currency, AIP, country, other amount, terminal capabilities, CVM
/// results, terminal type, IFD serial, AID, application version.
const FIELD55_HEX: &str = concat!(
    "9F2608A1B2C3D4E5F60718",
    "9F270180",
    "9F101307010103A0A802010A0100000000004B2C3D4E",
    "9F3704CAFEBABE",
    "9F360200A1",
    "950500800480E0",
    "9A03261126",
    "9C0100",
    "9F02060000000123455F2A020156",
    "82027C00",
    "9F1A020156",
    "9F0306000000000000",
    "9F3303E0F1C8",
    "9F3403420300",
    "9F350122",
    "9F1E083132333435363738",
    "8408A000000333010101",
    "9F090200A0",
);

/// The reference 0200 in iso87ascii, as (field, text) in field order.
fn iso87ascii_fields() -> Vec<(u16, String)> {
    [
        (2, "6222021234567890123"),
        (3, "000000"),
        (4, "000000012345"),
        (7, "1126050712"),
        (11, "123456"),
        (12, "130712"),
        (13, "1126"),
        (14, "2812"),
        (22, "051"),
        (23, "001"),
        (25, "00"),
        (35, "6222021234567890123=28122011143804400"),
        (37, "633012345678"),
        (38, "AB1234"),
        (41, "TERM0001"),
        (42, "MERCHANT0000001"),
        (43, "POSBRIDGE TEST SHOP      SHANGHAI     CN"),
        (49, "156"),
        (52, "1F2E3D4C5B6A7988"),
        (55, FIELD55_HEX),
        (64, "0A1B2C3D4E5F6071"),
    ]
    .into_iter()
    .map(|(n, v)| (n, v.to_owned()))
    .collect()
}

/// The same sale in cups-pos: no field 7 and 43 there; 60 (type, batch, NMI code) and 63
/// (operator) instead, as a UnionPay terminal sends them.
fn cups_pos_fields() -> Vec<(u16, String)> {
    let mut fields: Vec<(u16, String)> = iso87ascii_fields()
        .into_iter()
        .filter(|(n, _)| *n != 7 && *n != 43)
        .collect();
    fields.push((60, "22000001000".to_owned()));
    fields.push((63, "001".to_owned()));
    fields.sort_by_key(|(n, _)| *n);
    fields
}

fn builder<'a>(
    spec: &'a Spec,
    header: Option<&[u8]>,
    fields: &'a [(u16, String)],
) -> MessageBuilder<'a> {
    let mut message = spec.builder("0200").unwrap();
    if let Some(header) = header {
        message.set_header(header.to_vec()).unwrap();
    }
    for (n, text) in fields {
        message.set_text(*n, text).unwrap();
    }
    message
}

/// Field values as the wire wants them (`set` takes values, not text), so the per-iteration
/// build measures the codec, not hex parsing.
fn values(spec: &Spec, fields: &[(u16, String)]) -> Vec<(u16, Vec<u8>)> {
    let message = builder(spec, None, fields);
    fields
        .iter()
        .map(|(n, _)| (*n, message.value(*n).unwrap().to_vec()))
        .collect()
}

const CUPS_HEADER: [u8; 11] = [
    0x60, 0x00, 0x03, 0x00, 0x00, 0x60, 0x31, 0x00, 0x31, 0x13, 0x01,
];

// --- iso_8583_rs 0.2 -----------------------------------------------------------------------------

fn other_spec_v02() -> iso_8583_rs::CompiledSpec {
    use iso_8583_rs::specfile::{FieldDescription, Spec as YamlSpec};
    let field = |content: &str, len_type: &str, max_len| FieldDescription {
        content_type: content.into(),
        len_type: len_type.into(),
        max_len,
        min_len: 0,
        label: String::new(),
    };
    let fields = [
        (2, field("n", "llvar", 19)),
        (3, field("n", "fixed", 6)),
        (4, field("n", "fixed", 12)),
        (7, field("n", "fixed", 10)),
        (11, field("n", "fixed", 6)),
        (12, field("n", "fixed", 6)),
        (13, field("n", "fixed", 4)),
        (14, field("n", "fixed", 4)),
        (22, field("n", "fixed", 3)),
        (23, field("n", "fixed", 3)),
        (25, field("n", "fixed", 2)),
        (35, field("z", "llvar", 37)),
        (37, field("an", "fixed", 12)),
        (38, field("an", "fixed", 6)),
        (41, field("ans", "fixed", 8)),
        (42, field("ans", "fixed", 15)),
        (43, field("ans", "fixed", 40)),
        (49, field("n", "fixed", 3)),
        (52, field("an", "fixed", 16)),
        (55, field("an", "lllvar", 510)),
        (64, field("an", "fixed", 16)),
    ];
    iso_8583_rs::CompiledSpec::compile(&YamlSpec {
        fields: fields.into_iter().collect(),
    })
    .unwrap()
}

fn other_build_v02<'a>(
    spec: &'a iso_8583_rs::CompiledSpec,
    fields: &'a [(u16, String)],
) -> iso_8583_rs::Builder<'a> {
    let mut message = iso_8583_rs::Builder::new(spec, b"0200").unwrap();
    for (n, text) in fields {
        message.set(usize::from(*n), text.as_bytes()).unwrap();
    }
    message
}

// --- iso8583_rs 0.1.10 ---------------------------------------------------------------------------

/// iso8583_rs reads its one spec from the file named by SPEC_FILE when first used.
const SPEC_FILE_YAML: &str = include_str!("iso8583_rs_spec.yaml");

fn other_spec_v01() -> &'static iso8583_rs::iso8583::iso_spec::Spec {
    iso8583_rs::iso8583::iso_spec::spec("")
}

fn other_build_v01(fields: &[(u16, String)]) -> iso8583_rs::iso8583::iso_spec::IsoMsg {
    let spec = other_spec_v01();
    let segment = spec.get_message_from_header("0200").unwrap();
    let mut message = iso8583_rs::iso8583::iso_spec::new_msg(spec, segment);
    message.set("message_type", "0200").unwrap();
    for (n, text) in fields {
        message.set_on(u32::from(*n), text).unwrap();
    }
    message
}

/// iso8583_rs needs SPEC_FILE set before its spec is first read; the environment cannot be changed
/// safely inside a running process (and this crate forbids `unsafe`), so the bench re-runs itself
/// with the variable set.
fn ensure_spec_file() {
    if std::env::var_os("SPEC_FILE").is_some() {
        return;
    }
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("iso8583_rs_spec.yaml");
    std::fs::write(&path, SPEC_FILE_YAML).unwrap();
    let status = Command::new(std::env::current_exe().unwrap())
        .args(std::env::args_os().skip(1))
        .env("SPEC_FILE", &path)
        .status()
        .unwrap();
    std::process::exit(status.code().unwrap_or(1));
}

// --- allocation counts ---------------------------------------------------------------------------

/// Heap allocations made while `f` runs (its result is dropped only after counting).
fn allocations<R>(f: impl FnOnce() -> R) -> usize {
    let region = Region::new(GLOBAL);
    let result = black_box(f());
    let count = region.change().allocations;
    drop(result);
    count
}

struct Fixture {
    ascii: Spec,
    cups: Spec,
    ascii_fields: Vec<(u16, String)>,
    cups_fields: Vec<(u16, String)>,
    ascii_wire: Vec<u8>,
    cups_wire: Vec<u8>,
    v02: iso_8583_rs::CompiledSpec,
    v01_wire: Vec<u8>,
}

impl Fixture {
    fn new() -> Self {
        let ascii = Spec::builtin("iso87ascii").unwrap();
        let cups = Spec::builtin("cups-pos").unwrap();
        let ascii_fields = iso87ascii_fields();
        let cups_fields = cups_pos_fields();
        let ascii_wire = builder(&ascii, None, &ascii_fields).to_bytes().unwrap();
        let cups_wire = builder(&cups, Some(&CUPS_HEADER), &cups_fields)
            .to_bytes()
            .unwrap();
        let v02 = other_spec_v02();
        let mut v02_wire = Vec::new();
        other_build_v02(&v02, &ascii_fields).pack_into(&mut v02_wire);
        assert_eq!(
            String::from_utf8_lossy(&v02_wire),
            String::from_utf8_lossy(&ascii_wire),
            "iso_8583_rs and posbridge must encode the same iso87ascii message"
        );
        let v01_wire = other_build_v01(&ascii_fields).assemble().unwrap();
        // Same message but for the binary bitmap: 8 bytes where iso87ascii has 16 hex characters.
        assert_eq!(v01_wire.len() + 8, ascii_wire.len());
        assert_eq!(v01_wire[12..], ascii_wire[20..]);
        Fixture {
            ascii,
            cups,
            ascii_fields,
            cups_fields,
            ascii_wire,
            cups_wire,
            v02,
            v01_wire,
        }
    }
}

fn print_allocations(fx: &Fixture) {
    let ascii_values = values(&fx.ascii, &fx.ascii_fields);
    let cups_values = values(&fx.cups, &fx.cups_fields);
    let mut buf = Vec::with_capacity(1024);
    let row = |name: &str, decode: usize, encode: usize, build_encode: usize| {
        println!("{name:<36} {decode:>8} {encode:>20} {build_encode:>22}");
    };
    println!(
        "heap allocations per operation (reference 0200, {} bytes in iso87ascii)",
        fx.ascii_wire.len()
    );
    println!(
        "{:<36} {:>8} {:>20} {:>22}",
        "codec", "decode", "encode (reused buf)", "build+encode (reused)"
    );

    let ascii_msg = builder(&fx.ascii, None, &fx.ascii_fields);
    buf.clear();
    ascii_msg.encode_into(&mut buf).unwrap();
    row(
        "posbridge iso87ascii",
        allocations(|| decode(&fx.ascii, &fx.ascii_wire).unwrap()),
        allocations(|| {
            buf.clear();
            ascii_msg.encode_into(&mut buf).unwrap();
        }),
        allocations(|| {
            buf.clear();
            build_values(&fx.ascii, None, &ascii_values)
                .encode_into(&mut buf)
                .unwrap();
        }),
    );
    let cups_msg = builder(&fx.cups, Some(&CUPS_HEADER), &fx.cups_fields);
    row(
        "posbridge cups-pos",
        allocations(|| decode(&fx.cups, &fx.cups_wire).unwrap()),
        allocations(|| {
            buf.clear();
            cups_msg.encode_into(&mut buf).unwrap();
        }),
        allocations(|| {
            buf.clear();
            build_values(&fx.cups, Some(&CUPS_HEADER), &cups_values)
                .encode_into(&mut buf)
                .unwrap();
        }),
    );
    let mut reused = fx.ascii.builder("0200").unwrap();
    fill(&mut reused, &ascii_values);
    let reused_count = allocations(|| {
        buf.clear();
        fill(&mut reused, &ascii_values)
            .encode_into(&mut buf)
            .unwrap();
    });
    println!(
        "{:<36} {:>8} {:>20} {reused_count:>22}",
        "posbridge iso87ascii, reused builder", "-", "-"
    );
    let v02_msg = other_build_v02(&fx.v02, &fx.ascii_fields);
    row(
        "iso_8583_rs 0.2.2",
        allocations(|| iso_8583_rs::Message::parse(&fx.v02, &fx.ascii_wire).unwrap()),
        allocations(|| {
            buf.clear();
            v02_msg.pack_into(&mut buf);
        }),
        allocations(|| {
            buf.clear();
            other_build_v02(&fx.v02, &fx.ascii_fields).pack_into(&mut buf);
        }),
    );
    let v01_msg = other_build_v01(&fx.ascii_fields);
    let mut v01_input = fx.v01_wire.clone();
    row(
        "iso8583_rs 0.1.10 (own Vec)",
        allocations(|| other_spec_v01().parse(&mut v01_input).unwrap()),
        allocations(|| v01_msg.assemble().unwrap()),
        allocations(|| other_build_v01(&fx.ascii_fields).assemble().unwrap()),
    );
    println!();
}

/// Refills a reused builder (`clear` keeps its capacity) with the reference values.
fn fill<'b, 'a>(
    message: &'b mut MessageBuilder<'a>,
    values: &'a [(u16, Vec<u8>)],
) -> &'b mut MessageBuilder<'a> {
    message.clear("0200").unwrap();
    for (n, value) in values {
        message.set(*n, value.as_slice()).unwrap();
    }
    message
}

fn build_values<'a>(
    spec: &'a Spec,
    header: Option<&'a [u8]>,
    values: &'a [(u16, Vec<u8>)],
) -> MessageBuilder<'a> {
    let mut message = spec.builder("0200").unwrap();
    if let Some(header) = header {
        message.set_header(header).unwrap();
    }
    for (n, value) in values {
        message.set(*n, value.as_slice()).unwrap();
    }
    message
}

// --- timing --------------------------------------------------------------------------------------

fn bench_decode(c: &mut Criterion, fx: &Fixture) {
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(1));
    group.bench_function("posbridge iso87ascii", |b| {
        b.iter(|| black_box(decode(&fx.ascii, black_box(&fx.ascii_wire)).unwrap()).bitmap())
    });
    group.bench_function("posbridge cups-pos", |b| {
        b.iter(|| black_box(decode(&fx.cups, black_box(&fx.cups_wire)).unwrap()).bitmap())
    });
    group.bench_function("iso_8583_rs 0.2.2", |b| {
        b.iter(|| {
            black_box(iso_8583_rs::Message::parse(&fx.v02, black_box(&fx.ascii_wire)).unwrap())
                .bitmap
        })
    });
    let mut v01_input = fx.v01_wire.clone();
    let spec = other_spec_v01();
    group.bench_function("iso8583_rs 0.1.10", |b| {
        b.iter(|| {
            black_box(spec.parse(black_box(&mut v01_input)).unwrap())
                .fd_map
                .len()
        })
    });
    group.finish();
}

fn bench_encode(c: &mut Criterion, fx: &Fixture) {
    let ascii_values = values(&fx.ascii, &fx.ascii_fields);
    let cups_values = values(&fx.cups, &fx.cups_fields);
    let mut buf = Vec::with_capacity(1024);

    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(1));
    let ascii_msg = builder(&fx.ascii, None, &fx.ascii_fields);
    group.bench_function("posbridge iso87ascii", |b| {
        b.iter(|| {
            buf.clear();
            black_box(&ascii_msg).encode_into(&mut buf).unwrap();
            buf.len()
        })
    });
    let cups_msg = builder(&fx.cups, Some(&CUPS_HEADER), &fx.cups_fields);
    group.bench_function("posbridge cups-pos", |b| {
        b.iter(|| {
            buf.clear();
            black_box(&cups_msg).encode_into(&mut buf).unwrap();
            buf.len()
        })
    });
    let v02_msg = other_build_v02(&fx.v02, &fx.ascii_fields);
    group.bench_function("iso_8583_rs 0.2.2", |b| {
        b.iter(|| {
            buf.clear();
            black_box(&v02_msg).pack_into(&mut buf);
            buf.len()
        })
    });
    let v01_msg = other_build_v01(&fx.ascii_fields);
    group.bench_function("iso8583_rs 0.1.10", |b| {
        b.iter(|| black_box(&v01_msg).assemble().unwrap().len())
    });
    group.finish();

    let mut group = c.benchmark_group("build+encode");
    group.throughput(Throughput::Elements(1));
    group.bench_function("posbridge iso87ascii", |b| {
        b.iter(|| {
            buf.clear();
            build_values(&fx.ascii, None, black_box(&ascii_values))
                .encode_into(&mut buf)
                .unwrap();
            buf.len()
        })
    });
    let mut reused = fx.ascii.builder("0200").unwrap();
    group.bench_function("posbridge iso87ascii, reused builder", |b| {
        b.iter(|| {
            buf.clear();
            fill(&mut reused, black_box(&ascii_values))
                .encode_into(&mut buf)
                .unwrap();
            buf.len()
        })
    });
    group.bench_function("posbridge cups-pos", |b| {
        b.iter(|| {
            buf.clear();
            build_values(&fx.cups, Some(&CUPS_HEADER), black_box(&cups_values))
                .encode_into(&mut buf)
                .unwrap();
            buf.len()
        })
    });
    group.bench_function("iso_8583_rs 0.2.2", |b| {
        b.iter(|| {
            buf.clear();
            other_build_v02(&fx.v02, black_box(&fx.ascii_fields)).pack_into(&mut buf);
            buf.len()
        })
    });
    group.bench_function("iso8583_rs 0.1.10", |b| {
        b.iter(|| {
            other_build_v01(black_box(&fx.ascii_fields))
                .assemble()
                .unwrap()
                .len()
        })
    });
    group.finish();
}

/// One timed operation; returns something derived from its result so it is not optimised away.
type Op<'a> = Box<dyn FnMut() -> usize + 'a>;

/// Times every codec's decode and encode interleaved, round after round, so that on a shared
/// machine they all face the same load; prints the median and the best round per operation.
/// Criterion's figures that follow measure one codec after another.
fn print_side_by_side(fx: &Fixture) {
    const ROUNDS: usize = 25;
    const BATCH_NS: u128 = 4_000_000;
    let ascii_msg = builder(&fx.ascii, None, &fx.ascii_fields);
    let cups_msg = builder(&fx.cups, Some(&CUPS_HEADER), &fx.cups_fields);
    let v02_msg = other_build_v02(&fx.v02, &fx.ascii_fields);
    let v01_msg = other_build_v01(&fx.ascii_fields);
    let v01_spec = other_spec_v01();
    let mut v01_input = fx.v01_wire.clone();
    let (mut b1, mut b2, mut b3) = (
        Vec::with_capacity(1024),
        Vec::with_capacity(1024),
        Vec::with_capacity(1024),
    );
    let ascii_values = values(&fx.ascii, &fx.ascii_fields);
    let cups_values = values(&fx.cups, &fx.cups_fields);
    let mut reused = fx.ascii.builder("0200").unwrap();
    let mut reused_cups = fx.cups.builder("0200").unwrap();
    reused_cups.set_header(&CUPS_HEADER[..]).unwrap();
    let (mut b4, mut b5, mut b6, mut b7) = (
        Vec::with_capacity(1024),
        Vec::with_capacity(1024),
        Vec::with_capacity(1024),
        Vec::with_capacity(1024),
    );
    let mut ops: Vec<(&str, Op<'_>)> = vec![
        (
            "decode posbridge iso87ascii",
            Box::new(|| {
                decode(&fx.ascii, black_box(&fx.ascii_wire))
                    .unwrap()
                    .bitmap()
                    .words()[0] as usize
            }),
        ),
        (
            "decode posbridge cups-pos",
            Box::new(|| {
                decode(&fx.cups, black_box(&fx.cups_wire))
                    .unwrap()
                    .bitmap()
                    .words()[0] as usize
            }),
        ),
        (
            "decode iso_8583_rs 0.2.2",
            Box::new(|| {
                iso_8583_rs::Message::parse(&fx.v02, black_box(&fx.ascii_wire))
                    .unwrap()
                    .bitmap as usize
            }),
        ),
        (
            "decode iso8583_rs 0.1.10",
            Box::new(move || {
                v01_spec
                    .parse(black_box(&mut v01_input))
                    .unwrap()
                    .fd_map
                    .len()
            }),
        ),
        (
            "encode posbridge iso87ascii",
            Box::new(|| {
                b1.clear();
                black_box(&ascii_msg).encode_into(&mut b1).unwrap();
                b1.len()
            }),
        ),
        (
            "encode posbridge cups-pos",
            Box::new(|| {
                b2.clear();
                black_box(&cups_msg).encode_into(&mut b2).unwrap();
                b2.len()
            }),
        ),
        (
            "encode iso_8583_rs 0.2.2",
            Box::new(|| {
                b3.clear();
                black_box(&v02_msg).pack_into(&mut b3);
                b3.len()
            }),
        ),
        (
            "encode iso8583_rs 0.1.10",
            Box::new(|| black_box(&v01_msg).assemble().unwrap().len()),
        ),
        (
            "build+encode posbridge iso87ascii, new builder",
            Box::new(|| {
                b4.clear();
                build_values(&fx.ascii, None, black_box(&ascii_values))
                    .encode_into(&mut b4)
                    .unwrap();
                b4.len()
            }),
        ),
        (
            "build+encode posbridge iso87ascii, reused builder",
            Box::new(|| {
                b5.clear();
                fill(&mut reused, black_box(&ascii_values))
                    .encode_into(&mut b5)
                    .unwrap();
                b5.len()
            }),
        ),
        (
            "build+encode posbridge cups-pos, reused builder",
            Box::new(|| {
                b7.clear();
                fill(&mut reused_cups, black_box(&cups_values))
                    .encode_into(&mut b7)
                    .unwrap();
                b7.len()
            }),
        ),
        (
            "build+encode iso_8583_rs 0.2.2",
            Box::new(|| {
                b6.clear();
                other_build_v02(&fx.v02, black_box(&fx.ascii_fields)).pack_into(&mut b6);
                b6.len()
            }),
        ),
        (
            "build+encode iso8583_rs 0.1.10",
            Box::new(|| {
                other_build_v01(black_box(&fx.ascii_fields))
                    .assemble()
                    .unwrap()
                    .len()
            }),
        ),
    ];
    // Iterations per batch, from a first timing, so a batch lasts about BATCH_NS.
    let iterations: Vec<u32> = ops
        .iter_mut()
        .map(|(_, op)| {
            let start = std::time::Instant::now();
            for _ in 0..1000 {
                black_box(op());
            }
            let per_op = start.elapsed().as_nanos().max(1) / 1000;
            u32::try_from((BATCH_NS / per_op.max(1)).clamp(100, 1_000_000)).unwrap_or(1000)
        })
        .collect();
    let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(ROUNDS); ops.len()];
    for _ in 0..ROUNDS {
        for ((_, op), (n, times)) in ops
            .iter_mut()
            .zip(iterations.iter().zip(samples.iter_mut()))
        {
            let start = std::time::Instant::now();
            for _ in 0..*n {
                black_box(op());
            }
            times.push(start.elapsed().as_nanos() as f64 / f64::from(*n));
        }
    }
    println!("interleaved timing, {ROUNDS} rounds (ns per operation)");
    println!("{:<50} {:>10} {:>10}", "operation", "median", "best");
    for ((name, _), times) in ops.iter().zip(samples.iter_mut()) {
        times.sort_by(f64::total_cmp);
        println!("{name:<50} {:>10.1} {:>10.1}", times[ROUNDS / 2], times[0]);
    }
    println!();
}

fn main() {
    ensure_spec_file();
    let fx = Fixture::new();
    print_allocations(&fx);
    print_side_by_side(&fx);
    let mut c = Criterion::default().configure_from_args();
    bench_decode(&mut c, &fx);
    bench_encode(&mut c, &fx);
    c.final_summary();
}
