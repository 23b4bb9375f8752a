//! Shared helpers: where the real data lives, and synthetic segments.
#![allow(dead_code)]

use cvq::data::{read_segment_file, Segment};

pub use cvq::data::shared::shared_data as real_data;

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
