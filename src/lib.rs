//! posbridge: an ISO 8583 gateway that lets existing POS networks take cardless QR payments.
//!
//! The binary (`src/main.rs`) only parses arguments; everything it runs lives here so that tests
//! drive the same code as operators do.

pub mod admin;
pub mod bench;
pub mod cli;
pub mod config;
pub mod demo;
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
