//! The kernels with AVX2 intrinsics (every x86-64-v3 CPU), chosen at run time where the CPU
//! has them; each equals its portable definition (`portable.rs`).

use super::super::fixed::{shift_round, LOG2_E_Q24};
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
        scores[i] = shift_round(i64::from(scores[i]), shift - key_shift[i]).saturating_add(bias[i]);
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
    super::portable::gelu(&mut x[full..], tables);
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
    super::portable::probabilities(&weights[full4..], &value_shift[full4..], vmax, inv, &mut probs[full4..]);
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
        let guess =
            _mm256_mul_pd(_mm256_andnot_pd(sign_bit, _mm256_mul_pd(_mm256_cvtepi32_pd(v), _mm256_cvtepi32_pd(g))), inv);
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
    super::portable::divide_products(&x[full4..], &gain[full4..], d, &mut out[full4..]);
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
    lanes.into_iter().fold(super::portable::live_max(&weights[full4..], &value_shift[full4..]), i32::max)
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
    super::portable::scores(q, keys, start + g, &mut out[g..]);
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
unsafe fn packed_tile<const VNNI: bool, const R: usize>(x: &[i16], m: &Packed, out: &mut [i32], r0: usize, b: usize) {
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
