//! The gateway's async face of the security module: each call runs on tokio's blocking pool
//! (PKCS#11 and payShield calls block), never on a runtime worker; only the software module's
//! computations (MACs, PIN checks, sealing: microseconds of arithmetic, no I/O) run in place,
//! where a hand-off to another thread would cost more than the call.

use posbridge_hsm::{
    ExportedKey, HsmError, KeyInfo, KeyType, MacAlgorithm, Pan, Pin, PinBlock, PinBlockFormat,
    SecurityModule,
};
use std::sync::Arc;

/// A security-module call that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecurityError {
    /// The module refused or failed the operation.
    #[error(transparent)]
    Hsm(#[from] HsmError),
    /// The blocking task running the call died (a bug or a panic in a driver).
    #[error("security module call did not complete: {0}")]
    Task(String),
}

/// A shared handle on the configured security module.
#[derive(Clone)]
pub struct Security {
    module: Arc<dyn SecurityModule>,
    /// The module computes in this process without blocking (the software module).
    in_place: bool,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Security")
            .field(&self.module.capabilities().backend)
            .finish()
    }
}

impl Security {
    /// Wraps a module.
    pub fn new(module: Arc<dyn SecurityModule>) -> Security {
        let in_place = module.capabilities().backend == "software";
        Security { module, in_place }
    }

    /// The module itself, for synchronous callers (CLI, simulators).
    pub fn module(&self) -> &Arc<dyn SecurityModule> {
        &self.module
    }

    /// Runs a call on the blocking pool.
    async fn run<T, F>(&self, call: F) -> Result<T, SecurityError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn SecurityModule) -> Result<T, HsmError> + Send + 'static,
    {
        let module = Arc::clone(&self.module);
        let started = std::time::Instant::now();
        let outcome = tokio::task::spawn_blocking(move || call(module.as_ref()))
            .await
            .map_err(|e| SecurityError::Task(e.to_string()))?;
        crate::infra::metrics::record_hsm_call(started.elapsed(), outcome.is_ok());
        Ok(outcome?)
    }

    /// Runs a computation (no key store written, no I/O in the software module): in place on
    /// the software module, else on the blocking pool.
    async fn compute<T, F>(&self, call: F) -> Result<T, SecurityError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn SecurityModule) -> Result<T, HsmError> + Send + 'static,
    {
        if !self.in_place {
            return self.run(call).await;
        }
        let started = std::time::Instant::now();
        let outcome = call(self.module.as_ref());
        crate::infra::metrics::record_hsm_call(started.elapsed(), outcome.is_ok());
        Ok(outcome?)
    }

    /// Generates a MAC.
    pub async fn generate_mac(
        &self,
        key: String,
        algorithm: MacAlgorithm,
        data: Vec<u8>,
    ) -> Result<Vec<u8>, SecurityError> {
        self.compute(move |m| m.generate_mac(&key, algorithm, &data))
            .await
    }

    /// AES-CMAC, used for order signatures and card-number hashes.
    pub async fn mac_aes_cmac(&self, key: &str, data: Vec<u8>) -> Result<Vec<u8>, SecurityError> {
        self.generate_mac(key.to_owned(), MacAlgorithm::AesCmac, data)
            .await
    }

    /// Verifies a MAC (`Err(Hsm(MacMismatch))` when it does not verify).
    pub async fn verify_mac(
        &self,
        key: String,
        algorithm: MacAlgorithm,
        data: Vec<u8>,
        mac: Vec<u8>,
    ) -> Result<(), SecurityError> {
        self.compute(move |m| m.verify_mac(&key, algorithm, &data, &mac))
            .await
    }

    /// Seals data for the journal under the data key `key` (AES-GCM in the module; `context`
    /// names the row it belongs to, so it opens nowhere else).
    pub async fn seal(
        &self,
        key: &str,
        context: String,
        plaintext: zeroize::Zeroizing<Vec<u8>>,
    ) -> Result<Vec<u8>, SecurityError> {
        let key = key.to_owned();
        self.compute(move |m| m.encrypt_data(&key, context.as_bytes(), &plaintext))
            .await
    }

    /// Opens what [`Security::seal`] sealed with the same key and context.
    pub async fn open(
        &self,
        key: &str,
        context: String,
        sealed: Vec<u8>,
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, SecurityError> {
        let key = key.to_owned();
        self.compute(move |m| m.decrypt_data(&key, context.as_bytes(), &sealed))
            .await
    }

    /// Verifies a PIN block against a stored PVV.
    #[allow(clippy::too_many_arguments)]
    pub async fn verify_pin(
        &self,
        block: PinBlock,
        pek: String,
        format: PinBlockFormat,
        pan: Pan,
        pvk: String,
        pvki: u8,
        pvv: String,
    ) -> Result<bool, SecurityError> {
        self.compute(move |m| m.verify_pin(&block, &pek, format, &pan, &pvk, pvki, &pvv))
            .await
    }

    /// Computes the PVV of a PIN (account enrolment).
    pub async fn pin_verification_value(
        &self,
        pvk: String,
        pan: Pan,
        pin: Pin,
        pvki: u8,
    ) -> Result<String, SecurityError> {
        self.compute(move |m| m.pin_verification_value(&pvk, &pan, &pin, pvki))
            .await
    }

    /// Encrypts a PIN (simulated phones and terminals).
    pub async fn encrypt_pin(
        &self,
        pin: Pin,
        pan: Pan,
        format: PinBlockFormat,
        key: String,
    ) -> Result<PinBlock, SecurityError> {
        self.compute(move |m| m.encrypt_pin(&pin, &pan, format, &key))
            .await
    }

    /// Translates a PIN block to another key and format.
    pub async fn translate_pin(
        &self,
        block: PinBlock,
        src: (String, PinBlockFormat),
        dst: (String, PinBlockFormat),
        pan: Option<Pan>,
    ) -> Result<PinBlock, SecurityError> {
        self.compute(move |m| m.translate_pin(&block, &src.0, src.1, &dst.0, dst.1, pan.as_ref()))
            .await
    }

    /// Generates a working key and exports it under a key-encryption key.
    pub async fn generate_key(
        &self,
        label: String,
        key_type: KeyType,
        export_under: String,
    ) -> Result<ExportedKey, SecurityError> {
        self.run(move |m| m.generate_key(&label, key_type, &export_under))
            .await
    }

    /// Imports a working key encrypted under a key-encryption key, checking its KCV.
    pub async fn import_key(
        &self,
        kek: String,
        label: String,
        key_type: KeyType,
        cryptogram: Vec<u8>,
        kcv: Vec<u8>,
    ) -> Result<KeyInfo, SecurityError> {
        self.run(move |m| m.import_key(&kek, &label, key_type, &cryptogram, &kcv))
            .await
    }

    /// Looks a key up.
    pub async fn find_key(&self, label: String) -> Result<KeyInfo, SecurityError> {
        self.run(move |m| m.find_key(&label)).await
    }

    /// Removes a key (a terminal's previous working keys once it uses new ones).
    pub async fn delete_key(&self, label: String) -> Result<(), SecurityError> {
        self.run(move |m| m.delete_key(&label)).await
    }

    /// A round trip to the module (the payShield's diagnostics, a token's key listing).
    pub async fn health(&self) -> Result<(), SecurityError> {
        self.run(|m| m.health()).await
    }
}
