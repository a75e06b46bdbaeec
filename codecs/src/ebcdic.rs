//! EBCDIC for the printable ASCII range (0x20..=0x7E), code pages 500 (international) and 1047
//! (Latin-1 open systems). ISO 8583 text fields from mainframe hosts only carry this range, so a
//! small pair of tables keeps the translation exact and branch-free; any other byte is reported
//! as invalid rather than guessed.

/// An EBCDIC code page a spec can name (`ebcdic_code_page = "cp500"` or `"cp1047"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CodePage {
    /// IBM code page 500 (EBCDIC international).
    #[default]
    Cp500,
    /// IBM code page 1047 (EBCDIC Latin-1 / open systems).
    Cp1047,
}

/// EBCDIC bytes of ASCII 0x20..=0x7E in code page 500.
const CP500_FROM_ASCII: [u8; 95] = [
    0x40, 0x4F, 0x7F, 0x7B, 0x5B, 0x6C, 0x50, 0x7D, 0x4D, 0x5D, 0x5C, 0x4E, 0x6B, 0x60, 0x4B, 0x61,
    0xF0, 0xF1, 0xF2, 0xF3, 0xF4, 0xF5, 0xF6, 0xF7, 0xF8, 0xF9, 0x7A, 0x5E, 0x4C, 0x7E, 0x6E, 0x6F,
    0x7C, 0xC1, 0xC2, 0xC3, 0xC4, 0xC5, 0xC6, 0xC7, 0xC8, 0xC9, 0xD1, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6,
    0xD7, 0xD8, 0xD9, 0xE2, 0xE3, 0xE4, 0xE5, 0xE6, 0xE7, 0xE8, 0xE9, 0x4A, 0xE0, 0x5A, 0x5F, 0x6D,
    0x79, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x91, 0x92, 0x93, 0x94, 0x95, 0x96,
    0x97, 0x98, 0x99, 0xA2, 0xA3, 0xA4, 0xA5, 0xA6, 0xA7, 0xA8, 0xA9, 0xC0, 0xBB, 0xD0, 0xA1,
];

/// EBCDIC bytes of ASCII 0x20..=0x7E in code page 1047. It differs from 500 only in
/// `!` (5A), `[` (AD), `]` (BD), `^` (5F) and `|` (4F).
const CP1047_FROM_ASCII: [u8; 95] = [
    0x40, 0x5A, 0x7F, 0x7B, 0x5B, 0x6C, 0x50, 0x7D, 0x4D, 0x5D, 0x5C, 0x4E, 0x6B, 0x60, 0x4B, 0x61,
    0xF0, 0xF1, 0xF2, 0xF3, 0xF4, 0xF5, 0xF6, 0xF7, 0xF8, 0xF9, 0x7A, 0x5E, 0x4C, 0x7E, 0x6E, 0x6F,
    0x7C, 0xC1, 0xC2, 0xC3, 0xC4, 0xC5, 0xC6, 0xC7, 0xC8, 0xC9, 0xD1, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6,
    0xD7, 0xD8, 0xD9, 0xE2, 0xE3, 0xE4, 0xE5, 0xE6, 0xE7, 0xE8, 0xE9, 0xAD, 0xE0, 0xBD, 0x5F, 0x6D,
    0x79, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x91, 0x92, 0x93, 0x94, 0x95, 0x96,
    0x97, 0x98, 0x99, 0xA2, 0xA3, 0xA4, 0xA5, 0xA6, 0xA7, 0xA8, 0xA9, 0xC0, 0x4F, 0xD0, 0xA1,
];

/// Inverts a from-ASCII table; 0 marks "no printable ASCII character".
const fn invert(table: &[u8; 95]) -> [u8; 256] {
    let mut out = [0u8; 256];
    let mut i = 0;
    while i < 95 {
        out[table[i] as usize] = 0x20 + i as u8;
        i += 1;
    }
    out
}

const CP500_TO_ASCII: [u8; 256] = invert(&CP500_FROM_ASCII);
const CP1047_TO_ASCII: [u8; 256] = invert(&CP1047_FROM_ASCII);

impl CodePage {
    /// The name used in spec files.
    pub fn name(self) -> &'static str {
        match self {
            CodePage::Cp500 => "cp500",
            CodePage::Cp1047 => "cp1047",
        }
    }

    /// Parses a spec file's code page name.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "cp500" => Some(CodePage::Cp500),
            "cp1047" => Some(CodePage::Cp1047),
            _ => None,
        }
    }

    /// The printable ASCII character for an EBCDIC byte, if it is in the supported range.
    #[inline]
    pub fn to_ascii(self, byte: u8) -> Option<u8> {
        let table = match self {
            CodePage::Cp500 => &CP500_TO_ASCII,
            CodePage::Cp1047 => &CP1047_TO_ASCII,
        };
        match table[byte as usize] {
            0 => None,
            c => Some(c),
        }
    }

    /// The EBCDIC byte for a printable ASCII character (0x20..=0x7E).
    #[inline]
    pub fn from_ascii(self, ascii: u8) -> Option<u8> {
        let table = match self {
            CodePage::Cp500 => &CP500_FROM_ASCII,
            CodePage::Cp1047 => &CP1047_FROM_ASCII,
        };
        table.get(usize::from(ascii.checked_sub(0x20)?)).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_letters_and_space_round_trip() {
        for cp in [CodePage::Cp500, CodePage::Cp1047] {
            assert_eq!(cp.from_ascii(b'0'), Some(0xF0));
            assert_eq!(cp.from_ascii(b'A'), Some(0xC1));
            assert_eq!(cp.from_ascii(b'z'), Some(0xA9));
            assert_eq!(cp.from_ascii(b' '), Some(0x40));
            for c in 0x20u8..=0x7E {
                let e = cp.from_ascii(c);
                assert!(e.is_some());
                assert_eq!(e.and_then(|e| cp.to_ascii(e)), Some(c), "{cp:?} {c:#x}");
            }
            assert_eq!(cp.from_ascii(0x7F), None);
            assert_eq!(cp.to_ascii(0x00), None);
        }
    }

    #[test]
    fn code_pages_differ_where_documented() {
        assert_eq!(CodePage::Cp500.from_ascii(b'['), Some(0x4A));
        assert_eq!(CodePage::Cp1047.from_ascii(b'['), Some(0xAD));
        assert_eq!(CodePage::Cp500.from_ascii(b'!'), Some(0x4F));
        assert_eq!(CodePage::Cp1047.from_ascii(b'!'), Some(0x5A));
    }
}
