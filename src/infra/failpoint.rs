//! Named points on the money paths where a fault test stops the gateway deterministically: the
//! test starts a real `posbridge serve` with `POSBRIDGE_FAILPOINTS=<point>=pause[,...]`, waits
//! for the log line "failpoint reached", and kills the process with SIGKILL there, so "killed
//! after the debit and before the reply" is a place in the code, not a guess at a time.
//!
//! Actions: `pause` (log, then wait forever: the test kills the process) and `abort` (log, then
//! abort the process at once). Production mode refuses to start with failpoints set (see
//! [`crate::infra::posture`]). Points:
//!
//! | point | where |
//! |---|---|
//! | `wallet.pay.committed` | a wallet payment is committed (debit, order PAID), its reply not yet written |
//! | `queue.claimed` | a queue message (reversal, advice, webhook) is claimed and committed, not yet sent |

use std::sync::OnceLock;

/// The environment variable that arms failpoints.
pub const ENV: &str = "POSBRIDGE_FAILPOINTS";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Pause,
    Abort,
}

fn armed() -> &'static [(String, Action)] {
    static ARMED: OnceLock<Vec<(String, Action)>> = OnceLock::new();
    ARMED.get_or_init(|| {
        let Ok(spec) = std::env::var(ENV) else {
            return Vec::new();
        };
        spec.split(',')
            .filter_map(|item| {
                let (point, action) = item.trim().split_once('=')?;
                let action = match action {
                    "pause" => Action::Pause,
                    "abort" => Action::Abort,
                    other => {
                        tracing::error!(point, action = other, "unknown failpoint action; ignored");
                        return None;
                    }
                };
                Some((point.to_owned(), action))
            })
            .collect()
    })
}

/// True when any failpoint is armed (production mode refuses to start then).
pub fn any_armed() -> bool {
    !armed().is_empty()
}

/// Passes through `point`, or stops there when a test armed it.
pub async fn hit(point: &'static str) {
    let Some((_, action)) = armed().iter().find(|(name, _)| name == point) else {
        return;
    };
    tracing::warn!(point, ?action, "failpoint reached");
    match action {
        Action::Pause => std::future::pending::<()>().await,
        Action::Abort => std::process::abort(),
    }
}
