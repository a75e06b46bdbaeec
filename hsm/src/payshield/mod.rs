//! The `payshield` backend: a Thales payShield (or compatible) payment HSM with a variant LMK,
//! driven by host commands over TCP. PIN blocks are translated (CA, CC) and verified (DC, EC)
//! inside the HSM; MACs are computed there (M6, M8); keys are generated (A0) and imported (A6)
//! there. posbridge holds each key only as its LMK cryptogram in a key store file, and has no
//! code path that decrypts a PIN block.
//!
//! What a variant-LMK payShield cannot do is refused with [`HsmError::Unsupported`], never done
//! in host memory: AES keys (and so ISO 9564 format 4 and AES-CMAC), and encrypting a PIN under
//! a TPK (only a PIN pad does that). The gateway's own AES data keys (QR signing, PAN hash) may
//! live in a second module (`[hsm.aes_keys]`); [`Capabilities`] says where.
//!
//! The UnionPay POS "ECB" MAC needs no command of its own: its keyless first steps (XOR of the
//! message blocks, hex expansion) are public data, and the keyed rest (E_K of the first 8
//! characters, XOR the last 8, E_K again) is an ISO 9797-1 algorithm 1 CBC-MAC over those 16
//! characters, which M6/M8 compute.

mod link;
mod store;
pub mod wire;

pub use link::LinkOptions;
pub use store::{KeyStore, StoredKey, check_type_code};

use crate::error::{HsmError, Result};
use crate::keys::{
    Capabilities, ExportedKey, Family, KeyInfo, KeyTransport, KeyType, PinTranslation,
};
use crate::mac::{self, MacAlgorithm, Padding};
use crate::module::SecurityModule;
use crate::ops::constant_time_eq;
use crate::pin_block::PinBlockFormat;
use crate::secret::{Pan, Pin, PinBlock};
use link::Link;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use wire::{Fields, Response};
use zeroize::Zeroizing;

/// Key type codes for the labels posbridge generates and imports, by label prefix: terminal PIN
/// keys are TPKs, terminal MAC keys TAKs, zone keys ZPK/ZAK, PVKs under 14-15. A terminal master
/// key is held as a ZMK (000) so that A6 can re-import a terminal's working keys from the journal
/// (as a TMK, 002, A0 can still export under it but nothing imports under it).
pub const DEFAULT_KEY_TYPES: &[(&str, &str)] = &[
    ("tmk/", "000"),
    ("zmk/", "000"),
    ("zpk/", "001"),
    ("pek/", "001"),
    ("tpk/", "002"),
    ("pvk/", "002"),
    ("tak/", "003"),
    ("zak/", "008"),
];

/// Key type code of a ZMK (LMK pair 04-05).
pub const ZMK: &str = "000";
/// Key type code of a ZPK (LMK pair 06-07).
pub const ZPK: &str = "001";
/// Key type code of a TPK, TMK or PVK (LMK pair 14-15).
pub const TPK: &str = "002";
/// Key type code of a TAK (LMK pair 16-17).
pub const TAK: &str = "003";
/// Key type code of a ZAK (LMK pair 26-27).
pub const ZAK: &str = "008";

/// How to open the backend.
#[derive(Debug, Clone)]
pub struct PayshieldOptions {
    /// The link.
    pub link: LinkOptions,
    /// The key store file.
    pub key_store: PathBuf,
    /// The HSM's encrypted PIN length L (5 to 13).
    pub encrypted_pin_length: usize,
    /// Label prefix -> key type code, over [`DEFAULT_KEY_TYPES`].
    pub key_types: BTreeMap<String, String>,
}

/// What the diagnostics command (NC) reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostics {
    /// The LMK check value (16 hex digits).
    pub lmk_check: String,
    /// The firmware number (`xxxx-xxxx`).
    pub firmware: String,
}

/// The payShield security module.
pub struct PayshieldModule {
    link: Link,
    store: KeyStore,
    pin_length: usize,
    /// Longest prefix first.
    key_types: Vec<(String, String)>,
    at_open: Mutex<Diagnostics>,
    aes: Option<Arc<dyn SecurityModule>>,
}

impl std::fmt::Debug for PayshieldModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PayshieldModule({:?}, {:?})", self.link, self.store)
    }
}

fn expect_ok(command: &'static str, response: &Response, labels: &[&str]) -> Result<()> {
    if &response.error == b"00" {
        Ok(())
    } else {
        Err(wire::error_for(command, response.error, labels))
    }
}

impl PayshieldModule {
    /// Connects (NC must answer), opens the key store. `aes` is the optional module for AES keys.
    pub fn open(options: &PayshieldOptions, aes: Option<Arc<dyn SecurityModule>>) -> Result<Self> {
        if !(5..=13).contains(&options.encrypted_pin_length) {
            return Err(HsmError::Config(
                "hsm.encrypted_pin_length must be 5 to 13 (the HSM's CS setting)".into(),
            ));
        }
        let mut key_types: BTreeMap<String, String> = DEFAULT_KEY_TYPES
            .iter()
            .map(|(prefix, code)| ((*prefix).to_owned(), (*code).to_owned()))
            .collect();
        for (prefix, code) in &options.key_types {
            check_type_code(code)
                .map_err(|error| HsmError::Config(format!("hsm.key_types.{prefix}: {error}")))?;
            key_types.insert(prefix.clone(), code.clone());
        }
        let mut key_types: Vec<(String, String)> = key_types.into_iter().collect();
        key_types.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
        let link = Link::new(options.link.clone())?;
        let store = KeyStore::open(&options.key_store)?;
        let mut module = Self {
            link,
            store,
            pin_length: options.encrypted_pin_length,
            key_types,
            at_open: Mutex::new(Diagnostics {
                lmk_check: String::new(),
                firmware: String::new(),
            }),
            aes,
        };
        let diagnostics = module.diagnostics()?;
        tracing::info!(
            address = module.link.address(),
            firmware = diagnostics.firmware,
            lmk_check = diagnostics.lmk_check,
            key_store = %options.key_store.display(),
            "payShield security module opened"
        );
        module.at_open = Mutex::new(diagnostics);
        Ok(module)
    }

    fn call(&self, command: &'static [u8; 2], fields: &[u8]) -> Result<Response> {
        self.link.call(command, fields)
    }

    /// Runs the diagnostics command (NC): the LMK check value and the firmware number (what
    /// [`SecurityModule::health`] runs).
    pub fn diagnostics(&self) -> Result<Diagnostics> {
        let response = self.call(b"NC", b"")?;
        expect_ok("NC", &response, &[])?;
        let mut fields = Fields::new("NC", &response.fields);
        let lmk_check = String::from_utf8_lossy(fields.take(16, "LMK check value")?).into_owned();
        let firmware = String::from_utf8_lossy(fields.take(9, "firmware number")?).into_owned();
        fields.end()?;
        Ok(Diagnostics {
            lmk_check,
            firmware,
        })
    }

    /// The key store.
    pub fn store(&self) -> &KeyStore {
        &self.store
    }

    /// The key type code for a label posbridge generates or imports.
    pub fn type_code_for(&self, label: &str) -> Result<&str> {
        self.key_types
            .iter()
            .find(|(prefix, _)| label.starts_with(prefix.as_str()))
            .map(|(_, code)| code.as_str())
            .ok_or_else(|| {
                HsmError::invalid(format!(
                    "no payShield key type for label {label}: add its prefix to [hsm.key_types]"
                ))
            })
    }

    /// The full 8-byte check block of a key under the LMK (BU with a 16 H check value).
    pub fn check_block(&self, type_code: &str, cryptogram: &str) -> Result<Vec<u8>> {
        let kind = wire::key_type_of_cryptogram(cryptogram)?;
        let length_flag = match kind {
            KeyType::Des => '0',
            KeyType::Tdes2 => '1',
            _ => '2',
        };
        // BU names the LMK pair by the last two digits of the key type code; a code with a
        // variant digit goes in the extended form (FF, then ;type).
        let fields = if let Some(pair) = type_code.strip_prefix('0') {
            format!("{pair}{length_flag}{cryptogram}")
        } else {
            format!("FF{length_flag}{cryptogram};{type_code}")
        };
        let response = self.call(b"BU", fields.as_bytes())?;
        expect_ok("BU", &response, &[])?;
        let mut fields = Fields::new("BU", &response.fields);
        let len = fields.remaining().min(16);
        let block = fields.hex(len, "key check value")?;
        fields.end()?;
        if block.len() < 3 {
            return Err(HsmError::Device {
                command: "BU".into(),
                code: "00".into(),
                meaning: "malformed response: check value shorter than 6 H".into(),
            });
        }
        Ok(block)
    }

    /// Provisions a key the site already holds as an LMK cryptogram (a key ceremony's output):
    /// the HSM computes its check value (BU), which must start with `expected_kcv`; then the
    /// key is stored under `label`, replacing a key of that label.
    pub fn import_lmk_key(
        &self,
        label: &str,
        type_code: &str,
        cryptogram: &str,
        expected_kcv: &[u8],
    ) -> Result<KeyInfo> {
        let cryptogram = cryptogram.trim().to_ascii_uppercase();
        let candidate = StoredKey {
            label: label.to_owned(),
            type_code: type_code.to_owned(),
            cryptogram: cryptogram.clone(),
            kcv: "000000".into(),
        };
        candidate.validate()?;
        let block = self.check_block(type_code, &cryptogram)?;
        self.require_kcv(label, &block, expected_kcv)?;
        let key = StoredKey {
            kcv: hex::encode_upper(&block[..3]),
            ..candidate
        };
        self.store.put(key.clone())?;
        tracing::info!(label, type_code, "LMK cryptogram provisioned");
        key.info()
    }

    fn require_kcv(&self, label: &str, block: &[u8], expected: &[u8]) -> Result<()> {
        if expected.len() < 2 || expected.len() > block.len() {
            return Err(HsmError::invalid(format!(
                "check value must be 2 to {} bytes",
                block.len()
            )));
        }
        let computed = &block[..expected.len()];
        if constant_time_eq(computed, expected) {
            Ok(())
        } else {
            Err(HsmError::KcvMismatch {
                label: label.to_owned(),
                expected: hex::encode_upper(expected),
                computed: hex::encode_upper(computed),
            })
        }
    }

    /// A key of the payShield store; for a label only the AES module has, the error says so.
    fn key(&self, label: &str) -> Result<StoredKey> {
        match self.store.get(label) {
            Err(HsmError::KeyNotFound { .. }) if self.in_aes(label) => {
                Err(HsmError::Unsupported(format!(
                    "{label} is an AES key in the [hsm.aes_keys] module; PIN and key-exchange operations need a key on the payShield"
                )))
            }
            other => other,
        }
    }

    /// The module that holds the data key `label`: data is sealed with AES-GCM, and a variant
    /// LMK holds no AES keys, so data keys live in `[hsm.aes_keys]` (posbridge does not use the
    /// payShield's own data-encryption commands, M0/M2).
    fn data_module(&self, label: &str) -> Result<&Arc<dyn SecurityModule>> {
        match (&self.aes, self.store.get(label)) {
            (Some(aes), Err(HsmError::KeyNotFound { .. })) => Ok(aes),
            (_, Ok(_)) => Err(HsmError::wrong_key(
                label,
                "data keys are AES (sealed with AES-GCM): keep dek/ keys in [hsm.aes_keys], not under the LMK",
            )),
            (None, _) => Err(HsmError::Config(format!(
                "data key {label}: the payshield backend keeps AES keys in [hsm.aes_keys], and none is configured"
            ))),
            (_, Err(other)) => Err(other),
        }
    }

    fn in_aes(&self, label: &str) -> bool {
        self.aes
            .as_ref()
            .is_some_and(|aes| aes.find_key(label).is_ok())
    }

    fn require_type(key: &StoredKey, allowed: &[&str], what: &str) -> Result<()> {
        if allowed.contains(&key.type_code.as_str()) {
            Ok(())
        } else {
            Err(HsmError::wrong_key(
                &key.label,
                format!(
                    "{what} needs a key of payShield type {}, this is {} (key separation)",
                    allowed.join(" or "),
                    key.type_code
                ),
            ))
        }
    }

    /// The encrypted PIN under LMK pair 02-03 of a clear PIN (BA).
    fn pin_under_lmk(&self, pin: &Pin, account: &str) -> Result<Zeroizing<String>> {
        let digits = pin.expose_secret();
        if digits.len() >= self.pin_length {
            return Err(HsmError::invalid(format!(
                "a {}-digit PIN does not fit the HSM's encrypted PIN length {}",
                digits.len(),
                self.pin_length
            )));
        }
        let mut fields = Zeroizing::new(String::with_capacity(self.pin_length + 12));
        fields.push_str(digits);
        fields.extend(std::iter::repeat_n('F', self.pin_length - digits.len()));
        fields.push_str(account);
        let response = self.call(b"BA", fields.as_bytes())?;
        expect_ok("BA", &response, &[])?;
        let mut out = Fields::new("BA", &response.fields);
        let encrypted = Zeroizing::new(
            String::from_utf8_lossy(out.take(self.pin_length, "encrypted PIN")?).into_owned(),
        );
        out.end()?;
        Ok(encrypted)
    }

    /// M6 fields and the message as the HSM MACs it (padding done here: it is public).
    fn mac_request(
        &self,
        key: &StoredKey,
        algorithm: MacAlgorithm,
        data: &[u8],
    ) -> Result<(char, Vec<u8>)> {
        let kind = key.key_type()?;
        match algorithm {
            MacAlgorithm::Iso9797Alg1 { padding } => Ok(('1', mac::pad(data, padding, 8))),
            MacAlgorithm::X919 => match kind {
                // X9.19 with K = K' is single-DES CBC: algorithm 1 with the single-length key.
                KeyType::Des => Ok(('1', mac::pad(data, Padding::M1, 8))),
                KeyType::Tdes2 => Ok(('3', mac::pad(data, Padding::M1, 8))),
                other => Err(HsmError::wrong_key(
                    &key.label,
                    format!("X9.19 needs a des or tdes2 key, this is {other}"),
                )),
            },
            MacAlgorithm::CupsEcb => Ok(('1', hex::encode_upper(mac::cups_xor(data)).into_bytes())),
            MacAlgorithm::AesCmac => Err(HsmError::wrong_key(
                &key.label,
                "AES-CMAC needs an AES key; a variant-LMK payShield holds none",
            )),
        }
    }

    fn mac_fields(
        &self,
        key: &StoredKey,
        algorithm: char,
        message: &[u8],
        size: char,
    ) -> Result<Vec<u8>> {
        Self::require_type(key, &[TAK, ZAK], "a MAC")?;
        if message.len() > wire::MAX_MAC_MESSAGE {
            return Err(HsmError::invalid(format!(
                "a message to MAC is at most {} bytes",
                wire::MAX_MAC_MESSAGE
            )));
        }
        // Only block, binary input, MAC size, algorithm, no padding (done above), key type, key.
        let mut fields =
            format!("00{size}{algorithm}0{}{}", key.type_code, key.cryptogram).into_bytes();
        fields.extend_from_slice(format!("{:04X}", message.len()).as_bytes());
        fields.extend_from_slice(message);
        Ok(fields)
    }

    fn payshield_mac(
        &self,
        key: &StoredKey,
        algorithm: MacAlgorithm,
        data: &[u8],
    ) -> Result<Vec<u8>> {
        let (code, message) = self.mac_request(key, algorithm, data)?;
        let fields = self.mac_fields(key, code, &message, '1')?;
        let response = self.call(b"M6", &fields)?;
        expect_ok("M6", &response, &[&key.label])?;
        let mut out = Fields::new("M6", &response.fields);
        let block = out.hex(16, "MAC")?;
        out.end()?;
        Ok(match algorithm {
            MacAlgorithm::CupsEcb => hex::encode_upper(&block[..4]).into_bytes(),
            _ => block,
        })
    }

    fn payshield_verify(
        &self,
        key: &StoredKey,
        algorithm: MacAlgorithm,
        data: &[u8],
        mac: &[u8],
    ) -> Result<()> {
        // The MAC as M8 takes it: 8 or 16 hex digits of the leftmost 4 or 8 bytes.
        let text = match algorithm {
            // The UnionPay MAC travels as 8 hex characters already.
            MacAlgorithm::CupsEcb if mac.len() == 8 => {
                if !mac.iter().all(u8::is_ascii_hexdigit) {
                    return Err(HsmError::MacMismatch);
                }
                Some(String::from_utf8_lossy(mac).to_ascii_uppercase())
            }
            MacAlgorithm::CupsEcb => None,
            _ if mac.len() == 4 || mac.len() == 8 => Some(hex::encode_upper(mac)),
            _ => None,
        };
        // Both the X9.19/CBC-MAC block and the UnionPay MAC's text are 8 bytes.
        let full = 8;
        if mac.len() < 4 || mac.len() > full {
            return Err(HsmError::invalid(format!(
                "MAC must be 4 to {full} bytes, got {}",
                mac.len()
            )));
        }
        let Some(text) = text else {
            // A truncation M8 has no size for: compare with the generated MAC (MACs are not
            // secret; the key never leaves the HSM either way).
            let computed = self.payshield_mac(key, algorithm, data)?;
            return if constant_time_eq(&computed[..mac.len()], mac) {
                Ok(())
            } else {
                Err(HsmError::MacMismatch)
            };
        };
        let (code, message) = self.mac_request(key, algorithm, data)?;
        let size = if text.len() == 8 { '0' } else { '1' };
        let mut fields = self.mac_fields(key, code, &message, size)?;
        fields.extend_from_slice(text.as_bytes());
        let response = self.call(b"M8", &fields)?;
        match &response.error {
            b"00" => Ok(()),
            b"01" => Err(HsmError::MacMismatch),
            _ => Err(wire::error_for("M8", response.error, &[&key.label])),
        }
    }

    fn check_pin_format(format: PinBlockFormat, block: Option<&PinBlock>) -> Result<()> {
        if format.family() == Family::Aes {
            return Err(HsmError::Unsupported(
                "ISO 9564 format 4 needs an AES key, which a variant-LMK payShield cannot hold: use format 0, 1 or 3 with a TDES key".into(),
            ));
        }
        if let Some(block) = block
            && block.len() != 8
        {
            return Err(HsmError::invalid("a format 0, 1 or 3 PIN block is 8 bytes"));
        }
        Ok(())
    }
}

fn pan_for(format: PinBlockFormat, pan: Option<&Pan>) -> Result<String> {
    if format.needs_pan() && pan.is_none() {
        return Err(HsmError::invalid(format!(
            "PIN block format {format} needs the PAN"
        )));
    }
    wire::account_number(pan)
}

impl SecurityModule for PayshieldModule {
    fn capabilities(&self) -> Capabilities {
        let mut notes = vec![
            "PIN blocks are translated (CA/CC) and verified (DC/EC) inside the payShield; posbridge never decrypts one".into(),
            format!(
                "keys held by posbridge only as LMK cryptograms in {}",
                self.store.path().display()
            ),
            "not supported on a variant LMK (refused, never done in host memory): AES keys, ISO 9564 format 4, AES-CMAC; encrypting a PIN under a TPK".into(),
            "encrypt_pin (simulators) and pin_verification_value (enrolment) send the caller's clear PIN to the HSM (BA) and keep nothing".into(),
        ];
        // What NC said when the module opened or at the last health check: capabilities() is
        // called for logs and Debug output and must not cost an HSM round trip.
        let diagnostics = self
            .at_open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let mut production = true;
        if let Some(aes) = &self.aes {
            let theirs = aes.capabilities();
            production = theirs.production;
            notes.push(format!(
                "AES keys (QR signing, PAN hash) in a second module: {} ({}){}",
                theirs.backend,
                theirs.description,
                if theirs.production {
                    ""
                } else {
                    ": clear AES keys in host memory, not for production"
                }
            ));
        }
        Capabilities {
            backend: "payshield".into(),
            description: format!(
                "Thales payShield at {}, firmware {}, LMK check value {}, {} connections",
                self.link.address(),
                diagnostics.firmware,
                diagnostics.lmk_check,
                self.link.size()
            ),
            production,
            pin_translation: PinTranslation::InToken,
            key_transport: KeyTransport::InToken,
            notes,
        }
    }

    fn health(&self) -> Result<()> {
        let now = self.diagnostics()?;
        let mut known = self
            .at_open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if known.lmk_check != now.lmk_check {
            tracing::warn!(
                was = known.lmk_check,
                now = now.lmk_check,
                "the payShield's LMK check value changed: its keys are not the ones posbridge holds cryptograms for"
            );
        }
        *known = now;
        drop(known);
        if let Some(aes) = &self.aes {
            aes.health()?;
        }
        Ok(())
    }

    fn list_keys(&self) -> Result<Vec<KeyInfo>> {
        let mut keys: BTreeMap<String, KeyInfo> = BTreeMap::new();
        if let Some(aes) = &self.aes {
            for info in aes.list_keys()? {
                keys.insert(info.label.clone(), info);
            }
        }
        for key in self.store.all()? {
            keys.insert(key.label.clone(), key.info()?);
        }
        Ok(keys.into_values().collect())
    }

    fn find_key(&self, label: &str) -> Result<KeyInfo> {
        match (self.store.get(label), &self.aes) {
            (Err(HsmError::KeyNotFound { .. }), Some(aes)) => aes.find_key(label),
            (key, _) => key?.info(),
        }
    }

    fn kcv(&self, label: &str) -> Result<Vec<u8>> {
        Ok(self.find_key(label)?.kcv)
    }

    fn translate_pin(
        &self,
        block: &PinBlock,
        src_key: &str,
        src_format: PinBlockFormat,
        dst_key: &str,
        dst_format: PinBlockFormat,
        pan: Option<&Pan>,
    ) -> Result<PinBlock> {
        tracing::debug!(src_key, %src_format, dst_key, %dst_format, pan = ?pan, "translate PIN block (payShield)");
        Self::check_pin_format(src_format, Some(block))?;
        Self::check_pin_format(dst_format, None)?;
        let source = self.key(src_key)?;
        let destination = self.key(dst_key)?;
        let command: &'static [u8; 2] = match source.type_code.as_str() {
            TPK => b"CA",
            ZPK => b"CC",
            _ => {
                Self::require_type(&source, &[TPK, ZPK], "a PIN translation source")?;
                b"CC"
            }
        };
        Self::require_type(
            &destination,
            &[ZPK],
            "a PIN translation destination (CA/CC)",
        )?;
        let account = if src_format.needs_pan() || dst_format.needs_pan() {
            wire::account_number(Some(pan.ok_or_else(|| {
                HsmError::invalid("PIN block formats 0 and 3 need the PAN")
            })?))?
        } else {
            wire::account_number(pan)?
        };
        let fields = Zeroizing::new(format!(
            "{}{}12{}{}{}{account}",
            source.cryptogram,
            destination.cryptogram,
            hex::encode_upper(block.expose_secret()),
            wire::pin_format_code(src_format),
            wire::pin_format_code(dst_format),
        ));
        let name = if command == b"CA" { "CA" } else { "CC" };
        let response = self.call(command, fields.as_bytes())?;
        expect_ok(name, &response, &[src_key, dst_key])?;
        let mut out = Fields::new(name, &response.fields);
        out.digits(2, "PIN length")?;
        let translated = out.hex(16, "destination PIN block")?;
        let format = out.digits(2, "destination PIN block format")?;
        out.end()?;
        if format != wire::pin_format_code(dst_format) {
            return Err(HsmError::Device {
                command: name.into(),
                code: "00".into(),
                meaning: "the response names another PIN block format".into(),
            });
        }
        PinBlock::new(translated)
    }

    fn encrypt_pin(
        &self,
        pin: &Pin,
        pan: &Pan,
        format: PinBlockFormat,
        key: &str,
    ) -> Result<PinBlock> {
        Self::check_pin_format(format, None)?;
        let zpk = self.key(key)?;
        if zpk.type_code == TPK {
            return Err(HsmError::Unsupported(format!(
                "{key} is a TPK: no payShield host command encrypts a PIN under a TPK (a PIN pad does); JG encrypts under a ZPK"
            )));
        }
        Self::require_type(&zpk, &[ZPK], "encrypting a PIN (BA + JG)")?;
        let account = pan_for(format, Some(pan))?;
        let under_lmk = self.pin_under_lmk(pin, &account)?;
        let fields = Zeroizing::new(format!(
            "{}{}{account}{}",
            zpk.cryptogram,
            wire::pin_format_code(format),
            under_lmk.as_str()
        ));
        let response = self.call(b"JG", fields.as_bytes())?;
        expect_ok("JG", &response, &["", key])?;
        let mut out = Fields::new("JG", &response.fields);
        let block = out.hex(16, "PIN block")?;
        out.end()?;
        PinBlock::new(block)
    }

    fn generate_mac(&self, key: &str, algorithm: MacAlgorithm, data: &[u8]) -> Result<Vec<u8>> {
        tracing::trace!(key, %algorithm, data_bytes = data.len(), "generate MAC (payShield)");
        match (self.store.get(key), &self.aes) {
            (Err(HsmError::KeyNotFound { .. }), Some(aes)) => {
                aes.generate_mac(key, algorithm, data)
            }
            (stored, _) => self.payshield_mac(&stored?, algorithm, data),
        }
    }

    fn verify_mac(
        &self,
        key: &str,
        algorithm: MacAlgorithm,
        data: &[u8],
        mac: &[u8],
    ) -> Result<()> {
        match (self.store.get(key), &self.aes) {
            (Err(HsmError::KeyNotFound { .. }), Some(aes)) => {
                aes.verify_mac(key, algorithm, data, mac)
            }
            (stored, _) => self.payshield_verify(&stored?, algorithm, data, mac),
        }
    }

    fn encrypt_data(&self, key: &str, context: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
        self.data_module(key)?.encrypt_data(key, context, plaintext)
    }

    fn decrypt_data(&self, key: &str, context: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        self.data_module(key)?.decrypt_data(key, context, sealed)
    }

    fn import_key(
        &self,
        kek: &str,
        label: &str,
        key_type: KeyType,
        cryptogram: &[u8],
        expected_kcv: &[u8],
    ) -> Result<KeyInfo> {
        crate::keys::check_label(label)?;
        // Every key has a class, named by its label, as on every backend.
        crate::policy::KeyClass::of_label(label)?;
        let lmk_scheme = wire::lmk_scheme(key_type)?;
        let under_kek = wire::kek_field(key_type, cryptogram)?;
        if expected_kcv.len() < 2 || expected_kcv.len() > 8 {
            return Err(HsmError::invalid("check value must be 2 to 8 bytes"));
        }
        let type_code = self.type_code_for(label)?.to_owned();
        let zmk = self.key(kek)?;
        if zmk.type_code != ZMK {
            return Err(HsmError::Unsupported(format!(
                "{kek} is of payShield type {}: A6 imports only under a ZMK (000); hold the key-encryption key as a ZMK",
                zmk.type_code
            )));
        }
        let fields = format!("{type_code}{}{under_kek}{lmk_scheme}", zmk.cryptogram);
        let response = self.call(b"A6", fields.as_bytes())?;
        if &response.error == b"01" {
            // "Key parity error, advice only": the HSM forces odd parity on its output.
            tracing::warn!(
                label,
                "payShield A6: the imported key had even parity (advice only)"
            );
        } else {
            expect_ok("A6", &response, &[kek, label])?;
        }
        let mut out = Fields::new("A6", &response.fields);
        let under_lmk = out.key("key under LMK")?;
        let kcv = out.hex(6, "key check value")?;
        out.end()?;
        let block = if expected_kcv.len() > 3 {
            self.check_block(&type_code, &under_lmk)?
        } else {
            kcv.clone()
        };
        self.require_kcv(label, &block, expected_kcv)?;
        let stored = StoredKey {
            label: label.to_owned(),
            type_code,
            cryptogram: under_lmk,
            kcv: hex::encode_upper(&kcv),
        };
        if stored.key_type()? != key_type {
            return Err(HsmError::Device {
                command: "A6".into(),
                code: "00".into(),
                meaning: "the key under the LMK has another length than the one imported".into(),
            });
        }
        self.store.put(stored.clone())?;
        tracing::info!(label, kek, %key_type, "key imported (payShield A6)");
        stored.info()
    }

    fn generate_key(
        &self,
        label: &str,
        key_type: KeyType,
        export_under: &str,
    ) -> Result<ExportedKey> {
        crate::keys::check_label(label)?;
        crate::policy::KeyClass::of_label(label)?;
        let lmk_scheme = wire::lmk_scheme(key_type)?;
        let export_scheme = wire::export_scheme(key_type)?;
        let type_code = self.type_code_for(label)?.to_owned();
        let kek = self.key(export_under)?;
        let flag = match kek.type_code.as_str() {
            ZMK => "",
            TPK => ";1",
            _ => {
                Self::require_type(&kek, &[ZMK, TPK], "exporting a key (A0)")?;
                ""
            }
        };
        let fields = format!(
            "1{type_code}{lmk_scheme}{flag}{}{export_scheme}",
            kek.cryptogram
        );
        let response = self.call(b"A0", fields.as_bytes())?;
        expect_ok("A0", &response, &[export_under, label])?;
        let mut out = Fields::new("A0", &response.fields);
        let under_lmk = out.key("key under LMK")?;
        let under_kek = out.key("key under ZMK/TMK")?;
        let kcv = out.hex(6, "key check value")?;
        out.end()?;
        // A key under the ZMK/TMK in another scheme (say Thales' own variant U) would decrypt
        // to a different key on the terminal: only the X9.17 scheme asked for is accepted.
        let scheme_ok = match export_scheme {
            'Z' => under_kek.len() == 16,
            letter => under_kek.starts_with(letter),
        };
        if !scheme_ok {
            return Err(HsmError::Device {
                command: "A0".into(),
                code: "00".into(),
                meaning: format!(
                    "the key under the ZMK/TMK is not in scheme {export_scheme} as asked"
                ),
            });
        }
        let cryptogram = hex::decode(if under_kek.len() == 16 {
            &under_kek[..]
        } else {
            &under_kek[1..]
        })
        .map_err(|_| HsmError::invalid("key under the KEK is not hex"))?;
        if cryptogram.len() != key_type.key_len()
            || wire::key_type_of_cryptogram(&under_lmk)? != key_type
        {
            return Err(HsmError::Device {
                command: "A0".into(),
                code: "00".into(),
                meaning: "the generated key has another length than requested".into(),
            });
        }
        // UnionPay terminals take a 4-byte check value: the 4th byte comes from BU.
        let block = self.check_block(&type_code, &under_lmk)?;
        if block[..3] != kcv[..] {
            return Err(HsmError::Device {
                command: "BU".into(),
                code: "00".into(),
                meaning: "the check value differs from A0's".into(),
            });
        }
        let stored = StoredKey {
            label: label.to_owned(),
            type_code,
            cryptogram: under_lmk,
            kcv: hex::encode_upper(&kcv),
        };
        self.store.put(stored)?;
        tracing::info!(label, kek = export_under, %key_type, "key generated (payShield A0)");
        Ok(ExportedKey {
            label: label.to_owned(),
            key_type,
            cryptogram,
            kcv: block[..4].to_vec(),
        })
    }

    fn delete_key(&self, label: &str) -> Result<()> {
        match (self.store.remove(label), &self.aes) {
            (Err(HsmError::KeyNotFound { .. }), Some(aes)) => aes.delete_key(label),
            (result, _) => result,
        }
    }

    fn pin_verification_value(&self, pvk: &str, pan: &Pan, pin: &Pin, pvki: u8) -> Result<String> {
        if pvki > 9 {
            return Err(HsmError::invalid("PVKI must be 0 to 9"));
        }
        let pvk_key = self.key(pvk)?;
        Self::require_type(&pvk_key, &[TPK], "the Visa PVV (PVK)")?;
        let account = wire::account_number(Some(pan))?;
        let under_lmk = self.pin_under_lmk(pin, &account)?;
        let fields = Zeroizing::new(format!(
            "{}{}{account}{pvki}",
            pvk_key.cryptogram,
            under_lmk.as_str()
        ));
        let response = self.call(b"DG", fields.as_bytes())?;
        expect_ok("DG", &response, &[pvk])?;
        let mut out = Fields::new("DG", &response.fields);
        let pvv = out.digits(4, "PVV")?;
        out.end()?;
        Ok(pvv)
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
    ) -> Result<bool> {
        Self::check_pin_format(format, Some(block))?;
        if pvv.len() != 4 || !pvv.bytes().all(|b| b.is_ascii_digit()) {
            return Err(HsmError::invalid("PVV must be 4 digits"));
        }
        if pvki > 9 {
            return Err(HsmError::invalid("PVKI must be 0 to 9"));
        }
        let pin_key = self.key(pek)?;
        let pvk_key = self.key(pvk)?;
        let (command, name): (&'static [u8; 2], &'static str) = match pin_key.type_code.as_str() {
            TPK => (b"DC", "DC"),
            _ => {
                Self::require_type(&pin_key, &[TPK, ZPK], "PIN verification (DC/EC)")?;
                (b"EC", "EC")
            }
        };
        Self::require_type(&pvk_key, &[TPK], "the Visa PVV (PVK)")?;
        let account = pan_for(format, Some(pan))?;
        let fields = Zeroizing::new(format!(
            "{}{}{}{}{account}{pvki}{pvv}",
            pin_key.cryptogram,
            pvk_key.cryptogram,
            hex::encode_upper(block.expose_secret()),
            wire::pin_format_code(format),
        ));
        let response = self.call(command, fields.as_bytes())?;
        match &response.error {
            b"00" => Ok(true),
            b"01" => Ok(false),
            _ => Err(wire::error_for(name, response.error, &[pek, pvk])),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    /// The promise of this backend, kept checkable: its client code calls nothing that could
    /// decrypt a PIN block or hold a clear key (the crate's cipher layer, PIN block decoding,
    /// the calculator).
    #[test]
    fn the_client_has_no_code_path_that_decrypts_a_pin_block() {
        let sources = [
            include_str!("mod.rs"),
            include_str!("wire.rs"),
            include_str!("link.rs"),
            include_str!("store.rs"),
        ];
        for source in sources {
            let code: String = source
                .lines()
                .filter(|line| !line.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            for forbidden in [
                concat!("decipher", "("),
                concat!("ecb_", "decrypt"),
                concat!("Soft", "Key"),
                concat!("calculator", "::"),
                concat!("Clear", "Key"),
                concat!("pin_block::", "de"),
            ] {
                assert!(
                    !code.contains(forbidden),
                    "{forbidden} in the payshield client"
                );
            }
        }
    }
}
