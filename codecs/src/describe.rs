//! A dialect described for people: the message layout and every field's wire format, as a
//! Markdown table. The interface docs hold this output verbatim (a test keeps them equal), so
//! what a vendor reads is what the codec does.

use crate::spec::{
    Align, BitmapEncoding, Charset, DataEncoding, FieldDef, FrameLength, HeaderKind, LengthUnit,
    MtiEncoding, NumberEncoding, Sensitivity, Spec, Subfields,
};
use std::fmt::Write;

/// The dialect's layout and field table in Markdown.
pub fn markdown(spec: &Spec) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Dialect `{}`: {}.", spec.name, spec.description);
    let _ = writeln!(out);
    let _ = writeln!(out, "- Frame: {}.", frame(spec));
    let _ = writeln!(out, "- Header: {}.", header(spec));
    let _ = writeln!(out, "- MTI: {}.", mti(spec.mti));
    let _ = writeln!(
        out,
        "- Bitmap: {}, at most {} (primary{}).",
        match spec.bitmap {
            BitmapEncoding::Binary => "8 binary bytes each",
            BitmapEncoding::Hex => "16 hex characters each (uppercase when sent)",
        },
        spec.max_bitmaps,
        match spec.max_bitmaps {
            1 => "",
            2 => ", secondary",
            _ => ", secondary, tertiary",
        }
    );
    if let Some(mac) = spec.mac {
        let _ = writeln!(
            out,
            "- MAC: field {}, over the bytes from the {} up to the MAC field.",
            mac.field,
            if mac.from_header { "header" } else { "MTI" }
        );
    }
    let _ = writeln!(
        out,
        "- Lengths: `n` digits, `an`/`ans` characters, `b` bytes; a variable field's prefix \
         (LL, LLL) counts what its row says. BCD values of odd length carry one pad nibble on the \
         side the row names."
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| F | name | format | length | BCD alignment, pad | notes |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for field in spec.fields() {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            field.number,
            field.name.replace('|', "/"),
            format(field),
            length(field),
            alignment(field),
            notes(field)
        );
    }
    out
}

fn frame(spec: &Spec) -> String {
    let prefix = match spec.framing.length {
        FrameLength::Binary2 => "2-byte big-endian binary length of what follows",
        FrameLength::Bcd2 => "2-byte BCD length (4 digits) of what follows",
        FrameLength::Ascii4 => "4 ASCII digits giving the length of what follows",
        FrameLength::Etx => "no length; the message ends with ETX (0x03)",
        FrameLength::None => "none (the transport delimits messages)",
    };
    format!(
        "{prefix}; at most {} bytes after the prefix",
        spec.framing.max_frame_bytes
    )
}

fn header(spec: &Spec) -> String {
    match spec.header.kind {
        HeaderKind::None => "none".into(),
        HeaderKind::Tpdu => "5-byte TPDU: 0x60, destination (2 bytes), source (2 bytes)".into(),
        HeaderKind::TpduCupsPos => "11 bytes: 5-byte TPDU (0x60, destination 2 bytes, source 2 \
             bytes), then the 6-byte application header (application type, software version, \
             terminal status / processing request, 3-byte sub-version)"
            .into(),
        HeaderKind::CupsHost => "the 46-byte CUPS host header (see the header table above)".into(),
        HeaderKind::Raw => format!("{} opaque bytes", spec.header.length),
    }
}

fn mti(encoding: MtiEncoding) -> &'static str {
    match encoding {
        MtiEncoding::Ascii => "4 ASCII digits",
        MtiEncoding::Ebcdic => "4 EBCDIC digits",
        MtiEncoding::Bcd => "2 bytes of BCD",
    }
}

fn format(field: &FieldDef) -> String {
    let class = match (field.charset, field.data) {
        (Charset::Track2, _) => "z",
        (Charset::Numeric, _) => "n",
        (_, DataEncoding::Binary | DataEncoding::Hex) => "b",
        _ => "ans",
    };
    let encoding = match field.data {
        DataEncoding::Ascii => "ASCII",
        DataEncoding::Ebcdic => "EBCDIC",
        DataEncoding::Bcd => "BCD",
        DataEncoding::Binary => "binary",
        DataEncoding::Hex => "hex text",
    };
    format!("{class}, {encoding}")
}

fn unit(field: &FieldDef) -> &'static str {
    match (field.counts, field.data) {
        (LengthUnit::Bytes, _) => "bytes",
        (LengthUnit::Digits, DataEncoding::Bcd) => "digits",
        (LengthUnit::Digits, DataEncoding::Hex) => "hex characters",
        (LengthUnit::Digits, _) => "characters",
    }
}

fn length(field: &FieldDef) -> String {
    match field.prefix {
        None => format!("fixed {} {}", field.max, unit(field)),
        Some(prefix) => {
            let kind = match prefix.digits {
                2 => "LLVAR",
                3 => "LLLVAR",
                _ => "LLLLVAR",
            };
            let written = match prefix.encoding {
                NumberEncoding::Ascii => "ASCII",
                NumberEncoding::Ebcdic => "EBCDIC",
                NumberEncoding::Bcd => "BCD",
                NumberEncoding::Binary => "binary",
            };
            format!(
                "{kind} up to {} {}; prefix {} byte{} {written}, counting {}",
                field.max,
                unit(field),
                prefix.width,
                if prefix.width == 1 { "" } else { "s" },
                unit(field)
            )
        }
    }
}

fn alignment(field: &FieldDef) -> String {
    if field.data != DataEncoding::Bcd {
        return "-".into();
    }
    let side = match field.align {
        Align::Left => "left (pad last)",
        Align::Right => "right (pad first)",
    };
    format!("{side}, pad {:X}", field.pad)
}

fn notes(field: &FieldDef) -> String {
    let mut notes = Vec::new();
    if let Some(kind) = field.sensitive {
        notes.push(
            match kind {
                Sensitivity::Pan => "card number: masked in logs",
                Sensitivity::Track => "track data: masked in logs",
                Sensitivity::Pin => "PIN block: never logged",
                Sensitivity::Mac => "MAC",
                Sensitivity::Key => "key material: never logged",
                Sensitivity::Card => "card data: never logged",
            }
            .to_owned(),
        );
        if !field.sensitive_mti.is_empty() {
            let mtis: Vec<String> = field
                .sensitive_mti
                .iter()
                .map(|mti| String::from_utf8_lossy(mti).into_owned())
                .collect();
            if let Some(note) = notes.last_mut() {
                note.push_str(&format!(" (in {})", mtis.join(", ")));
            }
        }
    }
    match &field.subfields {
        None => {}
        Some(Subfields::Positional(parts)) => {
            let list = parts
                .iter()
                .enumerate()
                .map(|(i, part)| {
                    format!("{}.{} {} ({})", field.number, i + 1, part.name, part.length)
                })
                .collect::<Vec<_>>()
                .join("; ");
            notes.push(format!(
                "positional sub-fields, lengths in {}: {list}",
                unit(field)
            ));
        }
        Some(Subfields::BerTlv) => notes.push("BER-TLV (EMV tags)".into()),
        Some(Subfields::SimpleTlv(tlv)) => notes.push(format!(
            "TLV: tag {} byte{} {}, length {} byte{} {}",
            tlv.tag_bytes,
            if tlv.tag_bytes == 1 { "" } else { "s" },
            if tlv.tag_ascii { "ASCII" } else { "binary" },
            tlv.length_bytes,
            if tlv.length_bytes == 1 { "" } else { "s" },
            match tlv.length_encoding {
                NumberEncoding::Ascii => "ASCII digits",
                NumberEncoding::Ebcdic => "EBCDIC digits",
                NumberEncoding::Bcd => "BCD",
                NumberEncoding::Binary => "binary",
            }
        )),
    }
    if notes.is_empty() {
        "-".into()
    } else {
        notes.join("; ").replace('|', "/")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn every_field_of_every_builtin_dialect_has_a_row() {
        for name in Spec::builtin_names() {
            let spec = Spec::builtin(name).unwrap();
            let table = markdown(&spec);
            for field in spec.fields() {
                assert!(
                    table.contains(&format!("\n| {} | ", field.number)),
                    "{name}: field {} missing",
                    field.number
                );
            }
        }
    }

    #[test]
    fn cups_pos_pan_row_says_bcd_llvar_counting_digits_left_aligned() {
        let spec = Spec::builtin("cups-pos").unwrap();
        let table = markdown(&spec);
        let row = table.lines().find(|l| l.starts_with("| 2 | ")).unwrap();
        assert!(row.contains("n, BCD"), "{row}");
        assert!(
            row.contains("LLVAR up to 19 digits; prefix 1 byte BCD, counting digits"),
            "{row}"
        );
        assert!(row.contains("left (pad last), pad 0"), "{row}");
        assert!(row.contains("card number"), "{row}");
    }
}
