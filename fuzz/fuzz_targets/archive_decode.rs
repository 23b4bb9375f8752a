//! Any bytes given to the decoder end in segments or an error: never a panic, a hang or an
//! allocation a forged length asked for. Archives of the context mixer, and of the neural and
//! mixed models of the small seeded model, are decoded.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod seeded_model;

fuzz_target!(|data: &[u8]| {
    let Ok(archive) = cvq::archive::parse(data) else { return };
    let Ok(model) = cvq::pipeline::archive_model(&archive, Some(&seeded_model::seeded_model())) else { return };
    let indices: Vec<usize> = (0..archive.entries.len()).collect();
    for seg in cvq::pipeline::decode_batch(&archive, &model, &indices).into_iter().flatten() {
        let _ = seg.to_npy_bytes();
    }
});
