//! The ISO 8583 API from a user's side: specs load, messages built in code encode to the bytes
//! the dialect describes (checked by hand below), decode back, sub-fields and MAC ranges work,
//! and bad input is reported with field and offset.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use posbridge_codecs::{DecodeErrorKind, Location, Spec, decode, from_hex, to_hex};

#[test]
fn every_builtin_spec_loads() {
    for name in Spec::builtin_names() {
        let spec = Spec::builtin(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(spec.name, name);
        assert!(spec.fields().count() > 20, "{name}");
    }
}

fn cups_pos_sale(spec: &Spec) -> posbridge_codecs::MessageBuilder<'_> {
    let mut m = spec.builder("0200").unwrap();
    m.set_header(from_hex("6000030000603100310000").unwrap())
        .unwrap();
    m.set_str(2, "6222021234567890123").unwrap();
    m.set_str(3, "000000").unwrap();
    m.set_str(4, "000000001000").unwrap();
    m.set_str(11, "000123").unwrap();
    m.set_str(22, "051").unwrap();
    m.set_str(23, "001").unwrap();
    m.set_str(25, "00").unwrap();
    m.set_str(41, "12345678").unwrap();
    m.set_str(42, "123456789012345").unwrap();
    m.set_str(49, "156").unwrap();
    m.set_sub("60.1", b"22").unwrap();
    m.set_sub("60.2", b"000001").unwrap();
    m
}

#[test]
fn cups_pos_encodes_to_the_documented_bytes() {
    let spec = Spec::builtin("cups-pos").unwrap();
    let m = cups_pos_sale(&spec);
    let mut buf = Vec::new();
    let info = m
        .encode_with_mac(&mut buf, |_covered| Ok::<_, String>(vec![0xAA; 8]))
        .unwrap();
    let hex = to_hex(&buf);
    let expected = concat!(
        "6000030000",                     // TPDU: 60, destination 0003, source 0000
        "603100310000",                   // application header
        "0200",                           // BCD MTI
        "7020068000C08011",               // bitmap: 2 3 4 11 22 23 25 41 42 49 60 64
        "19622202123456789012 30",        // F2: LL=19 digits (BCD), left-aligned, pad 0 at the end
        "000000",                         // F3
        "000000001000",                   // F4
        "000123",                         // F11
        "0510",                           // F22 n3 left-aligned: 05 10
        "0001",                           // F23 n3 right-aligned: 00 01
        "00",                             // F25
        "3132333435363738",               // F41 ASCII
        "313233343536373839303132333435", // F42
        "313536",                         // F49 ASCII
        "0008 22000001",                  // F60: LLL=0008 digits, 60.1=22, 60.2=000001
        "AAAAAAAAAAAAAAAA",               // F64 MAC
    )
    .replace(' ', "");
    assert_eq!(hex, expected);
    let span = info.mac.unwrap();
    assert_eq!(
        span.covered.start, 11,
        "MAC starts at the MTI, after TPDU and header"
    );
    assert_eq!(span.value, buf.len() - 8..buf.len());

    let d = decode(&spec, &buf).unwrap();
    assert_eq!(d.mti(), "0200");
    assert_eq!(to_hex(d.header()), "6000030000603100310000");
    assert_eq!(d.field(2).unwrap().text(), "6222021234567890123");
    assert_eq!(d.field(22).unwrap().text(), "051");
    assert_eq!(d.field(23).unwrap().text(), "001");
    assert_eq!(d.get("60.2").unwrap().as_deref(), Some(&b"000001"[..]));
    assert_eq!(d.get("60.3").unwrap(), None);
    assert_eq!(d.field(4).unwrap().as_u64(), Some(1000));
    assert_eq!(d.mac_range(), Some(span.covered.clone()));
    assert_eq!(d.mac_input().unwrap(), &buf[11..buf.len() - 8]);
    assert_eq!(d.str(41), Some("12345678"));
    // Re-encoding the decoded message gives the same bytes.
    assert_eq!(d.to_builder().to_bytes().unwrap(), buf);
}

#[test]
fn decode_errors_name_field_and_offset() {
    let spec = Spec::builtin("cups-pos").unwrap();
    let mut buf = Vec::new();
    cups_pos_sale(&spec).encode_into(&mut buf).unwrap();
    // Cut inside field 42.
    let cut = &buf[..buf.len() - 12];
    let e = decode(&spec, cut).unwrap_err();
    assert_eq!(e.location, Location::Field(42));
    assert!(matches!(e.kind, DecodeErrorKind::Truncated { .. }), "{e}");
    assert!(e.to_string().starts_with("field 42 at byte "), "{e}");
    // A length prefix over the maximum: F2 says 99 digits.
    let mut bad = buf.clone();
    bad[21] = 0x99;
    let e = decode(&spec, &bad).unwrap_err();
    assert_eq!((e.location, e.offset), (Location::Field(2), 21));
    assert_eq!(
        e.kind,
        DecodeErrorKind::TooLong {
            length: 99,
            max: 19
        }
    );
    // Trailing bytes.
    let mut long = buf.clone();
    long.push(0);
    assert_eq!(
        decode(&spec, &long).unwrap_err().kind,
        DecodeErrorKind::TrailingBytes(1)
    );
}

#[test]
fn iso87ascii_secondary_bitmap_and_hex_fields() {
    let spec = Spec::builtin("iso87ascii").unwrap();
    let mut m = spec.builder("0200").unwrap();
    m.set_str(3, "000000").unwrap();
    m.set_str(11, "000001").unwrap();
    m.set(52, vec![0x12, 0x34, 0x56, 0x78, 0x9A, 0xBC, 0xDE, 0xF0])
        .unwrap();
    m.set_str(102, "ACCOUNT-1").unwrap();
    m.set_text(128, "0102030405060708").unwrap();
    let bytes = m.to_bytes().unwrap();
    let text = String::from_utf8(bytes.clone()).unwrap();
    assert!(
        text.starts_with("0200A0200000000010000000000004000001"),
        "{text}"
    );
    assert!(text.contains("123456789ABCDEF0"), "{text}");
    assert!(text.contains("09ACCOUNT-1"), "{text}");
    let d = decode(&spec, &bytes).unwrap();
    assert!(d.has(102) && d.has(128) && !d.has(1));
    assert_eq!(
        d.field(128).unwrap().value().as_ref(),
        &[1, 2, 3, 4, 5, 6, 7, 8]
    );
    assert_eq!(d.to_builder().to_bytes().unwrap(), bytes);
}

#[test]
fn bad_specs_are_rejected_naming_file_field_and_key() {
    let base = r#"
name = "t"
[framing]
length_prefix = "binary2"
[mti]
encoding = "ascii"
[bitmap]
encoding = "binary"
max_bitmaps = 1
"#;
    let cases = [
        (
            "[fields.2]\nname='x'\ntype='fixed'\ndata='bcdx'\nlength=2",
            "field 2: key `data`",
        ),
        (
            "[fields.2]\nname='x'\ntype='fixed'\ndata='bcd'\nlength=0\nlength_counts='digits'\nalign='left'\npad='0'",
            "field 2: key `length`",
        ),
        (
            "[fields.2]\nname='x'\ntype='llvar'\ndata='ascii'\nlength_encoding='ascii'\nmax=100",
            "field 2: key `max`",
        ),
        (
            "[fields.3]\nname='x'\ntype='fixed'\ndata='bcd'\nlength=3\nlength_counts='digits'\npad='0'",
            "field 3: key `align`",
        ),
        (
            "[fields.70]\nname='x'\ntype='fixed'\ndata='ascii'\nlength=3",
            "field 70: key `bitmap.max_bitmaps`",
        ),
        (
            "[fields.4]\nname='x'\ntype='fixed'\ndata='hex'\nlength=3",
            "field 4: key `length`",
        ),
    ];
    for (fields, needle) in cases {
        let text = format!("{base}\n{fields}\n");
        let e = Spec::from_toml_str("my.toml", &text)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("spec my.toml: "), "{e}");
        assert!(e.contains(needle), "{needle} not in {e}");
    }
}

#[test]
fn builder_order_of_sets_does_not_change_the_bytes() {
    let spec = Spec::builtin("cups-host").unwrap();
    let mut in_order = spec.builder("0200").unwrap();
    in_order.set_header(vec![0; 46]).unwrap();
    for (n, v) in [
        (2, "6222021234567890123"),
        (3, "000000"),
        (11, "000001"),
        (41, "TERM0001"),
    ] {
        in_order.set_str(n, v).unwrap();
    }
    in_order.set(128, vec![7; 8]).unwrap();
    let expected = in_order.to_bytes().unwrap();

    let mut shuffled = spec.builder("0200").unwrap();
    shuffled.set_header(vec![0; 46]).unwrap();
    shuffled.set(128, vec![1; 8]).unwrap();
    shuffled.set_str(41, "TERM0001").unwrap();
    shuffled.set_str(11, "999999").unwrap();
    shuffled.set_str(3, "000000").unwrap();
    shuffled.set_str(2, "6222021234567890123").unwrap();
    shuffled.set_str(11, "000001").unwrap();
    shuffled.set_str(37, "to be removed").unwrap_err();
    shuffled.set_str(37, "123456789012").unwrap();
    shuffled.remove(37);
    shuffled.set(128, vec![7; 8]).unwrap();
    assert_eq!(to_hex(&shuffled.to_bytes().unwrap()), to_hex(&expected));

    // Reused after clear: same bytes again, and the MAC placeholder path agrees with decode.
    shuffled.clear("0200").unwrap();
    shuffled.set_str(11, "000001").unwrap();
    shuffled.set_str(2, "6222021234567890123").unwrap();
    let mut buf = Vec::new();
    let info = shuffled
        .encode_with_mac(&mut buf, |covered| Ok::<_, String>(covered[..8].to_vec()))
        .unwrap();
    let msg = decode(&spec, &buf).unwrap();
    assert_eq!(msg.mac_range(), info.mac.map(|m| m.covered));
    assert_eq!(
        msg.mac().unwrap().wire(),
        &buf[46..54],
        "MAC = first 8 covered bytes"
    );
}

#[test]
fn mac_placeholder_between_fields() {
    // MAC in 64 while secondary fields follow it.
    let text = r#"
name = "mac64"
[framing]
length_prefix = "binary2"
[mti]
encoding = "ascii"
[bitmap]
encoding = "binary"
max_bitmaps = 2
[mac]
field = 64
[fields.11]
name = "stan"
type = "fixed"
data = "ascii"
length = 6
[fields.64]
name = "mac"
type = "fixed"
data = "binary"
length = 8
[fields.70]
name = "nmic"
type = "fixed"
data = "ascii"
length = 3
"#;
    let spec = Spec::from_toml_str("mac64.toml", text).unwrap();
    let mut m = spec.builder("0800").unwrap();
    m.set_str(11, "000001").unwrap();
    m.set_str(70, "301").unwrap();
    let mut buf = Vec::new();
    let info = m
        .encode_with_mac(&mut buf, |_| Ok::<_, String>(vec![0xEE; 8]))
        .unwrap();
    let span = info.mac.unwrap();
    assert_eq!(span.covered, 0..4 + 16 + 6);
    assert_eq!(&buf[span.value.clone()], &[0xEE; 8]);
    assert_eq!(&buf[span.value.end..], b"301");
    let msg = decode(&spec, &buf).unwrap();
    assert_eq!(msg.mac_range(), Some(span.covered));
}

#[test]
fn editing_a_builder_many_times_keeps_it_bounded_and_correct() {
    let spec = Spec::builtin("cups-pos").unwrap();
    let mut m = cups_pos_sale(&spec);
    let reference = m.to_bytes().unwrap();
    for i in 0..10_000u32 {
        // Re-set an early field (its old value must be freed, not kept) and a late one.
        m.set_str(3, if i % 2 == 0 { "310000" } else { "000000" })
            .unwrap();
        m.set_sub("60.2", format!("{:06}", i % 1000).as_bytes())
            .unwrap();
        // Re-setting the highest field replaces it in place.
        m.set_sub("60.1", if i % 3 == 0 { b"23" } else { b"22" })
            .unwrap();
    }
    m.set_sub("60.1", b"22").unwrap();
    m.set_sub("60.2", b"000001").unwrap();
    assert_eq!(to_hex(&m.to_bytes().unwrap()), to_hex(&reference));
    let size = m.retained_bytes();
    assert!(
        size < 2 * reference.len() + 300,
        "builder holds {size} bytes"
    );
}

/// A builder of values borrowed for `'long` can take values that live shorter: callers rely on
/// `MessageBuilder<'a>` being covariant in `'a`. Fails to compile otherwise.
#[test]
fn a_builder_can_borrow_values_shorter_than_its_spec() {
    fn shorten<'short, 'long: 'short>(
        m: posbridge_codecs::MessageBuilder<'long>,
    ) -> posbridge_codecs::MessageBuilder<'short> {
        m
    }
    let spec = Spec::builtin("iso87ascii").unwrap();
    let m = spec.builder("0800").unwrap();
    let stan = String::from("000321");
    let mut m = shorten(m);
    m.set_str(11, &stan).unwrap();
    assert_eq!(
        decode(&spec, &m.to_bytes().unwrap()).unwrap().str(11),
        Some("000321")
    );
}

#[test]
fn debug_output_masks_what_the_dialect_marks_sensitive() {
    let spec = Spec::builtin("cups-pos").unwrap();
    let mut m = cups_pos_sale(&spec);
    m.set_str(35, "6222021234567890123=2512201").unwrap();
    m.set(52, vec![0xA1; 8]).unwrap();
    let built = format!("{m:?}");
    let bytes = m.to_bytes().unwrap();
    let decoded = format!("{:?}", decode(&spec, &bytes).unwrap());
    let field = format!("{:?}", decode(&spec, &bytes).unwrap().field(2).unwrap());
    assert!(
        !field.contains("6222021234567890123") && field.contains("622202"),
        "{field}"
    );
    for text in [&built, &decoded] {
        assert!(!text.contains("6222021234567890123"), "{text}");
        assert!(!text.contains("A1A1A1A1"), "{text}");
        assert!(text.contains("622202*********0123"), "{text}");
        assert!(text.contains("[redacted PIN block, 8 bytes]"), "{text}");
        assert!(text.contains("\"12345678\""), "TID in clear: {text}");
    }
}

/// Regression (conformance issue): a real UnionPay POS QR sale was refused with `field 60 ...
/// length 19 exceeds the maximum 17`; later specification versions add sub-fields after 60.7.
/// A 19-digit field 60 (hand-assembled, as captured) decodes, its named parts read by position.
#[test]
fn cups_pos_accepts_an_extended_field_60() {
    let spec = Spec::builtin("cups-pos").unwrap();
    let hex = concat!(
        "6000030000",
        "603100310000",
        "0200",
        "7020068000C08011",
        "1962220212345678901230",
        "000000",
        "000000001000",
        "000123",
        "0510",
        "0001",
        "00",
        "3132333435363738",
        "313233343536373839303132333435",
        "313536",
        "0019",                 // F60: 19 digits, BCD, left-aligned, padded with one 0
        "22000001000600000000", // 60.1 22, 60.2 000001, 60.3 000, 60.4-60.7, then 2 later digits
        "AAAAAAAAAAAAAAAA",
    );
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect::<Vec<_>>();
    let message = spec.decode(&bytes).unwrap();
    let sub = |path: &str| String::from_utf8(message.get(path).unwrap().unwrap().to_vec()).unwrap();
    assert_eq!(sub("60.1"), "22");
    assert_eq!(sub("60.2"), "000001");
    assert_eq!(sub("60.3"), "000");
    assert_eq!(sub("60").len(), 19);
}
