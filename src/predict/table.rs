//! The coder's contract: a predictor gives, for the next token of a segment, an integer
//! frequency table over the 1024 token values, every value at least 1 and the total fixed at
//! 2^24 (FORMAT.md section 2). The coder sees only this; the predictors build on it.
//!
//! A predictor exposes its table through `interval`/`find` rather than as an array, so that
//! a predictor that builds its table from binary decisions (the context mixer) computes only
//! the ten splits on the coded token's path. `frequencies` materialises the whole table.

use crate::data::VOCAB;

/// Bits of the fixed frequency total.
pub const TOTAL_BITS: u32 = 24;
/// Fixed frequency total of every table.
pub const TOTAL: u32 = 1 << TOTAL_BITS;

/// A token's slice of the table: `[start, start + freq)` out of `TOTAL`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interval {
    pub start: u32,
    pub freq: u32,
}

/// A model of the next token given the tokens coded so far in the segment (its state).
pub trait Predictor {
    /// The interval of `token` in the table for the next token.
    fn interval(&mut self, token: u16) -> Interval;
    /// The token whose interval holds `target` (< `TOTAL`), with that interval.
    fn find(&mut self, target: u32) -> (u16, Interval);
    /// Learn `token` as the next token of the segment and move on.
    fn update(&mut self, token: u16);
}

/// The whole frequency table for the next token.
pub fn frequencies(p: &mut dyn Predictor) -> Vec<u32> {
    (0..VOCAB as u16).map(|t| p.interval(t).freq).collect()
}

/// A frequency table as cumulative counts: token `t` owns `[cum[t], cum[t + 1])`.
pub struct FreqTable {
    cum: Vec<u32>,
}

impl FreqTable {
    pub fn new(freqs: &[u32]) -> FreqTable {
        let running = freqs.iter().scan(0, |total, &f| {
            *total += f;
            Some(*total)
        });
        FreqTable { cum: std::iter::once(0).chain(running).collect() }
    }

    pub fn interval(&self, t: u16) -> Interval {
        let t = usize::from(t);
        Interval { start: self.cum[t], freq: self.cum[t + 1] - self.cum[t] }
    }

    /// The total frequency of tokens `lo..hi`.
    pub fn mass(&self, lo: usize, hi: usize) -> u32 {
        self.cum[hi] - self.cum[lo]
    }

    pub fn find(&self, target: u32) -> (u16, Interval) {
        let t = self.cum.partition_point(|&c| c <= target) - 1;
        (t as u16, self.interval(t as u16))
    }
}
