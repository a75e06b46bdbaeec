//! posbridge: an ISO 8583 gateway that lets existing POS networks take cardless QR payments.
//!
//! The `posbridge` binary (in the `posbridge-sim` crate, `sim/src/main.rs`) only parses
//! arguments; everything the gateway runs lives here so that tests drive the same code as
//! operators do. Simulators, demo and load generator are that crate's, and nothing here imports
//! them (`tests/layering.rs` fails otherwise).
//!
//! The library is layered; each layer imports only the layers listed before it (a test,
//! `tests/layering.rs`, fails the build otherwise):
//!
//! | layer | what |
//! |---|---|
//! | [`domain`] | pure: money, orders, response codes, the order lifecycle |
//! | [`infra`] | configuration, metrics, the security-module handle, QR rendering, stream framing |
//! | [`store`] | the only SQL: journal, ledger, the order writer, queue rows, repeated requests |
//! | [`registry`] | merchants, terminals and their working keys, wallet apps, static codes |
//! | [`upstream`] | persistent ISO 8583 links to acquirer / UnionPay / issuer hosts |
//! | [`service`] | use cases: orders (create, pay, forward, after-sale, expire, wait), enrolment, webhooks |
//! | [`edge`] | the terminal protocol server and the wallet API |
//! | [`app`] | opening and running a gateway, health, logging |
//! | [`cli`] | the command families (arguments only) |

pub mod app;
pub mod cli;
pub mod domain;
pub mod edge;
pub mod infra;
pub mod registry;
pub mod service;
pub mod store;
pub mod upstream;
