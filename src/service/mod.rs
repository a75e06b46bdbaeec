//! Use cases: what the edges (terminals, wallet apps, operators) ask of the gateway. Each one
//! gathers the facts, names the lifecycle event and lets the store apply the transition.

pub mod enrolment;
pub mod orders;
pub mod terminal_keys;
pub mod webhooks;

use crate::infra::config::Config;
use orders::OrderService;
use std::sync::Arc;

/// What the edges serve: the configuration the gateway runs with and its use cases (the order
/// service holds the journal, the ledger and the security module). Built by [`crate::app`].
#[derive(Clone, Debug)]
pub struct Gateway {
    /// The configuration it runs with.
    pub config: Arc<Config>,
    /// The order service (journal, ledger, security module).
    pub orders: OrderService,
    /// What the start-up security check found (mode, unsafe settings).
    pub posture: Arc<crate::infra::posture::Posture>,
}

impl Gateway {
    /// The merchants' webhook secrets, sealed under `[keys] data`.
    pub fn webhook_secrets(&self) -> webhooks::Secrets {
        webhooks::Secrets::new(self.orders.security().clone(), &self.config.keys.data)
    }
}
