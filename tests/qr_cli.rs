//! `posbridge qr decode` and `posbridge qr render`, run as an operator would run them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::posbridge_bin;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use posbridge_codecs::emv_qr::{Expiry, Merchant, Order, POSBRIDGE_GUI};

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/qr")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn emvco_example() -> String {
    fixture("emvco-example.txt").trim_end().to_owned()
}

fn posbridge(args: &[&str]) -> Output {
    Command::new(posbridge_bin()).args(args).output().unwrap()
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("posbridge-qr-cli-{}-{name}", std::process::id()))
}

fn dynamic_payload() -> String {
    let order = Order {
        merchant: Merchant {
            gui: POSBRIDGE_GUI.into(),
            merchant_id: "898310048990001".into(),
            mcc: "5411".into(),
            currency: 156,
            country: "CN".into(),
            name: "POSBRIDGE TEST STORE".into(),
            city: "SHANGHAI".into(),
            alternate_language: None,
        },
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
        key_id: None,
    };
    order
        .unsigned()
        .unwrap()
        .with_signature(&[0x11; 8])
        .unwrap()
        .encode()
}

#[test]
fn decode_json_matches_the_fixture_and_keeps_payload_order() {
    let out = stdout(&posbridge(&["qr", "decode", "--json", &emvco_example()]));
    assert_eq!(out, fixture("emvco-example.json"));
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["64"]["01"], "最佳运输");
    assert_eq!(json["62"]["07"], "A6008667");
    assert_eq!(json["54"], "23.72");
    assert_eq!(json["63"], "A13A");
    // Keys appear in payload order (54 after 64), not sorted.
    assert!(out.find("\"64\"").unwrap() < out.find("\"54\"").unwrap());
}

#[test]
fn decode_for_people_names_every_tag() {
    let out = stdout(&posbridge(&["qr", "decode", &emvco_example()]));
    assert_eq!(out, fixture("emvco-example.decoded.txt"));
    assert!(out.contains("59 Merchant Name: BEST TRANSPORT\n"));
    assert!(out.contains("53 Transaction Currency: 156 (CNY)\n"));
    assert!(out.contains("  64.01 Merchant Name - Alternate Language: 最佳运输\n"));

    let out = stdout(&posbridge(&["qr", "decode", &dynamic_payload()]));
    assert!(
        out.contains("01 Point of Initiation Method: 12 (dynamic)\n"),
        "{out}"
    );
    assert!(
        out.contains("  62.05 Reference Label: 9F3C2A7B1D4E6F8091A2B3C4\n"),
        "{out}"
    );
    assert!(out.contains("  80.01 Terminal ID: 10000001\n"), "{out}");
    assert!(
        out.contains("  80.07 Expiry (UTC YYMMDDhhmmss): 261126053000\n"),
        "{out}"
    );
    assert!(
        out.contains("  81.02 Signature: 1111111111111111\n"),
        "{out}"
    );
}

#[test]
fn decode_reads_standard_input_and_accepts_a_lowercase_crc() {
    let lower = emvco_example().replace("6304A13A", "6304a13a");
    let mut child = Command::new(posbridge_bin())
        .args(["qr", "decode", "--json", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{lower}").unwrap();
    let out = stdout(&child.wait_with_output().unwrap());
    assert!(out.contains("\"59\": \"BEST TRANSPORT\""));
}

#[test]
fn a_bad_crc_fails_with_one_line() {
    for bad in [
        emvco_example().replace("6304A13A", "6304A13B"),
        emvco_example().replace("23.72", "93.72"),
    ] {
        for command in [
            &["qr", "decode"][..],
            &["qr", "decode", "--json"],
            &["qr", "render", "--terminal"],
        ] {
            let mut args = command.to_vec();
            args.push(&bad);
            let output = posbridge(&args);
            assert!(!output.status.success(), "{command:?} accepted a bad CRC");
            assert!(output.stdout.is_empty());
            let stderr = String::from_utf8(output.stderr).unwrap();
            assert_eq!(stderr.lines().count(), 1, "{stderr}");
            assert!(
                stderr
                    .starts_with("error: not a valid EMV merchant-presented payload: CRC mismatch"),
                "{stderr}"
            );
        }
    }
}

#[test]
fn render_png_and_svg_write_files_that_scan() {
    let payload = dynamic_payload();
    let png = temp_path("code.png");
    stdout(&posbridge(&[
        "qr",
        "render",
        &payload,
        "--png",
        png.to_str().unwrap(),
        "--module-px",
        "4",
    ]));
    let image = image::open(&png).unwrap().to_luma8();
    std::fs::remove_file(&png).unwrap();
    let (width, height) = (image.width() as usize, image.height() as usize);
    let mut prepared = rqrr::PreparedImage::prepare_from_greyscale(width, height, |x, y| {
        image.get_pixel(x as u32, y as u32).0[0]
    });
    let grids = prepared.detect_grids();
    let mut bytes = Vec::new();
    grids[0].decode_to(&mut bytes).unwrap();
    assert_eq!(bytes, payload.as_bytes());

    let svg = temp_path("code.svg");
    stdout(&posbridge(&[
        "qr",
        "render",
        &payload,
        "--svg",
        svg.to_str().unwrap(),
    ]));
    let text = std::fs::read_to_string(&svg).unwrap();
    std::fs::remove_file(&svg).unwrap();
    assert!(text.starts_with("<?xml") && text.contains("<svg"));
}

#[test]
fn render_terminal_and_ascii_print_the_code() {
    let out = stdout(&posbridge(&[
        "qr",
        "render",
        &emvco_example(),
        "--terminal",
    ]));
    assert!(out.lines().count() > 20);
    assert!(
        out.chars()
            .all(|c| matches!(c, '█' | '▀' | '▄' | ' ' | '\n'))
    );
    let out = stdout(&posbridge(&["qr", "render", &emvco_example(), "--ascii"]));
    assert!(out.is_ascii() && out.contains("##"));
}

#[test]
fn render_needs_exactly_one_output() {
    let output = posbridge(&["qr", "render", &emvco_example()]);
    assert!(!output.status.success());
    let output = posbridge(&["qr", "render", &emvco_example(), "--terminal", "--ascii"]);
    assert!(!output.status.success());
    let output = posbridge(&[
        "qr",
        "render",
        &emvco_example(),
        "--png",
        "/nonexistent-dir/x.png",
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.starts_with("error: writing /nonexistent-dir/x.png"),
        "{stderr}"
    );
}
