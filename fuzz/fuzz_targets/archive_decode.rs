//! Any bytes given to the decoder end in segments or an error: never a panic, a hang or an
//! allocation a forged length asked for.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(archive) = cvq::archive::parse(data) else { return };
    for i in 0..archive.entries.len() {
        if let Ok(seg) = cvq::pipeline::decode_entry(&archive, i) {
            let _ = seg.to_npy_bytes();
        }
    }
});
