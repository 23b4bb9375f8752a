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

/// The model's ideal code length of each token in bits: -log2(freq / total), what the coder
/// pays for it to within its overhead. For reporting only; nothing coded depends on it.
pub fn token_bits(tokens: &[u16], predictor: &mut dyn Predictor) -> Vec<f64> {
    tokens
        .iter()
        .map(|&t| {
            let Interval { freq, .. } = predictor.interval(t);
            predictor.update(t);
            TOTAL_BITS as f64 - (freq as f64).log2()
        })
        .collect()
}

/// The model's ideal code length of `tokens` in bits.
pub fn ideal_bits(tokens: &[u16], predictor: &mut dyn Predictor) -> f64 {
    token_bits(tokens, predictor).iter().sum()
}
