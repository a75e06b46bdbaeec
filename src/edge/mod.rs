//! The gateway's edges towards its peers: POS terminals (ISO 8583 over TCP) and wallet apps
//! (HTTPS JSON API). The upstream hosts' links are a layer of their own ([`crate::upstream`]),
//! below the services that forward sales over them.

pub mod terminal;
pub mod wallet_api;
