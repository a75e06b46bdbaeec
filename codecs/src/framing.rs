//! Message framing on a byte stream: the length prefix (or ETX trailer) that delimits one ISO 8583
//! message on a TCP link, and the link headers that travel between that prefix and the MTI.
//!
//! [`FrameCodec`] implements tokio-util's [`Decoder`] and [`Encoder`], so it plugs into
//! `FramedRead`/`Framed`, but it owns no socket: it only turns bytes into frames and back, so it is
//! tested and fuzzed on plain buffers. Decoding is two-phase: the codec first checks that a whole
//! frame is buffered ("incomplete" is `Ok(None)`, never an error) and only then splits it off. The
//! length a peer announces is checked against [`Framing::max_frame_bytes`] *before* any buffer grows,
//! so a peer cannot make the codec buffer more than that limit.
//!
//! A decoded frame is the bytes between the length prefix and the end of the message: link header
//! (if the dialect has one) followed by MTI, bitmap(s) and fields. [`Framing::split_header`] parses
//! the header into a typed [`FrameHeader`] and hands back the message body for the message decoder.
//!
//! Framings ([`LengthPrefix`]):
//! - `binary2`: 2-byte big-endian binary length, the most common on TCP links (UnionPay POS,
//!   most acquirer hosts);
//! - `bcd2`: 2-byte BCD length (`0x01 0x23` = 123 bytes), used by some POS terminal families;
//! - `ascii4`: 4 ASCII digits (`"0123"`), used on the UnionPay host link (`cups-host`) and by
//!   many text-oriented hosts;
//! - `etx`: no length at all, the frame ends at the ETX byte (0x03), as on BASE24-style links (jPOS
//!   names it `BASE24Channel`). Because the frame is found by searching for 0x03, the content must
//!   never contain that byte: only dialects whose every byte is printable text can use it, i.e.
//!   ASCII/hex-text bitmaps and fields and no binary fields (PIN block, MAC, field 55) unless the
//!   dialect carries them as hex text. Of the shipped dialects only `iso87ascii` qualifies (its PIN
//!   block, field 55 and MAC are hex text), provided no text field carries control characters;
//!   `iso87binary`, `cups-pos` (binary TPDU, BCD, binary bitmap) and `cups-host` (binary header
//!   bytes, bitmaps and MAC) cannot be sent this way. The encoder refuses a frame that contains
//!   0x03 rather than send something the peer would cut in two.
//!
//! Headers ([`HeaderLayout`]): the 5-byte TPDU of POS links ([`Tpdu`]), TPDU followed by the
//! UnionPay 6-byte POS application header ([`PosHeader`]), and the 46-byte UnionPay host header
//! ([`HostHeader`]), whose total-length field the encoder always writes from the actual body length.
//!
//! Which framing a link uses is configuration data: [`Framing::from_spec`] takes it from a dialect
//! spec's `[framing]` and `[header]` tables, and [`Framing`] itself is serde-deserialisable for a
//! link's own configuration, with the same vocabulary, e.g. in TOML:
//!
//! ```toml
//! [framing]
//! length_prefix = "binary2"   # binary2 | bcd2 | ascii4 | etx
//! header = "tpdu-cups-pos"     # none | tpdu | tpdu-cups-pos | cups-host
//! max_frame_bytes = 4096       # bytes after the length prefix; default 8192
//! ```

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio_util::codec::{Decoder, Encoder};

use crate::spec::{FrameLength, HeaderKind, Spec};

/// The byte that ends a frame in [`LengthPrefix::Etx`] framing.
pub const ETX: u8 = 0x03;

/// Frame size limit used when the configuration names none: ample for any ISO 8583 message seen
/// on POS and host links (they rarely pass 2 KiB), small enough that a hostile peer cannot make a
/// connection hold much memory.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 8192;

/// The largest `max_frame_bytes` a configuration may ask for (1 MiB). Length prefixes cap it further
/// (65535 for `binary2`, 9999 for `bcd2`/`ascii4`); for ETX framing it bounds the scan for the ETX.
pub const MAX_FRAME_BYTES_LIMIT: usize = 1 << 20;

/// How the end of a frame is found: a length prefix before it, or an ETX byte after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LengthPrefix {
    /// 2-byte big-endian binary length of the bytes that follow (0..=65535).
    Binary2,
    /// 2-byte BCD length, four decimal digits packed two per byte (0..=9999).
    Bcd2,
    /// 4 ASCII decimal digits (0..=9999).
    Ascii4,
    /// No length prefix; the frame ends at the ETX byte (0x03), which is not part of the frame.
    Etx,
}

impl LengthPrefix {
    /// Number of bytes the prefix itself occupies on the wire (0 for ETX framing; the trailing ETX
    /// is one byte after the content).
    #[must_use]
    pub const fn prefix_len(self) -> usize {
        match self {
            Self::Binary2 | Self::Bcd2 => 2,
            Self::Ascii4 => 4,
            Self::Etx => 0,
        }
    }

    /// The largest frame content the prefix can announce.
    #[must_use]
    pub const fn max_len(self) -> usize {
        match self {
            Self::Binary2 => 65_535,
            Self::Etx => MAX_FRAME_BYTES_LIMIT,
            Self::Bcd2 | Self::Ascii4 => 9999,
        }
    }

    /// Reads the announced length from exactly `prefix_len()` bytes.
    fn read(self, prefix: &[u8]) -> Result<usize, FramingError> {
        let bad = || FramingError::InvalidLengthPrefix {
            prefix: self,
            bytes: hex_upper(prefix),
        };
        match (self, prefix) {
            (Self::Binary2, &[hi, lo]) => Ok(usize::from(u16::from_be_bytes([hi, lo]))),
            (Self::Bcd2, &[hi, lo]) => {
                let mut len = 0usize;
                for byte in [hi, lo] {
                    let (tens, ones) = (byte >> 4, byte & 0x0F);
                    if tens > 9 || ones > 9 {
                        return Err(bad());
                    }
                    len = len * 100 + usize::from(tens) * 10 + usize::from(ones);
                }
                Ok(len)
            }
            (Self::Ascii4, digits) if digits.len() == 4 => {
                let mut len = 0usize;
                for &digit in digits {
                    if !digit.is_ascii_digit() {
                        return Err(bad());
                    }
                    len = len * 10 + usize::from(digit - b'0');
                }
                Ok(len)
            }
            _ => Err(bad()),
        }
    }

    /// Writes the prefix announcing `len` bytes; the caller has checked `len <= max_len()`.
    fn write(self, len: usize, dst: &mut impl BufMut) {
        // Each arm's arithmetic stays in range because len <= max_len() was checked by the caller.
        match self {
            Self::Binary2 => dst.put_u16(u16::try_from(len).unwrap_or(u16::MAX)),
            Self::Bcd2 => {
                let digits = decimal_digits::<4>(len);
                dst.put_u8((digits[0] << 4) | digits[1]);
                dst.put_u8((digits[2] << 4) | digits[3]);
            }
            Self::Ascii4 => {
                for digit in decimal_digits::<4>(len) {
                    dst.put_u8(b'0' + digit);
                }
            }
            Self::Etx => {}
        }
    }
}

impl fmt::Display for LengthPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Binary2 => "binary2",
            Self::Bcd2 => "bcd2",
            Self::Ascii4 => "ascii4",
            Self::Etx => "etx",
        })
    }
}

/// Which link header sits between the length prefix and the MTI.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HeaderLayout {
    /// The message starts right after the length prefix.
    #[default]
    None,
    /// A 5-byte TPDU ([`Tpdu`]).
    Tpdu,
    /// A TPDU followed by the UnionPay 6-byte POS application header ([`PosHeader`]): 11 bytes.
    TpduCupsPos,
    /// The 46-byte UnionPay host header ([`HostHeader`]).
    CupsHost,
}

impl HeaderLayout {
    /// Length of the header on the wire, in bytes.
    #[must_use]
    pub const fn len(self) -> usize {
        match self {
            Self::None => 0,
            Self::Tpdu => Tpdu::LEN,
            Self::TpduCupsPos => Tpdu::LEN + PosHeader::LEN,
            Self::CupsHost => HostHeader::LEN,
        }
    }

    /// True for [`HeaderLayout::None`], the layout without header bytes.
    #[must_use]
    pub const fn is_empty(self) -> bool {
        matches!(self, Self::None)
    }
}

impl fmt::Display for HeaderLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::Tpdu => "tpdu",
            Self::TpduCupsPos => "tpdu-cups-pos",
            Self::CupsHost => "cups-host",
        })
    }
}

fn default_max_frame_bytes() -> usize {
    DEFAULT_MAX_FRAME_BYTES
}

/// A link's framing as configuration data: how frames are delimited, which header they carry and
/// how large one may be. Deserialise it from a dialect spec or link configuration, then check it
/// with [`Framing::validate`] (done by [`FrameCodec::new`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Framing {
    /// How a frame's end is found.
    pub length_prefix: LengthPrefix,
    /// The link header at the start of every frame.
    #[serde(default)]
    pub header: HeaderLayout,
    /// Largest frame accepted or sent, counting header and message but not the length prefix or
    /// ETX. A peer announcing more is refused before anything is buffered for it.
    #[serde(default = "default_max_frame_bytes")]
    pub max_frame_bytes: usize,
}

impl Framing {
    /// A framing with the given prefix and header and the default size limit.
    #[must_use]
    pub const fn new(length_prefix: LengthPrefix, header: HeaderLayout) -> Self {
        Self {
            length_prefix,
            header,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
        }
    }

    /// The same framing with another size limit (checked by [`Framing::validate`]).
    #[must_use]
    pub const fn with_max_frame_bytes(mut self, max_frame_bytes: usize) -> Self {
        self.max_frame_bytes = max_frame_bytes;
        self
    }

    /// The framing a dialect spec names: its `[framing]` length prefix and limit and its
    /// `[header]` kind. A `raw` header (opaque bytes of a fixed length) maps to
    /// [`HeaderLayout::None`]: it stays in the frame and the message decoder reads it.
    ///
    /// # Errors
    /// [`FramingError::InvalidConfig`] for a dialect whose `length_prefix` is `none` (its transport
    /// delimits messages, so there is nothing to frame) or whose limits fail
    /// [`Framing::validate`].
    pub fn from_spec(spec: &Spec) -> Result<Self, FramingError> {
        let length_prefix = match spec.framing.length {
            FrameLength::Binary2 => LengthPrefix::Binary2,
            FrameLength::Bcd2 => LengthPrefix::Bcd2,
            FrameLength::Ascii4 => LengthPrefix::Ascii4,
            FrameLength::Etx => LengthPrefix::Etx,
            FrameLength::None => {
                return Err(FramingError::InvalidConfig {
                    key: "framing.length_prefix",
                    reason: format!(
                        "dialect {} uses `none`: its transport delimits messages, there is no \
                         stream framing",
                        spec.name
                    ),
                });
            }
        };
        let header = match spec.header.kind {
            HeaderKind::None | HeaderKind::Raw => HeaderLayout::None,
            HeaderKind::Tpdu => HeaderLayout::Tpdu,
            HeaderKind::TpduCupsPos => HeaderLayout::TpduCupsPos,
            HeaderKind::CupsHost => HeaderLayout::CupsHost,
        };
        let framing = Self {
            length_prefix,
            header,
            max_frame_bytes: spec.framing.max_frame_bytes,
        };
        framing.validate()?;
        Ok(framing)
    }

    /// The content of exactly one complete frame held in `input` (length prefix or ETX
    /// included), for tools and tests that have a whole frame at hand rather than a stream.
    ///
    /// # Errors
    /// [`FramingError::Truncated`] when `input` ends inside the frame,
    /// [`FramingError::TrailingBytes`] when bytes follow it, and the stream decoder's errors
    /// (invalid prefix, over the limit).
    pub fn unframe<'a>(&self, input: &'a [u8]) -> Result<&'a [u8], FramingError> {
        let max = self.effective_max_len();
        let (content, used) = if self.length_prefix == LengthPrefix::Etx {
            let end = input
                .iter()
                .position(|&b| b == ETX)
                .ok_or(FramingError::Truncated {
                    buffered: input.len(),
                })?;
            (&input[..end], end + 1)
        } else {
            let width = self.length_prefix.prefix_len();
            let prefix = input.get(..width).ok_or(FramingError::Truncated {
                buffered: input.len(),
            })?;
            let len = self.length_prefix.read(prefix)?;
            let content = input
                .get(width..width + len)
                .ok_or(FramingError::Truncated {
                    buffered: input.len(),
                })?;
            (content, width + len)
        };
        if content.len() > max {
            return Err(FramingError::FrameTooLarge {
                len: content.len(),
                max,
            });
        }
        if used != input.len() {
            return Err(FramingError::TrailingBytes {
                offset: used,
                extra: input.len() - used,
            });
        }
        Ok(content)
    }

    /// Appends `content` (header and message) as one frame to `out`: length prefix and content,
    /// or content and ETX. Nothing is written when an error is returned.
    ///
    /// # Errors
    /// [`FramingError::FrameTooLarge`] over the limit or the prefix's capacity, and
    /// [`FramingError::EtxInFrame`] when ETX framing would be cut short by the content.
    pub fn frame_into(&self, content: &[u8], out: &mut impl BufMut) -> Result<(), FramingError> {
        let max = self.effective_max_len();
        if content.len() > max {
            return Err(FramingError::FrameTooLarge {
                len: content.len(),
                max,
            });
        }
        if self.length_prefix == LengthPrefix::Etx {
            if let Some(offset) = content.iter().position(|&b| b == ETX) {
                return Err(FramingError::EtxInFrame { offset });
            }
            out.put_slice(content);
            out.put_u8(ETX);
        } else {
            self.length_prefix.write(content.len(), out);
            out.put_slice(content);
        }
        Ok(())
    }

    /// The largest frame this framing lets through: `max_frame_bytes`, capped by what the length
    /// prefix can express.
    #[must_use]
    pub fn effective_max_len(&self) -> usize {
        self.max_frame_bytes.min(self.length_prefix.max_len())
    }

    /// Checks the configuration is usable; the error names the offending key.
    ///
    /// # Errors
    /// [`FramingError::InvalidConfig`] when `max_frame_bytes` cannot hold even the header, or exceeds
    /// [`MAX_FRAME_BYTES_LIMIT`].
    pub fn validate(&self) -> Result<(), FramingError> {
        let min = self.header.len().max(1);
        if self.max_frame_bytes < min {
            return Err(FramingError::InvalidConfig {
                key: "max_frame_bytes",
                reason: format!(
                    "{} is smaller than the {}-byte {} header plus one byte",
                    self.max_frame_bytes,
                    self.header.len(),
                    self.header
                ),
            });
        }
        if self.max_frame_bytes > MAX_FRAME_BYTES_LIMIT {
            return Err(FramingError::InvalidConfig {
                key: "max_frame_bytes",
                reason: format!(
                    "{} exceeds the limit of {MAX_FRAME_BYTES_LIMIT} bytes",
                    self.max_frame_bytes
                ),
            });
        }
        Ok(())
    }

    /// Splits a decoded frame into its parsed link header and the message (MTI onwards).
    ///
    /// # Errors
    /// [`FramingError::ShortFrame`] when the frame is shorter than the header, and the header
    /// parsers' errors ([`FramingError::InvalidHeader`], [`FramingError::TotalLengthMismatch`]).
    pub fn split_header<'a>(
        &self,
        frame: &'a [u8],
    ) -> Result<(FrameHeader, &'a [u8]), FramingError> {
        let need = self.header.len();
        if frame.len() < need {
            return Err(FramingError::ShortFrame {
                layout: self.header,
                need,
                len: frame.len(),
            });
        }
        let (head, body) = frame.split_at(need);
        let header = match self.header {
            HeaderLayout::None => FrameHeader::None,
            HeaderLayout::Tpdu => FrameHeader::Tpdu(Tpdu::parse(head)?),
            HeaderLayout::TpduCupsPos => FrameHeader::TpduCupsPos {
                tpdu: Tpdu::parse(&head[..Tpdu::LEN])?,
                pos: PosHeader::parse(&head[Tpdu::LEN..])?,
            },
            HeaderLayout::CupsHost => {
                let (header, declared) = HostHeader::parse(head)?;
                if declared != frame.len() {
                    return Err(FramingError::TotalLengthMismatch {
                        declared,
                        actual: frame.len(),
                    });
                }
                FrameHeader::CupsHost(header)
            }
        };
        Ok((header, body))
    }
}

/// A parsed link header, one variant per [`HeaderLayout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameHeader {
    /// No header.
    None,
    /// A TPDU alone.
    Tpdu(Tpdu),
    /// A TPDU followed by the UnionPay POS application header.
    TpduCupsPos {
        /// The routing TPDU.
        tpdu: Tpdu,
        /// The application header after it.
        pos: PosHeader,
    },
    /// The UnionPay host header.
    CupsHost(HostHeader),
}

impl FrameHeader {
    /// The layout this header is written in.
    #[must_use]
    pub const fn layout(&self) -> HeaderLayout {
        match self {
            Self::None => HeaderLayout::None,
            Self::Tpdu(_) => HeaderLayout::Tpdu,
            Self::TpduCupsPos { .. } => HeaderLayout::TpduCupsPos,
            Self::CupsHost(_) => HeaderLayout::CupsHost,
        }
    }

    /// The header a reply to this message carries: TPDU destination and source swapped, host
    /// header destination and source IDs swapped, everything else kept.
    #[must_use]
    pub const fn reply(&self) -> Self {
        match *self {
            Self::None => Self::None,
            Self::Tpdu(tpdu) => Self::Tpdu(tpdu.reply()),
            Self::TpduCupsPos { tpdu, pos } => Self::TpduCupsPos {
                tpdu: tpdu.reply(),
                pos,
            },
            Self::CupsHost(host) => Self::CupsHost(host.reply()),
        }
    }

    /// Writes the header for a message of `body_len` bytes (the host header's total-length field
    /// depends on it).
    ///
    /// # Errors
    /// [`FramingError::InvalidHeader`] when a typed field is out of range for its wire format, and
    /// [`FramingError::FrameTooLarge`] when the host header's total length exceeds 9999.
    pub fn write(&self, body_len: usize, dst: &mut BytesMut) -> Result<(), FramingError> {
        match self {
            Self::None => {}
            Self::Tpdu(tpdu) => dst.put_slice(&tpdu.to_bytes()),
            Self::TpduCupsPos { tpdu, pos } => {
                let pos = pos.to_bytes()?;
                dst.put_slice(&tpdu.to_bytes());
                dst.put_slice(&pos);
            }
            Self::CupsHost(host) => dst.put_slice(&host.to_bytes(body_len)?),
        }
        Ok(())
    }
}

/// Transport Protocol Data Unit: the 5-byte routing header of POS links (`60 dddd ssss`), ID byte
/// then 2-byte destination and 2-byte source addresses (usually network access point numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tpdu {
    /// TPDU ID; 0x60 on every POS link seen in practice. Kept as read, not checked, so that a
    /// reply echoes whatever the terminal sent.
    pub id: u8,
    /// Destination address, as on the wire.
    pub destination: [u8; 2],
    /// Source address, as on the wire.
    pub source: [u8; 2],
}

impl Tpdu {
    /// Length of a TPDU on the wire.
    pub const LEN: usize = 5;
    /// The usual TPDU ID.
    pub const ID: u8 = 0x60;

    /// A TPDU with the usual ID 0x60.
    #[must_use]
    pub const fn new(destination: [u8; 2], source: [u8; 2]) -> Self {
        Self {
            id: Self::ID,
            destination,
            source,
        }
    }

    /// Reads a TPDU from exactly five bytes.
    ///
    /// # Errors
    /// [`FramingError::InvalidHeader`] when `bytes` is not five bytes long.
    pub fn parse(bytes: &[u8]) -> Result<Self, FramingError> {
        match *bytes {
            [id, d0, d1, s0, s1] => Ok(Self {
                id,
                destination: [d0, d1],
                source: [s0, s1],
            }),
            _ => Err(FramingError::InvalidHeader {
                field: "tpdu",
                offset: 0,
                reason: "a TPDU is exactly 5 bytes",
            }),
        }
    }

    /// The TPDU of the reply: destination and source swapped.
    #[must_use]
    pub const fn reply(self) -> Self {
        Self {
            id: self.id,
            destination: self.source,
            source: self.destination,
        }
    }

    /// The five wire bytes.
    #[must_use]
    pub const fn to_bytes(self) -> [u8; 5] {
        [
            self.id,
            self.destination[0],
            self.destination[1],
            self.source[0],
            self.source[1],
        ]
    }

    /// Turns the TPDU at the start of `frame` into the reply's TPDU in place, for a gateway that
    /// answers by rewriting the request's bytes.
    ///
    /// # Errors
    /// [`FramingError::ShortFrame`] when `frame` holds fewer than five bytes.
    pub fn reply_in_place(frame: &mut [u8]) -> Result<(), FramingError> {
        if frame.len() < Self::LEN {
            return Err(FramingError::ShortFrame {
                layout: HeaderLayout::Tpdu,
                need: Self::LEN,
                len: frame.len(),
            });
        }
        frame.swap(1, 3);
        frame.swap(2, 4);
        Ok(())
    }
}

/// UnionPay POS application header: the 6 bytes after the TPDU on a `cups-pos` link, all BCD.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PosHeader {
    /// Application type, two digits (60 = financial POS, 61 = …); 0..=99.
    pub application_type: u8,
    /// Software version, two digits (e.g. 31); 0..=99.
    pub software_version: u8,
    /// Terminal status, one digit (0 normal, 1 test); 0..=9.
    pub terminal_status: u8,
    /// Processing request from the host, one digit (0 none, 1 download parameters, 2 upload
    /// status, 3 sign on again, 4 download public keys, 5 download IC parameters, ...); 0..=9.
    pub processing_request: u8,
    /// Software sub-version, six digits; 0..=999_999.
    pub software_subversion: u32,
}

impl PosHeader {
    /// Length of the POS application header on the wire.
    pub const LEN: usize = 6;

    /// Reads the header from exactly six BCD bytes.
    ///
    /// # Errors
    /// [`FramingError::InvalidHeader`] naming the field whose nibbles are not decimal digits.
    pub fn parse(bytes: &[u8]) -> Result<Self, FramingError> {
        let &[app, version, status, sub0, sub1, sub2] = bytes else {
            return Err(pos_error(
                "pos_header",
                0,
                "the POS header is exactly 6 bytes",
            ));
        };
        let digit_pair = |byte: u8, field, offset| {
            let (hi, lo) = (byte >> 4, byte & 0x0F);
            if hi > 9 || lo > 9 {
                Err(pos_error(field, offset, "nibbles must be BCD digits 0-9"))
            } else {
                Ok((hi, lo))
            }
        };
        let two = |byte, field, offset| digit_pair(byte, field, offset).map(|(h, l)| h * 10 + l);
        let (terminal_status, processing_request) = digit_pair(status, "terminal_status", 2)?;
        let mut software_subversion = 0u32;
        for (i, byte) in [sub0, sub1, sub2].into_iter().enumerate() {
            let pair = two(byte, "software_subversion", 3 + i)?;
            software_subversion = software_subversion * 100 + u32::from(pair);
        }
        Ok(Self {
            application_type: two(app, "application_type", 0)?,
            software_version: two(version, "software_version", 1)?,
            terminal_status,
            processing_request,
            software_subversion,
        })
    }

    /// The six wire bytes.
    ///
    /// # Errors
    /// [`FramingError::InvalidHeader`] naming a field whose value has too many digits.
    pub fn to_bytes(&self) -> Result<[u8; 6], FramingError> {
        let bcd2 = |value: u8, field, offset| {
            if value > 99 {
                Err(pos_error(field, offset, "value has more than two digits"))
            } else {
                Ok(((value / 10) << 4) | (value % 10))
            }
        };
        if self.terminal_status > 9 {
            return Err(pos_error(
                "terminal_status",
                2,
                "value has more than one digit",
            ));
        }
        if self.processing_request > 9 {
            return Err(pos_error(
                "processing_request",
                2,
                "value has more than one digit",
            ));
        }
        if self.software_subversion > 999_999 {
            return Err(pos_error(
                "software_subversion",
                3,
                "value has more than six digits",
            ));
        }
        let sub = decimal_digits::<6>(usize::try_from(self.software_subversion).unwrap_or(0));
        Ok([
            bcd2(self.application_type, "application_type", 0)?,
            bcd2(self.software_version, "software_version", 1)?,
            (self.terminal_status << 4) | self.processing_request,
            (sub[0] << 4) | sub[1],
            (sub[2] << 4) | sub[3],
            (sub[4] << 4) | sub[5],
        ])
    }
}

fn pos_error(field: &'static str, offset: usize, reason: &'static str) -> FramingError {
    FramingError::InvalidHeader {
        field,
        offset: Tpdu::LEN + offset,
        reason,
    }
}

/// UnionPay host header: the 46 bytes before the MTI on the acquirer <-> UnionPay link.
///
/// The total-length field (4 ASCII digits: header plus message) is not stored: it is derived
/// from the message on encode and checked against the frame on decode, so it can never be wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HostHeader {
    /// Header flag and version (binary byte; 0x01 or 0x02 on live links).
    pub version: u8,
    /// Destination institution ID, 11 characters, space padded.
    pub destination_id: [u8; 11],
    /// Source institution ID, 11 characters, space padded.
    pub source_id: [u8; 11],
    /// Reserved for use, 3 binary bytes (zeros).
    pub reserved: [u8; 3],
    /// Batch number (binary byte).
    pub batch_number: u8,
    /// Transaction information, 8 characters.
    pub transaction_info: [u8; 8],
    /// User information (binary byte).
    pub user_info: u8,
    /// Reject code, 5 characters: `00000` unless the host rejects the message unread.
    pub reject_code: [u8; 5],
}

impl HostHeader {
    /// Length of the host header on the wire; also the value of its header-length byte.
    pub const LEN: usize = 46;

    /// A header with the given IDs (at most 11 bytes each, space padded), version 0x02, zero
    /// reserved/batch/user bytes, transaction info `00000000` and reject code `00000`.
    ///
    /// # Errors
    /// [`FramingError::InvalidHeader`] when an ID is longer than 11 bytes.
    pub fn new(destination_id: &str, source_id: &str) -> Result<Self, FramingError> {
        Ok(Self {
            version: 0x02,
            destination_id: pad_id(destination_id, "destination_id", 6)?,
            source_id: pad_id(source_id, "source_id", 17)?,
            reserved: [0; 3],
            batch_number: 0,
            transaction_info: *b"00000000",
            user_info: 0,
            reject_code: *b"00000",
        })
    }

    /// Reads a header from exactly 46 bytes; also returns the declared total length.
    ///
    /// # Errors
    /// [`FramingError::InvalidHeader`] when the header-length byte is not 46 or the total length
    /// is not four ASCII digits.
    pub fn parse(bytes: &[u8]) -> Result<(Self, usize), FramingError> {
        let host_error = |field, offset, reason| FramingError::InvalidHeader {
            field,
            offset,
            reason,
        };
        let Ok(bytes) = <&[u8; Self::LEN]>::try_from(bytes) else {
            return Err(host_error(
                "host_header",
                0,
                "the host header is exactly 46 bytes",
            ));
        };
        if usize::from(bytes[0]) != Self::LEN {
            return Err(host_error("header_length", 0, "must be 46 (0x2E)"));
        }
        let mut total = 0usize;
        for &digit in &bytes[2..6] {
            if !digit.is_ascii_digit() {
                return Err(host_error("total_length", 2, "must be 4 ASCII digits"));
            }
            total = total * 10 + usize::from(digit - b'0');
        }
        let header = Self {
            version: bytes[1],
            destination_id: copy_array(&bytes[6..17]),
            source_id: copy_array(&bytes[17..28]),
            reserved: copy_array(&bytes[28..31]),
            batch_number: bytes[31],
            transaction_info: copy_array(&bytes[32..40]),
            user_info: bytes[40],
            reject_code: copy_array(&bytes[41..46]),
        };
        Ok((header, total))
    }

    /// The 46 wire bytes for a message (MTI onwards) of `body_len` bytes; the total-length field
    /// becomes `46 + body_len`.
    ///
    /// # Errors
    /// [`FramingError::FrameTooLarge`] when the total exceeds the field's 9999.
    pub fn to_bytes(&self, body_len: usize) -> Result<[u8; 46], FramingError> {
        let total = body_len.saturating_add(Self::LEN);
        if total > 9999 {
            return Err(FramingError::FrameTooLarge {
                len: total,
                max: 9999,
            });
        }
        let mut out = [0u8; Self::LEN];
        out[0] = 46;
        out[1] = self.version;
        for (slot, digit) in out[2..6].iter_mut().zip(decimal_digits::<4>(total)) {
            *slot = b'0' + digit;
        }
        out[6..17].copy_from_slice(&self.destination_id);
        out[17..28].copy_from_slice(&self.source_id);
        out[28..31].copy_from_slice(&self.reserved);
        out[31] = self.batch_number;
        out[32..40].copy_from_slice(&self.transaction_info);
        out[40] = self.user_info;
        out[41..46].copy_from_slice(&self.reject_code);
        Ok(out)
    }

    /// The header of the reply: destination and source IDs swapped, everything else kept.
    #[must_use]
    pub const fn reply(self) -> Self {
        Self {
            destination_id: self.source_id,
            source_id: self.destination_id,
            ..self
        }
    }

    /// The destination ID as text without its padding, if it is ASCII.
    #[must_use]
    pub fn destination_id_str(&self) -> Option<&str> {
        id_str(&self.destination_id)
    }

    /// The source ID as text without its padding, if it is ASCII.
    #[must_use]
    pub fn source_id_str(&self) -> Option<&str> {
        id_str(&self.source_id)
    }
}

fn pad_id(id: &str, field: &'static str, offset: usize) -> Result<[u8; 11], FramingError> {
    let mut out = [b' '; 11];
    if id.len() > out.len() {
        return Err(FramingError::InvalidHeader {
            field,
            offset,
            reason: "IDs are at most 11 bytes",
        });
    }
    out[..id.len()].copy_from_slice(id.as_bytes());
    Ok(out)
}

fn id_str(id: &[u8]) -> Option<&str> {
    std::str::from_utf8(id)
        .ok()
        .filter(|text| text.is_ascii())
        .map(|text| text.trim_end_matches(' '))
}

fn copy_array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(bytes);
    out
}

/// The `N` least significant decimal digits of `value`, most significant first.
fn decimal_digits<const N: usize>(mut value: usize) -> [u8; N] {
    let mut out = [0u8; N];
    for slot in out.iter_mut().rev() {
        // value % 10 < 10, so the narrowing cannot lose anything.
        *slot = (value % 10) as u8;
        value /= 10;
    }
    out
}

fn hex_upper(bytes: &[u8]) -> String {
    use fmt::Write as _;
    bytes.iter().fold(String::new(), |mut out, byte| {
        let _ = write!(out, "{byte:02X}");
        out
    })
}

/// A frame to send with its own link header, e.g. the request's header turned round with
/// [`FrameHeader::reply`].
#[derive(Debug, Clone, Copy)]
pub struct OutboundFrame<'a> {
    /// The header to write; its layout must be the codec's.
    pub header: &'a FrameHeader,
    /// The message, MTI onwards.
    pub body: &'a [u8],
}

/// Frame content that already holds its link header (e.g. bytes a MAC was computed over, or a
/// frame being relayed unchanged): the encoder only adds the length prefix or ETX.
#[derive(Debug, Clone, Copy)]
pub struct RawFrame<'a>(pub &'a [u8]);

/// Why a frame could not be decoded or encoded. The variant says who is at fault: the peer
/// (malformed or oversized input), the configuration, or the local caller.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FramingError {
    /// Reading from the transport failed.
    #[error("transport I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// A frame (announced by the peer, or about to be sent) is larger than allowed.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    FrameTooLarge {
        /// The announced or attempted frame length (for ETX framing: bytes buffered so far).
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// The peer's length prefix is not valid for the configured kind.
    #[error("peer sent a length prefix that is not valid {prefix}: {bytes}")]
    InvalidLengthPrefix {
        /// The configured prefix kind.
        prefix: LengthPrefix,
        /// The offending prefix bytes, uppercase hex.
        bytes: String,
    },
    /// The stream ended in the middle of a frame.
    #[error("connection closed inside a frame: {buffered} bytes buffered")]
    Truncated {
        /// Bytes received of the unfinished frame (prefix included).
        buffered: usize,
    },
    /// A frame is too short to hold the configured header.
    #[error("frame of {len} bytes is shorter than the {need}-byte {layout} header")]
    ShortFrame {
        /// The configured header layout.
        layout: HeaderLayout,
        /// Bytes the header needs.
        need: usize,
        /// Bytes the frame has.
        len: usize,
    },
    /// A header field holds a value its wire format does not allow.
    #[error("header field {field} at byte {offset}: {reason}")]
    InvalidHeader {
        /// The header field.
        field: &'static str,
        /// Offset of the field from the start of the frame (after the length prefix).
        offset: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// The host header's total-length field disagrees with the frame's length.
    #[error("host header declares a total length of {declared} bytes but the frame has {actual}")]
    TotalLengthMismatch {
        /// The value of the total-length field.
        declared: usize,
        /// The actual frame length (header plus message).
        actual: usize,
    },
    /// A complete frame was expected, but more bytes follow it.
    #[error("{extra} bytes follow the frame that ends at byte {offset}")]
    TrailingBytes {
        /// Where the frame ends.
        offset: usize,
        /// How many bytes follow.
        extra: usize,
    },
    /// A frame to send in ETX framing contains the ETX byte, which would cut it in two.
    #[error("frame holds ETX (0x03) at byte {offset}; ETX framing cannot carry it")]
    EtxInFrame {
        /// Offset of the ETX byte within the frame content.
        offset: usize,
    },
    /// An outbound header's layout is not the one the codec is configured for.
    #[error("header layout {given} given, but the framing uses {expected}")]
    HeaderMismatch {
        /// The configured layout.
        expected: HeaderLayout,
        /// The layout of the header given.
        given: HeaderLayout,
    },
    /// The framing needs a header for a plain-body send, and the codec has no default header.
    #[error("the framing uses a {layout} header but no outbound header is configured")]
    MissingHeader {
        /// The configured layout.
        layout: HeaderLayout,
    },
    /// The framing configuration is unusable.
    #[error("framing configuration key {key}: {reason}")]
    InvalidConfig {
        /// The offending key.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// tokio-util codec for one link's [`Framing`]: decodes frames (link header plus message, without
/// the length prefix or ETX) and encodes them back.
///
/// Encoder items:
/// - `&[u8]` / [`Bytes`]: a message body; the codec writes the prefix, then the outbound header
///   set with [`FrameCodec::with_outbound_header`] (required when the layout has a header), then
///   the body;
/// - [`OutboundFrame`]: a body with its own header;
/// - [`RawFrame`]: content that already holds its header.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    framing: Framing,
    outbound_header: Option<FrameHeader>,
    /// ETX framing only: how many buffered bytes are already known to hold no ETX, so feeding a
    /// frame in many small reads scans each byte once instead of once per read.
    etx_scanned: usize,
}

impl FrameCodec {
    /// A codec for `framing`.
    ///
    /// # Errors
    /// [`FramingError::InvalidConfig`] when the framing fails [`Framing::validate`].
    pub fn new(framing: Framing) -> Result<Self, FramingError> {
        framing.validate()?;
        Ok(Self {
            framing,
            outbound_header: None,
            etx_scanned: 0,
        })
    }

    /// A codec for the framing a dialect spec names ([`Framing::from_spec`]).
    ///
    /// # Errors
    /// As [`Framing::from_spec`].
    pub fn for_spec(spec: &Spec) -> Result<Self, FramingError> {
        Self::new(Framing::from_spec(spec)?)
    }

    /// The same codec writing `header` before every plain body it encodes.
    ///
    /// # Errors
    /// [`FramingError::HeaderMismatch`] when the header's layout is not the framing's.
    pub fn with_outbound_header(mut self, header: FrameHeader) -> Result<Self, FramingError> {
        self.check_layout(&header)?;
        self.outbound_header = Some(header);
        Ok(self)
    }

    /// The framing this codec implements.
    #[must_use]
    pub const fn framing(&self) -> &Framing {
        &self.framing
    }

    fn check_layout(&self, header: &FrameHeader) -> Result<(), FramingError> {
        if header.layout() == self.framing.header {
            Ok(())
        } else {
            Err(FramingError::HeaderMismatch {
                expected: self.framing.header,
                given: header.layout(),
            })
        }
    }

    fn check_outbound_len(&self, len: usize) -> Result<(), FramingError> {
        let max = self.framing.effective_max_len();
        if len > max {
            return Err(FramingError::FrameTooLarge { len, max });
        }
        Ok(())
    }

    /// Writes prefix, header and body. Nothing is written when an error is returned.
    fn encode_parts(
        &self,
        header: &FrameHeader,
        body: &[u8],
        dst: &mut BytesMut,
    ) -> Result<(), FramingError> {
        let len = header.layout().len().saturating_add(body.len());
        self.check_outbound_len(len)?;
        let start = dst.len();
        dst.reserve(self.framing.length_prefix.prefix_len() + len + 1);
        self.framing.length_prefix.write(len, dst);
        let content_start = dst.len();
        if let Err(error) = header.write(body.len(), dst) {
            dst.truncate(start);
            return Err(error);
        }
        dst.put_slice(body);
        self.finish_etx(dst, start, content_start)
    }

    /// In ETX framing, refuses content holding ETX (undoing the write) and appends the ETX.
    fn finish_etx(
        &self,
        dst: &mut BytesMut,
        start: usize,
        content_start: usize,
    ) -> Result<(), FramingError> {
        if self.framing.length_prefix != LengthPrefix::Etx {
            return Ok(());
        }
        if let Some(offset) = dst[content_start..].iter().position(|&b| b == ETX) {
            dst.truncate(start);
            return Err(FramingError::EtxInFrame { offset });
        }
        dst.put_u8(ETX);
        Ok(())
    }

    fn decode_prefixed(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, FramingError> {
        let prefix_len = self.framing.length_prefix.prefix_len();
        let Some(prefix) = src.get(..prefix_len) else {
            return Ok(None);
        };
        let len = self.framing.length_prefix.read(prefix)?;
        let max = self.framing.effective_max_len();
        if len > max {
            return Err(FramingError::FrameTooLarge { len, max });
        }
        let total = prefix_len + len;
        if src.len() < total {
            // Bounded by max_frame_bytes: safe to make room for the rest of this frame now.
            src.reserve(total - src.len());
            return Ok(None);
        }
        src.advance(prefix_len);
        Ok(Some(src.split_to(len)))
    }

    fn decode_etx(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, FramingError> {
        let max = self.framing.effective_max_len();
        let from = self.etx_scanned.min(src.len());
        let Some(found) = src[from..].iter().position(|&b| b == ETX) else {
            if src.len() > max {
                return Err(FramingError::FrameTooLarge {
                    len: src.len(),
                    max,
                });
            }
            self.etx_scanned = src.len();
            return Ok(None);
        };
        let len = from + found;
        if len > max {
            return Err(FramingError::FrameTooLarge { len, max });
        }
        self.etx_scanned = 0;
        let frame = src.split_to(len);
        src.advance(1);
        Ok(Some(frame))
    }
}

impl Decoder for FrameCodec {
    type Item = BytesMut;
    type Error = FramingError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, FramingError> {
        if self.framing.length_prefix == LengthPrefix::Etx {
            self.decode_etx(src)
        } else {
            self.decode_prefixed(src)
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, FramingError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(FramingError::Truncated {
                buffered: src.len(),
            }),
        }
    }
}

impl Encoder<&[u8]> for FrameCodec {
    type Error = FramingError;

    fn encode(&mut self, body: &[u8], dst: &mut BytesMut) -> Result<(), FramingError> {
        let header = match self.outbound_header {
            Some(header) => header,
            None if self.framing.header.is_empty() => FrameHeader::None,
            None => {
                return Err(FramingError::MissingHeader {
                    layout: self.framing.header,
                });
            }
        };
        self.encode_parts(&header, body, dst)
    }
}

impl Encoder<Bytes> for FrameCodec {
    type Error = FramingError;

    fn encode(&mut self, body: Bytes, dst: &mut BytesMut) -> Result<(), FramingError> {
        Encoder::<&[u8]>::encode(self, &body, dst)
    }
}

impl Encoder<OutboundFrame<'_>> for FrameCodec {
    type Error = FramingError;

    fn encode(&mut self, frame: OutboundFrame<'_>, dst: &mut BytesMut) -> Result<(), FramingError> {
        self.check_layout(frame.header)?;
        self.encode_parts(frame.header, frame.body, dst)
    }
}

impl Encoder<RawFrame<'_>> for FrameCodec {
    type Error = FramingError;

    fn encode(&mut self, frame: RawFrame<'_>, dst: &mut BytesMut) -> Result<(), FramingError> {
        let len = frame.0.len();
        self.check_outbound_len(len)?;
        let start = dst.len();
        dst.reserve(self.framing.length_prefix.prefix_len() + len + 1);
        self.framing.length_prefix.write(len, dst);
        let content_start = dst.len();
        dst.put_slice(frame.0);
        self.finish_etx(dst, start, content_start)
    }
}
