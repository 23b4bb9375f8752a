//! The portable definitions of the kernels: the reference every SIMD version must equal
//! (tests check each one against these), and what runs where no SIMD version applies.

use super::super::fixed::{shift_round, Divider, Tables};
use super::Packed;

#[inline(always)]
pub fn dot(a: &[i16], b: &[i16]) -> i32 {
    a.iter().zip(b).map(|(&x, &y)| i32::from(x) * i32::from(y)).fold(0, |s, v| s.wrapping_add(v))
}

/// `out[r * w_rows + j] = dot(x[r], w[j])` for every row r of `x` and row j of `w`.
#[inline(always)]
pub fn matmul(x: &[i16], cols: usize, w: &[i16], out: &mut [i32]) {
    let rows = w.len() / cols;
    for (j, wj) in w.chunks_exact(cols).enumerate() {
        for (r, xr) in x.chunks_exact(cols).enumerate() {
            out[r * rows + j] = dot(xr, wj);
        }
    }
}

/// `out[r * rows + j] = dot(x[r], row j of m)` for every row r of `x`.
#[inline(always)]
// arm64 always runs the NEON version; the tests compare it with this one.
#[cfg_attr(target_arch = "aarch64", allow(dead_code))]
pub fn matmul_packed(x: &[i16], m: &Packed, out: &mut [i32]) {
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
pub fn scores(q: &[i16], keys: &[i16], start: usize, out: &mut [i32]) {
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
pub fn weighted_sum(probs: &[i32], values: &[i16], start: usize, acc: &mut [i32]) {
    let hd = acc.len();
    for (s, &p) in probs.iter().enumerate() {
        let slot = start + s;
        let row = &values[slot / 2 * 2 * hd..][..2 * hd];
        for (a, &v) in acc.iter_mut().zip(row.iter().skip(slot % 2).step_by(2)) {
            *a = a.wrapping_add(p.wrapping_mul(i32::from(v)));
        }
    }
}

/// One attention head's logits and their exponentials: `scores[i]` becomes the logit
/// `shift_round(scores[i], shift - key_shift[i])` plus `bias[i]` (saturating), and
/// `weights[i] = exp_neg(max - logit)` with `max` the largest logit.
#[inline(always)]
pub fn softmax_weights(
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
pub fn gelu(x: &mut [i32], tables: &Tables) {
    x.iter_mut().for_each(|v| *v = tables.gelu(*v));
}

/// `x[i] * gain[i] / d` (d in 2..=2^31) rounded toward zero, as `/` on i64 does, clamped to
/// i32: RMSNorm's scaling.
#[inline(always)]
pub fn divide_products(x: &[i32], gain: &[i32], d: u64, out: &mut [i32]) {
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
pub fn rescale(x: &mut [i32], scale: &[i64], s: i32) {
    for (o, &f) in x.iter_mut().zip(scale) {
        *o = shift_round(i64::from(*o) * f, s);
    }
}

/// The largest value shift among the slots with weight (`i32::MIN` if none): the scale the
/// attention's weighted values are summed at.
#[inline(always)]
pub fn live_max(weights: &[u64], value_shift: &[i32]) -> i32 {
    value_shift.iter().zip(weights).fold(i32::MIN, |m, (&v, &w)| m.max(if w > 0 { v } else { i32::MIN }))
}

/// Probabilities in Q19 from `weights` times `inv` (2^51 / their sum), each scaled down by
/// its value's shift below `vmax`, the largest shift among the slots with weight.
#[inline(always)]
pub fn probabilities(weights: &[u64], value_shift: &[i32], vmax: i32, inv: u64, probs: &mut [i32]) {
    for ((pr, &w), &vs) in probs.iter_mut().zip(weights).zip(value_shift) {
        let gap = (vmax - vs) as u32;
        *pr = if gap >= 32 { 0 } else { ((w * inv) >> (32 + gap)) as i32 };
    }
}
