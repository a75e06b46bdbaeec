//! The message inspector as operators run it: the built `posbridge` binary on the golden fixtures.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::posbridge_bin;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

fn fixture(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/iso8583")
        .join(path)
}

fn fixture_hex(path: &str) -> String {
    std::fs::read_to_string(fixture(path))
        .unwrap()
        .trim()
        .to_owned()
}

fn run(args: &[&str]) -> Output {
    Command::new(posbridge_bin()).args(args).output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn human_output_masks_pan_and_redacts_mac_pin_and_keys() {
    let hex = fixture_hex("cups-pos/reversal-0400.hex");
    let out = ok(&["iso8583", "decode", "--spec", "cups-pos", "--hex", &hex]);
    assert!(
        out.starts_with("MTI     0400  (cups-pos)\nheader  6000030000603100310000\n"),
        "{out}"
    );
    let pan_line = out
        .lines()
        .find(|l| l.trim_start().starts_with("2 "))
        .unwrap();
    assert!(pan_line.ends_with(" 622202*********0123"), "{pan_line}");
    assert!(!out.contains("6222021234567890123"), "{out}");
    assert!(out.contains("[redacted MAC, 8 bytes]"), "{out}");
    assert!(!out.contains("1A2B3C4D00000000"), "{out}");
    // Sub-fields are listed under their field.
    assert!(
        out.lines()
            .any(|l| l.trim_start().starts_with("60.1") && l.ends_with(" 22")),
        "{out}"
    );
    // ICC data (field 55: it can carry the PAN and the track-2 equivalent, tags 5A and 57) is
    // card data: redacted, and its tags not listed.
    assert!(out.contains("[redacted card data,"), "{out}");
    assert!(
        !out.lines().any(|l| l.trim_start().starts_with("55.")),
        "{out}"
    );
    assert!(!out.contains("C2D4E6F8A1B3C5D7"), "{out}");

    let signon = ok(&[
        "iso8583",
        "decode",
        "--spec",
        "cups-pos",
        "--file",
        fixture("cups-pos/signon-0810.hex").to_str().unwrap(),
    ]);
    assert!(
        signon.contains("[redacted key material, 40 bytes]"),
        "{signon}"
    );
    assert!(!signon.contains("6701EAD6"), "{signon}");

    let host = ok(&[
        "iso8583",
        "decode",
        "--spec",
        "cups-host",
        "--hex",
        &fixture_hex("cups-host/purchase-0200.hex"),
    ]);
    assert!(host.contains("[redacted PIN block, 8 bytes]"), "{host}");
    assert!(!host.contains("A1CED0BFE25FDA02"), "{host}");
    assert!(
        host.contains("622202*********0123******************"),
        "track 2: {host}"
    );
}

#[test]
fn reveal_shows_everything() {
    let hex = fixture_hex("cups-pos/reversal-0400.hex");
    let out = ok(&[
        "iso8583", "decode", "--spec", "cups-pos", "--hex", &hex, "--reveal",
    ]);
    assert!(out.contains(" 6222021234567890123\n"), "{out}");
    assert!(out.contains(" 1A2B3C4D00000000\n"), "{out}");
}

#[test]
fn json_output_is_the_flat_unmasked_form() {
    let hex = fixture_hex("cups-pos/reversal-0400.hex");
    let out = ok(&[
        "iso8583", "decode", "--spec", "cups-pos", "--hex", &hex, "--json",
    ]);
    assert!(
        out.starts_with(r#"{"mti":"0400","header":"6000030000603100310000","fields":{"2":"6222021234567890123","3":"000000","#),
        "{out}"
    );
    let got: serde_json::Value = serde_json::from_str(&out).unwrap();
    let want: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("cups-pos/reversal-0400.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(got, want);

    // A dialect without a header has no "header" key; binary fields are uppercase hex.
    let ascii = ok(&[
        "iso8583",
        "decode",
        "--spec",
        "iso87ascii",
        "--hex",
        &fixture_hex("iso87ascii/purchase-0200.hex"),
        "--json",
    ]);
    assert!(
        ascii.starts_with(r#"{"mti":"0200","fields":{"2":"4761739001010010","#),
        "{ascii}"
    );
    assert!(ascii.contains(r#""128":"0102030405060708""#), "{ascii}");
}

#[test]
fn encode_reads_the_json_back_from_a_file_or_stdin() {
    for name in [
        "cups-pos/qr-sale-0200",
        "cups-host/purchase-0200",
        "iso87binary/purchase-0200",
    ] {
        let spec = name.split('/').next().unwrap();
        let json = fixture(&format!("{name}.json"));
        let out = ok(&[
            "iso8583",
            "encode",
            "--spec",
            spec,
            "--json",
            json.to_str().unwrap(),
        ]);
        assert_eq!(out.trim(), fixture_hex(&format!("{name}.hex")), "{name}");
    }
    let mut child = Command::new(posbridge_bin())
        .args(["iso8583", "encode", "--spec", "iso87ascii", "--json", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            std::fs::read_to_string(fixture("iso87ascii/echo-0800.json"))
                .unwrap()
                .as_bytes(),
        )
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        fixture_hex("iso87ascii/echo-0800.hex")
    );
}

#[test]
fn frame_adds_and_strips_the_dialects_length_prefix() {
    let json = fixture("cups-pos/signon-0800.json");
    let framed = ok(&[
        "iso8583",
        "encode",
        "--spec",
        "cups-pos",
        "--json",
        json.to_str().unwrap(),
        "--frame",
    ]);
    let bare = fixture_hex("cups-pos/signon-0800.hex");
    assert_eq!(
        framed.trim(),
        format!("{:04X}{bare}", bare.len() / 2),
        "2-byte binary length"
    );
    let out = ok(&[
        "iso8583",
        "decode",
        "--spec",
        "cups-pos",
        "--hex",
        framed.trim(),
        "--frame",
        "--json",
    ]);
    assert!(out.starts_with(r#"{"mti":"0800","#), "{out}");

    let json = fixture("iso87ascii/echo-0800.json");
    let framed = ok(&[
        "iso8583",
        "encode",
        "--spec",
        "iso87ascii",
        "--json",
        json.to_str().unwrap(),
        "--frame",
    ]);
    let bare = fixture_hex("iso87ascii/echo-0800.hex");
    let digits: String = format!("{:04}", bare.len() / 2)
        .bytes()
        .map(|b| format!("{b:02X}"))
        .collect();
    assert_eq!(framed.trim(), format!("{digits}{bare}"), "4 ASCII digits");
    ok(&[
        "iso8583",
        "decode",
        "--spec",
        "iso87ascii",
        "--hex",
        framed.trim(),
        "--frame",
    ]);

    // A prefix that disagrees with what follows is refused.
    let out = run(&[
        "iso8583",
        "decode",
        "--spec",
        "cups-pos",
        "--hex",
        &format!("0001{bare}"),
        "--frame",
    ]);
    assert!(!out.status.success());
}

#[test]
fn malformed_input_fails_with_one_line_naming_field_and_offset() {
    let hex = fixture_hex("cups-pos/reversal-0400.hex");
    let cut = &hex[..hex.len() - 40];
    let out = run(&["iso8583", "decode", "--spec", "cups-pos", "--hex", cut]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains("field 55 at byte 81: truncated"), "{err}");

    // With --frame, offsets count from the first byte given (the prefix included).
    let framed = format!("{:04X}{cut}", cut.len() / 2);
    let out = run(&[
        "iso8583", "decode", "--spec", "cups-pos", "--hex", &framed, "--frame",
    ]);
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("field 55 at byte 83: truncated"), "{err}");

    for bad in ["zz", "60", ""] {
        let out = run(&["iso8583", "decode", "--spec", "cups-pos", "--hex", bad]);
        assert!(!out.status.success(), "{bad}");
        assert_eq!(String::from_utf8(out.stderr).unwrap().lines().count(), 1);
    }
    let out = run(&[
        "iso8583",
        "decode",
        "--spec",
        "no-such-dialect",
        "--hex",
        "00",
    ]);
    assert!(!out.status.success());
}

#[test]
fn a_spec_file_path_works_like_a_builtin_name() {
    let spec = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("codecs/specs/cups-pos.toml");
    let hex = fixture_hex("cups-pos/qr-sale-0200.hex");
    let by_path = ok(&[
        "iso8583",
        "decode",
        "--spec",
        spec.to_str().unwrap(),
        "--hex",
        &hex,
        "--json",
    ]);
    let by_name = ok(&[
        "iso8583", "decode", "--spec", "cups-pos", "--hex", &hex, "--json",
    ]);
    assert_eq!(by_path, by_name);

    // A spec that contradicts itself is refused with file, field and key.
    let dir = std::env::temp_dir().join(format!("posbridge-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    let text = std::fs::read_to_string(&spec)
        .unwrap()
        .replacen("max = 19", "max = 100", 1);
    std::fs::write(&bad, text).unwrap();
    let out = run(&[
        "iso8583",
        "decode",
        "--spec",
        bad.to_str().unwrap(),
        "--hex",
        &hex,
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("bad.toml: field 2: key `max`"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
