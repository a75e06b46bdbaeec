//! Visa PIN Verification Value (PVV): how the gateway checks a stored-value account's PIN without
//! storing the PIN or any PIN block. Only the 4-digit PVV (a one-way function of PAN, PIN and the
//! PVK) is stored.

use crate::error::{HsmError, Result};
use crate::keys::Family;
use crate::ops::KeyOps;
use crate::secret::{Pan, Pin};
use zeroize::Zeroizing;

/// Computes the PVV: the transformed security parameter (11 PAN digits before the check digit,
/// PVKI, the PIN's 4 leftmost digits) enciphered under the PVK, decimalised.
pub(crate) fn pvv(pvk: &dyn KeyOps, pan: &Pan, pin: &Pin, pvki: u8) -> Result<String> {
    pvk.require_family(Family::Des, "the Visa PVV")?;
    if pvki > 9 {
        return Err(HsmError::invalid("PVKI must be 0 to 9"));
    }
    let pan_digits = pan.expose_secret().as_bytes();
    if pan_digits.len() < 12 {
        return Err(HsmError::invalid(
            "the Visa PVV needs a PAN of at least 12 digits",
        ));
    }
    let mut tsp = Zeroizing::new(Vec::with_capacity(16));
    tsp.extend_from_slice(&pan_digits[pan_digits.len() - 12..pan_digits.len() - 1]);
    tsp.push(b'0' + pvki);
    tsp.extend_from_slice(&pin.expose_secret().as_bytes()[..4]);
    let mut packed = Zeroizing::new([0u8; 8]);
    for (i, pair) in tsp.chunks(2).enumerate() {
        packed[i] = ((pair[0] - b'0') << 4) | (pair[1] - b'0');
    }
    let enciphered = pvk.ecb_encrypt(&packed[..])?;
    let hex = Zeroizing::new(hex::encode(&enciphered[..]));
    let mut out: String = hex.chars().filter(char::is_ascii_digit).take(4).collect();
    if out.len() < 4 {
        let letters = hex
            .bytes()
            .filter(|b| (b'a'..=b'f').contains(b))
            .map(|b| char::from(b - b'a' + b'0'));
        let missing = 4 - out.len();
        out.extend(letters.take(missing));
    }
    Ok(out)
}
