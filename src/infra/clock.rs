//! The journal's time unit and the gateway's randomness: the one place that reads the wall
//! clock for journal rows and draws random identifiers, references and codes.
//!
//! Time is behind this one function, [`now_ms`]. A gateway reads the system clock. A test that
//! runs on tokio's paused clock calls [`follow_runtime_clock`] first: journal times then advance
//! exactly as the runtime's timers do (`tokio::time::advance`), so leases, deadlines, expiry and
//! back-off are tested by moving time, not by waiting for it.

use std::sync::{Mutex, OnceLock};

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

/// Randomness is behind [`random_bytes`]: the operating system's generator, unless a test
/// seeded it ([`seed_randomness`]) to replay a run. Key material never comes from here (the
/// security module makes keys).
static SEEDED: Mutex<Option<rand::rngs::StdRng>> = Mutex::new(None);

/// From now on (for the life of the process), identifiers, references and codes come from a
/// generator seeded with `seed`: the same seed, the same sequence. Tests only: a gateway never
/// calls it, and its codes would be predictable if it did.
pub fn seed_randomness(seed: u64) {
    use rand::SeedableRng;
    *SEEDED.lock().unwrap_or_else(|p| p.into_inner()) =
        Some(rand::rngs::StdRng::seed_from_u64(seed));
}

/// `N` random bytes.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    use rand::RngCore;
    let mut bytes = [0u8; N];
    match SEEDED.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
        Some(seeded) => seeded.fill_bytes(&mut bytes),
        None => rand::rng().fill_bytes(&mut bytes),
    }
    bytes
}

/// A fresh random identifier (128 bits, hex), used as primary key for journal rows.
pub fn new_id() -> String {
    hex::encode(random_bytes::<16>())
}

/// A fresh authorisation code (F38): six random digits.
pub fn new_auth_code() -> String {
    random_bytes::<6>()
        .iter()
        // A byte modulo 10 favours 0-5 slightly (256 is not a multiple of 10): irrelevant for a
        // code that only names an approval, never a secret.
        .map(|b| char::from(b'0' + b % 10))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seeded_run_draws_the_same_identifiers_again() {
        seed_randomness(7);
        let first = (new_id(), new_auth_code(), random_bytes::<12>());
        seed_randomness(7);
        let again = (new_id(), new_auth_code(), random_bytes::<12>());
        assert_eq!(first, again);
        seed_randomness(8);
        assert_ne!(new_id(), first.0);
        assert_eq!(first.1.len(), 6);
        assert!(first.1.bytes().all(|b| b.is_ascii_digit()));
    }
}
