//! The host commands the simulator answers, one function each: parse the fields, do what the
//! device does with the test LMK, answer with an error code and the response fields.

use super::lmk::{self, LmkError};
use posbridge_hsm::calculator;
use posbridge_hsm::payshield::wire::Fields;
use posbridge_hsm::{
    ClearKey, HsmError, MacAlgorithm, Padding, Pan, Pin, PinBlock, PinBlockFormat,
};
use rand::RngCore;
use zeroize::Zeroizing;

/// The simulator's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The encrypted PIN length L (CS setting, 5 to 13).
    pub pin_length: usize,
    /// Refuse keys whose bytes do not all have odd parity (errors 10/11). Off by default: the
    /// published test keys posbridge uses are not all of odd parity, and DES ignores it.
    pub check_parity: bool,
    /// The firmware number NC reports (9 characters, `xxxx-xxxx`).
    pub firmware: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            pin_length: 13,
            check_parity: false,
            firmware: "1000-SIM1".into(),
        }
    }
}

/// An answer: error code and response fields.
pub type Answer = (&'static str, Vec<u8>);

fn fail(code: &'static str) -> Answer {
    (code, Vec::new())
}

fn ok(fields: impl Into<Vec<u8>>) -> Answer {
    ("00", fields.into())
}

/// A parse or crypto failure and the error code it answers with.
struct Refused(&'static str);

impl From<HsmError> for Refused {
    fn from(error: HsmError) -> Self {
        match error {
            HsmError::BadPinBlock { .. } => Refused("20"),
            _ => Refused("15"),
        }
    }
}

impl From<LmkError> for Refused {
    fn from(error: LmkError) -> Self {
        match error {
            LmkError::KeyType => Refused("04"),
            LmkError::Cryptogram => Refused("15"),
        }
    }
}

type Step<T> = Result<T, Refused>;

/// Answers one command. Unknown commands answer 68 ("command has been disabled").
pub fn answer(settings: &Settings, command: &[u8; 2], fields: &[u8]) -> Answer {
    let result = match command {
        b"NC" => Ok(nc(settings)),
        b"BU" => bu(settings, fields),
        b"A0" => a0(settings, fields),
        b"A6" => a6(settings, fields),
        b"CA" => translate(settings, fields, "002"),
        b"CC" => translate(settings, fields, "001"),
        b"DC" => verify(settings, fields, "002"),
        b"EC" => verify(settings, fields, "001"),
        b"M6" => mac(settings, fields, false),
        b"M8" => mac(settings, fields, true),
        b"BA" => ba(settings, fields),
        b"JG" => jg(settings, fields),
        b"DG" => dg(settings, fields),
        _ => Ok(fail("68")),
    };
    result.unwrap_or_else(|Refused(code)| fail(code))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A key field under the LMK of `type_code`; `parity_error` is the code for a key that fails
/// the parity check (10 for the first key of a command, 11 for the second).
fn lmk_key(
    settings: &Settings,
    fields: &mut Fields<'_>,
    type_code: &str,
    parity_error: &'static str,
) -> Step<ClearKey> {
    let cryptogram = fields.key("key")?;
    let clear = lmk::decrypt(&cryptogram, type_code)?;
    if settings.check_parity && !lmk::odd_parity(&clear) {
        return Err(Refused(parity_error));
    }
    Ok(clear)
}

fn nc(settings: &Settings) -> Answer {
    ok(format!("{}{}", lmk::lmk_check_value(), settings.firmware))
}

fn bu(settings: &Settings, raw: &[u8]) -> Step<Answer> {
    let mut fields = Fields::new("BU", raw);
    let code = text(fields.take(2, "key type code")?);
    let length = fields.take(1, "key length flag")?.to_vec();
    let cryptogram = fields.key("key")?;
    let type_code = if code == "FF" {
        if fields.take(1, ";")? != b";" {
            return Err(Refused("15"));
        }
        text(fields.take(3, "key type")?)
    } else {
        format!("0{code}")
    };
    fields.end()?;
    let expected_len = match length.as_slice() {
        b"0" => 16,
        b"1" => 33,
        b"2" => 49,
        _ => return Err(Refused("05")),
    };
    if cryptogram.len() != expected_len {
        return Err(Refused("15"));
    }
    let clear = lmk::decrypt(&cryptogram, &type_code)?;
    if settings.check_parity && !lmk::odd_parity(&clear) {
        return Err(Refused("10"));
    }
    Ok(ok(hex::encode_upper(lmk::check_block(&clear))))
}

fn key_len(scheme: u8) -> Step<usize> {
    match scheme {
        b'Z' => Ok(8),
        b'U' | b'X' => Ok(16),
        b'T' | b'Y' => Ok(24),
        _ => Err(Refused("26")),
    }
}

/// A key under a ZMK/TMK in an X9.17 scheme: `Z` 16 H, `X` + 32 H, `Y` + 48 H (ECB per block).
fn export(clear: &ClearKey, kek: &ClearKey, scheme: u8) -> Step<String> {
    let prefix = match (scheme, clear.len()) {
        (b'Z', 8) => "",
        (b'X', 16) => "X",
        (b'Y', 24) => "Y",
        // The Thales variant schemes under a ZMK (U, T) are not simulated.
        _ => return Err(Refused("26")),
    };
    let encrypted = lmk::tdes(kek.expose_secret(), clear.expose_secret(), true);
    Ok(format!("{prefix}{}", hex::encode_upper(&encrypted[..])))
}

fn a0(settings: &Settings, raw: &[u8]) -> Step<Answer> {
    let mut fields = Fields::new("A0", raw);
    let mode = fields.take(1, "mode")?.to_vec();
    let type_code = text(fields.take(3, "key type")?);
    let scheme = fields.take(1, "key scheme (LMK)")?[0];
    let mut random = Zeroizing::new(vec![0u8; key_len(scheme)?]);
    rand::rng().fill_bytes(&mut random);
    let clear = lmk::force_odd_parity(&ClearKey::from_slice(&random)?);
    let under_lmk = lmk::encrypt(&clear, &type_code)?;
    let kcv = hex::encode_upper(&lmk::check_block(&clear)[..3]);
    match mode.as_slice() {
        b"0" => {
            fields.end()?;
            Ok(ok(format!("{under_lmk}{kcv}")))
        }
        b"1" => {
            let mut kek_type = "000";
            if fields.remaining() > 0 && raw.get(5) == Some(&b';') {
                fields.take(1, ";")?;
                kek_type = match fields.take(1, "ZMK/TMK flag")? {
                    b"0" => "000",
                    b"1" => "002",
                    _ => return Err(Refused("15")),
                };
            }
            let kek = lmk_key(settings, &mut fields, kek_type, "10")?;
            let export_scheme = fields.take(1, "key scheme (ZMK)")?[0];
            fields.end()?;
            let under_kek = export(&clear, &kek, export_scheme)?;
            Ok(ok(format!("{under_lmk}{under_kek}{kcv}")))
        }
        _ => Err(Refused("15")),
    }
}

fn a6(settings: &Settings, raw: &[u8]) -> Step<Answer> {
    let mut fields = Fields::new("A6", raw);
    let type_code = text(fields.take(3, "key type")?);
    let zmk = lmk_key(settings, &mut fields, "000", "10")?;
    let under_zmk = fields.key("key under ZMK")?;
    let scheme = fields.take(1, "key scheme (LMK)")?[0];
    fields.end()?;
    let (prefix_ok, hex_part) = match under_zmk.as_bytes().first() {
        _ if under_zmk.len() == 16 => (true, &under_zmk[..]),
        Some(b'X' | b'Y') => (true, &under_zmk[1..]),
        _ => (false, ""),
    };
    if !prefix_ok {
        return Err(Refused("26"));
    }
    let encrypted = Zeroizing::new(hex::decode(hex_part).map_err(|_| Refused("15"))?);
    let clear = ClearKey::from_slice(&lmk::tdes(zmk.expose_secret(), &encrypted, false))?;
    if key_len(scheme)? != clear.len() {
        return Err(Refused("15"));
    }
    // The device does not require odd parity on import but forces it on what it stores, and
    // says so with error 01 ("advice only"), the fields still following.
    let error = if lmk::odd_parity(&clear) { "00" } else { "01" };
    let clear = lmk::force_odd_parity(&clear);
    let under_lmk = lmk::encrypt(&clear, &type_code)?;
    let kcv = hex::encode_upper(&lmk::check_block(&clear)[..3]);
    Ok((error, format!("{under_lmk}{kcv}").into_bytes()))
}

fn format_of(code: &[u8]) -> Step<PinBlockFormat> {
    match code {
        b"01" => Ok(PinBlockFormat::Iso0),
        b"05" => Ok(PinBlockFormat::Iso1),
        b"47" => Ok(PinBlockFormat::Iso3),
        _ => Err(Refused("23")),
    }
}

/// A stand-in PAN whose 12 digits before the check digit are the account number field.
fn pan_of(account: &str) -> Step<Pan> {
    Ok(Pan::new(&format!("{account}0"))?)
}

fn translate(settings: &Settings, raw: &[u8], source_type: &str) -> Step<Answer> {
    let mut fields = Fields::new("CA", raw);
    let source = lmk_key(settings, &mut fields, source_type, "10")?;
    let destination = lmk_key(settings, &mut fields, "001", "11")?;
    fields.digits(2, "maximum PIN length")?;
    let block = PinBlock::new(fields.hex(16, "PIN block")?)?;
    let source_format = format_of(fields.take(2, "source format")?)?;
    let destination_code = fields.take(2, "destination format")?.to_vec();
    let destination_format = format_of(&destination_code)?;
    let account = fields.digits(12, "account number")?;
    fields.end()?;
    let pan = pan_of(&account)?;
    let pin = calculator::decipher_pin_block(source_format, &block, &pan, &source)?;
    let out = calculator::encrypted_pin_block(destination_format, &pin, &pan, &destination)?;
    Ok(ok(format!(
        "{:02}{}{}",
        pin.len(),
        hex::encode_upper(out.expose_secret()),
        text(&destination_code)
    )))
}

fn verify(settings: &Settings, raw: &[u8], pin_key_type: &str) -> Step<Answer> {
    let mut fields = Fields::new("DC", raw);
    let pin_key = lmk_key(settings, &mut fields, pin_key_type, "10")?;
    let pvk = lmk_key(settings, &mut fields, "002", "11")?;
    if pvk.len() != 16 {
        return Err(Refused("27"));
    }
    let block = PinBlock::new(fields.hex(16, "PIN block")?)?;
    let format = format_of(fields.take(2, "format")?)?;
    let account = fields.digits(12, "account number")?;
    let pvki = fields.digits(1, "PVKI")?;
    let pvv = fields.digits(4, "PVV")?;
    fields.end()?;
    let pan = pan_of(&account)?;
    let pin = calculator::decipher_pin_block(format, &block, &pan, &pin_key)?;
    let pvki = pvki.parse::<u8>().map_err(|_| Refused("15"))?;
    let computed = calculator::pvv(&pvk, &pan, &pin, pvki)?;
    Ok(fail(if computed == pvv { "00" } else { "01" }))
}

fn mac(settings: &Settings, raw: &[u8], verify: bool) -> Step<Answer> {
    let mut fields = Fields::new("M6", raw);
    if fields.take(1, "mode flag")? != b"0" {
        // Multi-block messages (modes 1-3) are not simulated.
        return Err(Refused("15"));
    }
    let input = fields.take(1, "input format flag")?.to_vec();
    let size = match fields.take(1, "MAC size")? {
        b"0" => 8,
        b"1" => 16,
        _ => return Err(Refused("15")),
    };
    let algorithm = fields.take(1, "MAC algorithm")?.to_vec();
    let padding = fields.take(1, "padding method")?.to_vec();
    let key_type = text(fields.take(3, "key type")?);
    if key_type != "003" && key_type != "008" {
        return Err(Refused("04"));
    }
    let key = lmk_key(settings, &mut fields, &key_type, "10")?;
    let length = usize::from_str_radix(&text(fields.take(4, "message length")?), 16)
        .map_err(|_| Refused("15"))?;
    let message = match input.as_slice() {
        b"0" => fields.take(length, "message")?.to_vec(),
        b"1" => hex::decode(fields.take(length, "message")?).map_err(|_| Refused("15"))?,
        _ => return Err(Refused("15")),
    };
    let padded = match padding.as_slice() {
        b"0" if !message.is_empty() && message.len() % 8 == 0 => message,
        b"0" => return Err(Refused("80")),
        b"1" => posbridge_hsm::mac::pad(&message, Padding::M1, 8),
        b"2" => posbridge_hsm::mac::pad(&message, Padding::M2, 8),
        _ => return Err(Refused("15")),
    };
    let algorithm = match algorithm.as_slice() {
        b"1" => MacAlgorithm::Iso9797Alg1 {
            padding: Padding::M1,
        },
        b"3" if key.len() == 16 => MacAlgorithm::X919,
        b"3" => return Err(Refused("27")),
        _ => return Err(Refused("15")),
    };
    let computed = hex::encode_upper(calculator::mac(algorithm, &key, &padded)?);
    let computed = &computed[..size];
    if !verify {
        fields.end()?;
        return Ok(ok(computed.to_owned()));
    }
    let given = text(fields.take(size, "MAC")?).to_ascii_uppercase();
    fields.end()?;
    Ok(fail(if given == computed { "00" } else { "01" }))
}

fn ba(settings: &Settings, raw: &[u8]) -> Step<Answer> {
    let mut fields = Fields::new("BA", raw);
    let field = text(fields.take(settings.pin_length, "PIN")?);
    let account = fields.digits(12, "account number")?;
    fields.end()?;
    let digits = field.trim_end_matches('F');
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Refused("15"));
    }
    let pin = Pin::new(digits)?;
    let encrypted = lmk::encrypt_pin(pin.expose_secret(), &account, settings.pin_length)
        .ok_or(Refused("15"))?;
    Ok(ok(encrypted.as_bytes().to_vec()))
}

fn pin_from_lmk(settings: &Settings, fields: &mut Fields<'_>, account: &str) -> Step<Pin> {
    let encrypted = text(fields.take(settings.pin_length, "PIN")?);
    let clear = lmk::decrypt_pin(&encrypted, account).ok_or(Refused("14"))?;
    Pin::new(&clear).map_err(|_| Refused("14"))
}

fn jg(settings: &Settings, raw: &[u8]) -> Step<Answer> {
    let mut fields = Fields::new("JG", raw);
    let zpk = lmk_key(settings, &mut fields, "001", "11")?;
    let format = format_of(fields.take(2, "format")?)?;
    let account = fields.digits(12, "account number")?;
    let pin = pin_from_lmk(settings, &mut fields, &account)?;
    fields.end()?;
    let block = calculator::encrypted_pin_block(format, &pin, &pan_of(&account)?, &zpk)?;
    Ok(ok(hex::encode_upper(block.expose_secret())))
}

fn dg(settings: &Settings, raw: &[u8]) -> Step<Answer> {
    let mut fields = Fields::new("DG", raw);
    let pvk = lmk_key(settings, &mut fields, "002", "10")?;
    if pvk.len() != 16 {
        return Err(Refused("27"));
    }
    // The PIN comes before the account number it is bound to: read both, then decrypt.
    let encrypted = text(fields.take(settings.pin_length, "PIN")?);
    let account = fields.digits(12, "account number")?;
    let pvki = fields.digits(1, "PVKI")?;
    fields.end()?;
    let clear = lmk::decrypt_pin(&encrypted, &account).ok_or(Refused("14"))?;
    let pin = Pin::new(&clear).map_err(|_| Refused("14"))?;
    let pvki = pvki.parse::<u8>().map_err(|_| Refused("15"))?;
    Ok(ok(calculator::pvv(&pvk, &pan_of(&account)?, &pin, pvki)?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use proptest::prelude::*;

    const COMMANDS: [&[u8; 2]; 14] = [
        b"NC", b"BU", b"A0", b"A6", b"CA", b"CC", b"DC", b"EC", b"M6", b"M8", b"BA", b"JG", b"DG",
        b"ZZ",
    ];

    proptest! {
        #[test]
        fn any_command_body_gets_an_answer(pick in 0usize..14, body in proptest::collection::vec(any::<u8>(), 0..120)) {
            let (code, _) = answer(&Settings::default(), COMMANDS[pick], &body);
            prop_assert_eq!(code.len(), 2);
        }

        #[test]
        fn keys_and_pins_shaped_fields_get_an_answer(pick in 0usize..13, digits in "[0-9A-FUTXYZ;]{0,120}") {
            let (code, _) = answer(&Settings::default(), COMMANDS[pick], digits.as_bytes());
            prop_assert_eq!(code.len(), 2);
        }
    }

    #[test]
    fn unknown_commands_are_refused() {
        assert_eq!(answer(&Settings::default(), b"ZZ", b"").0, "68");
    }
}
