//! The journal's time unit and identifiers: the one place that reads the wall clock for
//! journal rows and makes their random keys.
//!
//! Time is behind this one function, [`now_ms`]. A gateway reads the system clock. A test that
//! runs on tokio's paused clock calls [`follow_runtime_clock`] first: journal times then advance
//! exactly as the runtime's timers do (`tokio::time::advance`), so leases, deadlines, expiry and
//! back-off are tested by moving time, not by waiting for it.

use std::sync::OnceLock;

/// When set: the wall-clock milliseconds and the runtime instant they correspond to.
static RUNTIME_CLOCK: OnceLock<(i64, tokio::time::Instant)> = OnceLock::new();

/// Milliseconds since the Unix epoch, the journal's only time unit.
pub fn now_ms() -> i64 {
    match RUNTIME_CLOCK.get() {
        Some((base_ms, base)) => {
            let elapsed = tokio::time::Instant::now().saturating_duration_since(*base);
            base_ms.saturating_add(i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX / 4))
        }
        None => system_now_ms(),
    }
}

/// From now on (for the life of the process), [`now_ms`] follows the tokio runtime's clock,
/// which a test may pause and advance. Call it inside the runtime, before the first journal row.
pub fn follow_runtime_clock() {
    RUNTIME_CLOCK.get_or_init(|| (system_now_ms(), tokio::time::Instant::now()));
}

fn system_now_ms() -> i64 {
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
