//! The integer inner loops. Each has one portable definition; on x86-64 a version with
//! AVX2 intrinsics and, for the matrix product and attention, one with AVX-512 VNNI (and for
//! the matrix product AVX-VNNI), all `vpdpwssd` where the CPU has it, chosen at run time; on
//! arm64 NEON versions of the matrix product and attention. Integer sums do not depend on
//! their order, so every version gives the same integers (tests check each one against the
//! portable code; `scripts/cross-check.sh` runs them on arm64 too).
//!
//! The operands are laid out so that the multiply-adds accumulate in lanes, one output each,
//! instead of in dot products that each end in a horizontal sum: the matrix product's
//! weights in blocks of 16 rows with columns in pairs (`Packed`), the attention cache's keys
//! by pairs of dims and its values by pairs of slots (`scores`, `weighted_sum`).
//!
//! Bounds: activations |a| <= 2047, weights -128..=127, rows of at most 8192 and heads of at
//! most 512 (`model::spec`'s limits, enforced when weights load): no i32 sum overflows.
//!
//! Safety: each public function is safe for any arguments. The SIMD versions are private;
//! their public entry points check, once per call, what their raw loads rely on.

use super::fixed::{shift_round, Divider, Tables};

#[inline(always)]
fn dot_generic(a: &[i16], b: &[i16]) -> i32 {
    a.iter().zip(b).map(|(&x, &y)| i32::from(x) * i32::from(y)).fold(0, |s, v| s.wrapping_add(v))
}

/// `out[r * w_rows + j] = dot(x[r], w[j])` for every row r of `x` and row j of `w`.
#[inline(always)]
fn matmul_generic(x: &[i16], cols: usize, w: &[i16], out: &mut [i32]) {
    let rows = w.len() / cols;
    for (j, wj) in w.chunks_exact(cols).enumerate() {
        for (r, xr) in x.chunks_exact(cols).enumerate() {
            out[r * rows + j] = dot_generic(xr, wj);
        }
    }
}

/// Int8 weights laid out for the matrix product: rows in blocks of 16 (the last padded with
/// zero rows), within a block the columns in pairs, `[blocks, cols / 2, 16, 2]`. One vector
/// load holds a pair of columns of 16 rows (8 for AVX2), so the product multiplies it by a
/// broadcast pair of one input row and accumulates 16 outputs in lanes: no horizontal sums,
/// and half the bytes of i16 weights to stream.
pub struct Packed {
    rows: usize,
    cols: usize,
    w: Vec<i8>,
}

impl Packed {
    /// `w` holds `rows` rows of `cols` (an even count: the model's widths are multiples of 16).
    pub fn new(w: &[i8], rows: usize, cols: usize) -> Packed {
        let fits = cols > 0 && cols.is_multiple_of(2) && w.len() == rows * cols;
        assert!(fits, "packed matrix: {} weights are not {rows} rows of {cols} (even, nonzero) columns", w.len());
        let mut packed = vec![0i8; rows.div_ceil(16) * 16 * cols];
        for (j, row) in w.chunks_exact(cols).enumerate() {
            for (c, &v) in row.iter().enumerate() {
                packed[Packed::index(cols, j, c)] = v;
            }
        }
        Packed { rows, cols, w: packed }
    }

    fn index(cols: usize, row: usize, col: usize) -> usize {
        (row / 16 * (cols / 2) + col / 2) * 32 + row % 16 * 2 + col % 2
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Bytes the product streams through.
    pub fn bytes(&self) -> usize {
        self.w.len()
    }
}

/// `out[r * rows + j] = dot(x[r], row j of m)` for every row r of `x`.
#[inline(always)]
fn matmul_packed_generic(x: &[i16], m: &Packed, out: &mut [i32]) {
    for (xr, o) in x.chunks_exact(m.cols).zip(out.chunks_exact_mut(m.rows)) {
        for (j, o) in o.iter_mut().enumerate() {
            *o = xr.iter().enumerate().fold(0i32, |sum, (c, &v)| {
                sum.wrapping_add(i32::from(v) * i32::from(m.w[Packed::index(m.cols, j, c)]))
            });
        }
    }
}

/// `out[s] = q . key(start + s)`: attention scores of one head over slots `start..`, its keys
/// laid out `[dims / 2, window, 2]` (dims padded to an even count, `q` likewise): dims 2i and
/// 2i + 1 of consecutive slots side by side, so one vector load holds one pair of dims of 8 or
/// 16 slots and the scores accumulate in lanes, one slot each, with no horizontal sums.
#[inline(always)]
fn scores_generic(q: &[i16], keys: &[i16], start: usize, out: &mut [i32]) {
    let window = keys.len() / q.len();
    for (s, o) in out.iter_mut().enumerate() {
        *o = q.chunks_exact(2).enumerate().fold(0i32, |sum, (i, qp)| {
            let k = &keys[(i * window + start + s) * 2..][..2];
            sum.wrapping_add(i32::from(qp[0]) * i32::from(k[0])).wrapping_add(i32::from(qp[1]) * i32::from(k[1]))
        });
    }
}

/// `acc[d] += sum_s probs[s] * value(start + s)[d]`: one head's weighted values over slots
/// `start..` (`start` even), its values laid out `[window / 2, head_dim, 2]`: slots 2j and
/// 2j + 1 side by side for each dim, so one vector multiply-add takes two slots at once.
#[inline(always)]
fn weighted_sum_generic(probs: &[i32], values: &[i16], start: usize, acc: &mut [i32]) {
    let hd = acc.len();
    for (s, &p) in probs.iter().enumerate() {
        let slot = start + s;
        let row = &values[slot / 2 * 2 * hd..][..2 * hd];
        for (a, &v) in acc.iter_mut().zip(row.iter().skip(slot % 2).step_by(2)) {
            *a = a.wrapping_add(p.wrapping_mul(i32::from(v)));
        }
    }
}

/// Writes one slot's key (dims padded to an even count) into a head's keys (see `scores`).
pub fn put_key(keys: &mut [i16], slot: usize, key: &[i16]) {
    let window = keys.len() / key.len();
    for (i, pair) in key.chunks_exact(2).enumerate() {
        keys[(i * window + slot) * 2..][..2].copy_from_slice(pair);
    }
}

/// Writes one slot's value into a head's values (see `weighted_sum`).
pub fn put_value(values: &mut [i16], slot: usize, value: &[i16]) {
    let row = &mut values[slot / 2 * 2 * value.len()..][..2 * value.len()];
    for (r, &v) in row.iter_mut().skip(slot % 2).step_by(2).zip(value) {
        *r = v;
    }
}

/// A probability split for `vpmaddwd` / `vpdpwssd`, which multiply i16 by i16:
/// `p = hi * 2^15 + lo` with `lo` in 0..2^15 (exact for |p| < 2^30, so `hi` fits i16). Sums of `lo * v` may
/// wrap, but `hi_sum * 2^15 + lo_sum` equals the sum of `p * v` modulo 2^32, as the
/// portable code's wrapping sums do. Two slots' halves pack into one i32 (pairs of i16).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn split_pair(p0: i32, p1: i32) -> (i32, i32) {
    let lo = (p0 & 0x7fff) | (p1 & 0x7fff) << 16;
    let hi = (p0 >> 15 & 0xffff) | (p1 >> 15) << 16;
    (lo, hi)
}

/// One attention head's logits and their exponentials: `scores[i]` becomes the logit
/// `shift_round(scores[i], shift - key_shift[i])` plus `bias[i]` (saturating), and
/// `weights[i] = exp_neg(max - logit)` with `max` the largest logit.
#[inline(always)]
fn softmax_weights_generic(
    scores: &mut [i32],
    shift: i32,
    key_shift: &[i32],
    bias: &[i32],
    tables: &Tables,
    weights: &mut [u64],
) {
    for ((lg, &ks), &b) in scores.iter_mut().zip(key_shift).zip(bias) {
        *lg = shift_round(i64::from(*lg), shift - ks).saturating_add(b);
    }
    let max = scores.iter().copied().max().unwrap_or(0);
    for (w, &lg) in weights.iter_mut().zip(scores.iter()) {
        // Both are i32, so the distance fits a u32.
        *w = tables.exp_neg((i64::from(max) - i64::from(lg)) as u32);
    }
}

/// GELU of each Q12 value (`Tables::gelu`).
#[inline(always)]
fn gelu_generic(x: &mut [i32], tables: &Tables) {
    x.iter_mut().for_each(|v| *v = tables.gelu(*v));
}

/// `x[i] * gain[i] / d` (d in 2..=2^31) rounded toward zero, as `/` on i64 does, clamped to
/// i32: RMSNorm's scaling.
#[inline(always)]
fn divide_products_generic(x: &[i32], gain: &[i32], d: u64, out: &mut [i32]) {
    let d = Divider::new(d);
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(gain) {
        let n = i64::from(v) * i64::from(g);
        let q = d.floor(n.unsigned_abs()) as i64;
        *o = (if n < 0 { -q } else { q }).clamp(i32::MIN as i64, i32::MAX as i64) as i32;
    }
}

/// `x = round(x * scale / 2^s)` per element (`fixed::shift_round`): the rescale after each
/// matrix product, a scale per output.
#[inline(always)]
fn rescale_generic(x: &mut [i32], scale: &[i64], s: i32) {
    for (o, &f) in x.iter_mut().zip(scale) {
        *o = shift_round(i64::from(*o) * f, s);
    }
}

/// The largest value shift among the slots with weight (`i32::MIN` if none): the scale the
/// attention's weighted values are summed at.
#[inline(always)]
fn live_max_generic(weights: &[u64], value_shift: &[i32]) -> i32 {
    value_shift.iter().zip(weights).fold(i32::MIN, |m, (&v, &w)| m.max(if w > 0 { v } else { i32::MIN }))
}

/// Probabilities in Q19 from `weights` times `inv` (2^51 / their sum), each scaled down by
/// its value's shift below `vmax`, the largest shift among the slots with weight.
#[inline(always)]
fn probabilities_generic(weights: &[u64], value_shift: &[i32], vmax: i32, inv: u64, probs: &mut [i32]) {
    for ((pr, &w), &vs) in probs.iter_mut().zip(weights).zip(value_shift) {
        let gap = (vmax - vs) as u32;
        *pr = if gap >= 32 { 0 } else { ((w * inv) >> (32 + gap)) as i32 };
    }
}

/// The products a register-blocked kernel left out. It blocks 4 rows of `x` by 2 rows of `w`
/// up to row `xb = 4 * (x rows / 4)` of `x` and `wb` of `w`, and the rows of `x` from `xb` on
/// one at a time by 4 rows of `w`, up to `wb4`. Inlined into each kernel, so it compiles with
/// that kernel's features.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn matmul_leftovers(x: &[i16], cols: usize, w: &[i16], out: &mut [i32], xb: usize, (wb, wb4): (usize, usize)) {
    let (xr, wr) = (x.len() / cols, w.len() / cols);
    for r in 0..xr {
        for j in if r < xb { wb } else { wb4 }..wr {
            out[r * wr + j] = dot_generic(&x[r * cols..][..cols], &w[j * cols..][..cols]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::super::fixed::LOG2_E_Q24;
    use super::{Packed, Tables};
    use std::arch::x86_64::*;

    /// `softmax_weights` with every shift `shift - key_shift[i]` in 1..=31: then the rounded
    /// shift is `(v >> s) + (v >> (s - 1) & 1)` in i32 (`vpsravd`), 8 logits at a time, and
    /// `exp_neg` runs on 4 u64 lanes (`vpmuludq`, a table gather, `vpsrlvq`; its result is
    /// below 2^31, so shifts of 31 or more give 0 as the scalar code's early return does).
    #[target_feature(enable = "avx2")]
    pub unsafe fn softmax_weights(
        scores: &mut [i32],
        shift: i32,
        key_shift: &[i32],
        bias: &[i32],
        tables: &Tables,
        weights: &mut [u64],
    ) {
        let n = scores.len();
        let full = n / 8 * 8;
        let (base, one) = (_mm256_set1_epi32(shift), _mm256_set1_epi32(1));
        let mut maxv = _mm256_set1_epi32(i32::MIN);
        for i in (0..full).step_by(8) {
            let ld = |x: &[i32]| _mm256_loadu_si256(x.as_ptr().add(i) as *const __m256i);
            let (v, s, b) = (ld(scores), _mm256_sub_epi32(base, ld(key_shift)), ld(bias));
            let half = _mm256_and_si256(_mm256_srav_epi32(v, _mm256_sub_epi32(s, one)), one);
            let r = _mm256_add_epi32(_mm256_srav_epi32(v, s), half);
            // Saturating add: on overflow (both signs equal, the sum's differs) the bound of r's sign.
            let sum = _mm256_add_epi32(r, b);
            let overflow = _mm256_srai_epi32(_mm256_and_si256(_mm256_xor_si256(r, sum), _mm256_xor_si256(b, sum)), 31);
            let bound = _mm256_xor_si256(_mm256_srai_epi32(r, 31), _mm256_set1_epi32(i32::MAX));
            let lg = _mm256_blendv_epi8(sum, bound, overflow);
            _mm256_storeu_si256(scores.as_mut_ptr().add(i) as *mut __m256i, lg);
            maxv = _mm256_max_epi32(maxv, lg);
        }
        for i in full..n {
            scores[i] = super::shift_round(i64::from(scores[i]), shift - key_shift[i]).saturating_add(bias[i]);
        }
        let mut lanes = [i32::MIN; 8];
        _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, maxv);
        let max = lanes.iter().chain(&scores[full..]).copied().max().unwrap_or(i32::MIN);

        let table = tables.exp2_frac();
        let full4 = n / 4 * 4;
        let (maxq, log2e) = (_mm_set1_epi32(max), _mm256_set1_epi64x(LOG2_E_Q24 as i64));
        let (byte, low16, round) = (_mm256_set1_epi64x(255), _mm256_set1_epi64x(0xffff), _mm256_set1_epi64x(1 << 15));
        for i in (0..full4).step_by(4) {
            let lg = _mm_loadu_si128(scores.as_ptr().add(i) as *const __m128i);
            // max - lg as a u32, widened to u64 lanes.
            let d = _mm256_cvtepu32_epi64(_mm_sub_epi32(maxq, lg));
            let y = _mm256_mul_epu32(d, log2e);
            let whole = _mm256_srli_epi64(y, 32);
            let f = _mm256_and_si256(_mm256_srli_epi64(y, 24), byte);
            let r = _mm256_and_si256(_mm256_srli_epi64(y, 8), low16);
            // In bounds: f <= 255 and the table has 257 entries.
            let a = _mm256_i64gather_epi64(table.as_ptr() as *const i64, f, 8);
            let b = _mm256_i64gather_epi64(table.as_ptr().add(1) as *const i64, f, 8);
            let step = _mm256_srli_epi64(_mm256_add_epi64(_mm256_mul_epu32(_mm256_sub_epi64(a, b), r), round), 16);
            let e = _mm256_srlv_epi64(_mm256_sub_epi64(a, step), whole);
            _mm256_storeu_si256(weights.as_mut_ptr().add(i) as *mut __m256i, e);
        }
        for i in full4..n {
            weights[i] = tables.exp_neg((i64::from(max) - i64::from(scores[i])) as u32);
        }
    }

    /// `gelu` on 8 lanes: the table index and fraction of each value (clamped into the
    /// table, so the two gathers stay in it), the interpolation, then the values past the
    /// table's ends replaced (by themselves above it, 0 below), as the scalar code returns them.
    #[target_feature(enable = "avx2")]
    pub unsafe fn gelu(x: &mut [i32], tables: &Tables) {
        use super::super::fixed::GELU_LO;
        let table = tables.gelu_table();
        let full = x.len() / 8 * 8;
        let (lo, top) = (_mm256_set1_epi32(GELU_LO), _mm256_set1_epi32(-GELU_LO - 1));
        for i in (0..full).step_by(8) {
            let v = _mm256_loadu_si256(x.as_ptr().add(i) as *const __m256i);
            // v - GELU_LO may wrap for v near i32::MAX: such lanes are replaced below.
            let u = _mm256_min_epi32(
                _mm256_max_epi32(_mm256_sub_epi32(v, lo), _mm256_setzero_si256()),
                _mm256_set1_epi32(65535),
            );
            let (idx, frac) = (_mm256_srli_epi32(u, 6), _mm256_and_si256(u, _mm256_set1_epi32(63)));
            // In bounds: idx <= 1023 and the table has 1025 entries.
            let a = _mm256_i32gather_epi32(table.as_ptr(), idx, 4);
            let b = _mm256_i32gather_epi32(table.as_ptr().add(1), idx, 4);
            let step = _mm256_srai_epi32(
                _mm256_add_epi32(_mm256_mullo_epi32(_mm256_sub_epi32(b, a), frac), _mm256_set1_epi32(32)),
                6,
            );
            let r = _mm256_blendv_epi8(_mm256_add_epi32(a, step), v, _mm256_cmpgt_epi32(v, top));
            let r = _mm256_andnot_si256(_mm256_cmpgt_epi32(lo, v), r);
            _mm256_storeu_si256(x.as_mut_ptr().add(i) as *mut __m256i, r);
        }
        super::gelu_generic(&mut x[full..], tables);
    }

    /// `probabilities` on 4 u64 lanes: `w * inv < 2^52` is one `vpmuludq` (both below 2^32),
    /// and `vpsrlvq` by `32 + gap` gives 0 for gaps of 32 or more, as the scalar code does; a
    /// negative gap only occurs where the weight is 0.
    #[target_feature(enable = "avx2")]
    pub unsafe fn probabilities(weights: &[u64], value_shift: &[i32], vmax: i32, inv: u64, probs: &mut [i32]) {
        let n = weights.len();
        let full4 = n / 4 * 4;
        let (invv, vmaxq, thirty_two) = (_mm256_set1_epi64x(inv as i64), _mm_set1_epi32(vmax), _mm256_set1_epi64x(32));
        for i in (0..full4).step_by(4) {
            let w = _mm256_loadu_si256(weights.as_ptr().add(i) as *const __m256i);
            let vs = _mm_loadu_si128(value_shift.as_ptr().add(i) as *const __m128i);
            let gap = _mm256_cvtepi32_epi64(_mm_sub_epi32(vmaxq, vs));
            let p = _mm256_srlv_epi64(_mm256_mul_epu32(w, invv), _mm256_add_epi64(gap, thirty_two));
            _mm_storeu_si128(probs.as_mut_ptr().add(i) as *mut __m128i, low_halves(p));
        }
        super::probabilities_generic(&weights[full4..], &value_shift[full4..], vmax, inv, &mut probs[full4..]);
    }

    /// `divide_products` on 4 values per step. A quotient estimated in f64 (`|x g| * (1 / d)`,
    /// clamped below 2^31) is within 1 of the exact one (relative error below 2^-50 on a
    /// value below 2^31), so one exact remainder `|x g| - q d` in i64 (`vpmuludq`: both
    /// factors below 2^32) corrects it: the float only guesses. A quotient of 2^31 or more
    /// comes out as 2^31, which the clamp maps as it maps any larger one.
    #[target_feature(enable = "avx2")]
    pub unsafe fn divide_products(x: &[i32], gain: &[i32], d: u64, out: &mut [i32]) {
        let full4 = x.len() / 4 * 4;
        let (inv, cap) = (_mm256_set1_pd(1.0 / d as f64), _mm256_set1_pd(((1u64 << 31) - 1) as f64));
        let (dv, below_d, sign_bit) =
            (_mm256_set1_epi64x(d as i64), _mm256_set1_epi64x(d as i64 - 1), _mm256_set1_pd(-0.0));
        let max = _mm256_set1_epi64x(i32::MAX as i64);
        for i in (0..full4).step_by(4) {
            let v = _mm_loadu_si128(x.as_ptr().add(i) as *const __m128i);
            let g = _mm_loadu_si128(gain.as_ptr().add(i) as *const __m128i);
            let guess = _mm256_mul_pd(
                _mm256_andnot_pd(sign_bit, _mm256_mul_pd(_mm256_cvtepi32_pd(v), _mm256_cvtepi32_pd(g))),
                inv,
            );
            let q = _mm256_cvtepu32_epi64(_mm256_cvttpd_epi32(_mm256_min_pd(guess, cap)));
            // |v| and |g| as u32 (|i32::MIN| = 2^31 included), their exact product in u64.
            let n = _mm256_mul_epu32(_mm256_cvtepu32_epi64(_mm_abs_epi32(v)), _mm256_cvtepu32_epi64(_mm_abs_epi32(g)));
            let r = _mm256_sub_epi64(n, _mm256_mul_epu32(q, dv));
            // q - 1 where the remainder is negative, q + 1 where it is d or more.
            let q = _mm256_add_epi64(q, _mm256_cmpgt_epi64(_mm256_setzero_si256(), r));
            let q = _mm256_sub_epi64(q, _mm256_cmpgt_epi64(r, below_d));
            // Negative where exactly one factor is; -q fits i32 down to -2^31, q up to 2^31 - 1.
            let neg = _mm256_cvtepi32_epi64(_mm_xor_si128(v, g));
            let neg = _mm256_cmpgt_epi64(_mm256_setzero_si256(), neg);
            let pos = _mm256_blendv_epi8(q, max, _mm256_cmpgt_epi64(q, max));
            let o = _mm256_blendv_epi8(pos, _mm256_sub_epi64(_mm256_setzero_si256(), q), neg);
            _mm_storeu_si128(out.as_mut_ptr().add(i) as *mut __m128i, low_halves(o));
        }
        super::divide_products_generic(&x[full4..], &gain[full4..], d, &mut out[full4..]);
    }

    /// `live_max` on 4 slots per step: a weight's test for 0 (`vpcmpeqq`) narrowed to the
    /// value shifts' 32-bit lanes, which it replaces by `i32::MIN` before the maximum.
    #[target_feature(enable = "avx2")]
    pub unsafe fn live_max(weights: &[u64], value_shift: &[i32]) -> i32 {
        let full4 = weights.len() / 4 * 4;
        let (zero, none) = (_mm256_setzero_si256(), _mm_set1_epi32(i32::MIN));
        let mut m = none;
        for i in (0..full4).step_by(4) {
            let dead = _mm256_cmpeq_epi64(_mm256_loadu_si256(weights.as_ptr().add(i) as *const __m256i), zero);
            let dead = low_halves(dead);
            let vs = _mm_loadu_si128(value_shift.as_ptr().add(i) as *const __m128i);
            m = _mm_max_epi32(m, _mm_blendv_epi8(vs, none, dead));
        }
        let mut lanes = [0i32; 4];
        _mm_storeu_si128(lanes.as_mut_ptr() as *mut __m128i, m);
        lanes.into_iter().fold(super::live_max_generic(&weights[full4..], &value_shift[full4..]), i32::max)
    }

    /// Scores of 8 slots per vector, 32 slots per pass: for each pair of dims, `vpmaddwd` of
    /// the query's pair (broadcast) with that pair of 8 slots' keys. The caller checked the
    /// layout (`scores`); the last slots past the groups of 8 go to the portable code.
    #[target_feature(enable = "avx2")]
    pub unsafe fn scores(q: &[i16], keys: &[i16], start: usize, out: &mut [i32]) {
        let n = out.len();
        let mut g = 0;
        while g + 32 <= n {
            score_groups::<4>(q, keys, start + g, &mut out[g..]);
            g += 32;
        }
        while g + 8 <= n {
            score_groups::<1>(q, keys, start + g, &mut out[g..]);
            g += 8;
        }
        super::scores_generic(q, keys, start + g, &mut out[g..]);
    }

    /// Scores of slots `slot..slot + 8 * G` into `out[..8 * G]`.
    #[inline(always)]
    unsafe fn score_groups<const G: usize>(q: &[i16], keys: &[i16], slot: usize, out: &mut [i32]) {
        let window = keys.len() / q.len();
        let mut acc = [_mm256_setzero_si256(); G];
        for i in 0..q.len() / 2 {
            let qv = _mm256_set1_epi32((q.as_ptr().add(2 * i) as *const i32).read_unaligned());
            // In bounds: slot + 8G <= window, checked by the caller.
            let row = keys.as_ptr().add((i * window + slot) * 2);
            for (k, a) in acc.iter_mut().enumerate() {
                let kv = _mm256_loadu_si256(row.add(16 * k) as *const __m256i);
                *a = _mm256_add_epi32(*a, _mm256_madd_epi16(qv, kv));
            }
        }
        for (k, a) in acc.iter().enumerate() {
            _mm256_storeu_si256(out.as_mut_ptr().add(8 * k) as *mut __m256i, *a);
        }
    }

    /// The weighted values two slots at a time: `vpmaddwd` of a vector of 8 dims x 2 slots
    /// with the two slots' probabilities, split into 15-bit halves (`split_pair`), 32 dims (or
    /// 16) per pass. The caller checked the layout, `acc.len()` a multiple of 16, and every
    /// |probability| below 2^30.
    #[target_feature(enable = "avx2")]
    pub unsafe fn weighted_sum(probs: &[i32], values: &[i16], start: usize, acc: &mut [i32]) {
        let wide = acc.len() / 32 * 32;
        for c in (0..wide).step_by(32) {
            weighted_lanes::<4>(probs, values, start, acc, c);
        }
        if wide < acc.len() {
            weighted_lanes::<2>(probs, values, start, acc, wide);
        }
    }

    /// Dims `c..c + 8 * R` of `weighted_sum`.
    #[inline(always)]
    unsafe fn weighted_lanes<const R: usize>(probs: &[i32], values: &[i16], start: usize, acc: &mut [i32], c: usize) {
        let hd = acc.len();
        let (mut lo, mut hi) = ([_mm256_setzero_si256(); R], [_mm256_setzero_si256(); R]);
        for (j, p) in probs.chunks(2).enumerate() {
            let (l, h) = super::split_pair(p[0], p.get(1).copied().unwrap_or(0));
            let (lv, hv) = (_mm256_set1_epi32(l), _mm256_set1_epi32(h));
            // In bounds: slot pair (start / 2 + j) is below window / 2, checked by the caller.
            let row = values.as_ptr().add(((start / 2 + j) * hd + c) * 2);
            for k in 0..R {
                let v = _mm256_loadu_si256(row.add(16 * k) as *const __m256i);
                lo[k] = _mm256_add_epi32(lo[k], _mm256_madd_epi16(v, lv));
                hi[k] = _mm256_add_epi32(hi[k], _mm256_madd_epi16(v, hv));
            }
        }
        for k in 0..R {
            let a = acc.as_mut_ptr().add(c + 8 * k) as *mut __m256i;
            let sum = _mm256_add_epi32(_mm256_slli_epi32(hi[k], 15), lo[k]);
            _mm256_storeu_si256(a, _mm256_add_epi32(_mm256_loadu_si256(a), sum));
        }
    }

    #[target_feature(enable = "avx2")]
    unsafe fn hsum(v: __m256i) -> i32 {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
        _mm_cvtsi128_si32(s)
    }

    /// Register-blocked product: 4 rows of `x` by 2 rows of `w` per pass (the last rows one by
    /// 4), 16 lanes of i16 multiply-adds (`vpmaddwd`) into i32. `cols` must be a multiple of 16.
    #[target_feature(enable = "avx2")]
    pub unsafe fn matmul(x: &[i16], cols: usize, w: &[i16], out: &mut [i32]) {
        matmul_with::<false>(x, cols, w, out)
    }

    /// `matmul` with AVX-VNNI's 256-bit `vpdpwssd` (CPUs with it but no AVX-512: Intel's
    /// since Alder Lake, AMD's since Zen 5): the multiply-add and the add in one instruction.
    #[target_feature(enable = "avx2,avxvnni")]
    pub unsafe fn matmul_vnni(x: &[i16], cols: usize, w: &[i16], out: &mut [i32]) {
        matmul_with::<true>(x, cols, w, out)
    }

    /// The low 32 bits of each 64-bit lane, packed into 4 i32 lanes. Inlined into a caller
    /// that enables AVX2.
    #[inline(always)]
    unsafe fn low_halves(v: __m256i) -> __m128i {
        _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(v, _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6)))
    }

    /// `acc + madd(x, w)`: one `vpdpwssd` with AVX-VNNI, else `vpmaddwd` and `vpaddd`. Inlined
    /// into a caller that enables the instruction.
    #[inline(always)]
    unsafe fn madd_add<const VNNI: bool>(acc: __m256i, x: __m256i, w: __m256i) -> __m256i {
        if VNNI {
            _mm256_dpwssd_avx_epi32(acc, x, w)
        } else {
            _mm256_add_epi32(acc, _mm256_madd_epi16(x, w))
        }
    }

    #[inline(always)]
    unsafe fn matmul_with<const VNNI: bool>(x: &[i16], cols: usize, w: &[i16], out: &mut [i32]) {
        let (xr, wr) = (x.len() / cols, w.len() / cols);
        let (xb, wb) = (xr / 4 * 4, wr / 2 * 2);
        let ld = |p: &[i16], row: usize, c: usize| _mm256_loadu_si256(p.as_ptr().add(row * cols + c) as *const __m256i);
        for j in (0..wb).step_by(2) {
            for r in (0..xb).step_by(4) {
                let mut acc = [_mm256_setzero_si256(); 8];
                for c in (0..cols).step_by(16) {
                    let (w0, w1) = (ld(w, j, c), ld(w, j + 1, c));
                    for k in 0..4 {
                        let xv = ld(x, r + k, c);
                        acc[2 * k] = madd_add::<VNNI>(acc[2 * k], xv, w0);
                        acc[2 * k + 1] = madd_add::<VNNI>(acc[2 * k + 1], xv, w1);
                    }
                }
                for k in 0..4 {
                    out[(r + k) * wr + j] = hsum(acc[2 * k]);
                    out[(r + k) * wr + j + 1] = hsum(acc[2 * k + 1]);
                }
            }
        }
        // The last rows of a batch that is not a multiple of 4 (a lone segment's every row):
        // one row of `x` by 4 rows of `w`.
        let wb4 = wr / 4 * 4;
        for r in xb..xr {
            for j in (0..wb4).step_by(4) {
                let mut acc = [_mm256_setzero_si256(); 4];
                for c in (0..cols).step_by(16) {
                    let xv = ld(x, r, c);
                    for (k, a) in acc.iter_mut().enumerate() {
                        *a = madd_add::<VNNI>(*a, xv, ld(w, j + k, c));
                    }
                }
                for (k, a) in acc.iter().enumerate() {
                    out[r * wr + j + k] = hsum(*a);
                }
            }
        }
        super::matmul_leftovers(x, cols, w, out, xb, (wb, wb4));
    }

    /// `matmul_packed` (see `Packed`): per block of 16 outputs, input rows 4 at a time, the
    /// block's two 8-row halves widened from int8 (`vpmovsxbw`) for each pair of columns and
    /// multiplied by each row's broadcast pair. Blocks outside, rows inside, so a block's
    /// weights stay in L1 while every row of the batch uses them.
    #[target_feature(enable = "avx2")]
    pub unsafe fn matmul_packed(x: &[i16], m: &Packed, out: &mut [i32]) {
        packed_with::<false>(x, m, out)
    }

    /// `matmul_packed` with AVX-VNNI's 256-bit `vpdpwssd`.
    #[target_feature(enable = "avx2,avxvnni")]
    pub unsafe fn matmul_packed_vnni(x: &[i16], m: &Packed, out: &mut [i32]) {
        packed_with::<true>(x, m, out)
    }

    #[inline(always)]
    unsafe fn packed_with<const VNNI: bool>(x: &[i16], m: &Packed, out: &mut [i32]) {
        let xr = x.len() / m.cols;
        for b in 0..m.rows.div_ceil(16) {
            let mut r = 0;
            while r + 4 <= xr {
                packed_tile::<VNNI, 4>(x, m, out, r, b);
                r += 4;
            }
            while r < xr {
                packed_tile::<VNNI, 1>(x, m, out, r, b);
                r += 1;
            }
        }
    }

    /// Input rows `r0..r0 + R` by output block `b`.
    #[inline(always)]
    unsafe fn packed_tile<const VNNI: bool, const R: usize>(
        x: &[i16],
        m: &Packed,
        out: &mut [i32],
        r0: usize,
        b: usize,
    ) {
        let (cols, rows, half) = (m.cols, m.rows, m.cols / 2);
        let mut acc = [[_mm256_setzero_si256(); 2]; R];
        // In bounds: block b < blocks, and x holds whole rows of an even count of columns.
        let w = m.w.as_ptr().add(b * half * 32);
        for p in 0..half {
            let w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(w.add(p * 32) as *const __m128i));
            let w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(w.add(p * 32 + 16) as *const __m128i));
            for (i, a) in acc.iter_mut().enumerate() {
                let xv = _mm256_set1_epi32((x.as_ptr().add((r0 + i) * cols + 2 * p) as *const i32).read_unaligned());
                a[0] = madd_add::<VNNI>(a[0], xv, w0);
                a[1] = madd_add::<VNNI>(a[1], xv, w1);
            }
        }
        let (j0, mut lanes) = (b * 16, [0i32; 16]);
        let n = (rows - j0).min(16);
        for (i, a) in acc.iter().enumerate() {
            _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, a[0]);
            _mm256_storeu_si256(lanes.as_mut_ptr().add(8) as *mut __m256i, a[1]);
            out[(r0 + i) * rows + j0..][..n].copy_from_slice(&lanes[..n]);
        }
    }

    /// Multiply-adds per second with no memory traffic: 8 independent `vpmaddwd` chains.
    #[target_feature(enable = "avx2")]
    pub unsafe fn peak(iters: usize) -> i32 {
        let b = _mm256_set1_epi16(3);
        let mut acc = [_mm256_set1_epi16(1); 8];
        for _ in 0..iters {
            for a in acc.iter_mut() {
                *a = _mm256_madd_epi16(*a, b);
            }
        }
        acc.iter().fold(0, |s, &a| s.wrapping_add(hsum(a)))
    }
}

/// The matrix product with AVX-512 VNNI: `vpdpwssd` multiplies 32 pairs of i16 and adds the
/// pair sums into 16 i32 lanes in one instruction, the same integers as AVX2's `vpmaddwd`
/// followed by `vpaddd` at twice the width.
#[cfg(target_arch = "x86_64")]
mod vnni {
    use super::Packed;
    use std::arch::x86_64::*;

    /// `rescale` for s in 1..=62, 8 values per step: 64-bit products (`vpmullq`), the
    /// rounding shift (`vpsraq`) and the clamp to i32 in 64-bit lanes, as `shift_round` does.
    #[target_feature(enable = "avx512f,avx512dq")]
    pub unsafe fn rescale(x: &mut [i32], scale: &[i64], s: i32) {
        let full = x.len() / 8 * 8;
        let (half, count) = (_mm512_set1_epi64(1 << (s - 1)), _mm_cvtsi32_si128(s));
        let (lo, hi) = (_mm512_set1_epi64(i32::MIN as i64), _mm512_set1_epi64(i32::MAX as i64));
        for i in (0..full).step_by(8) {
            let o = _mm512_cvtepi32_epi64(_mm256_loadu_si256(x.as_ptr().add(i) as *const __m256i));
            let f = _mm512_loadu_si512(scale.as_ptr().add(i) as *const _);
            let r = _mm512_sra_epi64(_mm512_add_epi64(_mm512_mullo_epi64(o, f), half), count);
            let r = _mm512_cvtepi64_epi32(_mm512_min_epi64(_mm512_max_epi64(r, lo), hi));
            _mm256_storeu_si256(x.as_mut_ptr().add(i) as *mut __m256i, r);
        }
        super::rescale_generic(&mut x[full..], &scale[full..], s);
    }

    /// Register-blocked like the AVX2 version: 4 rows of `x` by 2 rows of `w` per pass, the
    /// last rows one by 4. `cols` must be a multiple of 32.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn matmul(x: &[i16], cols: usize, w: &[i16], out: &mut [i32]) {
        let (xr, wr) = (x.len() / cols, w.len() / cols);
        let (xb, wb) = (xr / 4 * 4, wr / 2 * 2);
        let ld = |p: &[i16], row: usize, c: usize| _mm512_loadu_si512(p.as_ptr().add(row * cols + c) as *const _);
        for j in (0..wb).step_by(2) {
            for r in (0..xb).step_by(4) {
                let mut acc = [_mm512_setzero_si512(); 8];
                for c in (0..cols).step_by(32) {
                    let (w0, w1) = (ld(w, j, c), ld(w, j + 1, c));
                    for k in 0..4 {
                        let xv = ld(x, r + k, c);
                        acc[2 * k] = _mm512_dpwssd_epi32(acc[2 * k], xv, w0);
                        acc[2 * k + 1] = _mm512_dpwssd_epi32(acc[2 * k + 1], xv, w1);
                    }
                }
                for k in 0..4 {
                    out[(r + k) * wr + j] = _mm512_reduce_add_epi32(acc[2 * k]);
                    out[(r + k) * wr + j + 1] = _mm512_reduce_add_epi32(acc[2 * k + 1]);
                }
            }
        }
        let wb4 = wr / 4 * 4;
        for r in xb..xr {
            for j in (0..wb4).step_by(4) {
                let mut acc = [_mm512_setzero_si512(); 4];
                for c in (0..cols).step_by(32) {
                    let xv = ld(x, r, c);
                    for (k, a) in acc.iter_mut().enumerate() {
                        *a = _mm512_dpwssd_epi32(*a, xv, ld(w, j + k, c));
                    }
                }
                for (k, a) in acc.iter().enumerate() {
                    out[r * wr + j + k] = _mm512_reduce_add_epi32(*a);
                }
            }
        }
        super::matmul_leftovers(x, cols, w, out, xb, (wb, wb4));
    }

    /// `matmul_packed` (see `Packed`): tiles of 4 input rows by 4 blocks of 16 outputs, 16
    /// sums in registers; per pair of columns, 4 weight vectors widened from int8
    /// (`vpmovsxbw`) and 4 broadcast input pairs make 16 `vpdpwssd`. Blocks outside, rows
    /// inside, so a tile's weights stay in L1 while every row of the batch uses them.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn matmul_packed(x: &[i16], m: &Packed, out: &mut [i32]) {
        let (xr, blocks) = (x.len() / m.cols, m.rows.div_ceil(16));
        let mut b = 0;
        while b < blocks {
            let wide = blocks - b >= 4;
            let mut r = 0;
            while r < xr {
                let tall = xr - r >= 4;
                match (tall, wide) {
                    (true, true) => packed_tile::<4, 4>(x, m, out, r, b),
                    (true, false) => packed_tile::<4, 1>(x, m, out, r, b),
                    (false, true) => packed_tile::<1, 4>(x, m, out, r, b),
                    (false, false) => packed_tile::<1, 1>(x, m, out, r, b),
                }
                r += if tall { 4 } else { 1 };
            }
            b += if wide { 4 } else { 1 };
        }
    }

    /// Input rows `r0..r0 + R` by output blocks `b0..b0 + J`; the last block's lanes past
    /// the matrix's rows are not stored.
    #[inline(always)]
    unsafe fn packed_tile<const R: usize, const J: usize>(
        x: &[i16],
        m: &Packed,
        out: &mut [i32],
        r0: usize,
        b0: usize,
    ) {
        let (cols, rows, half) = (m.cols, m.rows, m.cols / 2);
        let mut acc = [[_mm512_setzero_si512(); J]; R];
        let mut wv = [_mm512_setzero_si512(); J];
        // In bounds: blocks b0 + J <= blocks, and x holds whole rows of an even count of columns.
        let w = m.w.as_ptr().add(b0 * half * 32);
        for p in 0..half {
            for (k, v) in wv.iter_mut().enumerate() {
                *v = _mm512_cvtepi8_epi16(_mm256_loadu_si256(w.add((k * half + p) * 32) as *const __m256i));
            }
            for (i, a) in acc.iter_mut().enumerate() {
                let xv = _mm512_set1_epi32((x.as_ptr().add((r0 + i) * cols + 2 * p) as *const i32).read_unaligned());
                for (a, v) in a.iter_mut().zip(&wv) {
                    *a = _mm512_dpwssd_epi32(*a, xv, *v);
                }
            }
        }
        for (i, a) in acc.iter().enumerate() {
            for (k, a) in a.iter().enumerate() {
                let j0 = (b0 + k) * 16;
                let mask = if rows - j0 >= 16 { 0xffff } else { (1u16 << (rows - j0)) - 1 };
                _mm512_mask_storeu_epi32(out.as_mut_ptr().add((r0 + i) * rows + j0), mask, *a);
            }
        }
    }

    /// `scores` with 16 slots per vector and `vpdpwssd`, 64 slots per pass; the last slots
    /// past the groups of 16 in one masked pass.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn scores(q: &[i16], keys: &[i16], start: usize, out: &mut [i32]) {
        let n = out.len();
        let mut g = 0;
        while g + 64 <= n {
            score_groups::<4>(q, keys, start + g, &mut out[g..], 0xffff);
            g += 64;
        }
        while g < n {
            let mask = if n - g >= 16 { 0xffff } else { (1u16 << (n - g)) - 1 };
            score_groups::<1>(q, keys, start + g, &mut out[g..], mask);
            g += 16;
        }
    }

    /// Scores of slots `slot..slot + 16 * G` into `out[..16 * G]`, the last vector's lanes
    /// limited to `mask` (masked loads and stores touch no other memory).
    #[inline(always)]
    unsafe fn score_groups<const G: usize>(q: &[i16], keys: &[i16], slot: usize, out: &mut [i32], mask: u16) {
        let window = keys.len() / q.len();
        let mut acc = [_mm512_setzero_si512(); G];
        for i in 0..q.len() / 2 {
            let qv = _mm512_set1_epi32((q.as_ptr().add(2 * i) as *const i32).read_unaligned());
            // In bounds: the masked slots are below slot + out.len() <= window, checked by the caller.
            let row = keys.as_ptr().add((i * window + slot) * 2);
            for (k, a) in acc.iter_mut().enumerate() {
                let m = if k + 1 == G { mask } else { 0xffff };
                *a = _mm512_dpwssd_epi32(*a, qv, _mm512_maskz_loadu_epi32(m, row.add(32 * k) as *const i32));
            }
        }
        for (k, a) in acc.iter().enumerate() {
            let m = if k + 1 == G { mask } else { 0xffff };
            _mm512_mask_storeu_epi32(out.as_mut_ptr().add(16 * k), m, *a);
        }
    }

    /// `weighted_sum` with `vpdpwssd` on vectors of 16 dims x 2 slots, two pairs of slots per
    /// step into separate sums (twice the independent chains), 32 dims (or 16) per pass.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn weighted_sum(probs: &[i32], values: &[i16], start: usize, acc: &mut [i32]) {
        let wide = acc.len() / 32 * 32;
        for c in (0..wide).step_by(32) {
            weighted_lanes::<2>(probs, values, start, acc, c);
        }
        if wide < acc.len() {
            weighted_lanes::<1>(probs, values, start, acc, wide);
        }
    }

    const DIST: usize = 8;

    /// Dims `c..c + 16 * R` of `weighted_sum`: even and odd pairs of slots into separate
    /// sums (each a separate set of registers), added at the end.
    #[inline(always)]
    unsafe fn weighted_lanes<const R: usize>(probs: &[i32], values: &[i16], start: usize, acc: &mut [i32], c: usize) {
        let hd = acc.len();
        let zero = [_mm512_setzero_si512(); R];
        let (mut lo0, mut hi0, mut lo1, mut hi1) = (zero, zero, zero, zero);
        // In bounds: slot pair (start / 2 + j) is below window / 2, checked by the caller.
        let row = |j: usize| values.as_ptr().add(((start / 2 + j) * hd + c) * 2);
        // Fetch the pairs of slots DIST ahead into L1 (the address may lie past the values: a
        // prefetch never faults).
        let ahead = DIST * hd * 2;
        let mut quads = probs.chunks_exact(4);
        let mut j = 0;
        for p in &mut quads {
            weigh_pair(&mut lo0, &mut hi0, row(j), ahead, p[0], p[1]);
            weigh_pair(&mut lo1, &mut hi1, row(j + 1), ahead, p[2], p[3]);
            j += 2;
        }
        for p in quads.remainder().chunks(2) {
            weigh_pair(&mut lo0, &mut hi0, row(j), ahead, p[0], p.get(1).copied().unwrap_or(0));
            j += 1;
        }
        for k in 0..R {
            let a = acc.as_mut_ptr().add(c + 16 * k);
            let (lo, hi) = (_mm512_add_epi32(lo0[k], lo1[k]), _mm512_add_epi32(hi0[k], hi1[k]));
            let sum = _mm512_add_epi32(_mm512_slli_epi32(hi, 15), lo);
            _mm512_storeu_si512(a as *mut _, _mm512_add_epi32(_mm512_loadu_si512(a as *const _), sum));
        }
    }

    /// One pair of slots (probabilities `p0`, `p1`, values at `row`) into the sums.
    #[inline(always)]
    unsafe fn weigh_pair<const R: usize>(
        lo: &mut [__m512i; R],
        hi: &mut [__m512i; R],
        row: *const i16,
        ahead: usize,
        p0: i32,
        p1: i32,
    ) {
        let (l, h) = super::split_pair(p0, p1);
        let (lv, hv) = (_mm512_set1_epi32(l), _mm512_set1_epi32(h));
        for k in 0..R {
            _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(ahead + 32 * k) as *const i8);
            let v = _mm512_loadu_si512(row.add(32 * k) as *const _);
            lo[k] = _mm512_dpwssd_epi32(lo[k], v, lv);
            hi[k] = _mm512_dpwssd_epi32(hi[k], v, hv);
        }
    }

    /// Multiply-adds per second with no memory traffic: 8 independent `vpdpwssd` chains.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn peak(iters: usize) -> i32 {
        let b = _mm512_set1_epi16(3);
        let mut acc = [_mm512_set1_epi32(1); 8];
        for _ in 0..iters {
            for a in acc.iter_mut() {
                *a = _mm512_dpwssd_epi32(*a, b, b);
            }
        }
        acc.iter().fold(0, |s, &a| s.wrapping_add(_mm512_reduce_add_epi32(a)))
    }
}

/// The matrix product and attention with NEON, part of every arm64 CPU (so chosen without a
/// run-time check): the same layouts as on x86-64, `ld2` splitting each pair of columns (or
/// of dims, or of slots) into two vectors, and widening multiply-adds (`smlal`) into i32
/// lanes.
#[cfg(target_arch = "aarch64")]
mod neon {
    use super::Packed;
    use std::arch::aarch64::*;

    /// `matmul_packed`: per block of 16 outputs, input rows 4 at a time; per pair of columns
    /// the block's 32 weights split into its two columns, widened to i16 and multiplied by
    /// the row's two values into 16 sums.
    pub unsafe fn matmul_packed(x: &[i16], m: &Packed, out: &mut [i32]) {
        let xr = x.len() / m.cols;
        for b in 0..m.rows.div_ceil(16) {
            let mut r = 0;
            while r + 4 <= xr {
                packed_tile::<4>(x, m, out, r, b);
                r += 4;
            }
            while r < xr {
                packed_tile::<1>(x, m, out, r, b);
                r += 1;
            }
        }
    }

    /// Input rows `r0..r0 + R` by output block `b`.
    #[inline(always)]
    unsafe fn packed_tile<const R: usize>(x: &[i16], m: &Packed, out: &mut [i32], r0: usize, b: usize) {
        let (cols, rows, half) = (m.cols, m.rows, m.cols / 2);
        let mut acc = [[vdupq_n_s32(0); 4]; R];
        // In bounds: block b < blocks, and x holds whole rows of an even count of columns.
        let w = m.w.as_ptr().add(b * half * 32);
        for p in 0..half {
            let pair = vld2q_s8(w.add(p * 32));
            let columns = [pair.0, pair.1].map(|c| [vmovl_s8(vget_low_s8(c)), vmovl_high_s8(c)]);
            for (i, a) in acc.iter_mut().enumerate() {
                let xp = x.as_ptr().add((r0 + i) * cols + 2 * p);
                for (c, &v) in columns.iter().zip([*xp, *xp.add(1)].iter()) {
                    a[0] = vmlal_n_s16(a[0], vget_low_s16(c[0]), v);
                    a[1] = vmlal_high_n_s16(a[1], c[0], v);
                    a[2] = vmlal_n_s16(a[2], vget_low_s16(c[1]), v);
                    a[3] = vmlal_high_n_s16(a[3], c[1], v);
                }
            }
        }
        let (j0, mut lanes) = (b * 16, [0i32; 16]);
        let n = (rows - j0).min(16);
        for (i, a) in acc.iter().enumerate() {
            for (k, v) in a.iter().enumerate() {
                vst1q_s32(lanes.as_mut_ptr().add(4 * k), *v);
            }
            out[(r0 + i) * rows + j0..][..n].copy_from_slice(&lanes[..n]);
        }
    }

    /// `scores`, 8 slots per pass: per pair of dims, the pass's 16 keys split into the two
    /// dims and multiplied by the query's two values. The last slots go to the portable code.
    pub unsafe fn scores(q: &[i16], keys: &[i16], start: usize, out: &mut [i32]) {
        let window = keys.len() / q.len();
        let full = out.len() / 8 * 8;
        for g in (0..full).step_by(8) {
            let (mut lo, mut hi) = (vdupq_n_s32(0), vdupq_n_s32(0));
            for (i, qp) in q.chunks_exact(2).enumerate() {
                // In bounds: slot start + g + 8 <= start + out.len() <= window, checked by the caller.
                let k = vld2q_s16(keys.as_ptr().add((i * window + start + g) * 2));
                for (dim, &v) in [k.0, k.1].iter().zip(qp) {
                    lo = vmlal_n_s16(lo, vget_low_s16(*dim), v);
                    hi = vmlal_high_n_s16(hi, *dim, v);
                }
            }
            vst1q_s32(out.as_mut_ptr().add(g), lo);
            vst1q_s32(out.as_mut_ptr().add(g + 4), hi);
        }
        super::scores_generic(q, keys, start + full, &mut out[full..]);
    }

    /// `weighted_sum`, 8 dims per pass: per pair of slots, the 16 values split into the two
    /// slots, widened to i32 and multiplied by each slot's probability (`mla`, the low 32 bits
    /// of the product, as `wrapping_mul`). `acc.len()` must be a multiple of 8.
    pub unsafe fn weighted_sum(probs: &[i32], values: &[i16], start: usize, acc: &mut [i32]) {
        let hd = acc.len();
        for c in (0..hd).step_by(8) {
            let (mut lo, mut hi) = (vld1q_s32(acc.as_ptr().add(c)), vld1q_s32(acc.as_ptr().add(c + 4)));
            for (j, p) in probs.chunks(2).enumerate() {
                // In bounds: slot pair (start / 2 + j) is below window / 2, checked by the caller.
                let v = vld2q_s16(values.as_ptr().add(((start / 2 + j) * hd + c) * 2));
                for (slot, &pr) in [v.0, v.1].iter().zip(p) {
                    lo = vmlaq_n_s32(lo, vmovl_s16(vget_low_s16(*slot)), pr);
                    hi = vmlaq_n_s32(hi, vmovl_high_s16(*slot), pr);
                }
            }
            vst1q_s32(acc.as_mut_ptr().add(c), lo);
            vst1q_s32(acc.as_mut_ptr().add(c + 4), hi);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn has_vnni() -> bool {
    std::is_x86_feature_detected!("avx512vnni") && std::is_x86_feature_detected!("avx512bw")
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn has_avx_vnni() -> bool {
    has_avx2() && std::is_x86_feature_detected!("avxvnni")
}

#[cfg(target_arch = "x86_64")]
#[inline]
pub(super) fn has_x86_64_v3() -> bool {
    use std::is_x86_feature_detected as has;
    has_avx2() && has!("bmi1") && has!("bmi2") && has!("lzcnt") && has!("popcnt") && has!("fma")
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn has_avx2() -> bool {
    std::is_x86_feature_detected!("avx2")
}

/// Dispatch to the AVX2 version when the CPU has it (the caller has checked what its loads rely on).
macro_rules! dispatch {
    ($name:ident($($arg:expr),*), $generic:ident) => {{
        #[cfg(target_arch = "x86_64")]
        if has_avx2() {
            // SAFETY: AVX2 is present.
            return unsafe { avx2::$name($($arg),*) };
        }
        $generic($($arg),*)
    }};
    // The same, on arm64 the NEON version instead.
    (neon $name:ident($($arg:expr),*), $generic:ident) => {{
        #[cfg(target_arch = "aarch64")]
        // SAFETY: NEON is part of every arm64 CPU; the caller checked the shapes.
        let result = unsafe { neon::$name($($arg),*) };
        #[cfg(not(target_arch = "aarch64"))]
        let result = dispatch!($name($($arg),*), $generic);
        result
    }};
}

/// `x` holds rows of `cols`, `w` holds rows of `cols`; `out` gets `[x rows, w rows]`. For i16
/// weights that change as they are used (online adaptation's view); the network's fixed
/// matrices go through `matmul_packed`.
pub fn matmul(x: &[i16], cols: usize, w: &[i16], out: &mut [i32]) {
    debug_assert_eq!(out.len(), x.len() / cols * (w.len() / cols));
    if !cols.is_multiple_of(16) {
        return matmul_generic(x, cols, w, out);
    }
    #[cfg(target_arch = "x86_64")]
    if cols.is_multiple_of(32) && has_vnni() {
        // SAFETY: AVX-512 VNNI and BW are present; rows are whole, as for AVX2.
        return unsafe { vnni::matmul(x, cols, w, out) };
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx_vnni() {
        // SAFETY: AVX2 and AVX-VNNI are present; cols is a multiple of 16.
        return unsafe { avx2::matmul_vnni(x, cols, w, out) };
    }
    dispatch!(matmul(x, cols, w, out), matmul_generic)
}

/// `x` holds rows of the matrix's columns; `out` gets `[x rows, m.rows()]`. Panics otherwise: checked
/// once per call, because the SIMD versions read through raw pointers.
#[inline(always)]
pub fn matmul_packed(x: &[i16], m: &Packed, out: &mut [i32]) {
    let fits = x.len().is_multiple_of(m.cols) && out.len() == x.len() / m.cols * m.rows;
    assert!(fits, "matrix product: the input rows or the output do not fit the matrix");
    #[cfg(target_arch = "x86_64")]
    if has_vnni() {
        // SAFETY: AVX-512 VNNI and BW are present; the shapes are checked above.
        return unsafe { vnni::matmul_packed(x, m, out) };
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx_vnni() {
        // SAFETY: AVX2 and AVX-VNNI are present; the shapes are checked above.
        return unsafe { avx2::matmul_packed_vnni(x, m, out) };
    }
    dispatch!(neon matmul_packed(x, m, out), matmul_packed_generic)
}

/// See `scores_generic`. Panics unless `q` has an even, nonzero length, `keys` whole slots of
/// it, and slots `start..start + out.len()` lie in the window: checked once per call, because
/// the SIMD versions read through raw pointers.
#[inline(always)]
pub fn scores(q: &[i16], keys: &[i16], start: usize, out: &mut [i32]) {
    let fits = q.len().is_multiple_of(2) && !q.is_empty() && keys.len().is_multiple_of(q.len());
    let fits = fits && start.checked_add(out.len()).is_some_and(|end| end <= keys.len() / q.len());
    assert!(fits, "attention scores: the slots are not in the keys' window");
    #[cfg(target_arch = "x86_64")]
    if has_vnni() {
        // SAFETY: AVX-512 VNNI and BW are present; the layout is checked above.
        return unsafe { vnni::scores(q, keys, start, out) };
    }
    dispatch!(neon scores(q, keys, start, out), scores_generic)
}

/// See `weighted_sum_generic`. Panics unless `values` holds whole pairs of slots of
/// `acc.len()` dims, `start` is even and slots `start..start + probs.len()` lie in the window.
#[inline(always)]
pub fn weighted_sum(probs: &[i32], values: &[i16], start: usize, acc: &mut [i32]) {
    let hd = acc.len();
    let fits = hd > 0 && values.len().is_multiple_of(2 * hd) && start.is_multiple_of(2);
    let fits = fits && start.checked_add(probs.len()).is_some_and(|end| end <= values.len() / hd);
    assert!(fits, "attention values: the slots are not in the values' window");
    // The SIMD versions split each probability into two i16 (`split_pair`).
    #[cfg(target_arch = "x86_64")]
    // (A fold rather than `all`, so that the check vectorizes.)
    if hd.is_multiple_of(16) && probs.iter().fold(0, |m, &p| m.max(p.unsigned_abs())) < 1 << 30 {
        if has_vnni() {
            // SAFETY: AVX-512 VNNI and BW are present; the layout is checked above.
            return unsafe { vnni::weighted_sum(probs, values, start, acc) };
        }
        if has_avx2() {
            // SAFETY: AVX2 is present; the layout is checked above.
            return unsafe { avx2::weighted_sum(probs, values, start, acc) };
        }
    }
    #[cfg(target_arch = "aarch64")]
    if hd.is_multiple_of(8) {
        // SAFETY: NEON is part of every arm64 CPU; the layout is checked above.
        return unsafe { neon::weighted_sum(probs, values, start, acc) };
    }
    weighted_sum_generic(probs, values, start, acc)
}

/// See `softmax_weights_generic`. Panics unless the slices have one length.
#[inline(always)]
pub fn softmax_weights(
    scores: &mut [i32],
    shift: i32,
    key_shift: &[i32],
    bias: &[i32],
    tables: &Tables,
    weights: &mut [u64],
) {
    let n = scores.len();
    assert!(key_shift.len() == n && bias.len() == n && weights.len() == n, "softmax_weights: slices of one length");
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        let (lo, hi) = key_shift.iter().fold((i32::MAX, i32::MIN), |(lo, hi), &k| (lo.min(k), hi.max(k)));
        // Every shift in 1..=31 (compared in i64: no overflow): the case the AVX2 version takes.
        if n > 0 && i64::from(shift) - i64::from(hi) >= 1 && i64::from(shift) - i64::from(lo) <= 31 {
            // SAFETY: AVX2 is present; the slices have one length, checked above.
            return unsafe { avx2::softmax_weights(scores, shift, key_shift, bias, tables, weights) };
        }
    }
    softmax_weights_generic(scores, shift, key_shift, bias, tables, weights)
}

/// See `gelu_generic`.
#[inline(always)]
pub fn gelu(x: &mut [i32], tables: &Tables) {
    dispatch!(gelu(x, tables), gelu_generic)
}

/// See `divide_products_generic`. Panics unless the slices have one length and d is in
/// 2..=2^31.
#[inline(always)]
pub fn divide_products(x: &[i32], gain: &[i32], d: u64, out: &mut [i32]) {
    assert!(x.len() == gain.len() && x.len() == out.len(), "divide_products: slices of one length");
    assert!((2..=1 << 31).contains(&d), "divide_products: a divisor in 2..=2^31");
    dispatch!(divide_products(x, gain, d, out), divide_products_generic)
}

/// See `rescale_generic`. Panics unless the slices have one length.
#[inline(always)]
pub fn rescale(x: &mut [i32], scale: &[i64], s: i32) {
    assert_eq!(x.len(), scale.len(), "rescale: slices of one length");
    #[cfg(target_arch = "x86_64")]
    if (1..=62).contains(&s) && std::is_x86_feature_detected!("avx512dq") {
        // SAFETY: AVX-512 F and DQ are present (DQ implies F); the lengths are checked above.
        return unsafe { vnni::rescale(x, scale, s) };
    }
    rescale_generic(x, scale, s)
}

/// See `live_max_generic`. Panics unless the slices have one length.
#[inline(always)]
pub fn live_max(weights: &[u64], value_shift: &[i32]) -> i32 {
    assert_eq!(weights.len(), value_shift.len(), "live_max: slices of one length");
    dispatch!(live_max(weights, value_shift), live_max_generic)
}

/// See `probabilities_generic`. Panics unless the slices have one length.
#[inline(always)]
pub fn probabilities(weights: &[u64], value_shift: &[i32], vmax: i32, inv: u64, probs: &mut [i32]) {
    let n = weights.len();
    assert!(value_shift.len() == n && probs.len() == n, "probabilities: slices of one length");
    // The AVX2 version's single multiply needs both factors below 2^32.
    #[cfg(target_arch = "x86_64")]
    // (A fold rather than `all`, so that the check vectorizes.)
    if has_avx2() && inv < 1 << 32 && weights.iter().fold(0, |m, &w| m | w) < 1 << 32 {
        // SAFETY: AVX2 is present; the slices have one length, checked above.
        return unsafe { avx2::probabilities(weights, value_shift, vmax, inv, probs) };
    }
    probabilities_generic(weights, value_shift, vmax, inv, probs)
}

/// This core's peak rate of i16 multiply-accumulates per second with the instruction the
/// matrix product uses (AVX-512 VNNI `vpdpwssd`, else AVX2 `vpmaddwd`; no memory traffic), or
/// of the portable dot product where neither is present.
pub fn peak_macs_per_second() -> f64 {
    let t = std::time::Instant::now();
    let iters = 20_000_000;
    #[cfg(target_arch = "x86_64")]
    if has_vnni() {
        // SAFETY: AVX-512 VNNI and BW are present.
        std::hint::black_box(unsafe { vnni::peak(iters) });
        return (iters * 8 * 32) as f64 / t.elapsed().as_secs_f64();
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 is present.
        std::hint::black_box(unsafe { avx2::peak(iters) });
        return (iters * 8 * 16) as f64 / t.elapsed().as_secs_f64();
    }
    let (a, b) = (vec![3i16; 256], vec![5i16; 256]);
    let n = iters / 100;
    let s = (0..n).fold(0i32, |s, _| s.wrapping_add(dot_generic(std::hint::black_box(&a), &b)));
    std::hint::black_box(s);
    (n * 256) as f64 / t.elapsed().as_secs_f64()
}

/// The portable definitions, for tests.
pub mod portable {
    pub fn matmul(x: &[i16], cols: usize, w: &[i16], out: &mut [i32]) {
        super::matmul_generic(x, cols, w, out)
    }
    pub fn matmul_packed(x: &[i16], m: &super::Packed, out: &mut [i32]) {
        super::matmul_packed_generic(x, m, out)
    }
    pub fn scores(q: &[i16], keys: &[i16], start: usize, out: &mut [i32]) {
        super::scores_generic(q, keys, start, out)
    }
    pub fn weighted_sum(probs: &[i32], values: &[i16], start: usize, acc: &mut [i32]) {
        super::weighted_sum_generic(probs, values, start, acc)
    }
    pub fn softmax_weights(
        scores: &mut [i32],
        shift: i32,
        key_shift: &[i32],
        bias: &[i32],
        tables: &super::Tables,
        weights: &mut [u64],
    ) {
        super::softmax_weights_generic(scores, shift, key_shift, bias, tables, weights)
    }
    pub fn live_max(weights: &[u64], value_shift: &[i32]) -> i32 {
        super::live_max_generic(weights, value_shift)
    }
    pub fn divide_products(x: &[i32], gain: &[i32], d: u64, out: &mut [i32]) {
        super::divide_products_generic(x, gain, d, out)
    }
    pub fn rescale(x: &mut [i32], scale: &[i64], s: i32) {
        super::rescale_generic(x, scale, s)
    }
    pub fn probabilities(weights: &[u64], value_shift: &[i32], vmax: i32, inv: u64, probs: &mut [i32]) {
        super::probabilities_generic(weights, value_shift, vmax, inv, probs)
    }
    pub fn gelu(x: &mut [i32], tables: &super::Tables) {
        super::gelu_generic(x, tables)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A xorshift32 stream (seed made odd, so never 0).
    fn rng(seed: u32) -> impl FnMut() -> u32 {
        let mut x = seed | 1;
        move || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        }
    }

    fn vals(n: usize, seed: u32, max: i32) -> Vec<i16> {
        let mut next = rng(seed);
        (0..n).map(|_| ((next() % (2 * max as u32 + 1)) as i32 - max) as i16).collect()
    }

    #[test]
    fn simd_and_portable_give_the_same_integers() {
        // Batches of 1-3 rows and their tails after the blocks of 4, rows of `w` past blocks of 2 and 4.
        let shapes =
            [(1, 1, 16), (1, 9, 32), (2, 1024, 16), (3, 6, 64), (5, 3, 32), (32, 7, 256), (9, 66, 1024), (3, 2, 40)];
        for &(rows_x, rows_w, cols) in &shapes {
            let (x, w) = (vals(rows_x * cols, 7, 2047), vals(rows_w * cols, 9, 127));
            let (mut o1, mut o2) = (vec![0; rows_x * rows_w], vec![0; rows_x * rows_w]);
            matmul(&x, cols, &w, &mut o1);
            portable::matmul(&x, cols, &w, &mut o2);
            assert_eq!(o1, o2, "{rows_x} x {rows_w} x {cols}");
            // Where `matmul` took AVX-512 VNNI, the AVX-VNNI and AVX2 versions must agree too.
            #[cfg(target_arch = "x86_64")]
            if has_avx2() && cols.is_multiple_of(16) {
                // SAFETY: AVX2 is present; cols is a multiple of 16.
                unsafe { avx2::matmul(&x, cols, &w, &mut o1) };
                assert_eq!(o1, o2, "AVX2: {rows_x} x {rows_w} x {cols}");
                if has_avx_vnni() {
                    o1.fill(0);
                    // SAFETY: AVX-VNNI is present too.
                    unsafe { avx2::matmul_vnni(&x, cols, &w, &mut o1) };
                    assert_eq!(o1, o2, "AVX-VNNI: {rows_x} x {rows_w} x {cols}");
                }
            }
        }
    }

    /// The packed product against the row-major one (which ties the layout to its meaning),
    /// and every vector version against the portable one: batches past the tiles of 4 rows,
    /// matrices past the groups of 4 blocks and with a last block of fewer than 16 rows,
    /// columns not a multiple of 16.
    #[test]
    fn packed_products_give_the_same_integers() {
        let shapes = [(1, 1, 2), (1, 16, 32), (4, 64, 256), (5, 1024, 16), (9, 80, 64), (3, 35, 40), (8, 7, 1024)];
        for &(rows_x, rows_w, cols) in &shapes {
            let (x, w) = (vals(rows_x * cols, 7, 2047), vals(rows_w * cols, 9, 127));
            let m = Packed::new(&w.iter().map(|&v| v as i8).collect::<Vec<_>>(), rows_w, cols);
            let mut want = vec![0; rows_x * rows_w];
            portable::matmul(&x, cols, &w, &mut want);
            let mut got = vec![0; rows_x * rows_w];
            portable::matmul_packed(&x, &m, &mut got);
            assert_eq!(got, want, "portable: {rows_x} x {rows_w} x {cols}");
            type Product = unsafe fn(&[i16], &Packed, &mut [i32]);
            let mut versions: Vec<(&str, Product)> = vec![];
            #[cfg(target_arch = "x86_64")]
            {
                if has_avx2() {
                    versions.push(("AVX2", avx2::matmul_packed));
                }
                if has_avx_vnni() {
                    versions.push(("AVX-VNNI", avx2::matmul_packed_vnni));
                }
                if has_vnni() {
                    versions.push(("AVX-512 VNNI", vnni::matmul_packed));
                }
            }
            for (name, f) in versions {
                got.fill(-1);
                // SAFETY: the CPU has the instructions (checked above); the shapes fit.
                unsafe { f(&x, &m, &mut got) };
                assert_eq!(got, want, "{name}: {rows_x} x {rows_w} x {cols}");
            }
            got.fill(-1);
            matmul_packed(&x, &m, &mut got);
            assert_eq!(got, want, "dispatched: {rows_x} x {rows_w} x {cols}");
        }
    }

    /// Scores and weighted values through the cache layouts, against sums over the plain
    /// vectors and every vector version against the portable one: runs of every length from
    /// 1 to 70 slots (tails after the groups of 8, 16, 32 and 64; odd lengths, whose last pair
    /// of slots is half used) at even starts, heads of 16, 32 and 48 (the vector cases), 40
    /// and 15 (odd: keys padded to 16 dims), probabilities up to 2^19 and some negative.
    #[test]
    fn attention_kernels_give_the_plain_sums() {
        let window = 128;
        for hd in [16, 32, 48, 40, 15] {
            let hk = hd + hd % 2;
            let (plain_keys, plain_values) = (vals(window * hd, 5, 2047), vals(window * hd, 11, 2047));
            let (mut keys, mut values) = (vec![0; window * hk], vec![0; window * hd]);
            for slot in 0..window {
                let mut key = plain_keys[slot * hd..][..hd].to_vec();
                key.resize(hk, 0);
                put_key(&mut keys, slot, &key);
                put_value(&mut values, slot, &plain_values[slot * hd..][..hd]);
            }
            let mut q = vals(hd, 3, 2047);
            q.resize(hk, 0);
            for (start, len) in (1..=70).map(|len| (2 * (len % 3), len)) {
                let want: Vec<i32> =
                    (start..start + len).map(|s| dot_generic(&q[..hd], &plain_keys[s * hd..][..hd])).collect();
                let mut got = vec![0; len];
                scores(&q, &keys, start, &mut got);
                assert_eq!(got, want, "scores: head_dim {hd}, slots {start} + {len}");
                portable::scores(&q, &keys, start, &mut got);
                assert_eq!(got, want, "portable scores: head_dim {hd}, slots {start} + {len}");
                let probs: Vec<i32> =
                    (0..len as i32).map(|i| i * 99_991 % (1 << 19) - if i % 7 == 3 { 1 << 18 } else { 0 }).collect();
                let mut want = vec![3i32; hd];
                for (s, &p) in (start..).zip(&probs) {
                    for (a, &v) in want.iter_mut().zip(&plain_values[s * hd..][..hd]) {
                        *a = a.wrapping_add(p.wrapping_mul(i32::from(v)));
                    }
                }
                let mut got = vec![3; hd];
                weighted_sum(&probs, &values, start, &mut got);
                assert_eq!(got, want, "weighted sum: head_dim {hd}, slots {start} + {len}");
                got.fill(3);
                portable::weighted_sum(&probs, &values, start, &mut got);
                assert_eq!(got, want, "portable weighted sum: head_dim {hd}, slots {start} + {len}");
                #[cfg(target_arch = "x86_64")]
                if has_avx2() {
                    // Where the dispatch took AVX-512 VNNI, AVX2 must agree too.
                    let mut got = vec![0; len];
                    // SAFETY: AVX2 is present; the slots are in the window.
                    unsafe { avx2::scores(&q, &keys, start, &mut got) };
                    assert_eq!(got, want_scores(&q, &keys, start, len), "AVX2 scores: head_dim {hd}");
                    if hd % 16 == 0 {
                        let mut got = vec![3; hd];
                        // SAFETY: as above; head_dim is a multiple of 16, |p| < 2^30.
                        unsafe { avx2::weighted_sum(&probs, &values, start, &mut got) };
                        assert_eq!(got, want, "AVX2 weighted sum: head_dim {hd}, slots {start} + {len}");
                    }
                }
            }
        }
    }

    fn want_scores(q: &[i16], keys: &[i16], start: usize, len: usize) -> Vec<i32> {
        let mut out = vec![0; len];
        portable::scores(q, keys, start, &mut out);
        out
    }

    /// The attention softmax's vector versions against the portable ones, on windows whose
    /// lengths leave tails, with shifts inside and outside the vector case, logits near the
    /// i32 bounds (saturating bias), far apart (exponentials of 0) and gaps past 32.
    #[test]
    fn softmax_kernels_give_the_portable_integers() {
        let tables = Tables::new();
        let mut next = rng(0x2545_f491u32);
        for n in [1usize, 3, 4, 7, 8, 9, 31, 384, 641] {
            for (shift, spread, big) in [(16, 6, false), (20, 30, false), (3, 9, false), (16, 4, true), (40, 3, false)]
            {
                let scores: Vec<i32> =
                    (0..n).map(|_| if big { next() as i32 } else { (next() % (1 << 24)) as i32 - (1 << 23) }).collect();
                let key_shift: Vec<i32> = (0..n).map(|_| (next() % spread) as i32 - 2).collect();
                let bias: Vec<i32> = (0..n)
                    .map(|i| match i % 5 {
                        0 => i32::MAX - (next() % 4) as i32,
                        1 => i32::MIN + (next() % 4) as i32,
                        _ => (next() % 4096) as i32 - 2048,
                    })
                    .collect();
                let (mut s1, mut s2) = (scores.clone(), scores);
                let (mut w1, mut w2) = (vec![0; n], vec![0; n]);
                softmax_weights(&mut s1, shift, &key_shift, &bias, &tables, &mut w1);
                portable::softmax_weights(&mut s2, shift, &key_shift, &bias, &tables, &mut w2);
                assert_eq!((s1, &w1), (s2, &w2), "n {n}, shift {shift}, spread {spread}");
                let sum = w1.iter().sum::<u64>().max(1 << 30);
                let value_shift: Vec<i32> = (0..n).map(|_| (next() % 40) as i32 - 5).collect();
                let vmax = value_shift.iter().zip(&w1).filter(|(_, &w)| w > 0).map(|(&v, _)| v).max();
                assert_eq!(live_max(&w1, &value_shift), vmax.unwrap_or(i32::MIN), "n {n}, shift {shift}");
                // Slots without weight in every position of the vectors and the tail.
                let sparse: Vec<u64> = w1.iter().enumerate().map(|(i, &w)| if i % 3 == 0 { 0 } else { w }).collect();
                assert_eq!(live_max(&sparse, &value_shift), portable::live_max(&sparse, &value_shift));
                assert_eq!(live_max(&vec![0; n], &value_shift), i32::MIN);
                let vmax = vmax.unwrap_or(0);
                let (mut p1, mut p2) = (vec![0; n], vec![0; n]);
                probabilities(&w1, &value_shift, vmax, (1 << 51) / sum, &mut p1);
                portable::probabilities(&w1, &value_shift, vmax, (1 << 51) / sum, &mut p2);
                assert_eq!(p1, p2, "n {n}, shift {shift}");
            }
        }
    }

    /// RMSNorm's division against i64 division: every divisor size, quotients at and next to
    /// whole numbers, at and past the i32 clamp, both signs, the i32 extremes, tails after
    /// the groups of 4.
    #[test]
    fn divide_products_give_the_quotients_of_integer_division() {
        let mut next = rng(0x9E37_79B9u32);
        let divisors = [2, 3, 16, 17, 4095, 1 << 20, (1 << 20) + 3, (1 << 31) - 1, 1 << 31];
        let random: Vec<u64> = (0..40).map(|i| u64::from(next() >> (i % 31)).clamp(2, 1 << 31)).collect();
        for d in divisors.into_iter().chain(random) {
            let mut xs: Vec<i32> = vec![];
            let mut gs: Vec<i32> = vec![];
            let di = d as i64;
            for k in [0i64, 1, 2, 1000, (1 << 31) - 1, 1 << 31, (1 << 31) + 1] {
                // x = k d + e with gain 1 (when it fits), and x = k with gain d (when that fits).
                for e in [-1, 0, 1, di - 1] {
                    for sign in [1, -1] {
                        if let Ok(v) = i32::try_from(sign * (k * di + e)) {
                            xs.push(v);
                            gs.push(if xs.len().is_multiple_of(2) { 1 } else { -1 });
                        }
                    }
                }
                if let (Ok(v), Ok(g)) = (i32::try_from(k), i32::try_from(di)) {
                    xs.extend([v, -v, v]);
                    gs.extend([g, g, -g]);
                }
            }
            for _ in 0..300 {
                let big = |n: u32| {
                    if n.is_multiple_of(7) {
                        [i32::MIN, i32::MAX, -1, 0][(n / 7 % 4) as usize]
                    } else {
                        (n >> (n % 31)) as i32
                    }
                };
                let v = big(next());
                xs.push(if next().is_multiple_of(2) { v } else { v.wrapping_neg() });
                gs.push(big(next()));
            }
            if d == (1 << 31) - 1 {
                // d is prime: with g = -1 / x mod d, x g / d falls 1/d short of a whole number,
                // closer than the f64 guess can tell (the remainder corrects it downward).
                let pow = |mut b: u64, mut e: u64| {
                    let mut r = 1;
                    while e > 0 {
                        (r, b, e) = (if e & 1 == 1 { r * b % d } else { r }, b * b % d, e >> 1);
                    }
                    r
                };
                for _ in 0..200 {
                    let v = u64::from(next() >> 1).max(2) % d;
                    xs.push(v as i32);
                    gs.push((d - pow(v, d - 2)) as i32);
                }
            }
            xs.push(7); // a tail
            gs.push(-3);
            let (mut got, mut want) = (vec![0; xs.len()], vec![0; xs.len()]);
            divide_products(&xs, &gs, d, &mut got);
            portable::divide_products(&xs, &gs, d, &mut want);
            for i in 0..xs.len() {
                let exact = (i64::from(xs[i]) * i64::from(gs[i]) / di).clamp(i32::MIN.into(), i32::MAX.into()) as i32;
                assert_eq!((got[i], want[i]), (exact, exact), "{} * {} / {d}", xs[i], gs[i]);
            }
        }
    }

    /// The rescale's vector version against `shift_round`: every shift it takes and the
    /// ones it leaves to the scalar code, products at the i64 and i32 limits, tails.
    #[test]
    fn rescale_gives_the_rounded_shifts() {
        let mut next = rng(0x1234_5679u32);
        for s in [-3, 0, 1, 2, 3, 13, 24, 35, 40, 62, 63] {
            for n in [1, 8, 13, 256] {
                // Scales up to 2^31 in magnitude, so that product and rounding term fit i64
                // (the engine's reach 2^32, MAX_ROW_SCALE in Q24, with smaller sums); values
                // of every size.
                let scale: Vec<i64> = (0..n)
                    .map(|i| match i % 4 {
                        0 => 1 << 31,
                        1 => -(1 << 31),
                        _ => (i64::from(next()) >> (next() % 32)) * if next().is_multiple_of(2) { 1 } else { -1 },
                    })
                    .collect();
                let vals: Vec<i32> = (0..n)
                    .map(|i| {
                        if i % 5 == 0 {
                            [i32::MIN, i32::MAX, 0, -1][i / 5 % 4]
                        } else {
                            (next() as i32) >> (next() % 31)
                        }
                    })
                    .collect();
                let (mut got, mut want) = (vals.clone(), vals);
                rescale(&mut got, &scale, s);
                portable::rescale(&mut want, &scale, s);
                assert_eq!(got, want, "s {s}, n {n}");
            }
        }
    }

    /// GELU's vector version against the scalar one: every value the table covers, the
    /// values around the table's bounds, the i32 extremes, and a tail after the groups of 8.
    #[test]
    fn gelu_kernel_gives_the_table_values() {
        let tables = Tables::new();
        let lo = super::super::fixed::GELU_LO;
        let edges =
            [i32::MIN, i32::MIN + 1, lo - 1, lo, lo + 1, -1, 0, 1, -lo - 1, -lo, -lo + 1, i32::MAX - 1, i32::MAX];
        let mut x: Vec<i32> = (lo - 200..-lo + 200).chain(edges).collect();
        x.push(12_345);
        let want: Vec<i32> = x.iter().map(|&v| tables.gelu(v)).collect();
        let mut got = x.clone();
        gelu(&mut got, &tables);
        assert_eq!(got, want);
        portable::gelu(&mut x, &tables);
        assert_eq!(x, want);
    }

    /// Slots outside the window, or layouts that do not fit, are a panic, never a read outside
    /// the cache: release builds run the SIMD loads unchecked.
    #[test]
    fn attention_kernels_check_their_slots_in_release_builds() {
        let (q, cache) = (vals(16, 3, 2047), vals(16 * 64, 5, 2047));
        let panics = |f: &dyn Fn()| {
            *std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_err().downcast::<&str>().unwrap()
        };
        let bad_scores: [(&[i16], &[i16], usize, usize); 4] =
            [(&q, &cache, 60, 5), (&q, &cache[1..], 0, 8), (&q[1..], &cache, 0, 8), (&q, &cache, usize::MAX, 2)];
        for (q, keys, start, n) in bad_scores {
            let msg = panics(&|| scores(q, keys, start, &mut vec![0; n]));
            assert_eq!(msg, "attention scores: the slots are not in the keys' window", "{start} + {n}");
        }
        let bad_values: [(&[i16], usize, usize); 4] =
            [(&cache, 60, 5), (&cache[16..], 0, 8), (&cache, 1, 8), (&cache, 64, 1)];
        for (values, start, n) in bad_values {
            let msg = panics(&|| weighted_sum(&vec![1; n], values, start, &mut [0; 16]));
            assert_eq!(msg, "attention values: the slots are not in the values' window", "{start} + {n}");
        }
        // The last slots of the window are accepted.
        scores(&q, &cache, 56, &mut [0; 8]);
        weighted_sum(&[1; 8], &cache, 56, &mut [0; 16]);
    }

    #[test]
    fn sums_at_the_engine_limits_do_not_overflow() {
        use crate::model::spec::{MAX_HEAD_DIM, MAX_ROW};
        let top = 2047i16;
        let (q, keys) = (vec![top; MAX_HEAD_DIM], vec![top; MAX_HEAD_DIM * 9]);
        let mut s = vec![0; 9];
        scores(&q, &keys, 0, &mut s);
        assert!(s.iter().all(|&v| i64::from(v) == MAX_HEAD_DIM as i64 * 2047 * 2047), "{s:?}");
        let (x, w) = (vec![-top; MAX_ROW * 5], vec![-128i16; MAX_ROW * 3]);
        let mut o = vec![0; 15];
        matmul(&x, MAX_ROW, &w, &mut o);
        assert!(o.iter().all(|&v| i64::from(v) == MAX_ROW as i64 * 2047 * 128), "{o:?}");
        let m = Packed::new(&vec![-128i8; MAX_ROW * 3], 3, MAX_ROW);
        matmul_packed(&x, &m, &mut o);
        assert!(o.iter().all(|&v| i64::from(v) == MAX_ROW as i64 * 2047 * 128), "{o:?}");
    }
}
