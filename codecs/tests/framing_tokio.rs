//! The frame codec as a link uses it: tokio's `FramedWrite`/`FramedRead` over an in-memory duplex
//! whose small buffer splits frames across reads, a terminal-style request answered with the TPDU
//! turned round, and a hostile length prefix ending the stream with an error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use posbridge_codecs::framing::{
    FrameCodec, FrameHeader, Framing, FramingError, HeaderLayout, LengthPrefix, PosHeader, Tpdu,
};
use tokio::io::AsyncWriteExt;
use tokio_util::codec::{FramedRead, FramedWrite};

fn cups_pos_framing() -> Framing {
    Framing::new(LengthPrefix::Binary2, HeaderLayout::TpduCupsPos).with_max_frame_bytes(4096)
}

fn terminal_header() -> FrameHeader {
    FrameHeader::TpduCupsPos {
        tpdu: Tpdu::new([0x00, 0x03], [0x00, 0x01]),
        pos: PosHeader {
            application_type: 60,
            software_version: 31,
            terminal_status: 0,
            processing_request: 0,
            software_subversion: 31_130,
        },
    }
}

#[tokio::test]
async fn frames_cross_a_narrow_pipe_and_come_back_whole() {
    // 7-byte pipe: every frame arrives in several reads.
    let (client, server) = tokio::io::duplex(7);
    let codec = FrameCodec::new(cups_pos_framing())
        .unwrap()
        .with_outbound_header(terminal_header())
        .unwrap();
    let bodies: Vec<Bytes> = (0..20u8)
        .map(|i| {
            Bytes::from(
                (0..usize::from(i) * 13)
                    .map(|j| j as u8)
                    .collect::<Vec<u8>>(),
            )
        })
        .collect();

    let sent = bodies.clone();
    let writer = tokio::spawn(async move {
        let mut sink = FramedWrite::new(client, codec);
        for body in sent {
            sink.send(body).await.unwrap();
        }
    });

    let mut frames = FramedRead::new(server, FrameCodec::new(cups_pos_framing()).unwrap());
    for body in &bodies {
        let frame = frames.next().await.unwrap().unwrap();
        let (header, message) = cups_pos_framing().split_header(&frame).unwrap();
        assert_eq!(header, terminal_header());
        assert_eq!(message, &body[..]);

        // The reply's TPDU is the request's turned round.
        let FrameHeader::TpduCupsPos { tpdu, .. } = header.reply() else {
            panic!("layout changed")
        };
        assert_eq!(tpdu.to_bytes(), [0x60, 0x00, 0x01, 0x00, 0x03]);
    }
    writer.await.unwrap();
    assert!(
        frames.next().await.is_none(),
        "clean end of stream after the last frame"
    );
}

#[tokio::test]
async fn a_hostile_length_ends_the_stream_with_an_error_before_buffering() {
    let (mut peer, server) = tokio::io::duplex(64);
    let framing = Framing::new(LengthPrefix::Binary2, HeaderLayout::None).with_max_frame_bytes(512);
    let mut frames = FramedRead::new(server, FrameCodec::new(framing).unwrap());
    // One good frame, then a prefix announcing 60000 bytes that never come.
    peer.write_all(&[0x00, 0x03, b'0', b'8', b'0', 0xEA, 0x60])
        .await
        .unwrap();
    assert_eq!(&frames.next().await.unwrap().unwrap()[..], b"080");
    match frames.next().await {
        Some(Err(FramingError::FrameTooLarge {
            len: 60_000,
            max: 512,
        })) => {}
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
    assert!(
        frames.read_buffer().capacity() < 60_000,
        "nothing reserved for the hostile frame"
    );
}

#[tokio::test]
async fn a_peer_closing_inside_a_frame_is_reported() {
    let (mut peer, server) = tokio::io::duplex(64);
    let framing = Framing::new(LengthPrefix::Ascii4, HeaderLayout::None);
    let mut frames = FramedRead::new(server, FrameCodec::new(framing).unwrap());
    peer.write_all(b"0010080000").await.unwrap();
    drop(peer);
    match frames.next().await {
        Some(Err(FramingError::Truncated { buffered: 10 })) => {}
        other => panic!("expected Truncated, got {other:?}"),
    }
}
