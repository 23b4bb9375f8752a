//! Generated segments for tests and scale checks, where real tokens are not needed (rates are
//! only ever reported on real tokens): drifting noise in which most tokens copy the token at
//! the same place in the previous frame, so they compress somewhat, as real ones do.

use super::{Segment, TOKENS_PER_FRAME, VOCAB};

/// A seeded int16 (frames, 8, 16) segment.
pub fn segment(name: &str, frames: usize, seed: u64) -> Segment {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut tokens: Vec<u16> = Vec::with_capacity(frames * TOKENS_PER_FRAME);
    for i in 0..frames * TOKENS_PER_FRAME {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let copy = i >= TOKENS_PER_FRAME && !x.is_multiple_of(4);
        tokens.push(if copy { tokens[i - TOKENS_PER_FRAME] } else { (x >> 20) as u16 % VOCAB as u16 });
    }
    Segment::int16(name, tokens)
}
