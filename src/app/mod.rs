//! A gateway as a running thing: opening it from a configuration, serving every listener and
//! background worker until shutdown, its health endpoints and its logs.

pub mod health;
pub mod logging;
pub mod server;
