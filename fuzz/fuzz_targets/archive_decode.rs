//! Any bytes given to the decoder end in segments or an error: never a panic, a hang or an
//! allocation a forged length asked for.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(archive) = cvq::archive::parse(data) else { return };
    let Ok(model) = cvq::pipeline::archive_model(&archive, None) else { return };
    let indices: Vec<usize> = (0..archive.entries.len()).collect();
    for seg in cvq::pipeline::decode_batch(&archive, &model, &indices).into_iter().flatten() {
        let _ = seg.to_npy_bytes();
    }
});
