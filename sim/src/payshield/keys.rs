//! Turning clear test keys into a `payshield` key store: each key encrypted under the test LMK
//! of its key type, with its check value. This is what a key ceremony produces on a real site
//! (components entered at the HSM's console, cryptograms handed to the host); here it is done
//! from a clear key file, so it is for test and demo keys only.

use super::lmk;
use posbridge_hsm::payshield::{DEFAULT_KEY_TYPES, KeyStore, StoredKey};
use posbridge_hsm::software::KeyFile;
use posbridge_hsm::{ClearKey, HsmError, KeyType};
use std::path::Path;

/// The key type code for a label: the longest matching prefix of `types`, then of the
/// backend's defaults.
pub fn type_for<'a>(label: &str, types: &'a [(&'a str, &'a str)]) -> Option<&'a str> {
    types
        .iter()
        .chain(DEFAULT_KEY_TYPES.iter())
        .filter(|(prefix, _)| label.starts_with(prefix))
        .max_by_key(|(prefix, _)| prefix.len())
        .map(|(_, code)| *code)
}

/// One clear key as a stored LMK cryptogram.
pub fn stored_key(label: &str, type_code: &str, clear: &ClearKey) -> Result<StoredKey, HsmError> {
    let cryptogram = lmk::encrypt(clear, type_code)
        .map_err(|error| HsmError::InvalidInput(format!("{label}: {error:?}")))?;
    Ok(StoredKey {
        label: label.to_owned(),
        type_code: type_code.to_owned(),
        cryptogram,
        kcv: hex::encode_upper(&lmk::check_block(clear)[..3]),
    })
}

/// Writes the DES-family keys of a clear key file into the key store at `store`, typed by
/// `types` (over the defaults). Returns the labels left out: AES keys, which a variant LMK
/// cannot hold, and labels without a key type.
pub fn provision(
    file: KeyFile,
    origin: &str,
    types: &[(&str, &str)],
    store: &Path,
) -> Result<Vec<String>, HsmError> {
    let store = KeyStore::open(store)?;
    let mut left_out = Vec::new();
    for (label, kind, clear) in file.into_keys(origin)? {
        let des = matches!(kind, KeyType::Des | KeyType::Tdes2 | KeyType::Tdes3);
        match (des, type_for(&label, types)) {
            (true, Some(code)) => store.put(stored_key(&label, code, &clear)?)?,
            _ => left_out.push(label),
        }
    }
    Ok(left_out)
}
