//! posbridge's security module: the only place in posbridge that touches PIN blocks, MAC keys and
//! working keys.
//!
//! - [`SecurityModule`] is the interface the gateway calls (PIN translation, MACs, key import and
//!   generation, check values, PIN verification by PVV). Its calls block: run them through
//!   `tokio::task::spawn_blocking`.
//! - [`open`] builds one from an [`HsmConfig`]: the `pkcs11` backend (a real token through
//!   `cryptoki`) or the `software` backend (RustCrypto, **not for production**).
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
    }
}
