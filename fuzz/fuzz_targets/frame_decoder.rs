//! Frame decoder: whatever a peer sends, in whatever pieces, decoding never panics, never yields a
//! frame over the limit, and every frame it yields re-encodes to exactly the bytes it consumed —
//! both as a raw frame and, when its link header parses, rebuilt from the typed header and body;
//! the one-shot `Framing::unframe` agrees with the stream decoder.
//!
//! Input layout: byte 0 picks the length prefix and header layout, byte 1 the size limit, byte 2
//! the read size; the rest is the byte stream.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use posbridge_codecs::framing::{
    FrameCodec, Framing, HeaderLayout, LengthPrefix, OutboundFrame, RawFrame,
};
use tokio_util::codec::{Decoder, Encoder};

const PREFIXES: [LengthPrefix; 4] = [
    LengthPrefix::Binary2,
    LengthPrefix::Bcd2,
    LengthPrefix::Ascii4,
    LengthPrefix::Etx,
];
const HEADERS: [HeaderLayout; 4] = [
    HeaderLayout::None,
    HeaderLayout::Tpdu,
    HeaderLayout::TpduCupsPos,
    HeaderLayout::CupsHost,
];

fuzz_target!(|data: &[u8]| {
    let [choice, limit, read, wire @ ..] = data else {
        return;
    };
    let framing = Framing::new(
        PREFIXES[usize::from(choice & 3)],
        HEADERS[usize::from((choice >> 2) & 3)],
    )
    .with_max_frame_bytes(46 + usize::from(*limit) * 16);
    let mut codec = FrameCodec::new(framing).expect("46..=4126 is a valid limit for every layout");
    let read = usize::from(*read).max(1);

    let mut buffer = BytesMut::new();
    let mut consumed = 0usize;
    for chunk in wire.chunks(read) {
        buffer.extend_from_slice(chunk);
        loop {
            let before = buffer.len();
            match codec.decode(&mut buffer) {
                Ok(Some(frame)) => {
                    assert!(frame.len() <= framing.max_frame_bytes);
                    let used = before - buffer.len();
                    let original = &wire[consumed..consumed + used];
                    consumed += used;
                    check_frame(&mut codec, &framing, &frame, original);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});

fn check_frame(codec: &mut FrameCodec, framing: &Framing, frame: &[u8], original: &[u8]) {
    let mut raw = BytesMut::new();
    codec
        .encode(RawFrame(frame), &mut raw)
        .expect("a frame the decoder accepted re-encodes");
    assert_eq!(&raw[..], original, "raw re-encode differs");
    assert_eq!(
        framing.unframe(original).expect("one whole frame unframes"),
        frame,
        "one-shot unframe differs from the stream decoder"
    );

    if let Ok((header, body)) = framing.split_header(frame) {
        let mut rebuilt = BytesMut::new();
        codec
            .encode(
                OutboundFrame {
                    header: &header,
                    body,
                },
                &mut rebuilt,
            )
            .expect("a parsed header re-encodes");
        assert_eq!(&rebuilt[..], original, "typed header re-encode differs");
    }
}
