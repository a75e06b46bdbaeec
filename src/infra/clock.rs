//! The journal's time unit and identifiers: the one place that reads the wall clock for
//! journal rows and makes their random keys.

/// Milliseconds since the Unix epoch, the journal's only time unit.
pub fn now_ms() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}

/// A fresh random identifier (128 bits, hex), used as primary key for journal rows.
pub fn new_id() -> String {
    let bytes: [u8; 16] = rand::random();
    hex::encode(bytes)
}
