//! The production shape end to end: `posbridge serve` as its own process, with its keys on a
//! real SoftHSM2 token (PKCS#11) and its journal in PostgreSQL; a terminal over TCP and a wallet
//! app over HTTP pay a QR sale; SIGTERM stops it cleanly; its logs never carry the card number.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Backend, TestJournal, posbridge_bin};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

const TOKEN: &str = "posbridge-e2e";
const USER_PIN: &str = "246810";

fn pkcs11_library() -> String {
    std::env::var("POSBRIDGE_TEST_PKCS11_MODULE")
        .unwrap_or_else(|_| "/usr/lib/softhsm/libsofthsm2.so".into())
}

fn create_token(dir: &Path) -> std::path::PathBuf {
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
    let status = Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &conf)
        .args([
            "--init-token",
            "--free",
            "--label",
            TOKEN,
            "--so-pin",
            "13579111",
            "--pin",
            USER_PIN,
        ])
        .stdout(Stdio::null())
        .status()
        .expect("softhsm2-util not found: ./scripts/test installs softhsm2");
    assert!(status.success());
    conf
}

fn posbridge(conf: &Path) -> Command {
    let mut command = Command::new(posbridge_bin());
    command
        .env("SOFTHSM2_CONF", conf)
        .env("POSBRIDGE_HSM_PIN", USER_PIN)
        .env_remove("RUST_LOG");
    command
}

#[test]
fn serve_on_softhsm_and_postgres_pays_a_qr_sale() {
    let dir = tempfile::tempdir().unwrap();
    let conf = create_token(dir.path());
    let journal = TestJournal::new(Backend::Postgres);
    let config = dir.path().join("posbridge.toml");
    std::fs::write(
        &config,
        format!(
            "[journal]\nurl = \"{}\"\nschema = \"{}\"\n\n[hsm]\nbackend = \"pkcs11\"\nmodule = \"{}\"\ntoken_label = \"{TOKEN}\"\npool_size = 2\n\n\
             [terminal]\nlisten = \"127.0.0.1:0\"\n[wallet_api]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
             [gateway]\npoll_interval_ms = 50\n[log]\nlevel = \"debug\"\n",
            journal.config.url.as_deref().unwrap(),
            journal.config.schema,
            pkcs11_library()
        ),
    )
    .unwrap();
    let keys = concat!(env!("CARGO_MANIFEST_DIR"), "/hsm/src/demo_keys.toml");
    let provision = posbridge(&conf)
        .args(["hsm", "keys", "provision", "--config"])
        .arg(&config)
        .args(["--from", keys])
        .output()
        .unwrap();
    assert!(
        provision.status.success(),
        "{}",
        String::from_utf8_lossy(&provision.stderr)
    );
    let seed = posbridge(&conf)
        .args(["admin", "seed-demo", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        seed.status.success(),
        "{}",
        String::from_utf8_lossy(&seed.stderr)
    );

    let mut server = common::ServeProcess::start(
        &config,
        &[
            ("SOFTHSM2_CONF", conf.to_str().unwrap()),
            ("POSBRIDGE_HSM_PIN", USER_PIN),
        ],
    );
    let terminal_addr = server.terminal;
    let wallet_url = server.wallet_url.clone();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let receipt = runtime.block_on(async {
        let spec = Arc::new(posbridge_codecs::Spec::builtin("cups-pos").unwrap());
        let terminal_keys = posbridge_hsm::open(&posbridge_hsm::HsmConfig::default()).unwrap();
        let mut terminal = posbridge_sim::terminal::TerminalClient::connect(
            terminal_addr,
            spec,
            posbridge_sim::terminal::TerminalIdentity {
                tid: posbridge_sim::demo::TID.into(),
                mid: posbridge_sim::demo::MID.into(),
                master_key: "tmk/demo".into(),
                operator: "01".into(),
                batch: "000001".into(),
            },
            terminal_keys,
            500,
        )
        .await
        .unwrap();
        terminal.sign_on().await.unwrap();
        let order = terminal
            .request_order(posbridge::domain::money::Money {
                amount_minor: 880,
                currency: 156,
            })
            .await
            .unwrap();
        assert_eq!(order.response_code, "00");
        let payload = order.payload.unwrap();
        let phone_keys = posbridge_hsm::open(&posbridge_hsm::HsmConfig::default()).unwrap();
        let wallet = posbridge_sim::wallet::WalletClient::new(
            &wallet_url,
            posbridge_sim::demo::APP_ID,
            posbridge_sim::demo::APP_KEY,
            phone_keys,
            "pek/wallet",
        );
        let wrong = wallet
            .pay(
                &payload,
                posbridge_sim::demo::PAN,
                Some("9999"),
                "e2e-0",
                None,
            )
            .await
            .unwrap();
        assert_eq!(wrong.response_code(), Some("55"));
        let paid = wallet
            .pay(
                &payload,
                posbridge_sim::demo::PAN,
                Some(posbridge_sim::demo::PIN),
                "e2e-1",
                None,
            )
            .await
            .unwrap();
        assert_eq!(paid.response_code(), Some("00"));
        terminal.query_result(&order.voucher).await.unwrap()
    });
    assert_eq!(receipt.response_code, "00");
    assert_eq!(receipt.masked_pan.as_deref(), Some("622202*********0123"));

    let exit = server.signal("TERM");
    assert!(
        exit.success(),
        "posbridge serve did not stop cleanly: {exit:?}"
    );
    let log = server.log();
    assert!(
        log.contains("PIN translation in host memory") || log.contains("pkcs11"),
        "{log}"
    );
    assert!(
        !log.contains(posbridge_sim::demo::PAN),
        "full PAN in the gateway's log:\n{log}"
    );
}
