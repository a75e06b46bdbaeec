//! A rendered code must scan back to the identical payload with an ordinary decoder: PNG (read by
//! the `image` crate's PNG decoder), SVG (rasterised here), and the terminal text forms, all
//! decoded by rqrr, a pure-Rust QR reader independent of the `qrcode` crate that drew them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use posbridge::infra::qr::{Background, render};
use posbridge_codecs::emv_qr::{
    AlternateLanguage, Expiry, Merchant, Order, POSBRIDGE_GUI, Payload, StaticCode,
};

const EMVCO_EXAMPLE: &str = "00020101021229300012D156000000000510A93FO3230Q31280012D15600000001030812345678520441115802CN5914BEST TRANSPORT6007BEIJING64200002ZH0104最佳运输0202北京540523.7253031565502016233030412340603***0708A60086670902ME91320016A0112233449988770708123456786304A13A";

fn merchant() -> Merchant {
    Merchant {
        gui: POSBRIDGE_GUI.into(),
        merchant_id: "898310048990001".into(),
        mcc: "5411".into(),
        currency: 156,
        country: "CN".into(),
        name: "POSBRIDGE TEST STORE".into(),
        city: "SHANGHAI".into(),
        alternate_language: Some(AlternateLanguage {
            language: "ZH".into(),
            name: "上海浦东新区便利店".into(),
            city: Some("上海".into()),
        }),
    }
}

/// posbridge's largest payload: dynamic, Chinese name, 32-byte signature.
fn dynamic_payload() -> String {
    let order = Order {
        merchant: merchant(),
        amount_minor: 123_456,
        reference: "9F3C2A7B1D4E6F8091A2B3C4D".into(),
        terminal_label: "10000001".into(),
        tid: "10000001".into(),
        batch: "000123".into(),
        voucher: "000045".into(),
        operator: "001".into(),
        acquirer: "48020000".into(),
        transaction_type: "22".into(),
        expires_at: Expiry::parse("261126053000").unwrap(),
        key_id: Some("K1".into()),
    };
    order
        .unsigned()
        .unwrap()
        .with_signature(&[0xA5; 32])
        .unwrap()
        .encode()
}

fn static_payload() -> String {
    StaticCode {
        merchant: merchant(),
        store_label: None,
        terminal_label: Some("STALL 7".into()),
    }
    .payload()
    .unwrap()
    .encode()
}

fn payloads() -> Vec<String> {
    vec![
        EMVCO_EXAMPLE.to_owned(),
        dynamic_payload(),
        static_payload(),
    ]
}

/// Decodes the single QR code in a greyscale image with rqrr; returns its bytes.
fn scan(width: usize, height: usize, luma: impl Fn(usize, usize) -> u8) -> Vec<u8> {
    let mut image = rqrr::PreparedImage::prepare_from_greyscale(width, height, luma);
    let grids = image.detect_grids();
    assert_eq!(grids.len(), 1, "expected exactly one QR code in the image");
    let mut bytes = Vec::new();
    grids[0].decode_to(&mut bytes).unwrap();
    bytes
}

fn scan_png(png: &[u8]) -> Vec<u8> {
    let image = image::load_from_memory_with_format(png, image::ImageFormat::Png)
        .unwrap()
        .to_luma8();
    let (width, height) = (image.width() as usize, image.height() as usize);
    scan(width, height, |x, y| {
        image.get_pixel(x as u32, y as u32).0[0]
    })
}

/// Turns a grid of modules (true = dark) into a greyscale image, `scale` pixels per module.
fn scan_modules(modules: &[Vec<bool>], scale: usize) -> Vec<u8> {
    let height = modules.len();
    let width = modules.iter().map(Vec::len).max().unwrap();
    scan(width * scale, height * scale, |x, y| {
        let dark = modules[y / scale].get(x / scale).copied().unwrap_or(false);
        if dark { 0 } else { 255 }
    })
}

#[test]
fn png_scans_back_to_the_identical_payload() {
    for payload in payloads() {
        for module_px in [3, 8] {
            let png = render::png(&payload, module_px).unwrap();
            assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
            assert_eq!(
                scan_png(&png),
                payload.as_bytes(),
                "module size {module_px}"
            );
        }
    }
}

#[test]
fn chinese_text_survives_the_round_trip_as_utf8() {
    let payload = dynamic_payload();
    assert!(payload.contains("上海浦东新区便利店"));
    let bytes = scan_png(&render::png(&payload, 4).unwrap());
    let text = String::from_utf8(bytes).unwrap();
    assert_eq!(text, payload);
    assert!(Payload::parse(&text).is_ok());
}

/// Rasterises the squares qrcode's SVG renderer draws ("M{x} {y}h{w}v{h}H{x}V{y}").
fn svg_modules(svg: &str) -> Vec<Vec<bool>> {
    let size: usize = svg
        .split("width=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let path = svg
        .split(" d=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let mut pixels = vec![vec![false; size]; size];
    for square in path.split('M').filter(|s| !s.is_empty()) {
        let (x, rest) = square.split_once(' ').unwrap();
        let (y, rest) = rest.split_once('h').unwrap();
        let (w, rest) = rest.split_once('v').unwrap();
        let h: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let (x, y, w, h): (usize, usize, usize, usize) = (
            x.parse().unwrap(),
            y.parse().unwrap(),
            w.parse().unwrap(),
            h.parse().unwrap(),
        );
        for row in pixels.iter_mut().skip(y).take(h) {
            for pixel in row.iter_mut().skip(x).take(w) {
                *pixel = true;
            }
        }
    }
    pixels
}

#[test]
fn svg_scans_back_to_the_identical_payload() {
    for payload in payloads() {
        let svg = render::svg(&payload).unwrap();
        assert!(svg.starts_with("<?xml"));
        assert_eq!(scan_modules(&svg_modules(&svg), 2), payload.as_bytes());
    }
}

/// Reads half-block text back into modules; `drawn_is_dark` says which modules the glyphs draw.
fn half_block_modules(text: &str, drawn_is_dark: bool) -> Vec<Vec<bool>> {
    let mut rows = Vec::new();
    for line in text.lines() {
        let (mut top, mut bottom) = (Vec::new(), Vec::new());
        for c in line.chars() {
            let (t, b) = match c {
                '█' => (true, true),
                '▀' => (true, false),
                '▄' => (false, true),
                ' ' => (false, false),
                other => panic!("unexpected character {other:?} in terminal rendering"),
            };
            top.push(t == drawn_is_dark);
            bottom.push(b == drawn_is_dark);
        }
        rows.push(top);
        rows.push(bottom);
    }
    rows
}

fn ascii_modules(text: &str, drawn_is_dark: bool) -> Vec<Vec<bool>> {
    text.lines()
        .map(|line| {
            let chars: Vec<char> = line.chars().collect();
            chars
                .chunks(2)
                .map(|pair| (pair[0] == '#') == drawn_is_dark)
                .collect()
        })
        .collect()
}

#[test]
fn terminal_text_scans_back_on_both_backgrounds() {
    for payload in payloads() {
        let dark = render::terminal(&payload, Background::Dark).unwrap();
        // On a dark background the glyphs draw the light modules, the quiet zone included.
        assert!(dark.lines().next().unwrap().chars().all(|c| c == '█'));
        assert_eq!(
            scan_modules(&half_block_modules(&dark, false), 4),
            payload.as_bytes()
        );
        let light = render::terminal(&payload, Background::Light).unwrap();
        assert!(light.lines().next().unwrap().chars().all(|c| c == ' '));
        assert_eq!(
            scan_modules(&half_block_modules(&light, true), 4),
            payload.as_bytes()
        );
    }
}

#[test]
fn ascii_text_scans_back_on_both_backgrounds() {
    for payload in payloads() {
        let dark = render::ascii(&payload, Background::Dark).unwrap();
        assert!(dark.is_ascii());
        assert_eq!(
            scan_modules(&ascii_modules(&dark, false), 4),
            payload.as_bytes()
        );
        let light = render::ascii(&payload, Background::Light).unwrap();
        assert_eq!(
            scan_modules(&ascii_modules(&light, true), 4),
            payload.as_bytes()
        );
    }
}

#[test]
fn render_limits() {
    assert!(render::png(EMVCO_EXAMPLE, 0).is_err());
    assert!(render::png(EMVCO_EXAMPLE, render::MAX_MODULE_PX + 1).is_err());
    // Beyond QR version 40 at level M (2331 bytes).
    let error = render::svg(&"x".repeat(3000)).unwrap_err();
    assert!(error.to_string().contains("does not fit"), "{error}");
}
