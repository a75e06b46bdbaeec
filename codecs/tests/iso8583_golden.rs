//! Golden fixtures: every `fixtures/iso8583/<dialect>/NAME.hex` decodes to exactly the fields in
//! `NAME.json` (the inspector's JSON form), the JSON encodes back to the same bytes, and the
//! decoded message re-encodes to the same bytes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use posbridge_codecs::{Spec, decode, from_hex, to_hex};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/iso8583")
}

fn cases() -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for dialect in std::fs::read_dir(fixtures()).unwrap() {
        let dialect = dialect.unwrap().path();
        if !dialect.is_dir() {
            continue;
        }
        let name = dialect.file_name().unwrap().to_string_lossy().into_owned();
        for file in std::fs::read_dir(&dialect).unwrap() {
            let file = file.unwrap().path();
            if file.extension().is_some_and(|e| e == "hex") {
                out.push((name.clone(), file));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn every_dialect_has_fixtures() {
    let cases = cases();
    for name in Spec::builtin_names() {
        assert!(
            cases.iter().filter(|(d, _)| d == name).count() >= 2,
            "{name} needs fixtures"
        );
    }
}

#[test]
fn fixtures_decode_to_their_json_and_re_encode_to_the_same_bytes() {
    for (dialect, hex_path) in cases() {
        let spec = Spec::builtin(&dialect).unwrap();
        let text = std::fs::read_to_string(&hex_path).unwrap();
        let bytes = from_hex(text.trim()).unwrap();
        let json_path = hex_path.with_extension("json");
        let expected: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
        let what = hex_path.display().to_string();

        let msg = decode(&spec, &bytes).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(msg.mti(), expected["mti"].as_str().unwrap(), "{what}");
        match expected.get("header") {
            Some(h) => assert_eq!(to_hex(msg.header()), h.as_str().unwrap(), "{what}"),
            None => assert_eq!(spec.header.length, 0, "{what}"),
        }
        let got: BTreeMap<u16, String> = msg.fields().map(|f| (f.number(), f.text())).collect();
        let want: BTreeMap<u16, String> = expected["fields"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.parse().unwrap(), v.as_str().unwrap().to_owned()))
            .collect();
        assert_eq!(got, want, "{what}");

        // JSON -> bytes.
        let mut builder = spec.builder(msg.mti()).unwrap();
        if let Some(h) = expected.get("header") {
            builder
                .set_header(from_hex(h.as_str().unwrap()).unwrap())
                .unwrap();
        }
        for (n, v) in &want {
            builder.set_text(*n, v).unwrap();
        }
        assert_eq!(
            to_hex(&builder.to_bytes().unwrap()),
            to_hex(&bytes),
            "{what}: encode from JSON"
        );
        // Decoded -> bytes.
        assert_eq!(
            msg.to_builder().to_bytes().unwrap(),
            bytes,
            "{what}: re-encode"
        );
    }
}

#[test]
fn cups_pos_sign_on_response_carries_the_worked_example_keys() {
    let spec = Spec::builtin("cups-pos").unwrap();
    let text = std::fs::read_to_string(fixtures().join("cups-pos/signon-0810.hex")).unwrap();
    let bytes = from_hex(text.trim()).unwrap();
    let msg = decode(&spec, &bytes).unwrap();
    // Reply TPDU: destination and source swapped relative to the 0800.
    assert_eq!(&msg.header()[..5], &[0x60, 0x00, 0x00, 0x00, 0x03]);
    assert_eq!(
        msg.get("60.3").unwrap().as_deref(),
        Some(&b"004"[..]),
        "sign-on"
    );
    let keys = msg.field(62).unwrap();
    assert_eq!(keys.wire().len(), 40);
    assert_eq!(
        to_hex(&keys.wire()[..16]),
        "6701EAD6A9AD51E51AA406E2C27FCFA9"
    );
    assert_eq!(to_hex(&keys.wire()[16..20]), "8D0A74B8");
    assert_eq!(to_hex(&keys.wire()[36..40]), "AB7153CA");
    // The sign-on response is not MACed: no field 64, no MAC range.
    assert!(msg.mac_range().is_none());
    assert_eq!(
        keys.def().sensitivity_for(&msg.mti_bytes()),
        Some(posbridge_codecs::Sensitivity::Key)
    );
}

#[test]
fn cups_pos_qr_sale_exposes_code_and_mac_range() {
    let spec = Spec::builtin("cups-pos").unwrap();
    let text = std::fs::read_to_string(fixtures().join("cups-pos/qr-sale-0200.hex")).unwrap();
    let bytes = from_hex(text.trim()).unwrap();
    let msg = decode(&spec, &bytes).unwrap();
    assert_eq!(msg.field(22).unwrap().text(), "032");
    assert_eq!(
        msg.get("62.01").unwrap().as_deref(),
        Some(&b"134612345678901234"[..])
    );
    // MAC covers MTI .. end of field 63: everything after the 11-byte header, before the MAC.
    assert_eq!(msg.mac_range(), Some(11..bytes.len() - 8));
    // In a sale, field 62 is not key material.
    assert_eq!(
        msg.field(62)
            .unwrap()
            .def()
            .sensitivity_for(&msg.mti_bytes()),
        None
    );
}
