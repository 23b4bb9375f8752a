//! The matrix product with AVX-512 VNNI: `vpdpwssd` multiplies 32 pairs of i16 and adds the
//! pair sums into 16 i32 lanes in one instruction, the same integers as AVX2's `vpmaddwd`
//! followed by `vpaddd` at twice the width.

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
    super::portable::rescale(&mut x[full..], &scale[full..], s);
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
unsafe fn packed_tile<const R: usize, const J: usize>(x: &[i16], m: &Packed, out: &mut [i32], r0: usize, b0: usize) {
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
