//! Arbitrary payload bytes through the range decoder and the predictor: the first byte picks
//! a frame count (0-7, keeping runs fast), the rest is the payload. The archive fuzzer rarely gets past the
//! index checksum, so this one aims at the decoder itself.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&frames, payload)) = data.split_first() else { return };
    let count = usize::from(frames % 8) * cvq::data::TOKENS_PER_FRAME;
    let mut batch = cvq::predict::Model::ContextMix.batch(&[count]);
    let _ = cvq::code::decode(&mut batch, &[payload], &[count]);
});
