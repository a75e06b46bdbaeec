//! posbridge's payloads against an independent EMV MPM implementation: `cemacqr` (PyPI, pinned in
//! scripts/requirements-test.txt), whose `validate(..., EMVCO)` applies the EMVCo v1.1 rules
//! (placement of 00 and 63, CRC, mandatory objects, formats and maximum lengths, templates 62 and
//! 64). It must call our payloads valid and read the same data objects we wrote.
//!
//! Needs POSBRIDGE_TEST_PYTHON (set by ./scripts/test), else `.venv-test/bin/python` in the
//! workspace; fails with a clear message when neither has cemacqr.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use posbridge_codecs::emv_qr::{
    AlternateLanguage, Expiry, Field, Merchant, Order, POSBRIDGE_GUI, Payload, StaticCode, Value,
    crc16,
};
use serde_json::Value as Json;

const EMVCO_EXAMPLE: &str = "00020101021229300012D156000000000510A93FO3230Q31280012D15600000001030812345678520441115802CN5914BEST TRANSPORT6007BEIJING64200002ZH0104最佳运输0202北京540523.7253031565502016233030412340603***0708A60086670902ME91320016A0112233449988770708123456786304A13A";

/// Reads each payload (one JSON array on stdin) with cemacqr and reports what it saw.
const SCRIPT: &str = r#"
import json, sys
import cemacqr
out = []
for text in json.load(sys.stdin):
    try:
        qr = cemacqr.parse_payload(text)
    except Exception as error:
        out.append({"error": str(error)})
        continue
    report = cemacqr.validate(qr, cemacqr.EMVCO)
    objects = []
    for item in qr.objects:
        children = [[c.tag, c.value] for c in item.children()]
        objects.append([item.tag, item.value, children])
    out.append({
        "status": report.status,
        "violations": [str(v) for v in report.violations],
        "crc_ok": qr.crc_ok,
        "is_static": qr.is_static,
        "amount": str(qr.amount_decimal) if qr.amount is not None else None,
        "currency": qr.currency,
        "merchant_name": qr.merchant_name,
        "merchant_city": qr.merchant_city,
        "objects": objects,
    })
json.dump(out, sys.stdout, ensure_ascii=False)
"#;

fn python() -> PathBuf {
    if let Some(path) = std::env::var_os("POSBRIDGE_TEST_PYTHON") {
        return PathBuf::from(path);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv-test/bin/python")
}

fn cemacqr_reads(payloads: &[String]) -> Vec<Json> {
    let python = python();
    let mut child = Command::new(&python)
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| {
            panic!(
                "cannot run {} ({error}); run ./scripts/test or create the venv: python3 -m venv \
                 .venv-test && .venv-test/bin/pip install -r scripts/requirements-test.txt",
                python.display()
            )
        });
    let input = serde_json::to_vec(payloads).unwrap();
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "cemacqr cross-check failed to run with {} (is cemacqr installed? pip install -r \
         scripts/requirements-test.txt): {}",
        python.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn merchant() -> Merchant {
    Merchant {
        gui: POSBRIDGE_GUI.into(),
        merchant_id: "898310048990001".into(),
        mcc: "5411".into(),
        currency: 156,
        country: "CN".into(),
        name: "POSBRIDGE TEST STORE".into(),
        city: "SHANGHAI".into(),
        alternate_language: None,
    }
}

fn order() -> Order {
    Order {
        merchant: merchant(),
        amount_minor: 2372,
        reference: "9F3C2A7B1D4E6F8091A2B3C4".into(),
        terminal_label: "10000001".into(),
        tid: "10000001".into(),
        batch: "000123".into(),
        voucher: "000045".into(),
        operator: "001".into(),
        acquirer: "48020000".into(),
        transaction_type: "22".into(),
        expires_at: Expiry::parse("261126053000").unwrap(),
        key_id: Some("K1".into()),
    }
}

fn chinese_merchant() -> Merchant {
    Merchant {
        alternate_language: Some(AlternateLanguage {
            language: "ZH".into(),
            name: "上海浦东新区便利店".into(),
            city: Some("上海".into()),
        }),
        ..merchant()
    }
}

/// posbridge's payloads: dynamic (plain, Chinese, yen, longest signature) and static.
fn posbridge_payloads() -> Vec<Payload> {
    let signed = |order: Order, signature: &[u8]| {
        order.unsigned().unwrap().with_signature(signature).unwrap()
    };
    let yen = Order {
        merchant: Merchant {
            currency: 392,
            country: "JP".into(),
            ..merchant()
        },
        amount_minor: 1500,
        key_id: None,
        ..order()
    };
    vec![
        signed(order(), &[0x5A; 8]),
        signed(
            Order {
                merchant: chinese_merchant(),
                ..order()
            },
            &[0xC3; 32],
        ),
        signed(yen, &[0x01; 4]),
        StaticCode {
            merchant: merchant(),
            store_label: None,
            terminal_label: None,
        }
        .payload()
        .unwrap(),
        StaticCode {
            merchant: chinese_merchant(),
            store_label: Some("PUDONG 3".into()),
            terminal_label: Some("TILL 2".into()),
        }
        .payload()
        .unwrap(),
    ]
}

/// Checks that cemacqr's objects are exactly our tree, template by template.
fn assert_same_objects(payload: &Payload, seen: &Json) {
    let objects = seen["objects"].as_array().unwrap();
    let ours: Vec<&Field> = payload.fields().iter().collect();
    assert_eq!(objects.len(), ours.len() + 1, "{seen}");
    for (field, object) in ours.iter().zip(objects) {
        assert_eq!(object[0].as_str().unwrap(), field.id.to_string());
        if let Value::Template(children) = &field.value {
            let theirs = object[2].as_array().unwrap();
            assert_eq!(theirs.len(), children.len(), "template {}", field.id);
            for (child, their) in children.iter().zip(theirs) {
                assert_eq!(their[0].as_str().unwrap(), child.id.to_string());
                if let Value::Text(text) = &child.value {
                    assert_eq!(their[1].as_str().unwrap(), text);
                }
            }
        } else {
            assert_eq!(object[1].as_str(), field.value.as_text());
        }
    }
    let last = objects.last().unwrap();
    assert_eq!(last[0], "63");
    assert_eq!(last[1].as_str().unwrap(), payload.crc_hex());
}

#[test]
fn cemacqr_accepts_posbridge_payloads_and_reads_the_same_fields() {
    let payloads = posbridge_payloads();
    let texts: Vec<String> = payloads.iter().map(Payload::encode).collect();
    let seen = cemacqr_reads(&texts);
    assert_eq!(seen.len(), payloads.len());
    for ((payload, text), seen) in payloads.iter().zip(&texts).zip(&seen) {
        assert_eq!(seen["status"], "VALID", "{text}\n{seen}");
        assert_eq!(seen["crc_ok"], true, "{text}");
        let dynamic = payload.amount_text().is_some();
        assert_eq!(seen["is_static"], !dynamic);
        assert_eq!(seen["merchant_name"].as_str(), payload.merchant_name());
        assert_eq!(seen["merchant_city"].as_str(), payload.merchant_city());
        assert_eq!(
            seen["currency"].as_str(),
            payload.text(posbridge_codecs::emv_qr::Id::CURRENCY)
        );
        match payload.amount_minor().unwrap() {
            Some(2372) => assert_eq!(seen["amount"], "23.72"),
            Some(1500) => assert_eq!(seen["amount"], "1500"),
            Some(other) => panic!("unexpected amount {other}"),
            None => assert_eq!(seen["amount"], Json::Null),
        }
        assert_same_objects(payload, seen);
    }
}

#[test]
fn both_parsers_agree_on_emvco_example_and_on_a_bad_crc() {
    let bad_crc = EMVCO_EXAMPLE.replace("6304A13A", "6304A13B");
    let lowercase = EMVCO_EXAMPLE.replace("6304A13A", "6304a13a");
    let seen = cemacqr_reads(&[EMVCO_EXAMPLE.to_owned(), bad_crc.clone(), lowercase.clone()]);
    assert_eq!(seen[0]["status"], "VALID");
    assert_same_objects(&Payload::parse(EMVCO_EXAMPLE).unwrap(), &seen[0]);
    assert_eq!(seen[1]["status"], "INVALID");
    assert!(Payload::parse(&bad_crc).is_err());
    assert_eq!(seen[2]["status"], "VALID");
    assert!(Payload::parse(&lowercase).is_ok());
    // Our CRC for the example agrees with the specification's.
    let body = &EMVCO_EXAMPLE[..EMVCO_EXAMPLE.len() - 4];
    assert_eq!(format!("{:04X}", crc16(body.as_bytes())), "A13A");
}
