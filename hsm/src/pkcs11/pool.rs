//! A bounded pool of logged-in PKCS#11 sessions. A cryptoki `Session` is `Send` but not `Sync`,
//! so each call borrows one session exclusively and gives it back when done; callers beyond the
//! pool's size wait (with a deadline) instead of opening more sessions than the token allows.

use crate::error::{HsmError, Result};
use cryptoki::session::Session;
use std::ops::Deref;
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Duration;

/// How long a caller waits for a free session before giving up: longer than any single token
/// call should take, short enough that a stuck token surfaces as an error, not a hang.
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) struct SessionPool {
    idle: Mutex<Vec<Session>>,
    returned: Condvar,
    size: usize,
}

impl SessionPool {
    /// Takes ownership of already opened (and, through the first, logged-in) sessions.
    pub(crate) fn new(sessions: Vec<Session>) -> Self {
        let size = sessions.len();
        Self {
            idle: Mutex::new(sessions),
            returned: Condvar::new(),
            size,
        }
    }

    pub(crate) fn size(&self) -> usize {
        self.size
    }

    /// Borrows a session until the guard is dropped.
    pub(crate) fn get(&self) -> Result<PooledSession<'_>> {
        let idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let (mut idle, timeout) = self
            .returned
            .wait_timeout_while(idle, CHECKOUT_TIMEOUT, |idle| idle.is_empty())
            .unwrap_or_else(PoisonError::into_inner);
        let session = idle.pop().ok_or_else(|| HsmError::Token {
            operation: "session pool",
            message: if timeout.timed_out() {
                format!("no free session within {CHECKOUT_TIMEOUT:?}")
            } else {
                "pool is empty".into()
            },
        })?;
        Ok(PooledSession {
            pool: self,
            session: Some(session),
        })
    }
}

/// A session borrowed from the pool; returns itself on drop.
pub(crate) struct PooledSession<'p> {
    pool: &'p SessionPool,
    session: Option<Session>,
}

impl Deref for PooledSession<'_> {
    type Target = Session;

    fn deref(&self) -> &Session {
        // Always Some until drop.
        match &self.session {
            Some(session) => session,
            None => unreachable!("a pooled session is present until dropped"),
        }
    }
}

impl Drop for PooledSession<'_> {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            self.pool
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(session);
            self.pool.returned.notify_one();
        }
    }
}
