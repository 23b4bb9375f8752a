//! Entropy coding of segments' tokens: predictors supply each token's integer interval, the
//! range coder turns intervals into bytes. The coder never sees tokens; the predictor never
//! sees bytes. Several segments advance in lockstep so a batched predictor can compute all
//! their next tables in one step; each segment is still its own stream.

mod range;

pub use range::{RangeDecoder, RangeEncoder};

use crate::predict::{Batch, Interval, Predictor, TOTAL_BITS};
use anyhow::{ensure, Result};

/// Segments still coding at token `p`.
fn active(lengths: &[usize], p: usize, failed: &[bool]) -> Vec<usize> {
    (0..lengths.len()).filter(|&i| lengths[i] > p && !failed[i]).collect()
}

/// Code each segment with its fresh predictor in `batch`; one payload per segment.
// `p` is the position shared by every segment of the batch, not an index into one of them.
#[allow(clippy::needless_range_loop)]
pub fn encode(batch: &mut Batch, segments: &[&[u16]]) -> Vec<Vec<u8>> {
    let lengths: Vec<usize> = segments.iter().map(|s| s.len()).collect();
    let none_failed = vec![false; segments.len()];
    let mut encoders: Vec<RangeEncoder> = segments.iter().map(|_| RangeEncoder::new()).collect();
    for p in 0..lengths.iter().copied().max().unwrap_or(0) {
        let active = active(&lengths, p, &none_failed);
        batch.prepare(&active);
        for &i in &active {
            let (pred, t) = (batch.get(i), segments[i][p]);
            encoders[i].encode(pred.interval(t));
            pred.update(t);
        }
    }
    encoders.into_iter().map(RangeEncoder::finish).collect()
}

/// Decode `counts[i]` tokens from each payload with the same kind of fresh predictors as the
/// encoder. A damaged payload fails alone.
pub fn decode(batch: &mut Batch, payloads: &[&[u8]], counts: &[usize]) -> Vec<Result<Vec<u16>>> {
    let mut decoders: Vec<Result<RangeDecoder>> = payloads.iter().map(|p| RangeDecoder::new(p)).collect();
    let mut failed: Vec<bool> = decoders.iter().map(|d| d.is_err()).collect();
    // Grow as tokens decode, so a forged count costs no memory up front.
    let mut tokens: Vec<Vec<u16>> = counts.iter().map(|&n| Vec::with_capacity(n.min(1 << 20))).collect();
    for p in 0..counts.iter().copied().max().unwrap_or(0) {
        let active = active(counts, p, &failed);
        if active.is_empty() {
            break;
        }
        batch.prepare(&active);
        for &i in &active {
            let (pred, dec) = (batch.get(i), decoders[i].as_mut().expect("active decoders are valid"));
            let (t, iv) = pred.find(dec.target());
            if let Err(e) = dec.consume(iv) {
                decoders[i] = Err(e);
                failed[i] = true;
                continue;
            }
            pred.update(t);
            tokens[i].push(t);
        }
    }
    decoders
        .into_iter()
        .zip(tokens)
        .map(|(dec, toks)| {
            let dec = dec?;
            ensure!(dec.remaining() == 0, "{} payload bytes past the last token", dec.remaining());
            Ok(toks)
        })
        .collect()
}

/// -log2(freq / TOTAL): the bits a token of table frequency `freq` carries.
fn cost(freq: u32) -> f64 {
    TOTAL_BITS as f64 - f64::from(freq).log2()
}

/// The model's ideal code length of each token in bits: -log2(freq / total), what the coder
/// pays for it to within its overhead. For reporting only; nothing coded depends on it.
pub fn token_bits(tokens: &[u16], predictor: &mut dyn Predictor) -> Vec<f64> {
    tokens
        .iter()
        .map(|&t| {
            let Interval { freq, .. } = predictor.interval(t);
            predictor.update(t);
            cost(freq)
        })
        .collect()
}

/// The model's ideal code length of `tokens` in bits.
pub fn ideal_bits(tokens: &[u16], predictor: &mut dyn Predictor) -> f64 {
    token_bits(tokens, predictor).iter().sum()
}

/// Draw `count` tokens for each of `rngs.len()` segments from their fresh predictors in
/// `batch`, in lockstep. Each token comes from the coder's own integer table: a uniform target
/// in `[0, TOTAL)` from the segment's random source picks the token whose interval holds it,
/// exactly as a decoder would read it from random payload bytes, so a seed gives the same
/// tokens on every machine. Returns each segment's tokens and their information content in
/// bits (the sum of -log2 p of the sampled tokens).
pub fn sample(batch: &mut Batch, count: usize, rngs: &mut [impl FnMut() -> u64]) -> Vec<(Vec<u16>, f64)> {
    let all: Vec<usize> = (0..rngs.len()).collect();
    let mut out: Vec<(Vec<u16>, f64)> = rngs.iter().map(|_| (Vec::with_capacity(count), 0.0)).collect();
    for _ in 0..count {
        batch.prepare(&all);
        for (i, (rng, (tokens, bits))) in rngs.iter_mut().zip(&mut out).enumerate() {
            let pred = batch.get(i);
            let (t, Interval { freq, .. }) = pred.find((rng() >> (64 - TOTAL_BITS)) as u32);
            pred.update(t);
            tokens.push(t);
            *bits += cost(freq);
        }
    }
    out
}
