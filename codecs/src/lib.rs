//! Pure wire formats for posbridge: ISO 8583 dialects described as data, message framing, and
//! EMVCo merchant-presented QR payloads. No sockets and no async runtime live here, so every
//! format can be tested, fuzzed and benchmarked on its own.
//!
//! # ISO 8583 in five calls
//!
//! ```
//! use posbridge_codecs::{Spec, decode};
//!
//! // A dialect is a TOML file: built-in by name (iso87ascii, iso87binary, cups-pos, cups-host)
//! // or any path (`Spec::load("my-network.toml")`).
//! let spec = Spec::builtin("iso87ascii")?;
//!
//! // Build a message from code; values are text/digits/bytes, checked as they are set.
//! let mut msg = spec.builder("0200")?;
//! msg.set_str(3, "000000")?.set_str(4, "000000001000")?.set_str(11, "123456")?;
//! msg.set_str(2, "4761739001010010")?;
//!
//! // Encode into a reusable buffer (no allocation once it has capacity).
//! let mut buf = Vec::with_capacity(512);
//! msg.encode_into(&mut buf)?;
//!
//! // Decode borrows the input: no copies, no heap allocation.
//! let decoded = decode(&spec, &buf)?;
//! assert_eq!(decoded.mti(), "0200");
//! assert_eq!(decoded.str(11), Some("123456"));
//! assert_eq!(decoded.field(4).and_then(|f| f.as_u64()), Some(1000));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! - [`Spec`]: a compiled dialect ([`Spec::builtin`], [`Spec::load`], [`Spec::from_path`],
//!   [`Spec::from_toml_str`]); `spec.header`, `spec.framing` ([`FramingSpec`]: frame length
//!   prefix and limit), `spec.mac` ([`MacSpec`]), `spec.field(n)` ([`FieldDef`], including
//!   `sensitive` for masking).
//! - [`decode`] / [`Spec::decode`] -> [`Message`]: `mti()`, `header()` (raw bytes), `has(n)`,
//!   `field(n)` ([`Field`]: `wire()`, `value()`, `text()`, `as_str()`, `as_u64()`), `raw(n)`,
//!   `get("60.2")` / `get("55.9F26")` for sub-fields, `mac_range()` / `mac_input()` (the exact
//!   bytes the MAC covers), `to_builder()`.
//! - [`MessageBuilder`] (`spec.builder(mti)`; `clear(mti)` to reuse it): each field is checked
//!   when it is set and written when the message is encoded; a new builder with up to 32
//!   fields set from borrowed values does not allocate. `set(n, bytes)`, `set_str(n, &str)`,
//!   `set_text(n, text-or-hex)`, `set_sub("60.2", ..)`, `set_header(..)`, `encode_into(&mut
//!   Vec<u8> | &mut BytesMut)` -> [`Encoded`] (offsets, [`MacSpan`]), `encode_with_mac(buf,
//!   |covered| mac)` which writes a placeholder, computes over the covered bytes and patches.
//! - Errors: [`SpecError`] names file, field and key; [`DecodeError`] names the part
//!   ([`Location`]), byte offset and reason; [`EncodeError`]; [`PathError`].

pub mod bitmap;
pub mod calendar;
pub mod describe;
pub mod ebcdic;
pub mod emv_qr;
pub mod error;
pub mod field;
pub mod framing;
pub mod mask;
pub mod message;
pub mod spec;
pub mod subfield;
mod tlv;

pub use bitmap::Bitmap;
pub use ebcdic::CodePage;
pub use error::{DecodeError, DecodeErrorKind, EncodeError, Location, PathError, SpecError};
pub use field::{EncodeBuffer, from_hex, to_hex};
pub use message::{Encoded, Field, MacSpan, Message, MessageBuilder, decode, patch_mac};
pub use spec::{
    Align, BitmapEncoding, Charset, DataEncoding, FieldDef, FrameLength, FramingSpec, HeaderKind,
    HeaderSpec, LengthPrefix, LengthUnit, MacSpec, MtiEncoding, NumberEncoding, Sensitivity, Spec,
    ValueKind,
};
pub use subfield::SubfieldEntry;
