//! posbridge's security module: the only place in posbridge that touches PIN blocks, MAC keys and
//! working keys.
//!
//! - [`SecurityModule`] is the interface the gateway calls (PIN translation, MACs, key import and
//!   generation, check values, PIN verification by PVV). Its calls block: run them through
//!   `tokio::task::spawn_blocking`.
//! - [`open`] builds one from an [`HsmConfig`]: the `pkcs11` backend (a real token through
//!   `cryptoki`), the `payshield` backend (a Thales payShield payment HSM through its host
//!   commands, keys held only as LMK cryptograms) or the `software` backend (RustCrypto, **not
//!   for production**).
//! - [`policy`] gives every key class (label prefix `tmk/`, `tak/`, ...) the least usages it
//!   needs; the PKCS#11 backend writes them into the key objects, so the token enforces them.
//! - [`secret`] holds the wrapper types for PANs, PINs, PIN blocks and clear keys.
//! - [`calculator`] is the operator's calculator over clear keys (`posbridge crypto`).

pub mod calculator;
pub mod config;
pub mod error;
pub mod keys;
pub mod mac;
mod module;
mod ops;
pub mod payshield;
pub mod pin_block;
pub mod pkcs11;
pub mod policy;
mod pvv;
pub mod secret;
pub mod software;

pub use config::HsmConfig;
pub use error::{HsmError, Result};
pub use keys::{Capabilities, ExportedKey, KeyInfo, KeyTransport, KeyType, PinTranslation};
pub use mac::{MacAlgorithm, Padding};
pub use module::SecurityModule;
pub use pin_block::PinBlockFormat;
pub use policy::{KeyClass, KeyUsage, TokenFeatures, Usages};
pub use secret::{ClearKey, Pan, Pin, PinBlock};

use std::sync::Arc;

/// The check values of the embedded demo keys (`demo_keys.toml`, published with posbridge): a
/// production gateway refuses to run with any key whose check value is one of these.
pub fn demo_check_values() -> Result<Vec<Vec<u8>>> {
    Ok(software::SoftwareModule::demo()?
        .list_keys()?
        .into_iter()
        .map(|key| key.kcv)
        .collect())
}

/// Opens the configured security module.
pub fn open(config: &HsmConfig) -> Result<Arc<dyn SecurityModule>> {
    match config {
        HsmConfig::Software { key_file: None, .. } => {
            Ok(Arc::new(software::SoftwareModule::demo()?))
        }
        HsmConfig::Software {
            key_file: Some(path),
            persist,
        } => Ok(Arc::new(software::SoftwareModule::open(path, *persist)?)),
        HsmConfig::Pkcs11 {
            module,
            token_label,
            slot,
            pin_env,
            pin_file,
            pool_size,
        } => {
            let pin = pkcs11::UserPin::from_config(pin_env.as_deref(), pin_file.as_deref())?;
            let options = pkcs11::Pkcs11Options {
                module: module.clone(),
                token_label: token_label.clone(),
                slot: *slot,
                pool_size: *pool_size,
            };
            Ok(Arc::new(pkcs11::Pkcs11Module::open(&options, &pin)?))
        }
        HsmConfig::Payshield { .. } => Ok(Arc::new(open_payshield(config)?)),
    }
}

/// Opens the `payshield` backend of a configuration (for the provisioning commands that need
/// more than the [`SecurityModule`] trait, e.g. [`payshield::PayshieldModule::import_lmk_key`]).
pub fn open_payshield(config: &HsmConfig) -> Result<payshield::PayshieldModule> {
    let HsmConfig::Payshield {
        address,
        header,
        key_store,
        pool_size,
        connect_timeout_ms,
        read_timeout_ms,
        encrypted_pin_length,
        key_types,
        aes_keys,
    } = config
    else {
        return Err(HsmError::Config(
            "this command needs [hsm] backend = \"payshield\"".into(),
        ));
    };
    let aes = match aes_keys.as_deref() {
        None => None,
        Some(HsmConfig::Payshield { .. }) => {
            return Err(HsmError::Config(
                "hsm.aes_keys cannot be another payshield module (it holds no AES keys)".into(),
            ));
        }
        Some(other) => Some(open(other)?),
    };
    let options = payshield::PayshieldOptions {
        link: payshield::LinkOptions {
            address: address.clone(),
            header: header.clone().into_bytes(),
            pool_size: *pool_size,
            connect_timeout: std::time::Duration::from_millis(*connect_timeout_ms),
            read_timeout: std::time::Duration::from_millis(*read_timeout_ms),
        },
        key_store: key_store.clone(),
        encrypted_pin_length: *encrypted_pin_length,
        key_types: key_types.clone(),
    };
    payshield::PayshieldModule::open(&options, aes)
}
