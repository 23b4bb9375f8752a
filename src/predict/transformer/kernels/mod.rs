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

use super::fixed::Tables;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "aarch64")]
mod neon;
mod portable;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod vnni;

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
            out[r * wr + j] = portable::dot(&x[r * cols..][..cols], &w[j * cols..][..cols]);
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
    ($name:ident($($arg:expr),*), $generic:path) => {{
        #[cfg(target_arch = "x86_64")]
        if has_avx2() {
            // SAFETY: AVX2 is present.
            return unsafe { avx2::$name($($arg),*) };
        }
        $generic($($arg),*)
    }};
    // The same, on arm64 the NEON version instead.
    (neon $name:ident($($arg:expr),*), $generic:path) => {{
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
        return portable::matmul(x, cols, w, out);
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
    dispatch!(matmul(x, cols, w, out), portable::matmul)
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
    dispatch!(neon matmul_packed(x, m, out), portable::matmul_packed)
}

/// See `portable::scores`. Panics unless `q` has an even, nonzero length, `keys` whole slots of
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
    dispatch!(neon scores(q, keys, start, out), portable::scores)
}

/// See `portable::weighted_sum`. Panics unless `values` holds whole pairs of slots of
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
    portable::weighted_sum(probs, values, start, acc)
}

/// See `portable::softmax_weights`. Panics unless the slices have one length.
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
    portable::softmax_weights(scores, shift, key_shift, bias, tables, weights)
}

/// See `portable::gelu`.
#[inline(always)]
pub fn gelu(x: &mut [i32], tables: &Tables) {
    dispatch!(gelu(x, tables), portable::gelu)
}

/// See `portable::divide_products`. Panics unless the slices have one length and d is in
/// 2..=2^31.
#[inline(always)]
pub fn divide_products(x: &[i32], gain: &[i32], d: u64, out: &mut [i32]) {
    assert!(x.len() == gain.len() && x.len() == out.len(), "divide_products: slices of one length");
    assert!((2..=1 << 31).contains(&d), "divide_products: a divisor in 2..=2^31");
    dispatch!(divide_products(x, gain, d, out), portable::divide_products)
}

// rms_norm's divisor is at least 2 (`Divider`).
const _: () = assert!(crate::network::spec::NORM_EPS_LOG2 <= 22);

/// RMSNorm in Q12: `x / sqrt(mean(x^2) + 2^-16) * gain`.
#[inline(always)]
pub fn rms_norm(x: &[i32], gain_q12: &[i32], out: &mut [i32]) {
    divide_products(x, gain_q12, rms(x), out);
}

/// The divisor of `rms_norm`, `isqrt(floor(sum x^2 / n) + 2^(24 - NORM_EPS_LOG2))` (Q12).
pub fn rms(x: &[i32]) -> u64 {
    let sum: u128 = x.iter().map(|&v| (i64::from(v) * i64::from(v)) as u128).sum();
    let mean_q24 = sum / x.len() as u128 + (1 << (24 - crate::network::spec::NORM_EPS_LOG2));
    // At least 16: the mean is at least 2^(24 - NORM_EPS_LOG2) = 256; at most 2^31, the
    // mean being below 2^62.
    mean_q24.isqrt() as u64
}

/// See `portable::rescale`. Panics unless the slices have one length.
#[inline(always)]
pub fn rescale(x: &mut [i32], scale: &[i64], s: i32) {
    assert_eq!(x.len(), scale.len(), "rescale: slices of one length");
    #[cfg(target_arch = "x86_64")]
    if (1..=62).contains(&s) && std::is_x86_feature_detected!("avx512dq") {
        // SAFETY: AVX-512 F and DQ are present (DQ implies F); the lengths are checked above.
        return unsafe { vnni::rescale(x, scale, s) };
    }
    portable::rescale(x, scale, s)
}

/// See `portable::live_max`. Panics unless the slices have one length.
#[inline(always)]
pub fn live_max(weights: &[u64], value_shift: &[i32]) -> i32 {
    assert_eq!(weights.len(), value_shift.len(), "live_max: slices of one length");
    dispatch!(live_max(weights, value_shift), portable::live_max)
}

/// See `portable::probabilities`. Panics unless the slices have one length.
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
    portable::probabilities(weights, value_shift, vmax, inv, probs)
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
    let s = (0..n).fold(0i32, |s, _| s.wrapping_add(portable::dot(std::hint::black_box(&a), &b)));
    std::hint::black_box(s);
    (n * 256) as f64 / t.elapsed().as_secs_f64()
}
