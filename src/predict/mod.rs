//! Predictors: for the next token of a segment, an integer frequency table over the 1024
//! token values, every value at least 1 and the total fixed at 2^24.
//!
//! A predictor exposes its table through `interval`/`find` rather than as an array, so that
//! a predictor that builds its table from binary decisions (the context mixer) computes only
//! the ten splits on the coded token's path. `frequencies` materialises the whole table.

mod adapt;
mod context_mix;
mod logistic;
mod mixed;
pub mod neural;
pub mod transformer;

pub use adapt::{Rates, MAX_WIDTH as MAX_ADAPTIVE_WIDTH};
pub use context_mix::{ContextMix, Tables};
pub use mixed::Mixed;
pub use neural::Neural;

use context_mix::{TABLES, TABLES_WITH_PRIOR};
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
const MIXED_ID: &[u8] = b"cvq mixed 4";
/// Likewise for the predictors whose network learns while it codes; the version pins the
/// update rule and its learning rates (`Learning::rates`, FORMAT.md section 3.4).
const NEURAL_ADAPTIVE_ID: &[u8] = b"cvq neural-adaptive 1";
const MIXED_ADAPTIVE_ID: &[u8] = b"cvq mixed-adaptive 2";

/// Whether the network's output layer keeps learning while a segment codes (`adapt`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Learning {
    Frozen,
    Online,
}

/// Predictors of earlier releases whose bitstreams this one no longer decodes, with the last
/// release that does: the id string (a context mixer's id hashes it alone, the others' hash
/// it with the weights' id) and the release.
const RETIRED: [(&str, &str); 4] =
    [("cvq context-mix 1", "0.1"), ("cvq mixed 2", "0.1"), ("cvq mixed 3", "0.3"), ("cvq mixed-adaptive 1", "0.3")];

/// The built-in weights of earlier releases (their id, section 4 of FORMAT.md), which this
/// one does not carry, with the release.
const RETIRED_WEIGHTS: [(&str, &str); 1] =
    [("e31c4e8e8d0eb6cfd2a052fef2f1a96866bd28379218255ec34b28359a981aed", "0.2")];

/// The predictors an archive can name. Its id goes into the archive header, so that an
/// archive is only ever decoded by the predictor that wrote it.
#[derive(Clone)]
pub enum Model {
    /// The adaptive context-mixing model; learns from the segment alone.
    ContextMix,
    /// The integer transformer with its weights.
    Neural(Arc<Transformer>, Learning),
    /// The transformer's table mixed into the context mixer.
    Mixed(Arc<Transformer>, Learning),
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Model::ContextMix => write!(f, "{}", self.name()),
            Model::Neural(t, _) => write!(f, "{} {:?} (weights {})", self.name(), t.spec, hex(&t.hash[..8])),
            Model::Mixed(t, _) => {
                write!(f, "{}: context-mix + neural {:?} (weights {})", self.name(), t.spec, hex(&t.hash[..8]))
            }
        }
    }
}

/// The id of a predictor built on weights: SHA-256 of its name and version, then the weights' id.
fn named_id(name: &[u8], weights: &[u8; 32]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::new().chain_update(name).chain_update(weights).finalize().into()
}

/// `RETIRED_WEIGHTS` as bytes.
fn retired_weights() -> Vec<([u8; 32], &'static str)> {
    let bytes = |h: &str| std::array::from_fn(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap());
    RETIRED_WEIGHTS.iter().map(|&(h, release)| (bytes(h), release)).collect()
}

/// The earlier of two releases ("0.2", "0.10"); an empty one is the current release.
fn earlier<'a>(a: &'a str, b: &'a str) -> &'a str {
    let key = |r: &str| -> Vec<u32> { r.split('.').map(|n| n.parse().unwrap_or(u32::MAX)).collect() };
    if b.is_empty() || key(a) <= key(b) {
        a
    } else {
        b
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Model {
    /// 32-byte identifier: for the context mixer a hash of its name and version, for the
    /// frozen network its weights' content hash, for the others a hash of their name and
    /// version and the weights' hash.
    pub fn id(&self) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        match self {
            Model::ContextMix => Sha256::digest(context_mix::ID).into(),
            Model::Neural(t, Learning::Frozen) => t.hash,
            Model::Neural(t, Learning::Online) => named_id(NEURAL_ADAPTIVE_ID, &t.hash),
            Model::Mixed(t, Learning::Frozen) => named_id(MIXED_ID, &t.hash),
            Model::Mixed(t, Learning::Online) => named_id(MIXED_ADAPTIVE_ID, &t.hash),
        }
    }

    /// Every predictor of weights `t` (or the context mixer alone), to find an archive's.
    pub fn all(t: Option<&Arc<Transformer>>) -> Vec<Model> {
        let mut all = vec![Model::ContextMix];
        for l in [Learning::Frozen, Learning::Online] {
            let t = t.filter(|t| l == Learning::Frozen || t.spec.width <= adapt::MAX_WIDTH);
            all.extend(t.map(|t| Model::Neural(Arc::clone(t), l)));
            all.extend(t.map(|t| Model::Mixed(Arc::clone(t), l)));
        }
        all
    }

    /// Why this release cannot decode an archive id that an earlier one wrote, and what can:
    /// a retired predictor (with weights `t` or an earlier release's built-in ones), or a
    /// predictor with an earlier release's built-in weights.
    pub fn retired(id: &[u8; 32], t: Option<&Transformer>) -> Option<String> {
        use sha2::{Digest, Sha256};
        let this = env!("CARGO_PKG_VERSION");
        let old = retired_weights();
        // The weights a retired predictor may have used, with the last release that carried
        // them built in ("" for `t`, which this one has).
        let weights: Vec<([u8; 32], &str)> = t.map(|t| (t.hash, "")).into_iter().chain(old.iter().copied()).collect();
        for &(string, release) in &RETIRED {
            let alone = <[u8; 32]>::from(Sha256::digest(string)) == *id;
            let with = weights.iter().find(|w| named_id(string.as_bytes(), &w.0) == *id);
            if alone || with.is_some() {
                // An earlier release's weights under a later predictor: the earlier release.
                let release = with.map_or(release, |w| earlier(release, w.1));
                // "cvq mixed 3" -> "mixed"
                let name = string.trim_start_matches("cvq ").trim_end_matches(|c: char| c == ' ' || c.is_ascii_digit());
                return Some(format!(
                    "archive was written by the {name} predictor of cvq {release}, which cvq {this} no longer decodes: decompress it with cvq {release}"
                ));
            }
        }
        let (hash, release, name) = old.iter().find_map(|(hash, release)| {
            let name = if hash == id {
                "neural"
            } else if named_id(MIXED_ID, hash) == *id {
                "mixed"
            } else {
                return None;
            };
            Some((hash, release, name))
        })?;
        Some(format!(
            "archive was written by the {name} predictor with the built-in weights of cvq {release} (model {}...), which cvq {this} does not carry: pass those weights with --weights, or decompress it with cvq {release}",
            hex(&hash[..8])
        ))
    }

    /// The predictor's short name, as `--predictor` spells it.
    pub fn name(&self) -> &'static str {
        match self {
            Model::ContextMix => "context-mix",
            Model::Neural(_, Learning::Frozen) => "neural",
            Model::Neural(_, Learning::Online) => "neural-adaptive",
            Model::Mixed(_, Learning::Frozen) => "mixed",
            Model::Mixed(_, Learning::Online) => "mixed-adaptive",
        }
    }

    /// The weights of the neural part, if any.
    pub fn transformer(&self) -> Option<&Arc<Transformer>> {
        match self {
            Model::ContextMix => None,
            Model::Neural(t, _) | Model::Mixed(t, _) => Some(t),
        }
    }

    /// Fresh predictors for segments of the given token counts, to be advanced in lockstep.
    pub fn batch(&self, sizes: &[usize]) -> Batch {
        match self {
            Model::ContextMix => Batch::ContextMix(sizes.iter().map(|&n| ContextMix::new(n, TABLES)).collect()),
            Model::Neural(t, _) => {
                Batch::Neural(sizes.iter().map(|&n| Neural::new(Arc::clone(t), n, self.rates())).collect())
            }
            Model::Mixed(t, _) => Batch::Mixed(
                sizes
                    .iter()
                    .map(|&n| Mixed::new(Neural::new(Arc::clone(t), n, self.rates()), n, TABLES_WITH_PRIOR))
                    .collect(),
            ),
        }
    }

    /// How the network learns while it codes: for the network alone, its output matrix and
    /// bias; in the mix, the matrix alone (the context mixer's counts already learn what the
    /// bias would, and the two together code worse: README, "Online adaptation").
    fn rates(&self) -> Option<Rates> {
        match self {
            Model::Neural(_, Learning::Online) => Some(Rates { matrix: Some(9), bias: Some(6) }),
            Model::Mixed(_, Learning::Online) => Some(Rates { matrix: Some(11), bias: None }),
            _ => None,
        }
    }

    /// Bytes a segment of `tokens` tokens holds while it codes: the context mixer's counter
    /// tables, the transformer's key/value cache (2.2 GB at the spec's limits), its tokens and
    /// what online adaptation learns.
    pub fn memory(&self, tokens: usize) -> usize {
        let neural =
            |t: &Transformer| t.spec.kv_cache_bytes() + tokens * 2 + self.rates().map_or(0, |r| r.memory(t.spec.width));
        match self {
            Model::ContextMix => ContextMix::memory(tokens, TABLES),
            Model::Neural(t, _) => neural(t),
            Model::Mixed(t, _) => ContextMix::memory(tokens, TABLES_WITH_PRIOR) + neural(t),
        }
    }

    /// How many segments one worker codes in lockstep: the context mixer's tables are large
    /// and gain nothing from company; the transformer turns matrix-vector work into
    /// matrix-matrix work. Past 8 segments their key/value caches outgrow the CPU caches and
    /// decoding slows; below 4 each pass over the weights serves too few (`cargo bench --bench
    /// transformer`, batch 2 / 4 / 8 / 16: 4 x 256, K=4 3,563 / 4,554 / 4,613 / 4,398 tokens/s;
    /// the challenge preset 2,377 / 3,096 / 3,088 / 2,641). A network whose matrices outgrow
    /// the caches themselves gains from more (8 x 512, K=8: 495 at 8, 531 at 16, 503 at 32).
    pub fn batch_size(&self) -> usize {
        match self {
            Model::ContextMix => 1,
            Model::Neural(t, _) | Model::Mixed(t, _) if t.matrix_bytes() > 16 << 20 => 32,
            Model::Neural(..) | Model::Mixed(..) => 8,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retired_ids_name_the_release_that_reads_them() {
        let old = retired_weights()[0].0;
        let this = env!("CARGO_PKG_VERSION");
        // The network alone, or this release's mixer, with weights it no longer carries.
        for (id, name) in [(old, "neural"), (named_id(MIXED_ID, &old), "mixed")] {
            let why = Model::retired(&id, None).unwrap();
            assert!(
                why.contains(&format!("{name} predictor with the built-in weights of cvq 0.2 (model e31c4e8e")),
                "{why}"
            );
        }
        // A retired mixer with 0.2's weights: 0.2 read it, even though 0.3 kept that mixer.
        let why = Model::retired(&named_id(b"cvq mixed 3", &old), None).unwrap();
        assert_eq!(why, format!("archive was written by the mixed predictor of cvq 0.2, which cvq {this} no longer decodes: decompress it with cvq 0.2"));
        assert!(Model::retired(&Model::ContextMix.id(), None).is_none());
        assert!(Model::retired(&named_id(MIXED_ID, &[7; 32]), None).is_none());
    }

    #[test]
    fn earlier_compares_releases_by_number() {
        assert_eq!(earlier("0.3", "0.2"), "0.2");
        assert_eq!(earlier("0.9", "0.10"), "0.9");
        assert_eq!(earlier("0.1", ""), "0.1");
    }
}
