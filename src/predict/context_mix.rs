//! Adaptive context mixing (PAQ-style), in integer arithmetic.
//!
//! Each token is coded as ten binary decisions, most significant bit first: the 1023 inner
//! nodes of a binary tree over the 1024 values. For every decision, each context model looks
//! up an adaptive bit probability under its context (neighbouring tokens in this and the
//! previous frames), and a logistic mixer (one weight set per tree depth) combines them. The
//! frequency table is the tree's leaves: each node splits its integer share of the total
//! between its two subtrees by the mixed probability, keeping at least one unit per leaf.
//!
//! A prior table (the neural predictor's) can join the mix as one more input: at each node,
//! the logit of its split of the prior's mass. Without a prior that input is zero, which
//! leaves the dot product and every weight update as they were: the context mixer alone
//! codes the same bits either way.

use super::logistic::{squash, Stretch};
use super::table::{FreqTable, Interval, Predictor, TOTAL};
use crate::data::TOKENS_PER_FRAME;

/// Hashed into the archive's model id: change it whenever the bitstream would change.
pub const ID: &[u8] = b"cvq context-mix 2";

const DEPTH: usize = 10;
/// The tree is cut into two levels of 5 decisions; each (context, level, prefix) owns a slot
/// of 32 counters, so one token touches two cache lines per model.
const SLOT_BITS: u32 = 5;
const LEVELS: usize = DEPTH / SLOT_BITS as usize;
const N_MODELS: usize = 14;
/// The context models, a bias and the prior.
const N_INPUTS: usize = N_MODELS + 2;
const BIAS: usize = N_MODELS;
const PRIOR: usize = N_MODELS + 1;
/// Value standing for "no token here" (outside the frame or before the first frame).
const NONE: u64 = 1024;
/// Counters adapt at rate 1/(n + 1.5) until n reaches this, then stay at that rate
/// (tuned on the clip: 12-30 code within 0.01 bits/token of each other).
const COUNT_LIMIT: u32 = 16;
/// Mixer learning rate: weights move by input * error * MIX_RATE / 2^16.
const MIX_RATE: i32 = 8;
/// Initial mixer weight (1/8 in 16.16 fixed point): the models start out trusted a little.
const INITIAL_WEIGHT: i32 = 1 << 13;
/// The prior starts out trusted most (weight 0.75): a trained network knows more than empty
/// counters (0.5-0.75 code alike on the clip's held-out frames; 1.0 and 2.0 worse).
const INITIAL_PRIOR_WEIGHT: i32 = 3 << 14;
/// Weights are kept within +-256.0, far beyond any useful value, so no input can overflow them.
const MAX_WEIGHT: i32 = 1 << 24;
/// What of the context mixer's bitstream changed between releases: the largest counter table
/// per model, in bits of entries, and the slots per bucket. Predictor ids are never retired,
/// so every release's tables stay selectable (FORMAT.md, sections 3.1, 3.3 and 4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tables {
    pub max_bits: u32,
    /// 1 (cvq 0.1) or 2: each context may take either slot of its bucket.
    pub slots: usize,
}

/// The context mixer alone: 16 MiB of u32 per model at most. With two-slot buckets, on the
/// clip: 2^22 5.8620 bits/token, 2^21 5.8876, 2^20 5.9571 (one slot per bucket, as cvq 0.1
/// had it: 2^22 5.9439).
pub const TABLES: Tables = Tables { max_bits: 22, slots: 2 };
/// With a prior the counters matter less and eight segments code in lockstep, so the tables
/// are 16x smaller: 14.7 MiB a segment. Mixed, two-slot buckets, on the clip / its frames
/// 900-1199 alone (cvq 0.3's weights): 2^19 4.4423 / 4.7431, 2^18 4.4459 / 4.7452 (+0.08% /
/// +0.04% for half the memory), 2^17 4.4510 / 4.7523 (+0.20% / +0.19%).
pub const TABLES_WITH_PRIOR: Tables = Tables { max_bits: 18, slots: 2 };

/// One counter: a 22-bit probability of a 1 bit and a 10-bit count of updates.
type Counter = u32;
const HALF: Counter = 1 << 31;

pub struct ContextMix {
    history: Vec<u16>,
    stretch: Stretch,
    /// Counter tables of all models, `1 << table_bits` counters each.
    counters: Vec<Counter>,
    table_bits: u32,
    /// Slots per bucket.
    bucket_slots: usize,
    /// Mixer weights (16.16 fixed point), one set per tree depth.
    weights: [[i32; N_INPUTS]; DEPTH],
    /// Context keys of the next token (valid while `keys_for == history.len()`).
    keys: [u64; N_MODELS],
    keys_for: usize,
    /// The decisions computed for `path_token` by the last walk, kept for `update`.
    path: [Decision; DEPTH],
    path_token: Option<u16>,
    /// The slots of the current token at each level (level 1 depends on the path).
    slots: [[Slot; N_MODELS]; LEVELS],
}

/// A slot of `1 << SLOT_BITS` counters; its first entry holds the owning context's check.
#[derive(Clone, Copy, Default)]
struct Slot {
    base: usize,
    check: u32,
}

#[derive(Clone, Copy, Default)]
struct Decision {
    inputs: [i32; N_INPUTS],
    /// Mixed probability of a 1 bit, 12-bit.
    p: i32,
    counters: [usize; N_MODELS],
}

impl ContextMix {
    /// A fresh model for a segment of `tokens` tokens (`TABLES`, or `TABLES_WITH_PRIOR` for
    /// one that will be given a prior).
    pub fn new(tokens: usize, tables: Tables) -> Self {
        let table_bits = table_bits(tokens, tables);
        ContextMix {
            history: Vec::with_capacity(tokens),
            stretch: Stretch::new(),
            // Zeroed memory is mapped lazily: untouched parts of the tables cost nothing.
            counters: vec![0; N_MODELS << table_bits],
            table_bits,
            bucket_slots: tables.slots,
            weights: [std::array::from_fn(|i| if i == PRIOR { INITIAL_PRIOR_WEIGHT } else { INITIAL_WEIGHT }); DEPTH],
            keys: [0; N_MODELS],
            keys_for: usize::MAX,
            path: [Decision::default(); DEPTH],
            path_token: None,
            slots: [[Slot::default(); N_MODELS]; LEVELS],
        }
    }

    /// Bytes of the counter tables for a segment of `tokens` tokens.
    pub fn memory(tokens: usize, tables: Tables) -> usize {
        (N_MODELS << table_bits(tokens, tables)) * std::mem::size_of::<Counter>()
    }

    /// Context keys for the next token: up to five neighbour values packed 11 bits apart,
    /// with the model's index in the low bits so that models never share a key.
    fn contexts(&self) -> [u64; N_MODELS] {
        let h = &self.history;
        let i = h.len();
        let k = i % TOKENS_PER_FRAME;
        let (r, c) = ((k / 16) as isize, (k % 16) as isize);
        // Token `back` frames before this one at row r+dr, column c+dc.
        let at = |back: usize, dr: isize, dc: isize| -> u64 {
            let (rr, cc) = (r + dr, c + dc);
            let inside = (0..8).contains(&rr) && (0..16).contains(&cc);
            let base = (i - k) as isize - (back * TOKENS_PER_FRAME) as isize;
            if !inside || base < 0 {
                return NONE;
            }
            u64::from(h[(base + rr * 16 + cc) as usize])
        };
        let p = |dr, dc| at(1, dr, dc);
        let (left, up) = (at(0, 0, -1), at(0, -1, 0));
        let (up_left, up_right) = (at(0, -1, -1), at(0, -1, 1));
        let same = p(0, 0);
        let pos = k as u64;
        let keys: [&[u64]; N_MODELS] = [
            &[pos],
            &[same],
            &[same, pos],
            &[p(0, -1), same, p(0, 1)],
            &[p(-1, 0), same, p(1, 0)],
            &[same, p(-1, 0), p(1, 0), p(0, -1), p(0, 1)],
            &[left, up],
            &[same, left],
            &[same, up],
            &[same, left, up],
            &[same, at(2, 0, 0)],
            &[left, up, up_left, up_right],
            &[left],
            &[up],
        ];
        let mut out = [0u64; N_MODELS];
        for (m, vals) in keys.iter().enumerate() {
            out[m] = vals.iter().fold(m as u64, |acc, &v| (acc << 11) | v);
        }
        out
    }

    /// Model `m`'s counter slot for context `key` at the tree level entered at `node`: one of
    /// a bucket of two, the one the context owns or else the less used one (by the count of
    /// its root counter), which `learn` then claims; or, with one slot per bucket, that one.
    fn slot(&self, m: usize, key: u64, node: usize) -> Slot {
        let h = mix64(key ^ mix64(node as u64 + ((m as u64) << 16)));
        let index = (h >> (64 - (self.table_bits - SLOT_BITS))) as usize & !(self.bucket_slots - 1);
        let check = h as u32 | 1;
        let bases = [0, 1].map(|w| (m << self.table_bits) | ((index | w) << SLOT_BITS));
        let bases = &bases[..self.bucket_slots];
        let base = match bases.iter().find(|&&b| self.counters[b] == check) {
            Some(&b) => b,
            None => *bases.iter().min_by_key(|&&b| self.counters[b + 1] & 1023).expect("a slot at least"),
        };
        Slot { base, check }
    }

    /// Walk the tree from the root, choosing each bit with `choose(start_of_one_branch, depth)`;
    /// returns the leaf reached and its interval, and records the decisions in `path`.
    /// Reads the model only: `learn` is the one place that learns.
    fn walk(&mut self, prior: Option<&FreqTable>, choose: impl Fn(u32, usize) -> bool) -> (u16, Interval) {
        if self.keys_for != self.history.len() {
            self.keys = self.contexts();
            self.keys_for = self.history.len();
        }
        let (mut start, mut total) = (0u32, TOTAL);
        let mut node = 1usize;
        for d in 0..DEPTH {
            let (level, j) = (d / SLOT_BITS as usize, d % SLOT_BITS as usize);
            if j == 0 {
                // Level 0 slots hang off the context alone, level 1 slots off the top 5 bits too.
                for m in 0..N_MODELS {
                    self.slots[level][m] = self.slot(m, self.keys[m], node);
                }
            }
            let local = (node & ((1 << j) - 1)) | (1 << j);
            let dec = &mut self.path[d];
            for (m, slot) in self.slots[level].iter().enumerate() {
                dec.counters[m] = slot.base + local;
                // A slot holding another context's counters reads as fresh.
                let owned = self.counters[slot.base] == slot.check;
                let p12 = if owned { self.counters[dec.counters[m]] >> 20 } else { 2048 };
                dec.inputs[m] = self.stretch.get(p12);
            }
            dec.inputs[BIAS] = 256;
            dec.inputs[PRIOR] = prior.map_or(0, |t| self.stretch.get(split(t, d, node)));
            let dot: i64 = dec.inputs.iter().zip(&self.weights[d]).map(|(&x, &w)| i64::from(x) * i64::from(w)).sum();
            dec.p = squash((dot >> 16) as i32);
            // Split `total` between the 0 and 1 subtrees, at least one unit per leaf.
            let half_leaves = 512u32 >> d;
            let ones = ((u64::from(total) * dec.p as u64) >> 12) as u32;
            let ones = ones.clamp(half_leaves, total - half_leaves);
            let zeros = total - ones;
            let bit = choose(start + zeros, d);
            if bit {
                start += zeros;
                total = ones;
            } else {
                total = zeros;
            }
            node = node * 2 + bit as usize;
        }
        let token = (node - 1024) as u16;
        self.path_token = Some(token);
        (token, Interval { start, freq: total })
    }
}

/// Bits of entries per model's counter table: the tables grow with the segment, so small
/// segments stay cheap (the size is part of the bitstream: see FORMAT.md).
fn table_bits(tokens: usize, tables: Tables) -> u32 {
    (usize::BITS - tokens.leading_zeros() + 4).clamp(12, tables.max_bits)
}

/// The 12-bit probability that the prior puts on the 1 branch of `node` at depth `d`.
fn split(prior: &FreqTable, d: usize, node: usize) -> u32 {
    let width = 1024 >> d;
    let lo = (node - (1 << d)) * width;
    let (zeros, ones) = (prior.mass(lo, lo + width / 2), prior.mass(lo + width / 2, lo + width));
    ((u64::from(ones) << 12) / u64::from(zeros + ones)).clamp(1, 4095) as u32
}

impl ContextMix {
    /// The interval of `token`, with `prior` in the mix.
    pub fn interval_with(&mut self, prior: Option<&FreqTable>, token: u16) -> Interval {
        self.walk(prior, |_, d| token >> (9 - d) & 1 == 1).1
    }

    /// The token whose interval holds `target`, with `prior` in the mix.
    pub fn find_with(&mut self, prior: Option<&FreqTable>, target: u32) -> (u16, Interval) {
        self.walk(prior, |one_start, _| target >= one_start)
    }

    /// Learn `token`; `prior` must be the one its interval was computed with.
    pub fn learn(&mut self, prior: Option<&FreqTable>, token: u16) {
        if self.path_token != Some(token) {
            self.interval_with(prior, token);
        }
        // Claim slots owned by other contexts (or never used) for this token's contexts.
        for slot in self.slots.iter().flatten() {
            if self.counters[slot.base] != slot.check {
                self.counters[slot.base] = slot.check;
                self.counters[slot.base + 1..slot.base + (1 << SLOT_BITS)].fill(HALF);
            }
        }
        for d in 0..DEPTH {
            let bit = i32::from(token >> (9 - d) & 1);
            let dec = &self.path[d];
            for &c in &dec.counters {
                self.counters[c] = learn_counter(self.counters[c], bit);
            }
            let err = ((bit << 12) - dec.p) * MIX_RATE;
            for (w, &x) in self.weights[d].iter_mut().zip(&dec.inputs) {
                *w = (*w + ((x * err + (1 << 15)) >> 16)).clamp(-MAX_WEIGHT, MAX_WEIGHT);
            }
        }
        self.history.push(token);
        self.path_token = None;
    }
}

impl Predictor for ContextMix {
    fn interval(&mut self, token: u16) -> Interval {
        self.interval_with(None, token)
    }

    fn find(&mut self, target: u32) -> (u16, Interval) {
        self.find_with(None, target)
    }

    fn update(&mut self, token: u16) {
        self.learn(None, token)
    }
}

/// Move a counter's probability toward `bit` by 1/(n + 1.5) of the gap.
fn learn_counter(c: Counter, bit: i32) -> Counter {
    let n = c & 1023;
    let p = (c >> 10) as i64;
    let target = if bit == 1 { (1 << 22) - 1 } else { 0 };
    let p = p + (target - p) * 2 / (2 * n as i64 + 3);
    ((p as u32) << 10) | (n + 1).min(COUNT_LIMIT)
}

/// A 64-bit finaliser (splitmix64): spreads keys over the table.
fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predict::table::frequencies;

    fn tokens(n: usize) -> Vec<u16> {
        (0..n).map(|i| ((i * 37 + i / 128 * 11) % 1024) as u16).collect()
    }

    #[test]
    fn tables_are_valid_and_agree_with_find() {
        let toks = tokens(300);
        let mut cm = ContextMix::new(toks.len(), TABLES);
        for (i, &t) in toks.iter().enumerate() {
            if i % 50 == 0 || i == 299 {
                let f = frequencies(&mut cm);
                assert!(f.iter().all(|&x| x >= 1));
                assert_eq!(f.iter().map(|&x| x as u64).sum::<u64>(), TOTAL as u64);
                // `find` at the first, last and a middle unit of a token's interval returns it.
                for (s, &freq) in f.iter().enumerate().step_by(31) {
                    let start = f[..s].iter().sum::<u32>();
                    for target in [start, start + freq / 2, start + freq - 1] {
                        assert_eq!(cm.find(target), (s as u16, Interval { start, freq }));
                    }
                }
            }
            cm.update(t);
        }
    }

    #[test]
    fn querying_other_tokens_does_not_change_what_is_learned() {
        let toks = tokens(500);
        let (mut plain, mut probed) = (ContextMix::new(500, TABLES), ContextMix::new(500, TABLES));
        for &t in &toks {
            frequencies(&mut probed);
            assert_eq!(plain.interval(t), probed.interval(t));
            plain.update(t);
            probed.update(t);
        }
    }

    #[test]
    fn learns_a_repeating_frame() {
        let frame: Vec<u16> = (0..128).map(|i| (i * 8) as u16).collect();
        let toks: Vec<u16> = frame.iter().cycle().take(128 * 20).copied().collect();
        let mut cm = ContextMix::new(toks.len(), TABLES);
        let bits = crate::code::ideal_bits(&toks, &mut cm);
        assert!(bits / (toks.len() as f64) < 1.5, "{} bits/token", bits / toks.len() as f64);
    }
}
