//! Pure wire formats for posbridge: ISO 8583 dialects described as data, message framing, and
//! EMVCo merchant-presented QR payloads. No sockets and no async runtime live here, so every
//! format can be tested, fuzzed and benchmarked on its own.

pub mod emv_qr;
pub mod framing;
