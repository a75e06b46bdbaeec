//! Money: integer minor units plus an ISO 4217 numeric currency code. Never floating point.

use serde::{Deserialize, Serialize};

/// An amount in a currency's minor units (fen, cents), with its ISO 4217 numeric code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Money {
    /// Amount in minor units; never negative for a payment.
    pub amount_minor: i64,
    /// ISO 4217 numeric currency code (156 = CNY).
    pub currency: u16,
}

impl Money {
    /// The amount as ISO 8583 field 4 digits (n12, zero-padded).
    pub fn iso8583_amount(&self) -> String {
        format!("{:012}", self.amount_minor.max(0))
    }

    /// The currency as ISO 8583 field 49 digits (n3).
    pub fn iso8583_currency(&self) -> String {
        format!("{:03}", self.currency)
    }
}

impl std::fmt::Display for Money {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let digits = u32::from(posbridge_codecs::emv_qr::currency_exponent(self.currency));
        let code = alpha_code(self.currency);
        if digits == 0 {
            return write!(f, "{} {code}", self.amount_minor);
        }
        let scale = 10_i64.pow(digits);
        let sign = if self.amount_minor < 0 { "-" } else { "" };
        let abs = self.amount_minor.unsigned_abs();
        let scale = scale.unsigned_abs();
        write!(
            f,
            "{sign}{}.{:0width$} {code}",
            abs / scale,
            abs % scale,
            width = digits as usize
        )
    }
}

/// The alphabetic code of a currency (from the codec's ISO 4217 table), or its number.
pub fn alpha_code(currency: u16) -> String {
    posbridge_codecs::emv_qr::currency(currency)
        .map_or_else(|| format!("{currency:03}"), |c| c.alpha.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_minor_units_by_exponent() {
        assert_eq!(
            Money {
                amount_minor: 2372,
                currency: 156
            }
            .to_string(),
            "23.72 CNY"
        );
        assert_eq!(
            Money {
                amount_minor: 5,
                currency: 156
            }
            .to_string(),
            "0.05 CNY"
        );
        assert_eq!(
            Money {
                amount_minor: 500,
                currency: 392
            }
            .to_string(),
            "500 JPY"
        );
        assert_eq!(
            Money {
                amount_minor: 2372,
                currency: 156
            }
            .iso8583_amount(),
            "000000002372"
        );
    }
}
