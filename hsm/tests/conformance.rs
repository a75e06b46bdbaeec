//! One conformance suite, run against both backends: every published vector of REFERENCE.md plus
//! the behaviour the gateway relies on (key import refusing a wrong check value, generated keys
//! that re-import, PIN translations between formats, PVV verification, errors).
//!
//! `software::*` runs each check on the software module, `pkcs11::*` on a fresh SoftHSM2 token,
//! `opencryptoki::*` on opencryptoki's software token (see `common::with_second_token`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

#[path = "suite/conformance.rs"]
#[macro_use]
mod suite;

use posbridge_hsm::calculator;
use posbridge_hsm::{KeyType, MacAlgorithm, SecurityModule};

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod software {
            $(
                #[test]
                fn $name() {
                    super::suite::$name(&super::common::software());
                }
            )*
        }
        mod pkcs11 {
            $(
                #[test]
                fn $name() {
                    super::common::with_softhsm(
                        concat!("pkcs11::", stringify!($name)),
                        |module| super::suite::$name(module),
                    );
                }
            )*
        }
        /// The same suite on a second PKCS#11 implementation: opencryptoki's software token.
        mod opencryptoki {
            $(
                #[test]
                fn $name() {
                    super::common::with_second_token(|module| super::suite::$name(module));
                }
            )*
        }
    };
}

for_each_test!(conformance);

#[test]
fn software_module_is_marked_not_for_production() {
    let caps = common::software().capabilities();
    assert_eq!(caps.backend, "software");
    assert!(!caps.production);
}

#[test]
fn pkcs11_on_softhsm_translates_in_host_memory() {
    // SoftHSM2 cannot unwrap an 8-byte block as a secret object (REFERENCE.md): the probe must
    // find that out and the module must say so.
    common::with_softhsm("pkcs11_on_softhsm_translates_in_host_memory", |module| {
        let caps = module.capabilities();
        assert_eq!(caps.backend, "pkcs11");
        assert_eq!(
            caps.pin_translation,
            posbridge_hsm::PinTranslation::HostMemory
        );
    });
}

#[test]
fn pkcs11_opens_from_config_with_a_pin_file() {
    common::in_softhsm_child("pkcs11_opens_from_config_with_a_pin_file", || {
        let dir = tempfile::tempdir().unwrap();
        let pin_file = dir.path().join("pin");
        std::fs::write(&pin_file, format!("{}\n", common::USER_PIN)).unwrap();
        let config = |token_label: &str, pool_size: usize| posbridge_hsm::HsmConfig::Pkcs11 {
            module: common::pkcs11_library(),
            token_label: token_label.into(),
            slot: None,
            pin_env: None,
            pin_file: Some(pin_file.clone()),
            pool_size,
        };
        // A wrong PIN first: once a session of this process is logged in, the token treats the
        // whole application as logged in and C_Login cannot check another PIN.
        std::fs::write(&pin_file, "000000\n").unwrap();
        let error = posbridge_hsm::open(&config(common::TOKEN_LABEL, 1))
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("C_Login"), "{error}");
        assert!(!error.contains("000000"), "{error}");
        std::fs::write(&pin_file, format!("{}\n", common::USER_PIN)).unwrap();
        let module = posbridge_hsm::open(&config(common::TOKEN_LABEL, 3)).unwrap();
        let caps = module.capabilities();
        assert_eq!(caps.backend, "pkcs11");
        assert!(caps.description.contains("3 sessions"), "{caps:?}");
        let error = posbridge_hsm::open(&config("no-such-token", 1))
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("hsm.token_label"), "{error}");
        let error = posbridge_hsm::open(&config(common::TOKEN_LABEL, 0))
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("hsm.pool_size"), "{error}");
    });
}

#[test]
fn pkcs11_notices_a_key_replaced_by_another_process() {
    // Two modules on one token stand for two gateway processes: B re-keys a terminal, A's cached
    // handle goes stale, and A must look the label up again rather than fail (or use the old key).
    common::in_softhsm_child("pkcs11_notices_a_key_replaced_by_another_process", || {
        let a = common::open_test_token(1);
        let b = common::open_test_token(1);
        let data = b"0200 message";
        let algorithm = MacAlgorithm::X919;
        a.provision_key(
            "tak/shared",
            KeyType::Tdes2,
            &posbridge_hsm::ClearKey::from_hex("0123456789ABCDEFFEDCBA9876543210").unwrap(),
        )
        .unwrap();
        let old_mac = a.generate_mac("tak/shared", algorithm, data).unwrap();
        let new_key =
            posbridge_hsm::ClearKey::from_hex("3B9D4F1A6E2C8D5701F4A9C3E8B2D6F4").unwrap();
        b.provision_key("tak/shared", KeyType::Tdes2, &new_key)
            .unwrap();
        let new_mac = a.generate_mac("tak/shared", algorithm, data).unwrap();
        assert_ne!(old_mac, new_mac);
        assert_eq!(new_mac, calculator::mac(algorithm, &new_key, data).unwrap());
    });
}
