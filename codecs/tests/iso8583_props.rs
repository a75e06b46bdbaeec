//! Property tests per dialect: random valid messages round-trip (values, bytes, and the text form
//! the inspector's JSON uses); arbitrary and mutated bytes never panic, and whatever the decoder
//! accepts re-encodes to exactly the same bytes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use posbridge_codecs::{Charset, DataEncoding, FieldDef, Message, Spec, ValueKind, decode};
use proptest::prelude::*;

/// SplitMix64: a failing case reproduces from the seed proptest prints.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

fn random_value(def: &FieldDef, rng: &mut Rng) -> Vec<u8> {
    let mut units = if def.is_fixed() || rng.below(8) == 0 {
        def.max
    } else {
        rng.below(def.max.min(48) + 1)
    };
    if def.wire_len(units).is_err() {
        units -= 1;
    }
    let len = def.value_len_of_units(units);
    (0..len)
        .map(|_| match (def.value_kind(), def.charset) {
            (ValueKind::Bytes, _) => rng.byte(),
            (_, Charset::Numeric) => b'0' + rng.below(10) as u8,
            (_, Charset::Track2) if rng.below(8) == 0 => b'=',
            (ValueKind::Digits, _) => b'0' + rng.below(10) as u8,
            (ValueKind::Text, _) if def.data == DataEncoding::Ebcdic => 0x20 + rng.below(95) as u8,
            (ValueKind::Text, _) => rng.byte(),
        })
        .collect()
}

fn random_message<'s>(spec: &'s Spec, seed: u64) -> posbridge_codecs::MessageBuilder<'s> {
    let mut rng = Rng(seed);
    let mti: String = (0..4)
        .map(|_| char::from(b'0' + rng.below(10) as u8))
        .collect();
    let mut m = spec.builder(&mti).unwrap();
    let header: Vec<u8> = (0..spec.header.length).map(|_| rng.byte()).collect();
    m.set_header(header).unwrap();
    let density = 2 + rng.below(6);
    for def in spec.fields() {
        if rng.below(density) == 0 {
            let value = random_value(def, &mut rng);
            m.set(def.number, value)
                .unwrap_or_else(|e| panic!("field {}: {e}", def.number));
        }
    }
    m
}

/// Reads everything a caller could read; none of it may panic.
fn exercise(msg: &Message<'_>) {
    let _ = (msg.mti(), msg.header(), msg.mac_range(), msg.mac_input());
    for f in msg.fields() {
        let _ = (f.text(), f.as_u64(), f.as_str());
        if f.def().subfields.is_some() {
            let _ = msg.subfields(f.number());
            for path in ["1", "2", "3", "9F26", "01", "70.5A"] {
                let _ = msg.get(&format!("{}.{path}", f.number()));
            }
        }
    }
}

fn load(name: &str) -> Spec {
    if name == "exotic" {
        Spec::from_path(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/specs/exotic.toml"
        ))
        .unwrap()
    } else {
        Spec::builtin(name).unwrap()
    }
}

fn round_trip(name: &str, seed: u64) {
    let spec = load(name);
    let built = random_message(&spec, seed);
    let mut buf = Vec::new();
    built.encode_into(&mut buf).unwrap();
    let msg = decode(&spec, &buf).unwrap_or_else(|e| panic!("{name} seed {seed}: {e}"));
    assert_eq!(msg.mti(), built.mti());
    assert_eq!(msg.header(), built.header());
    let numbers: Vec<u16> = msg.fields().map(|f| f.number()).collect();
    assert_eq!(numbers, built.numbers().collect::<Vec<_>>());
    let mut text_form = spec.builder(msg.mti()).unwrap();
    text_form.set_header(msg.header().to_vec()).unwrap();
    for f in msg.fields() {
        assert_eq!(
            f.value().as_ref(),
            built.value(f.number()).unwrap(),
            "field {}",
            f.number()
        );
        text_form.set_text(f.number(), &f.text()).unwrap();
    }
    assert_eq!(msg.to_builder().to_bytes().unwrap(), buf, "re-encode");
    assert_eq!(text_form.to_bytes().unwrap(), buf, "text form re-encode");
    exercise(&msg);
}

/// A builder edited in any order (fields set out of order, set twice, set and removed, more fields
/// than it keeps inline) encodes what one filled in ascending order does, and again after `clear`.
fn any_order_of_edits(name: &str, seed: u64) {
    let spec = load(name);
    let ascending = random_message(&spec, seed);
    let reference = ascending.to_bytes().unwrap();
    let mut rng = Rng(seed ^ 0x5EED);
    let mut order: Vec<u16> = ascending.numbers().collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i + 1));
    }
    let mut edited = spec.builder(ascending.mti()).unwrap();
    edited.set_header(ascending.header()).unwrap();
    for &number in &order {
        let def = spec.field(number).unwrap();
        if rng.below(3) == 0 {
            edited.set(number, random_value(def, &mut rng)).unwrap();
        }
        edited
            .set(number, ascending.value(number).unwrap())
            .unwrap();
    }
    for def in spec.fields() {
        if ascending.value(def.number).is_none() && rng.below(4) == 0 {
            edited.set(def.number, random_value(def, &mut rng)).unwrap();
            assert!(edited.value(def.number).is_some());
            edited.remove(def.number);
        }
    }
    assert!(
        edited.numbers().eq(ascending.numbers()),
        "{name} seed {seed}"
    );
    assert_eq!(edited.to_bytes().unwrap(), reference, "{name} seed {seed}");
    edited.clear(ascending.mti()).unwrap();
    assert_eq!(edited.numbers().count(), 0);
    for number in ascending.numbers() {
        edited
            .set(number, ascending.value(number).unwrap())
            .unwrap();
    }
    assert_eq!(
        edited.to_bytes().unwrap(),
        reference,
        "{name} seed {seed}, reused"
    );
}

/// Whatever the decoder accepts must re-encode to the same bytes.
fn accepts_only_canonical(spec: &Spec, bytes: &[u8]) {
    if let Ok(msg) = decode(spec, bytes) {
        exercise(&msg);
        assert_eq!(msg.to_builder().to_bytes().unwrap(), bytes);
    }
}

/// The shipped dialects and the test dialect that uses every option (EBCDIC, tertiary bitmap...).
const DIALECTS: [&str; 5] = [
    "iso87ascii",
    "iso87binary",
    "cups-pos",
    "cups-host",
    "exotic",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn iso87ascii_round_trips(seed in any::<u64>()) { round_trip("iso87ascii", seed); }

    #[test]
    fn iso87binary_round_trips(seed in any::<u64>()) { round_trip("iso87binary", seed); }

    #[test]
    fn cups_pos_round_trips(seed in any::<u64>()) { round_trip("cups-pos", seed); }

    #[test]
    fn cups_host_round_trips(seed in any::<u64>()) { round_trip("cups-host", seed); }

    #[test]
    fn every_option_round_trips(seed in any::<u64>()) { round_trip("exotic", seed); }

    #[test]
    fn edits_in_any_order_encode_like_ascending(which in 0usize..5, seed in any::<u64>()) {
        any_order_of_edits(DIALECTS[which], seed);
    }

    #[test]
    fn subfields_read_back_what_was_written(
        batch in "[0-9]{6}",
        code in "[0-9]{3}",
        tag in prop_oneof![Just("9F26"), Just("9F27"), Just("5F34"), Just("82"), Just("9F1E")],
        ber in proptest::collection::vec(any::<u8>(), 0..140),
        qr in "[0-9A-Za-z]{0,60}",
    ) {
        let spec = Spec::builtin("cups-pos").unwrap();
        let mut m = spec.builder("0200").unwrap();
        m.set_sub("60.3", code.as_bytes()).unwrap();
        m.set_sub("60.2", batch.as_bytes()).unwrap();
        m.set_sub("55.9F27", &[0x80]).unwrap();
        m.set_sub(&format!("55.{tag}"), &ber).unwrap();
        m.set_sub("62.01", qr.as_bytes()).unwrap();
        let bytes = m.to_bytes().unwrap();
        let d = decode(&spec, &bytes).unwrap();
        prop_assert_eq!(d.get("60.2").unwrap().unwrap().into_owned(), batch.as_bytes().to_vec());
        prop_assert_eq!(d.get("60.3").unwrap().unwrap().into_owned(), code.as_bytes().to_vec());
        prop_assert_eq!(d.get(&format!("55.{tag}")).unwrap().unwrap().into_owned(), ber.clone());
        let cid: &[u8] = if tag == "9F27" { &ber } else { &[0x80] };
        prop_assert_eq!(d.get("55.9F27").unwrap().unwrap().into_owned(), cid.to_vec());
        prop_assert_eq!(d.get("62.01").unwrap().unwrap().into_owned(), qr.as_bytes().to_vec());
    }

    #[test]
    fn random_bytes_never_panic(which in 0usize..5, bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let spec = load(DIALECTS[which]);
        accepts_only_canonical(&spec, &bytes);
    }

    #[test]
    fn mutated_messages_never_panic(
        which in 0usize..5,
        seed in any::<u64>(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
        cut in any::<usize>(),
    ) {
        let spec = load(DIALECTS[which]);
        let mut buf = random_message(&spec, seed).to_bytes().unwrap();
        for (at, byte) in edits {
            let i = at % buf.len();
            buf[i] = byte;
        }
        accepts_only_canonical(&spec, &buf);
        let cut = cut % (buf.len() + 1);
        accepts_only_canonical(&spec, &buf[..cut]);
    }

    #[test]
    fn cups_pos_mac_covers_what_decode_reports(seed in any::<u64>()) {
        let spec = Spec::builtin("cups-pos").unwrap();
        let mut built = random_message(&spec, seed);
        built.remove(64);
        let mut buf = Vec::new();
        let mut seen = Vec::new();
        let info = built
            .encode_with_mac(&mut buf, |covered| {
                seen = covered.to_vec();
                Ok::<_, String>(covered.iter().take(8).copied().chain(std::iter::repeat(0)).take(8).collect())
            })
            .unwrap();
        let msg = decode(&spec, &buf).unwrap();
        let span = info.mac.unwrap();
        prop_assert_eq!(msg.mac_range(), Some(span.covered.clone()));
        prop_assert_eq!(msg.mac_input().unwrap(), &seen[..]);
        prop_assert_eq!(&buf[span.value.clone()], msg.mac().unwrap().wire());
        prop_assert_eq!(span.covered.start, 11);
    }
}
