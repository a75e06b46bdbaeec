//! The owned ISO 8583 message the upstream side passes around ([`IsoMessage`]), its encoding to a
//! link's dialect (46-byte host header for cups-host, MAC placeholder) and decoding back, and the
//! request/response matching key.

use posbridge_codecs::framing::HostHeader;
use posbridge_codecs::{Spec, patch_mac};
use std::collections::BTreeMap;
use std::ops::Range;

/// An ISO 8583 message owned by the caller: the MTI and the field values in the codec's value
/// form (digits and text as ASCII bytes, binary fields as raw bytes). The dialect is applied only
/// when the link encodes it, so the same message can go to hosts speaking different dialects.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct IsoMessage {
    /// Message type indicator, four digits ("0200").
    pub mti: String,
    /// Field values by field number (2..=128; never the bitmap bits 1 and 65).
    pub fields: BTreeMap<u16, Vec<u8>>,
}

/// Shows what the dialects allow: the fields any built-in dialect marks sensitive for this MTI
/// (`posbridge_codecs::mask::sensitivity_in_any_dialect`, the specs' own marks) appear as a
/// length only, the card number masked by the one PAN rule.
impl std::fmt::Debug for IsoMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use posbridge_codecs::Sensitivity;
        let mti: [u8; 4] = self.mti.as_bytes().try_into().unwrap_or([b'0'; 4]);
        let mut map = f.debug_map();
        map.entry(&"mti", &self.mti);
        for (number, value) in &self.fields {
            match posbridge_codecs::mask::sensitivity_in_any_dialect(*number, &mti) {
                None => map.entry(number, &String::from_utf8_lossy(value)),
                Some(Sensitivity::Pan) => map.entry(number, &mask_pan(value)),
                Some(_) => map.entry(number, &format_args!("<{} bytes>", value.len())),
            };
        }
        map.finish()
    }
}

/// A PAN field's bytes masked by posbridge's one rule ([`posbridge_codecs::mask::mask_pan`]);
/// bytes that are not text are starred.
pub fn mask_pan(pan: &[u8]) -> String {
    match std::str::from_utf8(pan) {
        Ok(text) => posbridge_codecs::mask::mask_pan(text),
        Err(_) => "*".repeat(pan.len()),
    }
}

impl IsoMessage {
    /// An empty message of this MTI.
    pub fn new(mti: &str) -> IsoMessage {
        IsoMessage {
            mti: mti.to_owned(),
            fields: BTreeMap::new(),
        }
    }

    /// Sets a field, builder style.
    #[must_use]
    pub fn with(mut self, number: u16, value: impl Into<Vec<u8>>) -> IsoMessage {
        self.fields.insert(number, value.into());
        self
    }

    /// Sets a field.
    pub fn set(&mut self, number: u16, value: impl Into<Vec<u8>>) -> &mut IsoMessage {
        self.fields.insert(number, value.into());
        self
    }

    /// Removes a field.
    pub fn remove(&mut self, number: u16) -> Option<Vec<u8>> {
        self.fields.remove(&number)
    }

    /// A field's value.
    pub fn get(&self, number: u16) -> Option<&[u8]> {
        self.fields.get(&number).map(Vec::as_slice)
    }

    /// A field's value as text (digits, ASCII), if it is UTF-8.
    pub fn text(&self, number: u16) -> Option<&str> {
        self.get(number).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// True when the field is present.
    pub fn has(&self, number: u16) -> bool {
        self.fields.contains_key(&number)
    }

    /// The response code (F39), if any.
    pub fn response_code(&self) -> Option<&str> {
        self.text(39)
    }

    /// True when the MTI is a request or advice (third digit even: 0200, 0400, 0420, 0800).
    pub fn is_request(&self) -> bool {
        mti_function(&self.mti).is_some_and(|f| f % 2 == 0)
    }

    /// The response MTI for this request (0200 -> 0210, 0401 -> 0410, 0421 -> 0430), if it is
    /// a request.
    pub fn response_mti(&self) -> Option<String> {
        let bytes = self.mti.as_bytes();
        let function = mti_function(&self.mti)?;
        if function % 2 != 0 {
            return None;
        }
        Some(format!(
            "{}{}{}0",
            char::from(bytes[0]),
            char::from(bytes[1]),
            function + 1
        ))
    }

    /// A response to this request: same fields minus PIN data, security control and MAC, the
    /// response MTI and F39 set.
    pub fn response(&self, code: &str) -> IsoMessage {
        let mut response = self.clone();
        response.mti = self.response_mti().unwrap_or_else(|| self.mti.clone());
        for number in [52, 53, 64, 96, 128] {
            response.fields.remove(&number);
        }
        response.set(39, code);
        response
    }

    /// Copies a decoded message's values.
    pub fn from_decoded(message: &posbridge_codecs::Message<'_>) -> IsoMessage {
        let mut out = IsoMessage::new(message.mti());
        for field in message.fields() {
            out.fields
                .insert(field.number(), field.value().into_owned());
        }
        out
    }
}

fn mti_function(mti: &str) -> Option<u8> {
    let bytes = mti.as_bytes();
    (bytes.len() == 4 && bytes.iter().all(u8::is_ascii_digit)).then(|| bytes[2] - b'0')
}

/// The request class of an MTI for matching: version and class digits, the function digit with
/// its request/response bit cleared, origin ignored. 0200 and 0210 give "020", 0400, 0401 and
/// 0410 give "040", 0420, 0421 and 0430 give "042", 0800 and 0810 give "080".
pub fn mti_class(mti: &str) -> Option<String> {
    let function = mti_function(mti)?;
    Some(format!("{}{}", &mti[..2], function & !1))
}

/// The key that matches a response to its request: the MTI class and the values of the
/// configured fields (default 41 + 11). `None` when the MTI is not four digits; an absent field
/// counts as empty.
pub fn match_key(message: &IsoMessage, fields: &[u16]) -> Option<String> {
    let mut key = mti_class(&message.mti)?;
    for number in fields {
        key.push('|');
        key.push_str(&String::from_utf8_lossy(
            message.get(*number).unwrap_or_default(),
        ));
    }
    Some(key)
}

/// Why a message could not be encoded or decoded for a link.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The message breaks the dialect (a field the dialect lacks, a value too long...).
    #[error("message does not fit the dialect: {0}")]
    Encode(#[from] posbridge_codecs::EncodeError),
    /// The peer's message does not decode.
    #[error("undecodable message from the peer: {0}")]
    Decode(#[from] posbridge_codecs::DecodeError),
    /// The 46-byte host header could not be built.
    #[error("host header: {0}")]
    Header(#[from] posbridge_codecs::framing::FramingError),
}

/// A message encoded for the wire: the frame content (header + message; the length prefix is
/// the frame codec's) and where its MAC goes.
#[derive(Debug)]
pub struct Wire {
    /// Frame content.
    pub bytes: Vec<u8>,
    /// The bytes the MAC covers and the MAC field's position, when a MAC placeholder was written.
    pub mac: Option<posbridge_codecs::MacSpan>,
}

impl Wire {
    /// The bytes the MAC is computed over.
    pub fn mac_input(&self) -> Option<&[u8]> {
        self.mac
            .as_ref()
            .and_then(|m| self.bytes.get(m.covered.clone()))
    }

    /// Writes a computed MAC into its placeholder.
    pub fn patch_mac(&mut self, spec: &Spec, mac: &[u8]) -> Result<(), WireError> {
        if let Some(span) = &self.mac {
            patch_mac(spec, &mut self.bytes, span, mac)?;
        }
        Ok(())
    }
}

/// Encodes a message. `with_mac` writes a zero placeholder in the dialect's MAC field (to be
/// patched with [`Wire::patch_mac`]); `host_header` is the cups-host header (destination and
/// source IDs) whose total-length field is written from the encoded length.
pub fn encode(
    spec: &Spec,
    message: &IsoMessage,
    with_mac: bool,
    host_header: Option<&HostHeader>,
) -> Result<Wire, WireError> {
    let mut builder = spec.builder(&message.mti)?;
    let mac_field = spec.mac.map(|m| m.field);
    for (number, value) in &message.fields {
        if Some(*number) == mac_field {
            continue;
        }
        builder.set(*number, value.as_slice())?;
    }
    if with_mac && let Some(field) = mac_field {
        let len = spec
            .field(field)
            .map(|def| def.value_len_of_units(def.max))
            .unwrap_or(8);
        builder.set(field, vec![0u8; len])?;
    }
    let mut bytes = Vec::with_capacity(512);
    let encoded = builder.encode_into(&mut bytes)?;
    if let Some(header) = host_header
        && spec.header.length == HostHeader::LEN
    {
        let body_len = bytes.len() - HostHeader::LEN;
        let head = header.to_bytes(body_len)?;
        bytes[..HostHeader::LEN].copy_from_slice(&head);
    }
    Ok(Wire {
        bytes,
        mac: if with_mac { encoded.mac } else { None },
    })
}

/// A decoded frame: the owned message, the raw header bytes and the MAC's covered range.
#[derive(Debug)]
pub struct Decoded {
    /// The message.
    pub message: IsoMessage,
    /// The header bytes (empty for dialects without one).
    pub header: Vec<u8>,
    /// The range of the frame the MAC covers, when the message carries the MAC field.
    pub mac_range: Option<Range<usize>>,
}

/// Decodes one frame's content (header + message).
pub fn decode(spec: &Spec, frame: &[u8]) -> Result<Decoded, WireError> {
    let decoded = spec.decode(frame)?;
    Ok(Decoded {
        message: IsoMessage::from_decoded(&decoded),
        header: decoded.header().to_vec(),
        mac_range: decoded.mac_range(),
    })
}

/// The MAC field's value in a message, if the dialect has one and it is present.
pub fn mac_value<'m>(spec: &Spec, message: &'m IsoMessage) -> Option<&'m [u8]> {
    message.get(spec.mac?.field)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn debug_shows_no_card_data() {
        let mut message = IsoMessage::new("0200");
        message
            .set(2, b"6222021234567890123".to_vec())
            .set(14, b"2912".to_vec())
            .set(35, b"6222021234567890123=2912".to_vec())
            .set(55, b"\x57\x136222021234567890123D2912".to_vec())
            .set(4, b"000000002372".to_vec());
        let shown = format!("{message:?}");
        assert!(!shown.contains("6222021234567890123"), "{shown}");
        assert!(!shown.contains("2912"), "{shown}");
        assert!(shown.contains("622202*********0123") && shown.contains("000000002372"));
    }

    /// One rule: every field a built-in dialect marks sensitive (for the message's MTI) is
    /// hidden in a host message's Debug, the PAN masked; key data of a key change included.
    #[test]
    fn debug_hides_every_field_a_dialect_marks_sensitive() {
        let secret = b"SECRETSECRETSECRET0123".to_vec();
        for mti in ["0200", "0800"] {
            let mut message = IsoMessage::new(mti);
            for number in 2..=128u16 {
                message.set(number, secret.clone());
            }
            let shown = format!("{message:?}");
            let spec = posbridge_codecs::Spec::builtin("cups-host").unwrap();
            let mti_bytes: [u8; 4] = mti.as_bytes().try_into().unwrap();
            for number in [14u16, 35, 36, 45, 52, 55, 96, 128] {
                assert!(
                    shown.contains(&format!("{number}: <22 bytes>")),
                    "{mti} field {number}: {shown}"
                );
            }
            let key_data = spec
                .field(48)
                .unwrap()
                .sensitivity_for(&mti_bytes)
                .is_some();
            assert_eq!(
                shown.contains("48: <22 bytes>"),
                key_data,
                "{mti}: field 48 is key data in a key change only"
            );
            assert!(shown.contains("SECRET"), "unmarked fields stay readable");
        }
    }

    #[test]
    fn classes_match_requests_to_responses() {
        assert_eq!(mti_class("0200"), mti_class("0210"));
        assert_eq!(mti_class("0401"), mti_class("0410"));
        assert_eq!(mti_class("0421"), mti_class("0430"));
        assert_ne!(mti_class("0400"), mti_class("0430"));
        assert_eq!(
            IsoMessage::new("0421").response_mti().as_deref(),
            Some("0430")
        );
        assert_eq!(IsoMessage::new("0210").response_mti(), None);
        assert_eq!(mti_class("02x0"), None);
    }

    #[test]
    fn cups_host_round_trip_with_header_and_mac_placeholder() {
        let spec = Spec::builtin("cups-host").unwrap();
        let message = IsoMessage::new("0200")
            .with(3, "000000")
            .with(4, "000000002372")
            .with(11, "000001")
            .with(41, "12345678");
        let header = HostHeader::new("00010000", "48020000").unwrap();
        let wire = encode(&spec, &message, true, Some(&header)).unwrap();
        let declared: usize = std::str::from_utf8(&wire.bytes[2..6])
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(declared, wire.bytes.len());
        assert_eq!(&wire.mac_input().unwrap()[..4], b"0200");
        let back = decode(&spec, &wire.bytes).unwrap();
        assert_eq!(back.message.text(4), Some("000000002372"));
        assert_eq!(back.message.get(128), Some(&[0u8; 8][..]));
        assert!(
            !format!("{:?}", message.clone().with(2, "6222021234567890123")).contains("1234567890")
        );
    }
}
