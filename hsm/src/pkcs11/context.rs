//! The process-wide PKCS#11 library contexts and the user PIN.
//!
//! C_Initialize must run once per process and library (parallel initialisation crashes SoftHSM),
//! so every opened module of the same library shares one initialised [`Pkcs11`] kept for the
//! life of the process.

use crate::config::DEFAULT_PIN_ENV;
use crate::error::{HsmError, Result};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use zeroize::Zeroizing;

static CONTEXTS: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();

/// Maps a cryptoki error to a module error naming what we were doing. cryptoki's errors carry the
/// function and the return value only, never call arguments, so no secret can leak through them.
pub(crate) fn token_error(operation: &'static str) -> impl Fn(Error) -> HsmError {
    move |error| HsmError::Token {
        operation,
        message: match &error {
            Error::Pkcs11(rv, function) => format!("{function:?} returned {rv:?}"),
            other => other.to_string(),
        },
    }
}

/// The initialised context for `module`, loading and initialising the library on first use.
pub(crate) fn context(module: &Path) -> Result<Pkcs11> {
    let contexts = CONTEXTS.get_or_init(|| Mutex::new(HashMap::new()));
    let mut contexts = contexts
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(context) = contexts.get(module) {
        return Ok(context.clone());
    }
    let context = Pkcs11::new(module)
        .map_err(|error| HsmError::Config(format!("hsm.module {}: {error}", module.display())))?;
    match context.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(error) => return Err(token_error("C_Initialize")(error)),
    }
    contexts.insert(module.to_path_buf(), context.clone());
    Ok(context)
}

/// The token's user PIN, read from a file or an environment variable. Never logged, never
/// printed (`Debug` is masked), zeroised on drop.
pub struct UserPin(Zeroizing<String>);

impl UserPin {
    /// Wraps a PIN given directly (tests, tools that prompted for it).
    pub fn new(pin: &str) -> Self {
        Self(Zeroizing::new(pin.to_owned()))
    }

    /// Reads the PIN from `pin_file` (its first line) if given, else from the environment
    /// variable `pin_env` (default `POSBRIDGE_HSM_PIN`).
    pub fn from_config(pin_env: Option<&str>, pin_file: Option<&Path>) -> Result<Self> {
        if let Some(path) = pin_file {
            let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|error| {
                HsmError::Config(format!("hsm.pin_file {}: {error}", path.display()))
            })?);
            let pin = text.lines().next().unwrap_or_default().trim();
            if pin.is_empty() {
                return Err(HsmError::Config(format!(
                    "hsm.pin_file {} is empty",
                    path.display()
                )));
            }
            return Ok(Self::new(pin));
        }
        let name = pin_env.unwrap_or(DEFAULT_PIN_ENV);
        match std::env::var(name) {
            Ok(pin) if !pin.is_empty() => Ok(Self(Zeroizing::new(pin))),
            _ => Err(HsmError::Config(format!(
                "hsm.pin_env: environment variable {name} with the token's user PIN is not set"
            ))),
        }
    }

    pub(crate) fn auth_pin(&self) -> cryptoki::types::AuthPin {
        cryptoki::types::AuthPin::from(self.0.as_str())
    }
}

impl std::fmt::Debug for UserPin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UserPin(****)")
    }
}
