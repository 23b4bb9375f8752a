//! The predictor registry: every predictor an archive can name (`Model`), its id, and the
//! lockstep batches that code with it. Each predictor gives the coder's frequency tables
//! (`table`, the contract).

mod adapt;
mod context_mix;
mod logistic;
mod mixed;
pub mod neural;
mod table;
pub mod transformer;

pub use adapt::{Rates, MAX_WIDTH as MAX_ADAPTIVE_WIDTH};
pub use context_mix::{ContextMix, Tables, TABLES_WITH_PRIOR};
pub use mixed::Mixed;
pub use neural::Neural;
pub use table::{frequencies, FreqTable, Interval, Predictor, TOTAL, TOTAL_BITS};

use context_mix::TABLES;
use std::sync::Arc;
use transformer::Transformer;

/// Hashed with the weights' hash into the mixed model's id.
const MIXED_ID: &[u8] = b"cvq mixed 4";
/// Likewise for the predictors whose network learns while it codes, by `Learning`
/// (`Output`, `Network`); the version pins the update rule and its learning rates
/// (`Model::rates`, FORMAT.md section 3.4).
const NEURAL_ADAPTIVE_ID: [&[u8]; 2] = [b"cvq neural-adaptive 1", b"cvq neural-adaptive 2"];
const MIXED_ADAPTIVE_ID: [&[u8]; 2] = [b"cvq mixed-adaptive 2", b"cvq mixed-adaptive 3"];

/// What of the network keeps learning while a segment codes (`adapt`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Learning {
    Frozen,
    /// The output layer alone: cvq 0.3 to 0.6 wrote it; this release only reads it.
    Output,
    /// The output layer and the three input embeddings, through the integer backward pass
    /// (`transformer::backward`).
    Network,
}

impl Learning {
    /// Index into the adaptive predictors' ids.
    fn version(self) -> usize {
        usize::from(self == Learning::Network)
    }
}

/// A predictor that an earlier release wrote and this one only reads: ids are never retired.
/// Each differs from this release's context mixer or mixed model (with the same weights and
/// `network` learning) in its id and its context mixer's tables alone (FORMAT.md, section
/// 4.1). The adaptive predictors whose input embeddings stay (`Learning::Output`) need no
/// entry: they are this release's with that learning.
#[derive(Debug, PartialEq, Eq)]
pub struct Earlier {
    /// Hashed alone into the context mixer's id, before the weights' id into the others'.
    pub id: &'static str,
    /// The release that introduced it.
    pub since: &'static str,
    /// The network's part: `None` for the context mixer alone, else how it learns.
    pub network: Option<Learning>,
    pub tables: Tables,
}

/// Every predictor of an earlier release that this one no longer writes, oldest first: id,
/// the release that introduced it, its network's learning, its tables' largest size (bits of
/// counters per model) and slots per bucket.
pub const EARLIER: [Earlier; 4] = [
    Earlier::new("cvq context-mix 1", "0.1", None, 22, 1),
    Earlier::new("cvq mixed 2", "0.1", Some(Learning::Frozen), 21, 1),
    Earlier::new("cvq mixed 3", "0.2", Some(Learning::Frozen), 19, 2),
    Earlier::new("cvq mixed-adaptive 1", "0.3", Some(Learning::Output), 19, 2),
];

impl Earlier {
    const fn new(
        id: &'static str,
        since: &'static str,
        network: Option<Learning>,
        max_bits: u32,
        slots: usize,
    ) -> Self {
        Earlier { id, since, network, tables: Tables { max_bits, slots } }
    }
}

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
    /// An earlier release's predictor, with its weights where it has a network.
    Earlier(&'static Earlier, Option<Arc<Transformer>>),
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Model::ContextMix => write!(f, "{}", self.name()),
            Model::Neural(t, _) => write!(f, "{} {:?} (weights {})", self.name(), t.spec, hex(&t.hash[..8])),
            Model::Mixed(t, _) => {
                write!(f, "{}: context-mix + neural {:?} (weights {})", self.name(), t.spec, hex(&t.hash[..8]))
            }
            Model::Earlier(e, _) => write!(f, "{:?} of cvq {}", self.base(), e.since),
        }
    }
}

/// The id of a predictor built on weights: SHA-256 of its name and version, then the weights' id.
fn named_id(name: &[u8], weights: &[u8; 32]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::new().chain_update(name).chain_update(weights).finalize().into()
}

/// Weights `t` if a network that learns as `l` can take them (the adaptive predictors take
/// networks up to `adapt::MAX_WIDTH`).
fn fits(t: Option<&Arc<Transformer>>, l: Learning) -> Option<&Arc<Transformer>> {
    t.filter(|t| l == Learning::Frozen || t.spec.width <= adapt::MAX_WIDTH)
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
            Model::Neural(t, l) => named_id(NEURAL_ADAPTIVE_ID[l.version()], &t.hash),
            Model::Mixed(t, Learning::Frozen) => named_id(MIXED_ID, &t.hash),
            Model::Mixed(t, l) => named_id(MIXED_ADAPTIVE_ID[l.version()], &t.hash),
            Model::Earlier(e, None) => Sha256::digest(e.id).into(),
            Model::Earlier(e, Some(t)) => named_id(e.id.as_bytes(), &t.hash),
        }
    }

    /// Every predictor this release writes, of weights `t` (or the context mixer alone).
    pub fn all(t: Option<&Arc<Transformer>>) -> Vec<Model> {
        let mut all = vec![Model::ContextMix];
        for l in [Learning::Frozen, Learning::Network] {
            all.extend(fits(t, l).map(|t| Model::Neural(Arc::clone(t), l)));
            all.extend(fits(t, l).map(|t| Model::Mixed(Arc::clone(t), l)));
        }
        all
    }

    /// Every predictor an archive may name, of weights `t` (or the context mixers alone):
    /// `all`'s and the earlier releases' (ids are never retired).
    pub fn readable(t: Option<&Arc<Transformer>>) -> Vec<Model> {
        let mut readable = Model::all(t);
        let l = Learning::Output;
        readable.extend(fits(t, l).map(|t| Model::Neural(Arc::clone(t), l)));
        readable.extend(fits(t, l).map(|t| Model::Mixed(Arc::clone(t), l)));
        for e in &EARLIER {
            match e.network {
                None => readable.push(Model::Earlier(e, None)),
                Some(l) => readable.extend(fits(t, l).map(|t| Model::Earlier(e, Some(Arc::clone(t))))),
            }
        }
        readable
    }

    /// This release's predictor that `self` differs from in its id and tables alone.
    fn base(&self) -> Model {
        match self {
            Model::Earlier(e, t) => match (e.network, t) {
                (Some(l), Some(t)) => Model::Mixed(Arc::clone(t), l),
                _ => Model::ContextMix,
            },
            m => m.clone(),
        }
    }

    /// The context mixer's tables (the network alone has none; these are never used).
    fn tables(&self) -> Tables {
        match self {
            Model::ContextMix | Model::Neural(..) => TABLES,
            Model::Mixed(..) => TABLES_WITH_PRIOR,
            Model::Earlier(e, _) => e.tables,
        }
    }

    /// The release that introduced the predictor, if it is not one this release writes.
    pub fn since(&self) -> Option<&'static str> {
        match self {
            Model::Earlier(e, _) => Some(e.since),
            Model::Neural(_, Learning::Output) => Some("0.3"),
            Model::Mixed(_, Learning::Output) => Some("0.4"),
            _ => None,
        }
    }

    /// The predictor's short name, as `--predictor` spells it.
    pub fn name(&self) -> &'static str {
        match self {
            Model::ContextMix => "context-mix",
            Model::Neural(_, Learning::Frozen) => "neural",
            Model::Neural(..) => "neural-adaptive",
            Model::Mixed(_, Learning::Frozen) => "mixed",
            Model::Mixed(..) => "mixed-adaptive",
            Model::Earlier(..) => self.base().name(),
        }
    }

    /// The weights of the neural part, if any.
    pub fn transformer(&self) -> Option<&Arc<Transformer>> {
        match self {
            Model::ContextMix => None,
            Model::Neural(t, _) | Model::Mixed(t, _) => Some(t),
            Model::Earlier(_, t) => t.as_ref(),
        }
    }

    /// Fresh predictors for segments of the given token counts, to be advanced in lockstep.
    pub fn batch(&self, sizes: &[usize]) -> Batch {
        let (base, tables) = (self.base(), self.tables());
        let rates = base.rates();
        match &base {
            Model::Neural(t, _) => Batch::Neural(sizes.iter().map(|&n| Neural::new(Arc::clone(t), n, rates)).collect()),
            Model::Mixed(t, _) => Batch::Mixed(
                sizes.iter().map(|&n| Mixed::new(Neural::new(Arc::clone(t), n, rates), n, tables)).collect(),
            ),
            _ => Batch::ContextMix(sizes.iter().map(|&n| ContextMix::new(n, tables)).collect()),
        }
    }

    /// How the network learns while it codes: for the network alone, its output matrix and
    /// bias; in the mix, the matrix alone (the context mixer's counts already learn what the
    /// bias would, and the two together code worse: README, "Online adaptation"); with
    /// `Learning::Network`, the input embeddings too.
    fn rates(&self) -> Option<Rates> {
        let (l, matrix, bias) = match self {
            Model::Neural(_, l) => (l, 9, Some(6)),
            Model::Mixed(_, l) => (l, 11, None),
            _ => return None,
        };
        let inputs = (*l == Learning::Network).then_some(6);
        (*l != Learning::Frozen).then_some(Rates { matrix: Some(matrix), bias, inputs })
    }

    /// Bytes a segment of `tokens` tokens holds while it codes: the context mixer's counter
    /// tables, the transformer's key/value cache (2.2 GB at the spec's limits), its tokens and
    /// what online adaptation learns.
    pub fn memory(&self, tokens: usize) -> usize {
        let base = self.base();
        let neural =
            |t: &Transformer| t.spec.kv_cache_bytes() + tokens * 2 + base.rates().map_or(0, |r| r.memory(t.spec.width));
        let counters = ContextMix::memory(tokens, self.tables());
        match &base {
            Model::Neural(t, _) => neural(t),
            Model::Mixed(t, _) => counters + neural(t),
            _ => counters,
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
            Model::ContextMix | Model::Earlier(_, None) => 1,
            Model::Neural(t, _) | Model::Mixed(t, _) | Model::Earlier(_, Some(t)) if t.matrix_bytes() > 16 << 20 => 32,
            Model::Neural(..) | Model::Mixed(..) | Model::Earlier(..) => 8,
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
