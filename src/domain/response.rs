//! The ISO 8583 response codes posbridge gives, in one place: every refusal anywhere in the
//! gateway maps to the wire (field 39) and to the wallet API's error code here and nowhere else.

/// Field 39 values posbridge uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub enum ResponseCode {
    /// 00: approved.
    Approved,
    /// 03: invalid merchant (unknown or disabled terminal / merchant).
    InvalidMerchant,
    /// 12: invalid transaction (not allowed for this order or message).
    InvalidTransaction,
    /// 13: invalid amount.
    InvalidAmount,
    /// 14: invalid card number (no such account).
    InvalidCard,
    /// 25: unable to locate the original (no such order).
    NotFound,
    /// 30: format error.
    FormatError,
    /// 51: insufficient funds.
    InsufficientFunds,
    /// 54: expired (the order, not the card).
    Expired,
    /// 55: incorrect PIN.
    WrongPin,
    /// 57: transaction not permitted (cancelled or reversed order).
    NotPermitted,
    /// 75: PIN tries exceeded.
    PinTriesExceeded,
    /// 94: duplicate (voucher already used, order already paid).
    Duplicate,
    /// 95: reconciliation error (settlement totals differ).
    ReconcileError,
    /// 96: system malfunction.
    SystemError,
    /// 98: the issuer / upstream host did not answer in time.
    IssuerTimeout,
    /// 91: the issuer / upstream host is unreachable (nothing was sent).
    IssuerUnavailable,
    /// 09: the payment is being authorised upstream; ask again.
    InProgress,
    /// A0: MAC verification failed (UnionPay POS).
    MacError,
    /// 65: too many requests in too short a time (a card's or an app's payments, a terminal's
    /// sign-ons).
    TooFrequent,
    /// A code received from an upstream host, passed through as is.
    Other([u8; 2]),
}

impl ResponseCode {
    /// The two characters of field 39.
    pub fn as_str(&self) -> &str {
        match self {
            ResponseCode::Approved => "00",
            ResponseCode::InvalidMerchant => "03",
            ResponseCode::InvalidTransaction => "12",
            ResponseCode::InvalidAmount => "13",
            ResponseCode::InvalidCard => "14",
            ResponseCode::NotFound => "25",
            ResponseCode::FormatError => "30",
            ResponseCode::InsufficientFunds => "51",
            ResponseCode::Expired => "54",
            ResponseCode::WrongPin => "55",
            ResponseCode::NotPermitted => "57",
            ResponseCode::PinTriesExceeded => "75",
            ResponseCode::Duplicate => "94",
            ResponseCode::ReconcileError => "95",
            ResponseCode::SystemError => "96",
            ResponseCode::IssuerTimeout => "98",
            ResponseCode::IssuerUnavailable => "91",
            ResponseCode::InProgress => "09",
            ResponseCode::MacError => "A0",
            ResponseCode::TooFrequent => "65",
            ResponseCode::Other(code) => std::str::from_utf8(code).unwrap_or("96"),
        }
    }

    /// Reads a field 39 value.
    pub fn parse(code: &str) -> ResponseCode {
        let known = [
            ResponseCode::Approved,
            ResponseCode::InvalidMerchant,
            ResponseCode::InvalidTransaction,
            ResponseCode::InvalidAmount,
            ResponseCode::InvalidCard,
            ResponseCode::NotFound,
            ResponseCode::FormatError,
            ResponseCode::InsufficientFunds,
            ResponseCode::Expired,
            ResponseCode::WrongPin,
            ResponseCode::NotPermitted,
            ResponseCode::PinTriesExceeded,
            ResponseCode::Duplicate,
            ResponseCode::ReconcileError,
            ResponseCode::SystemError,
            ResponseCode::IssuerTimeout,
            ResponseCode::IssuerUnavailable,
            ResponseCode::InProgress,
            ResponseCode::MacError,
            ResponseCode::TooFrequent,
        ];
        if let Some(found) = known.into_iter().find(|known| known.as_str() == code) {
            return found;
        }
        match code.as_bytes() {
            [a, b] if a.is_ascii_alphanumeric() && b.is_ascii_alphanumeric() => {
                ResponseCode::Other([*a, *b])
            }
            _ => ResponseCode::SystemError,
        }
    }

    /// The wallet API's stable error code and HTTP status for a refusal.
    pub fn api_error(&self) -> (&'static str, u16) {
        match self {
            ResponseCode::Approved => ("approved", 200),
            ResponseCode::InvalidMerchant => ("invalid_merchant", 422),
            ResponseCode::InvalidTransaction => ("invalid_transaction", 422),
            ResponseCode::InvalidAmount => ("invalid_amount", 422),
            ResponseCode::InvalidCard => ("unknown_account", 422),
            ResponseCode::NotFound => ("order_not_found", 404),
            ResponseCode::FormatError => ("bad_request", 400),
            ResponseCode::InsufficientFunds => ("insufficient_funds", 402),
            ResponseCode::Expired => ("order_expired", 410),
            ResponseCode::WrongPin => ("wrong_pin", 403),
            ResponseCode::NotPermitted => ("order_not_payable", 409),
            ResponseCode::PinTriesExceeded => ("pin_tries_exceeded", 403),
            ResponseCode::Duplicate => ("already_paid", 409),
            ResponseCode::ReconcileError => ("reconcile_error", 409),
            ResponseCode::SystemError => ("system_error", 500),
            ResponseCode::IssuerTimeout => ("issuer_timeout", 504),
            ResponseCode::IssuerUnavailable => ("issuer_unavailable", 503),
            ResponseCode::InProgress => ("payment_in_progress", 409),
            ResponseCode::MacError => ("mac_error", 401),
            ResponseCode::TooFrequent => ("too_many_payments", 429),
            ResponseCode::Other(_) => ("declined", 402),
        }
    }

    /// True for 00.
    pub fn is_approved(&self) -> bool {
        *self == ResponseCode::Approved
    }
}

impl std::fmt::Display for ResponseCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_codes_pass_through() {
        for code in ["00", "51", "55", "75", "94", "A0", "96"] {
            assert_eq!(ResponseCode::parse(code).as_str(), code);
        }
        assert_eq!(ResponseCode::parse("Z9"), ResponseCode::Other(*b"Z9"));
        assert_eq!(ResponseCode::parse("\u{0}"), ResponseCode::SystemError);
    }
}
