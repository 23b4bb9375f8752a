//! Predictors: for the next token of a segment, an integer frequency table over the 1024
//! token values, every value at least 1 and the total fixed at 2^24.
//!
//! A predictor exposes its table through `interval`/`find` rather than as an array, so that
//! a predictor that builds its table from binary decisions (the context mixer) computes only
//! the ten splits on the coded token's path. `frequencies` materialises the whole table.

mod context_mix;
mod logistic;
mod mixed;
pub mod neural;
pub mod transformer;

pub use context_mix::ContextMix;
pub use mixed::Mixed;
pub use neural::Neural;

use std::sync::Arc;
use transformer::Transformer;

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

/// Hashed with the weights' hash into the mixed model's id.
const MIXED_ID: &[u8] = b"cvq mixed 3";

/// Predictors of earlier releases, whose bitstreams this one no longer decodes, with the
/// release that does: the context mixer's id string, the mixed model's, and the release.
const RETIRED: [(&[u8], &[u8], &str); 1] = [(b"cvq context-mix 1", b"cvq mixed 2", "0.1")];

/// The predictors an archive can name. Its id goes into the archive header, so that an
/// archive is only ever decoded by the predictor that wrote it.
#[derive(Clone)]
pub enum Model {
    /// The adaptive context-mixing model; learns from the segment alone.
    ContextMix,
    /// The integer transformer with its weights.
    Neural(Arc<Transformer>),
    /// The transformer's table mixed into the context mixer.
    Mixed(Arc<Transformer>),
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Model::ContextMix => write!(f, "{}", self.name()),
            Model::Neural(t) => write!(f, "{} {:?} (weights {})", self.name(), t.spec, hex(&t.hash[..8])),
            Model::Mixed(t) => {
                write!(f, "{}: context-mix + neural {:?} (weights {})", self.name(), t.spec, hex(&t.hash[..8]))
            }
        }
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Model {
    /// 32-byte identifier: for the context mixer a hash of its name and version, for a neural
    /// model its weights' content hash, for the mix a hash of both.
    pub fn id(&self) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        match self {
            Model::ContextMix => Sha256::digest(context_mix::ID).into(),
            Model::Neural(t) => t.hash,
            Model::Mixed(t) => Sha256::new().chain_update(MIXED_ID).chain_update(t.hash).finalize().into(),
        }
    }

    /// The release and predictor name of an archive id that an earlier release wrote with the
    /// context mixer, or with the mixed model of weights `t`.
    pub fn retired(id: &[u8; 32], t: Option<&Transformer>) -> Option<(&'static str, &'static str)> {
        use sha2::{Digest, Sha256};
        RETIRED.iter().find_map(|&(cm, mixed, release)| {
            let mixed_id =
                t.map(|t| <[u8; 32]>::from(Sha256::new().chain_update(mixed).chain_update(t.hash).finalize()));
            if Sha256::digest(cm).as_slice() == id {
                Some((release, "context-mix"))
            } else {
                (mixed_id.as_ref() == Some(id)).then_some((release, "mixed"))
            }
        })
    }

    /// The predictor's short name, as `--predictor` spells it.
    pub fn name(&self) -> &'static str {
        match self {
            Model::ContextMix => "context-mix",
            Model::Neural(_) => "neural",
            Model::Mixed(_) => "mixed",
        }
    }

    /// The weights of the neural part, if any.
    pub fn transformer(&self) -> Option<&Arc<Transformer>> {
        match self {
            Model::ContextMix => None,
            Model::Neural(t) | Model::Mixed(t) => Some(t),
        }
    }

    /// Fresh predictors for segments of the given token counts, to be advanced in lockstep.
    pub fn batch(&self, sizes: &[usize]) -> Batch {
        match self {
            Model::ContextMix => Batch::ContextMix(sizes.iter().map(|&n| ContextMix::new(n)).collect()),
            Model::Neural(t) => Batch::Neural(sizes.iter().map(|&n| Neural::new(Arc::clone(t), n)).collect()),
            Model::Mixed(t) => {
                Batch::Mixed(sizes.iter().map(|&n| Mixed::new(Neural::new(Arc::clone(t), n), n)).collect())
            }
        }
    }

    /// Bytes a segment of `tokens` tokens holds while it codes: the context mixer's counter
    /// tables, the transformer's key/value cache (2.2 GB at the spec's limits) and its tokens.
    pub fn memory(&self, tokens: usize) -> usize {
        let neural = |t: &Transformer| t.spec.kv_cache_bytes() + tokens * 2;
        match self {
            Model::ContextMix => ContextMix::memory(tokens, false),
            Model::Neural(t) => neural(t),
            Model::Mixed(t) => ContextMix::memory(tokens, true) + neural(t),
        }
    }

    /// How many segments one worker codes in lockstep: the context mixer's tables are large
    /// and gain nothing from company; the transformer turns matrix-vector work into
    /// matrix-matrix work. Past 8 segments their key/value caches outgrow the CPU caches and
    /// decoding slows (`cargo bench --bench transformer`: 4 x 256, K=2 decodes 5,761 tokens/s
    /// at 8, 4,515 at 32, 4,003 at 1).
    pub fn batch_size(&self) -> usize {
        match self {
            Model::ContextMix => 1,
            Model::Neural(_) | Model::Mixed(_) => 8,
        }
    }
}

/// Predictors of several segments, advanced in lockstep.
pub enum Batch {
    ContextMix(Vec<ContextMix>),
    Neural(Vec<Neural>),
    Mixed(Vec<Mixed>),
}

impl Batch {
    /// Make the next token's table ready for each segment in `active` (one batched step for
    /// the transformer; nothing to do for the context mixer, which works lazily).
    pub fn prepare(&mut self, active: &[usize]) {
        let mut chosen: Vec<&mut Neural> = match self {
            Batch::ContextMix(_) => return,
            Batch::Neural(p) => p.iter_mut().collect(),
            Batch::Mixed(p) => p.iter_mut().map(|m| &mut m.neural).collect(),
        };
        chosen = chosen.into_iter().enumerate().filter(|(i, _)| active.contains(i)).map(|(_, n)| n).collect();
        Neural::prepare(&mut chosen);
    }

    pub fn get(&mut self, i: usize) -> &mut dyn Predictor {
        match self {
            Batch::ContextMix(p) => &mut p[i],
            Batch::Neural(p) => &mut p[i],
            Batch::Mixed(p) => &mut p[i],
        }
    }
}
