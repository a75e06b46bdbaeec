//! posbridge: an ISO 8583 gateway that lets existing POS networks take cardless QR payments.
//!
//! The binary (`src/main.rs`) only parses arguments; everything it runs lives here so that tests
//! drive the same code as operators do.

pub mod cli;
