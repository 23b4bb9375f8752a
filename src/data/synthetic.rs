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

/// splitmix64: a tiny, well-mixed generator whose output is the same everywhere.
pub fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Rows and columns a `motion` segment's frames move by, at most, in each direction.
pub const MOTION_SHIFT: usize = 1;

/// A segment in which content moves, with its exact information content: a stand-in whose
/// tokens can only be predicted by looking at another place of the previous frame, as motion
/// in real driving video asks. Frame 0 is uniform noise (10 bits a token). Every later token
/// is the previous frame's token at (row - dr, col - dc), wrapping around the 8 x 16 frame,
/// except with probability `noise` (rounded to a multiple of 2^-24), where it is a uniform
/// token (which may repeat the moved one). The offset (dr, dc) is `shift`, or else drawn for
/// the segment uniformly from -1..=1 x -1..=1. `next` is the random source (64 uniform bits a
/// call).
///
/// Returns the segment, its offset and its information content in bits, `-log2 P(tokens)`:
/// for a given shift `P(tokens | shift)`; for a drawn one the mixture over the 9 offsets,
/// `sum P(offset) P(tokens | offset)`, the code length of a coder that knows the generator
/// and infers the offset from the tokens.
pub fn motion(
    name: &str,
    frames: usize,
    noise: f64,
    shift: Option<(i32, i32)>,
    next: &mut dyn FnMut() -> u64,
) -> (Segment, (i32, i32), f64) {
    const ROWS: usize = 8;
    const COLS: usize = 16;
    let side = 2 * MOTION_SHIFT + 1;
    let threshold = (noise.clamp(0.0, 1.0) * (1u64 << 24) as f64).round() as u64;
    let offset_of = |o: usize| ((o / side) as i32 - MOTION_SHIFT as i32, (o % side) as i32 - MOTION_SHIFT as i32);
    let offset = shift.unwrap_or_else(|| offset_of(((next() >> 32) * (side * side) as u64 >> 32) as usize));
    // Where token i (of a frame after the first) comes from under offset (dr, dc).
    let source = |(dr, dc): (i32, i32), i: usize| -> usize {
        let k = i % TOKENS_PER_FRAME;
        let r = ((k / COLS) as i32 - dr).rem_euclid(ROWS as i32) as usize;
        let c = ((k % COLS) as i32 - dc).rem_euclid(COLS as i32) as usize;
        i - k - TOKENS_PER_FRAME + r * COLS + c
    };
    let mut tokens: Vec<u16> = Vec::with_capacity(frames * TOKENS_PER_FRAME);
    for i in 0..frames * TOKENS_PER_FRAME {
        let x = next();
        let keep = i >= TOKENS_PER_FRAME && (x & 0xFF_FFFF) >= threshold;
        tokens.push(if keep { tokens[source(offset, i)] } else { (x >> 54) as u16 });
    }
    // log2 P(tokens | offset) for each offset, then their mixture with the uniform prior.
    let q = threshold as f64 / (1u64 << 24) as f64;
    let (hit, miss) = ((1.0 - q + q / VOCAB as f64).log2(), (q / VOCAB as f64).log2());
    let offsets: Vec<(i32, i32)> = match shift {
        Some(s) => vec![s],
        None => (0..side * side).map(offset_of).collect(),
    };
    let logs: Vec<f64> = offsets
        .iter()
        .map(|&o| {
            (TOKENS_PER_FRAME..tokens.len()).map(|i| if tokens[i] == tokens[source(o, i)] { hit } else { miss }).sum()
        })
        .collect();
    let top = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mixture = top + logs.iter().map(|l| (l - top).exp2()).sum::<f64>().log2() - (logs.len() as f64).log2();
    let first = TOKENS_PER_FRAME.min(tokens.len()) as f64 * (VOCAB as f64).log2();
    (Segment::int16(name, tokens), offset, first - mixture)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter(seed: u64) -> impl FnMut() -> u64 {
        let mut s = seed;
        move || splitmix(&mut s)
    }

    #[test]
    fn motion_moves_the_previous_frame_and_counts_its_information() {
        // Without noise each frame is the previous one moved by the offset: 10 bits a token
        // for frame 0, and the offset's log2(9) bits, unless frame 0 repeats under a move.
        let (seg, (dr, dc), bits) = motion("m", 3, 0.0, None, &mut counter(1));
        for k in 0..128 {
            let (r, c) = (k / 16, k % 16);
            let from = ((r as i32 - dr).rem_euclid(8) * 16 + (c as i32 - dc).rem_euclid(16)) as usize;
            assert_eq!(seg.tokens[256 + k], seg.tokens[128 + from]);
        }
        assert!((bits - (1280.0 + 9f64.log2())).abs() < 1e-9, "{bits}");
        // With noise 0.1: about 1.47 bits a token after frame 0 (the entropy of a copy kept
        // with probability 0.9 + 0.1/1024, else one of 1024 values), close to its expectation.
        let (seg, _, bits) = motion("m", 201, 0.1, None, &mut counter(2));
        let per_token = (bits - 1280.0) / (seg.tokens.len() - 128) as f64;
        let q = (0.1f64 * (1 << 24) as f64).round() / (1 << 24) as f64;
        let keep = 1.0 - q + q / 1024.0;
        let expected = -keep * keep.log2() - (1.0 - keep) * (q / 1024.0).log2();
        assert!((per_token - expected).abs() < 0.02, "{per_token} vs {expected}");
        // Every offset occurs.
        let offsets: std::collections::HashSet<_> =
            (0..200).map(|s| motion("m", 2, 0.1, None, &mut counter(s)).1).collect();
        assert_eq!(offsets.len(), 9);
        // A given shift: every segment moves by it, and the information is that of the tokens
        // given it (no mixture): without noise, frame 0 alone.
        let (seg, offset, bits) = motion("m", 4, 0.0, Some((1, -1)), &mut counter(3));
        assert_eq!(offset, (1, -1));
        assert_eq!(seg.tokens[128 + 16 + 2], seg.tokens[3], "frame 1 (1, 2) is frame 0 (0, 3)");
        assert!((bits - 1280.0).abs() < 1e-9, "{bits}");
    }
}
