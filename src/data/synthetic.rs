//! Generated segments for tests and scale checks, where real tokens are not needed (rates are
//! only ever reported on real tokens): drifting noise in which most tokens copy the token at
//! the same place in the previous frame, so they compress somewhat, as real ones do.

use super::{Segment, TOKENS_PER_FRAME, VOCAB};

/// xorshift64 (13, 7, 17): the seeded stream of generated segments, random weights and
/// test data, the same on every machine.
pub struct XorShift(u64);

impl XorShift {
    /// A stream for `seed` (spread by the golden ratio, made odd: never the stuck 0).
    pub fn new(seed: u64) -> XorShift {
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    #[allow(clippy::should_implement_trait)] // an endless stream, not an Iterator
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A seeded int16 (frames, 8, 16) segment.
pub fn segment(name: &str, frames: usize, seed: u64) -> Segment {
    let mut rng = XorShift::new(seed);
    let mut tokens: Vec<u16> = Vec::with_capacity(frames * TOKENS_PER_FRAME);
    for i in 0..frames * TOKENS_PER_FRAME {
        let x = rng.next();
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

/// Rows and columns a drawn motion offset spans, at most, in each direction.
pub const MOTION_SHIFT: usize = 1;

/// Segments in which content moves, with their exact information content: a stand-in whose
/// tokens can only be predicted by looking at another place of the previous frame, as motion
/// in real driving video asks. Frame 0 is uniform noise over the first `alphabet` token
/// values. Every later token is the previous frame's token at (row - dr, col - dc), wrapping
/// around the 8 x 16 frame, except with probability `noise` (rounded to a multiple of 2^-24),
/// where it is uniform over the alphabet (and may repeat the moved one). The offset (dr, dc)
/// is `shift`, or else drawn for each segment uniformly from -1..=1 x -1..=1.
///
/// The alphabet (a power of two up to 1024) matters to a network whose output is tied to a
/// d-dimensional embedding: its logits span d dimensions, enough for a spike over a uniform
/// rest of 64 values at d = 128, not of 1024 (the best such a network can do there is about 3%
/// above the entropy at noise 0.1).
#[derive(Clone, Copy, Debug)]
pub struct Motion {
    pub noise: f64,
    pub shift: Option<(i32, i32)>,
    pub alphabet: usize,
}

impl Motion {
    /// The noise probability as drawn: a multiple of 2^-24.
    pub fn noise(&self) -> f64 {
        self.threshold() as f64 / (1u64 << 24) as f64
    }

    fn threshold(&self) -> u64 {
        (self.noise.clamp(0.0, 1.0) * (1u64 << 24) as f64).round() as u64
    }

    /// A segment from the random source `next` (64 uniform bits a call), its offset and its
    /// information content in bits, `-log2 P(tokens)`: for a given shift `P(tokens | shift)`;
    /// for drawn offsets the mixture over the 9 offsets, `sum P(offset) P(tokens | offset)`,
    /// the code length of a coder that knows the generator and infers the offset.
    pub fn segment(&self, name: &str, frames: usize, next: &mut dyn FnMut() -> u64) -> (Segment, (i32, i32), f64) {
        const ROWS: usize = 8;
        const COLS: usize = 16;
        assert!(self.alphabet.is_power_of_two() && self.alphabet <= VOCAB, "alphabet {}", self.alphabet);
        let side = 2 * MOTION_SHIFT + 1;
        let offset_of = |o: usize| ((o / side) as i32 - MOTION_SHIFT as i32, (o % side) as i32 - MOTION_SHIFT as i32);
        let offset = self.shift.unwrap_or_else(|| offset_of((((next() >> 32) * (side * side) as u64) >> 32) as usize));
        // Where token i (of a frame after the first) comes from under offset (dr, dc).
        let source = |(dr, dc): (i32, i32), i: usize| -> usize {
            let k = i % TOKENS_PER_FRAME;
            let r = ((k / COLS) as i32 - dr).rem_euclid(ROWS as i32) as usize;
            let c = ((k % COLS) as i32 - dc).rem_euclid(COLS as i32) as usize;
            i - k - TOKENS_PER_FRAME + r * COLS + c
        };
        let threshold = self.threshold();
        let mut tokens: Vec<u16> = Vec::with_capacity(frames * TOKENS_PER_FRAME);
        for i in 0..frames * TOKENS_PER_FRAME {
            let x = next();
            let keep = i >= TOKENS_PER_FRAME && (x & 0xFF_FFFF) >= threshold;
            tokens.push(if keep { tokens[source(offset, i)] } else { (x >> 54) as u16 % self.alphabet as u16 });
        }
        // log2 P(tokens | offset) for each offset, then their mixture with the uniform prior.
        let (q, a) = (self.noise(), self.alphabet as f64);
        let (hit, miss) = ((1.0 - q + q / a).log2(), (q / a).log2());
        let offsets: Vec<(i32, i32)> = match self.shift {
            Some(s) => vec![s],
            None => (0..side * side).map(offset_of).collect(),
        };
        let logs: Vec<f64> = offsets
            .iter()
            .map(|&o| {
                (TOKENS_PER_FRAME..tokens.len())
                    .map(|i| if tokens[i] == tokens[source(o, i)] { hit } else { miss })
                    .sum()
            })
            .collect();
        let top = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mixture = top + logs.iter().map(|l| (l - top).exp2()).sum::<f64>().log2() - (logs.len() as f64).log2();
        let first = TOKENS_PER_FRAME.min(tokens.len()) as f64 * a.log2();
        (Segment::int16(name, tokens), offset, first - mixture)
    }
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
        let drawn = |noise, alphabet| Motion { noise, shift: None, alphabet };
        // Without noise each frame is the previous one moved by the offset: 10 bits a token
        // for frame 0, and the offset's log2(9) bits, unless frame 0 repeats under a move.
        let (seg, (dr, dc), bits) = drawn(0.0, 1024).segment("m", 3, &mut counter(1));
        for k in 0..128 {
            let (r, c) = (k / 16, k % 16);
            let from = ((r as i32 - dr).rem_euclid(8) * 16 + (c as i32 - dc).rem_euclid(16)) as usize;
            assert_eq!(seg.tokens[256 + k], seg.tokens[128 + from]);
        }
        assert!((bits - (1280.0 + 9f64.log2())).abs() < 1e-9, "{bits}");
        // With noise 0.1 over an alphabet of A values, close to the expected entropy a token
        // after frame 0: a copy kept with probability 0.9 + 0.1/A, else one of A values.
        for alphabet in [1024, 64] {
            let m = drawn(0.1, alphabet);
            let (seg, _, bits) = m.segment("m", 201, &mut counter(2));
            assert!(seg.tokens.iter().all(|&t| usize::from(t) < alphabet));
            let first = 128.0 * (alphabet as f64).log2();
            let per_token = (bits - first) / (seg.tokens.len() - 128) as f64;
            let (q, a) = (m.noise(), alphabet as f64);
            let keep = 1.0 - q + q / a;
            let expected = -keep * keep.log2() - (1.0 - keep) * (q / a).log2();
            assert!((per_token - expected).abs() < 0.02, "{alphabet}: {per_token} vs {expected}");
        }
        // Every offset occurs.
        let offsets: std::collections::HashSet<_> =
            (0..200).map(|s| drawn(0.1, 1024).segment("m", 2, &mut counter(s)).1).collect();
        assert_eq!(offsets.len(), 9);
        // A given shift: every segment moves by it, and the information is that of the tokens
        // given it (no mixture): without noise, frame 0 alone.
        let given = Motion { noise: 0.0, shift: Some((1, -1)), alphabet: 1024 };
        let (seg, offset, bits) = given.segment("m", 4, &mut counter(3));
        assert_eq!(offset, (1, -1));
        assert_eq!(seg.tokens[128 + 16 + 2], seg.tokens[3], "frame 1 (1, 2) is frame 0 (0, 3)");
        assert!((bits - 1280.0).abs() < 1e-9, "{bits}");
    }
}
