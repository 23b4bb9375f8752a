//! The matrix product and attention with NEON, part of every arm64 CPU (so chosen without a
//! run-time check): the same layouts as on x86-64, `ld2` splitting each pair of columns (or
//! of dims, or of slots) into two vectors, and widening multiply-adds (`smlal`) into i32
//! lanes.

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
    super::portable::scores(q, keys, start + full, &mut out[full..]);
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
