//! The standard deployment end to end on the `payshield` security module: `posbridge serve` as
//! its own process, its PIN, MAC and key-exchange keys on the payShield simulator (test LMK) as
//! LMK cryptograms, its AES data keys (QR signing, PAN hash) in the `[hsm.aes_keys]` module; a
//! terminal over TCP signs on (A0), asks for a code (M8 on the UnionPay MAC), a phone pays with a
//! PIN verified inside the HSM (EC against the PVV that seed-demo computed with BA + DG). Then no
//! clear key, PIN or PIN block may appear in the gateway's log, its journal or its key store.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{ServeProcess, posbridge_bin};
use posbridge_hsm::payshield::KeyStore;
use posbridge_hsm::software::{KeyFile, SoftwareModule};
use posbridge_hsm::{
    Capabilities, ClearKey, ExportedKey, KeyInfo, KeyType, MacAlgorithm, Pan, Pin, PinBlock,
    PinBlockFormat, SecurityModule, calculator,
};
use posbridge_sim::payshield::{Settings, Simulator, keys, spawn_background};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// The wallet app's PIN key: a TDES key (a variant-LMK payShield holds no AES key), a ZPK there.
const PEK: &str = "6D8F1C3B5E7A9D2F4B6E8A1D3F5B7E9C";

/// The phone's module, recording every PIN block it makes so the test can look for them.
struct Recording {
    inner: SoftwareModule,
    blocks: Mutex<Vec<PinBlock>>,
}

impl SecurityModule for Recording {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn list_keys(&self) -> posbridge_hsm::Result<Vec<KeyInfo>> {
        self.inner.list_keys()
    }
    fn find_key(&self, label: &str) -> posbridge_hsm::Result<KeyInfo> {
        self.inner.find_key(label)
    }
    fn kcv(&self, label: &str) -> posbridge_hsm::Result<Vec<u8>> {
        self.inner.kcv(label)
    }
    fn translate_pin(
        &self,
        block: &PinBlock,
        src_key: &str,
        src_format: PinBlockFormat,
        dst_key: &str,
        dst_format: PinBlockFormat,
        pan: Option<&Pan>,
    ) -> posbridge_hsm::Result<PinBlock> {
        self.inner
            .translate_pin(block, src_key, src_format, dst_key, dst_format, pan)
    }
    fn encrypt_pin(
        &self,
        pin: &Pin,
        pan: &Pan,
        format: PinBlockFormat,
        key: &str,
    ) -> posbridge_hsm::Result<PinBlock> {
        let block = self.inner.encrypt_pin(pin, pan, format, key)?;
        self.blocks.lock().unwrap().push(block.clone());
        Ok(block)
    }
    fn generate_mac(
        &self,
        key: &str,
        algorithm: MacAlgorithm,
        data: &[u8],
    ) -> posbridge_hsm::Result<Vec<u8>> {
        self.inner.generate_mac(key, algorithm, data)
    }
    fn encrypt_data(
        &self,
        key: &str,
        context: &[u8],
        plaintext: &[u8],
    ) -> posbridge_hsm::Result<Vec<u8>> {
        self.inner.encrypt_data(key, context, plaintext)
    }
    fn decrypt_data(
        &self,
        key: &str,
        context: &[u8],
        sealed: &[u8],
    ) -> posbridge_hsm::Result<zeroize::Zeroizing<Vec<u8>>> {
        self.inner.decrypt_data(key, context, sealed)
    }
    fn import_key(
        &self,
        kek: &str,
        label: &str,
        key_type: KeyType,
        cryptogram: &[u8],
        expected_kcv: &[u8],
    ) -> posbridge_hsm::Result<KeyInfo> {
        self.inner
            .import_key(kek, label, key_type, cryptogram, expected_kcv)
    }
    fn generate_key(
        &self,
        label: &str,
        key_type: KeyType,
        export_under: &str,
    ) -> posbridge_hsm::Result<ExportedKey> {
        self.inner.generate_key(label, key_type, export_under)
    }
    fn delete_key(&self, label: &str) -> posbridge_hsm::Result<()> {
        self.inner.delete_key(label)
    }
    fn pin_verification_value(
        &self,
        pvk: &str,
        pan: &Pan,
        pin: &Pin,
        pvki: u8,
    ) -> posbridge_hsm::Result<String> {
        self.inner.pin_verification_value(pvk, pan, pin, pvki)
    }
    fn verify_pin(
        &self,
        block: &PinBlock,
        pek: &str,
        format: PinBlockFormat,
        pan: &Pan,
        pvk: &str,
        pvki: u8,
        pvv: &str,
    ) -> posbridge_hsm::Result<bool> {
        self.inner
            .verify_pin(block, pek, format, pan, pvk, pvki, pvv)
    }
}

/// The demo key set with the wallet's PIN key as a TDES key.
fn demo_keys_with_tdes_pek() -> KeyFile {
    let mut file = KeyFile::demo().unwrap();
    for entry in &mut file.keys {
        if entry.label == "pek/wallet" {
            entry.key_type = KeyType::Tdes2;
            entry.value = PEK.to_owned().into();
            entry.kcv = None;
        }
    }
    file
}

/// Every clear key the gateway's side knows, in the forms a leak could take.
fn clear_key_needles() -> Vec<(String, Vec<u8>)> {
    demo_keys_with_tdes_pek()
        .into_keys("demo")
        .unwrap()
        .into_iter()
        .map(|(label, _, key)| (label, key.expose_secret().to_vec()))
        .collect()
}

fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    needle.len() >= 8 && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Fails if `secret` appears in `haystack` as raw bytes or as hex in either case.
fn assert_absent(what: &str, haystack: &[u8], name: &str, secret: &[u8]) {
    let upper = hex::encode_upper(secret);
    let lower = hex::encode(secret);
    assert!(
        !contains_bytes(haystack, secret)
            && !contains_bytes(haystack, upper.as_bytes())
            && !contains_bytes(haystack, lower.as_bytes()),
        "{name} appears in {what}"
    );
}

/// The gateway's keys: the DES family as LMK cryptograms in a key store, the AES data keys in
/// their own module's key file. Returns both paths.
fn gateway_keys(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let store = dir.join("payshield-keys.toml");
    let left_out = keys::provision(demo_keys_with_tdes_pek(), "demo", &[], &store).unwrap();
    let aes = KeyFile {
        keys: KeyFile::demo()
            .unwrap()
            .keys
            .into_iter()
            .filter(|k| left_out.contains(&k.label))
            .collect(),
    };
    assert!(
        aes.keys
            .iter()
            .all(|k| k.key_type.family() == posbridge_hsm::keys::Family::Aes)
    );
    let aes_file = dir.join("aes-keys.toml");
    std::fs::write(&aes_file, toml::to_string(&aes).unwrap()).unwrap();
    (store, aes_file)
}

fn phone() -> Arc<Recording> {
    Arc::new(Recording {
        inner: SoftwareModule::from_key_file(demo_keys_with_tdes_pek(), "phone", None).unwrap(),
        blocks: Mutex::new(Vec::new()),
    })
}

#[test]
fn serve_on_payshield_pays_a_qr_sale_with_pin_and_leaks_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let header = "PBHS";
    let hsm = spawn_background(Simulator {
        header_len: header.len(),
        settings: Settings::default(),
    })
    .unwrap();
    let (store, aes_file) = gateway_keys(dir.path());
    let journal = dir.path().join("journal.sqlite");
    let config = dir.path().join("posbridge.toml");
    std::fs::write(
        &config,
        format!(
            "[journal]\nsqlite_path = \"{}\"\n\n\
             [hsm]\nbackend = \"payshield\"\naddress = \"{hsm}\"\nheader = \"{header}\"\nkey_store = \"{}\"\npool_size = 2\n\
             [hsm.aes_keys]\nbackend = \"software\"\nkey_file = \"{}\"\n\n\
             [terminal]\nlisten = \"127.0.0.1:0\"\n[wallet_api]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
             [gateway]\npoll_interval_ms = 50\n[log]\nlevel = \"trace\"\n",
            journal.display(),
            store.display(),
            aes_file.display(),
        ),
    )
    .unwrap();

    let info = std::process::Command::new(posbridge_bin())
        .args(["hsm", "info", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let info_text = String::from_utf8_lossy(&info.stdout);
    assert!(
        info.status.success(),
        "{}",
        String::from_utf8_lossy(&info.stderr)
    );
    assert!(info_text.contains("backend: payshield"), "{info_text}");
    assert!(info_text.contains("firmware 1000-SIM1"), "{info_text}");
    assert!(
        info_text.contains("pin translation: in-token"),
        "{info_text}"
    );
    // A key ceremony's output (a ZPK as an LMK cryptogram) goes in with its check value.
    let ceremony = posbridge_sim::payshield::lmk::encrypt(
        &ClearKey::from_hex("0123456789ABCDEFFEDCBA9876543210").unwrap(),
        "001",
    )
    .unwrap();
    let import = |kcv: &str| {
        std::process::Command::new(posbridge_bin())
            .args(["hsm", "keys", "import-lmk", "--config"])
            .arg(&config)
            .args(["--label", "zpk/ceremony", "--type", "001", "--cryptogram"])
            .arg(&ceremony)
            .args(["--kcv", kcv])
            .output()
            .unwrap()
    };
    let refused = import("08D7B5");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("check value mismatch"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let imported = import("08D7B4");
    assert!(
        imported.status.success(),
        "{}",
        String::from_utf8_lossy(&imported.stderr)
    );
    let list = std::process::Command::new(posbridge_bin())
        .args(["hsm", "keys", "list", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(list.contains("zpk/ceremony tdes2 08D7B4"), "{list}");
    assert!(list.contains("tak/demo des AB7153"), "{list}");
    // The AES data keys are listed from their own module.
    assert!(list.contains("qr/sign aes128"), "{list}");
    let seed = std::process::Command::new(posbridge_bin())
        .args(["admin", "seed-demo", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(
        seed.status.success(),
        "{}",
        String::from_utf8_lossy(&seed.stderr)
    );

    let mut server = ServeProcess::start(&config, &[]);
    let phone = phone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let receipt = runtime.block_on(async {
        let spec = Arc::new(posbridge_codecs::Spec::builtin("cups-pos").unwrap());
        let terminal_keys = posbridge_hsm::open(&posbridge_hsm::HsmConfig::default()).unwrap();
        let mut terminal = posbridge_sim::terminal::TerminalClient::connect(
            server.terminal,
            spec,
            posbridge_sim::terminal::TerminalIdentity {
                tid: posbridge_sim::demo::TID.into(),
                mid: posbridge_sim::demo::MID.into(),
                master_key: "tmk/demo".into(),
                operator: "01".into(),
                batch: "000001".into(),
            },
            terminal_keys,
            700,
        )
        .await
        .unwrap();
        assert_eq!(terminal.sign_on().await.unwrap().response_code, "00");
        let order = terminal
            .request_order(posbridge::domain::money::Money {
                amount_minor: 1288,
                currency: 156,
            })
            .await
            .unwrap();
        assert_eq!(order.response_code, "00", "{order:?}");
        let payload = order.payload.unwrap();
        let wallet = posbridge_sim::wallet::WalletClient::new(
            &server.wallet_url,
            posbridge_sim::demo::APP_ID,
            posbridge_sim::demo::APP_KEY,
            Arc::clone(&phone) as Arc<dyn SecurityModule>,
            "pek/wallet",
        );
        let wrong = wallet
            .pay(
                &payload,
                posbridge_sim::demo::PAN,
                Some("9999"),
                "ps-0",
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
                "ps-1",
                None,
            )
            .await
            .unwrap();
        assert_eq!(paid.response_code(), Some("00"), "{paid:?}");
        terminal.query_result(&order.voucher).await.unwrap()
    });
    assert_eq!(receipt.response_code, "00", "{receipt:?}");
    assert_eq!(receipt.masked_pan.as_deref(), Some("622202*********0123"));

    let exit = server.signal("TERM");
    assert!(
        exit.success(),
        "posbridge serve did not stop cleanly: {exit:?}"
    );
    let log = server.log();
    assert!(log.contains("payShield security module opened"), "{log}");

    // Nothing secret in the log, the journal or the key store.
    let journal_bytes = std::fs::read(&journal).unwrap();
    let store_bytes = std::fs::read(&store).unwrap();
    let places: [(&str, &[u8]); 3] = [
        ("the gateway's log", log.as_bytes()),
        ("the journal", &journal_bytes),
        ("the key store", &store_bytes),
    ];
    let pan = Pan::new(posbridge_sim::demo::PAN).unwrap();
    let pek = ClearKey::from_hex(PEK).unwrap();
    let blocks = phone.blocks.lock().unwrap().clone();
    assert_eq!(blocks.len(), 2, "the phone made one PIN block per payment");
    for (what, haystack) in places {
        for (label, key) in clear_key_needles() {
            assert_absent(what, haystack, &format!("clear key {label}"), &key);
        }
        for block in &blocks {
            assert_absent(
                what,
                haystack,
                "an encrypted PIN block",
                block.expose_secret(),
            );
            let pin =
                calculator::decipher_pin_block(PinBlockFormat::Iso3, block, &pan, &pek).unwrap();
            let clear = calculator::clear_pin_block(PinBlockFormat::Iso0, &pin, &pan).unwrap();
            assert_absent(what, haystack, "a clear PIN block", clear.expose_secret());
        }
        assert!(
            !contains_bytes(haystack, posbridge_sim::demo::PAN.as_bytes()),
            "the full PAN appears in {what}"
        );
    }
    // A 4-digit PIN is too common a string to look for everywhere; no log line names a PIN
    // together with it.
    for line in log.lines() {
        let lower = line.to_ascii_lowercase();
        assert!(
            !(lower.contains("pin")
                && (line.contains(posbridge_sim::demo::PIN) || line.contains("9999"))),
            "a log line names the PIN: {line}"
        );
    }
    assert!(!Path::new(&store).with_extension("tmp").exists());
}

/// The five-role deployment on the payShield: the sale goes to the simulated UnionPay host with
/// the PIN block translated inside the HSM to the host's zone PIN key (CC), MACs both ways on the
/// zone MAC key (M6/M8, X9.19), and a host key change imported under the zone master key (A6).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_roles_on_payshield_translate_mac_and_change_keys() {
    use common::{APP_ID, APP_KEY, Backend, TestJournal, start_with, terminal_client};
    let dir = tempfile::tempdir().unwrap();
    let header = "0000";
    let hsm = spawn_background(Simulator {
        header_len: header.len(),
        settings: Settings::default(),
    })
    .unwrap();
    let (store, aes_file) = gateway_keys(dir.path());
    let (host_addr, host) = posbridge_sim::host::SimHost::start(Default::default())
        .await
        .unwrap();
    let journal = TestJournal::new(Backend::Postgres);
    let running = start_with(&journal, |config| {
        posbridge_sim::demo::route_to_host(config, host_addr);
        config.upstream.sale_timeout_ms = 5_000;
        config.hsm = posbridge_hsm::HsmConfig::Payshield {
            address: hsm.to_string(),
            header: header.into(),
            key_store: store.clone(),
            pool_size: 2,
            connect_timeout_ms: 2_000,
            read_timeout_ms: 5_000,
            encrypted_pin_length: 13,
            key_types: Default::default(),
            aes_keys: Some(Box::new(posbridge_hsm::HsmConfig::Software {
                key_file: Some(aes_file.clone()),
                persist: false,
            })),
        };
    })
    .await;
    assert_eq!(
        running
            .seeded
            .gateway
            .orders
            .security()
            .module()
            .capabilities()
            .backend,
        "payshield"
    );
    for _ in 0..400 {
        if host.signed_on_connections() > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(
        host.signed_on_connections() > 0,
        "posbridge never signed on to the host"
    );
    let mut terminal = terminal_client(&running).await;
    assert_eq!(terminal.sign_on().await.unwrap().response_code, "00");
    let wallet = posbridge_sim::wallet::WalletClient::new(
        &running.wallet_url,
        APP_ID,
        APP_KEY,
        phone() as Arc<dyn SecurityModule>,
        "pek/wallet",
    );
    let mut sale = async |amount_minor: i64, key: &str| {
        let order = terminal
            .request_order(posbridge::domain::money::Money {
                amount_minor,
                currency: 156,
            })
            .await
            .unwrap();
        assert_eq!(order.response_code, "00", "{order:?}");
        let paid = wallet
            .pay(
                order.payload.as_deref().unwrap(),
                common::PAYER_PAN,
                Some(common::PAYER_PIN),
                key,
                None,
            )
            .await
            .unwrap();
        let receipt = terminal.query_result(&order.voucher).await.unwrap();
        (paid.response_code().unwrap_or("none").to_owned(), receipt)
    };
    let (code, receipt) = sale(1_000, "five-1").await;
    assert_eq!(code, "00");
    assert_eq!(receipt.response_code, "00");
    let approved = host
        .ledger()
        .into_iter()
        .filter(|e| e.state == posbridge_sim::host::LedgerState::Approved)
        .count();
    assert_eq!(
        approved, 1,
        "the host approved the forwarded sale (its PIN check passed)"
    );

    // The host changes the zone keys; posbridge imports them under the ZMK (A6, KCV checked).
    let zpk_before = KeyStore::open(&store).unwrap().get("zpk/upstream").unwrap();
    let code = host
        .key_exchange(false, std::time::Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(code, "00");
    let after = KeyStore::open(&store).unwrap();
    let zpk_after = after.get("zpk/upstream").unwrap();
    assert_ne!(zpk_before.kcv, zpk_after.kcv, "a new zone PIN key");
    assert!(
        after
            .all()
            .unwrap()
            .iter()
            .all(|k| !k.label.ends_with(".staged"))
    );
    // A sale under the new keys: PIN translated to the new ZPK, MACs with the new ZAK.
    let (code, receipt) = sale(2_000, "five-2").await;
    assert_eq!(code, "00");
    assert_eq!(receipt.response_code, "00");
    // A key change whose MAC key check value is wrong is refused; the keys stay.
    let code = host
        .key_exchange(true, std::time::Duration::from_secs(10))
        .await
        .unwrap();
    assert_ne!(code, "00");
    assert_eq!(
        KeyStore::open(&store).unwrap().get("zpk/upstream").unwrap(),
        zpk_after
    );
    running.stop().await;
}
