//! Dialects as data: a TOML file describes the header, MTI, bitmaps, every data element, sub-field
//! layouts, MAC coverage, framing and which fields are sensitive. Loading validates the whole file
//! once and compiles it into a [`Spec`]: a flat table of [`FieldDef`]s indexed by field number, so
//! the codec's hot path does no lookups by name and no parsing of settings.
//!
//! Units, everywhere in a spec: `length` (fixed fields) and `max` (variable fields) are counted in
//! the same unit as the field's length prefix, `length_counts`:
//! - `"bytes"`: bytes on the wire;
//! - `"digits"`: characters for ASCII/EBCDIC, digits (nibbles) for BCD, nibbles for binary, hex
//!   characters for hex text.
//!
//! For ASCII and EBCDIC both are the same. BCD fields must state `length_counts`, `align` and `pad`
//! explicitly, because that is where real dialects differ.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::ebcdic::CodePage;
use crate::error::SpecError;

/// Highest data element number (tertiary bitmap).
pub const MAX_FIELD: u16 = 192;

/// The built-in dialects, embedded in the binary: `(name, TOML text)`.
const BUILTIN: &[(&str, &str)] = &[
    ("iso87ascii", include_str!("../specs/iso87ascii.toml")),
    ("iso87binary", include_str!("../specs/iso87binary.toml")),
    ("cups-pos", include_str!("../specs/cups-pos.toml")),
    ("cups-host", include_str!("../specs/cups-host.toml")),
];

/// How a field's data is represented on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataEncoding {
    /// ASCII characters (bytes 0x80..=0xFF pass through as Latin-1).
    Ascii,
    /// EBCDIC characters in the spec's code page (printable range).
    Ebcdic,
    /// Packed decimal, two digits per byte.
    Bcd,
    /// Raw bytes.
    Binary,
    /// Raw bytes written as hex text (two characters per byte).
    Hex,
}

/// How the value of a field is presented to code and in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// Text (ASCII or EBCDIC characters).
    Text,
    /// Digits (BCD; a track-2 field may contain `=`).
    Digits,
    /// Bytes (binary or hex text; shown as uppercase hex).
    Bytes,
}

impl DataEncoding {
    /// How values of this encoding are presented.
    pub fn value_kind(self) -> ValueKind {
        match self {
            DataEncoding::Ascii | DataEncoding::Ebcdic => ValueKind::Text,
            DataEncoding::Bcd => ValueKind::Digits,
            DataEncoding::Binary | DataEncoding::Hex => ValueKind::Bytes,
        }
    }
}

/// Encoding of a variable field's length prefix (and of the MTI).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumberEncoding {
    /// ASCII digits.
    Ascii,
    /// EBCDIC digits (F0..F9).
    Ebcdic,
    /// Packed decimal.
    Bcd,
    /// Big-endian unsigned binary.
    Binary,
}

impl NumberEncoding {
    /// The name used in spec files and error messages.
    pub fn name(self) -> &'static str {
        match self {
            NumberEncoding::Ascii => "ascii",
            NumberEncoding::Ebcdic => "ebcdic",
            NumberEncoding::Bcd => "bcd",
            NumberEncoding::Binary => "binary",
        }
    }
}

/// What a length (prefix, `length`, `max`) counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LengthUnit {
    /// Bytes on the wire.
    Bytes,
    /// Characters, digits or nibbles (see the module documentation).
    Digits,
}

/// Which side of an odd-length BCD value the pad nibble goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Value starts at the first nibble; the pad is the last nibble.
    Left,
    /// Value ends at the last nibble; the pad is the first nibble.
    Right,
}

/// Characters a field accepts, beyond what its encoding can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charset {
    /// Digits only (`n`).
    Numeric,
    /// Track 2 (`z`): digits and the `=` separator (BCD nibble D).
    Track2,
    /// Anything the encoding carries (`a`, `an`, `ans`, `b`, ...).
    Any,
}

/// Kinds of sensitive data, masked or redacted when shown to people.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sensitivity {
    /// Primary account number: shown as first 6 and last 4 digits.
    Pan,
    /// Track data: the PAN part masked, the rest redacted.
    Track,
    /// PIN block: redacted.
    Pin,
    /// MAC: redacted.
    Mac,
    /// Key material: redacted.
    Key,
    /// Other card data (expiry date, ICC data, which carries the track-2 equivalent): redacted.
    Card,
}

/// Width and encoding of a variable field's length prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LengthPrefix {
    /// Number of decimal digits the prefix stands for: 2 (LL), 3 (LLL) or 4 (LLLL).
    pub digits: u8,
    /// How the prefix is written.
    pub encoding: NumberEncoding,
    /// Bytes the prefix occupies on the wire.
    pub width: u8,
    /// Largest length the prefix can express.
    pub capacity: usize,
}

impl LengthPrefix {
    fn new(digits: u8, encoding: NumberEncoding) -> Self {
        let (width, capacity) = match encoding {
            NumberEncoding::Ascii | NumberEncoding::Ebcdic => {
                (digits, 10usize.pow(u32::from(digits)) - 1)
            }
            NumberEncoding::Bcd => (digits.div_ceil(2), 10usize.pow(u32::from(digits)) - 1),
            NumberEncoding::Binary if digits == 2 => (1, 255),
            NumberEncoding::Binary => (2, 65_535),
        };
        LengthPrefix {
            digits,
            encoding,
            width,
            capacity,
        }
    }
}

/// Sub-field layout of a field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subfields {
    /// Consecutive parts of fixed length (in the value's characters/digits/bytes); trailing parts
    /// may be absent.
    Positional(Vec<Part>),
    /// BER-TLV (EMV field 55): multi-byte tags, short and long length forms.
    BerTlv,
    /// Fixed-width tag and length, then the value (common in fields 62/63).
    SimpleTlv(SimpleTlv),
}

/// One positional sub-field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// Human name.
    pub name: String,
    /// Length in the parent value's units.
    pub length: usize,
}

/// Settings of a simple TLV layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimpleTlv {
    /// Tag width in bytes.
    pub tag_bytes: u8,
    /// Tag is ASCII text (path segment as text) or binary (path segment as hex).
    pub tag_ascii: bool,
    /// Width of the length in bytes.
    pub length_bytes: u8,
    /// Encoding of the length.
    pub length_encoding: NumberEncoding,
}

/// One data element of a dialect.
#[derive(Debug, Clone)]
pub struct FieldDef {
    /// Field number (2..=192).
    pub number: u16,
    /// Human name.
    pub name: String,
    /// Data representation.
    pub data: DataEncoding,
    /// `None` for fixed-length fields.
    pub prefix: Option<LengthPrefix>,
    /// What `length`, `max` and the prefix count.
    pub counts: LengthUnit,
    /// Fixed length, or maximum length of a variable field (in `counts` units).
    pub max: usize,
    /// BCD alignment for odd digit counts.
    pub align: Align,
    /// BCD pad nibble (0x0 or 0xF).
    pub pad: u8,
    /// Accepted characters.
    pub charset: Charset,
    /// Sensitive data kind, for masking.
    pub sensitive: Option<Sensitivity>,
    /// If not empty, the field is sensitive only in messages of these MTIs.
    pub sensitive_mti: Vec<[u8; 4]>,
    /// Sub-field layout.
    pub subfields: Option<Subfields>,
    /// `units = (value length << units_up) >> units_down` (see [`FieldDef::units_of_value`]).
    units_up: u8,
    units_down: u8,
    /// `wire bytes = (units + wire_round) >> wire_down`; `even_units`: odd lengths impossible.
    wire_round: u8,
    wire_down: u8,
    even_units: bool,
}

impl FieldDef {
    /// True for fixed-length fields.
    pub fn is_fixed(&self) -> bool {
        self.prefix.is_none()
    }

    /// How the value is presented (text, digits or bytes).
    pub fn value_kind(&self) -> ValueKind {
        self.data.value_kind()
    }

    /// Whether values of this field are sensitive in a message of this MTI.
    pub fn sensitivity_for(&self, mti: &[u8; 4]) -> Option<Sensitivity> {
        let kind = self.sensitive?;
        if self.sensitive_mti.is_empty() || self.sensitive_mti.iter().any(|m| m == mti) {
            Some(kind)
        } else {
            None
        }
    }

    /// Wire bytes of the data for a length in `counts` units, or why that length is impossible.
    #[inline]
    pub fn wire_len(&self, units: usize) -> Result<usize, &'static str> {
        // Precomputed instead of a match: this runs once per field on every decode.
        if self.even_units && units % 2 == 1 {
            return Err(if self.data == DataEncoding::Hex {
                "hex text needs an even number of characters"
            } else {
                "binary data needs an even number of nibbles"
            });
        }
        Ok((units + usize::from(self.wire_round)) >> self.wire_down)
    }

    /// Length in `counts` units of a value of `value_len` characters/digits/bytes, or why the
    /// value cannot be written.
    #[inline]
    pub fn units_of_value(&self, value_len: usize) -> Result<usize, &'static str> {
        // Precomputed shifts instead of a match: this runs once per field on every encode.
        if self.units_down == 1 && value_len % 2 == 1 {
            return Err("an odd digit count cannot be carried when the length counts bytes");
        }
        Ok((value_len << self.units_up) >> self.units_down)
    }

    /// Value length (characters/digits/bytes) for a length in `counts` units.
    #[inline]
    pub fn value_len_of_units(&self, units: usize) -> usize {
        match (self.data, self.counts) {
            (DataEncoding::Ascii | DataEncoding::Ebcdic, _) => units,
            (DataEncoding::Bcd, LengthUnit::Digits) => units,
            (DataEncoding::Bcd, LengthUnit::Bytes) => units * 2,
            (DataEncoding::Binary, LengthUnit::Bytes) => units,
            (DataEncoding::Binary, LengthUnit::Digits) | (DataEncoding::Hex, _) => units / 2,
        }
    }
}

/// How the MTI is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MtiEncoding {
    /// Four ASCII digits.
    Ascii,
    /// Four EBCDIC digits.
    Ebcdic,
    /// Two bytes of packed decimal.
    Bcd,
}

impl MtiEncoding {
    /// Bytes the MTI occupies.
    pub fn width(self) -> usize {
        match self {
            MtiEncoding::Bcd => 2,
            MtiEncoding::Ascii | MtiEncoding::Ebcdic => 4,
        }
    }
}

/// How bitmaps are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BitmapEncoding {
    /// 8 raw bytes per bitmap.
    Binary,
    /// 16 hex characters per bitmap (uppercase when encoding; either case when decoding).
    Hex,
}

impl BitmapEncoding {
    /// Bytes one bitmap occupies.
    pub fn width(self) -> usize {
        match self {
            BitmapEncoding::Binary => 8,
            BitmapEncoding::Hex => 16,
        }
    }
}

/// Frame length prefix of a dialect's transport (consumed by the framing layer and the CLI).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameLength {
    /// 2-byte big-endian binary length of what follows.
    Binary2,
    /// 2-byte BCD length (4 digits) of what follows.
    Bcd2,
    /// 4 ASCII digits giving the length of what follows.
    Ascii4,
    /// No length; the message ends with ETX (0x03).
    Etx,
    /// No framing (the transport delimits messages).
    None,
}

impl FrameLength {
    /// Bytes of the prefix (0 for ETX and none).
    pub fn width(self) -> usize {
        match self {
            FrameLength::Binary2 | FrameLength::Bcd2 => 2,
            FrameLength::Ascii4 => 4,
            FrameLength::Etx | FrameLength::None => 0,
        }
    }
}

/// What the header between frame length and MTI is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderKind {
    /// No header.
    None,
    /// A 5-byte TPDU: 0x60, destination (2 bytes), source (2 bytes).
    Tpdu,
    /// TPDU followed by the CUPS 6-byte POS application header (11 bytes).
    TpduCupsPos,
    /// The 46-byte CUPS host header.
    CupsHost,
    /// Opaque bytes of the spec's `header.length`.
    Raw,
}

/// Transport settings of a dialect, for the framing layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FramingSpec {
    /// The frame length prefix.
    pub length: FrameLength,
    /// Largest frame accepted or produced (without the length prefix).
    pub max_frame_bytes: usize,
}

/// The header between the frame length and the MTI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderSpec {
    /// What it is.
    pub kind: HeaderKind,
    /// Its length in bytes.
    pub length: usize,
}

/// Where the MAC lives and what it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MacSpec {
    /// The MAC field (64 or 128).
    pub field: u16,
    /// The covered range starts at the header (true) or at the MTI (false); it always ends just
    /// before the MAC field.
    pub from_header: bool,
}

/// A compiled dialect.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Dialect name (`cups-pos`).
    pub name: String,
    /// Where it was loaded from (`builtin:cups-pos` or a path).
    pub source: String,
    /// Free text.
    pub description: String,
    /// Header before the MTI.
    pub header: HeaderSpec,
    /// Transport framing.
    pub framing: FramingSpec,
    /// MTI encoding.
    pub mti: MtiEncoding,
    /// Bitmap encoding.
    pub bitmap: BitmapEncoding,
    /// Number of bitmaps the dialect allows (1 to 3).
    pub max_bitmaps: u8,
    /// MAC placement, if the dialect has one.
    pub mac: Option<MacSpec>,
    /// Code page of EBCDIC data.
    pub code_page: CodePage,
    /// Field definitions indexed by number (index 0 and 1 unused).
    fields: Vec<Option<FieldDef>>,
}

impl Spec {
    /// Names of the built-in dialects.
    pub fn builtin_names() -> impl Iterator<Item = &'static str> {
        BUILTIN.iter().map(|(name, _)| *name)
    }

    /// Loads a built-in dialect by name.
    pub fn builtin(name: &str) -> Result<Spec, SpecError> {
        let (_, text) = BUILTIN
            .iter()
            .find(|(n, _)| *n == name)
            .ok_or_else(|| SpecError::Unknown(name.to_owned(), Self::builtin_list()))?;
        Spec::from_toml_str(&format!("builtin:{name}"), text)
    }

    /// Loads a dialect from a TOML file.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Spec, SpecError> {
        let path = path.as_ref();
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Io {
            file: file.clone(),
            source,
        })?;
        Spec::from_toml_str(&file, &text)
    }

    /// Loads a built-in dialect if `name_or_path` names one, otherwise the file at that path.
    pub fn load(name_or_path: &str) -> Result<Spec, SpecError> {
        if BUILTIN.iter().any(|(n, _)| *n == name_or_path) {
            return Spec::builtin(name_or_path);
        }
        let path = Path::new(name_or_path);
        if path.exists() {
            Spec::from_path(path)
        } else {
            Err(SpecError::Unknown(
                name_or_path.to_owned(),
                Self::builtin_list(),
            ))
        }
    }

    fn builtin_list() -> String {
        Self::builtin_names().collect::<Vec<_>>().join(", ")
    }

    /// Parses and validates a dialect from TOML text; `file` names it in errors.
    pub fn from_toml_str(file: &str, text: &str) -> Result<Spec, SpecError> {
        let raw: RawSpec = toml::from_str(text).map_err(|e| SpecError::Syntax {
            file: file.to_owned(),
            message: e.to_string(),
        })?;
        compile(file, raw)
    }

    /// The definition of a field, if the dialect has it.
    #[inline]
    pub fn field(&self, number: u16) -> Option<&FieldDef> {
        self.fields
            .get(usize::from(number))
            .and_then(Option::as_ref)
    }

    /// All defined fields in ascending order.
    pub fn fields(&self) -> impl Iterator<Item = &FieldDef> {
        self.fields.iter().flatten()
    }

    /// True when `field` is a bitmap-announcing bit rather than a data element (1, and 65 when
    /// the dialect has a tertiary bitmap).
    #[inline]
    pub fn is_bitmap_bit(&self, field: u16) -> bool {
        field == 1 || (field == 65 && self.max_bitmaps == 3)
    }
}

// ---------------------------------------------------------------------------------------------
// The TOML shape. Enum-like settings are strings here so that a bad value is reported with the
// file, field and key rather than as a serde variant error.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    name: String,
    #[serde(default)]
    description: String,
    ebcdic_code_page: Option<String>,
    framing: RawFraming,
    #[serde(default)]
    header: RawHeader,
    mti: RawMti,
    bitmap: RawBitmap,
    mac: Option<RawMac>,
    fields: BTreeMap<String, RawField>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFraming {
    length_prefix: String,
    max_frame_bytes: Option<usize>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHeader {
    kind: Option<String>,
    length: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMti {
    encoding: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBitmap {
    encoding: String,
    max_bitmaps: u8,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMac {
    field: u16,
    covers_from: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawField {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    data: String,
    length: Option<i64>,
    max: Option<i64>,
    length_encoding: Option<String>,
    length_counts: Option<String>,
    align: Option<String>,
    pad: Option<String>,
    charset: Option<String>,
    sensitive: Option<String>,
    #[serde(default)]
    sensitive_in_mti: Vec<String>,
    subfields: Option<String>,
    #[serde(default)]
    parts: Vec<RawPart>,
    tlv_tag_bytes: Option<u8>,
    tlv_tag_encoding: Option<String>,
    tlv_length_bytes: Option<u8>,
    tlv_length_encoding: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPart {
    name: String,
    length: i64,
}

/// Builds `SpecError::Invalid` for one file.
struct Ctx<'f> {
    file: &'f str,
}

impl Ctx<'_> {
    fn err(&self, field: Option<u16>, key: &str, reason: impl Into<String>) -> SpecError {
        SpecError::Invalid {
            file: self.file.to_owned(),
            field,
            key: key.to_owned(),
            reason: reason.into(),
        }
    }
}

fn compile(file: &str, raw: RawSpec) -> Result<Spec, SpecError> {
    let ctx = Ctx { file };
    let code_page = match raw.ebcdic_code_page.as_deref() {
        None => CodePage::Cp500,
        Some(name) => CodePage::from_name(name).ok_or_else(|| {
            ctx.err(
                None,
                "ebcdic_code_page",
                format!("unknown code page `{name}` (cp500, cp1047)"),
            )
        })?,
    };
    let framing = compile_framing(&ctx, &raw.framing)?;
    let header = compile_header(&ctx, &raw.header)?;
    let mti = match raw.mti.encoding.as_str() {
        "ascii" => MtiEncoding::Ascii,
        "ebcdic" => MtiEncoding::Ebcdic,
        "bcd" => MtiEncoding::Bcd,
        other => {
            return Err(ctx.err(
                None,
                "mti.encoding",
                format!("unknown encoding `{other}` (ascii, ebcdic, bcd)"),
            ));
        }
    };
    let bitmap = match raw.bitmap.encoding.as_str() {
        "binary" => BitmapEncoding::Binary,
        "hex" => BitmapEncoding::Hex,
        other => {
            return Err(ctx.err(
                None,
                "bitmap.encoding",
                format!("unknown encoding `{other}` (binary, hex)"),
            ));
        }
    };
    if !(1..=3).contains(&raw.bitmap.max_bitmaps) {
        return Err(ctx.err(None, "bitmap.max_bitmaps", "must be 1, 2 or 3"));
    }
    let max_bitmaps = raw.bitmap.max_bitmaps;
    let highest = u16::from(max_bitmaps) * 64;

    let mut fields: Vec<Option<FieldDef>> = vec![None; usize::from(MAX_FIELD) + 1];
    for (key, raw_field) in &raw.fields {
        let number: u16 = key
            .parse()
            .ok()
            .filter(|n| (2..=MAX_FIELD).contains(n))
            .ok_or_else(|| ctx.err(None, &format!("fields.{key}"), "field numbers are 2 to 192"))?;
        if number > highest {
            return Err(ctx.err(
                Some(number),
                "bitmap.max_bitmaps",
                format!("field {number} needs more than {max_bitmaps} bitmap(s)"),
            ));
        }
        if number == 65 && max_bitmaps == 3 {
            return Err(ctx.err(
                Some(65),
                "fields.65",
                "bit 65 announces the tertiary bitmap in this dialect",
            ));
        }
        let def = compile_field(&ctx, number, raw_field)?;
        if let Some(slot) = fields.get_mut(usize::from(number)) {
            *slot = Some(def);
        }
    }

    let mac = match &raw.mac {
        None => None,
        Some(m) => {
            let def = fields
                .get(usize::from(m.field))
                .and_then(Option::as_ref)
                .ok_or_else(|| {
                    ctx.err(
                        None,
                        "mac.field",
                        format!("field {} is not defined", m.field),
                    )
                })?;
            if !def.is_fixed() {
                return Err(ctx.err(
                    Some(m.field),
                    "mac.field",
                    "the MAC field must be fixed length",
                ));
            }
            let from_header = match m.covers_from.as_deref() {
                None | Some("mti") => false,
                Some("header") => true,
                Some(other) => {
                    return Err(ctx.err(
                        None,
                        "mac.covers_from",
                        format!("unknown start `{other}` (mti, header)"),
                    ));
                }
            };
            Some(MacSpec {
                field: m.field,
                from_header,
            })
        }
    };

    Ok(Spec {
        name: raw.name,
        source: file.to_owned(),
        description: raw.description,
        header,
        framing,
        mti,
        bitmap,
        max_bitmaps,
        mac,
        code_page,
        fields,
    })
}

fn compile_framing(ctx: &Ctx<'_>, raw: &RawFraming) -> Result<FramingSpec, SpecError> {
    let length = match raw.length_prefix.as_str() {
        "binary2" => FrameLength::Binary2,
        "bcd2" => FrameLength::Bcd2,
        "ascii4" => FrameLength::Ascii4,
        "etx" => FrameLength::Etx,
        "none" => FrameLength::None,
        other => {
            return Err(ctx.err(
                None,
                "framing.length_prefix",
                format!("unknown prefix `{other}` (binary2, bcd2, ascii4, etx, none)"),
            ));
        }
    };
    let limit = match length {
        FrameLength::Binary2 => 65_535,
        FrameLength::Bcd2 | FrameLength::Ascii4 => 9_999,
        // Decoded messages keep 16-bit offsets; no ISO 8583 link needs more.
        FrameLength::Etx | FrameLength::None => 65_535,
    };
    let max_frame_bytes = raw.max_frame_bytes.unwrap_or(limit);
    if max_frame_bytes == 0 || max_frame_bytes > limit {
        return Err(ctx.err(
            None,
            "framing.max_frame_bytes",
            format!("must be 1 to {limit} for a `{}` prefix", raw.length_prefix),
        ));
    }
    Ok(FramingSpec {
        length,
        max_frame_bytes,
    })
}

fn compile_header(ctx: &Ctx<'_>, raw: &RawHeader) -> Result<HeaderSpec, SpecError> {
    let kind = match raw.kind.as_deref() {
        None | Some("none") => HeaderKind::None,
        Some("tpdu") => HeaderKind::Tpdu,
        Some("tpdu-cups-pos") => HeaderKind::TpduCupsPos,
        Some("cups-host") => HeaderKind::CupsHost,
        Some("raw") => HeaderKind::Raw,
        Some(other) => {
            return Err(ctx.err(
                None,
                "header.kind",
                format!("unknown header `{other}` (none, tpdu, tpdu-cups-pos, cups-host, raw)"),
            ));
        }
    };
    let natural = match kind {
        HeaderKind::None => Some(0),
        HeaderKind::Tpdu => Some(5),
        HeaderKind::TpduCupsPos => Some(11),
        HeaderKind::CupsHost => Some(46),
        HeaderKind::Raw => None,
    };
    let length = match (natural, raw.length) {
        (Some(n), None) => n,
        (Some(n), Some(l)) if n == l => l,
        (Some(n), Some(l)) => {
            return Err(ctx.err(
                None,
                "header.length",
                format!("a header of this kind is {n} bytes, not {l}"),
            ));
        }
        (None, Some(l)) if (1..=256).contains(&l) => l,
        (None, _) => {
            return Err(ctx.err(
                None,
                "header.length",
                "a raw header needs a length of 1 to 256",
            ));
        }
    };
    Ok(HeaderSpec { kind, length })
}

fn number_encoding(
    ctx: &Ctx<'_>,
    field: u16,
    key: &str,
    value: &str,
) -> Result<NumberEncoding, SpecError> {
    match value {
        "ascii" => Ok(NumberEncoding::Ascii),
        "ebcdic" => Ok(NumberEncoding::Ebcdic),
        "bcd" => Ok(NumberEncoding::Bcd),
        "binary" => Ok(NumberEncoding::Binary),
        other => Err(ctx.err(
            Some(field),
            key,
            format!("unknown encoding `{other}` (ascii, ebcdic, bcd, binary)"),
        )),
    }
}

fn compile_field(ctx: &Ctx<'_>, n: u16, raw: &RawField) -> Result<FieldDef, SpecError> {
    let err = |key: &str, reason: String| ctx.err(Some(n), key, reason);
    let data = match raw.data.as_str() {
        "ascii" => DataEncoding::Ascii,
        "ebcdic" => DataEncoding::Ebcdic,
        "bcd" => DataEncoding::Bcd,
        "binary" => DataEncoding::Binary,
        "hex" => DataEncoding::Hex,
        other => {
            return Err(err(
                "data",
                format!("unknown encoding `{other}` (ascii, ebcdic, bcd, binary, hex)"),
            ));
        }
    };
    let prefix_digits = match raw.kind.as_str() {
        "fixed" => None,
        "llvar" => Some(2u8),
        "lllvar" => Some(3),
        "llllvar" => Some(4),
        other => {
            return Err(err(
                "type",
                format!("unknown type `{other}` (fixed, llvar, lllvar, llllvar)"),
            ));
        }
    };
    let prefix = match (prefix_digits, raw.length_encoding.as_deref()) {
        (None, None) => None,
        (None, Some(_)) => {
            return Err(err(
                "length_encoding",
                "a fixed field has no length prefix".into(),
            ));
        }
        (Some(_), None) => {
            return Err(err(
                "length_encoding",
                "a variable field needs its prefix encoding".into(),
            ));
        }
        (Some(d), Some(e)) => Some(LengthPrefix::new(
            d,
            number_encoding(ctx, n, "length_encoding", e)?,
        )),
    };
    let counts = match raw.length_counts.as_deref() {
        Some("bytes") => LengthUnit::Bytes,
        Some("digits") => LengthUnit::Digits,
        Some(other) => {
            return Err(err(
                "length_counts",
                format!("unknown unit `{other}` (bytes, digits)"),
            ));
        }
        None if data == DataEncoding::Bcd => {
            return Err(err(
                "length_counts",
                "BCD fields must say whether lengths count bytes or digits".into(),
            ));
        }
        None => LengthUnit::Bytes,
    };
    let max = match (&prefix, raw.length, raw.max) {
        (None, Some(l), None) if l > 0 => l,
        (None, Some(_), None) => {
            return Err(err(
                "length",
                "a fixed field needs a length of at least 1".into(),
            ));
        }
        (None, None, _) => return Err(err("length", "a fixed field needs `length`".into())),
        (None, Some(_), Some(_)) => {
            return Err(err("max", "a fixed field has `length`, not `max`".into()));
        }
        (Some(_), _, Some(m)) if m > 0 && raw.length.is_none() => m,
        (Some(_), Some(_), _) => {
            return Err(err(
                "length",
                "a variable field has `max`, not `length`".into(),
            ));
        }
        (Some(_), None, _) => {
            return Err(err(
                "max",
                "a variable field needs a `max` of at least 1".into(),
            ));
        }
    };
    let max = usize::try_from(max).map_err(|_| err("max", "length out of range".into()))?;
    if let Some(p) = prefix.as_ref().filter(|p| max > p.capacity) {
        return Err(err(
            "max",
            format!(
                "{max} exceeds what a {}-digit {} prefix can express ({})",
                p.digits,
                p.encoding.name(),
                p.capacity
            ),
        ));
    }
    if max > 65_535 {
        return Err(err(
            if prefix.is_none() { "length" } else { "max" },
            "lengths are limited to 65535".into(),
        ));
    }
    let (align, pad) = compile_bcd_layout(ctx, n, raw, data)?;
    let charset = match raw.charset.as_deref() {
        None => match data {
            DataEncoding::Bcd => Charset::Numeric,
            _ => Charset::Any,
        },
        Some("n") => Charset::Numeric,
        Some("z") => Charset::Track2,
        Some("a" | "an" | "ans" | "ns" | "anp" | "as" | "x+n" | "b") => Charset::Any,
        Some(other) => {
            return Err(err(
                "charset",
                format!("unknown charset `{other}` (n, z, a, an, ans, ns, anp, x+n, b)"),
            ));
        }
    };
    if data == DataEncoding::Bcd && charset == Charset::Any {
        return Err(err(
            "charset",
            "BCD data carries digits (`n`) or track 2 (`z`) only".into(),
        ));
    }
    let def = FieldDef {
        number: n,
        name: raw.name.clone(),
        data,
        prefix,
        counts,
        max,
        align,
        pad,
        charset,
        sensitive: compile_sensitive(ctx, n, raw)?,
        sensitive_mti: compile_sensitive_mti(ctx, n, raw)?,
        subfields: None,
        units_up: u8::from(matches!(
            (data, counts),
            (DataEncoding::Binary, LengthUnit::Digits) | (DataEncoding::Hex, _)
        )),
        units_down: u8::from((data, counts) == (DataEncoding::Bcd, LengthUnit::Bytes)),
        wire_round: u8::from((data, counts) == (DataEncoding::Bcd, LengthUnit::Digits)),
        wire_down: u8::from(matches!(
            (data, counts),
            (DataEncoding::Bcd | DataEncoding::Binary, LengthUnit::Digits)
        )),
        even_units: matches!(
            (data, counts),
            (DataEncoding::Binary, LengthUnit::Digits) | (DataEncoding::Hex, _)
        ),
    };
    // A length that can never describe whole bytes is a contradiction, caught here, not on the wire.
    if let (true, Err(why)) = (def.is_fixed(), def.wire_len(max)) {
        return Err(err("length", why.into()));
    }
    let subfields = compile_subfields(ctx, &def, raw)?;
    Ok(FieldDef { subfields, ..def })
}

fn compile_bcd_layout(
    ctx: &Ctx<'_>,
    n: u16,
    raw: &RawField,
    data: DataEncoding,
) -> Result<(Align, u8), SpecError> {
    let err = |key: &str, reason: &str| ctx.err(Some(n), key, reason);
    if data != DataEncoding::Bcd {
        if raw.align.is_some() {
            return Err(err("align", "only BCD fields have an alignment"));
        }
        if raw.pad.is_some() {
            return Err(err("pad", "only BCD fields have a pad nibble"));
        }
        return Ok((Align::Right, 0));
    }
    let align = match raw.align.as_deref() {
        Some("left") => Align::Left,
        Some("right") => Align::Right,
        Some(_) => {
            return Err(err(
                "align",
                "must be `left` (pad at the end) or `right` (pad at the start)",
            ));
        }
        None => {
            return Err(err(
                "align",
                "BCD fields must state their alignment (left or right)",
            ));
        }
    };
    let pad = match raw.pad.as_deref() {
        Some("0") => 0,
        Some("F" | "f") => 0xF,
        Some(_) => return Err(err("pad", "must be \"0\" or \"F\"")),
        None => {
            return Err(err(
                "pad",
                "BCD fields must state their pad nibble (\"0\" or \"F\")",
            ));
        }
    };
    Ok((align, pad))
}

fn compile_sensitive(
    ctx: &Ctx<'_>,
    n: u16,
    raw: &RawField,
) -> Result<Option<Sensitivity>, SpecError> {
    Ok(match raw.sensitive.as_deref() {
        None => None,
        Some("pan") => Some(Sensitivity::Pan),
        Some("track") => Some(Sensitivity::Track),
        Some("pin") => Some(Sensitivity::Pin),
        Some("mac") => Some(Sensitivity::Mac),
        Some("key") => Some(Sensitivity::Key),
        Some("card") => Some(Sensitivity::Card),
        Some(other) => {
            return Err(ctx.err(
                Some(n),
                "sensitive",
                format!("unknown kind `{other}` (pan, track, pin, mac, key, card)"),
            ));
        }
    })
}

fn compile_sensitive_mti(ctx: &Ctx<'_>, n: u16, raw: &RawField) -> Result<Vec<[u8; 4]>, SpecError> {
    if !raw.sensitive_in_mti.is_empty() && raw.sensitive.is_none() {
        return Err(ctx.err(Some(n), "sensitive_in_mti", "needs `sensitive`"));
    }
    raw.sensitive_in_mti
        .iter()
        .map(|m| {
            <[u8; 4]>::try_from(m.as_bytes())
                .ok()
                .filter(|b| b.iter().all(u8::is_ascii_digit))
                .ok_or_else(|| {
                    ctx.err(
                        Some(n),
                        "sensitive_in_mti",
                        format!("`{m}` is not a four-digit MTI"),
                    )
                })
        })
        .collect()
}

fn compile_subfields(
    ctx: &Ctx<'_>,
    def: &FieldDef,
    raw: &RawField,
) -> Result<Option<Subfields>, SpecError> {
    let n = def.number;
    let err = |key: &str, reason: String| ctx.err(Some(n), key, reason);
    let tlv_keys = raw.tlv_tag_bytes.is_some()
        || raw.tlv_tag_encoding.is_some()
        || raw.tlv_length_bytes.is_some()
        || raw.tlv_length_encoding.is_some();
    let layout = match raw.subfields.as_deref() {
        None => {
            if !raw.parts.is_empty() {
                return Err(err("parts", "needs `subfields = \"positional\"`".into()));
            }
            if tlv_keys {
                return Err(err(
                    "subfields",
                    "TLV settings need `subfields = \"simple-tlv\"`".into(),
                ));
            }
            return Ok(None);
        }
        Some(l) => l,
    };
    if layout != "positional" && !raw.parts.is_empty() {
        return Err(err("parts", "only positional sub-fields have parts".into()));
    }
    if layout != "simple-tlv" && tlv_keys {
        return Err(err(
            "subfields",
            "TLV settings only apply to `simple-tlv`".into(),
        ));
    }
    match layout {
        "positional" => {
            if raw.parts.is_empty() {
                return Err(err(
                    "parts",
                    "positional sub-fields need at least one part".into(),
                ));
            }
            let mut parts = Vec::with_capacity(raw.parts.len());
            let mut total = 0usize;
            for (i, p) in raw.parts.iter().enumerate() {
                let length = usize::try_from(p.length)
                    .ok()
                    .filter(|l| *l > 0)
                    .ok_or_else(|| {
                        err(&format!("parts[{i}].length"), "must be at least 1".into())
                    })?;
                total += length;
                parts.push(Part {
                    name: p.name.clone(),
                    length,
                });
            }
            let capacity = def.value_len_of_units(def.max);
            if total > capacity {
                return Err(err(
                    "parts",
                    format!("parts add up to {total}, more than the field holds ({capacity})"),
                ));
            }
            Ok(Some(Subfields::Positional(parts)))
        }
        "ber-tlv" | "simple-tlv" => {
            if !matches!(
                def.data,
                DataEncoding::Binary | DataEncoding::Ascii | DataEncoding::Hex
            ) {
                return Err(err(
                    "subfields",
                    "TLV sub-fields need binary, ascii or hex data".into(),
                ));
            }
            if layout == "ber-tlv" {
                return Ok(Some(Subfields::BerTlv));
            }
            let tag_bytes = raw.tlv_tag_bytes.unwrap_or(0);
            if !(1..=4).contains(&tag_bytes) {
                return Err(err(
                    "tlv_tag_bytes",
                    "simple TLV needs a tag width of 1 to 4 bytes".into(),
                ));
            }
            let tag_ascii = match raw.tlv_tag_encoding.as_deref() {
                Some("ascii") => true,
                Some("binary") => false,
                _ => {
                    return Err(err(
                        "tlv_tag_encoding",
                        "must be `ascii` or `binary`".into(),
                    ));
                }
            };
            let length_bytes = raw.tlv_length_bytes.unwrap_or(0);
            if !(1..=4).contains(&length_bytes) {
                return Err(err(
                    "tlv_length_bytes",
                    "simple TLV needs a length width of 1 to 4 bytes".into(),
                ));
            }
            let length_encoding = match raw.tlv_length_encoding.as_deref() {
                Some(e) => number_encoding(ctx, n, "tlv_length_encoding", e)?,
                None => {
                    return Err(err(
                        "tlv_length_encoding",
                        "simple TLV needs its length encoding".into(),
                    ));
                }
            };
            Ok(Some(Subfields::SimpleTlv(SimpleTlv {
                tag_bytes,
                tag_ascii,
                length_bytes,
                length_encoding,
            })))
        }
        other => Err(err(
            "subfields",
            format!("unknown layout `{other}` (positional, ber-tlv, simple-tlv)"),
        )),
    }
}
