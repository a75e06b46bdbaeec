//! EMVCo merchant-presented QR payloads (MPM): ID, length, value; CRC-16/CCITT-FALSE in tag 63.
//!
//! The payload is a flat list of data objects `ID (2 digits) LEN (2 digits) VALUE`, where LEN counts
//! **characters**, not bytes (the alternate-language template 64 carries UTF-8 text such as a
//! Chinese merchant name). Some IDs hold templates, which nest with the same rule:
//!
//! | where | IDs holding a template |
//! |---|---|
//! | root | 26-51 merchant account information, 62 additional data, 64 language, 80-99 unreserved |
//! | inside 62 | 50-99 payment-system-specific templates |
//!
//! 00 (payload format indicator, "01") comes first and 63 (CRC) last; the CRC is
//! CRC-16/CCITT-FALSE over the UTF-8 bytes of everything up to and including "6304", written as
//! four uppercase hex digits (lowercase is accepted when reading).
//!
//! This module has three layers:
//! - the generic tree ([`Field`], [`Value`], [`Payload`]): [`Payload::parse`] accepts any valid MPM
//!   payload and keeps unknown IDs in order, [`Payload::from_fields`] builds any tree and
//!   [`Payload::encode`] writes it with its CRC; parse then encode gives the identical string
//!   (apart from the case of the CRC's hex digits);
//! - typed accessors on [`Payload`] (point of initiation, merchant accounts, MCC, currency,
//!   amount in minor units, names, additional data, language template, unreserved templates);
//! - posbridge's own payloads: [`StaticCode`] (01 = 11) and [`Order`] (01 = 12), with a signature
//!   over the order computed by the security module.
//!
//! # posbridge's dynamic payload
//!
//! | ID | content |
//! |---|---|
//! | 00 | `01` |
//! | 01 | `12` (dynamic: one order, one payment) |
//! | 26 | merchant account template: 00 = posbridge's globally unique identifier (GUI, default [`POSBRIDGE_GUI`]), 01 = merchant ID (MID, ISO 8583 field 42, 15 characters) |
//! | 52 | merchant category code |
//! | 53 | currency, ISO 4217 numeric |
//! | 54 | amount, written from minor units with the currency's exponent |
//! | 58, 59, 60 | country, merchant name (<= 25), city (<= 15) |
//! | 62 | additional data: 05 = one-time reference (>= 96 random bits), 07 = terminal label |
//! | 64 | optional: merchant name and city in another language (UTF-8) |
//! | 80 | posbridge order template, below |
//! | 81 | posbridge signature template, below |
//! | 63 | CRC |
//!
//! Template 80, the order (every sub-field mandatory):
//!
//! | sub-ID | content | format |
//! |---|---|---|
//! | 00 | GUI, the same as in 26 | ans ..32 |
//! | 01 | terminal ID (TID, ISO 8583 field 41) | ans 8 |
//! | 02 | batch number | n 6 |
//! | 03 | voucher (trace) number | n 6 |
//! | 04 | operator (cashier) number | ans 1..6 |
//! | 05 | acquirer institution ID (ISO 8583 field 32) | n 1..11 |
//! | 06 | transaction type | n 2 |
//! | 07 | expiry, UTC `YYMMDDhhmmss` | n 12 |
//!
//! Template 81, the signature:
//!
//! | sub-ID | content | format |
//! |---|---|---|
//! | 00 | GUI, the same as in 26 | ans ..32 |
//! | 01 | optional key identifier (which key signed) | ans 1..8 |
//! | 02 | signature, uppercase hex | 8..64 hex digits (4..32 bytes) |
//!
//! The EMVCo 99-character limit on a template is why the signature has a template of its own.
//!
//! The signature input ([`SIGNING_CONTEXT`] followed by the payload's data objects except 81 and
//! 63, see [`UnsignedOrder::signing_input`]) covers the amount, currency, merchant, reference and
//! every order field. The CRC is not security: anyone can change tag 54 and recompute it; the
//! signature, checked with [`verify_order`], is what catches that.

use std::fmt;

use crc::{CRC_16_IBM_3740, Crc};
use serde::ser::{Serialize, SerializeMap, Serializer};

/// The longest payload EMVCo allows, in characters.
pub const MAX_PAYLOAD_CHARS: usize = 512;
/// The longest value of one data object, in characters (the length field has two digits).
pub const MAX_VALUE_CHARS: usize = 99;
/// posbridge's default globally unique identifier, a reverse-DNS name as EMVCo suggests.
pub const POSBRIDGE_GUI: &str = "COM.POSBRIDGE";
/// The root ID of posbridge's order template.
pub const ORDER_TEMPLATE: Id = Id(80);
/// The root ID of posbridge's signature template.
pub const SIGNATURE_TEMPLATE: Id = Id(81);
/// Bytes that start every order signature input, so a signature made for a QR order can never be
/// replayed as a signature over anything else the same key signs.
pub const SIGNING_CONTEXT: &[u8] = b"posbridge/emv-mpm-order/v1\n";

/// CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, no final XOR).
const CRC16: Crc<u16> = Crc::<u16>::new(&CRC_16_IBM_3740);

/// CRC-16/CCITT-FALSE of `data`, the checksum EMVCo puts in tag 63.
pub fn crc16(data: &[u8]) -> u16 {
    CRC16.checksum(data)
}

// ------------------------------------------------------------------------------------------------
// Errors
// ------------------------------------------------------------------------------------------------

/// Why a payload (or the tree given to the builder) is not a valid EMV MPM payload.
///
/// Paths name a data object by its IDs from the root, e.g. `62.05`; offsets count characters from
/// the start of the payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QrError {
    /// Nothing to parse.
    #[error("payload is empty")]
    Empty,
    /// More characters than EMVCo allows.
    #[error("payload is {chars} characters; EMV MPM allows at most {max}")]
    TooLong {
        /// Characters in the payload.
        chars: usize,
        /// The limit.
        max: usize,
    },
    /// The ID-length-value structure is broken.
    #[error("at character {offset}: {problem}")]
    Syntax {
        /// Character offset of the problem.
        offset: usize,
        /// What is wrong.
        problem: String,
    },
    /// The same ID twice in one template (or twice at the root).
    #[error("data object {path} appears more than once")]
    Duplicate {
        /// Path of the repeated data object.
        path: String,
    },
    /// A mandatory data object is absent.
    #[error("{what} (ID {path}) is missing")]
    Missing {
        /// Path of the absent data object.
        path: String,
        /// Its name.
        what: &'static str,
    },
    /// Data objects in an order EMVCo forbids (00 not first, 63 not last).
    #[error("{0}")]
    Placement(&'static str),
    /// The CRC in tag 63 does not match the payload.
    #[error("CRC mismatch: tag 63 says {stated}, the payload computes to {computed}")]
    CrcMismatch {
        /// The CRC written in the payload.
        stated: String,
        /// The CRC computed over the payload.
        computed: String,
    },
    /// A data object's value breaks its format.
    #[error("data object {path} ({name}): {problem}")]
    Invalid {
        /// Path of the data object.
        path: String,
        /// Its name.
        name: &'static str,
        /// What is wrong.
        problem: String,
    },
}

fn invalid(path: impl fmt::Display, name: &'static str, problem: impl Into<String>) -> QrError {
    QrError::Invalid {
        path: path.to_string(),
        name,
        problem: problem.into(),
    }
}

// ------------------------------------------------------------------------------------------------
// The generic tree
// ------------------------------------------------------------------------------------------------

/// A data object ID, 00 to 99.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id(u8);

impl Id {
    /// Payload format indicator ("01").
    pub const PAYLOAD_FORMAT: Id = Id(0);
    /// Point of initiation method (11 static, 12 dynamic).
    pub const POINT_OF_INITIATION: Id = Id(1);
    /// Merchant category code.
    pub const MCC: Id = Id(52);
    /// Transaction currency, ISO 4217 numeric.
    pub const CURRENCY: Id = Id(53);
    /// Transaction amount.
    pub const AMOUNT: Id = Id(54);
    /// Tip or convenience indicator.
    pub const TIP_INDICATOR: Id = Id(55);
    /// Value of convenience fee, fixed.
    pub const FEE_FIXED: Id = Id(56);
    /// Value of convenience fee, percentage.
    pub const FEE_PERCENTAGE: Id = Id(57);
    /// Country code, ISO 3166-1 alpha-2.
    pub const COUNTRY: Id = Id(58);
    /// Merchant name.
    pub const MERCHANT_NAME: Id = Id(59);
    /// Merchant city.
    pub const MERCHANT_CITY: Id = Id(60);
    /// Postal code.
    pub const POSTAL_CODE: Id = Id(61);
    /// Additional data field template.
    pub const ADDITIONAL_DATA: Id = Id(62);
    /// CRC.
    pub const CRC: Id = Id(63);
    /// Merchant information, language template.
    pub const LANGUAGE: Id = Id(64);
    /// Sub-ID 00 of merchant account and unreserved templates: the globally unique identifier.
    pub const GUI: Id = Id(0);

    /// The ID `n`, or `None` when `n` > 99.
    pub const fn new(n: u8) -> Option<Id> {
        if n <= 99 { Some(Id(n)) } else { None }
    }

    /// The ID as a number.
    pub const fn value(self) -> u8 {
        self.0
    }

    /// Whether a data object with this ID inside `parent` holds a template: `None` is the root,
    /// `Some(id)` the template `id` at the root (a template two levels down holds no templates).
    pub fn is_template_in(self, parent: Option<Id>) -> bool {
        match parent {
            None => matches!(self.0, 26..=51 | 62 | 64 | 80..=99),
            Some(Id(62)) => matches!(self.0, 50..=99),
            Some(_) => false,
        }
    }

    fn from_digits(text: &str) -> Option<Id> {
        two_digits(text).map(Id)
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}", self.0)
    }
}

/// The value of a data object: text, or a nested list of data objects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// A primitive value.
    Text(String),
    /// A template: data objects in payload order.
    Template(Vec<Field>),
}

impl Value {
    /// The text, when this is a primitive value.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Value::Text(text) => Some(text),
            Value::Template(_) => None,
        }
    }

    /// The data objects, when this is a template.
    pub fn as_template(&self) -> Option<&[Field]> {
        match self {
            Value::Text(_) => None,
            Value::Template(fields) => Some(fields),
        }
    }
}

/// One data object: an ID and its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    /// The ID.
    pub id: Id,
    /// The value.
    pub value: Value,
}

impl Field {
    /// A primitive data object.
    pub fn text(id: Id, text: impl Into<String>) -> Field {
        Field {
            id,
            value: Value::Text(text.into()),
        }
    }

    /// A template data object.
    pub fn template(id: Id, fields: Vec<Field>) -> Field {
        Field {
            id,
            value: Value::Template(fields),
        }
    }
}

/// Finds the data object `id` in a list of data objects.
pub fn find(fields: &[Field], id: Id) -> Option<&Value> {
    fields
        .iter()
        .find(|field| field.id == id)
        .map(|field| &field.value)
}

/// Finds the text of the primitive data object `id` in a list of data objects.
pub fn find_text(fields: &[Field], id: Id) -> Option<&str> {
    find(fields, id).and_then(Value::as_text)
}

/// Writes data objects as ID, length (characters) and value.
pub fn encode_fields(fields: &[Field]) -> String {
    let mut out = String::new();
    write_fields(&mut out, fields);
    out
}

fn write_fields(out: &mut String, fields: &[Field]) {
    for field in fields {
        match &field.value {
            Value::Text(text) => write_one(out, field.id, text),
            Value::Template(children) => write_one(out, field.id, &encode_fields(children)),
        }
    }
}

fn write_one(out: &mut String, id: Id, value: &str) {
    use fmt::Write as _;
    // Writing to a String cannot fail.
    let _ = write!(out, "{id}{:02}{value}", value.chars().count());
}

// ------------------------------------------------------------------------------------------------
// Parsing
// ------------------------------------------------------------------------------------------------

/// A cursor over a string that counts characters, so lengths are characters and offsets are
/// reported as characters too.
struct Reader<'a> {
    rest: &'a str,
    offset: usize,
}

impl<'a> Reader<'a> {
    fn new(text: &'a str, offset: usize) -> Self {
        Reader { rest: text, offset }
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// The next `n` characters, or `None` (and nothing consumed) if fewer remain.
    fn take(&mut self, n: usize) -> Option<&'a str> {
        let mut end = 0;
        let mut count = 0;
        for c in self.rest.chars() {
            if count == n {
                break;
            }
            end += c.len_utf8();
            count += 1;
        }
        if count < n {
            return None;
        }
        let (taken, rest) = self.rest.split_at_checked(end)?;
        self.rest = rest;
        self.offset += n;
        Some(taken)
    }

    fn remaining_chars(&self) -> usize {
        self.rest.chars().count()
    }
}

fn two_digits(text: &str) -> Option<u8> {
    match text.as_bytes() {
        [a @ b'0'..=b'9', b @ b'0'..=b'9'] => Some((a - b'0') * 10 + (b - b'0')),
        _ => None,
    }
}

/// One data object as read, before its value is interpreted.
struct RawField<'a> {
    id: Id,
    value: &'a str,
    /// Character offset of the value in the whole payload.
    value_offset: usize,
}

fn child_path(parent: &str, id: Id) -> String {
    if parent.is_empty() {
        id.to_string()
    } else {
        format!("{parent}.{id}")
    }
}

/// Splits `text` into data objects without interpreting values.
fn split_fields<'a>(
    text: &'a str,
    offset: usize,
    path: &str,
) -> Result<Vec<RawField<'a>>, QrError> {
    let mut reader = Reader::new(text, offset);
    let mut fields: Vec<RawField<'a>> = Vec::new();
    while !reader.is_empty() {
        let start = reader.offset;
        let where_ = if path.is_empty() {
            String::new()
        } else {
            format!(" in {path}")
        };
        let Some(id_text) = reader.take(2) else {
            return Err(QrError::Syntax {
                offset: start,
                problem: format!("truncated data object{where_}: an ID needs 2 characters"),
            });
        };
        let Some(id) = Id::from_digits(id_text) else {
            return Err(QrError::Syntax {
                offset: start,
                problem: format!("data object ID{where_} must be two digits, found {id_text:?}"),
            });
        };
        let this = child_path(path, id);
        let Some(length_text) = reader.take(2) else {
            return Err(QrError::Syntax {
                offset: start + 2,
                problem: format!("data object {this} is truncated: its length needs 2 digits"),
            });
        };
        let Some(length) = two_digits(length_text) else {
            return Err(QrError::Syntax {
                offset: start + 2,
                problem: format!(
                    "length of data object {this} must be two digits, found {length_text:?}"
                ),
            });
        };
        if length == 0 {
            return Err(QrError::Syntax {
                offset: start + 2,
                problem: format!("data object {this} has length 00; lengths run from 01 to 99"),
            });
        }
        let value_offset = reader.offset;
        let Some(value) = reader.take(usize::from(length)) else {
            // `take` consumed nothing, so what remains is what the value would have had.
            let available = reader.remaining_chars();
            return Err(QrError::Syntax {
                offset: value_offset,
                problem: format!(
                    "data object {this} declares {length} characters but only {available} remain"
                ),
            });
        };
        if fields.iter().any(|field| field.id == id) {
            return Err(QrError::Duplicate { path: this });
        }
        fields.push(RawField {
            id,
            value,
            value_offset,
        });
    }
    Ok(fields)
}

/// Where a list of data objects sits, which decides which IDs hold templates.
#[derive(Clone, Copy)]
enum Scope {
    /// The payload itself.
    Root,
    /// Inside a template at the root.
    In(Id),
    /// Inside a template inside a template: nothing nests further.
    Nested,
}

impl Scope {
    fn nests(self, id: Id) -> bool {
        match self {
            Scope::Root => id.is_template_in(None),
            Scope::In(parent) => id.is_template_in(Some(parent)),
            Scope::Nested => false,
        }
    }

    fn child(self, id: Id) -> Scope {
        match self {
            Scope::Root => Scope::In(id),
            Scope::In(_) | Scope::Nested => Scope::Nested,
        }
    }

    fn name(self, id: Id) -> &'static str {
        match self {
            Scope::Root => name(None, id),
            Scope::In(parent) => name(Some(parent), id),
            Scope::Nested => "Payment system specific",
        }
    }
}

/// Parses a list of data objects in `scope`, nesting templates.
fn parse_list(text: &str, offset: usize, scope: Scope, path: &str) -> Result<Vec<Field>, QrError> {
    split_fields(text, offset, path)?
        .into_iter()
        .map(|raw| interpret(raw, scope, path))
        .collect()
}

fn interpret(raw: RawField<'_>, scope: Scope, path: &str) -> Result<Field, QrError> {
    let value = if scope.nests(raw.id) {
        let this = child_path(path, raw.id);
        Value::Template(parse_list(
            raw.value,
            raw.value_offset,
            scope.child(raw.id),
            &this,
        )?)
    } else {
        Value::Text(raw.value.to_owned())
    };
    Ok(Field { id: raw.id, value })
}

/// Parses a string of data objects that is a template's value (or any ID-length-value text),
/// without the root rules (00, 63, CRC). `parent` decides which IDs nest.
pub fn parse_fields(text: &str, parent: Option<Id>) -> Result<Vec<Field>, QrError> {
    let path = parent.map(|id| id.to_string()).unwrap_or_default();
    let scope = parent.map_or(Scope::Root, Scope::In);
    parse_list(text, 0, scope, &path)
}

// ------------------------------------------------------------------------------------------------
// The payload
// ------------------------------------------------------------------------------------------------

/// A valid EMV MPM payload: its data objects in order, 00 first, without the CRC (63), which
/// [`Payload::encode`] computes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payload {
    fields: Vec<Field>,
}

impl Payload {
    /// Parses and checks a payload: structure, CRC, placement of 00 and 63, mandatory data
    /// objects and the formats of the root fields (see the module docs).
    pub fn parse(text: &str) -> Result<Payload, QrError> {
        if text.is_empty() {
            return Err(QrError::Empty);
        }
        let chars = text.chars().count();
        if chars > MAX_PAYLOAD_CHARS {
            return Err(QrError::TooLong {
                chars,
                max: MAX_PAYLOAD_CHARS,
            });
        }
        let raw = split_fields(text, 0, "")?;
        check_crc(text, &raw)?;
        let fields = raw
            .into_iter()
            .filter(|field| field.id != Id::CRC)
            .map(|field| interpret(field, Scope::Root, ""))
            .collect::<Result<Vec<_>, _>>()?;
        check_root(&fields)?;
        Ok(Payload { fields })
    }

    /// Builds a payload from a tree of data objects, checking it as [`Payload::parse`] would, plus
    /// the rules EMVCo sets for writers: at most 99 characters per value, 25 for the merchant
    /// name, 15 for the city, 512 for the whole payload. Do not include 63: it is computed.
    pub fn from_fields(fields: Vec<Field>) -> Result<Payload, QrError> {
        check_tree(&fields, Scope::Root, "")?;
        check_root(&fields)?;
        check_writer_limits(&fields)?;
        let payload = Payload { fields };
        let chars = payload.encode().chars().count();
        if chars > MAX_PAYLOAD_CHARS {
            return Err(QrError::TooLong {
                chars,
                max: MAX_PAYLOAD_CHARS,
            });
        }
        Ok(payload)
    }

    /// The data objects in payload order, without 63.
    pub fn fields(&self) -> &[Field] {
        &self.fields
    }

    /// Gives back the data objects.
    pub fn into_fields(self) -> Vec<Field> {
        self.fields
    }

    /// The payload text, with "6304" and the CRC appended.
    pub fn encode(&self) -> String {
        let mut out = encode_fields(&self.fields);
        out.push_str("6304");
        let crc = crc16(out.as_bytes());
        out.push_str(&format!("{crc:04X}"));
        out
    }

    /// The CRC that [`Payload::encode`] writes, as four uppercase hex digits.
    pub fn crc_hex(&self) -> String {
        let mut out = encode_fields(&self.fields);
        out.push_str("6304");
        format!("{:04X}", crc16(out.as_bytes()))
    }

    /// The value of root data object `id`.
    pub fn get(&self, id: Id) -> Option<&Value> {
        find(&self.fields, id)
    }

    /// The text of root primitive data object `id`.
    pub fn text(&self, id: Id) -> Option<&str> {
        find_text(&self.fields, id)
    }

    /// The data objects of root template `id`.
    pub fn template(&self, id: Id) -> Option<&[Field]> {
        self.get(id).and_then(Value::as_template)
    }

    /// Point of initiation method (01), when present.
    pub fn initiation(&self) -> Option<Initiation> {
        match self.text(Id::POINT_OF_INITIATION)? {
            "11" => Some(Initiation::Static),
            "12" => Some(Initiation::Dynamic),
            _ => None,
        }
    }

    /// Every merchant account information data object (02-51), in payload order.
    pub fn merchant_accounts(&self) -> impl Iterator<Item = (Id, &Value)> {
        self.fields
            .iter()
            .filter(|field| matches!(field.id.0, 2..=51))
            .map(|f| (f.id, &f.value))
    }

    /// The merchant account template (26-51) whose globally unique identifier is `gui`
    /// (compared ignoring ASCII case), with its ID.
    pub fn merchant_account(&self, gui: &str) -> Option<(Id, &[Field])> {
        self.merchant_accounts().find_map(|(id, value)| {
            let fields = value.as_template()?;
            let found = find_text(fields, Id::GUI)?;
            found.eq_ignore_ascii_case(gui).then_some((id, fields))
        })
    }

    /// Merchant category code (52).
    pub fn mcc(&self) -> Option<&str> {
        self.text(Id::MCC)
    }

    /// Transaction currency (53), ISO 4217 numeric.
    pub fn currency(&self) -> Option<u16> {
        self.text(Id::CURRENCY)?.parse().ok()
    }

    /// Transaction amount (54) as written.
    pub fn amount_text(&self) -> Option<&str> {
        self.text(Id::AMOUNT)
    }

    /// Transaction amount (54) in minor units of the currency (53), or `None` when the payload has
    /// no amount (the payer enters it). Fails when the amount has more decimals than the
    /// currency's exponent allows or does not fit.
    pub fn amount_minor(&self) -> Result<Option<u64>, QrError> {
        let Some(text) = self.amount_text() else {
            return Ok(None);
        };
        let exponent = self.currency().map(currency_exponent).unwrap_or(2);
        parse_amount(text, exponent)
            .map(Some)
            .map_err(|problem| invalid(Id::AMOUNT, "transaction amount", problem))
    }

    /// Country code (58).
    pub fn country(&self) -> Option<&str> {
        self.text(Id::COUNTRY)
    }

    /// Merchant name (59).
    pub fn merchant_name(&self) -> Option<&str> {
        self.text(Id::MERCHANT_NAME)
    }

    /// Merchant city (60).
    pub fn merchant_city(&self) -> Option<&str> {
        self.text(Id::MERCHANT_CITY)
    }

    /// Postal code (61).
    pub fn postal_code(&self) -> Option<&str> {
        self.text(Id::POSTAL_CODE)
    }

    /// The additional data template (62), empty when absent.
    pub fn additional_data(&self) -> AdditionalData<'_> {
        AdditionalData {
            fields: self.template(Id::ADDITIONAL_DATA).unwrap_or(&[]),
        }
    }

    /// The merchant information language template (64).
    pub fn language(&self) -> Option<LanguageTemplate<'_>> {
        let fields = self.template(Id::LANGUAGE)?;
        Some(LanguageTemplate {
            preference: find_text(fields, Id(0))?,
            name: find_text(fields, Id(1))?,
            city: find_text(fields, Id(2)),
        })
    }

    /// Unreserved templates (80-99) in payload order.
    pub fn unreserved_templates(&self) -> impl Iterator<Item = (Id, &[Field])> {
        self.fields
            .iter()
            .filter(|field| matches!(field.id.0, 80..=99))
            .filter_map(|field| Some((field.id, field.value.as_template()?)))
    }
}

impl fmt::Display for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.encode())
    }
}

impl std::str::FromStr for Payload {
    type Err = QrError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Payload::parse(text)
    }
}

/// Serialises as a JSON-style map: IDs as keys in payload order, templates as nested maps, values
/// as strings, and "63" with the CRC last.
impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.fields.len() + 1))?;
        for field in &self.fields {
            map.serialize_entry(&field.id.to_string(), &field.value)?;
        }
        map.serialize_entry(&Id::CRC.to_string(), &self.crc_hex())?;
        map.end()
    }
}

/// Serialises text as a string and a template as a map of IDs in payload order.
impl Serialize for Value {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Text(text) => serializer.serialize_str(text),
            Value::Template(fields) => {
                let mut map = serializer.serialize_map(Some(fields.len()))?;
                for field in fields {
                    map.serialize_entry(&field.id.to_string(), &field.value)?;
                }
                map.end()
            }
        }
    }
}

/// Point of initiation method (tag 01).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Initiation {
    /// "11": the same code for many payments (a printed sticker).
    Static,
    /// "12": a code for one payment.
    Dynamic,
}

/// The additional data template (62); every accessor is `None` when the sub-field is absent.
#[derive(Clone, Copy, Debug)]
pub struct AdditionalData<'a> {
    fields: &'a [Field],
}

impl<'a> AdditionalData<'a> {
    /// All sub-fields in payload order.
    pub fn fields(&self) -> &'a [Field] {
        self.fields
    }

    /// Sub-field `id` as text.
    pub fn text(&self, id: Id) -> Option<&'a str> {
        find_text(self.fields, id)
    }

    /// 01, bill number.
    pub fn bill_number(&self) -> Option<&'a str> {
        self.text(Id(1))
    }

    /// 03, store label.
    pub fn store_label(&self) -> Option<&'a str> {
        self.text(Id(3))
    }

    /// 05, reference label (posbridge: the one-time order reference).
    pub fn reference_label(&self) -> Option<&'a str> {
        self.text(Id(5))
    }

    /// 07, terminal label.
    pub fn terminal_label(&self) -> Option<&'a str> {
        self.text(Id(7))
    }

    /// 08, purpose of transaction.
    pub fn purpose(&self) -> Option<&'a str> {
        self.text(Id(8))
    }
}

/// The merchant information language template (64).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LanguageTemplate<'a> {
    /// 00, language preference (ISO 639-1, e.g. "ZH").
    pub preference: &'a str,
    /// 01, merchant name in that language.
    pub name: &'a str,
    /// 02, merchant city in that language.
    pub city: Option<&'a str>,
}

// ------------------------------------------------------------------------------------------------
// Rules
// ------------------------------------------------------------------------------------------------

fn check_crc(text: &str, raw: &[RawField<'_>]) -> Result<(), QrError> {
    let Some(position) = raw.iter().position(|field| field.id == Id::CRC) else {
        return Err(QrError::Missing {
            path: "63".into(),
            what: "CRC",
        });
    };
    if position + 1 != raw.len() {
        return Err(QrError::Placement(
            "CRC (ID 63) must be the last data object",
        ));
    }
    let stated = raw[position].value;
    let Ok(stated_value) = parse_hex4(stated) else {
        return Err(invalid(
            "63",
            "CRC",
            format!("must be 4 hex digits, found {stated:?}"),
        ));
    };
    // The CRC's value is four ASCII hex digits, i.e. the last four bytes of the text.
    let covered = text.get(..text.len() - 4).unwrap_or_default();
    let computed = crc16(covered.as_bytes());
    if computed != stated_value {
        return Err(QrError::CrcMismatch {
            stated: stated.to_owned(),
            computed: format!("{computed:04X}"),
        });
    }
    Ok(())
}

fn parse_hex4(text: &str) -> Result<u16, ()> {
    if text.len() != 4 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(());
    }
    u16::from_str_radix(text, 16).map_err(|_| ())
}

/// Tree rules the parser gets for free from the syntax, checked for trees given to the builder.
fn check_tree(fields: &[Field], scope: Scope, path: &str) -> Result<(), QrError> {
    for (index, field) in fields.iter().enumerate() {
        let this = child_path(path, field.id);
        if fields[..index].iter().any(|earlier| earlier.id == field.id) {
            return Err(QrError::Duplicate { path: this });
        }
        if matches!(scope, Scope::Root) && field.id == Id::CRC {
            return Err(invalid(
                &this,
                "CRC",
                "is computed when the payload is written; leave it out",
            ));
        }
        let chars = match &field.value {
            Value::Text(text) => {
                if scope.nests(field.id) {
                    return Err(invalid(
                        &this,
                        scope.name(field.id),
                        "this ID holds a template",
                    ));
                }
                text.chars().count()
            }
            Value::Template(children) => {
                if !scope.nests(field.id) {
                    return Err(invalid(
                        &this,
                        scope.name(field.id),
                        "this ID holds text, not a template",
                    ));
                }
                check_tree(children, scope.child(field.id), &this)?;
                encode_fields(children).chars().count()
            }
        };
        if chars == 0 || chars > MAX_VALUE_CHARS {
            return Err(invalid(
                &this,
                scope.name(field.id),
                format!("value is {chars} characters; lengths run from 1 to {MAX_VALUE_CHARS}"),
            ));
        }
    }
    Ok(())
}

/// The rules every valid payload meets, whether parsed or built.
fn check_root(fields: &[Field]) -> Result<(), QrError> {
    match fields.first() {
        Some(field) if field.id == Id::PAYLOAD_FORMAT => {}
        Some(_) => {
            return Err(QrError::Placement(
                "payload format indicator (ID 00) must be the first data object",
            ));
        }
        None => {
            return Err(QrError::Missing {
                path: "00".into(),
                what: "payload format indicator",
            });
        }
    }
    for field in fields {
        check_root_field(field)?;
    }
    for (id, what) in [
        (Id::MCC, "merchant category code"),
        (Id::CURRENCY, "transaction currency"),
        (Id::COUNTRY, "country code"),
        (Id::MERCHANT_NAME, "merchant name"),
        (Id::MERCHANT_CITY, "merchant city"),
    ] {
        if find(fields, id).is_none() {
            return Err(QrError::Missing {
                path: id.to_string(),
                what,
            });
        }
    }
    if !fields.iter().any(|field| matches!(field.id.0, 2..=51)) {
        return Err(QrError::Missing {
            path: "02-51".into(),
            what: "merchant account information",
        });
    }
    Ok(())
}

fn check_root_field(field: &Field) -> Result<(), QrError> {
    let id = field.id;
    let what = name(None, id);
    let Value::Text(text) = &field.value else {
        return check_root_template(id, field.value.as_template().unwrap_or(&[]));
    };
    let text = text.as_str();
    let all_digits = |n: usize| text.len() == n && text.bytes().all(|b| b.is_ascii_digit());
    match id.0 {
        0 if text != "01" => Err(invalid(id, what, format!("must be \"01\", found {text:?}"))),
        1 if text != "11" && text != "12" => Err(invalid(
            id,
            what,
            format!("must be \"11\" (static) or \"12\" (dynamic), found {text:?}"),
        )),
        52 if !all_digits(4) => Err(invalid(
            id,
            what,
            format!("must be 4 digits, found {text:?}"),
        )),
        53 if !all_digits(3) => Err(invalid(
            id,
            what,
            format!("must be the 3-digit ISO 4217 numeric code, found {text:?}"),
        )),
        54 | 56 => check_amount_format(text).map_err(|problem| invalid(id, what, problem)),
        55 if !matches!(text, "01" | "02" | "03") => Err(invalid(
            id,
            what,
            format!("must be \"01\", \"02\" or \"03\", found {text:?}"),
        )),
        57 => check_amount_format(text).map_err(|problem| invalid(id, what, problem)),
        58 if !(text.len() == 2 && text.bytes().all(|b| b.is_ascii_alphabetic())) => Err(invalid(
            id,
            what,
            format!("must be 2 letters (ISO 3166-1 alpha-2), found {text:?}"),
        )),
        _ => Ok(()),
    }
}

fn check_root_template(id: Id, fields: &[Field]) -> Result<(), QrError> {
    let needs_gui = matches!(id.0, 26..=51 | 80..=99);
    if needs_gui && find_text(fields, Id::GUI).is_none() {
        return Err(QrError::Missing {
            path: format!("{id}.00"),
            what: "globally unique identifier",
        });
    }
    if id == Id::LANGUAGE {
        if find_text(fields, Id(0)).is_none() {
            return Err(QrError::Missing {
                path: "64.00".into(),
                what: "language preference",
            });
        }
        if find_text(fields, Id(1)).is_none() {
            return Err(QrError::Missing {
                path: "64.01".into(),
                what: "merchant name, alternate language",
            });
        }
    }
    Ok(())
}

fn check_writer_limits(fields: &[Field]) -> Result<(), QrError> {
    for (id, max) in [
        (Id::MERCHANT_NAME, 25),
        (Id::MERCHANT_CITY, 15),
        (Id::AMOUNT, 13),
    ] {
        if let Some(text) = find_text(fields, id) {
            let chars = text.chars().count();
            if chars > max {
                return Err(invalid(
                    id,
                    name(None, id),
                    format!("is {chars} characters; at most {max}"),
                ));
            }
        }
    }
    Ok(())
}

/// EMVCo's amount format: digits with at most one '.', at least one digit before it.
fn check_amount_format(text: &str) -> Result<(), String> {
    let (whole, fraction) = match text.split_once('.') {
        Some((whole, fraction)) => (whole, fraction),
        None => (text, ""),
    };
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits(whole) || !digits(fraction) {
        return Err(format!(
            "{text:?} is not digits with at most one '.' as decimal mark"
        ));
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// Names, for people reading a decoded payload
// ------------------------------------------------------------------------------------------------

/// The EMVCo name of data object `id` inside `parent` (`None`: the root).
pub fn name(parent: Option<Id>, id: Id) -> &'static str {
    match parent.map(Id::value) {
        None => root_name(id.0),
        Some(62) => additional_data_name(id.0),
        Some(64) => match id.0 {
            0 => "Language Preference",
            1 => "Merchant Name - Alternate Language",
            2 => "Merchant City - Alternate Language",
            _ => "RFU for EMVCo",
        },
        Some(26..=51) if id.0 == 0 => "Globally Unique Identifier",
        Some(26..=51) => "Payment network specific",
        Some(80..=99) if id.0 == 0 => "Globally Unique Identifier",
        Some(80..=99) => "Context specific data",
        Some(_) => "Payment system specific",
    }
}

fn root_name(id: u8) -> &'static str {
    match id {
        0 => "Payload Format Indicator",
        1 => "Point of Initiation Method",
        2..=3 => "Merchant Account Information (Visa)",
        4..=5 => "Merchant Account Information (Mastercard)",
        6..=8 => "Merchant Account Information (EMVCo)",
        9..=10 => "Merchant Account Information (Discover)",
        11..=12 => "Merchant Account Information (Amex)",
        13..=14 => "Merchant Account Information (JCB)",
        15..=16 => "Merchant Account Information (UnionPay)",
        17..=25 => "Merchant Account Information (EMVCo)",
        26..=51 => "Merchant Account Information",
        52 => "Merchant Category Code",
        53 => "Transaction Currency",
        54 => "Transaction Amount",
        55 => "Tip or Convenience Indicator",
        56 => "Value of Convenience Fee Fixed",
        57 => "Value of Convenience Fee Percentage",
        58 => "Country Code",
        59 => "Merchant Name",
        60 => "Merchant City",
        61 => "Postal Code",
        62 => "Additional Data Field Template",
        63 => "CRC",
        64 => "Merchant Information - Language Template",
        65..=79 => "RFU for EMVCo",
        _ => "Unreserved Template",
    }
}

fn additional_data_name(id: u8) -> &'static str {
    match id {
        1 => "Bill Number",
        2 => "Mobile Number",
        3 => "Store Label",
        4 => "Loyalty Number",
        5 => "Reference Label",
        6 => "Customer Label",
        7 => "Terminal Label",
        8 => "Purpose of Transaction",
        9 => "Additional Consumer Data Request",
        10 => "Merchant Tax ID",
        11 => "Merchant Channel",
        12..=49 => "RFU for EMVCo",
        _ => "Payment System specific template",
    }
}

/// The name of a sub-field of posbridge's merchant account (26-51), order (80) or signature (81)
/// template.
pub fn posbridge_name(template: Id, id: Id) -> Option<&'static str> {
    let name = match (template.0, id.0) {
        (26..=51 | 80 | 81, 0) => "Globally Unique Identifier",
        (26..=51, 1) => "Merchant ID",
        (80, 1) => "Terminal ID",
        (80, 2) => "Batch Number",
        (80, 3) => "Voucher Number",
        (80, 4) => "Operator",
        (80, 5) => "Acquirer",
        (80, 6) => "Transaction Type",
        (80, 7) => "Expiry (UTC YYMMDDhhmmss)",
        (81, 1) => "Key Identifier",
        (81, 2) => "Signature",
        _ => return None,
    };
    Some(name)
}

// ------------------------------------------------------------------------------------------------
// Currencies and amounts
// ------------------------------------------------------------------------------------------------

/// An ISO 4217 currency that posbridge knows by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Currency {
    /// Numeric code (tag 53).
    pub numeric: u16,
    /// Alphabetic code.
    pub alpha: &'static str,
    /// Digits after the decimal mark (minor unit).
    pub exponent: u8,
}

const fn cur(numeric: u16, alpha: &'static str, exponent: u8) -> Currency {
    Currency {
        numeric,
        alpha,
        exponent,
    }
}

/// Common ISO 4217 currencies. Any other currency is taken to have 2 minor-unit digits.
pub const CURRENCIES: &[Currency] = &[
    cur(36, "AUD", 2),
    cur(48, "BHD", 3),
    cur(108, "BIF", 0),
    cur(124, "CAD", 2),
    cur(152, "CLP", 0),
    cur(156, "CNY", 2),
    cur(262, "DJF", 0),
    cur(344, "HKD", 2),
    cur(352, "ISK", 0),
    cur(356, "INR", 2),
    cur(360, "IDR", 2),
    cur(368, "IQD", 3),
    cur(392, "JPY", 0),
    cur(400, "JOD", 3),
    cur(410, "KRW", 0),
    cur(414, "KWD", 3),
    cur(434, "LYD", 3),
    cur(446, "MOP", 2),
    cur(458, "MYR", 2),
    cur(512, "OMR", 3),
    cur(548, "VUV", 0),
    cur(600, "PYG", 0),
    cur(608, "PHP", 2),
    cur(643, "RUB", 2),
    cur(646, "RWF", 0),
    cur(702, "SGD", 2),
    cur(704, "VND", 0),
    cur(764, "THB", 2),
    cur(788, "TND", 3),
    cur(800, "UGX", 0),
    cur(826, "GBP", 2),
    cur(840, "USD", 2),
    cur(901, "TWD", 2),
    cur(950, "XAF", 0),
    cur(952, "XOF", 0),
    cur(953, "XPF", 0),
    cur(978, "EUR", 2),
    cur(986, "BRL", 2),
];

/// The currency with ISO 4217 numeric code `numeric`, if posbridge knows it.
pub fn currency(numeric: u16) -> Option<&'static Currency> {
    CURRENCIES
        .iter()
        .find(|currency| currency.numeric == numeric)
}

/// Minor-unit digits of a currency: from [`CURRENCIES`], else 2.
pub fn currency_exponent(numeric: u16) -> u8 {
    currency(numeric).map_or(2, |currency| currency.exponent)
}

/// Writes `amount_minor` as an EMVCo amount with `exponent` decimals (2372, 2 -> "23.72").
pub fn format_amount(amount_minor: u64, exponent: u8) -> String {
    if exponent == 0 {
        return amount_minor.to_string();
    }
    let digits = format!("{amount_minor:0>width$}", width = usize::from(exponent) + 1);
    let (whole, fraction) = digits.split_at(digits.len() - usize::from(exponent));
    format!("{whole}.{fraction}")
}

/// Reads an EMVCo amount into minor units with `exponent` decimals ("23.72", 2 -> 2372; "98." and
/// "98" -> 9800). Fails on a bad format, more decimals than `exponent`, or overflow.
pub fn parse_amount(text: &str, exponent: u8) -> Result<u64, String> {
    check_amount_format(text)?;
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if fraction.len() > usize::from(exponent) {
        return Err(format!(
            "{text:?} has {} decimals; the currency has {exponent}",
            fraction.len()
        ));
    }
    let overflow = || format!("{text:?} is too large");
    let mut minor: u64 = 0;
    let padded = fraction
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(usize::from(exponent));
    for digit in whole.bytes().chain(padded) {
        minor = minor
            .checked_mul(10)
            .and_then(|m| m.checked_add(u64::from(digit - b'0')))
            .ok_or_else(overflow)?;
    }
    Ok(minor)
}

// ------------------------------------------------------------------------------------------------
// Time: the order expiry, UTC YYMMDDhhmmss
// ------------------------------------------------------------------------------------------------

/// An instant between 2000-01-01 and 2099-12-31 (UTC), written `YYMMDDhhmmss` in the order
/// template.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Expiry {
    unix_seconds: u64,
}

/// 2000-01-01T00:00:00Z.
const UNIX_2000: u64 = 946_684_800;
/// 2100-01-01T00:00:00Z.
const UNIX_2100: u64 = 4_102_444_800;

impl Expiry {
    /// The instant `unix_seconds` after 1970-01-01T00:00:00Z; `None` outside 2000-2099.
    pub fn from_unix_seconds(unix_seconds: u64) -> Option<Expiry> {
        (UNIX_2000..UNIX_2100)
            .contains(&unix_seconds)
            .then_some(Expiry { unix_seconds })
    }

    /// Seconds since 1970-01-01T00:00:00Z.
    pub fn unix_seconds(self) -> u64 {
        self.unix_seconds
    }

    /// Reads `YYMMDDhhmmss` (UTC, 20YY).
    pub fn parse(text: &str) -> Option<Expiry> {
        if text.len() != 12 || !text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let pair = |i: usize| text.get(i..i + 2).and_then(two_digits);
        let civil = crate::calendar::Civil {
            year: 2000 + i32::from(pair(0)?),
            month: pair(2)?,
            day: pair(4)?,
            hour: pair(6)?,
            minute: pair(8)?,
            second: pair(10)?,
        };
        Expiry::from_unix_seconds(u64::try_from(civil.unix_seconds()?).ok()?)
    }

    /// Writes `YYMMDDhhmmss` (UTC).
    pub fn to_yymmddhhmmss(self) -> String {
        let seconds = i64::try_from(self.unix_seconds).unwrap_or(0);
        match crate::calendar::Civil::from_unix_seconds(seconds) {
            Some(c) => format!("{:02}{}{}", c.year % 100, c.mmdd(), c.hhmmss()),
            // Unreachable: an Expiry is within 2000-2099 by construction.
            None => "000101000000".to_owned(),
        }
    }
}

impl fmt::Display for Expiry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_yymmddhhmmss())
    }
}

// ------------------------------------------------------------------------------------------------
// posbridge's payloads
// ------------------------------------------------------------------------------------------------

/// The merchant facts both static and dynamic payloads carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Merchant {
    /// posbridge's globally unique identifier, written in 26.00, 80.00 and 81.00
    /// (usually [`POSBRIDGE_GUI`]).
    pub gui: String,
    /// Merchant ID (ISO 8583 field 42), 15 printable ASCII characters, in 26.01.
    pub merchant_id: String,
    /// Merchant category code, 4 digits.
    pub mcc: String,
    /// ISO 4217 numeric currency code (156 = CNY).
    pub currency: u16,
    /// ISO 3166-1 alpha-2 country code.
    pub country: String,
    /// Merchant name, printable ASCII, at most 25 characters.
    pub name: String,
    /// Merchant city, printable ASCII, at most 15 characters.
    pub city: String,
    /// Name (and city) in another language, in template 64.
    pub alternate_language: Option<AlternateLanguage>,
}

/// Merchant name and city in another language (template 64; UTF-8, e.g. Chinese).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlternateLanguage {
    /// ISO 639-1 language code, 2 letters ("ZH").
    pub language: String,
    /// Merchant name in that language, at most 25 characters.
    pub name: String,
    /// Merchant city in that language, at most 15 characters.
    pub city: Option<String>,
}

/// A static code: one per merchant (or till), printed; the payer enters the amount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticCode {
    /// The merchant.
    pub merchant: Merchant,
    /// 62.03, store label, when the merchant has several stores.
    pub store_label: Option<String>,
    /// 62.07, terminal label, when the code belongs to one till.
    pub terminal_label: Option<String>,
}

impl StaticCode {
    /// The payload: 01 = 11, no amount, no one-time reference, no order template.
    pub fn payload(&self) -> Result<Payload, QrError> {
        let mut additional = Vec::new();
        if let Some(label) = &self.store_label {
            check_printable("62.03", "store label", label, 1, 25)?;
            additional.push(Field::text(Id(3), label.clone()));
        }
        if let Some(label) = &self.terminal_label {
            check_printable("62.07", "terminal label", label, 1, 25)?;
            additional.push(Field::text(Id(7), label.clone()));
        }
        let mut fields = merchant_head(&self.merchant, "11")?;
        fields.extend(merchant_tail(&self.merchant, None, additional)?);
        Payload::from_fields(fields)
    }
}

/// A dynamic order: what the gateway (or the terminal) writes into a one-time code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Order {
    /// The merchant.
    pub merchant: Merchant,
    /// The amount in minor units of `merchant.currency`; more than zero.
    pub amount_minor: u64,
    /// 62.05, the one-time reference: at least 96 random bits, generated by the gateway, as 24 to
    /// 25 uppercase hex digits or 20 to 25 base32 (RFC 4648) characters.
    pub reference: String,
    /// 62.07, terminal label shown by wallets (usually the TID), printable ASCII, at most 25.
    pub terminal_label: String,
    /// 80.01, terminal ID, 8 printable ASCII characters.
    pub tid: String,
    /// 80.02, batch number, 6 digits.
    pub batch: String,
    /// 80.03, voucher (trace) number, 6 digits.
    pub voucher: String,
    /// 80.04, operator (cashier) number, 1 to 6 printable ASCII characters.
    pub operator: String,
    /// 80.05, acquirer institution ID, 1 to 11 digits.
    pub acquirer: String,
    /// 80.06, transaction type, 2 digits.
    pub transaction_type: String,
    /// 80.07, when the order expires.
    pub expires_at: Expiry,
    /// 81.01, which key signs (e.g. a key version or label), 1 to 8 printable ASCII characters.
    pub key_id: Option<String>,
}

impl Order {
    /// Checks the order and lays out every data object except the signature: what the caller
    /// signs.
    pub fn unsigned(&self) -> Result<UnsignedOrder, QrError> {
        let merchant = &self.merchant;
        if self.amount_minor == 0 {
            return Err(invalid(
                Id::AMOUNT,
                "transaction amount",
                "must be more than zero",
            ));
        }
        check_reference(&self.reference)?;
        check_printable("62.07", "terminal label", &self.terminal_label, 1, 25)?;
        check_printable("80.01", "terminal ID", &self.tid, 8, 8)?;
        check_digits("80.02", "batch number", &self.batch, 6, 6)?;
        check_digits("80.03", "voucher number", &self.voucher, 6, 6)?;
        check_printable("80.04", "operator", &self.operator, 1, 6)?;
        check_digits("80.05", "acquirer", &self.acquirer, 1, 11)?;
        check_digits("80.06", "transaction type", &self.transaction_type, 2, 2)?;
        if let Some(key_id) = &self.key_id {
            check_printable("81.01", "key identifier", key_id, 1, 8)?;
        }
        let amount = format_amount(self.amount_minor, currency_exponent(merchant.currency));
        let additional = vec![
            Field::text(Id(5), self.reference.clone()),
            Field::text(Id(7), self.terminal_label.clone()),
        ];
        let mut fields = merchant_head(merchant, "12")?;
        fields.extend(merchant_tail(merchant, Some(amount), additional)?);
        fields.push(Field::template(
            ORDER_TEMPLATE,
            vec![
                Field::text(Id::GUI, merchant.gui.clone()),
                Field::text(Id(1), self.tid.clone()),
                Field::text(Id(2), self.batch.clone()),
                Field::text(Id(3), self.voucher.clone()),
                Field::text(Id(4), self.operator.clone()),
                Field::text(Id(5), self.acquirer.clone()),
                Field::text(Id(6), self.transaction_type.clone()),
                Field::text(Id(7), self.expires_at.to_yymmddhhmmss()),
            ],
        ));
        // Check everything but the signature now, so a signature is never computed for a payload
        // that cannot be written.
        Payload::from_fields(fields.clone())?;
        Ok(UnsignedOrder {
            fields,
            gui: merchant.gui.clone(),
            key_id: self.key_id.clone(),
        })
    }
}

/// An order laid out and checked, waiting for its signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsignedOrder {
    fields: Vec<Field>,
    gui: String,
    key_id: Option<String>,
}

impl UnsignedOrder {
    /// The exact bytes to sign: [`SIGNING_CONTEXT`] followed by the UTF-8 payload text of every
    /// data object except 81 (signature) and 63 (CRC), in payload order.
    pub fn signing_input(&self) -> Vec<u8> {
        signing_input_of(&self.fields)
    }

    /// The finished payload with `signature` (4 to 32 bytes) in template 81.
    pub fn with_signature(self, signature: &[u8]) -> Result<Payload, QrError> {
        if !(4..=32).contains(&signature.len()) {
            return Err(invalid(
                "81.02",
                "signature",
                format!("is {} bytes; posbridge carries 4 to 32", signature.len()),
            ));
        }
        let mut template = vec![Field::text(Id::GUI, self.gui)];
        if let Some(key_id) = self.key_id {
            template.push(Field::text(Id(1), key_id));
        }
        template.push(Field::text(Id(2), hex::encode_upper(signature)));
        let mut fields = self.fields;
        fields.push(Field::template(SIGNATURE_TEMPLATE, template));
        Payload::from_fields(fields)
    }

    /// Signs with `sign` (e.g. a closure calling the security module) and returns the payload.
    pub fn sign<E>(
        self,
        sign: impl FnOnce(&[u8]) -> Result<Vec<u8>, E>,
    ) -> Result<Payload, SignError<E>> {
        let signature = sign(&self.signing_input()).map_err(SignError::Signer)?;
        self.with_signature(&signature).map_err(SignError::Payload)
    }
}

/// Why [`UnsignedOrder::sign`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignError<E> {
    /// The signer failed.
    #[error("signing the QR order failed: {0}")]
    Signer(E),
    /// The signature did not fit the payload.
    #[error(transparent)]
    Payload(QrError),
}

fn signing_input_of(fields: &[Field]) -> Vec<u8> {
    let kept: Vec<Field> = fields
        .iter()
        .filter(|field| field.id != SIGNATURE_TEMPLATE)
        .cloned()
        .collect();
    let mut input = SIGNING_CONTEXT.to_vec();
    input.extend_from_slice(encode_fields(&kept).as_bytes());
    input
}

/// The first root fields of posbridge's payloads: 00, 01, 26.
fn merchant_head(merchant: &Merchant, initiation: &str) -> Result<Vec<Field>, QrError> {
    check_printable("26.00", "globally unique identifier", &merchant.gui, 1, 32)?;
    check_printable("26.01", "merchant ID", &merchant.merchant_id, 15, 15)?;
    Ok(vec![
        Field::text(Id::PAYLOAD_FORMAT, "01"),
        Field::text(Id::POINT_OF_INITIATION, initiation),
        Field::template(
            Id(26),
            vec![
                Field::text(Id::GUI, merchant.gui.clone()),
                Field::text(Id(1), merchant.merchant_id.clone()),
            ],
        ),
    ])
}

/// 52 to 62 and 64 of posbridge's payloads.
fn merchant_tail(
    merchant: &Merchant,
    amount: Option<String>,
    additional: Vec<Field>,
) -> Result<Vec<Field>, QrError> {
    check_digits("52", "merchant category code", &merchant.mcc, 4, 4)?;
    if merchant.currency == 0 || merchant.currency > 999 {
        return Err(invalid(
            Id::CURRENCY,
            "transaction currency",
            "must be an ISO 4217 numeric code",
        ));
    }
    check_printable("59", "merchant name", &merchant.name, 1, 25)?;
    check_printable("60", "merchant city", &merchant.city, 1, 15)?;
    let mut fields = vec![
        Field::text(Id::MCC, merchant.mcc.clone()),
        Field::text(Id::CURRENCY, format!("{:03}", merchant.currency)),
    ];
    if let Some(amount) = amount {
        fields.push(Field::text(Id::AMOUNT, amount));
    }
    fields.extend([
        Field::text(Id::COUNTRY, merchant.country.clone()),
        Field::text(Id::MERCHANT_NAME, merchant.name.clone()),
        Field::text(Id::MERCHANT_CITY, merchant.city.clone()),
    ]);
    if !additional.is_empty() {
        fields.push(Field::template(Id::ADDITIONAL_DATA, additional));
    }
    if let Some(alternate) = &merchant.alternate_language {
        fields.push(language_template(alternate)?);
    }
    Ok(fields)
}

fn language_template(alternate: &AlternateLanguage) -> Result<Field, QrError> {
    let language = &alternate.language;
    if !(language.len() == 2 && language.bytes().all(|b| b.is_ascii_alphabetic())) {
        return Err(invalid(
            "64.00",
            "language preference",
            "must be 2 letters (ISO 639-1)",
        ));
    }
    check_text(
        "64.01",
        "merchant name, alternate language",
        &alternate.name,
        25,
    )?;
    let mut fields = vec![
        Field::text(Id(0), language.clone()),
        Field::text(Id(1), alternate.name.clone()),
    ];
    if let Some(city) = &alternate.city {
        check_text("64.02", "merchant city, alternate language", city, 15)?;
        fields.push(Field::text(Id(2), city.clone()));
    }
    Ok(Field::template(Id::LANGUAGE, fields))
}

fn check_text(path: &str, what: &'static str, text: &str, max: usize) -> Result<(), QrError> {
    let chars = text.chars().count();
    if chars == 0 || chars > max || text.chars().any(char::is_control) {
        return Err(invalid(
            path,
            what,
            format!("must be 1 to {max} characters without control characters"),
        ));
    }
    Ok(())
}

/// EMVCo "ans": printable ASCII, 0x20 to 0x7E.
fn check_printable(
    path: &str,
    what: &'static str,
    text: &str,
    min: usize,
    max: usize,
) -> Result<(), QrError> {
    let printable = text.bytes().all(|b| (0x20..=0x7e).contains(&b));
    if !printable || text.len() < min || text.len() > max {
        let size = if min == max {
            format!("{min}")
        } else {
            format!("{min} to {max}")
        };
        return Err(invalid(
            path,
            what,
            format!("must be {size} printable ASCII characters, found {text:?}"),
        ));
    }
    Ok(())
}

fn check_digits(
    path: &str,
    what: &'static str,
    text: &str,
    min: usize,
    max: usize,
) -> Result<(), QrError> {
    if !text.bytes().all(|b| b.is_ascii_digit()) || text.len() < min || text.len() > max {
        let size = if min == max {
            format!("{min}")
        } else {
            format!("{min} to {max}")
        };
        return Err(invalid(
            path,
            what,
            format!("must be {size} digits, found {text:?}"),
        ));
    }
    Ok(())
}

/// The one-time reference must carry at least 96 random bits: 24+ hex digits, or 20+ base32.
fn check_reference(reference: &str) -> Result<(), QrError> {
    let hex = reference
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b));
    let base32 = reference
        .bytes()
        .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b));
    let enough = (hex && reference.len() >= 24) || (!hex && base32 && reference.len() >= 20);
    if !enough || reference.len() > 25 {
        return Err(invalid(
            "62.05",
            "reference label",
            "a one-time reference needs at least 96 random bits: 24 to 25 uppercase hex digits or \
             20 to 25 base32 characters",
        ));
    }
    Ok(())
}

/// The order facts read back from a posbridge dynamic payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderView {
    /// 26.01, merchant ID.
    pub merchant_id: String,
    /// 54 in minor units of `currency`.
    pub amount_minor: u64,
    /// 53, ISO 4217 numeric.
    pub currency: u16,
    /// 62.05, the one-time reference.
    pub reference: String,
    /// 62.07, terminal label.
    pub terminal_label: Option<String>,
    /// 80.01, terminal ID.
    pub tid: String,
    /// 80.02, batch number.
    pub batch: String,
    /// 80.03, voucher number.
    pub voucher: String,
    /// 80.04, operator.
    pub operator: String,
    /// 80.05, acquirer institution ID.
    pub acquirer: String,
    /// 80.06, transaction type.
    pub transaction_type: String,
    /// 80.07, expiry.
    pub expires_at: Expiry,
    /// 81.01, key identifier.
    pub key_id: Option<String>,
    /// 81.02, the signature bytes.
    pub signature: Vec<u8>,
}

/// Reads posbridge's order out of a dynamic payload whose templates carry `gui`. Checks the
/// layout only; [`verify_order`] also checks the signature.
pub fn read_order(payload: &Payload, gui: &str) -> Result<OrderView, QrError> {
    if payload.initiation() != Some(Initiation::Dynamic) {
        return Err(invalid(
            "01",
            "point of initiation method",
            "a posbridge order is dynamic (12)",
        ));
    }
    let (_, account) = payload
        .merchant_account(gui)
        .ok_or_else(|| QrError::Missing {
            path: "26-51".into(),
            what: "posbridge merchant account template",
        })?;
    let order = posbridge_template(payload, ORDER_TEMPLATE, gui, "posbridge order template")?;
    let signature = posbridge_template(
        payload,
        SIGNATURE_TEMPLATE,
        gui,
        "posbridge signature template",
    )?;
    let need = |fields: &[Field], template: Id, id: Id| -> Result<String, QrError> {
        find_text(fields, id)
            .map(str::to_owned)
            .ok_or_else(|| QrError::Missing {
                path: format!("{template}.{id}"),
                what: posbridge_name(template, id).unwrap_or("posbridge sub-field"),
            })
    };
    let additional = payload.additional_data();
    let reference = additional.reference_label().ok_or(QrError::Missing {
        path: "62.05".into(),
        what: "one-time reference",
    })?;
    let amount_minor = payload.amount_minor()?.ok_or(QrError::Missing {
        path: "54".into(),
        what: "transaction amount",
    })?;
    let expiry_text = need(order, ORDER_TEMPLATE, Id(7))?;
    let expires_at = Expiry::parse(&expiry_text).ok_or_else(|| {
        invalid(
            "80.07",
            "expiry",
            format!("must be UTC YYMMDDhhmmss, found {expiry_text:?}"),
        )
    })?;
    let signature_hex = need(signature, SIGNATURE_TEMPLATE, Id(2))?;
    let signature_bytes = hex::decode(&signature_hex)
        .ok()
        .filter(|bytes| (4..=32).contains(&bytes.len()))
        .ok_or_else(|| invalid("81.02", "signature", "must be 8 to 64 hex digits"))?;
    let view = OrderView {
        merchant_id: need(account, Id(26), Id(1))?,
        amount_minor,
        currency: payload.currency().unwrap_or_default(),
        reference: reference.to_owned(),
        terminal_label: additional.terminal_label().map(str::to_owned),
        tid: need(order, ORDER_TEMPLATE, Id(1))?,
        batch: need(order, ORDER_TEMPLATE, Id(2))?,
        voucher: need(order, ORDER_TEMPLATE, Id(3))?,
        operator: need(order, ORDER_TEMPLATE, Id(4))?,
        acquirer: need(order, ORDER_TEMPLATE, Id(5))?,
        transaction_type: need(order, ORDER_TEMPLATE, Id(6))?,
        expires_at,
        key_id: find_text(signature, Id(1)).map(str::to_owned),
        signature: signature_bytes,
    };
    check_order_formats(&view)?;
    Ok(view)
}

/// The formats [`Order::unsigned`] writes, checked again on what was read, so a code made
/// elsewhere (a terminal) meets the same rules before anyone looks up or pays its order.
fn check_order_formats(view: &OrderView) -> Result<(), QrError> {
    check_printable("26.01", "merchant ID", &view.merchant_id, 15, 15)?;
    check_reference(&view.reference)?;
    check_printable("80.01", "terminal ID", &view.tid, 8, 8)?;
    check_digits("80.02", "batch number", &view.batch, 6, 6)?;
    check_digits("80.03", "voucher number", &view.voucher, 6, 6)?;
    check_printable("80.04", "operator", &view.operator, 1, 6)?;
    check_digits("80.05", "acquirer", &view.acquirer, 1, 11)?;
    check_digits("80.06", "transaction type", &view.transaction_type, 2, 2)?;
    if let Some(key_id) = &view.key_id {
        check_printable("81.01", "key identifier", key_id, 1, 8)?;
    }
    if view.amount_minor == 0 {
        return Err(invalid(
            Id::AMOUNT,
            "transaction amount",
            "must be more than zero",
        ));
    }
    Ok(())
}

fn posbridge_template<'a>(
    payload: &'a Payload,
    id: Id,
    gui: &str,
    what: &'static str,
) -> Result<&'a [Field], QrError> {
    let fields = payload.template(id).ok_or(QrError::Missing {
        path: id.to_string(),
        what,
    })?;
    match find_text(fields, Id::GUI) {
        Some(found) if found.eq_ignore_ascii_case(gui) => Ok(fields),
        _ => Err(invalid(
            format!("{id}.00"),
            "globally unique identifier",
            format!("is not {gui:?}"),
        )),
    }
}

/// The exact bytes that were signed for the order in `payload` (see
/// [`UnsignedOrder::signing_input`]).
pub fn order_signing_input(payload: &Payload) -> Vec<u8> {
    signing_input_of(payload.fields())
}

/// Reads posbridge's order from `payload` and checks its signature with `verify(message,
/// signature, key_id)` (e.g. a closure calling the security module), which answers whether the
/// signature is genuine. Returns the order only when it is.
pub fn verify_order<E>(
    payload: &Payload,
    gui: &str,
    verify: impl FnOnce(&[u8], &[u8], Option<&str>) -> Result<bool, E>,
) -> Result<OrderView, VerifyError<E>> {
    let order = read_order(payload, gui).map_err(VerifyError::Payload)?;
    let message = order_signing_input(payload);
    match verify(&message, &order.signature, order.key_id.as_deref()) {
        Ok(true) => Ok(order),
        Ok(false) => Err(VerifyError::BadSignature),
        Err(error) => Err(VerifyError::Verifier(error)),
    }
}

/// Why [`verify_order`] refused a payload.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError<E> {
    /// The payload is not a well-formed posbridge order.
    #[error("not a posbridge order: {0}")]
    Payload(QrError),
    /// The signature does not match the order: the payload was changed or not made by posbridge.
    #[error("the QR order's signature does not match: the payload was altered or forged")]
    BadSignature,
    /// The verifier itself failed (e.g. the security module is unreachable).
    #[error("verifying the QR order's signature failed: {0}")]
    Verifier(E),
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn amounts_round_trip_through_minor_units() {
        assert_eq!(format_amount(2372, 2), "23.72");
        assert_eq!(format_amount(5, 2), "0.05");
        assert_eq!(format_amount(5, 0), "5");
        assert_eq!(format_amount(1234, 3), "1.234");
        assert_eq!(parse_amount("23.72", 2), Ok(2372));
        assert_eq!(parse_amount("98.", 2), Ok(9800));
        assert_eq!(parse_amount("98", 2), Ok(9800));
        assert_eq!(parse_amount("0.5", 2), Ok(50));
        assert!(parse_amount("1.234", 2).is_err());
        assert!(parse_amount("1.2.3", 2).is_err());
        assert!(parse_amount(".5", 2).is_err());
        assert!(parse_amount("99999999999999999999", 2).is_err());
    }

    #[test]
    fn expiry_matches_known_instants() {
        // 2026-11-26T05:30:00Z
        let expiry = Expiry::from_unix_seconds(1_795_671_000).unwrap();
        assert_eq!(expiry.to_yymmddhhmmss(), "261126053000");
        assert_eq!(Expiry::parse("261126053000"), Some(expiry));
        // Leap day.
        let leap = Expiry::parse("240229235959").unwrap();
        assert_eq!(leap.unix_seconds(), 1_709_251_199);
        assert_eq!(Expiry::parse("250229000000"), None);
        assert_eq!(Expiry::parse("261326053000"), None);
        assert_eq!(Expiry::from_unix_seconds(0), None);
    }
}
