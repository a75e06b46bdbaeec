//! EMV merchant-presented QR payloads: EMVCo's own example, CRC rules, character-counted lengths,
//! posbridge's static and dynamic payloads, order signatures, and properties (round trip, never
//! panic).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use posbridge_codecs::emv_qr::{
    AlternateLanguage, Expiry, Field, Id, Initiation, MAX_PAYLOAD_CHARS, Merchant, Order,
    POSBRIDGE_GUI, Payload, QrError, SIGNING_CONTEXT, StaticCode, Value, VerifyError, crc16,
    order_signing_input, read_order, verify_order,
};
use proptest::prelude::*;

/// EMVCo MPM specification v1.1, Annex B example (248 characters, CRC A13A).
const EMVCO_EXAMPLE: &str = "00020101021229300012D156000000000510A93FO3230Q31280012D15600000001030812345678520441115802CN5914BEST TRANSPORT6007BEIJING64200002ZH0104最佳运输0202北京540523.7253031565502016233030412340603***0708A60086670902ME91320016A0112233449988770708123456786304A13A";

fn id(n: u8) -> Id {
    Id::new(n).unwrap()
}

/// Rewrites the last four characters (the CRC) of a payload with a correct CRC.
fn with_recomputed_crc(text: &str) -> String {
    let body = &text[..text.len() - 4];
    format!("{body}{:04X}", crc16(body.as_bytes()))
}

#[test]
fn crc_check_value_is_29b1() {
    assert_eq!(crc16(b"123456789"), 0x29B1);
}

#[test]
fn emvco_example_parses_every_tag_and_reserialises_identically() {
    assert_eq!(EMVCO_EXAMPLE.chars().count(), 248);
    let payload = Payload::parse(EMVCO_EXAMPLE).unwrap();
    let ids: Vec<u8> = payload.fields().iter().map(|f| f.id.value()).collect();
    assert_eq!(ids, [0, 1, 29, 31, 52, 58, 59, 60, 64, 54, 53, 55, 62, 91]);
    assert_eq!(payload.encode(), EMVCO_EXAMPLE);
    assert_eq!(payload.crc_hex(), "A13A");

    assert_eq!(payload.text(id(0)), Some("01"));
    assert_eq!(payload.initiation(), Some(Initiation::Dynamic));
    let accounts: Vec<Id> = payload.merchant_accounts().map(|(id, _)| id).collect();
    assert_eq!(accounts, [id(29), id(31)]);
    assert_eq!(
        payload.template(id(29)).unwrap(),
        [
            Field::text(id(0), "D15600000000"),
            Field::text(id(5), "A93FO3230Q")
        ]
    );
    let (found, fields) = payload.merchant_account("D15600000001").unwrap();
    assert_eq!(found, id(31));
    assert_eq!(fields[1], Field::text(id(3), "12345678"));
    assert_eq!(payload.mcc(), Some("4111"));
    assert_eq!(payload.currency(), Some(156));
    assert_eq!(payload.amount_text(), Some("23.72"));
    assert_eq!(payload.amount_minor(), Ok(Some(2372)));
    assert_eq!(payload.text(id(55)), Some("01"));
    assert_eq!(payload.country(), Some("CN"));
    assert_eq!(payload.merchant_name(), Some("BEST TRANSPORT"));
    assert_eq!(payload.merchant_city(), Some("BEIJING"));

    let additional = payload.additional_data();
    assert_eq!(additional.store_label(), Some("1234"));
    assert_eq!(additional.text(id(6)), Some("***"));
    assert_eq!(additional.terminal_label(), Some("A6008667"));
    assert_eq!(additional.text(id(9)), Some("ME"));
    assert_eq!(additional.reference_label(), None);

    let language = payload.language().unwrap();
    assert_eq!(
        (language.preference, language.name, language.city),
        ("ZH", "最佳运输", Some("北京"))
    );

    let unreserved: Vec<(Id, &[Field])> = payload.unreserved_templates().collect();
    assert_eq!(unreserved.len(), 1);
    assert_eq!(unreserved[0].0, id(91));
    assert_eq!(
        unreserved[0].1,
        [
            Field::text(id(0), "A011223344998877"),
            Field::text(id(7), "12345678")
        ]
    );
}

#[test]
fn json_tree_keeps_payload_order_and_nests_templates() {
    let payload = Payload::parse(EMVCO_EXAMPLE).unwrap();
    let json = serde_json::to_string(&payload).unwrap();
    assert!(
        json.starts_with(
            r#"{"00":"01","01":"12","29":{"00":"D15600000000","05":"A93FO3230Q"},"31":"#
        )
    );
    assert!(json.contains(r#""64":{"00":"ZH","01":"最佳运输","02":"北京"},"54":"23.72""#));
    assert!(json.ends_with(r#""91":{"00":"A011223344998877","07":"12345678"},"63":"A13A"}"#));
}

#[test]
fn lowercase_crc_is_accepted_and_a_bad_crc_rejected() {
    let lower = EMVCO_EXAMPLE.replace("6304A13A", "6304a13a");
    let payload = Payload::parse(&lower).unwrap();
    assert_eq!(payload.encode(), EMVCO_EXAMPLE);

    let bad = EMVCO_EXAMPLE.replace("6304A13A", "6304A13B");
    assert_eq!(
        Payload::parse(&bad),
        Err(QrError::CrcMismatch {
            stated: "A13B".into(),
            computed: "A13A".into()
        })
    );
    // One changed character in the body breaks the CRC too.
    let changed = EMVCO_EXAMPLE.replace("BEIJING", "BEIJINH");
    assert!(matches!(
        Payload::parse(&changed),
        Err(QrError::CrcMismatch { .. })
    ));
    let not_hex = EMVCO_EXAMPLE.replace("6304A13A", "6304A13G");
    let error = Payload::parse(&not_hex).unwrap_err();
    assert!(error.to_string().contains("4 hex digits"), "{error}");
}

#[test]
fn lengths_count_characters_not_bytes() {
    // "最佳运输" is 4 characters and 12 UTF-8 bytes; its length field says 04.
    assert!(EMVCO_EXAMPLE.contains("0104最佳运输"));
    let fields =
        posbridge_codecs::emv_qr::parse_fields("0104最佳运输0202北京", Some(Id::LANGUAGE)).unwrap();
    assert_eq!(
        fields,
        [Field::text(id(1), "最佳运输"), Field::text(id(2), "北京")]
    );

    // A builder writes character counts too.
    let mut order = sample_order();
    order.merchant.alternate_language = Some(AlternateLanguage {
        language: "ZH".into(),
        name: "上海浦东新区便利店".into(),
        city: Some("上海".into()),
    });
    let payload = order
        .unsigned()
        .unwrap()
        .with_signature(&[0xAB; 16])
        .unwrap();
    let text = payload.encode();
    assert!(
        text.contains("64250002ZH0109上海浦东新区便利店0202上海"),
        "{text}"
    );
    assert_eq!(Payload::parse(&text).unwrap(), payload);
    // Counting bytes would give a different, wrong, length: 9 characters are 27 bytes.
    assert_eq!("上海浦东新区便利店".len(), 27);
}

fn error_of(text: &str) -> QrError {
    Payload::parse(&with_recomputed_crc(text)).unwrap_err()
}

#[test]
fn malformed_payloads_are_rejected_with_clear_errors() {
    assert_eq!(Payload::parse(""), Err(QrError::Empty));
    let long = "0".repeat(MAX_PAYLOAD_CHARS + 1);
    assert_eq!(
        Payload::parse(&long),
        Err(QrError::TooLong {
            chars: 513,
            max: 512
        })
    );

    // 00 must come first.
    let swapped = EMVCO_EXAMPLE.replacen("000201010212", "010212000201", 1);
    assert!(matches!(error_of(&swapped), QrError::Placement(m) if m.contains("first")));
    // 00 must be "01".
    let version = EMVCO_EXAMPLE.replacen("000201", "000202", 1);
    assert!(error_of(&version).to_string().contains("must be \"01\""));
    // 63 must be last.
    let after = format!("{}9903abc", EMVCO_EXAMPLE);
    assert!(matches!(Payload::parse(&after), Err(QrError::Placement(m)) if m.contains("last")));
    // 63 must be present.
    let no_crc = &EMVCO_EXAMPLE[..EMVCO_EXAMPLE.len() - 8];
    assert_eq!(
        Payload::parse(no_crc),
        Err(QrError::Missing {
            path: "63".into(),
            what: "CRC"
        })
    );

    // Non-digit ID, non-digit length, zero length, a value running past the end.
    let error = Payload::parse("0002010A02126304FFFF").unwrap_err();
    assert!(
        error
            .to_string()
            .contains("ID must be two digits, found \"0A\""),
        "{error}"
    );
    let error = Payload::parse("00020101x2126304FFFF").unwrap_err();
    assert!(
        error
            .to_string()
            .contains("length of data object 01 must be two digits"),
        "{error}"
    );
    let error = Payload::parse("00020101001263041234").unwrap_err();
    assert!(error.to_string().contains("length 00"), "{error}");
    let error = Payload::parse("000201019912").unwrap_err();
    assert_eq!(
        error.to_string(),
        "at character 10: data object 01 declares 99 characters but only 2 remain"
    );
    let error = Payload::parse("0002010").unwrap_err();
    assert!(error.to_string().contains("truncated"), "{error}");

    // A bad length inside a template.
    let inner = EMVCO_EXAMPLE.replacen("29300012D156", "29300099D156", 1);
    let error = error_of(&inner);
    assert!(
        error.to_string().contains("data object 29.00 declares 99"),
        "{error}"
    );

    // Amount format.
    let amount = EMVCO_EXAMPLE.replacen("540523.72", "54052.3.7", 1);
    let error = error_of(&amount);
    assert!(
        error
            .to_string()
            .contains("data object 54 (Transaction Amount)"),
        "{error}"
    );
    let amount = EMVCO_EXAMPLE.replacen("540523.72", "5405-3.72", 1);
    assert!(matches!(error_of(&amount), QrError::Invalid { path, .. } if path == "54"));

    // Duplicate tag.
    let twice = EMVCO_EXAMPLE.replacen("5802CN", "5802CN5802CN", 1);
    assert_eq!(error_of(&twice), QrError::Duplicate { path: "58".into() });

    // Mandatory fields and template GUIs.
    let no_mcc = EMVCO_EXAMPLE.replacen("52044111", "", 1);
    assert_eq!(
        error_of(&no_mcc),
        QrError::Missing {
            path: "52".into(),
            what: "merchant category code"
        }
    );
    let no_gui = EMVCO_EXAMPLE.replacen("91320016A0112233449988770708", "91120708", 1);
    assert!(matches!(error_of(&no_gui), QrError::Missing { path, .. } if path == "91.00"));
    let initiation = EMVCO_EXAMPLE.replacen("010212", "010213", 1);
    assert!(matches!(error_of(&initiation), QrError::Invalid { path, .. } if path == "01"));
}

#[test]
fn amounts_follow_the_currency_exponent() {
    let jpy = EMVCO_EXAMPLE.replacen("540523.725303156", "540410005303392", 1);
    let payload = Payload::parse(&with_recomputed_crc(&jpy)).unwrap();
    assert_eq!(payload.amount_minor(), Ok(Some(1000)));
    let fractional_yen = EMVCO_EXAMPLE.replacen("5303156", "5303392", 1);
    let payload = Payload::parse(&with_recomputed_crc(&fractional_yen)).unwrap();
    let error = payload.amount_minor().unwrap_err();
    assert!(
        error
            .to_string()
            .contains("has 2 decimals; the currency has 0"),
        "{error}"
    );
    let bhd = EMVCO_EXAMPLE.replacen("5303156", "5303048", 1);
    let payload = Payload::parse(&with_recomputed_crc(&bhd)).unwrap();
    assert_eq!(payload.amount_minor(), Ok(Some(23_720)));
}

// ------------------------------------------------------------------------------------------------
// posbridge's payloads
// ------------------------------------------------------------------------------------------------

fn sample_merchant() -> Merchant {
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

fn sample_order() -> Order {
    Order {
        merchant: sample_merchant(),
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

/// A keyed test MAC (FNV-1a over key and message): stands in for the security module, which
/// owns the real algorithm and key. Good enough to show what the payload layer guarantees: any
/// change to the signed bytes changes the result.
fn test_mac(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.iter().chain(message) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash.to_be_bytes().to_vec()
}

const KEY: &[u8] = b"test key held by the security module";

fn verify_with_test_key(
    message: &[u8],
    signature: &[u8],
    _key_id: Option<&str>,
) -> Result<bool, String> {
    Ok(test_mac(KEY, message) == signature)
}

fn signed_sample() -> Payload {
    sample_order()
        .unsigned()
        .unwrap()
        .sign(|message| Ok::<_, String>(test_mac(KEY, message)))
        .unwrap()
}

#[test]
fn dynamic_order_payload_layout() {
    let payload = signed_sample();
    let text = payload.encode();
    let signature = hex_upper(&test_mac(
        KEY,
        &sample_order().unsigned().unwrap().signing_input(),
    ));
    let expected_body = format!(
        "000201010212\
         26360013COM.POSBRIDGE0115898310048990001\
         520454115303156540523.725802CN5920POSBRIDGE TEST STORE6008SHANGHAI\
         62400524{reference}070810000001\
         80900013COM.POSBRIDGE0108100000010206000123030600004504030010508480200000602220712261126053000\
         81430013COM.POSBRIDGE0102K10216{signature}\
         6304",
        reference = "9F3C2A7B1D4E6F8091A2B3C4",
    );
    assert_eq!(&text[..text.len() - 4], expected_body);
    assert_eq!(
        &text[text.len() - 4..],
        format!("{:04X}", crc16(expected_body.as_bytes()))
    );
    assert_eq!(Payload::parse(&text).unwrap(), payload);
    assert_eq!(payload.initiation(), Some(Initiation::Dynamic));
}

fn hex_upper(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

#[test]
fn signing_input_is_the_payload_without_signature_and_crc() {
    let unsigned = sample_order().unsigned().unwrap();
    let input = unsigned.signing_input();
    let payload = signed_sample();
    assert_eq!(order_signing_input(&payload), input);
    assert!(input.starts_with(SIGNING_CONTEXT));
    let text = String::from_utf8(input[SIGNING_CONTEXT.len()..].to_vec()).unwrap();
    let encoded = payload.encode();
    let without_signature = encoded.split("8143").next().unwrap();
    assert_eq!(text, without_signature);
}

#[test]
fn a_genuine_order_verifies_and_reads_back() {
    let payload = Payload::parse(&signed_sample().encode()).unwrap();
    let order = verify_order(&payload, POSBRIDGE_GUI, verify_with_test_key).unwrap();
    let sample = sample_order();
    assert_eq!(order.merchant_id, sample.merchant.merchant_id);
    assert_eq!((order.amount_minor, order.currency), (2372, 156));
    assert_eq!(order.reference, sample.reference);
    assert_eq!(order.terminal_label.as_deref(), Some("10000001"));
    assert_eq!(
        (
            &*order.tid,
            &*order.batch,
            &*order.voucher,
            &*order.operator,
            &*order.acquirer
        ),
        ("10000001", "000123", "000045", "001", "48020000")
    );
    assert_eq!(order.transaction_type, "22");
    assert_eq!(order.expires_at, sample.expires_at);
    assert_eq!(order.key_id.as_deref(), Some("K1"));
    assert_eq!(order.signature.len(), 8);
    // The GUI is compared without regard to ASCII case.
    assert!(verify_order(&payload, "com.posbridge", verify_with_test_key).is_ok());
}

#[test]
fn a_tampered_amount_with_a_recomputed_crc_parses_but_fails_the_signature() {
    let genuine = signed_sample().encode();
    let tampered = with_recomputed_crc(&genuine.replacen("540523.72", "54040.01", 1));
    assert_ne!(tampered, genuine);
    // The CRC is no protection: the altered payload is a perfectly valid MPM payload.
    let payload = Payload::parse(&tampered).unwrap();
    assert_eq!(payload.amount_minor(), Ok(Some(1)));
    // The signature is.
    let result = verify_order(&payload, POSBRIDGE_GUI, verify_with_test_key);
    assert!(
        matches!(result, Err(VerifyError::BadSignature)),
        "{result:?}"
    );

    // So is a changed voucher, reference or merchant name.
    for (from, to) in [
        ("0306000045", "0306000046"),
        ("05249F3C", "05249E3C"),
        ("POSBRIDGE TEST STORE", "POSBRIDGE EVIL STORE"),
    ] {
        let tampered = with_recomputed_crc(&genuine.replacen(from, to, 1));
        let payload = Payload::parse(&tampered).unwrap();
        let result = verify_order(&payload, POSBRIDGE_GUI, verify_with_test_key);
        assert!(
            matches!(result, Err(VerifyError::BadSignature)),
            "{from}: {result:?}"
        );
    }
    // A verifier that fails is reported as such, not as a bad signature.
    let payload = Payload::parse(&genuine).unwrap();
    let result = verify_order(&payload, POSBRIDGE_GUI, |_, _, _| Err("HSM unreachable"));
    assert!(matches!(
        result,
        Err(VerifyError::Verifier("HSM unreachable"))
    ));
}

#[test]
fn static_payload_has_no_amount_reference_or_order() {
    let code = StaticCode {
        merchant: sample_merchant(),
        store_label: None,
        terminal_label: Some("STALL 7".into()),
    };
    let payload = code.payload().unwrap();
    let text = payload.encode();
    assert!(text.starts_with("000201010211263600"), "{text}");
    let parsed = Payload::parse(&text).unwrap();
    assert_eq!(parsed.initiation(), Some(Initiation::Static));
    assert_eq!(parsed.amount_text(), None);
    assert_eq!(parsed.amount_minor(), Ok(None));
    assert_eq!(parsed.additional_data().reference_label(), None);
    assert_eq!(parsed.additional_data().terminal_label(), Some("STALL 7"));
    assert!(parsed.template(id(80)).is_none() && parsed.template(id(81)).is_none());
    let (_, account) = parsed.merchant_account(POSBRIDGE_GUI).unwrap();
    assert_eq!(account[1], Field::text(id(1), "898310048990001"));
    assert!(read_order(&parsed, POSBRIDGE_GUI).is_err());
}

#[test]
fn order_fields_are_checked_before_signing() {
    type Change = Box<dyn Fn(&mut Order)>;
    let cases: Vec<(&str, Change)> = vec![
        (
            "62.05",
            Box::new(|o| o.reference = "ABCDEF0123456789ABCDEF".into()),
        ), // 88 bits
        (
            "62.05",
            Box::new(|o| o.reference = "abcdefghijklmnopqrst".into()),
        ),
        ("80.01", Box::new(|o| o.tid = "1234567".into())),
        ("80.02", Box::new(|o| o.batch = "12345A".into())),
        ("80.05", Box::new(|o| o.acquirer = "123456789012".into())),
        ("54", Box::new(|o| o.amount_minor = 0)),
        (
            "59",
            Box::new(|o| o.merchant.name = "A NAME LONGER THAN 25 CHARS".into()),
        ),
        ("59", Box::new(|o| o.merchant.name = "最佳运输".into())),
        ("26.01", Box::new(|o| o.merchant.merchant_id = "123".into())),
    ];
    for (path, change) in cases {
        let mut order = sample_order();
        change(&mut order);
        match order.unsigned() {
            Err(QrError::Invalid { path: found, .. }) => assert_eq!(found, path),
            other => panic!("{path}: {other:?}"),
        }
    }
    // A base32 reference of 20 characters (100 bits) is enough.
    let mut order = sample_order();
    order.reference = "MFRGGZDFMZTWQ2LKNNWG".into();
    assert!(order.unsigned().is_ok());
    // Signatures must be 4 to 32 bytes.
    assert!(
        sample_order()
            .unsigned()
            .unwrap()
            .with_signature(&[1, 2, 3])
            .is_err()
    );
    assert!(
        sample_order()
            .unsigned()
            .unwrap()
            .with_signature(&[7; 32])
            .is_ok()
    );
    // A long GUI overflows the 99-character template and is refused, not truncated.
    let mut order = sample_order();
    order.merchant.gui = "COM.EXAMPLE.A-VERY-LONG-GUI-NAME".into();
    order.operator = "123456".into();
    order.acquirer = "12345678901".into();
    let error = order.unsigned().unwrap_err();
    assert!(error.to_string().contains("data object 80"), "{error}");
}

#[test]
fn builder_refuses_trees_the_parser_would_not_read_back() {
    let base = || Payload::parse(EMVCO_EXAMPLE).unwrap().into_fields();
    let mut with_crc = base();
    with_crc.push(Field::text(Id::CRC, "A13A"));
    assert!(Payload::from_fields(with_crc).is_err());
    let mut text_template = base();
    text_template.push(Field::text(id(62), "0104test"));
    assert!(matches!(
        Payload::from_fields(text_template),
        Err(QrError::Invalid { .. }) | Err(QrError::Duplicate { .. })
    ));
    let mut fields = base();
    fields.retain(|f| f.id != id(91));
    fields.push(Field::text(id(91), "0004abcd"));
    let error = Payload::from_fields(fields).unwrap_err();
    assert!(error.to_string().contains("holds a template"), "{error}");
    let mut fields = base();
    fields.push(Field::template(id(61), vec![Field::text(id(0), "x")]));
    assert!(
        Payload::from_fields(fields)
            .unwrap_err()
            .to_string()
            .contains("not a template")
    );
    let mut fields = base();
    fields.push(Field::text(id(99 - 1), "x".repeat(100)));
    assert!(Payload::from_fields(fields).is_err());
    let mut fields = base();
    fields.push(Field::text(id(61), ""));
    assert!(Payload::from_fields(fields).is_err());
    assert_eq!(
        Payload::from_fields(base()).unwrap().encode(),
        EMVCO_EXAMPLE
    );
}

// ------------------------------------------------------------------------------------------------
// Properties
// ------------------------------------------------------------------------------------------------

/// Text for a primitive value: printable ASCII, with some Chinese now and then.
fn text_value(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::string::string_regex(&format!("[ -~]{{1,{max}}}")).unwrap(),
        1 => proptest::string::string_regex(&format!("[a-z最佳运输北京上海]{{1,{max}}}")).unwrap(),
    ]
}

fn sub_fields(
    ids: std::ops::RangeInclusive<u8>,
    count: usize,
) -> impl Strategy<Value = Vec<Field>> {
    proptest::collection::btree_map(ids, text_value(12), 0..count).prop_map(|map| {
        map.into_iter()
            .map(|(n, text)| Field::text(id(n), text))
            .collect()
    })
}

fn template_with_gui(template: u8) -> impl Strategy<Value = Field> {
    ("[A-Z.]{1,12}", sub_fields(1..=99, 4)).prop_map(move |(gui, rest)| {
        let mut fields = vec![Field::text(id(0), gui)];
        fields.extend(rest);
        Field::template(id(template), fields)
    })
}

fn additional_data() -> impl Strategy<Value = Field> {
    (
        sub_fields(1..=49, 4),
        proptest::option::of((50u8..=99, sub_fields(0..=99, 3))),
    )
        .prop_map(|(mut fields, nested)| {
            if let Some((n, children)) = nested
                && !children.is_empty()
            {
                fields.push(Field::template(id(n), children));
            }
            if fields.is_empty() {
                fields.push(Field::text(id(7), "T1"));
            }
            Field::template(Id::ADDITIONAL_DATA, fields)
        })
}

fn language() -> impl Strategy<Value = Field> {
    (
        "[A-Z]{2}",
        text_value(10),
        proptest::option::of(text_value(8)),
    )
        .prop_map(|(lang, name, city)| {
            let mut fields = vec![Field::text(id(0), lang), Field::text(id(1), name)];
            if let Some(city) = city {
                fields.push(Field::text(id(2), city));
            }
            Field::template(Id::LANGUAGE, fields)
        })
}

/// Random valid payload trees: the mandatory fields, a few optional and unknown ones, in random
/// order after 00.
fn payload_tree() -> impl Strategy<Value = Vec<Field>> {
    let middle = (
        prop_oneof![Just("11"), Just("12")],
        proptest::collection::btree_set(26u8..=51, 1..3),
        "[0-9]{4}",
        "[0-9]{3}",
        proptest::option::of("[0-9]{1,7}(\\.[0-9]{0,2})?"),
        "[A-Z]{2}",
        "[ -~]{1,25}",
        "[ -~]{1,15}",
        proptest::option::of(additional_data()),
        proptest::option::of(language()),
        proptest::option::of(80u8..=99),
        proptest::option::of((2u8..=25, "[0-9]{8,16}")),
    );
    (
        middle,
        proptest::collection::vec(template_with_gui(26), 2),
        template_with_gui(80),
    )
        .prop_flat_map(|(m, accounts, unreserved)| {
            let (
                initiation,
                account_ids,
                mcc,
                currency,
                amount,
                country,
                name,
                city,
                add,
                lang,
                u,
                primitive,
            ) = m;
            let mut fields = vec![
                Field::text(id(1), initiation),
                Field::text(Id::MCC, mcc),
                Field::text(Id::CURRENCY, currency),
                Field::text(Id::COUNTRY, country),
                Field::text(Id::MERCHANT_NAME, name),
                Field::text(Id::MERCHANT_CITY, city),
            ];
            for (n, account) in account_ids.into_iter().zip(accounts) {
                fields.push(Field {
                    id: id(n),
                    value: account.value,
                });
            }
            if let Some(amount) = amount {
                fields.push(Field::text(Id::AMOUNT, amount));
            }
            fields.extend(add);
            fields.extend(lang);
            if let Some(n) = u {
                fields.push(Field {
                    id: id(n),
                    value: unreserved.value,
                });
            }
            if let Some((n, text)) = primitive {
                fields.push(Field::text(id(n), text));
            }
            Just(fields).prop_shuffle()
        })
        .prop_map(|middle| {
            let mut fields = vec![Field::text(Id::PAYLOAD_FORMAT, "01")];
            fields.extend(middle);
            fields
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_trees_round_trip(fields in payload_tree()) {
        let payload = match Payload::from_fields(fields.clone()) {
            Ok(payload) => payload,
            // Only the 99-character template and 512-character payload limits may refuse a tree.
            Err(QrError::TooLong { .. }) => return Err(TestCaseError::reject("too long")),
            Err(QrError::Invalid { problem, .. }) if problem.contains("lengths run from") => {
                return Err(TestCaseError::reject("template too long"))
            }
            Err(other) => return Err(TestCaseError::fail(format!("{other}"))),
        };
        let text = payload.encode();
        let parsed = Payload::parse(&text).map_err(|e| TestCaseError::fail(format!("{e}: {text}")))?;
        prop_assert_eq!(parsed.fields(), &fields[..]);
        prop_assert_eq!(parsed.encode(), text);
    }

    #[test]
    fn random_strings_never_panic(text in any::<String>()) {
        let _ = Payload::parse(&text);
        let _ = posbridge_codecs::emv_qr::parse_fields(&text, None);
    }

    #[test]
    fn digit_soup_never_panics(text in "[0-9]{0,64}(6304[0-9A-F]{4})?") {
        let _ = Payload::parse(&text);
    }

    #[test]
    fn mutated_valid_payloads_never_panic(
        position in 0usize..300,
        replacement in any::<char>(),
        cut in 0usize..300,
    ) {
        let chars: Vec<char> = EMVCO_EXAMPLE.chars().collect();
        let mut mutated = chars.clone();
        if position < mutated.len() {
            mutated[position] = replacement;
        }
        let mutated: String = mutated.into_iter().collect();
        if let Ok(payload) = Payload::parse(&with_recomputed_crc_chars(&mutated)) {
            // Whatever parses re-encodes to something that parses to the same tree.
            let again = Payload::parse(&payload.encode()).unwrap();
            prop_assert_eq!(again, payload);
        }
        let truncated: String = chars.iter().take(cut).collect();
        prop_assert!(Payload::parse(&truncated).is_err() || cut >= chars.len());
        let _ = Payload::parse(&with_recomputed_crc_chars(&truncated));
    }
}

/// Like [`with_recomputed_crc`] but safe for any text: replaces the last four characters.
fn with_recomputed_crc_chars(text: &str) -> String {
    let count = text.chars().count();
    if count < 4 {
        return text.to_owned();
    }
    let body: String = text.chars().take(count - 4).collect();
    format!("{body}{:04X}", crc16(body.as_bytes()))
}

#[test]
fn value_accessors() {
    let value = Value::Text("x".into());
    assert_eq!(value.as_text(), Some("x"));
    assert_eq!(value.as_template(), None);
    assert_eq!(Id::new(100), None);
    assert_eq!(Id::new(7).unwrap().to_string(), "07");
}

#[test]
fn read_order_applies_the_writer_rules_to_codes_made_elsewhere() {
    // A code laid out by hand (as a terminal might) with a 5-digit batch and a short reference.
    let fields = signed_sample().into_fields();
    let rewrite = |fields: &[Field], template: u8, sub: u8, text: &str| -> Vec<Field> {
        fields
            .iter()
            .map(|field| match &field.value {
                Value::Template(children) if field.id == id(template) => Field::template(
                    field.id,
                    children
                        .iter()
                        .map(|c| {
                            if c.id == id(sub) {
                                Field::text(c.id, text)
                            } else {
                                c.clone()
                            }
                        })
                        .collect(),
                ),
                _ => field.clone(),
            })
            .collect()
    };
    for (template, sub, text, path) in [
        (80, 2, "12345", "80.02"),
        (80, 1, "TID", "80.01"),
        (62, 5, "SHORTREF", "62.05"),
        (81, 2, "ABCD", "81.02"),
        (81, 2, "XYZ0XYZ0", "81.02"),
    ] {
        let payload = Payload::from_fields(rewrite(&fields, template, sub, text)).unwrap();
        let parsed = Payload::parse(&payload.encode()).unwrap();
        match read_order(&parsed, POSBRIDGE_GUI) {
            Err(QrError::Invalid { path: found, .. }) => assert_eq!(found, path),
            other => panic!("{path}: {other:?}"),
        }
        let result = verify_order(&parsed, POSBRIDGE_GUI, |_, _, _| -> Result<bool, String> {
            panic!("the verifier must not be asked about a malformed order")
        });
        assert!(matches!(result, Err(VerifyError::Payload(_))));
    }
    // Another GUI is not posbridge's order.
    let result = read_order(&signed_sample(), "COM.OTHER");
    assert!(result.is_err());
}
