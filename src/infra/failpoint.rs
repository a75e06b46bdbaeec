//! Named points on the money paths where a fault test stops the gateway deterministically: the
//! test starts a real `posbridge serve` with `POSBRIDGE_FAILPOINTS=<point>=pause[,...]`, waits
//! for the log line "failpoint reached", and kills the process with SIGKILL there, so "killed
//! after the debit and before the reply" is a place in the code, not a guess at a time.
//!
//! Actions: `pause` (log, then wait forever: the test kills the process), `abort` (log, then
//! abort the process at once) and `every-N` (every N-th pass fails, for the error points). An
//! in-process test may also [`arm`] points. Production mode refuses to start with failpoints set
//! (see [`crate::infra::posture`]). Points:
//!
//! | point | kind | where |
//! |---|---|---|
//! | `wallet.pay.committed` | stop | a wallet payment is committed (debit, order PAID), its reply not yet written |
//! | `queue.claimed` | stop | a queue message (reversal, advice, webhook) is claimed and committed, not yet sent |
//! | `journal.commit.refused` | error | a transaction's COMMIT fails: rolled back, the caller gets an error |
//! | `journal.commit.lost` | error | a transaction commits, but the caller gets an error (the acknowledgement was lost) |

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

/// The environment variable that arms failpoints.
pub const ENV: &str = "POSBRIDGE_FAILPOINTS";

/// What an armed failpoint does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Stop there for good (the test kills the process).
    Pause,
    /// Abort the process there.
    Abort,
    /// Every N-th pass is an injected error (error points only).
    FailEvery(u64),
}

struct Armed {
    point: String,
    action: Action,
    passes: AtomicU64,
}

fn armed() -> &'static Mutex<Vec<std::sync::Arc<Armed>>> {
    static ARMED: OnceLock<Mutex<Vec<std::sync::Arc<Armed>>>> = OnceLock::new();
    ARMED.get_or_init(|| {
        let from_env = std::env::var(ENV).unwrap_or_default();
        let points = from_env
            .split(',')
            .filter_map(|item| {
                let (point, action) = item.trim().split_once('=')?;
                let action = match action {
                    "pause" => Action::Pause,
                    "abort" => Action::Abort,
                    every if every.starts_with("every-") => match every["every-".len()..].parse() {
                        Ok(n) if n > 0 => Action::FailEvery(n),
                        _ => return None,
                    },
                    other => {
                        tracing::error!(point, action = other, "unknown failpoint action; ignored");
                        return None;
                    }
                };
                Some(std::sync::Arc::new(Armed {
                    point: point.to_owned(),
                    action,
                    passes: AtomicU64::new(0),
                }))
            })
            .collect();
        Mutex::new(points)
    })
}

fn find(point: &str) -> Option<std::sync::Arc<Armed>> {
    let armed = armed().lock().unwrap_or_else(|p| p.into_inner());
    if armed.is_empty() {
        return None;
    }
    armed.iter().find(|a| a.point == point).cloned()
}

/// Arms `point` in this process (in-process fault tests; the environment variable is the way
/// for a `posbridge serve` process).
pub fn arm(point: &str, action: Action) {
    let mut armed = armed().lock().unwrap_or_else(|p| p.into_inner());
    armed.retain(|a| a.point != point);
    armed.push(std::sync::Arc::new(Armed {
        point: point.to_owned(),
        action,
        passes: AtomicU64::new(0),
    }));
}

/// Disarms every point of this process.
pub fn disarm_all() {
    armed().lock().unwrap_or_else(|p| p.into_inner()).clear();
}

/// True when any failpoint is armed (production mode refuses to start then).
pub fn any_armed() -> bool {
    !armed().lock().unwrap_or_else(|p| p.into_inner()).is_empty()
}

/// Passes through a stop point, or stops there when a test armed it.
pub async fn hit(point: &'static str) {
    let Some(armed) = find(point) else {
        return;
    };
    tracing::warn!(point, action = ?armed.action, "failpoint reached");
    match armed.action {
        Action::Pause => std::future::pending::<()>().await,
        Action::Abort => std::process::abort(),
        Action::FailEvery(_) => {}
    }
}

/// True when this pass through an error point is to fail.
pub fn fails(point: &'static str) -> bool {
    let Some(armed) = find(point) else {
        return false;
    };
    let Action::FailEvery(every) = armed.action else {
        return false;
    };
    let pass = armed.passes.fetch_add(1, Ordering::Relaxed) + 1;
    let fail = pass % every == 0;
    if fail {
        tracing::warn!(point, pass, "failpoint: injected error");
    }
    fail
}
