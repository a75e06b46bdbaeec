//! posbridge-sim: everything that plays the other side of the gateway, kept out of the
//! production library. A simulated POS terminal ([`terminal`]), a simulated wallet app
//! ([`wallet`]), a simulated acquirer / UnionPay / issuer host ([`host`]), the one-command demo
//! ([`demo`]), a Thales payShield simulator for the `payshield` security module ([`payshield`])
//! and the load generator ([`bench`](mod@bench)); and the `posbridge` command line
//! ([`cli`]), which is the gateway's own (`posbridge::cli`) plus `demo`, `sim`, `bench` and
//! `admin seed-demo`.
//!
//! The dependency runs one way: this crate uses the `posbridge` library, never the reverse
//! (the library's `tests/layering.rs` fails otherwise). That is also why the `posbridge` binary
//! is built here: it needs both, and a package cannot depend on a crate that depends on it.

pub mod bench;
pub mod cli;
pub mod demo;
pub mod host;
pub mod payshield;
pub mod terminal;
pub mod wallet;
