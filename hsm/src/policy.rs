//! Key usage as policy: every key belongs to a class (terminal master key, zone PIN key, MAC key,
//! ...), named by its label's prefix (`tak/12345678` is a terminal MAC key), and each class gets
//! the least set of usages the module's operations need with it on a given token.
//!
//! The PKCS#11 backend writes that set into the key object's template (`CKA_ENCRYPT`,
//! `CKA_DECRYPT`, `CKA_SIGN`, `CKA_VERIFY`, `CKA_WRAP`, `CKA_UNWRAP`; every other usage false,
//! and the key sensitive, not extractable, not modifiable, not copyable), so the token itself
//! refuses what the class does not need: anyone holding the token PIN still cannot `C_Decrypt`
//! the working keys a terminal master key exported, or a PIN block with a MAC key.
//!
//! Which set a class gets depends on what the token can do ([`TokenFeatures`], probed at start):
//! a key-encryption key that can wrap and unwrap never needs to encrypt or decrypt; on a token
//! that cannot wrap with it, the narrowest usage that still works is chosen (a terminal master
//! key encrypts only, a zone master key decrypts only) and the module says so in its
//! [`Capabilities`](crate::Capabilities).

use crate::error::{HsmError, Result};
use crate::keys::Family;
use serde::{Serialize, Serializer};
use std::fmt;

/// One thing a key may be used for: the PKCS#11 usage attributes the module sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyUsage {
    /// `CKA_ENCRYPT`: encipher data (PIN blocks, CBC-MAC chaining, check values).
    Encrypt,
    /// `CKA_DECRYPT`: decipher data (PIN blocks; keys imported through host memory).
    Decrypt,
    /// `CKA_SIGN`: compute a MAC with a token mechanism (AES-CMAC).
    Sign,
    /// `CKA_VERIFY`: verify a MAC with a token mechanism.
    Verify,
    /// `CKA_WRAP`: export another key encrypted under this one (`C_WrapKey`).
    Wrap,
    /// `CKA_UNWRAP`: import a key encrypted under this one (`C_UnwrapKey`).
    Unwrap,
}

impl KeyUsage {
    /// Every usage, in the order listings print them.
    pub const ALL: [KeyUsage; 6] = [
        KeyUsage::Encrypt,
        KeyUsage::Decrypt,
        KeyUsage::Sign,
        KeyUsage::Verify,
        KeyUsage::Wrap,
        KeyUsage::Unwrap,
    ];

    /// The lowercase name listings use.
    pub fn name(self) -> &'static str {
        match self {
            KeyUsage::Encrypt => "encrypt",
            KeyUsage::Decrypt => "decrypt",
            KeyUsage::Sign => "sign",
            KeyUsage::Verify => "verify",
            KeyUsage::Wrap => "wrap",
            KeyUsage::Unwrap => "unwrap",
        }
    }

    const fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// A set of [`KeyUsage`]s. Displays as `encrypt,decrypt` (`-` when empty); serialises as a list of
/// names.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Usages(u8);

impl Usages {
    /// No usage at all.
    pub const NONE: Usages = Usages(0);

    /// The set of the given usages.
    pub const fn of(usages: &[KeyUsage]) -> Usages {
        let mut bits = 0;
        let mut i = 0;
        while i < usages.len() {
            bits |= usages[i].bit();
            i += 1;
        }
        Usages(bits)
    }

    /// Whether `usage` is in the set.
    pub fn contains(self, usage: KeyUsage) -> bool {
        self.0 & usage.bit() != 0
    }

    /// The set with `usage` added.
    #[must_use]
    pub fn with(self, usage: KeyUsage) -> Usages {
        Usages(self.0 | usage.bit())
    }

    /// The union of two sets.
    #[must_use]
    pub fn union(self, other: Usages) -> Usages {
        Usages(self.0 | other.0)
    }

    /// The usages in the set, in [`KeyUsage::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = KeyUsage> {
        KeyUsage::ALL.into_iter().filter(move |u| self.contains(*u))
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for Usages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("-");
        }
        for (i, usage) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(usage.name())?;
        }
        Ok(())
    }
}

impl fmt::Debug for Usages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Usages({self})")
    }
}

impl Serialize for Usages {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

/// What a token can do that changes a class's usages; the PKCS#11 backend probes it at start
/// (`C_GetMechanismInfo`, then a trial on session objects, since mechanism flags can be wrong).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TokenFeatures {
    /// `C_WrapKey` and `C_UnwrapKey` with DES3-ECB under a double-length key, for every DES-family
    /// key type (des, tdes2, tdes3): DES key-encryption keys need neither encrypt nor decrypt.
    pub des_wrap: bool,
    /// `C_WrapKey` and `C_UnwrapKey` with AES-ECB under an AES key, for AES keys.
    pub aes_wrap: bool,
    /// A DES-family MAC mechanism for X9.19, the UnionPay MAC and ISO 9797-1 CBC-MAC. No PKCS#11
    /// mechanism computes X9.19 or the UnionPay MAC, so the PKCS#11 backend never sets it: DES MAC
    /// keys encrypt (CBC chaining), never decrypt.
    pub des_mac: bool,
    /// `CKM_AES_CMAC` sign and verify: AES MAC keys need no encrypt.
    pub aes_cmac: bool,
    /// Same-format PIN translation inside the token (unwrap as a sensitive secret, wrap under the
    /// destination key): PIN keys then also wrap and unwrap.
    pub pin_translation_in_token: bool,
}

impl TokenFeatures {
    /// A module that can do everything the policy could want: the usages a class gets on an ideal
    /// token, which the software backend reports as its policy.
    pub const IDEAL: TokenFeatures = TokenFeatures {
        des_wrap: true,
        aes_wrap: true,
        des_mac: true,
        aes_cmac: true,
        pin_translation_in_token: false,
    };

    /// Whether key-encryption keys of `family` can wrap and unwrap.
    pub fn wrap(&self, family: Family) -> bool {
        match family {
            Family::Des => self.des_wrap,
            Family::Aes => self.aes_wrap,
        }
    }

    /// Whether MAC keys of `family` have a token MAC mechanism.
    pub fn mac(&self, family: Family) -> bool {
        match family {
            Family::Des => self.des_mac,
            Family::Aes => self.aes_cmac,
        }
    }
}

/// What a key is for. The class is the label's first segment (`tmk/12345678`, `zpk/upstream`,
/// `qr/sign`): every key the module stores has one, and a label without a known class is
/// refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum KeyClass {
    /// `tmk/`: terminal master key. Exports working keys to a terminal at sign-on (and re-imports
    /// them from the journal where the token can unwrap).
    Tmk,
    /// `zmk/`: zone master key. Imports the zone keys an upstream host sends in a key change.
    Zmk,
    /// `tpk/`: terminal PIN key: PIN blocks from a terminal.
    Tpk,
    /// `zpk/`: zone PIN key: PIN blocks to (or from) an upstream host.
    Zpk,
    /// `pek/`: PIN encryption key of a wallet app (ISO 9564 format 4 blocks from a phone).
    Pek,
    /// `pvk/`: PIN verification key (Visa PVV).
    Pvk,
    /// `tak/`: terminal MAC key.
    Tak,
    /// `zak/`: zone MAC key (upstream link).
    Zak,
    /// `qr/`: the gateway's QR order signing key (AES-CMAC).
    Qr,
    /// `pan/`: the key of the keyed hash of card numbers (AES-CMAC, never verified).
    Pan,
    /// `dek/`: a data encryption key (AES-GCM): card numbers a reversal or advice must carry,
    /// webhook secrets; sealed before they reach the journal, opened only to be sent.
    Dek,
}

impl KeyClass {
    /// Every class.
    pub const ALL: [KeyClass; 11] = [
        KeyClass::Tmk,
        KeyClass::Zmk,
        KeyClass::Tpk,
        KeyClass::Zpk,
        KeyClass::Pek,
        KeyClass::Pvk,
        KeyClass::Tak,
        KeyClass::Zak,
        KeyClass::Qr,
        KeyClass::Pan,
        KeyClass::Dek,
    ];

    /// The label prefix (before the first `/`) that names the class.
    pub fn prefix(self) -> &'static str {
        match self {
            KeyClass::Tmk => "tmk",
            KeyClass::Zmk => "zmk",
            KeyClass::Tpk => "tpk",
            KeyClass::Zpk => "zpk",
            KeyClass::Pek => "pek",
            KeyClass::Pvk => "pvk",
            KeyClass::Tak => "tak",
            KeyClass::Zak => "zak",
            KeyClass::Qr => "qr",
            KeyClass::Pan => "pan",
            KeyClass::Dek => "dek",
        }
    }

    /// The class of a key label: its first segment. Refuses a label without a known class, so
    /// that no key is ever stored without a policy.
    pub fn of_label(label: &str) -> Result<KeyClass> {
        let prefix = label.split_once('/').map(|(prefix, _)| prefix);
        KeyClass::ALL
            .into_iter()
            .find(|class| Some(class.prefix()) == prefix)
            .ok_or_else(|| {
                HsmError::invalid(format!(
                    "key label {label:?} names no key class: it must start with one of {}",
                    KeyClass::ALL
                        .iter()
                        .map(|c| format!("{}/", c.prefix()))
                        .collect::<Vec<_>>()
                        .join(" ")
                ))
            })
    }

    /// Whether keys of this class compute MACs (and so may have a single-DES companion for the
    /// X9.19 chaining).
    pub fn is_mac(self) -> bool {
        matches!(
            self,
            KeyClass::Tak | KeyClass::Zak | KeyClass::Qr | KeyClass::Pan
        )
    }

    /// Whether keys of this class carry other keys (key-encryption keys).
    pub fn is_kek(self) -> bool {
        matches!(self, KeyClass::Tmk | KeyClass::Zmk)
    }

    /// The usages a key of this class and `family` gets on a token with `features`: the least
    /// the module's operations need with it there.
    pub fn usages(self, family: Family, features: &TokenFeatures) -> Usages {
        use KeyUsage::{Decrypt, Encrypt, Sign, Unwrap, Verify, Wrap};
        let wrap = features.wrap(family);
        let mac = features.mac(family);
        match self {
            // Working keys leave under it and never come back in clear.
            KeyClass::Tmk if wrap => Usages::of(&[Wrap, Unwrap]),
            KeyClass::Tmk => Usages::of(&[Encrypt]),
            // Only imports.
            KeyClass::Zmk if wrap => Usages::of(&[Unwrap]),
            KeyClass::Zmk => Usages::of(&[Decrypt]),
            // PIN blocks are enciphered and deciphered (format changes and PVV checks need the
            // clear PIN on any token); encrypt also gives the check value.
            KeyClass::Tpk | KeyClass::Zpk | KeyClass::Pek => {
                let pin = Usages::of(&[Encrypt, Decrypt]);
                if features.pin_translation_in_token && family == Family::Des {
                    pin.union(Usages::of(&[Wrap, Unwrap]))
                } else {
                    pin
                }
            }
            KeyClass::Pvk => Usages::of(&[Encrypt]),
            KeyClass::Tak | KeyClass::Zak | KeyClass::Qr if mac => Usages::of(&[Sign, Verify]),
            KeyClass::Pan if mac => Usages::of(&[Sign]),
            // No mechanism for the MAC algorithm: CBC chaining from C_Encrypt, never decrypt.
            KeyClass::Tak | KeyClass::Zak | KeyClass::Qr | KeyClass::Pan => Usages::of(&[Encrypt]),
            // Seals and opens data at rest; never a key (no wrap), never a MAC.
            KeyClass::Dek => Usages::of(&[Encrypt, Decrypt]),
        }
    }
}

impl fmt::Display for KeyClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.prefix())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use KeyUsage::{Decrypt, Encrypt, Sign, Unwrap, Verify, Wrap};

    const NOTHING: TokenFeatures = TokenFeatures {
        des_wrap: false,
        aes_wrap: false,
        des_mac: false,
        aes_cmac: false,
        pin_translation_in_token: false,
    };

    #[test]
    fn labels_name_their_class() {
        assert_eq!(KeyClass::of_label("tak/12345678").unwrap(), KeyClass::Tak);
        assert_eq!(
            KeyClass::of_label("zak/upstream.staged").unwrap(),
            KeyClass::Zak
        );
        assert_eq!(KeyClass::of_label("qr/sign").unwrap(), KeyClass::Qr);
        for bad in ["tak", "takx/1", "x/tak", "", "/tak", "TAK/1"] {
            let error = KeyClass::of_label(bad).unwrap_err().to_string();
            assert!(error.contains("tmk/ zmk/"), "{bad}: {error}");
        }
    }

    #[test]
    fn no_class_ever_gets_more_than_it_needs() {
        for features in [NOTHING, TokenFeatures::IDEAL] {
            for family in [Family::Des, Family::Aes] {
                for class in KeyClass::ALL {
                    let usages = class.usages(family, &features);
                    assert!(!usages.is_empty(), "{class} {family:?}");
                    // Only PIN keys and data keys ever decipher data; only key-encryption keys
                    // wrap, except PIN keys on a token that translates in token (not these
                    // features).
                    let pin = matches!(class, KeyClass::Tpk | KeyClass::Zpk | KeyClass::Pek);
                    if usages.contains(Decrypt) {
                        assert!(
                            pin || class == KeyClass::Zmk || class == KeyClass::Dek,
                            "{class}: {usages}"
                        );
                    }
                    if usages.contains(Wrap) || usages.contains(Unwrap) {
                        assert!(class.is_kek(), "{class}: {usages}");
                    }
                    if class.is_mac() {
                        assert!(!usages.contains(Decrypt) && !usages.contains(Wrap));
                    }
                }
            }
        }
    }

    #[test]
    fn key_encryption_keys_wrap_where_the_token_can() {
        let des = |class: KeyClass, features| class.usages(Family::Des, &features);
        assert_eq!(
            des(KeyClass::Tmk, TokenFeatures::IDEAL),
            Usages::of(&[Wrap, Unwrap])
        );
        assert_eq!(
            des(KeyClass::Zmk, TokenFeatures::IDEAL),
            Usages::of(&[Unwrap])
        );
        assert_eq!(des(KeyClass::Tmk, NOTHING), Usages::of(&[Encrypt]));
        assert_eq!(des(KeyClass::Zmk, NOTHING), Usages::of(&[Decrypt]));
        let aes_only = TokenFeatures {
            aes_wrap: true,
            ..NOTHING
        };
        assert_eq!(des(KeyClass::Tmk, aes_only), Usages::of(&[Encrypt]));
        assert_eq!(
            KeyClass::Tmk.usages(Family::Aes, &aes_only),
            Usages::of(&[Wrap, Unwrap])
        );
    }

    #[test]
    fn mac_keys_sign_where_a_mechanism_exists() {
        assert_eq!(
            KeyClass::Qr.usages(Family::Aes, &TokenFeatures::IDEAL),
            Usages::of(&[Sign, Verify])
        );
        assert_eq!(
            KeyClass::Pan.usages(Family::Aes, &TokenFeatures::IDEAL),
            Usages::of(&[Sign])
        );
        assert_eq!(
            KeyClass::Tak.usages(Family::Des, &NOTHING),
            Usages::of(&[Encrypt])
        );
        assert_eq!(
            KeyClass::Pvk.usages(Family::Des, &TokenFeatures::IDEAL),
            Usages::of(&[Encrypt])
        );
    }

    #[test]
    fn usages_print_and_serialise_as_names() {
        let usages = Usages::of(&[Unwrap, Encrypt]);
        assert_eq!(usages.to_string(), "encrypt,unwrap");
        assert_eq!(Usages::NONE.to_string(), "-");
        assert_eq!(
            serde_json::to_string(&usages).unwrap(),
            r#"["encrypt","unwrap"]"#
        );
    }
}
