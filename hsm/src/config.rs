//! Which security module to open: the `[hsm]` table of the gateway's configuration.
//!
//! ```toml
//! [hsm]
//! backend = "software"            # not for production
//! key_file = "keys/dev.toml"      # optional: the embedded demo keys otherwise
//!
//! [hsm]
//! backend = "pkcs11"
//! module = "/usr/lib/softhsm/libsofthsm2.so"
//! token_label = "posbridge"
//! # slot = 3                    # find the token by slot ID instead (label still checked)
//! pin_env = "POSBRIDGE_HSM_PIN"   # or pin_file = "/run/secrets/hsm-pin"
//! pool_size = 4
//!
//! [hsm]
//! backend = "payshield"
//! address = "10.1.2.3:1500"
//! header = "0000"                 # the HSM's message header (its length is the HSM's setting)
//! key_store = "/var/lib/posbridge/payshield-keys.toml"
//! ```

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The environment variable the PKCS#11 user PIN is read from when neither `pin_env` nor
/// `pin_file` is set.
pub const DEFAULT_PIN_ENV: &str = "POSBRIDGE_HSM_PIN";

/// Default number of logged-in PKCS#11 sessions.
pub const DEFAULT_POOL_SIZE: usize = 4;

/// Upper bound on the session pool: tokens limit sessions, and more sessions than cores gain
/// nothing.
pub const MAX_POOL_SIZE: usize = 64;

/// The security module configuration, tagged by `backend`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase", deny_unknown_fields)]
pub enum HsmConfig {
    /// Keys in process memory (RustCrypto). Not for production.
    Software {
        /// A TOML key file (`[[keys]]` with label, type, value, optional kcv). Without one, the
        /// embedded demo keys.
        #[serde(default)]
        key_file: Option<PathBuf>,
        /// Write imported and generated keys back to `key_file`.
        #[serde(default)]
        persist: bool,
    },
    /// A PKCS#11 token through its vendor library.
    Pkcs11 {
        /// Path of the PKCS#11 library (e.g. `/usr/lib/softhsm/libsofthsm2.so`).
        module: PathBuf,
        /// The token's label.
        token_label: String,
        /// The token's slot ID: the token is then found by slot, its label checked when it can
        /// be read (needed for opencryptoki 3.8, whose token information cryptoki cannot read).
        #[serde(default)]
        slot: Option<u64>,
        /// Environment variable holding the user PIN (default `POSBRIDGE_HSM_PIN`).
        #[serde(default)]
        pin_env: Option<String>,
        /// File holding the user PIN (first line); takes precedence over `pin_env`.
        #[serde(default)]
        pin_file: Option<PathBuf>,
        /// Number of logged-in sessions shared by all callers (1 to 64, default 4).
        #[serde(default = "default_pool_size")]
        pool_size: usize,
    },
    /// A Thales payShield (or a compatible payment HSM) speaking host commands over TCP, with a
    /// variant LMK. posbridge holds its keys only as LMK cryptograms in `key_store`.
    Payshield {
        /// `HOST:PORT` of the HSM's host port.
        address: String,
        /// The message header the HSM expects and echoes; its length must be the HSM's
        /// configured header length (default `0000`, 4 characters).
        #[serde(default = "default_header")]
        header: String,
        /// The key store file (labels -> LMK cryptograms), written 0600 on the first change.
        key_store: PathBuf,
        /// Number of TCP connections shared by all callers (1 to 64, default 4).
        #[serde(default = "default_pool_size")]
        pool_size: usize,
        /// Connect timeout in milliseconds (default 2000).
        #[serde(default = "default_connect_timeout_ms")]
        connect_timeout_ms: u64,
        /// Timeout of one command's write and read in milliseconds (default 5000).
        #[serde(default = "default_read_timeout_ms")]
        read_timeout_ms: u64,
        /// The HSM's encrypted PIN length L (console CS setting, 5 to 13): the length of the
        /// LMK-encrypted PIN field of BA, JG and DG. Default 13 (PINs of up to 12 digits).
        #[serde(default = "default_encrypted_pin_length")]
        encrypted_pin_length: usize,
        /// payShield key type code of the keys posbridge generates or imports, by label prefix
        /// (the longest matching prefix wins), over the defaults of
        /// [`crate::payshield::DEFAULT_KEY_TYPES`].
        #[serde(default)]
        key_types: BTreeMap<String, String>,
        /// A second module for AES keys, which a variant-LMK payShield cannot hold (the
        /// gateway's QR signing and PAN hash keys). Without it, AES keys are unsupported.
        #[serde(default)]
        aes_keys: Option<Box<HsmConfig>>,
    },
}

fn default_header() -> String {
    "0000".to_owned()
}

fn default_connect_timeout_ms() -> u64 {
    2000
}

fn default_read_timeout_ms() -> u64 {
    5000
}

fn default_encrypted_pin_length() -> usize {
    13
}

fn default_pool_size() -> usize {
    DEFAULT_POOL_SIZE
}

impl Default for HsmConfig {
    /// The software module with the embedded demo keys.
    fn default() -> Self {
        HsmConfig::Software {
            key_file: None,
            persist: false,
        }
    }
}

impl HsmConfig {
    /// Reads the `[hsm]` table of a TOML configuration file (other tables are ignored: the same
    /// file configures the whole gateway).
    pub fn from_toml_file(path: &std::path::Path) -> crate::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| crate::HsmError::Config(format!("{}: {error}", path.display())))?;
        Self::from_toml_str(&text)
            .map_err(|error| crate::HsmError::Config(format!("{}: {error}", path.display())))
    }

    /// Parses the `[hsm]` table of a TOML document.
    pub fn from_toml_str(text: &str) -> crate::Result<Self> {
        let mut document: toml::Table = toml::from_str(text)
            .map_err(|error| crate::HsmError::Config(error.message().to_owned()))?;
        let table = document
            .remove("hsm")
            .ok_or_else(|| crate::HsmError::Config("no [hsm] table".into()))?;
        table.try_into().map_err(|error: toml::de::Error| {
            crate::HsmError::Config(format!("hsm: {}", error.message()))
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn hsm_table_parses_both_backends() {
        let software = HsmConfig::from_toml_str("[hsm]\nbackend = \"software\"\n").unwrap();
        assert_eq!(software, HsmConfig::default());
        let pkcs11 = HsmConfig::from_toml_str(
            "[server]\nport = 1\n[hsm]\nbackend = \"pkcs11\"\nmodule = \"/lib/x.so\"\ntoken_label = \"t\"\npin_env = \"P\"\n",
        )
        .unwrap();
        assert_eq!(
            pkcs11,
            HsmConfig::Pkcs11 {
                module: "/lib/x.so".into(),
                token_label: "t".into(),
                slot: None,
                pin_env: Some("P".into()),
                pin_file: None,
                pool_size: DEFAULT_POOL_SIZE,
            }
        );
    }

    #[test]
    fn payshield_table_parses_with_defaults_and_an_aes_module() {
        let config = HsmConfig::from_toml_str(
            "[hsm]\nbackend = \"payshield\"\naddress = \"127.0.0.1:1500\"\nkey_store = \"k.toml\"\n\
             [hsm.key_types]\n\"tmk/\" = \"002\"\n[hsm.aes_keys]\nbackend = \"software\"\n",
        )
        .unwrap();
        let HsmConfig::Payshield {
            header,
            pool_size,
            key_types,
            aes_keys,
            encrypted_pin_length,
            ..
        } = config
        else {
            panic!("{config:?}")
        };
        assert_eq!(header, "0000");
        assert_eq!(pool_size, DEFAULT_POOL_SIZE);
        assert_eq!(encrypted_pin_length, 13);
        assert_eq!(key_types.get("tmk/").map(String::as_str), Some("002"));
        assert_eq!(aes_keys.as_deref(), Some(&HsmConfig::default()));
    }

    #[test]
    fn mistakes_name_the_setting() {
        let error = HsmConfig::from_toml_str("[hsm]\nbackend = \"pkcs11\"\nmodule = \"/x\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("token_label"), "{error}");
        let error = HsmConfig::from_toml_str("[hsm]\nbackend = \"software\"\nkey_fiel = \"k\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("key_fiel"), "{error}");
        assert!(HsmConfig::from_toml_str("[other]\n").is_err());
    }
}
