//! A byte-oriented range coder with a 64-bit range and 24-bit frequency totals.
//!
//! The encoder follows LZMA's carry scheme (a cached byte plus a run of pending 0xFF bytes)
//! widened to 64 bits: the range stays in [2^56, 2^64), so `range >> 24` is at least 2^32
//! and the loss from integer division is below 2^-32 of a bit per symbol. The exact byte
//! layout is specified in FORMAT.md.

use crate::predict::{Interval, TOTAL_BITS};
use anyhow::{bail, Result};

const TOP: u64 = 1 << 56;

pub struct RangeEncoder {
    /// Low end of the interval; bit 64 holds a carry not yet applied to the output.
    low: u128,
    range: u64,
    /// Last byte not yet written (None before the first shift: that byte is always 0 and dropped).
    cache: Option<u8>,
    /// Number of 0xFF bytes waiting behind `cache` for a possible carry.
    pending: u64,
    out: Vec<u8>,
}

impl Default for RangeEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl RangeEncoder {
    pub fn new() -> Self {
        RangeEncoder { low: 0, range: u64::MAX, cache: None, pending: 0, out: Vec::new() }
    }

    pub fn encode(&mut self, iv: Interval) {
        debug_assert!(iv.freq > 0 && iv.start as u64 + iv.freq as u64 <= 1 << TOTAL_BITS);
        let r = self.range >> TOTAL_BITS;
        self.low += u128::from(r * u64::from(iv.start));
        self.range = r * u64::from(iv.freq);
        while self.range < TOP {
            self.shift_low();
            self.range <<= 8;
        }
    }

    fn shift_low(&mut self) {
        const MASK: u128 = (1 << 64) - 1;
        if self.low < 0xFF << 56 || self.low > MASK {
            let carry = (self.low >> 64) as u8;
            if let Some(c) = self.cache {
                self.out.push(c.wrapping_add(carry));
            }
            for _ in 0..self.pending {
                self.out.push(0xFFu8.wrapping_add(carry));
            }
            self.pending = 0;
            self.cache = Some((self.low >> 56) as u8);
        } else {
            self.pending += 1;
        }
        self.low = (self.low << 8) & MASK;
    }

    /// Flush the whole of `low`; the decoder reads exactly the bytes written.
    pub fn finish(mut self) -> Vec<u8> {
        for _ in 0..9 {
            self.shift_low();
        }
        self.out
    }
}

pub struct RangeDecoder<'a> {
    code: u64,
    range: u64,
    /// `range >> TOTAL_BITS` for the symbol being decoded.
    step: u64,
    input: &'a [u8],
}

impl<'a> RangeDecoder<'a> {
    pub fn new(input: &'a [u8]) -> Result<Self> {
        if input.len() < 8 {
            bail!("payload of {} bytes is shorter than the coder's 8-byte start", input.len());
        }
        let (head, rest) = input.split_at(8);
        let code = u64::from_be_bytes(head.try_into().unwrap());
        Ok(RangeDecoder { code, range: u64::MAX, step: 0, input: rest })
    }

    /// The position, in [0, 2^24), that selects the next symbol.
    pub fn target(&mut self) -> u32 {
        self.step = self.range >> TOTAL_BITS;
        // A valid stream keeps code < range; clamp so corrupt input stays in bounds.
        (self.code / self.step).min((1 << TOTAL_BITS) - 1) as u32
    }

    /// Remove the symbol found from `target()`'s position, whose interval is `iv`.
    pub fn consume(&mut self, iv: Interval) -> Result<()> {
        self.code -= self.step * u64::from(iv.start);
        self.range = self.step * u64::from(iv.freq);
        while self.range < TOP {
            let Some((&b, rest)) = self.input.split_first() else {
                bail!("payload ends before the last token");
            };
            self.input = rest;
            self.code = (self.code << 8) | u64::from(b);
            self.range <<= 8;
        }
        Ok(())
    }

    /// Bytes of payload not consumed; a valid stream leaves none.
    pub fn remaining(&self) -> usize {
        self.input.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fixed skewed distribution over 4 symbols, total 2^24.
    fn iv(s: u16) -> Interval {
        let freqs = [1u32, (1 << 24) - 3 - 5000, 5000, 2];
        let start = freqs[..s as usize].iter().sum();
        Interval { start, freq: freqs[s as usize] }
    }

    fn find(target: u32) -> (u16, Interval) {
        (0..4).map(|s| (s, iv(s))).find(|(_, i)| target < i.start + i.freq).unwrap()
    }

    #[test]
    fn round_trips_and_reads_every_byte() {
        // Long runs of the likely symbol exercise the carry path and pending 0xFF bytes.
        let mut syms = vec![];
        let mut x = 12345u32;
        for _ in 0..200_000 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            syms.push(match x >> 22 {
                0 => 0,
                1..=5 => 2,
                6 => 3,
                _ => 1,
            });
        }
        let mut enc = RangeEncoder::new();
        syms.iter().for_each(|&s| enc.encode(iv(s)));
        let bytes = enc.finish();
        let mut dec = RangeDecoder::new(&bytes).unwrap();
        for &s in &syms {
            let (got, i) = find(dec.target());
            assert_eq!(got, s);
            dec.consume(i).unwrap();
        }
        assert_eq!(dec.remaining(), 0);
    }

    #[test]
    fn truncated_payload_is_an_error() {
        let mut enc = RangeEncoder::new();
        (0..1000).for_each(|i| enc.encode(iv((i % 4) as u16)));
        let bytes = enc.finish();
        let mut dec = RangeDecoder::new(&bytes[..bytes.len() - 4]).unwrap();
        let failed = (0..1000).any(|_| {
            let (_, i) = find(dec.target());
            dec.consume(i).is_err()
        });
        assert!(failed);
    }
}
