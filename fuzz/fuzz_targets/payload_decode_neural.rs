//! Arbitrary payload bytes through the range decoder and the neural or mixed predictor of a
//! small seeded model, two segments in one lockstep batch (so one can fail while the other
//! goes on). The first byte picks the predictor (bit 7: mixed, else neural; bits 5-6: frozen,
//! its output layer learns online, or its output layer and input embeddings do) and each
//! segment's frame count (bits 0-1 and 2-3: 0-3 frames, keeping runs fast); the rest is split
//! in two payloads.
#![no_main]

use cvq::data::TOKENS_PER_FRAME;
use cvq::predict::{Learning, Model};
use libfuzzer_sys::fuzz_target;

mod seeded_model;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else { return };
    let t = seeded_model::seeded_model();
    let learning = [Learning::Frozen, Learning::Output, Learning::Network, Learning::Network][usize::from(pick >> 5 & 3)];
    let model = if pick & 0x80 != 0 { Model::Mixed(t, learning) } else { Model::Neural(t, learning) };
    let counts = [usize::from(pick & 3) * TOKENS_PER_FRAME, usize::from(pick >> 2 & 3) * TOKENS_PER_FRAME];
    let (a, b) = rest.split_at(rest.len() / 2);
    let _ = cvq::code::decode(&mut model.batch(&counts), &[a, b], &counts);
});
