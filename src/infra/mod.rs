//! Infrastructure every layer above may use: the configuration schema, metrics, the handle on
//! the security module, QR rendering and the ISO 8583 stream framing. Nothing here knows about
//! orders or the journal's tables.

pub mod clock;
pub mod config;
pub mod failpoint;
pub mod framing;
pub mod metrics;
pub mod posture;
pub mod qr;
pub mod security;
