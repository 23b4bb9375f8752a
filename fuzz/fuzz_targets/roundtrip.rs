//! Arbitrary segments through the context mixer's compressor and back (see
//! `roundtrip_check.rs` for how the bytes become segments): the same segments, or a refusal
//! that names their problem. At most 4 frames a segment, keeping runs fast.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod roundtrip_check;

fuzz_target!(|data: &[u8]| {
    roundtrip_check::check(&cvq::predict::Model::ContextMix, None, &roundtrip_check::cases(data, 4 * 128));
});
