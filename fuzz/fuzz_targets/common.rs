//! Shared by the dialect targets: decode → re-encode → compare.
//!
//! For every input the dialect accepts, re-encoding the decoded message must give back exactly the
//! input bytes, both through `Message::to_builder` (the decoded values, unchecked) and from the
//! decoded values set one by one on a fresh builder (each checked as a caller's would be); both
//! write every field through the value encoders at encode time: posbridge's decoder
//! accepts only canonical encodings (uppercase hex data, the spec's pad nibble, lengths within
//! limits), so a MAC computed over received bytes and one over a re-encoding agree.
//!
//! One documented exception: a hex-text bitmap (iso87ascii) is accepted in lowercase and always
//! written in uppercase, as ISO 8583 hosts differ in the case they send; the comparison therefore
//! uppercases the bitmap characters of the input first. And a fresh builder writes only the
//! bitmaps its fields need, so an empty secondary/tertiary bitmap is compared by values only.
//! Anything else that differs is a bug.

use posbridge_codecs::{BitmapEncoding, Spec, decode};

/// Runs the round trip for `data` in the dialect `spec`; panics on any disagreement.
pub fn round_trip(spec: &Spec, data: &[u8]) {
    let Ok(message) = decode(spec, data) else {
        return;
    };

    // 1. Through `to_builder` (the decoded values, re-encoded).
    let mut copied = Vec::with_capacity(data.len());
    message
        .to_builder()
        .encode_into(&mut copied)
        .expect("a decoded message re-encodes");
    let mut expected = data.to_vec();
    let bitmaps = bitmap_count(spec, message.bitmap().words());
    if spec.bitmap == BitmapEncoding::Hex {
        let start = message.mti_offset() + spec.mti.width();
        let end = (start + bitmaps * spec.bitmap.width()).min(expected.len());
        expected[start..end].make_ascii_uppercase();
    }
    assert_eq!(
        hex(&copied),
        hex(&expected),
        "{}: re-encoding a decoded message changed its bytes",
        spec.name
    );

    // 2. From the decoded values alone, through a fresh builder: exercises every value encoder
    //    (BCD packing and padding, hex text, length prefixes). Same bytes, except that a fresh
    //    builder writes only the bitmaps its fields need, so a received secondary/tertiary bitmap
    //    announcing no field is not reproduced (the values still must be).
    let mut builder = spec.builder(message.mti()).expect("a decoded MTI is valid");
    builder
        .set_header(message.header())
        .expect("a decoded header has the dialect's length");
    for field in message.fields() {
        builder
            .set(field.number(), field.value().into_owned())
            .unwrap_or_else(|e| {
                panic!(
                    "{}: decoded field {} is refused: {e}",
                    spec.name,
                    field.number()
                )
            });
    }
    let mut rebuilt = Vec::with_capacity(data.len());
    builder
        .encode_into(&mut rebuilt)
        .expect("decoded values encode");
    if bitmaps == needed_bitmaps(&message) {
        assert_eq!(
            hex(&rebuilt),
            hex(&expected),
            "{}: encoding the decoded values changed the bytes",
            spec.name
        );
    }
    let again = decode(spec, &rebuilt).expect("re-encoded values decode");
    assert_eq!(again.mti(), message.mti());
    assert_eq!(again.header(), message.header());
    assert!(
        again
            .fields()
            .map(|f| (f.number(), f.value()))
            .eq(message.fields().map(|f| (f.number(), f.value()))),
        "{}: values changed through encode and decode",
        spec.name
    );
}

/// Bitmaps the message's data elements need (highest field number decides).
fn needed_bitmaps(message: &posbridge_codecs::Message<'_>) -> usize {
    match message.fields().map(|f| f.number()).max().unwrap_or(0) {
        0..=64 => 1,
        65..=128 => 2,
        _ => 3,
    }
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
