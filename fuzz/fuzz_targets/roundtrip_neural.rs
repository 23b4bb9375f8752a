//! Arbitrary segments through the neural or mixed compressor of the small seeded model and
//! back, as `roundtrip` does for the context mixer. The first byte picks the predictor (bit 0:
//! mixed, else neural; bits 1-2: frozen, its output layer learns online, or its output layer
//! and input embeddings do); the rest are the segments
//! (`roundtrip_check.rs`), at most 2 frames each, keeping runs fast. The segments code in one
//! lockstep batch.
#![no_main]

use cvq::predict::{Learning, Model};
use libfuzzer_sys::fuzz_target;

mod roundtrip_check;
mod seeded_model;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else { return };
    let t = seeded_model::seeded_model();
    let learning = [Learning::Frozen, Learning::Output, Learning::Network, Learning::Network][usize::from(pick >> 1 & 3)];
    let model = if pick & 1 != 0 { Model::Mixed(t.clone(), learning) } else { Model::Neural(t.clone(), learning) };
    roundtrip_check::check(&model, Some(&t), &roundtrip_check::cases(rest, 2 * 128));
});
