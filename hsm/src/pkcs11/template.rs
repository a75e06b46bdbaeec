//! The attribute template of every key object the module creates, generates or unwraps: one
//! function, so every key gets the same protections and only its class's usages.
//!
//! Always: a private token object, `CKA_SENSITIVE`, not `CKA_EXTRACTABLE`, not `CKA_MODIFIABLE`,
//! not `CKA_COPYABLE` (where the token knows the attribute), `CKA_DERIVE` false, and each of
//! `CKA_ENCRYPT`, `CKA_DECRYPT`, `CKA_SIGN`, `CKA_VERIFY`, `CKA_WRAP`, `CKA_UNWRAP` set
//! explicitly (true only when the class's usages have it), so no token default can add one.

use crate::keys::KeyType;
use crate::policy::{KeyUsage, Usages};
use cryptoki::object::{Attribute, KeyType as CkKeyType, ObjectClass};

/// `CKA_ID` prefix of every key the module stores; the key type follows (`posbridge:tdes2`), so
/// a single-length key held as the DES2 key K|K is known as `des`, and an AES key's length is
/// known on tokens that do not report `CKA_VALUE_LEN` (opencryptoki 3.8).
pub(crate) const ID_KEY: &str = "posbridge:";
/// Separates the stored check value in `CKA_ID`: `posbridge;kcv=08D7B4`.
pub(crate) const ID_KCV: &str = ";kcv=";

/// What a key object is to be.
pub(crate) struct KeySpec<'a> {
    pub(crate) label: &'a str,
    pub(crate) ck_type: CkKeyType,
    /// For AES keys (`CKA_VALUE_LEN` when generating or unwrapping).
    pub(crate) value_len: Option<usize>,
    pub(crate) usages: Usages,
    pub(crate) id: Vec<u8>,
    /// Whether the token knows `CKA_COPYABLE`.
    pub(crate) copyable_known: bool,
}

/// `CKA_ID` for a key: its type, and the check value when one is to be stored (a key that may
/// neither encrypt nor sign cannot compute its own).
pub(crate) fn key_id(key_type: KeyType, kcv: Option<&[u8]>) -> Vec<u8> {
    let mut id = format!("{ID_KEY}{key_type}");
    if let Some(kcv) = kcv {
        id.push_str(ID_KCV);
        id.push_str(&hex::encode_upper(kcv));
    }
    id.into_bytes()
}

/// The token key template (no value: `C_CreateObject` callers add `CKA_VALUE`).
pub(crate) fn token_key(spec: &KeySpec<'_>) -> Vec<Attribute> {
    let has = |usage| spec.usages.contains(usage);
    let mut template = vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(spec.ck_type),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Modifiable(false),
        Attribute::Derive(false),
        Attribute::Encrypt(has(KeyUsage::Encrypt)),
        Attribute::Decrypt(has(KeyUsage::Decrypt)),
        Attribute::Sign(has(KeyUsage::Sign)),
        Attribute::Verify(has(KeyUsage::Verify)),
        Attribute::Wrap(has(KeyUsage::Wrap)),
        Attribute::Unwrap(has(KeyUsage::Unwrap)),
        Attribute::Label(spec.label.as_bytes().to_vec()),
        Attribute::Id(spec.id.clone()),
    ];
    if spec.copyable_known {
        template.push(Attribute::Copyable(false));
    }
    if let Some(len) = spec.value_len {
        template.push(Attribute::ValueLen((len as u64).into()));
    }
    template
}

/// A session key that exists only to be wrapped once, right after it is generated (then
/// unwrapped into its token object and destroyed): extractable, with no usage at all.
pub(crate) fn wrappable_session_key(
    ck_type: CkKeyType,
    value_len: Option<usize>,
    copyable_known: bool,
) -> Vec<Attribute> {
    let mut template = vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(ck_type),
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(true),
        Attribute::Derive(false),
        Attribute::Encrypt(false),
        Attribute::Decrypt(false),
        Attribute::Sign(false),
        Attribute::Verify(false),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
    ];
    if copyable_known {
        template.push(Attribute::Copyable(false));
    }
    if let Some(len) = value_len {
        template.push(Attribute::ValueLen((len as u64).into()));
    }
    template
}

/// The protections and usages of a template (its boolean attributes but `CKA_TOKEN`): what a
/// key must be found to have after the token made it.
pub(crate) fn protections(template: &[Attribute]) -> Vec<Attribute> {
    template
        .iter()
        .filter(|attribute| {
            matches!(
                attribute,
                Attribute::Private(_)
                    | Attribute::Sensitive(_)
                    | Attribute::Extractable(_)
                    | Attribute::Modifiable(_)
                    | Attribute::Copyable(_)
                    | Attribute::Derive(_)
                    | Attribute::Encrypt(_)
                    | Attribute::Decrypt(_)
                    | Attribute::Sign(_)
                    | Attribute::Verify(_)
                    | Attribute::Wrap(_)
                    | Attribute::Unwrap(_)
            )
        })
        .cloned()
        .collect()
}
