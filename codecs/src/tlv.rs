//! Tag-length-value readers and writers for sub-fields: BER-TLV (EMV data in field 55, with
//! multi-byte tags and long length forms) and the simple fixed-width layouts networks use in
//! fields 62/63. Readers walk a borrowed value and return ranges into it; every length is checked
//! against what is left before it is used.

use std::ops::Range;

use crate::spec::{NumberEncoding, SimpleTlv};

/// One TLV item inside a field value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Item {
    /// The tag bytes.
    pub tag: Range<usize>,
    /// The value bytes.
    pub value: Range<usize>,
    /// The whole item (tag, length and value).
    pub whole: Range<usize>,
}

/// A malformed TLV: position in the value and why.
pub(crate) type TlvError = (usize, &'static str);

/// Reads the BER-TLV item at `pos`; `Ok(None)` at the end. 0x00 and 0xFF bytes between items
/// are EMV padding and are skipped.
pub(crate) fn ber_next(data: &[u8], mut pos: usize) -> Result<Option<Item>, TlvError> {
    while matches!(data.get(pos), Some(0x00 | 0xFF)) {
        pos += 1;
    }
    let Some(&first) = data.get(pos) else {
        return Ok(None);
    };
    let start = pos;
    let mut end_tag = pos + 1;
    if first & 0x1F == 0x1F {
        loop {
            let b = *data
                .get(end_tag)
                .ok_or((end_tag, "tag runs past the end"))?;
            end_tag += 1;
            if b & 0x80 == 0 {
                break;
            }
            if end_tag - start >= 4 {
                return Err((start, "tag longer than 4 bytes"));
            }
        }
    }
    let l0 = *data.get(end_tag).ok_or((end_tag, "length missing"))?;
    let (len, len_bytes) = if l0 < 0x80 {
        (usize::from(l0), 1)
    } else {
        let n = usize::from(l0 & 0x7F);
        if n == 0 || n > 3 {
            return Err((end_tag, "unsupported length form"));
        }
        let bytes = data
            .get(end_tag + 1..end_tag + 1 + n)
            .ok_or((end_tag, "length runs past the end"))?;
        (
            bytes
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b)),
            1 + n,
        )
    };
    let value_start = end_tag + len_bytes;
    let remaining = data.len().saturating_sub(value_start);
    if len > remaining {
        return Err((end_tag, "value runs past the end"));
    }
    Ok(Some(Item {
        tag: start..end_tag,
        value: value_start..value_start + len,
        whole: start..value_start + len,
    }))
}

/// Names of the EMV tags field 55 commonly carries (EMV Book 3, annex A), for the inspector.
pub(crate) fn emv_tag_name(tag: &[u8]) -> Option<&'static str> {
    Some(match tag {
        [0x4F] => "Application identifier (card)",
        [0x50] => "Application label",
        [0x57] => "Track 2 equivalent data",
        [0x5A] => "Application PAN",
        [0x5F, 0x20] => "Cardholder name",
        [0x5F, 0x24] => "Application expiration date",
        [0x5F, 0x2A] => "Transaction currency code",
        [0x5F, 0x34] => "PAN sequence number",
        [0x82] => "Application interchange profile",
        [0x84] => "Dedicated file name",
        [0x8A] => "Authorisation response code",
        [0x91] => "Issuer authentication data",
        [0x95] => "Terminal verification results",
        [0x9A] => "Transaction date",
        [0x9C] => "Transaction type",
        [0x9F, 0x02] => "Amount, authorised",
        [0x9F, 0x03] => "Amount, other",
        [0x9F, 0x09] => "Application version number (terminal)",
        [0x9F, 0x10] => "Issuer application data",
        [0x9F, 0x1A] => "Terminal country code",
        [0x9F, 0x1E] => "Interface device serial number",
        [0x9F, 0x26] => "Application cryptogram",
        [0x9F, 0x27] => "Cryptogram information data",
        [0x9F, 0x33] => "Terminal capabilities",
        [0x9F, 0x34] => "Cardholder verification method results",
        [0x9F, 0x35] => "Terminal type",
        [0x9F, 0x36] => "Application transaction counter",
        [0x9F, 0x37] => "Unpredictable number",
        [0x9F, 0x41] => "Transaction sequence counter",
        [0x9F, 0x63] => "Card product identification",
        _ => return None,
    })
}

/// Whether a BER tag is constructed (its value is itself TLV).
pub(crate) fn ber_constructed(tag: &[u8]) -> bool {
    tag.first().is_some_and(|b| b & 0x20 != 0)
}

/// Appends a BER length.
pub(crate) fn ber_write_length(len: usize, out: &mut Vec<u8>) -> Result<(), &'static str> {
    match len {
        0..=0x7F => out.push(len as u8),
        0x80..=0xFF => out.extend_from_slice(&[0x81, len as u8]),
        0x100..=0xFFFF => out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]),
        _ => return Err("value longer than 65535 bytes"),
    }
    Ok(())
}

/// Checks that bytes form one well-formed BER tag.
pub(crate) fn ber_valid_tag(tag: &[u8]) -> bool {
    match tag {
        [] => false,
        [first] => first & 0x1F != 0x1F,
        [first, rest @ ..] => {
            first & 0x1F == 0x1F
                && rest.len() <= 3
                && rest.iter().take(rest.len() - 1).all(|b| b & 0x80 != 0)
                && rest.last().is_some_and(|b| b & 0x80 == 0)
        }
    }
}

fn read_number(encoding: NumberEncoding, bytes: &[u8]) -> Option<usize> {
    let mut n = 0usize;
    for &b in bytes {
        match encoding {
            NumberEncoding::Ascii => {
                if !b.is_ascii_digit() {
                    return None;
                }
                n = n * 10 + usize::from(b - b'0');
            }
            NumberEncoding::Ebcdic => {
                if !(0xF0..=0xF9).contains(&b) {
                    return None;
                }
                n = n * 10 + usize::from(b - 0xF0);
            }
            NumberEncoding::Bcd => {
                if b >> 4 > 9 || b & 0xF > 9 {
                    return None;
                }
                n = n * 100 + usize::from(b >> 4) * 10 + usize::from(b & 0xF);
            }
            NumberEncoding::Binary => n = (n << 8) | usize::from(b),
        }
    }
    Some(n)
}

/// Largest length a simple TLV length field can carry.
pub(crate) fn simple_capacity(cfg: &SimpleTlv) -> usize {
    let w = u32::from(cfg.length_bytes);
    match cfg.length_encoding {
        NumberEncoding::Ascii | NumberEncoding::Ebcdic => 10usize.pow(w) - 1,
        NumberEncoding::Bcd => 10usize.pow(2 * w) - 1,
        NumberEncoding::Binary => (1usize << (8 * w)) - 1,
    }
}

/// Appends a simple TLV length.
pub(crate) fn simple_write_length(cfg: &SimpleTlv, len: usize, out: &mut Vec<u8>) {
    let w = usize::from(cfg.length_bytes);
    let mut tmp = [0u8; 4];
    let mut v = len;
    for slot in tmp[..w].iter_mut().rev() {
        *slot = match cfg.length_encoding {
            NumberEncoding::Ascii => b'0' + (v % 10) as u8,
            NumberEncoding::Ebcdic => 0xF0 + (v % 10) as u8,
            NumberEncoding::Bcd => (((v / 10) % 10) as u8) << 4 | (v % 10) as u8,
            NumberEncoding::Binary => (v & 0xFF) as u8,
        };
        v = match cfg.length_encoding {
            NumberEncoding::Ascii | NumberEncoding::Ebcdic => v / 10,
            NumberEncoding::Bcd => v / 100,
            NumberEncoding::Binary => v >> 8,
        };
    }
    out.extend_from_slice(&tmp[..w]);
}

/// Reads the simple TLV item at `pos`; `Ok(None)` at the end.
pub(crate) fn simple_next(
    cfg: &SimpleTlv,
    data: &[u8],
    pos: usize,
) -> Result<Option<Item>, TlvError> {
    if pos >= data.len() {
        return Ok(None);
    }
    let tag_end = pos + usize::from(cfg.tag_bytes);
    let len_end = tag_end + usize::from(cfg.length_bytes);
    let len_bytes = data
        .get(tag_end..len_end)
        .ok_or((pos, "tag and length run past the end"))?;
    let len =
        read_number(cfg.length_encoding, len_bytes).ok_or((tag_end, "length is not a number"))?;
    if len > data.len() - len_end {
        return Err((tag_end, "value runs past the end"));
    }
    Ok(Some(Item {
        tag: pos..tag_end,
        value: len_end..len_end + len,
        whole: pos..len_end + len,
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ber_reads_multibyte_tags_and_long_lengths() {
        let mut data = vec![
            0x9F, 0x26, 0x08, 1, 2, 3, 4, 5, 6, 7, 8, 0x82, 0x02, 0x39, 0x00, 0x5F, 0x20, 0x81,
            0x81,
        ];
        data.extend(std::iter::repeat_n(0xAB, 0x81));
        let a = ber_next(&data, 0).unwrap().unwrap();
        assert_eq!((a.tag.clone(), a.value.clone()), (0..2, 3..11));
        let b = ber_next(&data, a.whole.end).unwrap().unwrap();
        assert_eq!(&data[b.tag.clone()], &[0x82]);
        let c = ber_next(&data, b.whole.end).unwrap().unwrap();
        assert_eq!(&data[c.tag.clone()], &[0x5F, 0x20]);
        assert_eq!(c.value.len(), 0x81);
        assert_eq!(ber_next(&data, c.whole.end).unwrap(), None);
        assert!(ber_next(&[0x9F, 0x26, 0x09, 1], 0).is_err());
        assert!(ber_next(&[0x9F], 0).is_err());
        assert!(ber_next(&[0x5A, 0x84, 0, 0, 0, 1], 0).is_err());
    }

    #[test]
    fn simple_tlv_lengths() {
        let cfg = SimpleTlv {
            tag_bytes: 2,
            tag_ascii: true,
            length_bytes: 3,
            length_encoding: NumberEncoding::Ascii,
        };
        let data = b"01003abc02000";
        let a = simple_next(&cfg, data, 0).unwrap().unwrap();
        assert_eq!(&data[a.value.clone()], b"abc");
        let b = simple_next(&cfg, data, a.whole.end).unwrap().unwrap();
        assert!(b.value.is_empty());
        assert!(simple_next(&cfg, b"01009abc", 0).is_err());
        let mut out = Vec::new();
        simple_write_length(&cfg, 42, &mut out);
        assert_eq!(out, b"042");
        assert_eq!(simple_capacity(&cfg), 999);
    }
}
