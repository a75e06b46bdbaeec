//! The terminal side: ISO 8583 over TCP to POS terminals (S101-S103, S108).

pub mod protocol;
pub mod server;
