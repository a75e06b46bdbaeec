//! Shared by the dialect targets: decode → re-encode → compare.
//!
//! For every input the dialect accepts, re-encoding the decoded message (header, MTI and every
//! field value, through `Message::to_builder`) must give back exactly the input bytes: posbridge's
//! decoder accepts only canonical encodings (uppercase hex data, the spec's pad nibble, lengths
//! within limits), so a MAC computed over received bytes and one over a re-encoding agree.
//!
//! One documented exception: a hex-text bitmap (iso87ascii) is accepted in lowercase and always
//! written in uppercase, as ISO 8583 hosts differ in the case they send; the comparison therefore
//! uppercases the bitmap characters of the input first. Anything else that differs is a bug.

use posbridge_codecs::{BitmapEncoding, Spec, decode};

/// Runs the round trip for `data` in the dialect `spec`; panics on any disagreement.
pub fn round_trip(spec: &Spec, data: &[u8]) {
    let Ok(message) = decode(spec, data) else {
        return;
    };
    let mut out = Vec::with_capacity(data.len());
    message
        .to_builder()
        .encode_into(&mut out)
        .expect("a decoded message re-encodes");

    let mut expected = data.to_vec();
    if spec.bitmap == BitmapEncoding::Hex {
        let start = message.mti_offset() + spec.mti.width();
        let bitmaps = bitmap_count(spec, message.bitmap().words());
        let end = (start + bitmaps * spec.bitmap.width()).min(expected.len());
        expected[start..end].make_ascii_uppercase();
    }
    assert_eq!(
        hex(&out),
        hex(&expected),
        "{}: re-encoding a decoded message changed its bytes",
        spec.name
    );

    // The re-encoded message decodes to the same values.
    let again = decode(spec, &out).expect("a re-encoded message decodes");
    assert_eq!(again.mti(), message.mti());
    assert_eq!(again.header(), message.header());
    for (a, b) in again.fields().zip(message.fields()) {
        assert_eq!(a.number(), b.number());
        assert_eq!(a.value(), b.value());
    }
    assert_eq!(again.fields().count(), message.fields().count());
}

/// Bitmaps on the wire: bit 1 announces the secondary, bit 65 the tertiary in three-bitmap
/// dialects only.
fn bitmap_count(spec: &Spec, words: [u64; 3]) -> usize {
    if words[0] >> 63 == 0 {
        1
    } else if spec.max_bitmaps == 3 && words[1] >> 63 == 1 {
        3
    } else {
        2
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}
