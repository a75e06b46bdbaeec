//! One data element on the wire: length prefixes, BCD packing with alignment and pad, hex text,
//! EBCDIC, and the checks that keep a peer's bytes inside the field's definition. Decoding here
//! never copies: it returns where the data lies; conversion to the field's value (digits, text,
//! bytes) happens only when someone asks for it.

use std::borrow::Cow;

use crate::ebcdic::CodePage;
use crate::error::{DecodeError, DecodeErrorKind, EncodeError, Location};
use crate::spec::{
    Align, Charset, DataEncoding, FieldDef, LengthPrefix, NumberEncoding, ValueKind,
};

/// A buffer the encoder can append to and patch (the MAC). Implemented for `Vec<u8>` and
/// `bytes::BytesMut`; neither allocates once it has capacity.
pub trait EncodeBuffer {
    /// Appends bytes.
    fn put(&mut self, bytes: &[u8]);
    /// Appends one byte.
    fn put_byte(&mut self, byte: u8);
    /// Everything written so far.
    fn written(&self) -> &[u8];
    /// Everything written so far, mutable (to patch a MAC in place).
    fn written_mut(&mut self) -> &mut [u8];
    /// Drops everything after `len` (used to undo a failed encode).
    fn truncate_to(&mut self, len: usize);
}

impl EncodeBuffer for Vec<u8> {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
    #[inline]
    fn put_byte(&mut self, byte: u8) {
        self.push(byte);
    }
    fn written(&self) -> &[u8] {
        self
    }
    fn written_mut(&mut self) -> &mut [u8] {
        self
    }
    fn truncate_to(&mut self, len: usize) {
        self.truncate(len);
    }
}

impl EncodeBuffer for bytes::BytesMut {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
    #[inline]
    fn put_byte(&mut self, byte: u8) {
        self.extend_from_slice(&[byte]);
    }
    fn written(&self) -> &[u8] {
        self
    }
    fn written_mut(&mut self) -> &mut [u8] {
        self
    }
    fn truncate_to(&mut self, len: usize) {
        self.truncate(len);
    }
}

/// Where a decoded field's data lies in the input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Slot {
    /// Offset of the data (after the length prefix).
    pub start: usize,
    /// Data bytes on the wire.
    pub wire_len: usize,
    /// Length in the field's `counts` units (needed to place an odd BCD pad).
    pub units: usize,
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// The two uppercase hex characters of every byte: one load per byte when writing hex text.
static HEX_PAIRS: [[u8; 2]; 256] = {
    let mut t = [[0u8; 2]; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = [HEX_UPPER[b >> 4], HEX_UPPER[b & 0xF]];
        b += 1;
    }
    t
};

#[inline]
fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'A'..=b'F' => Some(c - b'A' + 10),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// Reads a length prefix; `None` if it is not a number in its encoding.
#[inline]
fn read_prefix(prefix: &LengthPrefix, cp: CodePage, bytes: &[u8]) -> Option<usize> {
    let mut n = 0usize;
    match prefix.encoding {
        NumberEncoding::Ascii => {
            for &b in bytes {
                if !b.is_ascii_digit() {
                    return None;
                }
                n = n * 10 + usize::from(b - b'0');
            }
        }
        NumberEncoding::Ebcdic => {
            for &b in bytes {
                let c = cp.to_ascii(b).filter(u8::is_ascii_digit)?;
                n = n * 10 + usize::from(c - b'0');
            }
        }
        NumberEncoding::Bcd => {
            for &b in bytes {
                let (hi, lo) = (b >> 4, b & 0xF);
                if hi > 9 || lo > 9 {
                    return None;
                }
                n = n * 100 + usize::from(hi) * 10 + usize::from(lo);
            }
        }
        NumberEncoding::Binary => {
            for &b in bytes {
                n = (n << 8) | usize::from(b);
            }
        }
    }
    Some(n)
}

/// Writes a length prefix (the caller has checked `n <= prefix.capacity`).
#[inline]
fn write_prefix<B: EncodeBuffer>(prefix: &LengthPrefix, n: usize, out: &mut B) {
    // Built right-aligned in 4 bytes; fixed-size writes below compile to plain stores. Two
    // digits at a time from a table: one division per prefix instead of four.
    let (high, low) = ((n / 100) % 100, n % 100);
    let tmp: [u8; 4] = match prefix.encoding {
        NumberEncoding::Ascii => {
            let ([a, b], [c, d]) = (DIGIT_PAIRS[high], DIGIT_PAIRS[low]);
            [a, b, c, d]
        }
        NumberEncoding::Ebcdic => {
            let ([a, b], [c, d]) = (DIGIT_PAIRS[high], DIGIT_PAIRS[low]);
            [a, b, c, d].map(|x| x | 0xF0)
        }
        NumberEncoding::Bcd => [0, 0, BCD_PAIRS[high], BCD_PAIRS[low]],
        NumberEncoding::Binary => (n as u32).to_be_bytes(),
    };
    let [_, b, c, d] = tmp;
    match prefix.width {
        1 => out.put_byte(d),
        2 => out.put(&[c, d]),
        3 => out.put(&[b, c, d]),
        _ => out.put(&tmp),
    }
}

/// Checks the field starting at `pos` (prefix, length, data) and returns the offset after it.
#[inline]
pub(crate) fn decode_field(
    def: &FieldDef,
    cp: CodePage,
    input: &[u8],
    pos: usize,
) -> Result<usize, DecodeError> {
    let loc = Location::Field(def.number);
    let mut at = pos;
    let units = match &def.prefix {
        None => def.max,
        Some(prefix) => {
            let width = usize::from(prefix.width);
            let bytes = input.get(at..at + width).ok_or_else(|| {
                DecodeError::new(
                    loc,
                    at,
                    DecodeErrorKind::Truncated {
                        needed: width,
                        available: input.len().saturating_sub(at),
                    },
                )
            })?;
            let n = read_prefix(prefix, cp, bytes).ok_or_else(|| {
                DecodeError::new(
                    loc,
                    at,
                    DecodeErrorKind::BadLengthPrefix {
                        encoding: prefix.encoding.name(),
                    },
                )
            })?;
            if n > def.max {
                return Err(DecodeError::new(
                    loc,
                    at,
                    DecodeErrorKind::TooLong {
                        length: n,
                        max: def.max,
                    },
                ));
            }
            at += width;
            n
        }
    };
    let wire_len = def.wire_len(units).map_err(|why| {
        DecodeError::new(
            loc,
            pos,
            DecodeErrorKind::ImpossibleLength { length: units, why },
        )
    })?;
    let data = input.get(at..at + wire_len).ok_or_else(|| {
        DecodeError::new(
            loc,
            at,
            DecodeErrorKind::Truncated {
                needed: wire_len,
                available: input.len().saturating_sub(at),
            },
        )
    })?;
    check_data(def, cp, data, units)
        .map_err(|(position, kind)| DecodeError::new(loc, at + position, kind))?;
    Ok(at + wire_len)
}

/// Finds again where the data of a field that [`decode_field`] accepted at `pos` lies. Decoding
/// keeps only each field's start offset, so the message stays small; re-reading a checked prefix
/// costs a few instructions.
#[inline]
pub(crate) fn locate(def: &FieldDef, cp: CodePage, input: &[u8], pos: usize) -> Option<Slot> {
    let (units, start) = match &def.prefix {
        None => (def.max, pos),
        Some(prefix) => {
            let width = usize::from(prefix.width);
            let bytes = input.get(pos..pos + width)?;
            (read_prefix(prefix, cp, bytes)?, pos + width)
        }
    };
    let wire_len = def.wire_len(units).ok()?;
    Some(Slot {
        start,
        wire_len,
        units,
    })
}

/// ASCII digits of 0..=99.
static DIGIT_PAIRS: [[u8; 2]; 100] = {
    let mut t = [[0u8; 2]; 100];
    let mut i = 0;
    while i < 100 {
        t[i] = [b'0' + (i / 10) as u8, b'0' + (i % 10) as u8];
        i += 1;
    }
    t
};

/// Packed BCD of 0..=99.
static BCD_PAIRS: [u8; 100] = {
    let mut t = [0u8; 100];
    let mut i = 0;
    while i < 100 {
        t[i] = (((i / 10) as u8) << 4) | (i % 10) as u8;
        i += 1;
    }
    t
};

/// Which bytes are uppercase hex digits.
static UPPER_HEX: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        t[c] = matches!(c as u8, b'0'..=b'9' | b'A'..=b'F');
        c += 1;
    }
    t
};

/// True when every byte is an ASCII digit; eight bytes per step, since numeric fields are the
/// bulk of most messages.
#[inline]
fn all_ascii_digits(data: &[u8]) -> bool {
    const HIGH: u64 = 0xF0F0_F0F0_F0F0_F0F0;
    const LOW: u64 = 0x0F0F_0F0F_0F0F_0F0F;
    let mut chunks = data.chunks_exact(8);
    let mut ok = true;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let v = u64::from_le_bytes(word);
        // Each byte must be 0x3N with N <= 9: high nibble 3, and N + 6 must not reach 0x10.
        ok &=
            (v & HIGH) == 0x3030_3030_3030_3030 && ((v & LOW) + 0x0606_0606_0606_0606) & HIGH == 0;
    }
    ok && chunks.remainder().iter().all(u8::is_ascii_digit)
}

/// True when every byte is an uppercase hex digit; eight bytes per step (field 55 is often the
/// largest field of a message). Per byte, with no carries between bytes since all are < 0x80:
/// `b + (0x80 - lo)` has its top bit set when `b >= lo`, `b + (0x7F - hi)` when `b > hi`.
#[inline]
fn all_upper_hex(data: &[u8]) -> bool {
    const TOP: u64 = 0x8080_8080_8080_8080;
    let lanes = |x: u8| u64::from_le_bytes([x; 8]);
    let in_range = |v: u64, lo: u8, hi: u8| {
        v.wrapping_add(lanes(0x80 - lo)) & !v.wrapping_add(lanes(0x7F - hi)) & TOP
    };
    let mut chunks = data.chunks_exact(8);
    let mut ok = true;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let v = u64::from_le_bytes(word);
        ok &= v & TOP == 0 && (in_range(v, b'0', b'9') | in_range(v, b'A', b'F')) == TOP;
    }
    ok && chunks
        .remainder()
        .iter()
        .all(|&b| UPPER_HEX[usize::from(b)])
}

/// Checks a field's wire data against its encoding and charset. Returns the byte offset inside
/// the data and the problem.
#[inline]
fn check_data(
    def: &FieldDef,
    cp: CodePage,
    data: &[u8],
    units: usize,
) -> Result<(), (usize, DecodeErrorKind)> {
    let bad = |i: usize, what: &'static str, value: u8| {
        Err((
            i,
            DecodeErrorKind::BadData {
                what,
                value,
                position: i,
            },
        ))
    };
    match def.data {
        DataEncoding::Binary => Ok(()),
        DataEncoding::Ascii => {
            if def.charset == Charset::Numeric && !all_ascii_digits(data) {
                let i = data.iter().position(|b| !b.is_ascii_digit()).unwrap_or(0);
                return bad(i, "digit", data.get(i).copied().unwrap_or(0));
            }
            Ok(())
        }
        DataEncoding::Ebcdic => {
            for (i, &b) in data.iter().enumerate() {
                match cp.to_ascii(b) {
                    None => return bad(i, "EBCDIC character", b),
                    Some(c) if def.charset == Charset::Numeric && !c.is_ascii_digit() => {
                        return bad(i, "EBCDIC digit", b);
                    }
                    Some(_) => {}
                }
            }
            Ok(())
        }
        DataEncoding::Hex => {
            // Uppercase only: a message that is accepted re-encodes to the very same bytes.
            if !all_upper_hex(data) {
                let i = data
                    .iter()
                    .position(|&b| !UPPER_HEX[usize::from(b)])
                    .unwrap_or(0);
                return bad(i, "uppercase hex digit", data.get(i).copied().unwrap_or(0));
            }
            Ok(())
        }
        DataEncoding::Bcd => {
            let (skip_first, skip_last) = bcd_pad(def, data.len(), units);
            if def.charset == Charset::Numeric && bcd_fast_ok(def, data, skip_first, skip_last) {
                return Ok(());
            }
            // Slow path: find and report the offending nibble (or accept track-2 separators).
            let nibbles = data.len() * 2;
            for (i, &b) in data.iter().enumerate() {
                for (k, nib) in [(2 * i, b >> 4), (2 * i + 1, b & 0xF)] {
                    let is_pad = (k == 0 && skip_first) || (k + 1 == nibbles && skip_last);
                    if is_pad {
                        if nib != def.pad {
                            return bad(i, "pad nibble", nib);
                        }
                    } else if nib > 9 && !(nib == 0xD && def.charset == Charset::Track2) {
                        return bad(i, "BCD digit", nib);
                    }
                }
            }
            Ok(())
        }
    }
}

/// Numeric BCD check, eight bytes per step: every nibble is a digit, except a pad nibble at the
/// first or last position, which must be the spec's pad.
#[inline]
fn bcd_fast_ok(def: &FieldDef, data: &[u8], skip_first: bool, skip_last: bool) -> bool {
    let (Some(&first), Some(&last)) = (data.first(), data.last()) else {
        return true;
    };
    let mut inner = data;
    if skip_first {
        if first >> 4 != def.pad || first & 0xF > 9 {
            return false;
        }
        inner = inner.get(1..).unwrap_or_default();
    }
    if skip_last {
        if last & 0xF != def.pad || last >> 4 > 9 {
            return false;
        }
        inner = inner
            .get(..inner.len().saturating_sub(1))
            .unwrap_or_default();
    }
    all_bcd_digits(inner)
}

/// True when every nibble is 0-9: a nibble plus 6 must stay below 16.
#[inline]
fn all_bcd_digits(data: &[u8]) -> bool {
    const LOW: u64 = 0x0F0F_0F0F_0F0F_0F0F;
    const HIGH: u64 = 0xF0F0_F0F0_F0F0_F0F0;
    const SIX: u64 = 0x0606_0606_0606_0606;
    let mut chunks = data.chunks_exact(8);
    let mut ok = true;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let v = u64::from_le_bytes(word);
        ok &= ((v & LOW) + SIX) & HIGH == 0 && (((v >> 4) & LOW) + SIX) & HIGH == 0;
    }
    ok && chunks
        .remainder()
        .iter()
        .all(|&b| b >> 4 <= 9 && b & 0xF <= 9)
}

/// Whether the first or the last nibble of BCD data is padding.
#[inline]
fn bcd_pad(def: &FieldDef, wire_len: usize, units: usize) -> (bool, bool) {
    let digits = def.value_len_of_units(units);
    if digits == wire_len * 2 {
        return (false, false);
    }
    match def.align {
        Align::Right => (true, false),
        Align::Left => (false, true),
    }
}

#[inline]
fn bcd_char(nib: u8) -> u8 {
    match nib {
        0..=9 => b'0' + nib,
        0xD => b'=',
        _ => HEX_UPPER[usize::from(nib & 0xF)],
    }
}

/// The value of a field from its wire data: borrowed when the wire form is the value (ASCII
/// text, binary), converted otherwise.
pub(crate) fn value<'a>(
    def: &FieldDef,
    cp: CodePage,
    wire: &'a [u8],
    units: usize,
) -> Cow<'a, [u8]> {
    match def.data {
        DataEncoding::Ascii | DataEncoding::Binary => Cow::Borrowed(wire),
        _ => {
            let mut out = Vec::with_capacity(wire.len() * 2);
            append_value(def, cp, wire, units, &mut out);
            Cow::Owned(out)
        }
    }
}

/// Appends the value of a field (see [`value`]) to `out`.
pub(crate) fn append_value(
    def: &FieldDef,
    cp: CodePage,
    wire: &[u8],
    units: usize,
    out: &mut Vec<u8>,
) {
    match def.data {
        DataEncoding::Ascii | DataEncoding::Binary => out.extend_from_slice(wire),
        DataEncoding::Ebcdic => out.extend(wire.iter().map(|&b| cp.to_ascii(b).unwrap_or(b'?'))),
        DataEncoding::Hex => {
            out.extend(
                wire.chunks_exact(2)
                    .map(|p| (hex_value(p[0]).unwrap_or(0) << 4) | hex_value(p[1]).unwrap_or(0)),
            );
        }
        DataEncoding::Bcd => {
            let (skip_first, skip_last) = bcd_pad(def, wire.len(), units);
            let nibbles = wire.len() * 2;
            for (i, &b) in wire.iter().enumerate() {
                if !(i == 0 && skip_first) {
                    out.push(bcd_char(b >> 4));
                }
                if !(2 * i + 2 == nibbles && skip_last) {
                    out.push(bcd_char(b & 0xF));
                }
            }
        }
    }
}

/// The field's value as text: characters for text (bytes above 0x7F as Latin-1), digits for BCD,
/// uppercase hex for binary and hex-text fields. This is the JSON form of the inspector.
pub(crate) fn value_text(def: &FieldDef, value: &[u8]) -> String {
    match def.value_kind() {
        ValueKind::Text | ValueKind::Digits => value.iter().map(|&b| char::from(b)).collect(),
        ValueKind::Bytes => to_hex(value),
    }
}

/// Uppercase hex of bytes.
pub fn to_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(char::from(HEX_UPPER[usize::from(b >> 4)]));
        s.push(char::from(HEX_UPPER[usize::from(b & 0xF)]));
    }
    s
}

/// Parses hex text (either case, even length).
pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    if bytes.len() % 2 == 1 {
        return None;
    }
    bytes
        .chunks_exact(2)
        .map(|p| Some((hex_value(p[0])? << 4) | hex_value(p[1])?))
        .collect()
}

/// Parses the text form of a value (see [`value_text`]) back into the value.
pub(crate) fn parse_value_text(def: &FieldDef, text: &str) -> Result<Vec<u8>, EncodeError> {
    match def.value_kind() {
        ValueKind::Text | ValueKind::Digits => text
            .chars()
            .enumerate()
            .map(|(i, c)| {
                u8::try_from(u32::from(c)).map_err(|_| EncodeError::BadCharacter {
                    field: def.number,
                    what: format!("character {c:?} (beyond Latin-1)"),
                    position: i,
                })
            })
            .collect(),
        ValueKind::Bytes => from_hex(text).ok_or_else(|| EncodeError::BadCharacter {
            field: def.number,
            what: "hex text (needs an even number of hex digits)".into(),
            position: 0,
        }),
    }
}

/// Checks a value against the field (length, characters), as [`check_value`] does. ASCII and
/// binary fields, the bulk of most messages, take a short path that only falls back to
/// [`check_value`] to report what is wrong.
#[inline]
pub(crate) fn check(def: &FieldDef, cp: CodePage, value: &[u8]) -> Result<(), EncodeError> {
    if matches!(def.data, DataEncoding::Ascii | DataEncoding::Binary) {
        let fits = match def.units_of_value(value.len()) {
            Ok(u) if def.is_fixed() => u == def.max,
            Ok(u) => u <= def.max,
            Err(_) => false,
        };
        let digits_ok = def.data == DataEncoding::Binary
            || def.charset != Charset::Numeric
            || all_ascii_digits(value);
        if fits && digits_ok {
            return Ok(());
        }
    }
    check_value(def, cp, value).map(|_| ())
}

/// Writes the wire form (prefix and data) of a value that passed [`check`] or came from a
/// decoded field. A value of impossible length is refused, as [`check_value`] refuses it.
#[inline]
pub(crate) fn write_value<B: EncodeBuffer>(
    def: &FieldDef,
    cp: CodePage,
    value: &[u8],
    out: &mut B,
) -> Result<(), EncodeError> {
    match def.units_of_value(value.len()) {
        Ok(units) => {
            write_field(def, cp, value, units, out);
            Ok(())
        }
        Err(why) => Err(EncodeError::BadCharacter {
            field: def.number,
            what: why.into(),
            position: value.len(),
        }),
    }
}

/// Checks a value against the field and returns its length in `counts` units.
pub(crate) fn check_value(
    def: &FieldDef,
    cp: CodePage,
    value: &[u8],
) -> Result<usize, EncodeError> {
    let field = def.number;
    let units = def
        .units_of_value(value.len())
        .map_err(|why| EncodeError::BadCharacter {
            field,
            what: why.into(),
            position: value.len(),
        })?;
    if def.is_fixed() {
        if units != def.max {
            return Err(EncodeError::WrongLength {
                field,
                expected: def.max,
                actual: units,
            });
        }
    } else if units > def.max {
        return Err(EncodeError::TooLong {
            field,
            max: def.max,
            actual: units,
        });
    }
    let bad = |i: usize, what: &str| {
        Err(EncodeError::BadCharacter {
            field,
            what: format!("{what} {:?}", char::from(value[i])),
            position: i,
        })
    };
    match def.data {
        DataEncoding::Binary | DataEncoding::Hex => {}
        DataEncoding::Ascii => {
            if def.charset == Charset::Numeric && !all_ascii_digits(value) {
                let i = value.iter().position(|b| !b.is_ascii_digit()).unwrap_or(0);
                return bad(i, "non-digit");
            }
        }
        DataEncoding::Ebcdic => {
            for (i, &c) in value.iter().enumerate() {
                if cp.from_ascii(c).is_none() {
                    return bad(i, "character without an EBCDIC mapping");
                }
                if def.charset == Charset::Numeric && !c.is_ascii_digit() {
                    return bad(i, "non-digit");
                }
            }
        }
        DataEncoding::Bcd if all_ascii_digits(value) => {}
        DataEncoding::Bcd => {
            for (i, &c) in value.iter().enumerate() {
                let ok = c.is_ascii_digit() || (c == b'=' && def.charset == Charset::Track2);
                if !ok {
                    return bad(i, "non-digit");
                }
            }
        }
    }
    Ok(units)
}

#[inline]
fn bcd_nibble(c: u8) -> u8 {
    if c == b'=' {
        0xD
    } else {
        c.wrapping_sub(b'0') & 0xF
    }
}

/// Writes a field (prefix and data). The value must have passed [`check_value`], which returned
/// `units`.
#[inline]
pub(crate) fn write_field<B: EncodeBuffer>(
    def: &FieldDef,
    cp: CodePage,
    value: &[u8],
    units: usize,
    out: &mut B,
) {
    if let Some(prefix) = &def.prefix {
        write_prefix(prefix, units, out);
    }
    match def.data {
        DataEncoding::Ascii | DataEncoding::Binary => out.put(value),
        _ => write_converted(def, cp, value, out),
    }
}

/// Writes the data of a field whose wire form is not its value (EBCDIC, hex text, BCD). Kept
/// out of line: the copy of ASCII and binary data, most fields, stays a few instructions.
fn write_converted<B: EncodeBuffer>(def: &FieldDef, cp: CodePage, value: &[u8], out: &mut B) {
    match def.data {
        DataEncoding::Ascii | DataEncoding::Binary => out.put(value),
        // Converted through a stack chunk so the buffer sees a few large writes, not one per byte.
        DataEncoding::Ebcdic => {
            let mut chunk = [0u8; 128];
            for part in value.chunks(chunk.len()) {
                for (o, &c) in chunk.iter_mut().zip(part) {
                    *o = cp.from_ascii(c).unwrap_or(0x40);
                }
                out.put(chunk.get(..part.len()).unwrap_or_default());
            }
        }
        DataEncoding::Hex => write_hex(value, out),
        DataEncoding::Bcd => write_bcd(def, value, out),
    }
}

/// Eight uppercase hex characters of four bytes, computed in a register: the bytes are spread
/// to one nibble per byte, then `'0'` is added, plus 7 more where the nibble is 10 or above.
#[inline]
pub(crate) fn hex8(four: u32) -> [u8; 8] {
    let mut y = u64::from(four);
    y = (y | (y << 16)) & 0x0000_FFFF_0000_FFFF;
    y = (y | (y << 8)) & 0x00FF_00FF_00FF_00FF;
    let nibbles = ((y & 0x00F0_00F0_00F0_00F0) << 4) | (y & 0x000F_000F_000F_000F);
    let letters = ((nibbles + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
    (nibbles + 0x3030_3030_3030_3030 + letters * 7).to_be_bytes()
}

/// Writes bytes as uppercase hex text.
#[inline]
pub(crate) fn write_hex<B: EncodeBuffer>(value: &[u8], out: &mut B) {
    let mut chunk = [0u8; 128];
    for part in value.chunks(chunk.len() / 2) {
        let mut quads = part.chunks_exact(4);
        for (o, q) in chunk.chunks_exact_mut(8).zip(&mut quads) {
            o.copy_from_slice(&hex8(u32::from_be_bytes([q[0], q[1], q[2], q[3]])));
        }
        let done = part.len() - quads.remainder().len();
        for (o, &b) in chunk[done * 2..].chunks_exact_mut(2).zip(quads.remainder()) {
            o.copy_from_slice(&HEX_PAIRS[usize::from(b)]);
        }
        out.put(chunk.get(..part.len() * 2).unwrap_or_default());
    }
}

#[inline]
fn write_bcd<B: EncodeBuffer>(def: &FieldDef, digits: &[u8], out: &mut B) {
    let odd = digits.len() % 2 == 1;
    let mut chunk = [0u8; 64];
    let mut n = 0;
    let mut push = |byte: u8, out: &mut B| {
        chunk[n] = byte;
        n += 1;
        if n == chunk.len() {
            out.put(&chunk);
            n = 0;
        }
    };
    let mut rest = digits;
    if odd && def.align == Align::Right {
        let first = digits.first().copied().unwrap_or(b'0');
        push((def.pad << 4) | bcd_nibble(first), out);
        rest = digits.get(1..).unwrap_or_default();
    }
    let mut pairs = rest.chunks_exact(2);
    for p in &mut pairs {
        push((bcd_nibble(p[0]) << 4) | bcd_nibble(p[1]), out);
    }
    if let [last] = pairs.remainder() {
        push((bcd_nibble(*last) << 4) | def.pad, out);
    }
    out.put(&chunk[..n]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_checks_agree_with_byte_checks() {
        for b in 0..=255u8 {
            for pos in 0..8 {
                let mut data = *b"0123456789ABCDEF";
                data[pos] = b;
                let hex = b.is_ascii_digit() || (b'A'..=b'F').contains(&b);
                assert_eq!(all_upper_hex(&data), hex, "{b:#x} at {pos}");
                let mut digits = *b"0123456789012345";
                digits[pos + 8] = b;
                assert_eq!(all_ascii_digits(&digits), b.is_ascii_digit(), "{b:#x}");
                let mut bcd = [0x12u8; 9];
                bcd[pos] = b;
                assert_eq!(all_bcd_digits(&bcd), b >> 4 <= 9 && b & 0xF <= 9, "{b:#x}");
            }
        }
    }

    #[test]
    fn hex_writer_matches_the_table_for_every_byte_and_length() {
        let all: Vec<u8> = (0..=255u8).collect();
        for len in [0, 1, 3, 4, 5, 63, 64, 65, 200, 256] {
            let mut out = Vec::new();
            write_hex(&all[..len], &mut out);
            assert_eq!(out, to_hex(&all[..len]).into_bytes(), "{len}");
        }
    }
}
