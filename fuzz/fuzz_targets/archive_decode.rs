//! Any bytes given to the decoder end in segments or an error: never a panic, a hang or an
//! allocation a forged length asked for. Archives of the context mixer, and of the neural and
//! mixed models of the small seeded model, are decoded.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod seeded_model;

fuzz_target!(|data: &[u8]| {
    let Ok(archive) = cvq::archive::parse(data) else { return };
    // A forged frame count and a confident model decode up to 65,536 frames per segment from a
    // few bytes: bounded, but minutes under the sanitizer. Keep each run short.
    if archive.entries.iter().map(|e| e.frames).sum::<usize>() > 64 {
        return;
    }
    let Ok(model) = cvq::pipeline::archive_model(&archive, Some(&seeded_model::seeded_model())) else { return };
    let indices: Vec<usize> = (0..archive.entries.len()).collect();
    for seg in cvq::pipeline::decode_batch(&archive, &model, &indices).into_iter().flatten() {
        let _ = seg.to_npy_bytes();
    }
});
