//! Whole messages: [`decode`] borrows the input and records where each field lies (a fixed array
//! on the stack, no heap allocation); [`MessageBuilder`] holds values (borrowed or owned, inline
//! for the usual number of fields) and writes their wire form straight into a caller's reusable
//! buffer when it encodes. Both expose the exact bytes a MAC covers, so a MAC is computed over
//! what travels, never over a re-encoding.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use arrayvec::ArrayVec;

use crate::bitmap::Bitmap;
use crate::ebcdic::CodePage;
use crate::error::{DecodeError, DecodeErrorKind, EncodeError, Location, PathError};
use crate::field::{self, EncodeBuffer, Slot};
use crate::mask;
use crate::spec::{BitmapEncoding, DataEncoding, FieldDef, MtiEncoding, Spec, ValueKind};
use crate::subfield::{self, SubfieldEntry};

/// Zero bytes a new builder's header borrows (spec headers are at most 256 bytes), so creating
/// a builder does not allocate for it.
static ZERO_HEADER: [u8; 256] = [0; 256];

/// Most fields a message can carry (three bitmaps).
const SLOTS: usize = 192;

/// A decoded message. Field data are ranges into the input; nothing is copied until asked for.
/// Its `Debug` masks sensitive fields as the dialect marks them.
#[derive(Clone)]
pub struct Message<'a> {
    spec: &'a Spec,
    input: &'a [u8],
    mti: [u8; 4],
    mti_offset: u32,
    bitmap: Bitmap,
    /// Start offset (at the length prefix) of each field, one per set bit in field order (bitmap
    /// bits 1/65 get an unused slot), so a field's slot index is its rank in the bitmap. Offsets
    /// fit in 16 bits because specs cap messages at 65535 bytes; 384 bytes keep the message
    /// cheap to return and copy.
    slots: [u16; SLOTS],
}

/// One field of a decoded message. Its `Debug` shows the value masked as if in a message with
/// no MTI-specific rule (sensitive fields are always masked).
#[derive(Clone, Copy)]
pub struct Field<'a> {
    def: &'a FieldDef,
    code_page: CodePage,
    wire: &'a [u8],
    units: usize,
    offset: usize,
}

impl<'a> Field<'a> {
    /// The field number.
    pub fn number(&self) -> u16 {
        self.def.number
    }

    /// The field's definition in the dialect.
    pub fn def(&self) -> &'a FieldDef {
        self.def
    }

    /// The data bytes exactly as on the wire (without the length prefix).
    pub fn wire(&self) -> &'a [u8] {
        self.wire
    }

    /// Offset of the data in the input.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// The length as announced (or fixed), in the field's length unit.
    pub fn units(&self) -> usize {
        self.units
    }

    /// The value: text characters, digits (BCD unpacked, `=` for a track-2 separator) or bytes
    /// (binary, or hex text decoded). Borrowed from the input when the wire form is the value.
    pub fn value(&self) -> Cow<'a, [u8]> {
        field::value(self.def, self.code_page, self.wire, self.units)
    }

    /// Appends the value to `out` (no allocation once `out` has capacity).
    pub fn append_value(&self, out: &mut Vec<u8>) {
        field::append_value(self.def, self.code_page, self.wire, self.units, out);
    }

    /// The value as a `&str` without copying, when the field is ASCII text (or ASCII digits).
    pub fn as_str(&self) -> Option<&'a str> {
        match self.def.data {
            DataEncoding::Ascii => std::str::from_utf8(self.wire).ok(),
            _ => None,
        }
    }

    /// The value as an unsigned number, for numeric fields (amounts, STAN); no allocation.
    pub fn as_u64(&self) -> Option<u64> {
        let mut n: u64 = 0;
        let mut digits = 0;
        let mut push = |c: u8| -> Option<()> {
            if !c.is_ascii_digit() {
                return None;
            }
            digits += 1;
            n = n.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
            Some(())
        };
        match self.def.data {
            DataEncoding::Ascii => self.wire.iter().try_for_each(|&c| push(c))?,
            DataEncoding::Bcd | DataEncoding::Ebcdic => {
                self.value().iter().try_for_each(|&c| push(c))?
            }
            DataEncoding::Binary | DataEncoding::Hex => return None,
        }
        (digits > 0).then_some(n)
    }

    /// The value as text: characters, digits, or uppercase hex for binary fields (the inspector's
    /// JSON form).
    pub fn text(&self) -> String {
        field::value_text(self.def, &self.value())
    }
}

/// The largest message the codec decodes or encodes: decoded messages keep 16-bit offsets.
pub const MAX_MESSAGE_BYTES: usize = 65_535;

/// Decodes one message (from the header through the last field; no frame length prefix).
///
/// Fails on the first problem, naming the part, the byte offset and the reason. Trailing bytes
/// are an error. Does not allocate.
pub fn decode<'a>(spec: &'a Spec, input: &'a [u8]) -> Result<Message<'a>, DecodeError> {
    // The codec's own limit (its 16-bit offsets); how large a frame a peer may send is the
    // framing's and the configuration's business (`framing.max_frame_bytes`), not the
    // message's: a message read without a length prefix is not held to the prefix's 9999.
    let _ = spec;
    if input.len() > MAX_MESSAGE_BYTES {
        return Err(DecodeError::new(
            Location::Header,
            0,
            DecodeErrorKind::TooLarge {
                size: input.len(),
                limit: MAX_MESSAGE_BYTES,
            },
        ));
    }
    let header_len = spec.header.length;
    if input.len() < header_len {
        return Err(DecodeError::new(
            Location::Header,
            0,
            DecodeErrorKind::Truncated {
                needed: header_len,
                available: input.len(),
            },
        ));
    }
    let mut pos = header_len;
    let mti = read_mti(spec, input, pos)?;
    let mti_offset = pos;
    pos += spec.mti.width();

    let mut words = [0u64; 3];
    words[0] = read_bitmap(spec, input, pos, 1)?;
    pos += spec.bitmap.width();
    if words[0] >> 63 == 1 {
        if spec.max_bitmaps < 2 {
            return Err(DecodeError::new(
                Location::Bitmap(1),
                pos - spec.bitmap.width(),
                DecodeErrorKind::UnexpectedBitmap(2),
            ));
        }
        words[1] = read_bitmap(spec, input, pos, 2)?;
        pos += spec.bitmap.width();
        if spec.max_bitmaps == 3 && words[1] >> 63 == 1 {
            words[2] = read_bitmap(spec, input, pos, 3)?;
            pos += spec.bitmap.width();
        }
    }

    // Built in place and filled, so the 384-byte slot table is not copied on the way out.
    let mut message = Message {
        spec,
        input,
        mti,
        mti_offset: mti_offset as u32,
        bitmap: Bitmap::from_words(words),
        slots: [0u16; SLOTS],
    };
    let mut count = 0usize;
    let cp = spec.code_page;
    for (w, &word) in words.iter().enumerate() {
        let mut bits = word;
        while bits != 0 {
            let lz = bits.leading_zeros();
            bits &= !(1u64 << (63 - lz));
            let number = (w as u16) * 64 + lz as u16 + 1;
            if !spec.is_bitmap_bit(number) {
                let def = spec.field(number).ok_or_else(|| {
                    DecodeError::new(
                        Location::Field(number),
                        pos,
                        DecodeErrorKind::UnknownField {
                            dialect: spec.name.clone(),
                        },
                    )
                })?;
                let next = field::decode_field(def, cp, input, pos)?;
                if let Some(s) = message.slots.get_mut(count) {
                    // pos < input.len() <= MAX_MESSAGE_BYTES = 65535 (checked above).
                    *s = pos as u16;
                }
                pos = next;
            }
            count += 1;
        }
    }
    if pos != input.len() {
        return Err(DecodeError::new(
            Location::End,
            pos,
            DecodeErrorKind::TrailingBytes(input.len() - pos),
        ));
    }
    Ok(message)
}

fn truncated(location: Location, at: usize, needed: usize, input: &[u8]) -> DecodeError {
    DecodeError::new(
        location,
        at,
        DecodeErrorKind::Truncated {
            needed,
            available: input.len().saturating_sub(at),
        },
    )
}

fn read_mti(spec: &Spec, input: &[u8], pos: usize) -> Result<[u8; 4], DecodeError> {
    let width = spec.mti.width();
    let bytes = input
        .get(pos..pos + width)
        .ok_or_else(|| truncated(Location::Mti, pos, width, input))?;
    let bad = |i: usize, what: &'static str, value: u8| {
        DecodeError::new(
            Location::Mti,
            pos + i,
            DecodeErrorKind::BadData {
                what,
                value,
                position: i,
            },
        )
    };
    let mut mti = [0u8; 4];
    match spec.mti {
        MtiEncoding::Ascii => {
            for (i, (&b, m)) in bytes.iter().zip(mti.iter_mut()).enumerate() {
                if !b.is_ascii_digit() {
                    return Err(bad(i, "digit", b));
                }
                *m = b;
            }
        }
        MtiEncoding::Ebcdic => {
            for (i, (&b, m)) in bytes.iter().zip(mti.iter_mut()).enumerate() {
                *m = spec
                    .code_page
                    .to_ascii(b)
                    .filter(u8::is_ascii_digit)
                    .ok_or_else(|| bad(i, "EBCDIC digit", b))?;
            }
        }
        MtiEncoding::Bcd => {
            for (i, &b) in bytes.iter().enumerate() {
                for (k, nib) in [(0, b >> 4), (1, b & 0xF)] {
                    if nib > 9 {
                        return Err(bad(i, "BCD digit", nib));
                    }
                    if let Some(m) = mti.get_mut(2 * i + k) {
                        *m = b'0' + nib;
                    }
                }
            }
        }
    }
    Ok(mti)
}

fn read_bitmap(spec: &Spec, input: &[u8], pos: usize, which: u8) -> Result<u64, DecodeError> {
    let width = spec.bitmap.width();
    let bytes = input
        .get(pos..pos + width)
        .ok_or_else(|| truncated(Location::Bitmap(which), pos, width, input))?;
    match spec.bitmap {
        BitmapEncoding::Binary => Ok(bytes.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b))),
        BitmapEncoding::Hex => {
            let mut word = 0u64;
            for (i, &c) in bytes.iter().enumerate() {
                let v = match c {
                    b'0'..=b'9' => c - b'0',
                    b'A'..=b'F' => c - b'A' + 10,
                    // Uppercase only, so that an accepted message re-encodes byte for byte.
                    _ => {
                        return Err(DecodeError::new(
                            Location::Bitmap(which),
                            pos + i,
                            DecodeErrorKind::BadData {
                                what: "uppercase hex digit",
                                value: c,
                                position: i,
                            },
                        ));
                    }
                };
                word = (word << 4) | u64::from(v);
            }
            Ok(word)
        }
    }
}

impl<'a> Message<'a> {
    /// The dialect this message was decoded with.
    pub fn spec(&self) -> &'a Spec {
        self.spec
    }

    /// The input the message was decoded from.
    pub fn bytes(&self) -> &'a [u8] {
        self.input
    }

    /// The MTI as four ASCII digits.
    pub fn mti(&self) -> &str {
        std::str::from_utf8(&self.mti).unwrap_or("????")
    }

    /// The MTI as four ASCII digit bytes.
    pub fn mti_bytes(&self) -> [u8; 4] {
        self.mti
    }

    /// The raw header bytes (TPDU, application header...); empty when the dialect has none.
    pub fn header(&self) -> &'a [u8] {
        self.input
            .get(..self.spec.header.length)
            .unwrap_or_default()
    }

    /// Offset of the MTI in the input.
    pub fn mti_offset(&self) -> usize {
        self.mti_offset as usize
    }

    /// Which fields are present (bitmap bits 1 and 65 included as sent).
    pub fn bitmap(&self) -> Bitmap {
        self.bitmap
    }

    /// Whether a data element is present.
    #[inline]
    pub fn has(&self, number: u16) -> bool {
        self.bitmap.contains(number) && !self.spec.is_bitmap_bit(number)
    }

    #[inline]
    fn slot(&self, number: u16) -> Option<(&'a FieldDef, Slot)> {
        if !self.has(number) {
            return None;
        }
        let start = *self.slots.get(self.bitmap.rank(number))?;
        let def = self.spec.field(number)?;
        let slot = field::locate(def, self.spec.code_page, self.input, usize::from(start))?;
        Some((def, slot))
    }

    /// A present field.
    #[inline]
    pub fn field(&self, number: u16) -> Option<Field<'a>> {
        let (def, slot) = self.slot(number)?;
        let wire = self.input.get(slot.start..slot.start + slot.wire_len)?;
        Some(Field {
            def,
            code_page: self.spec.code_page,
            wire,
            units: slot.units,
            offset: slot.start,
        })
    }

    /// The wire bytes of a present field's data (zero-copy).
    #[inline]
    pub fn raw(&self, number: u16) -> Option<&'a [u8]> {
        self.field(number).map(|f| f.wire)
    }

    /// A present ASCII field as `&str` (zero-copy); see [`Field::as_str`].
    pub fn str(&self, number: u16) -> Option<&'a str> {
        self.field(number)?.as_str()
    }

    /// All present data elements in ascending order.
    pub fn fields(&self) -> impl Iterator<Item = Field<'a>> + '_ {
        self.bitmap.iter().filter_map(move |n| self.field(n))
    }

    /// A sub-field by path (`60.2`, `55.9F26`, `62.01`), or a whole field (`35`). `Ok(None)` when
    /// the field or sub-field is absent.
    pub fn get(&self, path: &str) -> Result<Option<Cow<'a, [u8]>>, PathError> {
        let (number, sub) = subfield::split_path(path)?;
        let def = self
            .spec
            .field(number)
            .ok_or(PathError::UnknownField(number))?;
        if sub.is_some() && def.subfields.is_none() {
            return Err(PathError::NoSubfields(number));
        }
        let Some(field) = self.field(number) else {
            return Ok(None);
        };
        let value = field.value();
        let Some(sub) = sub else {
            return Ok(Some(value));
        };
        let range = subfield::locate(def, &value, sub, path)?;
        Ok(range.map(|r| match &value {
            Cow::Borrowed(v) => Cow::Borrowed(v.get(r).unwrap_or_default()),
            Cow::Owned(v) => Cow::Owned(v.get(r).unwrap_or_default().to_vec()),
        }))
    }

    /// The sub-fields present in a field (positional parts or top-level TLV items).
    pub fn subfields(&self, number: u16) -> Result<Vec<(SubfieldEntry, Vec<u8>)>, PathError> {
        let def = self
            .spec
            .field(number)
            .ok_or(PathError::UnknownField(number))?;
        if def.subfields.is_none() {
            return Err(PathError::NoSubfields(number));
        }
        let Some(field) = self.field(number) else {
            return Ok(Vec::new());
        };
        let value = field.value();
        Ok(subfield::list(def, &value)?
            .into_iter()
            .map(|e| {
                let v = value.get(e.range.clone()).unwrap_or_default().to_vec();
                (e, v)
            })
            .collect())
    }

    /// The byte range (in the input) the dialect's MAC covers, when the message carries a MAC:
    /// from the MTI (or header) up to, not including, the MAC field.
    pub fn mac_range(&self) -> Option<Range<usize>> {
        let mac = self.spec.mac?;
        let (def, slot) = self.slot(mac.field)?;
        let end = slot.start - def.prefix.map_or(0, |p| usize::from(p.width));
        let start = if mac.from_header {
            0
        } else {
            self.mti_offset as usize
        };
        Some(start..end)
    }

    /// The bytes the MAC covers (see [`Message::mac_range`]).
    pub fn mac_input(&self) -> Option<&'a [u8]> {
        self.input.get(self.mac_range()?)
    }

    /// The MAC field, if present.
    pub fn mac(&self) -> Option<Field<'a>> {
        self.field(self.spec.mac?.field)
    }

    /// A builder holding this message's values (borrowed where the wire form is the value), to
    /// change some fields and encode a reply or a re-send. The decoder accepts only canonical
    /// encodings, so the values re-encode to the bytes received.
    pub fn to_builder(&self) -> MessageBuilder<'a> {
        let mut values = Values::default();
        let mut bitmap = Bitmap::new();
        for f in self.fields() {
            bitmap.insert(f.number());
            values.push(Value {
                def: f.def(),
                value: f.value(),
            });
        }
        // Keep a secondary/tertiary bitmap the sender included even if it announces nothing, so
        // the message re-encodes byte for byte.
        let words = self.bitmap.words();
        let min_bitmaps = if words[0] >> 63 == 0 {
            1
        } else if self.spec.max_bitmaps == 3 && words[1] >> 63 == 1 {
            3
        } else {
            2
        };
        MessageBuilder {
            spec: self.spec,
            mti: self.mti,
            header: Cow::Borrowed(self.header()),
            bitmap,
            values,
            min_bitmaps,
        }
    }
}

/// Where the MAC sits in an encoded message and what it covers (offsets in the buffer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MacSpan {
    /// The bytes to compute the MAC over.
    pub covered: Range<usize>,
    /// The MAC field's data on the wire (to patch in place).
    pub value: Range<usize>,
}

/// The layout of an encoded message in the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// Offset where the message (its header) starts in the buffer.
    pub start: usize,
    /// Offset of the MTI.
    pub mti_offset: usize,
    /// Offset just after the last field.
    pub end: usize,
    /// The MAC's position, when the message carries the dialect's MAC field.
    pub mac: Option<MacSpan>,
}

/// A message built in code (or from a decoded one): MTI, header and field values, checked
/// against the dialect as they are set. Values are the field's value, not its wire form: text,
/// digits (ASCII digit bytes, `=` in track 2) or bytes. Its `Debug` masks sensitive fields.
///
/// The builder keeps the values (borrowed, or owned when given as a `Vec`) in field order,
/// inline for up to 32 fields, and writes their wire form only when it encodes, straight into
/// the caller's buffer: building and encoding a message of up to 32 fields from borrowed values
/// does not allocate, whether the builder is new or reused.
#[derive(Clone)]
pub struct MessageBuilder<'a> {
    spec: &'a Spec,
    mti: [u8; 4],
    header: Cow<'a, [u8]>,
    /// The data elements set (never bits 1 or 65: encoding adds the bitmap bits it writes).
    bitmap: Bitmap,
    /// One value per field in `bitmap`, in field order: a field's index is its rank in `bitmap`.
    values: Values<'a>,
    /// Bitmaps written even when no field needs them (kept from a decoded message).
    min_bitmaps: u8,
}

/// Field values a builder keeps inline before it moves them to the heap: more than most messages
/// carry (the reference 0200 of the benchmark has 21), so a new builder costs no allocation.
const INLINE_FIELDS: usize = 32;

/// A builder's values in field order: inline while they fit, then all on the heap. Once on the
/// heap they stay there (`clear` keeps the capacity), so a reused builder does not allocate
/// again. Kept out of `smallvec` because its type is invariant in the values' lifetime, which
/// would change what callers may do with a `MessageBuilder<'a>`.
#[derive(Clone, Default)]
struct Values<'a> {
    inline: ArrayVec<Value<'a>, INLINE_FIELDS>,
    /// Every value, once more than `INLINE_FIELDS` were set at once (`inline` is then empty).
    heap: Vec<Value<'a>>,
}

/// One field's value with its definition, looked up once when the value is set so that
/// encoding goes straight to it.
#[derive(Clone)]
struct Value<'a> {
    def: &'a FieldDef,
    value: Cow<'a, [u8]>,
}

impl<'a> Values<'a> {
    fn on_heap(&self) -> bool {
        self.heap.capacity() != 0
    }

    fn as_slice(&self) -> &[Value<'a>] {
        if self.on_heap() {
            &self.heap
        } else {
            &self.inline
        }
    }

    fn as_mut_slice(&mut self) -> &mut [Value<'a>] {
        if self.on_heap() {
            &mut self.heap
        } else {
            &mut self.inline
        }
    }

    fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// Appends a value (a field above all those set).
    #[inline]
    fn push(&mut self, value: Value<'a>) {
        if !self.on_heap() {
            match self.inline.try_push(value) {
                Ok(()) => return,
                Err(full) => {
                    self.spill();
                    self.heap.push(full.element());
                    return;
                }
            }
        }
        self.heap.push(value);
    }

    /// Moves the inline values to the heap, where they stay.
    #[cold]
    fn spill(&mut self) {
        self.heap.reserve(2 * INLINE_FIELDS);
        self.heap.extend(self.inline.drain(..));
    }

    /// Inserts at `index` (at most `len()`: the caller's bitmap rank guarantees it).
    fn insert(&mut self, index: usize, value: Value<'a>) {
        if !self.on_heap() {
            if !self.inline.is_full() {
                self.inline.insert(index, value);
                return;
            }
            self.spill();
        }
        self.heap.insert(index, value);
    }

    fn remove(&mut self, index: usize) {
        if self.on_heap() {
            self.heap.remove(index);
        } else {
            self.inline.remove(index);
        }
    }

    fn clear(&mut self) {
        self.inline.clear();
        self.heap.clear();
    }

    /// Heap bytes held: owned values and the spilled list.
    fn heap_bytes(&self) -> usize {
        let owned: usize = self
            .as_slice()
            .iter()
            .map(|v| match &v.value {
                Cow::Borrowed(_) => 0,
                Cow::Owned(v) => v.capacity(),
            })
            .sum();
        owned + self.heap.capacity() * std::mem::size_of::<Value<'a>>()
    }
}

fn parse_mti(mti: &str) -> Result<[u8; 4], EncodeError> {
    <[u8; 4]>::try_from(mti.as_bytes())
        .ok()
        .filter(|m| m.iter().all(u8::is_ascii_digit))
        .ok_or(EncodeError::BadMti)
}

impl<'a> MessageBuilder<'a> {
    /// An empty message of this MTI; the header (if the dialect has one) starts as zero bytes.
    pub fn new(spec: &'a Spec, mti: &str) -> Result<Self, EncodeError> {
        Ok(MessageBuilder {
            spec,
            mti: parse_mti(mti)?,
            header: Cow::Borrowed(ZERO_HEADER.get(..spec.header.length).unwrap_or_default()),
            bitmap: Bitmap::new(),
            values: Values::default(),
            min_bitmaps: 1,
        })
    }

    /// The dialect.
    pub fn spec(&self) -> &'a Spec {
        self.spec
    }

    /// The MTI.
    pub fn mti(&self) -> &str {
        std::str::from_utf8(&self.mti).unwrap_or("????")
    }

    /// Changes the MTI (four digits).
    pub fn set_mti(&mut self, mti: &str) -> Result<&mut Self, EncodeError> {
        self.mti = parse_mti(mti)?;
        Ok(self)
    }

    /// The raw header.
    pub fn header(&self) -> &[u8] {
        &self.header
    }

    /// Sets the raw header; it must have the dialect's header length.
    pub fn set_header(
        &mut self,
        header: impl Into<Cow<'a, [u8]>>,
    ) -> Result<&mut Self, EncodeError> {
        let header = header.into();
        if header.len() != self.spec.header.length {
            return Err(EncodeError::BadHeader {
                expected: self.spec.header.length,
                actual: header.len(),
            });
        }
        self.header = header;
        Ok(self)
    }

    #[inline]
    fn def(&self, number: u16) -> Result<&'a FieldDef, EncodeError> {
        if self.spec.is_bitmap_bit(number) {
            return Err(EncodeError::UnknownField(number));
        }
        self.spec
            .field(number)
            .ok_or(EncodeError::UnknownField(number))
    }

    /// Sets a field's value (checked against the dialect: length, characters). The value is
    /// kept as given (a borrowed slice is not copied); its wire form is written when the message
    /// is encoded.
    pub fn set(
        &mut self,
        number: u16,
        value: impl Into<Cow<'a, [u8]>>,
    ) -> Result<&mut Self, EncodeError> {
        let def = self.def(number)?;
        let value = value.into();
        field::check(def, self.spec.code_page, &value)?;
        // Fields are usually set in ascending order: then the value goes at the end.
        let value = Value { def, value };
        if self.bitmap.highest().is_none_or(|highest| number > highest) {
            self.bitmap.insert(number);
            self.values.push(value);
        } else {
            self.put_before_last(number, value);
        }
        Ok(self)
    }

    /// Stores the value of a field at or below the highest one set: replaces it, or inserts it
    /// at its rank.
    fn put_before_last(&mut self, number: u16, value: Value<'a>) {
        let index = self.bitmap.rank(number);
        if self.bitmap.contains(number) {
            if let Some(slot) = self.values.as_mut_slice().get_mut(index) {
                *slot = value;
            }
        } else {
            self.bitmap.insert(number);
            self.values.insert(index, value);
        }
    }

    /// Sets a text or digit field from a string (borrowed, no copy).
    pub fn set_str(&mut self, number: u16, value: &'a str) -> Result<&mut Self, EncodeError> {
        self.set(number, value.as_bytes())
    }

    /// Sets a field from its text form: characters for text and digit fields (Latin-1), hex for
    /// binary fields. The inverse of [`Field::text`].
    pub fn set_text(&mut self, number: u16, text: &str) -> Result<&mut Self, EncodeError> {
        let def = self.def(number)?;
        let value = field::parse_value_text(def, text)?;
        self.set(number, value)
    }

    /// Starts over with a new MTI, keeping the header and the allocated capacity, so a builder
    /// reused per message does not allocate.
    pub fn clear(&mut self, mti: &str) -> Result<&mut Self, EncodeError> {
        self.mti = parse_mti(mti)?;
        self.values.clear();
        self.bitmap = Bitmap::new();
        self.min_bitmaps = 1;
        Ok(self)
    }

    /// Removes a field.
    pub fn remove(&mut self, number: u16) -> &mut Self {
        if self.bitmap.contains(number) {
            self.values.remove(self.bitmap.rank(number));
            self.bitmap.remove(number);
        }
        self
    }

    /// A field's value, if set.
    pub fn value(&self, number: u16) -> Option<&[u8]> {
        if !self.bitmap.contains(number) {
            return None;
        }
        self.values
            .as_slice()
            .get(self.bitmap.rank(number))
            .map(|v| v.value.as_ref())
    }

    /// A field's text form (see [`Field::text`]).
    pub fn text(&self, number: u16) -> Option<String> {
        Some(field::value_text(
            self.spec.field(number)?,
            self.value(number)?,
        ))
    }

    /// Heap bytes the builder holds for its fields: the values it owns (those given as a `Vec`;
    /// borrowed ones cost nothing) and its field list once more than 32 fields were set, for
    /// callers that watch memory. A replaced value is freed at once, so this stays bounded
    /// however often a long-lived builder is edited.
    pub fn retained_bytes(&self) -> usize {
        self.values.heap_bytes()
    }

    /// Numbers of the fields set, ascending.
    pub fn numbers(&self) -> impl Iterator<Item = u16> + '_ {
        self.bitmap.iter()
    }

    /// A sub-field (or whole field) by path; `Ok(None)` if absent.
    pub fn get(&self, path: &str) -> Result<Option<&[u8]>, PathError> {
        let (number, sub) = subfield::split_path(path)?;
        let def = self
            .spec
            .field(number)
            .ok_or(PathError::UnknownField(number))?;
        if sub.is_some() && def.subfields.is_none() {
            return Err(PathError::NoSubfields(number));
        }
        let Some(value) = self.value(number) else {
            return Ok(None);
        };
        match sub {
            None => Ok(Some(value)),
            Some(sub) => Ok(subfield::locate(def, value, sub, path)?.and_then(|r| value.get(r))),
        }
    }

    /// Sets a sub-field by path (`60.2`, `55.9F26`, `62.01`), creating the field if needed.
    /// Positional parts must have their exact length; earlier unset parts are filled with zeros
    /// (digits) or spaces (text). TLV items are replaced in place or appended.
    pub fn set_sub(&mut self, path: &str, value: &[u8]) -> Result<&mut Self, EncodeError> {
        let (number, sub) = subfield::split_path(path)?;
        let def = self.def(number)?;
        let Some(sub) = sub else {
            return self.set(number, value.to_vec());
        };
        let current = self.value(number).unwrap_or_default();
        let updated = subfield::replace(def, current, sub, value, path)?;
        self.set(number, updated)
    }

    /// Makes every value owned, detaching the builder from the input it was built from.
    pub fn into_owned(mut self) -> MessageBuilder<'a> {
        for v in self.values.as_mut_slice() {
            if let Cow::Borrowed(bytes) = v.value {
                v.value = Cow::Owned(bytes.to_vec());
            }
        }
        MessageBuilder {
            header: Cow::Owned(self.header.into_owned()),
            ..self
        }
    }

    /// Encodes the message (header, MTI, bitmaps, fields) appended to `out`, writing each
    /// field's wire form from its value. Does not allocate once `out` has the capacity. The MAC
    /// field is written as set.
    pub fn encode_into<B: EncodeBuffer>(&self, out: &mut B) -> Result<Encoded, EncodeError> {
        self.encode_inner(out, false)
    }

    /// Encodes with the dialect's MAC: writes a zero placeholder in the MAC field, calls
    /// `compute` with exactly the covered bytes, and patches its result in place.
    pub fn encode_with_mac<B, F, E>(&self, out: &mut B, compute: F) -> Result<Encoded, EncodeError>
    where
        B: EncodeBuffer,
        F: FnOnce(&[u8]) -> Result<Vec<u8>, E>,
        E: std::fmt::Display,
    {
        let start = out.written().len();
        let encoded = self.encode_inner(out, true)?;
        let Some(span) = encoded.mac.clone() else {
            out.truncate_to(start);
            return Err(EncodeError::Mac("this dialect has no MAC field".into()));
        };
        let mac = match compute(out.written().get(span.covered.clone()).unwrap_or_default()) {
            Ok(mac) => mac,
            Err(e) => {
                out.truncate_to(start);
                return Err(EncodeError::Mac(e.to_string()));
            }
        };
        if let Err(e) = patch_mac(self.spec, out.written_mut(), &span, &mac) {
            out.truncate_to(start);
            return Err(e);
        }
        Ok(encoded)
    }

    fn encode_inner<B: EncodeBuffer>(
        &self,
        out: &mut B,
        mac_placeholder: bool,
    ) -> Result<Encoded, EncodeError> {
        let start = out.written().len();
        let result = self.encode_body(out, start, mac_placeholder);
        if result.is_err() {
            out.truncate_to(start);
        }
        result
    }

    fn encode_body<B: EncodeBuffer>(
        &self,
        out: &mut B,
        start: usize,
        mac_placeholder: bool,
    ) -> Result<Encoded, EncodeError> {
        let spec = self.spec;
        if self.header.len() != spec.header.length {
            return Err(EncodeError::BadHeader {
                expected: spec.header.length,
                actual: self.header.len(),
            });
        }
        // A programmer's error, never the caller's: `set`, `remove` and `to_builder` keep one
        // value per bitmap bit.
        assert_eq!(
            self.values.len(),
            self.bitmap.len(),
            "builder values and bitmap out of step"
        );
        let mac_number = spec.mac.map(|m| m.field);
        let placeholder = if mac_placeholder { mac_number } else { None };

        // The data elements to write: those set, and the MAC placeholder (which replaces a MAC
        // set by the caller).
        let mut fields = self.bitmap;
        if let Some(m) = placeholder {
            fields.insert(m);
        }
        let [_, secondary, tertiary] = fields.words();
        let count = if tertiary != 0 {
            3
        } else if secondary != 0 {
            2
        } else {
            1
        }
        .max(self.min_bitmaps.min(spec.max_bitmaps));
        let mut bitmap = fields;
        if count >= 2 {
            bitmap.insert(1);
        }
        if count == 3 {
            bitmap.insert(65);
        }

        out.put(&self.header);
        let mti_offset = out.written().len();
        write_mti(spec, &self.mti, out);
        for word in bitmap.words().iter().take(usize::from(count)) {
            write_bitmap(spec.bitmap, *word, out);
        }

        let cp = spec.code_page;
        let covered_start = if spec.mac.is_some_and(|m| m.from_header) {
            start
        } else {
            mti_offset
        };
        let mut mac = None;
        let mut record = |number: u16, field_start: usize, end: usize| {
            let prefix = spec
                .field(number)
                .and_then(|d| d.prefix)
                .map_or(0, |p| usize::from(p.width));
            mac = Some(MacSpan {
                covered: covered_start..field_start,
                value: field_start + prefix..end,
            });
        };
        // The placeholder, while not yet written, goes before the first field above it; it
        // replaces a MAC the caller set.
        let mut pending = placeholder;
        for (number, value) in self.bitmap.iter().zip(self.values.as_slice()) {
            if let Some(m) = pending
                && m <= number
            {
                let field_start = out.written().len();
                write_placeholder(spec.field(m), cp, out)?;
                record(m, field_start, out.written().len());
                pending = None;
                if m == number {
                    continue;
                }
            }
            let field_start = out.written().len();
            field::write_value(value.def, cp, &value.value, out)?;
            if mac_number == Some(number) {
                record(number, field_start, out.written().len());
            }
        }
        if let Some(m) = pending {
            let field_start = out.written().len();
            write_placeholder(spec.field(m), cp, out)?;
            record(m, field_start, out.written().len());
        }
        let end = out.written().len();
        if end - start > MAX_MESSAGE_BYTES {
            return Err(EncodeError::TooLarge {
                size: end - start,
                limit: MAX_MESSAGE_BYTES,
            });
        }
        Ok(Encoded {
            start,
            mti_offset,
            end,
            mac,
        })
    }

    /// Encodes into a fresh vector (convenience; allocates).
    pub fn to_bytes(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::with_capacity(256);
        self.encode_into(&mut out)?;
        Ok(out)
    }
}

/// Writes a MAC field of zeros (its full fixed length).
fn write_placeholder<B: EncodeBuffer>(
    def: Option<&FieldDef>,
    cp: CodePage,
    out: &mut B,
) -> Result<(), EncodeError> {
    let def = def.ok_or_else(|| EncodeError::Mac("the MAC field is not defined".into()))?;
    let len = def.value_len_of_units(def.max);
    let zero = if def.value_kind() == ValueKind::Bytes {
        0u8
    } else {
        b'0'
    };
    let zeros = [zero; 64];
    let value = zeros
        .get(..len)
        .ok_or_else(|| EncodeError::Mac("MAC field longer than 64".into()))?;
    let units = def
        .units_of_value(len)
        .map_err(|_| EncodeError::Mac("MAC field of impossible length".into()))?;
    field::write_field(def, cp, value, units, out);
    Ok(())
}

/// Writes a computed MAC (the field's value: bytes for a binary or hex-text MAC field) into an
/// encoded message at `span.value`.
pub fn patch_mac(
    spec: &Spec,
    buf: &mut [u8],
    span: &MacSpan,
    mac: &[u8],
) -> Result<(), EncodeError> {
    let def = spec
        .mac
        .and_then(|m| spec.field(m.field))
        .ok_or_else(|| EncodeError::Mac("no MAC field".into()))?;
    let expected = def.value_len_of_units(def.max);
    if mac.len() != expected {
        return Err(EncodeError::Mac(format!(
            "MAC must be {expected} bytes, got {}",
            mac.len()
        )));
    }
    let slot = buf
        .get_mut(span.value.clone())
        .ok_or_else(|| EncodeError::Mac("span outside the buffer".into()))?;
    match def.data {
        DataEncoding::Binary | DataEncoding::Ascii if slot.len() == mac.len() => {
            slot.copy_from_slice(mac)
        }
        DataEncoding::Hex if slot.len() == 2 * mac.len() => {
            let hex = field::to_hex(mac);
            slot.copy_from_slice(hex.as_bytes());
        }
        _ => {
            return Err(EncodeError::Mac(
                "MAC field encoding cannot be patched".into(),
            ));
        }
    }
    Ok(())
}

fn write_mti<B: EncodeBuffer>(spec: &Spec, mti: &[u8; 4], out: &mut B) {
    match spec.mti {
        MtiEncoding::Ascii => out.put(mti),
        MtiEncoding::Ebcdic => {
            for &c in mti {
                out.put_byte(spec.code_page.from_ascii(c).unwrap_or(0xF0));
            }
        }
        MtiEncoding::Bcd => {
            let d = |i: usize| mti[i].wrapping_sub(b'0') & 0xF;
            out.put(&[(d(0) << 4) | d(1), (d(2) << 4) | d(3)]);
        }
    }
}

fn write_bitmap<B: EncodeBuffer>(encoding: BitmapEncoding, word: u64, out: &mut B) {
    match encoding {
        BitmapEncoding::Binary => out.put(&word.to_be_bytes()),
        BitmapEncoding::Hex => {
            let [a, b, c, d, e, f, g, h] = field::hex8((word >> 32) as u32);
            let [i, j, k, l, m, n, o, p] = field::hex8(word as u32);
            out.put(&[a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p]);
        }
    }
}

impl Spec {
    /// Decodes a message with this dialect; see [`decode`].
    pub fn decode<'a>(&'a self, input: &'a [u8]) -> Result<Message<'a>, DecodeError> {
        decode(self, input)
    }

    /// Starts a message of this dialect; see [`MessageBuilder::new`].
    pub fn builder(&self, mti: &str) -> Result<MessageBuilder<'_>, EncodeError> {
        MessageBuilder::new(self, mti)
    }
}

impl fmt::Debug for Field<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Field")
            .field("number", &self.def.number)
            .field("offset", &self.offset)
            .field(
                "value",
                &mask::shown_text(self.def, self.def.sensitive, &self.value()),
            )
            .finish()
    }
}

impl fmt::Debug for Message<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mti = self.mti;
        let fields: std::collections::BTreeMap<u16, String> = self
            .fields()
            .map(|fl| (fl.number(), mask::masked_text(fl.def, &mti, &fl.value())))
            .collect();
        f.debug_struct("Message")
            .field("dialect", &self.spec.name)
            .field("mti", &self.mti())
            .field("header", &field::to_hex(self.header()))
            .field("fields", &fields)
            .finish()
    }
}

impl fmt::Debug for MessageBuilder<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mti = self.mti;
        let fields: std::collections::BTreeMap<u16, String> = self
            .bitmap
            .iter()
            .zip(self.values.as_slice())
            .map(|(number, v)| (number, mask::masked_text(v.def, &mti, &v.value)))
            .collect();
        f.debug_struct("MessageBuilder")
            .field("dialect", &self.spec.name)
            .field("mti", &self.mti())
            .field("header", &field::to_hex(&self.header))
            .field("fields", &fields)
            .field("retained_bytes", &self.retained_bytes())
            .finish()
    }
}
