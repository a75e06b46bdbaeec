//! Every field-model option, checked against bytes worked out by hand, with a test dialect that
//! combines them (tests/specs/exotic.toml), plus the decode errors a peer can trigger.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use posbridge_codecs::{DecodeErrorKind, Location, Spec, decode, from_hex, to_hex};

fn exotic() -> Spec {
    Spec::from_path(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/specs/exotic.toml"
    ))
    .unwrap()
}

const EXPECTED: &str = concat!(
    "ABCD",                             // raw header
    "F0F8F0F0",                         // MTI 0800 in EBCDIC
    "46303030303030303230303131303030", // primary bitmap "F000000020011000" as text
    "38343030303030303130303030303030", // secondary "8400000010000000"
    "34303030303030303030303030303031", // tertiary "4000000000000001"
    "F0F4F1F2F3F4",                     // F2: EBCDIC length 04, EBCDIC digits
    "F12345",                           // F3: 12345 right-aligned, pad F first
    "12345F",                           // F4: 12345 left-aligned, pad F last
    "071234D56F",                       // F35: binary length 7 digits, '=' as D, pad F
    "30303039C88593939640ADA7BD",       // F48: "0009" then "Hello [x]" in cp1047
    "0102030405060708",                 // F52: 16 nibbles = 8 bytes
    "F3F0F1",                           // F70
    "02ABCD",                           // F100: BCD length 02 bytes
    "31323334",                         // F130: hex text "1234"
    "00047461696C",                     // F192: 2-byte binary length, "tail"
);

#[test]
fn every_option_encodes_to_hand_computed_bytes_and_back() {
    let spec = exotic();
    let mut m = spec.builder("0800").unwrap();
    m.set_header(vec![0xAB, 0xCD]).unwrap();
    m.set_str(2, "1234").unwrap();
    m.set_str(3, "12345").unwrap();
    m.set_str(4, "12345").unwrap();
    m.set_str(35, "1234=56").unwrap();
    m.set_str(48, "Hello\u{20}[x]").unwrap();
    m.set(52, vec![1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
    m.set_str(70, "301").unwrap();
    m.set(100, vec![0xAB, 0xCD]).unwrap();
    m.set(130, vec![0x12, 0x34]).unwrap();
    m.set_str(192, "tail").unwrap();
    let bytes = m.to_bytes().unwrap();
    assert_eq!(to_hex(&bytes), EXPECTED);

    let d = decode(&spec, &bytes).unwrap();
    assert_eq!(d.mti(), "0800");
    assert_eq!(d.header(), &[0xAB, 0xCD]);
    let texts: Vec<(u16, String)> = d.fields().map(|f| (f.number(), f.text())).collect();
    let want = [
        (2, "1234"),
        (3, "12345"),
        (4, "12345"),
        (35, "1234=56"),
        (48, "Hello [x]"),
        (52, "0102030405060708"),
        (70, "301"),
        (100, "ABCD"),
        (130, "1234"),
        (192, "tail"),
    ];
    assert_eq!(texts, want.map(|(n, t)| (n, t.to_owned())).to_vec());
    assert_eq!(d.field(35).unwrap().units(), 7);
    assert_eq!(d.to_builder().to_bytes().unwrap(), bytes);
}

#[test]
fn peer_errors_name_part_offset_and_reason() {
    let spec = exotic();
    let good = from_hex(EXPECTED).unwrap();
    let at = |hex_offset: usize| hex_offset / 2;

    // A wrong pad nibble in F3 (offset of F3 data: after header 2, MTI 4, bitmaps 48, F2 6).
    let f3 = 2 + 4 + 48 + 6;
    let mut bad = good.clone();
    bad[f3] = 0x01;
    let e = decode(&spec, &bad).unwrap_err();
    assert_eq!((e.location, e.offset), (Location::Field(3), f3));
    assert!(
        matches!(
            e.kind,
            DecodeErrorKind::BadData {
                what: "pad nibble",
                ..
            }
        ),
        "{e}"
    );

    // A byte with no cp1047 printable mapping in F2.
    let mut bad = good.clone();
    bad[f3 - 1] = 0x00;
    let e = decode(&spec, &bad).unwrap_err();
    assert_eq!((e.location, e.offset), (Location::Field(2), f3 - 1));

    // Lowercase hex in a bitmap.
    let mut bad = good.clone();
    bad[6] = b'f';
    let e = decode(&spec, &bad).unwrap_err();
    assert_eq!((e.location, e.offset), (Location::Bitmap(1), 6));

    // A field the dialect does not define (bit 5).
    let mut bad = good.clone();
    bad[7] = b'8';
    let e = decode(&spec, &bad).unwrap_err();
    assert_eq!(e.location, Location::Field(5));
    assert!(matches!(e.kind, DecodeErrorKind::UnknownField { .. }));

    // Track 2 with a letter where a digit belongs.
    let f35 = at(EXPECTED.find("071234D56F").unwrap());
    let mut bad = good.clone();
    bad[f35 + 1] = 0x1A;
    let e = decode(&spec, &bad).unwrap_err();
    assert_eq!((e.location, e.offset), (Location::Field(35), f35 + 1));

    // A secondary bitmap in a dialect with only a primary one.
    let pos = Spec::builtin("cups-pos").unwrap();
    let mut msg = vec![0u8; 11];
    msg.extend_from_slice(&[0x08, 0x00, 0x80, 0, 0, 0, 0, 0, 0, 0]);
    let e = decode(&pos, &msg).unwrap_err();
    assert_eq!(e.kind, DecodeErrorKind::UnexpectedBitmap(2));

    // Too short for the header.
    let e = decode(&pos, &[0x60]).unwrap_err();
    assert_eq!(e.location, Location::Header);
}

#[test]
fn values_are_checked_when_set() {
    let spec = exotic();
    let mut m = spec.builder("0800").unwrap();
    assert!(m.set_str(3, "1234").is_err(), "fixed length");
    assert!(m.set_str(3, "12a45").is_err(), "digits");
    assert!(m.set_str(2, "12345678901234567890").is_err(), "max");
    assert!(m.set_str(48, "tab\there").is_err(), "no EBCDIC mapping");
    assert!(m.set(5, b"x".to_vec()).is_err(), "undefined field");
    assert!(m.set_str(1, "x").is_err(), "bitmap bit");
    assert!(m.set_str(65, "x").is_err(), "tertiary bitmap bit");
    assert!(m.set_header(vec![0; 3]).is_err());
    assert!(spec.builder("08000").is_err() && spec.builder("08A0").is_err());
}

#[test]
fn subfield_paths_read_and_write() {
    let spec = Spec::builtin("cups-pos").unwrap();
    let mut m = spec.builder("0200").unwrap();
    m.set_sub("60.3", b"004").unwrap();
    assert_eq!(
        m.value(60),
        Some(&b"00000000004"[..]),
        "earlier parts zero-filled"
    );
    m.set_sub("60.1", b"22").unwrap();
    m.set_sub("60.2", b"000123").unwrap();
    assert_eq!(m.value(60), Some(&b"22000123004"[..]));
    assert!(m.set_sub("60.2", b"12").is_err(), "part length");
    assert!(m.set_sub("60.9", b"1").is_err(), "no such part");
    m.set_sub("55.9F26", &[1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
    m.set_sub("55.9F27", &[0x80]).unwrap();
    m.set_sub("55.9F26", &[9; 8]).unwrap();
    assert_eq!(
        to_hex(m.value(55).unwrap()),
        "9F260809090909090909099F270180"
    );
    m.set_sub("62.01", b"134612345678901234").unwrap();
    assert_eq!(m.value(62), Some(&b"01018134612345678901234"[..]));
    assert!(m.set_sub("55.9F", &[1]).is_err(), "incomplete BER tag");
    assert!(m.set_sub("62.001", b"x").is_err(), "tag width");

    let bytes = m.to_bytes().unwrap();
    let d = decode(&spec, &bytes).unwrap();
    assert_eq!(d.get("60.2").unwrap().as_deref(), Some(&b"000123"[..]));
    assert_eq!(d.get("55.9F27").unwrap().as_deref(), Some(&[0x80][..]));
    assert_eq!(d.get("55.5A").unwrap(), None);
    assert_eq!(
        d.get("62.01").unwrap().as_deref(),
        Some(&b"134612345678901234"[..])
    );
    assert!(d.get("61.1").unwrap().is_none(), "absent field");
    assert!(d.get("3.1").is_err(), "field 3 has no sub-fields");
    assert!(d.get("60.").is_err() && d.get("x").is_err());
    let subs = d.subfields(60).unwrap();
    let paths: Vec<&str> = subs.iter().map(|(e, _)| e.path.as_str()).collect();
    assert_eq!(paths, ["60.1", "60.2", "60.3"]);

    // Nested BER: a constructed template 70 holding 5A.
    let spec = Spec::builtin("iso87binary").unwrap();
    let mut m = spec.builder("0100").unwrap();
    m.set(55, from_hex("70075A0547617390019F270140").unwrap())
        .unwrap();
    let bytes = m.to_bytes().unwrap();
    let d = decode(&spec, &bytes).unwrap();
    assert_eq!(to_hex(&d.get("55.70.5A").unwrap().unwrap()), "4761739001");
    assert_eq!(to_hex(&d.get("55.9F27").unwrap().unwrap()), "40");
}
