//! Parse of an EMV merchant-presented QR payload (what a phone scans and the wallet API's
//! `resolve` and `pay` receive): never panics, and whatever parses re-encodes to a payload that
//! parses again to the same encoding (the CRC recomputed).
#![no_main]

use libfuzzer_sys::fuzz_target;
use posbridge_codecs::emv_qr::Payload;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(payload) = Payload::parse(text) else {
        return;
    };
    let encoded = payload.encode();
    let again = Payload::parse(&encoded).expect("a re-encoded payload parses");
    assert_eq!(again.encode(), encoded, "encoding is stable");
});
