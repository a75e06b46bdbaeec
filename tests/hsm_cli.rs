//! `posbridge hsm info | keys list | keys import | keys generate | keys provision`, against the
//! default software module and against a real SoftHSM2 token created for the test (the binary is a
//! child process, so `SOFTHSM2_CONF` is simply set on its command).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::posbridge_bin;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn run(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut command = Command::new(posbridge_bin());
    command.args(args).env("POSBRIDGE_TEST_HSM_PIN", "246810");
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().unwrap()
}

fn ok(args: &[&str], env: &[(&str, &Path)]) -> String {
    let output = run(args, env);
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn fails(args: &[&str], env: &[(&str, &Path)]) -> String {
    let output = run(args, env);
    assert!(!output.status.success(), "{args:?} succeeded");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    stderr
}

const FIELD62_PIN_KEY: &str = "6701EAD6A9AD51E51AA406E2C27FCFA9";
const FIELD62_MAC_KEY: &str = "B651F9E9BACE9AE1";

#[test]
fn software_module_by_default() {
    let info = ok(&["hsm", "info"], &[]);
    assert!(info.contains("backend: software"), "{info}");
    assert!(
        info.contains("PIN translation in host memory: not PCI PIN compliant"),
        "{info}"
    );
    let list = ok(&["hsm", "keys", "list"], &[]);
    assert!(
        list.lines()
            .any(|l| l == "tmk/demo tdes2 43C6CC wrap,unwrap"),
        "{list}"
    );
    assert!(
        list.lines()
            .any(|l| l == "tpk/demo tdes2 8D0A74 encrypt,decrypt"),
        "{list}"
    );
    // The UnionPay field 62 worked example under the demo master key.
    let imported = ok(
        &[
            "hsm",
            "keys",
            "import",
            "--kek",
            "tmk/demo",
            "--label",
            "tpk/1",
            "--type",
            "tdes2",
            "--cryptogram",
            FIELD62_PIN_KEY,
            "--kcv",
            "8D0A74B8",
        ],
        &[],
    );
    assert_eq!(imported, "tpk/1 tdes2 8D0A74 encrypt,decrypt\n");
    let refused = fails(
        &[
            "hsm",
            "keys",
            "import",
            "--kek",
            "tmk/demo",
            "--label",
            "tpk/1",
            "--type",
            "tdes2",
            "--cryptogram",
            FIELD62_PIN_KEY,
            "--kcv",
            "8D0A74B9",
        ],
        &[],
    );
    assert!(refused.contains("check value mismatch"), "{refused}");
    fails(
        &[
            "hsm",
            "keys",
            "import",
            "--kek",
            "tmk/demo",
            "--label",
            "x",
            "--type",
            "tdes9",
            "--cryptogram",
            FIELD62_PIN_KEY,
            "--kcv",
            "8D0A74",
        ],
        &[],
    );
}

#[test]
fn software_key_file_keeps_imported_keys() {
    let dir = scratch_dir("keyfile");
    let file = dir.join("keys.toml");
    std::fs::write(
        &file,
        "[[keys]]\nlabel = \"tmk/1\"\ntype = \"tdes2\"\nvalue = \"CA5D92598DCA48CE8A4C76361A9269E9\"\n",
    )
    .unwrap();
    let path = file.to_str().unwrap();
    ok(
        &[
            "hsm",
            "keys",
            "import",
            "--key-file",
            path,
            "--kek",
            "tmk/1",
            "--label",
            "tak/1",
            "--type",
            "des",
            "--cryptogram",
            FIELD62_MAC_KEY,
            "--kcv",
            "AB7153CA",
        ],
        &[],
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o077,
            0,
            "a key file with clear keys must be private: {mode:o}"
        );
    }
    let list = ok(&["hsm", "keys", "list", "--key-file", path, "--json"], &[]);
    let keys: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(keys[0]["label"], "tak/1");
    assert_eq!(keys[0]["kcv"], "AB7153");
    assert_eq!(keys[0]["class"], "tak");
    assert_eq!(keys[0]["usages"], serde_json::json!(["sign", "verify"]));
    std::fs::remove_dir_all(&dir).unwrap();
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("posbridge-hsm-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn softhsm_library() -> String {
    let library = std::env::var("POSBRIDGE_TEST_PKCS11_MODULE")
        .unwrap_or_else(|_| "/usr/lib/softhsm/libsofthsm2.so".into());
    assert!(
        Path::new(&library).exists(),
        "{library} not found: install softhsm2 or set POSBRIDGE_TEST_PKCS11_MODULE"
    );
    library
}

#[test]
fn pkcs11_module_on_a_softhsm_token() {
    let dir = scratch_dir("softhsm");
    let tokens = dir.join("tokens");
    std::fs::create_dir(&tokens).unwrap();
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .unwrap();
    let init = Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &conf)
        .args([
            "--init-token",
            "--free",
            "--label",
            "cli-test",
            "--so-pin",
            "13579246",
            "--pin",
            "246810",
        ])
        .output()
        .expect("softhsm2-util not found: install softhsm2");
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let env: &[(&str, &Path)] = &[("SOFTHSM2_CONF", &conf)];
    let library = softhsm_library();
    let module = [
        "--pkcs11-module",
        &library,
        "--token-label",
        "cli-test",
        "--pin-env",
        "POSBRIDGE_TEST_HSM_PIN",
    ];
    let with = |args: &[&str]| -> Vec<String> {
        args.iter()
            .chain(module.iter())
            .map(|s| s.to_string())
            .collect()
    };
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/hsm/test-keys.toml");

    let provisioned = ok(
        &as_str(&with(&["hsm", "keys", "provision", "--from", fixtures])),
        env,
    );
    assert_eq!(provisioned.trim().parse::<usize>().unwrap(), 16);
    let info = ok(&as_str(&with(&["hsm", "info"])), env);
    assert!(info.contains("backend: pkcs11"), "{info}");
    assert!(
        info.contains("PIN translation in host memory: not PCI PIN compliant"),
        "{info}"
    );
    assert!(
        info.contains("in-token translation probe: UnwrapKey returned MechanismInvalid"),
        "{info}"
    );
    let list = ok(&as_str(&with(&["hsm", "keys", "list"])), env);
    // Each key with the usages read back from the token (SoftHSM2: no wrap, no DES MAC
    // mechanism, AES-CMAC).
    for line in [
        "zak/x919 tdes2 08D7B4 encrypt",
        "tmk/a tdes2 2B72E8 encrypt",
        "zmk/cups tdes2 43C6CC decrypt",
        "pvk/vec tdes2 08D7B4 encrypt",
        "zpk/vec tdes2 08D7B4 encrypt,decrypt",
        "qr/rfc4493 aes128 7AD386C376 sign,verify",
    ] {
        assert!(list.lines().any(|l| l == line), "{line} not in {list}");
    }
    assert!(
        !list.contains('#'),
        "companion objects must not be listed: {list}"
    );
    let imported = ok(
        &as_str(&with(&[
            "hsm",
            "keys",
            "import",
            "--kek",
            "zmk/cups",
            "--label",
            "tak/87654321",
            "--type",
            "des",
            "--cryptogram",
            FIELD62_MAC_KEY,
            "--kcv",
            "AB7153CA",
            "--json",
        ])),
        env,
    );
    let imported: serde_json::Value = serde_json::from_str(&imported).unwrap();
    assert_eq!(imported["kcv"], "AB7153");
    assert_eq!(imported["usages"], serde_json::json!(["encrypt"]));
    fails(
        &as_str(&with(&[
            "hsm",
            "keys",
            "import",
            "--kek",
            "zmk/cups",
            "--label",
            "tak/87654321",
            "--type",
            "des",
            "--cryptogram",
            FIELD62_MAC_KEY,
            "--kcv",
            "AB7153CB",
        ])),
        env,
    );
    let generated = ok(
        &as_str(&with(&[
            "hsm", "keys", "generate", "--label", "tak/new", "--type", "des", "--kek", "tmk/a",
        ])),
        env,
    );
    let parts: Vec<&str> = generated.split_whitespace().collect();
    assert_eq!(parts.len(), 2, "{generated}");
    assert_eq!(parts[0].len(), 16);
    assert_eq!(parts[1].len(), 8);
    // A wrong PIN is a one-line error that does not echo the PIN.
    let wrong = run(
        &as_str(&with(&["hsm", "info"])),
        &[
            ("SOFTHSM2_CONF", &conf),
            ("POSBRIDGE_TEST_HSM_PIN", Path::new("999999")),
        ],
    );
    assert!(!wrong.status.success());
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(stderr.contains("C_Login"), "{stderr}");
    assert!(!stderr.contains("999999"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn as_str(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}
