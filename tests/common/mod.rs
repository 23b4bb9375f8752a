//! Shared helpers: where the real data lives, and synthetic segments.
#![allow(dead_code)]

use cvq::data::{read_segment_file, Segment};
use std::path::PathBuf;

/// A file of real data from `$CVQ_DATA` (default `../shared/data` beside the repository).
/// Absent: the test skips with a message, unless `CVQ_REQUIRE_DATA=1` (CI) makes it fail.
pub fn real_data(name: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("CVQ_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
    let path = dir.join(name);
    if path.is_file() {
        return Some(path);
    }
    let msg = format!("real data {} not found (set CVQ_DATA)", path.display());
    if std::env::var("CVQ_REQUIRE_DATA").is_ok_and(|v| v == "1") {
        panic!("{msg}; CVQ_REQUIRE_DATA=1 makes this a failure");
    }
    // Written past the test harness's capture, so the skip is seen even when the test passes.
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED: {msg}");
    None
}

pub fn clip() -> Option<Segment> {
    real_data("clip.npy").map(|p| read_segment_file(&p).unwrap())
}

/// A synthetic int16 (frames, 8, 16) segment: drifting noise with some frame-to-frame copying.
pub fn synthetic(name: &str, frames: usize, seed: u64) -> Segment {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut tokens: Vec<u16> = Vec::with_capacity(frames * 128);
    for i in 0..frames * 128 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let t = if i >= 128 && !x.is_multiple_of(4) { tokens[i - 128] } else { (x >> 20) as u16 % 1024 };
        tokens.push(t);
    }
    Segment::int16(name, tokens)
}
