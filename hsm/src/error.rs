//! Errors of the security module. Each variant says who is at fault: the caller's input, the
//! configuration, a key that does not verify, or the token underneath. No variant ever carries a
//! PIN, a PIN block, a clear key or a full PAN.

use thiserror::Error;

/// Everything that can go wrong in the security module.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum HsmError {
    /// The caller passed something malformed (a PIN of 3 digits, a PAN with letters, bad hex...).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// No key with this label exists in the module.
    #[error("key not found: {label}")]
    KeyNotFound {
        /// The label that was looked up.
        label: String,
    },
    /// The key exists but cannot be used for this operation (wrong type or length).
    #[error("key {label} cannot be used here: {reason}")]
    WrongKey {
        /// The label of the key.
        label: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// An imported key's check value does not match the one that came with it; the key was
    /// refused and any key already stored under the label is untouched.
    #[error("check value mismatch for {label}: expected {expected}, computed {computed}")]
    KcvMismatch {
        /// The label the key was to be stored under.
        label: String,
        /// The check value that came with the cryptogram (hex).
        expected: String,
        /// The check value of the decrypted key (hex, same length as `expected`).
        computed: String,
    },
    /// A MAC did not verify.
    #[error("MAC mismatch")]
    MacMismatch,
    /// Sealed data did not open: tampered with, sealed for another context (another row), or
    /// under another key. Nothing of the data is reported.
    #[error("sealed data does not open under {label}")]
    SealBroken {
        /// The data key.
        label: String,
    },
    /// A PIN block decrypted to something that is not a valid block of the stated format (wrong
    /// key, wrong PAN, or wrong format). The block's content is deliberately not reported.
    #[error("PIN block does not decode as format {format}")]
    BadPinBlock {
        /// The format the block was expected in.
        format: String,
    },
    /// The module or token cannot do this at all.
    #[error("not supported: {0}")]
    Unsupported(String),
    /// The module's configuration is wrong (names the setting at fault).
    #[error("configuration: {0}")]
    Config(String),
    /// The PKCS#11 token failed a call.
    #[error("PKCS#11 {operation}: {message}")]
    Token {
        /// What the module was doing.
        operation: &'static str,
        /// The token's error (return value name), never an argument of the call.
        message: String,
    },
    /// A payment HSM answered a host command with an error code (or with a response that does
    /// not parse). Carries the command and the code, never a field of the command.
    #[error("payShield {command}: error {code} ({meaning})")]
    Device {
        /// The host command (`CA`, `M6`, ...).
        command: String,
        /// The 2-digit error code (`--` when the response itself was malformed).
        code: String,
        /// What the code means, or what was wrong with the response.
        meaning: String,
    },
    /// The link to a payment HSM failed (connect, read, write, timeout).
    #[error("payShield link: {0}")]
    Link(String),
    /// A key file could not be read or written.
    #[error("key file {path}: {message}")]
    KeyFile {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
}

/// Result with [`HsmError`].
pub type Result<T> = std::result::Result<T, HsmError>;

impl HsmError {
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidInput(message.into())
    }

    pub(crate) fn wrong_key(label: &str, reason: impl Into<String>) -> Self {
        Self::WrongKey {
            label: label.to_owned(),
            reason: reason.into(),
        }
    }
}
