//! The one calendar of posbridge: UTC civil date and time from Unix seconds and back, through
//! the `time` crate (no hand-written calendar arithmetic). ISO 8583 fields 7 (MMDDhhmmss), 12
//! (hhmmss) and 13 (MMDD), and the EMV QR order expiry (YYMMDDhhmmss) are all written from here.

use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time};

/// A UTC instant as its civil parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Civil {
    /// Year (e.g. 2026).
    pub year: i32,
    /// Month, 1 to 12.
    pub month: u8,
    /// Day of the month, 1 to 31.
    pub day: u8,
    /// Hour, 0 to 23.
    pub hour: u8,
    /// Minute, 0 to 59.
    pub minute: u8,
    /// Second, 0 to 59.
    pub second: u8,
}

impl Civil {
    /// The instant `unix_seconds` after 1970-01-01T00:00:00Z; `None` outside what the calendar
    /// represents.
    pub fn from_unix_seconds(unix_seconds: i64) -> Option<Civil> {
        let at = OffsetDateTime::from_unix_timestamp(unix_seconds).ok()?;
        Some(Civil {
            year: at.year(),
            month: u8::from(at.month()),
            day: at.day(),
            hour: at.hour(),
            minute: at.minute(),
            second: at.second(),
        })
    }

    /// Seconds since 1970-01-01T00:00:00Z; `None` for a date or time that does not exist
    /// (February 30th, hour 24, ...).
    pub fn unix_seconds(&self) -> Option<i64> {
        let month = Month::try_from(self.month).ok()?;
        let date = Date::from_calendar_date(self.year, month, self.day).ok()?;
        let time = Time::from_hms(self.hour, self.minute, self.second).ok()?;
        Some(
            PrimitiveDateTime::new(date, time)
                .assume_utc()
                .unix_timestamp(),
        )
    }

    /// ISO 8583 field 7: MMDDhhmmss.
    pub fn mmddhhmmss(&self) -> String {
        format!("{}{}", self.mmdd(), self.hhmmss())
    }

    /// ISO 8583 field 13: MMDD.
    pub fn mmdd(&self) -> String {
        format!("{:02}{:02}", self.month, self.day)
    }

    /// ISO 8583 field 12: hhmmss.
    pub fn hhmmss(&self) -> String {
        format!("{:02}{:02}{:02}", self.hour, self.minute, self.second)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn known_instants() {
        let c = Civil::from_unix_seconds(1_709_251_199).unwrap(); // 2024-02-29T23:59:59Z
        assert_eq!((c.year, c.month, c.day), (2024, 2, 29));
        assert_eq!(c.mmddhhmmss(), "0229235959");
        assert_eq!(c.unix_seconds(), Some(1_709_251_199));
        let bad = Civil { day: 30, ..c };
        assert_eq!(bad.unix_seconds(), None);
        assert_eq!(
            Civil::from_unix_seconds(0).unwrap().mmddhhmmss(),
            "0101000000"
        );
    }
}
