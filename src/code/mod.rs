//! Entropy coding of a segment's tokens: a predictor supplies each token's integer interval,
//! the range coder turns intervals into bytes. The coder never sees tokens; the predictor
//! never sees bytes.

mod range;

pub use range::{RangeDecoder, RangeEncoder};

use crate::predict::{Interval, Predictor, TOTAL_BITS};
use anyhow::{ensure, Result};

/// Code `tokens` with `predictor` (fresh, at the start of the segment).
pub fn encode_tokens(tokens: &[u16], predictor: &mut dyn Predictor) -> Vec<u8> {
    let mut enc = RangeEncoder::new();
    for &t in tokens {
        enc.encode(predictor.interval(t));
        predictor.update(t);
    }
    enc.finish()
}

/// Decode `count` tokens from `payload` with the same kind of fresh predictor as the encoder.
pub fn decode_tokens(
    payload: &[u8],
    count: usize,
    predictor: &mut dyn Predictor,
) -> Result<Vec<u16>> {
    let mut dec = RangeDecoder::new(payload)?;
    // Grow as tokens decode, so a forged count costs no memory up front.
    let mut tokens = Vec::with_capacity(count.min(1 << 20));
    for _ in 0..count {
        let (t, iv) = predictor.find(dec.target());
        dec.consume(iv)?;
        predictor.update(t);
        tokens.push(t);
    }
    ensure!(
        dec.remaining() == 0,
        "{} payload bytes past the last token",
        dec.remaining()
    );
    Ok(tokens)
}

/// The model's ideal code length of `tokens` in bits: the sum of -log2(freq / total).
/// For reporting only; nothing coded depends on it.
pub fn ideal_bits(tokens: &[u16], predictor: &mut dyn Predictor) -> f64 {
    tokens
        .iter()
        .map(|&t| {
            let Interval { freq, .. } = predictor.interval(t);
            predictor.update(t);
            TOTAL_BITS as f64 - (freq as f64).log2()
        })
        .sum()
}
