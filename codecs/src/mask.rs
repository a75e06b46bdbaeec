//! What people may see of a field: the PAN as first 6 and last 4 digits, track data with its PAN
//! part masked and the rest starred, PIN blocks, MACs and key material redacted. The inspector's
//! human output and the `Debug` of messages and builders go through here, so a test PAN or key
//! never reaches a log by way of this crate.

use crate::field::value_text;
use crate::spec::{FieldDef, Sensitivity, Spec, ValueKind};
use std::sync::LazyLock;

/// The one PAN masking rule of posbridge (PCI DSS 3.4: first 6 and last 4 digits at most):
/// 13 digits or more show the first 6 and the last 4; 8 to 12 digits show the last 4 only; a
/// shorter value, or anything that is not all digits, is starred entirely. The codec's `Debug`,
/// the inspector, the security module's `Pan` and the upstream messages all mask through here.
pub fn mask_pan(digits: &str) -> String {
    let n = digits.chars().count();
    if n < 8 || !digits.chars().all(|c| c.is_ascii_digit()) {
        return "*".repeat(n);
    }
    let head = if n >= 13 { 6 } else { 0 };
    digits
        .chars()
        .enumerate()
        .map(|(i, c)| if i < head || i >= n - 4 { c } else { '*' })
        .collect()
}

/// A value as text for people, with `sensitivity` applied (`None` shows it in clear). Text with
/// control or non-ASCII bytes is shown as `hex:...` so it cannot disturb a terminal.
pub fn shown_text(def: &FieldDef, sensitivity: Option<Sensitivity>, value: &[u8]) -> String {
    let len = value.len();
    let text = value_text(def, value);
    match sensitivity {
        None if def.value_kind() == ValueKind::Bytes
            || value.iter().all(|b| (0x20..0x7F).contains(b)) =>
        {
            text
        }
        None => format!("hex:{}", crate::field::to_hex(value)),
        Some(Sensitivity::Pan) => mask_pan(&text),
        Some(Sensitivity::Track) => {
            let chars: Vec<char> = text.chars().collect();
            match chars.iter().position(|c| matches!(c, '=' | 'D' | '^')) {
                Some(i) => {
                    let pan: String = chars.iter().take(i).collect();
                    format!("{}{}", mask_pan(&pan), "*".repeat(chars.len() - i))
                }
                None => "*".repeat(chars.len()),
            }
        }
        Some(Sensitivity::Pin) => format!("[redacted PIN block, {len} bytes]"),
        Some(Sensitivity::Mac) => format!("[redacted MAC, {len} bytes]"),
        Some(Sensitivity::Key) => format!("[redacted key material, {len} bytes]"),
        Some(Sensitivity::Card) => format!("[redacted card data, {len} bytes]"),
    }
}

/// A value as text for people in a message of this MTI, masked as the dialect marks it.
pub fn masked_text(def: &FieldDef, mti: &[u8; 4], value: &[u8]) -> String {
    shown_text(def, def.sensitivity_for(mti), value)
}

/// The built-in dialects, parsed once for [`sensitivity_in_any_dialect`].
static BUILTIN_SPECS: LazyLock<Vec<Spec>> = LazyLock::new(|| {
    Spec::builtin_names()
        .filter_map(|name| Spec::builtin(name).ok())
        .collect()
});

/// How field `number` of a message of `mti` is sensitive in any built-in dialect: the rule for
/// a message shown without its dialect (posbridge's own upstream messages, which are encoded
/// for a link's dialect only when sent). A mark other than `Pan` wins over `Pan`, so a field
/// is never shown more than the strictest dialect allows.
pub fn sensitivity_in_any_dialect(number: u16, mti: &[u8; 4]) -> Option<Sensitivity> {
    BUILTIN_SPECS
        .iter()
        .filter_map(|spec| spec.field(number)?.sensitivity_for(mti))
        .max_by_key(|kind| u8::from(*kind != Sensitivity::Pan))
}
