//! A Thales payShield simulator: the host-command subset posbridge's `payshield` backend uses,
//! with the real variant LMK scheme and the public test LMK set ([`lmk`]), so cryptograms, check
//! values, PIN blocks, MACs and PVVs are what a device loaded with that test LMK computes.
//!
//! Commands: NC, BU, A0 (modes 0 and 1, ZMK or TMK), A6, CA, CC, DC, EC, M6, M8 (single-block,
//! ISO 9797-1 algorithms 1 and 3), BA, JG, DG. Where the device's behaviour is not public (the
//! LMK check value's derivation, the encryption of PINs under LMK pair 02-03) the simulator uses
//! a documented stand-in that the client treats as opaque. [`keys`] turns a clear key file into
//! a key store of LMK cryptograms, the test stand-in for a key ceremony.

pub mod commands;
pub mod keys;
pub mod lmk;
mod server;

pub use commands::Settings;
pub use server::{Simulator, spawn_background};
