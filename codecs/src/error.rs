//! Errors of the ISO 8583 codec. Each says who is at fault: a spec file that contradicts itself
//! (configuration), bytes from a peer that break the dialect (peer), or a message built in code
//! that cannot be put on the wire (caller). Decode errors always carry the byte offset and the
//! part of the message (header, MTI, bitmap or field number) where decoding stopped.

use std::fmt;

/// A dialect spec was rejected at load: it names the file, the field (if any) and the key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// The spec file could not be read.
    #[error("spec {file}: cannot read: {source}")]
    Io {
        /// Path of the file.
        file: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has keys of the wrong type or unknown keys.
    #[error("spec {file}: {message}")]
    Syntax {
        /// Path of the file (or `builtin:NAME`).
        file: String,
        /// The TOML parser's message (it names the key and line).
        message: String,
    },
    /// The file parses but contradicts itself.
    #[error("spec {file}: {}key `{key}`: {reason}", field.map(|f| format!("field {f}: ")).unwrap_or_default())]
    Invalid {
        /// Path of the file (or `builtin:NAME`).
        file: String,
        /// The field the problem is in, if it is in a field.
        field: Option<u16>,
        /// The offending key.
        key: String,
        /// Why it is rejected.
        reason: String,
    },
    /// No built-in spec has this name and no file exists at this path.
    #[error("unknown spec `{0}`: not a built-in dialect ({1}) and not a readable file")]
    Unknown(String, String),
}

/// Where in a message a decode or encode problem was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Location {
    /// The header between the length prefix and the MTI (TPDU, application header...).
    Header,
    /// The message type indicator.
    Mti,
    /// The primary (1), secondary (2) or tertiary (3) bitmap.
    Bitmap(u8),
    /// A data element, by number.
    Field(u16),
    /// After the last field (trailing bytes).
    End,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Header => f.write_str("header"),
            Location::Mti => f.write_str("MTI"),
            Location::Bitmap(1) => f.write_str("primary bitmap"),
            Location::Bitmap(2) => f.write_str("secondary bitmap"),
            Location::Bitmap(n) => write!(f, "bitmap {n}"),
            Location::Field(n) => write!(f, "field {n}"),
            Location::End => f.write_str("end of message"),
        }
    }
}

/// Why bytes from a peer could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeErrorKind {
    /// The input ended before this part was complete.
    #[error("truncated: needs {needed} bytes, {available} left")]
    Truncated {
        /// Bytes this part needs.
        needed: usize,
        /// Bytes left in the input.
        available: usize,
    },
    /// A length prefix holds something that is not a number in its encoding.
    #[error("length prefix is not a valid {encoding} number")]
    BadLengthPrefix {
        /// The prefix encoding (ascii, bcd, ebcdic).
        encoding: &'static str,
    },
    /// A length prefix announces more than the field's maximum.
    #[error("length {length} exceeds the maximum {max}")]
    TooLong {
        /// The announced length (in the field's length unit).
        length: usize,
        /// The spec's maximum.
        max: usize,
    },
    /// A length that cannot describe whole bytes (e.g. an odd count of hex digits).
    #[error("length {length} is not possible for this field: {why}")]
    ImpossibleLength {
        /// The announced length.
        length: usize,
        /// Why it is impossible.
        why: &'static str,
    },
    /// A byte or nibble outside the field's character set.
    #[error("invalid {what} 0x{value:02X} at position {position}")]
    BadData {
        /// What was expected (digit, hex digit, pad nibble, EBCDIC character...).
        what: &'static str,
        /// The offending byte or nibble.
        value: u8,
        /// Position inside the part (characters or nibbles from its start).
        position: usize,
    },
    /// The bitmap announces a field the dialect does not define.
    #[error("field is not defined in dialect {dialect}")]
    UnknownField {
        /// The dialect's name.
        dialect: String,
    },
    /// The bitmap announces a further bitmap the dialect does not allow.
    #[error("bitmap announces bitmap {0}, which this dialect does not use")]
    UnexpectedBitmap(u8),
    /// Bytes left over after the last field.
    #[error("{0} trailing bytes after the last field")]
    TrailingBytes(usize),
    /// The input is larger than the dialect's frame limit.
    #[error("message of {size} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Input size.
        size: usize,
        /// The spec's `max_frame_bytes`.
        limit: usize,
    },
}

/// Decoding stopped: where (part and byte offset from the start of the input) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{location} at byte {offset}: {kind}")]
#[non_exhaustive]
pub struct DecodeError {
    /// The part of the message being decoded.
    pub location: Location,
    /// Byte offset, from the start of the input, where the problem starts.
    pub offset: usize,
    /// What is wrong.
    pub kind: DecodeErrorKind,
}

impl DecodeError {
    pub(crate) fn new(location: Location, offset: usize, kind: DecodeErrorKind) -> Self {
        DecodeError {
            location,
            offset,
            kind,
        }
    }

    /// The field number the error is in, if it is in a data element.
    pub fn field(&self) -> Option<u16> {
        match self.location {
            Location::Field(n) => Some(n),
            _ => None,
        }
    }
}

/// A message built in code cannot be encoded (or a value cannot be set) for this dialect.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The dialect does not define the field.
    #[error("field {0} is not defined in this dialect")]
    UnknownField(u16),
    /// Fixed-length field given a value of another length.
    #[error("field {field}: fixed length {expected}, value has {actual}")]
    WrongLength {
        /// Field number.
        field: u16,
        /// The spec's length (in the field's length unit).
        expected: usize,
        /// The value's length (same unit).
        actual: usize,
    },
    /// Variable field given a value over its maximum.
    #[error("field {field}: length {actual} exceeds the maximum {max}")]
    TooLong {
        /// Field number.
        field: u16,
        /// The spec's maximum.
        max: usize,
        /// The value's length.
        actual: usize,
    },
    /// A character the field's encoding or character set cannot carry.
    #[error("field {field}: {what} at position {position} is not allowed")]
    BadCharacter {
        /// Field number (0 for the MTI, header or a sub-field's parent).
        field: u16,
        /// What is wrong.
        what: String,
        /// Position in the value.
        position: usize,
    },
    /// The MTI is not four digits.
    #[error("MTI must be four digits")]
    BadMti,
    /// The header does not have the dialect's header length.
    #[error("header must be {expected} bytes, got {actual}")]
    BadHeader {
        /// The spec's header length.
        expected: usize,
        /// The given header's length.
        actual: usize,
    },
    /// The message is larger than the dialect's frame limit.
    #[error("encoded message of {size} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Encoded size.
        size: usize,
        /// The spec's `max_frame_bytes`.
        limit: usize,
    },
    /// The dialect has no MAC field, or the buffer/info does not match.
    #[error("MAC: {0}")]
    Mac(String),
    /// A sub-field path could not be applied.
    #[error(transparent)]
    Path(#[from] PathError),
}

/// A sub-field path (`60.2`, `55.9F26`, `62.01`) could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// The path does not have the form `FIELD[.SUB[.SUB]]`.
    #[error("bad path `{0}`: expected FIELD or FIELD.SUB (e.g. 60.2, 55.9F26)")]
    Syntax(String),
    /// The field has no sub-field layout in this dialect.
    #[error("field {0} has no sub-fields in this dialect")]
    NoSubfields(u16),
    /// The field is not defined in this dialect.
    #[error("field {0} is not defined in this dialect")]
    UnknownField(u16),
    /// A positional sub-field index outside the layout.
    #[error("field {field} has no sub-field {index}")]
    NoSuchPart {
        /// Field number.
        field: u16,
        /// 1-based part index.
        index: usize,
    },
    /// The field's value does not follow its sub-field layout.
    #[error("field {field}: sub-fields malformed at position {position}: {why}")]
    Malformed {
        /// Field number.
        field: u16,
        /// Position in the field's value.
        position: usize,
        /// What is wrong.
        why: &'static str,
    },
    /// A positional sub-field value of the wrong length.
    #[error("sub-field {path}: length {expected} required, value has {actual}")]
    WrongLength {
        /// The path.
        path: String,
        /// Required length.
        expected: usize,
        /// Given length.
        actual: usize,
    },
    /// A tag or value cannot be written in the TLV flavour.
    #[error("sub-field {path}: {why}")]
    Unencodable {
        /// The path.
        path: String,
        /// Why.
        why: &'static str,
    },
}
