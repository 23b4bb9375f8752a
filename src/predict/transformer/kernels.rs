//! The integer inner loops. Each has one portable definition; on x86-64 with AVX2 a second
//! version (intrinsics for the matrix product and attention, the portable code recompiled
//! with AVX2 for the dot product), and for the matrix product AVX-512 VNNI or else AVX-VNNI
//! (both `vpdpwssd`), is chosen at run time. Integer sums do not depend on their order, so
//! every version gives the same integers (a test checks it).
//!
//! Bounds: activations |a| <= 2047, weights -128..=127, rows of at most 8192 and heads of at
//! most 512 (`model::spec`'s limits, enforced when weights load): no i32 sum overflows.
//!
//! Safety: each public function is safe for any arguments. The SIMD versions are private;
//! their public entry points check, once per call, what their raw loads rely on.

use super::fixed::{shift_round, Tables};

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

/// `out[i] = dot(q, keys[i])` for the keys laid end to end in `keys`: attention scores.
#[inline(always)]
fn scores_generic(q: &[i16], keys: &[i16], out: &mut [i32]) {
    for (o, k) in out.iter_mut().zip(keys.chunks_exact(q.len())) {
        *o = dot_generic(q, k);
    }
}

/// `acc += sum_i probs[i] * values[i]` for the values laid end to end in `values`.
#[inline(always)]
fn weighted_sum_generic(probs: &[i32], values: &[i16], acc: &mut [i32]) {
    for (&p, v) in probs.iter().zip(values.chunks_exact(acc.len())) {
        if p != 0 {
            for (a, &v) in acc.iter_mut().zip(v) {
                *a = a.wrapping_add(p.wrapping_mul(i32::from(v)));
            }
        }
    }
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
    use super::Tables;
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

    /// `probabilities` on 4 u64 lanes: `w * inv < 2^52` is one `vpmuludq` (both below 2^32),
    /// and `vpsrlvq` by `32 + gap` gives 0 for gaps of 32 or more, as the scalar code does; a
    /// negative gap only occurs where the weight is 0.
    #[target_feature(enable = "avx2")]
    pub unsafe fn probabilities(weights: &[u64], value_shift: &[i32], vmax: i32, inv: u64, probs: &mut [i32]) {
        let n = weights.len();
        let full4 = n / 4 * 4;
        let (invv, vmaxq, thirty_two) = (_mm256_set1_epi64x(inv as i64), _mm_set1_epi32(vmax), _mm256_set1_epi64x(32));
        let low_halves = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
        for i in (0..full4).step_by(4) {
            let w = _mm256_loadu_si256(weights.as_ptr().add(i) as *const __m256i);
            let vs = _mm_loadu_si128(value_shift.as_ptr().add(i) as *const __m128i);
            let gap = _mm256_cvtepi32_epi64(_mm_sub_epi32(vmaxq, vs));
            let p = _mm256_srlv_epi64(_mm256_mul_epu32(w, invv), _mm256_add_epi64(gap, thirty_two));
            let packed = _mm256_permutevar8x32_epi32(p, low_halves);
            _mm_storeu_si128(probs.as_mut_ptr().add(i) as *mut __m128i, _mm256_castsi256_si128(packed));
        }
        super::probabilities_generic(&weights[full4..], &value_shift[full4..], vmax, inv, &mut probs[full4..]);
    }

    #[target_feature(enable = "avx2")]
    pub unsafe fn dot(a: &[i16], b: &[i16]) -> i32 {
        super::dot_generic(a, b)
    }

    /// Scores of 8 keys at a time: their multiply-add sums reduced together by `vphaddd`
    /// instead of one horizontal sum per key. The caller checked `keys.len() == out.len() *
    /// q.len()`; `q.len()` must be a multiple of 16.
    #[target_feature(enable = "avx2")]
    pub unsafe fn scores(q: &[i16], keys: &[i16], out: &mut [i32]) {
        let n = q.len();
        if !n.is_multiple_of(16) {
            return super::scores_generic(q, keys, out);
        }
        let full = out.len() / 8 * 8;
        for (g, o) in out[..full].chunks_exact_mut(8).enumerate() {
            let mut acc = [_mm256_setzero_si256(); 8];
            for c in (0..n).step_by(16) {
                let qv = _mm256_loadu_si256(q.as_ptr().add(c) as *const __m256i);
                for (k, a) in acc.iter_mut().enumerate() {
                    // In bounds: key 8g + k < out.len(), and keys holds out.len() keys.
                    let kv = _mm256_loadu_si256(keys.as_ptr().add((8 * g + k) * n + c) as *const __m256i);
                    *a = _mm256_add_epi32(*a, _mm256_madd_epi16(qv, kv));
                }
            }
            let h01 = _mm256_hadd_epi32(acc[0], acc[1]);
            let h23 = _mm256_hadd_epi32(acc[2], acc[3]);
            let h45 = _mm256_hadd_epi32(acc[4], acc[5]);
            let h67 = _mm256_hadd_epi32(acc[6], acc[7]);
            let h0123 = _mm256_hadd_epi32(h01, h23);
            let h4567 = _mm256_hadd_epi32(h45, h67);
            // Each 128-bit half holds partial sums of keys 0-3 (then 4-7): add the halves.
            let lo = _mm256_permute2x128_si256(h0123, h4567, 0x20);
            let hi = _mm256_permute2x128_si256(h0123, h4567, 0x31);
            _mm256_storeu_si256(o.as_mut_ptr() as *mut __m256i, _mm256_add_epi32(lo, hi));
        }
        super::scores_generic(q, &keys[full * n..], &mut out[full..])
    }

    /// The weighted values with the accumulator in registers, 32 (or 16) of its lanes at a
    /// time: each slot's values widened to i32 (`vpmovsxwd`) and multiplied by its probability
    /// (`vpmulld`, the low 32 bits of the product, as `wrapping_mul`). The caller checked
    /// `values.len() == probs.len() * acc.len()`; `acc.len()` must be a multiple of 16.
    #[target_feature(enable = "avx2")]
    pub unsafe fn weighted_sum(probs: &[i32], values: &[i16], acc: &mut [i32]) {
        let n = acc.len();
        if !n.is_multiple_of(16) {
            return super::weighted_sum_generic(probs, values, acc);
        }
        let wide = n / 32 * 32;
        for c in (0..wide).step_by(32) {
            weighted_lanes::<4>(probs, values, acc, c);
        }
        if wide < n {
            weighted_lanes::<2>(probs, values, acc, wide);
        }
    }

    /// Lanes `c..c + 8 * R` of `weighted_sum`.
    #[inline(always)]
    unsafe fn weighted_lanes<const R: usize>(probs: &[i32], values: &[i16], acc: &mut [i32], c: usize) {
        let n = acc.len();
        let mut a: [__m256i; R] = std::array::from_fn(|k| _mm256_loadu_si256(acc.as_ptr().add(c + 8 * k) as *const _));
        for (i, &p) in probs.iter().enumerate() {
            if p != 0 {
                let pv = _mm256_set1_epi32(p);
                // In bounds: slot i < probs.len(), and values holds probs.len() rows of n.
                let row = values.as_ptr().add(i * n + c);
                for (k, a) in a.iter_mut().enumerate() {
                    let v = _mm256_cvtepi16_epi32(_mm_loadu_si128(row.add(8 * k) as *const __m128i));
                    *a = _mm256_add_epi32(*a, _mm256_mullo_epi32(pv, v));
                }
            }
        }
        for (k, a) in a.iter().enumerate() {
            _mm256_storeu_si256(acc.as_mut_ptr().add(c + 8 * k) as *mut __m256i, *a);
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
    use std::arch::x86_64::*;

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
fn has_avx2() -> bool {
    std::is_x86_feature_detected!("avx2")
}

/// Dispatch to the AVX2 version when the CPU has it.
macro_rules! dispatch {
    ($name:ident($($arg:expr),*), $generic:ident) => {{
        #[cfg(target_arch = "x86_64")]
        if has_avx2() {
            // SAFETY: AVX2 is present.
            return unsafe { avx2::$name($($arg),*) };
        }
        $generic($($arg),*)
    }};
}

pub fn dot(a: &[i16], b: &[i16]) -> i32 {
    debug_assert_eq!(a.len(), b.len());
    dispatch!(dot(a, b), dot_generic)
}

/// `x` holds rows of `cols`, `w` holds rows of `cols`; `out` gets `[x rows, w rows]`.
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

/// Panics unless `keys` holds exactly `out.len()` keys of `q.len()`: checked once per call,
/// because the AVX2 version reads through raw pointers.
pub fn scores(q: &[i16], keys: &[i16], out: &mut [i32]) {
    assert!(out.len().checked_mul(q.len()) == Some(keys.len()), "attention scores: the keys are not one per score");
    dispatch!(scores(q, keys, out), scores_generic)
}

/// See `softmax_weights_generic`. Panics unless the slices have one length.
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

/// See `probabilities_generic`. Panics unless the slices have one length.
pub fn probabilities(weights: &[u64], value_shift: &[i32], vmax: i32, inv: u64, probs: &mut [i32]) {
    let n = weights.len();
    assert!(value_shift.len() == n && probs.len() == n, "probabilities: slices of one length");
    // The AVX2 version's single multiply needs both factors below 2^32.
    #[cfg(target_arch = "x86_64")]
    if has_avx2() && inv < 1 << 32 && weights.iter().all(|&w| w < 1 << 32) {
        // SAFETY: AVX2 is present; the slices have one length, checked above.
        return unsafe { avx2::probabilities(weights, value_shift, vmax, inv, probs) };
    }
    probabilities_generic(weights, value_shift, vmax, inv, probs)
}

/// Panics unless `values` holds exactly `probs.len()` values of `acc.len()`.
pub fn weighted_sum(probs: &[i32], values: &[i16], acc: &mut [i32]) {
    assert!(
        probs.len().checked_mul(acc.len()) == Some(values.len()),
        "attention values: the values are not one per probability"
    );
    dispatch!(weighted_sum(probs, values, acc), weighted_sum_generic)
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
    pub fn dot(a: &[i16], b: &[i16]) -> i32 {
        super::dot_generic(a, b)
    }
    pub fn matmul(x: &[i16], cols: usize, w: &[i16], out: &mut [i32]) {
        super::matmul_generic(x, cols, w, out)
    }
    pub fn scores(q: &[i16], keys: &[i16], out: &mut [i32]) {
        super::scores_generic(q, keys, out)
    }
    pub fn weighted_sum(probs: &[i32], values: &[i16], acc: &mut [i32]) {
        super::weighted_sum_generic(probs, values, acc)
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
    pub fn probabilities(weights: &[u64], value_shift: &[i32], vmax: i32, inv: u64, probs: &mut [i32]) {
        super::probabilities_generic(weights, value_shift, vmax, inv, probs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vals(n: usize, seed: u32, max: i32) -> Vec<i16> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                ((x % (2 * max as u32 + 1)) as i32 - max) as i16
            })
            .collect()
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
            assert_eq!(dot(&x[..cols], &w[..cols]), portable::dot(&x[..cols], &w[..cols]));
        }
        // 43 keys (a tail after the groups of 8), heads of 16, 32 and 48 (the vector cases,
        // 48 with a 16-lane tail) and 40 (not).
        for hd in [16, 32, 40, 48] {
            let (q, keys) = (vals(hd, 3, 2047), vals(hd * 43, 5, 2047));
            let (mut s1, mut s2) = (vec![0; 43], vec![0; 43]);
            scores(&q, &keys, &mut s1);
            portable::scores(&q, &keys, &mut s2);
            assert_eq!(s1, s2, "head_dim {hd}");
            let probs: Vec<i32> = (0..43).map(|i| i * 99_991 % (1 << 19)).collect();
            let (mut a1, mut a2) = (vec![3; hd], vec![3; hd]);
            weighted_sum(&probs, &keys, &mut a1);
            portable::weighted_sum(&probs, &keys, &mut a2);
            assert_eq!(a1, a2, "head_dim {hd}");
        }
    }

    /// The attention softmax's vector versions against the portable ones, on windows whose
    /// lengths leave tails, with shifts inside and outside the vector case, logits near the
    /// i32 bounds (saturating bias), far apart (exponentials of 0) and gaps past 32.
    #[test]
    fn softmax_kernels_give_the_portable_integers() {
        let tables = Tables::new();
        let mut x = 0x2545_f491u32;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
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
                let vmax = value_shift.iter().zip(&w1).filter(|(_, &w)| w > 0).map(|(&v, _)| v).max().unwrap_or(0);
                let (mut p1, mut p2) = (vec![0; n], vec![0; n]);
                probabilities(&w1, &value_shift, vmax, (1 << 51) / sum, &mut p1);
                portable::probabilities(&w1, &value_shift, vmax, (1 << 51) / sum, &mut p2);
                assert_eq!(p1, p2, "n {n}, shift {shift}");
            }
        }
    }

    /// Keys that do not match the scores one to one are a panic, never a read outside `keys`:
    /// release builds run the AVX2 loads unchecked. Eight scores reach the SIMD loop.
    #[test]
    fn attention_kernels_check_their_lengths_in_release_builds() {
        let q = vals(16, 3, 2047);
        for len in [16 * 8 - 1, 16 * 7, 16 * 9] {
            let keys = vals(len, 5, 2047);
            let caught = std::panic::catch_unwind(|| scores(&q, &keys, &mut [0; 8]));
            let msg = *caught.unwrap_err().downcast::<&str>().unwrap();
            assert_eq!(msg, "attention scores: the keys are not one per score", "{len} values");
            let caught = std::panic::catch_unwind(|| weighted_sum(&[1; 8], &keys, &mut [0; 16]));
            let msg = *caught.unwrap_err().downcast::<&str>().unwrap();
            assert_eq!(msg, "attention values: the values are not one per probability", "{len} values");
        }
        // Exactly one key per score is accepted.
        scores(&q, &vals(16 * 8, 5, 2047), &mut [0; 8]);
    }

    #[test]
    fn sums_at_the_engine_limits_do_not_overflow() {
        use crate::model::spec::{MAX_HEAD_DIM, MAX_ROW};
        let top = 2047i16;
        let (q, keys) = (vec![top; MAX_HEAD_DIM], vec![top; MAX_HEAD_DIM * 9]);
        let mut s = vec![0; 9];
        scores(&q, &keys, &mut s);
        assert!(s.iter().all(|&v| i64::from(v) == MAX_HEAD_DIM as i64 * 2047 * 2047), "{s:?}");
        let (x, w) = (vec![-top; MAX_ROW * 5], vec![-128i16; MAX_ROW * 3]);
        let mut o = vec![0; 15];
        matmul(&x, MAX_ROW, &w, &mut o);
        assert!(o.iter().all(|&v| i64::from(v) == MAX_ROW as i64 * 2047 * 128), "{o:?}");
    }
}
