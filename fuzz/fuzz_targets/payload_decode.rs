//! Arbitrary payload bytes through the range decoder and the predictor: the first byte picks
//! a frame count (0-255), the rest is the payload. The archive fuzzer rarely gets past the
//! index checksum, so this one aims at the decoder itself.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&frames, payload)) = data.split_first() else { return };
    let count = usize::from(frames) * cvq::data::TOKENS_PER_FRAME;
    let mut predictor = cvq::predict::Model::ContextMix.predictor(count);
    let _ = cvq::code::decode_tokens(payload, count, predictor.as_mut());
});
