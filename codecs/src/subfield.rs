//! Sub-field paths: `60.2` (the second positional part of field 60), `55.9F26` (BER-TLV tag 9F26
//! in field 55, nested tags as further segments: `55.70.5A`), `62.01` (tag `01` of a simple TLV).
//! Sub-fields work on the field's value (digits, text or bytes), never on its wire form, so the
//! same path means the same thing whether the field is BCD, ASCII or EBCDIC.

use std::ops::Range;

use crate::error::PathError;
use crate::field::{from_hex, to_hex};
use crate::spec::{FieldDef, SimpleTlv, Subfields, ValueKind};
use crate::tlv;

/// One sub-field found in a value, for listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubfieldEntry {
    /// Full path (`60.2`, `55.9F26`).
    pub path: String,
    /// Human name (positional parts and well-known EMV tags), empty otherwise.
    pub name: String,
    /// Where the sub-field's value lies in the field's value.
    pub range: Range<usize>,
    /// True if the value is text or digits, false if it is bytes (show as hex).
    pub is_text: bool,
}

/// Splits `FIELD[.SUB...]`.
pub(crate) fn split_path(path: &str) -> Result<(u16, Option<&str>), PathError> {
    let (head, rest) = match path.split_once('.') {
        Some((h, r)) => (h, Some(r)),
        None => (path, None),
    };
    let field: u16 = head
        .parse()
        .ok()
        .filter(|n| (1..=192).contains(n))
        .ok_or_else(|| PathError::Syntax(path.into()))?;
    if rest.is_some_and(|r| r.is_empty() || r.split('.').any(str::is_empty)) {
        return Err(PathError::Syntax(path.into()));
    }
    Ok((field, rest))
}

fn layout(def: &FieldDef) -> Result<&Subfields, PathError> {
    def.subfields
        .as_ref()
        .ok_or(PathError::NoSubfields(def.number))
}

fn malformed(def: &FieldDef) -> impl Fn(tlv::TlvError) -> PathError + '_ {
    move |(position, why)| PathError::Malformed {
        field: def.number,
        position,
        why,
    }
}

fn positional_range(parts: &[crate::spec::Part], index: usize) -> Range<usize> {
    let start: usize = parts.iter().take(index - 1).map(|p| p.length).sum();
    let len = parts.get(index - 1).map_or(0, |p| p.length);
    start..start + len
}

fn part_index(
    def: &FieldDef,
    parts: &[crate::spec::Part],
    seg: &str,
    path: &str,
) -> Result<usize, PathError> {
    let index: usize = seg.parse().map_err(|_| PathError::Syntax(path.into()))?;
    if index == 0 || index > parts.len() {
        return Err(PathError::NoSuchPart {
            field: def.number,
            index,
        });
    }
    Ok(index)
}

fn simple_tag(cfg: &SimpleTlv, seg: &str, path: &str) -> Result<Vec<u8>, PathError> {
    let tag = if cfg.tag_ascii {
        Some(seg.as_bytes().to_vec())
    } else {
        from_hex(seg)
    };
    tag.filter(|t| t.len() == usize::from(cfg.tag_bytes))
        .ok_or_else(|| PathError::Syntax(path.into()))
}

fn ber_tag(seg: &str, path: &str) -> Result<Vec<u8>, PathError> {
    from_hex(seg)
        .filter(|t| tlv::ber_valid_tag(t))
        .ok_or_else(|| PathError::Syntax(path.into()))
}

/// Finds the BER item with `tag` in `value[within]`.
fn ber_find(
    def: &FieldDef,
    value: &[u8],
    within: Range<usize>,
    tag: &[u8],
) -> Result<Option<tlv::Item>, PathError> {
    let data = value.get(within.clone()).unwrap_or_default();
    let mut pos = 0;
    while let Some(item) =
        tlv::ber_next(data, pos).map_err(|(p, why)| malformed(def)((p + within.start, why)))?
    {
        pos = item.whole.end;
        if data.get(item.tag.clone()) == Some(tag) {
            let shift = |r: Range<usize>| r.start + within.start..r.end + within.start;
            return Ok(Some(tlv::Item {
                tag: shift(item.tag),
                value: shift(item.value),
                whole: shift(item.whole),
            }));
        }
    }
    Ok(None)
}

fn simple_find(
    def: &FieldDef,
    cfg: &SimpleTlv,
    value: &[u8],
    tag: &[u8],
) -> Result<Option<tlv::Item>, PathError> {
    let mut pos = 0;
    while let Some(item) = tlv::simple_next(cfg, value, pos).map_err(malformed(def))? {
        pos = item.whole.end;
        if value.get(item.tag.clone()) == Some(tag) {
            return Ok(Some(item));
        }
    }
    Ok(None)
}

/// Where the sub-field `sub` lies in the field's `value`; `None` if it is absent.
pub(crate) fn locate(
    def: &FieldDef,
    value: &[u8],
    sub: &str,
    path: &str,
) -> Result<Option<Range<usize>>, PathError> {
    match layout(def)? {
        Subfields::Positional(parts) => {
            let index = part_index(def, parts, sub, path)?;
            let range = positional_range(parts, index);
            if value.len() >= range.end {
                Ok(Some(range))
            } else if value.len() > range.start {
                Err(PathError::Malformed {
                    field: def.number,
                    position: value.len(),
                    why: "value ends inside this part",
                })
            } else {
                Ok(None)
            }
        }
        Subfields::SimpleTlv(cfg) => {
            let tag = simple_tag(cfg, sub, path)?;
            Ok(simple_find(def, cfg, value, &tag)?.map(|i| i.value))
        }
        Subfields::BerTlv => {
            let mut within = 0..value.len();
            let mut segments = sub.split('.').peekable();
            while let Some(seg) = segments.next() {
                let tag = ber_tag(seg, path)?;
                let Some(item) = ber_find(def, value, within, &tag)? else {
                    return Ok(None);
                };
                if segments.peek().is_some() && !tlv::ber_constructed(&tag) {
                    return Err(PathError::Syntax(path.into()));
                }
                within = item.value;
            }
            Ok(Some(within))
        }
    }
}

/// Returns the field value with sub-field `sub` replaced by (or extended with) `new`.
pub(crate) fn replace(
    def: &FieldDef,
    value: &[u8],
    sub: &str,
    new: &[u8],
    path: &str,
) -> Result<Vec<u8>, PathError> {
    match layout(def)? {
        Subfields::Positional(parts) => {
            let index = part_index(def, parts, sub, path)?;
            let range = positional_range(parts, index);
            if new.len() != range.len() {
                return Err(PathError::WrongLength {
                    path: path.into(),
                    expected: range.len(),
                    actual: new.len(),
                });
            }
            let mut out = value.to_vec();
            if out.len() < range.start {
                // Earlier parts not set yet: fill them so the new part lands at its position.
                let fill = match def.value_kind() {
                    ValueKind::Digits => b'0',
                    ValueKind::Text => b' ',
                    ValueKind::Bytes => 0,
                };
                out.resize(range.start, fill);
            }
            if out.len() < range.end {
                out.truncate(range.start);
                out.extend_from_slice(new);
            } else if let Some(slot) = out.get_mut(range) {
                slot.copy_from_slice(new);
            }
            Ok(out)
        }
        Subfields::SimpleTlv(cfg) => {
            let tag = simple_tag(cfg, sub, path)?;
            if new.len() > tlv::simple_capacity(cfg) {
                return Err(PathError::Unencodable {
                    path: path.into(),
                    why: "value too long for the TLV length",
                });
            }
            let mut item = tag.clone();
            tlv::simple_write_length(cfg, new.len(), &mut item);
            item.extend_from_slice(new);
            let found = simple_find(def, cfg, value, &tag)?.map(|i| i.whole);
            Ok(splice(value, found, &item))
        }
        Subfields::BerTlv => {
            if sub.contains('.') {
                return Err(PathError::Unencodable {
                    path: path.into(),
                    why: "only top-level BER tags can be set",
                });
            }
            let tag = ber_tag(sub, path)?;
            let mut item = tag.clone();
            tlv::ber_write_length(new.len(), &mut item).map_err(|why| PathError::Unencodable {
                path: path.into(),
                why,
            })?;
            item.extend_from_slice(new);
            let found = ber_find(def, value, 0..value.len(), &tag)?.map(|i| i.whole);
            Ok(splice(value, found, &item))
        }
    }
}

fn splice(value: &[u8], found: Option<Range<usize>>, item: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + item.len());
    match found {
        Some(r) => {
            out.extend_from_slice(value.get(..r.start).unwrap_or_default());
            out.extend_from_slice(item);
            out.extend_from_slice(value.get(r.end..).unwrap_or_default());
        }
        None => {
            out.extend_from_slice(value);
            out.extend_from_slice(item);
        }
    }
    out
}

/// Lists the sub-fields present in a field's value (top level only for TLV).
pub(crate) fn list(def: &FieldDef, value: &[u8]) -> Result<Vec<SubfieldEntry>, PathError> {
    let n = def.number;
    let text_parent = def.value_kind() != ValueKind::Bytes;
    let mut out = Vec::new();
    match layout(def)? {
        Subfields::Positional(parts) => {
            let mut start = 0;
            for (i, part) in parts.iter().enumerate() {
                if value.len() <= start {
                    break;
                }
                let end = (start + part.length).min(value.len());
                out.push(SubfieldEntry {
                    path: format!("{n}.{}", i + 1),
                    name: part.name.clone(),
                    range: start..end,
                    is_text: text_parent,
                });
                start += part.length;
            }
        }
        Subfields::SimpleTlv(cfg) => {
            let mut pos = 0;
            while let Some(item) = tlv::simple_next(cfg, value, pos).map_err(malformed(def))? {
                let tag = value.get(item.tag.clone()).unwrap_or_default();
                let tag = if cfg.tag_ascii {
                    tag.iter().map(|&b| char::from(b)).collect()
                } else {
                    to_hex(tag)
                };
                out.push(SubfieldEntry {
                    path: format!("{n}.{tag}"),
                    name: String::new(),
                    range: item.value.clone(),
                    is_text: text_parent,
                });
                pos = item.whole.end;
            }
        }
        Subfields::BerTlv => {
            let mut pos = 0;
            while let Some(item) = tlv::ber_next(value, pos).map_err(malformed(def))? {
                let tag_bytes = value.get(item.tag.clone()).unwrap_or_default();
                let tag = to_hex(tag_bytes);
                out.push(SubfieldEntry {
                    path: format!("{n}.{tag}"),
                    name: tlv::emv_tag_name(tag_bytes).unwrap_or_default().to_owned(),
                    range: item.value.clone(),
                    is_text: false,
                });
                pos = item.whole.end;
            }
        }
    }
    Ok(out)
}
