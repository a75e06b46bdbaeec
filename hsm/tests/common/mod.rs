//! Test support: the two backends loaded with fixtures/hsm/test-keys.toml.
//!
//! The PKCS#11 backend runs against a real SoftHSM2 token created in a temporary directory. SoftHSM
//! reads its configuration path from `SOFTHSM2_CONF` at `C_Initialize`, and this workspace forbids
//! `unsafe` (so no `std::env::set_var` in a threaded test process): a PKCS#11 test therefore
//! re-runs itself in a child process of the same test binary with `SOFTHSM2_CONF` pointing at a
//! fresh token. This works the same under nextest (a process per test) and `cargo test` (many
//! threads in one process), and no test ever touches the system's token directory.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use posbridge_hsm::pkcs11::{Pkcs11Module, Pkcs11Options, UserPin};
use posbridge_hsm::software::{KeyFile, SoftwareModule};
use posbridge_hsm::{ClearKey, KeyType};
use std::path::PathBuf;
use std::process::Command;

/// Marks the child process that owns a throwaway token.
const CHILD_ENV: &str = "POSBRIDGE_HSM_TEST_CHILD";
pub const TOKEN_LABEL: &str = "posbridge-test";
pub const USER_PIN: &str = "246810";
const SO_PIN: &str = "13579246";

pub fn key_file_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/hsm/test-keys.toml")
}

/// The clear value of a fixture key (for cross-checks with the calculator).
pub fn clear_key(label: &str) -> (KeyType, ClearKey) {
    let keys = KeyFile::load(&key_file_path())
        .unwrap()
        .into_keys("fixtures")
        .unwrap();
    let (_, kind, key) = keys.into_iter().find(|(l, _, _)| l == label).unwrap();
    (kind, key)
}

pub fn software() -> SoftwareModule {
    SoftwareModule::open(&key_file_path(), false).unwrap()
}

pub fn pkcs11_library() -> PathBuf {
    let path = std::env::var("POSBRIDGE_TEST_PKCS11_MODULE")
        .unwrap_or_else(|_| "/usr/lib/softhsm/libsofthsm2.so".into());
    let path = PathBuf::from(path);
    assert!(
        path.exists(),
        "PKCS#11 library {} not found: install softhsm2 (./scripts/test does) or set \
         POSBRIDGE_TEST_PKCS11_MODULE",
        path.display()
    );
    path
}

/// Creates a SoftHSM2 configuration and an initialised token in a new temporary directory.
pub fn create_token() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::create_dir(&tokens).unwrap();
    let conf = dir.path().join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
            tokens.display()
        ),
    )
    .unwrap();
    let output = Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &conf)
        .args(["--init-token", "--free", "--label", TOKEN_LABEL])
        .args(["--so-pin", SO_PIN, "--pin", USER_PIN])
        .output()
        .expect("softhsm2-util not found: install softhsm2 (./scripts/test does)");
    assert!(
        output.status.success(),
        "softhsm2-util --init-token failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    dir
}

/// Opens the test token (in the child process) and provisions the fixture keys.
pub fn open_test_token(pool_size: usize) -> Pkcs11Module {
    let options = Pkcs11Options {
        module: pkcs11_library(),
        token_label: TOKEN_LABEL.into(),
        slot: None,
        pool_size,
    };
    let module = Pkcs11Module::open(&options, &UserPin::new(USER_PIN)).unwrap();
    let file = KeyFile::load(&key_file_path()).unwrap();
    module.provision_key_file(file, "fixtures").unwrap();
    module
}

/// Runs `body` with a PKCS#11 module on a fresh SoftHSM2 token. `test_path` is the test's name as
/// the harness knows it (module path inside the test binary, e.g. `pkcs11::x919_vector`).
pub fn with_softhsm(test_path: &str, body: impl FnOnce(&Pkcs11Module)) {
    in_softhsm_child(test_path, || body(&open_test_token(2)));
}

/// Runs `body` in a child process of this test binary whose `SOFTHSM2_CONF` points at a fresh,
/// initialised (empty) token; `body` opens the module itself (see [`open_test_token`]).
pub fn in_softhsm_child(test_path: &str, body: impl FnOnce()) {
    if std::env::var_os(CHILD_ENV).is_some() {
        body();
        return;
    }
    let dir = create_token();
    let output = Command::new(std::env::current_exe().unwrap())
        .args([test_path, "--exact", "--nocapture", "--test-threads", "1"])
        .env("SOFTHSM2_CONF", dir.path().join("softhsm2.conf"))
        .env(CHILD_ENV, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    print!("{stdout}");
    eprint!("{stderr}");
    assert!(output.status.success(), "child test {test_path} failed");
    assert!(
        stdout.contains("1 passed"),
        "child process did not run {test_path}: {stdout}"
    );
}

/// The second PKCS#11 implementation the suite runs on (opencryptoki's software token, set up by
/// `./scripts/test`): library, slot, token label and user PIN from
/// `POSBRIDGE_TEST_PKCS11_MODULE_2`, `_SLOT_2`, `_TOKEN_2` and `_PIN_2`.
pub struct SecondToken {
    pub module: PathBuf,
    pub slot: u64,
    pub label: String,
    pub pin: String,
}

pub fn second_token() -> SecondToken {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!(
                "{name} is not set: ./scripts/test sets up opencryptoki's software token and exports \
                 POSBRIDGE_TEST_PKCS11_MODULE_2, _SLOT_2, _TOKEN_2 and _PIN_2"
            )
        })
    };
    let module = PathBuf::from(var("POSBRIDGE_TEST_PKCS11_MODULE_2"));
    assert!(module.exists(), "{} not found", module.display());
    SecondToken {
        module,
        slot: var("POSBRIDGE_TEST_PKCS11_SLOT_2").parse().unwrap(),
        label: var("POSBRIDGE_TEST_PKCS11_TOKEN_2"),
        pin: var("POSBRIDGE_TEST_PKCS11_PIN_2"),
    }
}

/// Runs `body` with a module on the second token, emptied of every secret key and loaded with
/// the fixture keys. opencryptoki keeps one token per slot for the whole machine (its
/// `PKCS_APP_STORE` relocation is broken in 3.8: it writes the token's files to `/`), so tests
/// on it take turns under a lock file instead of each getting a fresh token.
pub fn with_second_token(body: impl FnOnce(&Pkcs11Module)) {
    let token = second_token();
    let lock =
        std::fs::File::create(std::env::temp_dir().join("posbridge-pkcs11-token-2.lock")).unwrap();
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).unwrap();
    let options = Pkcs11Options {
        module: token.module.clone(),
        token_label: token.label.clone(),
        slot: Some(token.slot),
        pool_size: 2,
    };
    let module = Pkcs11Module::open(&options, &UserPin::new(&token.pin)).unwrap();
    {
        let (context, slot) = module.raw_context();
        let session = context.open_rw_session(slot).unwrap();
        let stale = session
            .find_objects(&[cryptoki::object::Attribute::Class(
                cryptoki::object::ObjectClass::SECRET_KEY,
            )])
            .unwrap();
        for handle in stale {
            session.destroy_object(handle).unwrap();
        }
    }
    let file = KeyFile::load(&key_file_path()).unwrap();
    module.provision_key_file(file, "fixtures").unwrap();
    body(&module);
    drop(module);
    // Closing the file releases the lock.
    drop(lock);
}
