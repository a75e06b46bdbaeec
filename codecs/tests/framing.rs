//! Framing behaviour a link would notice: exact prefix bytes for each kind, frames split across
//! many reads, limits enforced before buffering, header handling, and no panic on any input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::{Bytes, BytesMut};
use posbridge_codecs::framing::{
    DEFAULT_MAX_FRAME_BYTES, ETX, FrameCodec, FrameHeader, Framing, FramingError, HeaderLayout,
    HostHeader, LengthPrefix, OutboundFrame, PosHeader, RawFrame, Tpdu,
};
use proptest::prelude::*;
use tokio_util::codec::{Decoder, Encoder};

const ALL_PREFIXES: [LengthPrefix; 4] = [
    LengthPrefix::Binary2,
    LengthPrefix::Bcd2,
    LengthPrefix::Ascii4,
    LengthPrefix::Etx,
];

fn codec(length: LengthPrefix) -> FrameCodec {
    FrameCodec::new(Framing::new(length, HeaderLayout::None)).unwrap()
}

fn encode_body(codec: &mut FrameCodec, body: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    codec.encode(body, &mut out).unwrap();
    out
}

/// Feeds `wire` one byte at a time, as a slow peer would, collecting every frame decoded.
fn decode_byte_by_byte(codec: &mut FrameCodec, wire: &[u8]) -> Vec<BytesMut> {
    let mut buffer = BytesMut::new();
    let mut frames = Vec::new();
    for &byte in wire {
        buffer.extend_from_slice(&[byte]);
        while let Some(frame) = codec.decode(&mut buffer).unwrap() {
            frames.push(frame);
        }
    }
    assert!(codec.decode_eof(&mut buffer).unwrap().is_none());
    frames
}

/// A text body (no ETX) of `len` bytes, so every prefix kind can carry it.
fn text_body(len: usize) -> Vec<u8> {
    (0..len).map(|i| b'0' + (i % 10) as u8).collect()
}

#[test]
fn binary2_prefix_is_big_endian_length() {
    let body = text_body(300);
    let wire = encode_body(&mut codec(LengthPrefix::Binary2), &body);
    assert_eq!(&wire[..2], &[0x01, 0x2C]);
    assert_eq!(&wire[2..], &body[..]);
}

#[test]
fn bcd2_prefix_packs_four_digits() {
    let body = text_body(123);
    let wire = encode_body(&mut codec(LengthPrefix::Bcd2), &body);
    assert_eq!(&wire[..2], &[0x01, 0x23]);
    assert_eq!(&wire[2..], &body[..]);
}

#[test]
fn ascii4_prefix_is_four_digits() {
    let body = text_body(57);
    let wire = encode_body(&mut codec(LengthPrefix::Ascii4), &body);
    assert_eq!(&wire[..4], b"0057");
    assert_eq!(&wire[4..], &body[..]);
}

#[test]
fn etx_framing_appends_etx_and_no_prefix() {
    let body = b"0800822000000000000004000000000000001126050000000001301".to_vec();
    let wire = encode_body(&mut codec(LengthPrefix::Etx), &body);
    assert_eq!(&wire[..body.len()], &body[..]);
    assert_eq!(wire[body.len()..], [ETX]);
}

#[test]
fn every_prefix_round_trips_several_frames_fed_byte_by_byte() {
    for prefix in ALL_PREFIXES {
        let bodies = [text_body(1), text_body(0), text_body(250), text_body(4000)];
        let mut wire = BytesMut::new();
        let mut encoder = codec(prefix);
        for body in &bodies {
            encoder.encode(&body[..], &mut wire).unwrap();
        }
        let frames = decode_byte_by_byte(&mut codec(prefix), &wire);
        assert_eq!(frames.len(), bodies.len(), "{prefix}");
        for (frame, body) in frames.iter().zip(&bodies) {
            assert_eq!(&frame[..], &body[..], "{prefix}");
        }
    }
}

#[test]
fn incomplete_frame_is_none_not_error_and_consumes_nothing() {
    for prefix in [
        LengthPrefix::Binary2,
        LengthPrefix::Bcd2,
        LengthPrefix::Ascii4,
    ] {
        let wire = encode_body(&mut codec(prefix), &text_body(40));
        let mut decoder = codec(prefix);
        let mut partial = BytesMut::from(&wire[..wire.len() - 1]);
        assert!(decoder.decode(&mut partial).unwrap().is_none(), "{prefix}");
        assert_eq!(partial.len(), wire.len() - 1, "{prefix}: nothing consumed");
        partial.extend_from_slice(&wire[wire.len() - 1..]);
        assert_eq!(decoder.decode(&mut partial).unwrap().unwrap().len(), 40);
        assert!(partial.is_empty());
    }
}

#[test]
fn oversized_length_is_refused_before_buffering() {
    let framing =
        Framing::new(LengthPrefix::Binary2, HeaderLayout::None).with_max_frame_bytes(1024);
    let mut decoder = FrameCodec::new(framing).unwrap();
    // The peer announces 65535 bytes and sends only the prefix.
    let mut buffer = BytesMut::from(&[0xFF, 0xFF][..]);
    let capacity_before = buffer.capacity();
    match decoder.decode(&mut buffer) {
        Err(FramingError::FrameTooLarge { len, max }) => assert_eq!((len, max), (65_535, 1024)),
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
    assert_eq!(buffer.capacity(), capacity_before, "no room was reserved");

    // Just at the limit is fine.
    let mut at_limit = BytesMut::from(&[0x04, 0x00][..]);
    assert!(decoder.decode(&mut at_limit).unwrap().is_none());
}

#[test]
fn oversized_length_is_refused_for_bcd_and_ascii() {
    for (prefix, wire) in [
        (LengthPrefix::Bcd2, &[0x20, 0x01][..]),
        (LengthPrefix::Ascii4, &b"2001"[..]),
    ] {
        let framing = Framing::new(prefix, HeaderLayout::None).with_max_frame_bytes(2000);
        let mut decoder = FrameCodec::new(framing).unwrap();
        let result = decoder.decode(&mut BytesMut::from(wire));
        assert!(
            matches!(
                result,
                Err(FramingError::FrameTooLarge {
                    len: 2001,
                    max: 2000
                })
            ),
            "{prefix}: {result:?}"
        );
    }
}

#[test]
fn etx_framing_without_terminator_stops_at_the_limit() {
    let framing = Framing::new(LengthPrefix::Etx, HeaderLayout::None).with_max_frame_bytes(64);
    let mut decoder = FrameCodec::new(framing).unwrap();
    let mut buffer = BytesMut::new();
    let mut failed_at = None;
    for i in 0..200 {
        buffer.extend_from_slice(b"A");
        match decoder.decode(&mut buffer) {
            Ok(None) => {}
            Err(FramingError::FrameTooLarge { max: 64, .. }) => {
                failed_at = Some(i + 1);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        failed_at,
        Some(65),
        "refused as soon as the limit is passed"
    );
}

#[test]
fn oversized_outbound_frame_is_refused_and_nothing_written() {
    let framing = Framing::new(LengthPrefix::Ascii4, HeaderLayout::None).with_max_frame_bytes(100);
    let mut encoder = FrameCodec::new(framing).unwrap();
    let mut out = BytesMut::from(&b"kept"[..]);
    let result = encoder.encode(&text_body(101)[..], &mut out);
    assert!(matches!(
        result,
        Err(FramingError::FrameTooLarge { len: 101, max: 100 })
    ));
    assert_eq!(&out[..], b"kept");

    // bcd2 cannot express more than 9999 even when the limit allows it.
    let framing = Framing::new(LengthPrefix::Bcd2, HeaderLayout::None).with_max_frame_bytes(20_000);
    let mut encoder = FrameCodec::new(framing).unwrap();
    let result = encoder.encode(&text_body(10_000)[..], &mut BytesMut::new());
    assert!(matches!(
        result,
        Err(FramingError::FrameTooLarge {
            len: 10_000,
            max: 9999
        })
    ));
}

#[test]
fn zero_length_frame_is_an_empty_frame() {
    for (prefix, wire) in [
        (LengthPrefix::Binary2, &[0x00, 0x00][..]),
        (LengthPrefix::Bcd2, &[0x00, 0x00][..]),
        (LengthPrefix::Ascii4, &b"0000"[..]),
        (LengthPrefix::Etx, &[ETX][..]),
    ] {
        let mut buffer = BytesMut::from(wire);
        let frame = codec(prefix).decode(&mut buffer).unwrap().unwrap();
        assert!(frame.is_empty(), "{prefix}");
        assert!(buffer.is_empty(), "{prefix}");
        assert_eq!(&encode_body(&mut codec(prefix), b"")[..], wire, "{prefix}");
    }
}

#[test]
fn malformed_prefixes_are_peer_errors() {
    for (prefix, wire) in [
        (LengthPrefix::Bcd2, &[0x0A, 0x00][..]),
        (LengthPrefix::Bcd2, &[0x00, 0xF1][..]),
        (LengthPrefix::Ascii4, &b"00 5"[..]),
        (LengthPrefix::Ascii4, &b"-001"[..]),
    ] {
        let result = codec(prefix).decode(&mut BytesMut::from(wire));
        match result {
            Err(error @ FramingError::InvalidLengthPrefix { .. }) => {
                assert!(error.to_string().contains(&prefix.to_string()), "{error}");
            }
            other => panic!("{prefix}: expected InvalidLengthPrefix, got {other:?}"),
        }
    }
}

#[test]
fn connection_closed_inside_a_frame_is_reported() {
    let mut decoder = codec(LengthPrefix::Binary2);
    let mut buffer = BytesMut::from(&[0x00, 0x10, 1, 2, 3][..]);
    assert!(decoder.decode(&mut buffer).unwrap().is_none());
    assert!(matches!(
        decoder.decode_eof(&mut buffer),
        Err(FramingError::Truncated { buffered: 5 })
    ));
}

#[test]
fn etx_inside_content_cannot_be_sent() {
    let mut encoder = codec(LengthPrefix::Etx);
    let mut out = BytesMut::new();
    let result = encoder.encode(&b"0200\x03rest"[..], &mut out);
    assert!(matches!(
        result,
        Err(FramingError::EtxInFrame { offset: 4 })
    ));
    assert!(out.is_empty());
}

#[test]
fn tpdu_reply_swaps_destination_and_source() {
    let request = Tpdu::parse(&[0x60, 0x00, 0x03, 0x12, 0x34]).unwrap();
    assert_eq!(request.id, 0x60);
    assert_eq!(request.destination, [0x00, 0x03]);
    assert_eq!(request.source, [0x12, 0x34]);
    let reply = request.reply();
    assert_eq!(reply.to_bytes(), [0x60, 0x12, 0x34, 0x00, 0x03]);
    assert_eq!(reply.reply(), request);

    let mut frame = [0x60, 0x00, 0x03, 0x12, 0x34, 0x02, 0x10];
    Tpdu::reply_in_place(&mut frame).unwrap();
    assert_eq!(frame, [0x60, 0x12, 0x34, 0x00, 0x03, 0x02, 0x10]);
    assert!(Tpdu::reply_in_place(&mut [0x60, 0x00]).is_err());
}

#[test]
fn cups_pos_frame_round_trips_with_the_reply_header() {
    let framing = Framing::new(LengthPrefix::Binary2, HeaderLayout::TpduCupsPos);
    let mut codec = FrameCodec::new(framing).unwrap();
    // 2-byte length 0x0015 = 21: TPDU 5 + POS header 6 + MTI 2 + bitmap 8.
    let wire = hex("0015 6000030000 603100000000 0800 0020000000C00012");
    let frame = codec
        .decode(&mut BytesMut::from(&wire[..]))
        .unwrap()
        .unwrap();
    let (header, body) = codec.framing().split_header(&frame).unwrap();
    let FrameHeader::TpduCupsPos { tpdu, pos } = header else {
        panic!("expected TPDU + POS header, got {header:?}")
    };
    assert_eq!(tpdu, Tpdu::new([0x00, 0x03], [0x00, 0x00]));
    assert_eq!(
        pos,
        PosHeader {
            application_type: 60,
            software_version: 31,
            terminal_status: 0,
            processing_request: 0,
            software_subversion: 0,
        }
    );
    assert_eq!(body, &hex("0800 0020000000C00012")[..]);

    let reply_header = header.reply();
    let mut out = BytesMut::new();
    let reply_body = hex("0810 0020000000C00012");
    codec
        .encode(
            OutboundFrame {
                header: &reply_header,
                body: &reply_body,
            },
            &mut out,
        )
        .unwrap();
    assert_eq!(
        &out[..],
        &hex("0015 6000000003 603100000000 0810 0020000000C00012")[..]
    );
}

#[test]
fn pos_header_fields_are_bcd_and_checked() {
    let header = PosHeader {
        application_type: 61,
        software_version: 22,
        terminal_status: 1,
        processing_request: 3,
        software_subversion: 123_456,
    };
    let bytes = header.to_bytes().unwrap();
    assert_eq!(bytes, [0x61, 0x22, 0x13, 0x12, 0x34, 0x56]);
    assert_eq!(PosHeader::parse(&bytes).unwrap(), header);

    let bad = PosHeader::parse(&[0x6A, 0x22, 0x13, 0x12, 0x34, 0x56]).unwrap_err();
    assert!(bad.to_string().contains("application_type"), "{bad}");
    let too_big = PosHeader {
        processing_request: 10,
        ..header
    };
    let error = too_big.to_bytes().unwrap_err();
    assert!(error.to_string().contains("processing_request"), "{error}");
}

fn host_header() -> HostHeader {
    HostHeader {
        batch_number: 7,
        transaction_info: *b"12345678",
        ..HostHeader::new("00010000", "48020000").unwrap()
    }
}

#[test]
fn host_header_total_length_is_written_from_the_body() {
    let header = host_header();
    let framing = Framing::new(LengthPrefix::Ascii4, HeaderLayout::CupsHost);
    let mut codec = FrameCodec::new(framing)
        .unwrap()
        .with_outbound_header(FrameHeader::CupsHost(header))
        .unwrap();
    let body = text_body(154);
    let mut out = BytesMut::new();
    codec.encode(&body[..], &mut out).unwrap();
    // Prefix counts header + body: 46 + 154 = 200, and so does the header's own total length.
    assert_eq!(&out[..4], b"0200");
    assert_eq!(out[4], 46);
    assert_eq!(out[5], 0x02);
    assert_eq!(&out[6..10], b"0200");
    assert_eq!(&out[10..21], b"00010000   ");
    assert_eq!(&out[21..32], b"48020000   ");
    assert_eq!(&out[45..50], b"00000");
    assert_eq!(&out[50..], &body[..]);

    let frame = codec.decode(&mut out).unwrap().unwrap();
    let (parsed, parsed_body) = codec.framing().split_header(&frame).unwrap();
    assert_eq!(parsed, FrameHeader::CupsHost(header));
    assert_eq!(parsed_body, &body[..]);
    let FrameHeader::CupsHost(host) = parsed.reply() else {
        panic!("layout changed")
    };
    assert_eq!(host.destination_id_str(), Some("48020000"));
    assert_eq!(host.source_id_str(), Some("00010000"));
}

#[test]
fn host_header_with_a_wrong_total_length_is_refused() {
    let header = host_header();
    let body = text_body(20);
    let mut frame = header.to_bytes(body.len()).unwrap().to_vec();
    frame.extend_from_slice(&body);
    let framing = Framing::new(LengthPrefix::Ascii4, HeaderLayout::CupsHost);
    assert!(framing.split_header(&frame).is_ok());

    frame[2..6].copy_from_slice(b"0067");
    assert!(matches!(
        framing.split_header(&frame),
        Err(FramingError::TotalLengthMismatch {
            declared: 67,
            actual: 66
        })
    ));
    frame[2..6].copy_from_slice(b"00x6");
    assert!(matches!(
        framing.split_header(&frame),
        Err(FramingError::InvalidHeader {
            field: "total_length",
            ..
        })
    ));
    frame[2..6].copy_from_slice(b"0066");
    frame[0] = 45;
    assert!(matches!(
        framing.split_header(&frame),
        Err(FramingError::InvalidHeader {
            field: "header_length",
            ..
        })
    ));
    assert!(matches!(
        framing.split_header(&frame[..30]),
        Err(FramingError::ShortFrame {
            need: 46,
            len: 30,
            ..
        })
    ));
}

#[test]
fn headers_must_match_the_configured_layout() {
    let framing = Framing::new(LengthPrefix::Binary2, HeaderLayout::Tpdu);
    let mut codec = FrameCodec::new(framing).unwrap();
    assert!(matches!(
        codec.encode(&b"0800"[..], &mut BytesMut::new()),
        Err(FramingError::MissingHeader {
            layout: HeaderLayout::Tpdu
        })
    ));
    let wrong = FrameHeader::CupsHost(host_header());
    assert!(matches!(
        codec.encode(
            OutboundFrame {
                header: &wrong,
                body: b"0800"
            },
            &mut BytesMut::new()
        ),
        Err(FramingError::HeaderMismatch { .. })
    ));
    assert!(codec.clone().with_outbound_header(wrong).is_err());

    // A raw frame already holds its header: only the prefix is added.
    let mut out = BytesMut::new();
    codec
        .encode(RawFrame(&hex("6000030000 0800")), &mut out)
        .unwrap();
    assert_eq!(&out[..], &hex("0007 6000030000 0800")[..]);

    let mut with_default = codec
        .with_outbound_header(FrameHeader::Tpdu(Tpdu::new([0, 3], [0, 0])))
        .unwrap();
    let mut out = BytesMut::new();
    with_default
        .encode(Bytes::from_static(&[0x08, 0x00]), &mut out)
        .unwrap();
    assert_eq!(&out[..], &hex("0007 6000030000 0800")[..]);
}

#[test]
fn framing_is_read_from_a_dialect_spec() {
    #[derive(serde::Deserialize)]
    struct Spec {
        framing: Framing,
    }
    let spec: Spec = toml::from_str(
        "[framing]\nlength_prefix = \"binary2\"\nheader = \"tpdu-cups-pos\"\nmax_frame_bytes = 4096\n",
    )
    .unwrap();
    assert_eq!(
        spec.framing,
        Framing::new(LengthPrefix::Binary2, HeaderLayout::TpduCupsPos).with_max_frame_bytes(4096)
    );

    let defaults: Spec = toml::from_str("[framing]\nlength_prefix = \"ascii4\"\n").unwrap();
    assert_eq!(defaults.framing.header, HeaderLayout::None);
    assert_eq!(defaults.framing.max_frame_bytes, DEFAULT_MAX_FRAME_BYTES);

    assert!(toml::from_str::<Spec>("[framing]\nlength_prefix = \"bcd3\"\n").is_err());
    assert!(toml::from_str::<Spec>("[framing]\nlength_prefix = \"etx\"\nmax_len = 5\n").is_err());

    let tiny = Framing::new(LengthPrefix::Ascii4, HeaderLayout::CupsHost).with_max_frame_bytes(40);
    let error = FrameCodec::new(tiny).unwrap_err();
    assert!(error.to_string().contains("max_frame_bytes"), "{error}");
    let huge =
        Framing::new(LengthPrefix::Binary2, HeaderLayout::None).with_max_frame_bytes((1 << 20) + 1);
    assert!(FrameCodec::new(huge).is_err());
}

fn hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect()
}

fn any_framing() -> impl Strategy<Value = Framing> {
    let prefix = prop::sample::select(ALL_PREFIXES.to_vec());
    let header = prop::sample::select(vec![
        HeaderLayout::None,
        HeaderLayout::Tpdu,
        HeaderLayout::TpduCupsPos,
        HeaderLayout::CupsHost,
    ]);
    (prefix, header, 46usize..3000)
        .prop_map(|(prefix, header, max)| Framing::new(prefix, header).with_max_frame_bytes(max))
}

proptest! {
    /// Whatever a peer sends, in whatever pieces, decoding and header parsing return frames or
    /// errors and never panic, and no frame exceeds the limit.
    #[test]
    fn random_bytes_never_panic(
        framing in any_framing(),
        wire in prop::collection::vec(any::<u8>(), 0..4096),
        cuts in prop::collection::vec(1usize..64, 1..64),
    ) {
        let mut decoder = FrameCodec::new(framing).unwrap();
        let mut buffer = BytesMut::new();
        let mut rest = &wire[..];
        let mut cut = cuts.iter().cycle();
        'feed: while !rest.is_empty() {
            let n = (*cut.next().unwrap()).min(rest.len());
            buffer.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            loop {
                match decoder.decode(&mut buffer) {
                    Ok(Some(frame)) => {
                        prop_assert!(frame.len() <= framing.max_frame_bytes);
                        let _ = framing.split_header(&frame);
                    }
                    Ok(None) => break,
                    Err(_) => break 'feed,
                }
            }
        }
        let _ = decoder.decode_eof(&mut buffer);
    }

    /// Any sequence of bodies sent through the encoder comes back unchanged, however the bytes
    /// are cut into reads.
    #[test]
    fn encoded_frames_decode_back(
        prefix in prop::sample::select(ALL_PREFIXES.to_vec()),
        bodies in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 1..8),
        cuts in prop::collection::vec(1usize..40, 1..16),
    ) {
        let mut codec = codec(prefix);
        let mut wire = BytesMut::new();
        let mut sent = Vec::new();
        for mut body in bodies {
            if prefix == LengthPrefix::Etx {
                body.retain(|&b| b != ETX);
            }
            codec.encode(&body[..], &mut wire).unwrap();
            sent.push(body);
        }
        let mut received = Vec::new();
        let mut buffer = BytesMut::new();
        let mut rest = &wire[..];
        let mut cut = cuts.iter().cycle();
        while !rest.is_empty() {
            let n = (*cut.next().unwrap()).min(rest.len());
            buffer.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            while let Some(frame) = codec.decode(&mut buffer).unwrap() {
                received.push(frame.to_vec());
            }
        }
        prop_assert_eq!(received, sent);
    }
}

#[test]
fn framing_comes_from_the_dialect_specs() {
    use posbridge_codecs::Spec;
    let expect = [
        ("iso87ascii", LengthPrefix::Ascii4, HeaderLayout::None),
        ("iso87binary", LengthPrefix::Binary2, HeaderLayout::None),
        ("cups-pos", LengthPrefix::Binary2, HeaderLayout::TpduCupsPos),
        ("cups-host", LengthPrefix::Ascii4, HeaderLayout::CupsHost),
    ];
    for (name, prefix, header) in expect {
        let spec = Spec::builtin(name).unwrap();
        let framing = Framing::from_spec(&spec).unwrap();
        assert_eq!(framing.length_prefix, prefix, "{name}");
        assert_eq!(framing.header, header, "{name}");
        assert_eq!(
            framing.max_frame_bytes, spec.framing.max_frame_bytes,
            "{name}"
        );
        assert!(FrameCodec::for_spec(&spec).is_ok(), "{name}");
    }

    let unframed = Spec::from_toml_str(
        "test.toml",
        "name = \"t\"\n[framing]\nlength_prefix = \"none\"\n[mti]\nencoding = \"ascii\"\n\
         [bitmap]\nencoding = \"hex\"\nmax_bitmaps = 1\n[fields.3]\nname = \"p\"\ntype = \"fixed\"\n\
         data = \"ascii\"\nlength = 6\n",
    )
    .unwrap();
    let error = Framing::from_spec(&unframed).unwrap_err();
    assert!(
        error.to_string().contains("framing.length_prefix"),
        "{error}"
    );
}

/// The golden fixtures (written from the dialects' documentation, independently of this module)
/// go through the frame codec of their dialect: framed, decoded, split into a typed header that
/// re-encodes to the same bytes, and the message handed on parses with the dialect.
#[test]
fn fixtures_travel_through_their_dialects_framing() {
    use posbridge_codecs::{Spec, decode};
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/iso8583");
    let mut seen = 0;
    for dialect in ["iso87ascii", "iso87binary", "cups-pos", "cups-host"] {
        let spec = Spec::builtin(dialect).unwrap();
        let mut codec = FrameCodec::for_spec(&spec).unwrap();
        let mut entries: Vec<_> = std::fs::read_dir(root.join(dialect))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "hex"))
            .collect();
        entries.sort();
        for path in entries {
            let message = hex(std::fs::read_to_string(&path).unwrap().trim());
            let mut wire = BytesMut::new();
            codec.encode(RawFrame(&message), &mut wire).unwrap();
            let frame = decode_byte_by_byte(&mut codec, &wire).pop().unwrap();
            assert_eq!(&frame[..], &message[..], "{}", path.display());

            let (header, body) = codec.framing().split_header(&frame).unwrap();
            let mut rebuilt = BytesMut::new();
            codec
                .encode(
                    OutboundFrame {
                        header: &header,
                        body,
                    },
                    &mut rebuilt,
                )
                .unwrap();
            assert_eq!(rebuilt, wire, "{}: typed header re-encodes", path.display());
            let decoded = decode(&spec, &frame).unwrap();
            assert_eq!(decoded.header().len(), frame.len() - body.len());
            seen += 1;
        }
    }
    assert!(seen >= 8, "only {seen} fixtures found");
}

#[test]
fn one_shot_frame_and_unframe_agree_with_the_stream_codec() {
    for prefix in ALL_PREFIXES {
        let framing = Framing::new(prefix, HeaderLayout::None).with_max_frame_bytes(500);
        let body = text_body(123);
        let mut vec = Vec::new();
        framing.frame_into(&body, &mut vec).unwrap();
        assert_eq!(
            &vec[..],
            &encode_body(&mut codec(prefix), &body)[..],
            "{prefix}"
        );
        assert_eq!(framing.unframe(&vec).unwrap(), &body[..], "{prefix}");

        let truncated = framing.unframe(&vec[..vec.len() - 1]);
        assert!(
            matches!(truncated, Err(FramingError::Truncated { .. })),
            "{prefix}: {truncated:?}"
        );
        let mut longer = vec.clone();
        longer.push(b'0');
        assert!(
            matches!(
                framing.unframe(&longer),
                Err(FramingError::TrailingBytes { extra: 1, .. })
            ),
            "{prefix}"
        );
        assert!(
            matches!(
                framing.frame_into(&text_body(501), &mut Vec::new()),
                Err(FramingError::FrameTooLarge { len: 501, max: 500 })
            ),
            "{prefix}"
        );
    }
    let etx = Framing::new(LengthPrefix::Etx, HeaderLayout::None);
    let mut out = Vec::new();
    assert!(matches!(
        etx.frame_into(b"08\x0300", &mut out),
        Err(FramingError::EtxInFrame { offset: 2 })
    ));
    assert!(out.is_empty());
}
