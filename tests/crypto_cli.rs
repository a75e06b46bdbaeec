//! The operator's calculator (`posbridge crypto ...`), run as the binary operators run: published
//! vectors in, one uppercase hex line (or a JSON object) out; bad input is one line on standard
//! error and a non-zero exit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::posbridge_bin;
use std::process::{Command, Output};

fn posbridge(args: &[&str]) -> Output {
    Command::new(posbridge_bin()).args(args).output().unwrap()
}

/// Runs and returns the single stdout line, asserting success.
fn line(args: &[&str]) -> String {
    let output = posbridge(args);
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    stdout.trim_end().to_owned()
}

/// Runs, asserts failure with a one-line error, returns it.
fn error(args: &[&str]) -> String {
    let output = posbridge(args);
    assert!(!output.status.success(), "{args:?} succeeded");
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    stderr
}

const TDES: &str = "0123456789ABCDEFFEDCBA9876543210";

#[test]
fn kcv_prints_the_check_value() {
    assert_eq!(line(&["crypto", "kcv", "--key", TDES]), "08D7B4");
    assert_eq!(
        line(&[
            "crypto",
            "kcv",
            "--key",
            &TDES.to_lowercase(),
            "--algo",
            "tdes"
        ]),
        "08D7B4"
    );
    let json: serde_json::Value =
        serde_json::from_str(&line(&["crypto", "kcv", "--key", TDES, "--json"])).unwrap();
    assert_eq!(json["kcv"], "08D7B4");
    // AES: CMAC of zeros, 5 bytes.
    let aes = line(&[
        "crypto",
        "kcv",
        "--key",
        "2B7E151628AED2A6ABF7158809CF4F3C",
        "--algo",
        "aes",
    ]);
    assert_eq!(aes.len(), 10);
    assert_eq!(aes, aes.to_uppercase());
}

#[test]
fn pin_block_clear_and_encrypted() {
    let base = [
        "crypto",
        "pin-block",
        "--format",
        "0",
        "--pin",
        "1234",
        "--pan",
        "4321987654321098",
    ];
    assert_eq!(line(&base), "04122D789ABCDEF6");
    let mut keyed = base.to_vec();
    keyed.extend(["--key", TDES]);
    assert_eq!(line(&keyed), "A1CED0BFE25FDA02");
    keyed.push("--json");
    let json: serde_json::Value = serde_json::from_str(&line(&keyed)).unwrap();
    assert_eq!(json["pin_block"], "A1CED0BFE25FDA02");
    assert_eq!(json["encrypted"], true);
}

#[test]
fn pin_block_reads_the_pin_from_stdin() {
    use std::io::Write;
    let mut child = Command::new(posbridge_bin())
        .args([
            "crypto",
            "pin-block",
            "--format",
            "0",
            "--pin",
            "-",
            "--pan",
            "4321987654321098",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"1234\n").unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        "04122D789ABCDEF6\n"
    );
}

#[test]
fn pin_block_formats_1_3_4_decode_back() {
    use posbridge_hsm::{ClearKey, Pan, PinBlock, PinBlockFormat, calculator};
    let pan = Pan::new("4111111111111111").unwrap();
    let des = ClearKey::from_hex(TDES).unwrap();
    let aes = ClearKey::from_hex("AF8CB133A78F8DC2D1359F18527593FB").unwrap();
    for (format, key) in [("1", &des), ("3", &des), ("4", &aes)] {
        let hex_key = hex::encode_upper(key.expose_secret());
        let out = line(&[
            "crypto",
            "pin-block",
            "--format",
            format,
            "--pin",
            "98765",
            "--pan",
            "4111111111111111",
            "--key",
            &hex_key,
        ]);
        let block = PinBlock::from_hex(&out).unwrap();
        let format: PinBlockFormat = format.parse().unwrap();
        let pin = calculator::decipher_pin_block(format, &block, &pan, key).unwrap();
        assert_eq!(pin.expose_secret(), "98765");
    }
    // Format 4 has no clear block.
    error(&[
        "crypto",
        "pin-block",
        "--format",
        "4",
        "--pin",
        "1234",
        "--pan",
        "4111111111111111",
    ]);
}

#[test]
fn mac_vectors() {
    let now_is = hex::encode("Now is the time for all ");
    assert_eq!(
        line(&[
            "crypto", "mac", "--algo", "x919", "--key", TDES, "--data", &now_is
        ]),
        "A1C72E74EA3FA9B6"
    );
    // UnionPay: the MAC text 5FE058DB is carried as its 8 ASCII bytes.
    let cups = [
        "crypto",
        "mac",
        "--algo",
        "cups-ecb",
        "--key",
        "55036372B17543ECB173730768B8D6C4",
        "--data",
        "1212B04E1227809C",
    ];
    assert_eq!(line(&cups), "3546453035384442");
    let mut cups_json = cups.to_vec();
    cups_json.push("--json");
    let json: serde_json::Value = serde_json::from_str(&line(&cups_json)).unwrap();
    assert_eq!(json["mac_text"], "5FE058DB");
    assert_eq!(
        line(&[
            "crypto",
            "mac",
            "--algo",
            "aes-cmac",
            "--key",
            "2b7e151628aed2a6abf7158809cf4f3c",
            "--data",
            "6bc1bee22e409f96e93d7e117393172a",
        ]),
        "070A16B46B4D4144F79BDD9DD04A287C"
    );
    // ISO 9797-1 algorithm 1, padding 2 (psec's documented example).
    assert_eq!(
        line(&[
            "crypto",
            "mac",
            "--algo",
            "iso9797-1",
            "--padding",
            "2",
            "--key",
            TDES,
            "--data",
            "1234567890ABCDEF",
        ]),
        "925B1737EF681AD3"
    );
}

#[test]
fn mac_reads_a_file() {
    let dir = std::env::temp_dir().join(format!("posbridge-crypto-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("message.bin");
    std::fs::write(&path, b"Now is the time for all ").unwrap();
    let out = line(&[
        "crypto",
        "mac",
        "--algo",
        "x919",
        "--key",
        TDES,
        "--file",
        path.to_str().unwrap(),
    ]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(out, "A1C72E74EA3FA9B6");
}

#[test]
fn key_combine_xors_components() {
    let out = line(&[
        "crypto",
        "key-combine",
        "--component",
        "0123456789ABCDEF0000000000000000",
        "--component",
        "00000000000000000000000000000000",
        "--component",
        "0000000000000000FEDCBA9876543210",
    ]);
    assert_eq!(out, format!("{TDES} 08D7B4"));
    let json: serde_json::Value = serde_json::from_str(&line(&[
        "crypto",
        "key-combine",
        "--component",
        TDES,
        "--component",
        TDES,
        "--json",
    ]))
    .unwrap();
    assert_eq!(json["key"], "00000000000000000000000000000000");
    assert_eq!(json["component_kcvs"][0], "08D7B4");
}

#[test]
fn bad_input_is_one_line_and_nonzero() {
    assert!(error(&["crypto", "kcv", "--key", "XYZ"]).contains("hex"));
    assert!(error(&["crypto", "kcv", "--key", "0011223344"]).contains("bytes"));
    assert!(
        error(&[
            "crypto", "mac", "--algo", "x919", "--key", TDES, "--data", "0G"
        ])
        .contains("hex")
    );
    assert!(
        error(&[
            "crypto", "mac", "--algo", "sha1", "--key", TDES, "--data", "00"
        ])
        .contains("algorithm")
    );
    // X9.19 needs a single or double-length key.
    error(&[
        "crypto",
        "mac",
        "--algo",
        "x919",
        "--key",
        &format!("{TDES}0011223344556677"),
        "--data",
        "00",
    ]);
    let pin_error = error(&[
        "crypto",
        "pin-block",
        "--format",
        "0",
        "--pin",
        "123",
        "--pan",
        "4321987654321098",
    ]);
    assert!(pin_error.contains("PIN"), "{pin_error}");
    assert!(!pin_error.contains("123 "), "{pin_error}");
    error(&[
        "crypto",
        "pin-block",
        "--format",
        "0",
        "--pin",
        "1234567890123",
        "--pan",
        "4321987654321098",
    ]);
    let pan_error = error(&[
        "crypto",
        "pin-block",
        "--format",
        "0",
        "--pin",
        "1234",
        "--pan",
        "43219876543210X8",
    ]);
    assert!(pan_error.contains("PAN"), "{pan_error}");
    error(&[
        "crypto",
        "pin-block",
        "--format",
        "2",
        "--pin",
        "1234",
        "--pan",
        "4321987654321098",
    ]);
    error(&[
        "crypto",
        "key-combine",
        "--component",
        TDES,
        "--component",
        "0011223344556677",
    ]);
    error(&["crypto", "key-combine", "--component", TDES]);
}
