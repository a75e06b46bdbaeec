//! Heap allocations on the message paths, counted (not timed, so the result does not depend on
//! the machine): decoding allocates nothing, and neither does building a message with a new
//! builder from borrowed values and encoding it into a reused buffer, in every built-in dialect.
//! A server that builds a reply per request therefore costs the allocator nothing per message.
//!
//! The counting global allocator is `stats_alloc` (the workspace forbids the `unsafe` a
//! hand-written `GlobalAlloc` needs). It counts for the whole process, so this file holds one
//! test: no other test's allocations can land in a counted region.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::alloc::System;
use std::hint::black_box;

use posbridge_codecs::{Spec, decode, from_hex, to_hex};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, Stats, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn fixture(path: &str) -> Vec<u8> {
    let p = format!("{}/../fixtures/iso8583/{path}", env!("CARGO_MANIFEST_DIR"));
    from_hex(std::fs::read_to_string(p).unwrap().trim()).unwrap()
}

/// The allocator's work while `f` runs.
fn heap_ops(f: impl FnOnce()) -> Stats {
    let region = Region::new(GLOBAL);
    f();
    region.change()
}

fn assert_no_heap(what: &str, stats: Stats) {
    assert_eq!(
        (stats.allocations, stats.reallocations, stats.deallocations),
        (0, 0, 0),
        "{what}: {stats:?}"
    );
}

#[test]
fn decode_and_fresh_builder_encode_do_not_allocate() {
    for (dialect, path) in [
        ("iso87ascii", "iso87ascii/purchase-0200.hex"),
        ("iso87binary", "iso87binary/purchase-0200.hex"),
        ("cups-pos", "cups-pos/qr-sale-0200.hex"),
        ("cups-pos", "cups-pos/reversal-0400.hex"),
        ("cups-host", "cups-host/purchase-0200.hex"),
    ] {
        let spec = Spec::builtin(dialect).unwrap();
        let bytes = fixture(path);

        let stats = heap_ops(|| {
            let message = decode(&spec, black_box(&bytes)).unwrap();
            black_box(message.bitmap());
        });
        assert_no_heap(&format!("decode {path}"), stats);

        // The values as a caller holds them (owned here, lent to the builder below).
        let message = decode(&spec, &bytes).unwrap();
        let mti = message.mti().to_owned();
        let header = message.header();
        let values: Vec<(u16, Vec<u8>)> = message
            .fields()
            .map(|f| (f.number(), f.value().into_owned()))
            .collect();
        let build_and_encode = |buf: &mut Vec<u8>| {
            let mut builder = spec.builder(&mti).unwrap();
            builder.set_header(header).unwrap();
            for (number, value) in &values {
                builder.set(*number, value.as_slice()).unwrap();
            }
            buf.clear();
            builder.encode_into(buf).unwrap();
        };
        // Once to give the buffer its capacity, as a server's reused buffer has.
        let mut buf = Vec::new();
        build_and_encode(&mut buf);
        assert_eq!(to_hex(&buf), to_hex(&bytes), "{path}: values re-encode");

        let stats = heap_ops(|| build_and_encode(&mut buf));
        assert_no_heap(&format!("new builder, set all, encode {path}"), stats);
        assert_eq!(to_hex(&buf), to_hex(&bytes), "{path}: second encode");
    }
}
