//! EMV merchant-presented QR codes on screen and paper: rendering a payload (PNG, SVG, terminal
//! text) and describing a decoded one. The payload itself (parse, build, sign, verify) lives in
//! `posbridge_codecs::emv_qr`, which this module only displays.

pub mod describe;
mod png;
pub mod render;

pub use render::{Background, RenderError};
