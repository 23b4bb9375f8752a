//! Predictors: for the next token of a segment, an integer frequency table over the 1024
//! token values, every value at least 1 and the total fixed at 2^24.
//!
//! A predictor exposes its table through `interval`/`find` rather than as an array, so that
//! a predictor that builds its table from binary decisions (the context mixer) computes only
//! the ten splits on the coded token's path. `frequencies` materialises the whole table.

mod context_mix;
mod logistic;

pub use context_mix::ContextMix;

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

/// The predictors an archive can name. Its id goes into the archive header, so that an
/// archive is only ever decoded by the predictor that wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Model {
    /// The adaptive context-mixing model; learns from the segment alone.
    ContextMix,
}

impl Model {
    /// 32-byte identifier: a hash of the predictor's name and version (the weights' hash
    /// once a predictor has weights).
    pub fn id(&self) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        match self {
            Model::ContextMix => Sha256::digest(context_mix::ID).into(),
        }
    }

    /// A fresh predictor for a segment of `tokens` tokens.
    pub fn predictor(&self, tokens: usize) -> Box<dyn Predictor> {
        match self {
            Model::ContextMix => Box::new(ContextMix::new(tokens)),
        }
    }

    pub fn from_id(id: &[u8; 32]) -> Option<Model> {
        [Model::ContextMix].into_iter().find(|m| &m.id() == id)
    }
}
