//! payShield host-command framing and field codecs: what goes on the wire, nothing about sockets.
//!
//! A frame is a 2-byte big-endian length, then the message header (its length is set on the HSM
//! and it is echoed back), then a 2-character command code and its fields. The response code is
//! the command code with its second character advanced by one (`NC` -> `ND`), followed by a
//! 2-digit error code (`00` = no error). Frames are bounded both ways: the peer controls the
//! length prefix, so a frame longer than [`MAX_FRAME`] is refused before anything is allocated.

use crate::error::{HsmError, Result};
use crate::keys::KeyType;
use crate::pin_block::PinBlockFormat;
use crate::secret::Pan;

/// Largest frame body (header + command + fields) either side may send. The longest command
/// posbridge sends is an M6/M8 over a few hundred bytes of ISO 8583 message.
pub const MAX_FRAME: usize = 16 * 1024;

/// Largest message posbridge hands to a single-block M6/M8 (the command's 4-hex length field
/// allows more; real devices cap single-block messages lower than the frame).
pub const MAX_MAC_MESSAGE: usize = 8 * 1024;

/// The response code for a command code: second character advanced by one (`CA` -> `CB`).
pub fn response_code(command: &[u8; 2]) -> [u8; 2] {
    [command[0], command[1].wrapping_add(1)]
}

/// Builds a frame: length prefix, header, command code, fields.
pub fn frame(header: &[u8], command: &[u8; 2], fields: &[u8]) -> Result<Vec<u8>> {
    let body_len = header.len() + 2 + fields.len();
    if body_len > MAX_FRAME {
        return Err(HsmError::invalid(format!(
            "payShield command {} is {body_len} bytes, more than the {MAX_FRAME}-byte limit",
            String::from_utf8_lossy(command)
        )));
    }
    let mut out = Vec::with_capacity(2 + body_len);
    out.extend_from_slice(&u16::try_from(body_len).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(header);
    out.extend_from_slice(command);
    out.extend_from_slice(fields);
    Ok(out)
}

/// A response that passed the framing checks: the fields after the error code.
#[derive(Debug)]
pub struct Response {
    /// The 2-digit error code (`00` = no error; `01` is a verification failure for verify
    /// commands).
    pub error: [u8; 2],
    /// Everything after the error code (may hold a PIN block or an LMK-encrypted PIN: zeroised
    /// when dropped).
    pub fields: zeroize::Zeroizing<Vec<u8>>,
}

/// Checks a response body (after the length prefix): the header echoed, the response code of
/// `command`, a 2-digit error code.
pub fn parse_response(body: &[u8], header: &[u8], command: &[u8; 2]) -> Result<Response> {
    let name = String::from_utf8_lossy(command).into_owned();
    let bad = |what: String| HsmError::Device {
        command: name.clone(),
        code: "--".into(),
        meaning: what,
    };
    if body.len() < header.len() + 4 {
        return Err(bad(format!("short response ({} bytes)", body.len())));
    }
    let (echo, rest) = body.split_at(header.len());
    if echo != header {
        return Err(bad("the response does not echo the message header".into()));
    }
    let expected = response_code(command);
    if rest[..2] != expected {
        return Err(bad(format!(
            "response code {:?}, expected {}",
            String::from_utf8_lossy(&rest[..2]),
            String::from_utf8_lossy(&expected)
        )));
    }
    let error = [rest[2], rest[3]];
    if !error.iter().all(u8::is_ascii_digit) {
        return Err(bad("the error code is not 2 digits".into()));
    }
    Ok(Response {
        error,
        fields: zeroize::Zeroizing::new(rest[4..].to_vec()),
    })
}

/// A cursor over response fields: fixed-length takes, trailing bytes rejected.
pub struct Fields<'a> {
    command: &'static str,
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    /// Reads the fields of a response to `command`.
    pub fn new(command: &'static str, fields: &'a [u8]) -> Self {
        Self {
            command,
            rest: fields,
        }
    }

    fn malformed(&self, what: &str) -> HsmError {
        HsmError::Device {
            command: self.command.to_owned(),
            code: "00".into(),
            meaning: format!("malformed response: {what}"),
        }
    }

    /// The next `len` bytes.
    pub fn take(&mut self, len: usize, what: &str) -> Result<&'a [u8]> {
        if self.rest.len() < len {
            return Err(self.malformed(&format!("{what} is cut short")));
        }
        let (head, tail) = self.rest.split_at(len);
        self.rest = tail;
        Ok(head)
    }

    /// The next `len` bytes as hex, decoded.
    pub fn hex(&mut self, len: usize, what: &str) -> Result<Vec<u8>> {
        let text = self.take(len, what)?;
        hex::decode(text).map_err(|_| self.malformed(&format!("{what} is not hex")))
    }

    /// The next `len` bytes, which must be decimal digits, as text.
    pub fn digits(&mut self, len: usize, what: &str) -> Result<String> {
        let text = self.take(len, what)?;
        if !text.iter().all(u8::is_ascii_digit) {
            return Err(self.malformed(&format!("{what} is not decimal")));
        }
        Ok(String::from_utf8_lossy(text).into_owned())
    }

    /// A key cryptogram under the LMK: 16 H, `U`/`X` + 32 H or `T`/`Y` + 48 H.
    pub fn key(&mut self, what: &str) -> Result<String> {
        let len = match self.rest.first() {
            Some(b'U' | b'X') => 33,
            Some(b'T' | b'Y') => 49,
            Some(_) => 16,
            None => return Err(self.malformed(&format!("{what} is missing"))),
        };
        let text = self.take(len, what)?;
        let text = String::from_utf8_lossy(text).into_owned();
        let hex_part = if len == 16 { &text[..] } else { &text[1..] };
        if !hex_part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(self.malformed(&format!("{what} is not a key cryptogram")));
        }
        Ok(text.to_ascii_uppercase())
    }

    /// What is left (for a response whose last field is optional).
    pub fn remaining(&self) -> usize {
        self.rest.len()
    }

    /// Fails unless every byte was read.
    pub fn end(&self) -> Result<()> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(self.malformed(&format!("{} unexpected trailing bytes", self.rest.len())))
        }
    }
}

/// The payShield PIN block format code of an ISO 9564 format. Format 4 has code `48`, which a
/// variant-LMK HSM cannot use (format 4 needs an AES key): the caller refuses it first.
pub fn pin_format_code(format: PinBlockFormat) -> &'static str {
    match format {
        PinBlockFormat::Iso0 => "01",
        PinBlockFormat::Iso1 => "05",
        PinBlockFormat::Iso3 => "47",
        _ => "48",
    }
}

/// The account number field of the PIN commands: the 12 rightmost PAN digits excluding the
/// check digit. Format 1 does not use it; a PAN-less call sends zeros.
pub fn account_number(pan: Option<&Pan>) -> Result<String> {
    let Some(pan) = pan else {
        return Ok("000000000000".into());
    };
    let digits = pan.expose_secret();
    if digits.len() < 13 {
        return Err(HsmError::invalid(
            "payShield PIN commands need a PAN of at least 13 digits",
        ));
    }
    Ok(digits[digits.len() - 13..digits.len() - 1].to_owned())
}

/// The key scheme letter under the LMK for a key type: `Z` single, `U` double, `T` triple
/// length (the variant schemes).
pub fn lmk_scheme(key_type: KeyType) -> Result<char> {
    match key_type {
        KeyType::Des => Ok('Z'),
        KeyType::Tdes2 => Ok('U'),
        KeyType::Tdes3 => Ok('T'),
        other => Err(aes_unsupported(other)),
    }
}

/// The key scheme letter for a key exchanged under a ZMK/TMK: `Z` single, `X` double, `Y`
/// triple length (ANSI X9.17: each 8-byte block ECB under the KEK, what terminals expect).
pub fn export_scheme(key_type: KeyType) -> Result<char> {
    match key_type {
        KeyType::Des => Ok('Z'),
        KeyType::Tdes2 => Ok('X'),
        KeyType::Tdes3 => Ok('Y'),
        other => Err(aes_unsupported(other)),
    }
}

/// The key type a cryptogram under the LMK stands for, from its length and scheme letter.
pub fn key_type_of_cryptogram(cryptogram: &str) -> Result<KeyType> {
    let bad = || HsmError::invalid("an LMK cryptogram is 16 H, U + 32 H or T + 48 H");
    let (kind, hex_part) = match (cryptogram.len(), cryptogram.as_bytes().first()) {
        (16, _) => (KeyType::Des, cryptogram),
        (33, Some(b'U' | b'X')) => (KeyType::Tdes2, &cryptogram[1..]),
        (49, Some(b'T' | b'Y')) => (KeyType::Tdes3, &cryptogram[1..]),
        _ => return Err(bad()),
    };
    if hex_part.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(kind)
    } else {
        Err(bad())
    }
}

/// Formats a key encrypted under a KEK as the command field (`X` + 32 H, ...).
pub fn kek_field(key_type: KeyType, cryptogram: &[u8]) -> Result<String> {
    if cryptogram.len() != key_type.key_len() {
        return Err(HsmError::invalid(format!(
            "a {key_type} cryptogram is {} bytes, got {}",
            key_type.key_len(),
            cryptogram.len()
        )));
    }
    let scheme = export_scheme(key_type)?;
    let hex = hex::encode_upper(cryptogram);
    Ok(if scheme == 'Z' {
        hex
    } else {
        format!("{scheme}{hex}")
    })
}

/// The error for an AES key on a variant-LMK payShield.
pub fn aes_unsupported(key_type: KeyType) -> HsmError {
    HsmError::Unsupported(format!(
        "{key_type} keys on a variant-LMK payShield (AES keys need a key block LMK): use a TDES key"
    ))
}

/// What an error code means, in the words of the host command reference.
pub fn error_meaning(code: &[u8; 2]) -> &'static str {
    match code {
        b"01" => "verification failure",
        b"02" => "key inappropriate length for algorithm",
        b"04" => "invalid key type code",
        b"05" => "invalid key length flag",
        b"10" => "source key parity error",
        b"11" => "destination key parity error",
        b"12" => "contents of user storage not available",
        b"13" => "master key (LMK) parity error",
        b"14" => "PIN under LMK pair 02-03 is invalid",
        b"15" => "invalid input data",
        b"16" => "console or printer not ready",
        b"17" => "HSM is not in the authorised state",
        b"20" => "PIN block does not contain valid values",
        b"21" => "invalid index value",
        b"22" => "invalid account number",
        b"23" => "invalid PIN block format code",
        b"24" => "PIN is fewer than 4 or more than 12 digits",
        b"26" => "invalid key scheme",
        b"27" => "incompatible key length",
        b"28" => "invalid key type",
        b"29" => "key function not permitted",
        b"33" => "invalid key scheme",
        b"68" => "command has been disabled",
        b"69" => "PIN block format has been disabled",
        b"80" => "data length error",
        b"81" => "invalid certificate header",
        _ => "error",
    }
}

/// The typed error for a non-zero error code of `command`. `labels` names the keys of the
/// command in order (first = source key, second = destination key) for parity errors.
pub fn error_for(command: &str, code: [u8; 2], labels: &[&str]) -> HsmError {
    let meaning = error_meaning(&code);
    let key = |index: usize| labels.get(index).copied().unwrap_or("?");
    match &code {
        b"10" => HsmError::wrong_key(key(0), format!("payShield {command}: {meaning}")),
        b"11" => HsmError::wrong_key(key(1), format!("payShield {command}: {meaning}")),
        b"02" | b"27" | b"28" | b"29" | b"04" => HsmError::wrong_key(
            &labels.join(", "),
            format!("payShield {command}: {meaning}"),
        ),
        b"15" | b"22" => HsmError::invalid(format!("payShield {command}: {meaning}")),
        b"20" | b"24" => HsmError::BadPinBlock {
            format: format!("as given (payShield {command}: {meaning})"),
        },
        b"23" | b"26" | b"33" | b"69" => {
            HsmError::Unsupported(format!("payShield {command}: {meaning}"))
        }
        b"68" => HsmError::Config(format!(
            "payShield {command}: {meaning}; authorise the host command on the HSM"
        )),
        b"17" => HsmError::Config(format!(
            "payShield {command}: {meaning}; the site must authorise it (or run the HSM in authorised state)"
        )),
        _ => HsmError::Device {
            command: command.to_owned(),
            code: String::from_utf8_lossy(&code).into_owned(),
            meaning: meaning.to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn frames_and_response_codes() {
        assert_eq!(&response_code(b"NC"), b"ND");
        assert_eq!(&response_code(b"CA"), b"CB");
        assert_eq!(&response_code(b"A0"), b"A1");
        let frame = frame(b"SSSS", b"NC", b"").unwrap();
        assert_eq!(frame, b"\x00\x06SSSSNC");
        let ok = parse_response(b"SSSSND00ABCD", b"SSSS", b"NC").unwrap();
        assert_eq!(&ok.error, b"00");
        assert_eq!(ok.fields.as_slice(), b"ABCD");
    }

    #[test]
    fn bad_responses_are_typed_errors() {
        for body in [&b""[..], b"SSSSND", b"XXXXND00", b"SSSSNE00", b"SSSSNDx0"] {
            assert!(
                matches!(
                    parse_response(body, b"SSSS", b"NC"),
                    Err(HsmError::Device { .. })
                ),
                "{body:?}"
            );
        }
        assert!(frame(b"", b"M6", &vec![0; MAX_FRAME]).is_err());
        let mut fields = Fields::new("A1", b"U0011");
        assert!(fields.key("key").is_err());
        let mut fields = Fields::new("BV", b"0123456789ABCDEF00");
        assert_eq!(fields.hex(16, "kcv").unwrap().len(), 8);
        assert!(fields.end().is_err());
    }

    #[test]
    fn error_codes_map_to_typed_errors() {
        assert!(matches!(
            error_for("CA", *b"10", &["tpk/1", "zpk/2"]),
            HsmError::WrongKey { label, .. } if label == "tpk/1"
        ));
        assert!(matches!(
            error_for("CA", *b"11", &["tpk/1", "zpk/2"]),
            HsmError::WrongKey { label, .. } if label == "zpk/2"
        ));
        assert!(matches!(
            error_for("CC", *b"20", &[]),
            HsmError::BadPinBlock { .. }
        ));
        assert!(matches!(error_for("M6", *b"68", &[]), HsmError::Config(_)));
        assert!(matches!(
            error_for("NC", *b"41", &[]),
            HsmError::Device { .. }
        ));
    }

    proptest::proptest! {
        #[test]
        fn any_answer_gives_a_value_or_a_typed_error(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80)) {
            if let Ok(response) = parse_response(&body, b"SSSS", b"CA") {
                let mut fields = Fields::new("CA", &response.fields);
                let _ = fields.digits(2, "PIN length");
                let _ = fields.hex(16, "PIN block");
                let _ = fields.key("key");
                let _ = fields.end();
            }
            let text = String::from_utf8_lossy(&body);
            let _ = key_type_of_cryptogram(&text);
        }
    }

    #[test]
    fn account_number_is_the_twelve_digits_before_the_check_digit() {
        let pan = Pan::new("4321987654321098").unwrap();
        assert_eq!(account_number(Some(&pan)).unwrap(), "198765432109");
        assert_eq!(account_number(None).unwrap(), "000000000000");
    }
}
