//! The stream framing both sides of the gateway speak: terminals and upstream hosts are read
//! and written through the dialect's own length prefix and frame-size limit.

use posbridge_codecs::Spec;
use posbridge_codecs::framing::{FrameCodec, Framing, HeaderLayout};

/// The frame codec for a dialect: its length prefix and size limit; the header stays in the
/// frame for the message decoder (which reads it as the dialect's raw header).
pub fn frame_codec(spec: &Spec) -> anyhow::Result<FrameCodec> {
    let framing = Framing::from_spec(spec)?;
    Ok(FrameCodec::new(
        Framing::new(framing.length_prefix, HeaderLayout::None)
            .with_max_frame_bytes(framing.max_frame_bytes),
    )?)
}
