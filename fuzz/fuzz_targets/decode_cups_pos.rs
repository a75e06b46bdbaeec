//! Decode of the `cups-pos` dialect: never panics, and whatever decodes re-encodes to the same bytes
//! (see common.rs for the one documented exception).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use posbridge_codecs::Spec;

#[path = "common.rs"]
mod common;

static SPEC: OnceLock<Spec> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let spec = SPEC.get_or_init(|| Spec::builtin("cups-pos").expect("built-in dialect loads"));
    common::round_trip(spec, data);
});
