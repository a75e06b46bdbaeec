//! posbridge: an ISO 8583 gateway that lets existing POS networks take cardless QR payments.
//!
//! The `posbridge` binary (in the `posbridge-sim` crate, `sim/src/main.rs`) only parses
//! arguments; everything the gateway runs lives here so that tests drive the same code as
//! operators do. Simulators, demo and load generator are that crate's, and nothing here imports
//! them (`tests/layering.rs` fails otherwise).

pub mod admin;
pub mod cli;
pub mod config;
pub mod domain;
pub mod health;
pub mod journal;
pub mod ledger;
pub mod logging;
pub mod metrics;
pub use domain::money;
pub mod orders;
pub mod outbox;
pub mod qr;
pub mod security;
pub mod server;
pub mod store;
pub mod terminal;
pub mod upstream;
pub mod wallet_api;
