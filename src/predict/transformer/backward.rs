//! The integer backward pass of online adaptation (FORMAT.md section 3.4): from the gradient
//! of the logits to the three input embeddings, through the output matrix, the final norm
//! and the residual stream's skip connections.
//!
//! The step treats every layer as passing the gradient of the last residual stream straight
//! through to the first: the change of an input row is the gradient of the residual stream
//! the element ends with. In float (`train/examples/dynamic_eval.rs --residual`) that step
//! gains as much as the embeddings' true gradient, which would need the whole network's
//! backward pass, attention over the cache included; here it costs about a thousandth of a
//! forward step. Everything is exact integer arithmetic (i128 where products can grow), so
//! every machine makes the same update.

use super::fixed::shift_round;
use super::kernels;
use super::{Session, Transformer};
use crate::data::TOKENS_PER_FRAME;
use crate::network::spec::INPUT_VOCAB;

/// Rows of a session's input change: `tok_prev`'s, then `tok_same`'s, then `pos`'s.
pub const INPUT_ROWS: usize = 2 * INPUT_VOCAB + TOKENS_PER_FRAME;

/// Before its step, a row's change loses 2^-5 of itself, so it stays near the trained
/// embedding (README, "Online adaptation": without it the clip's training frames, which the
/// network fits, coded 4.0% larger than frozen in the mix, with it 0.6%; the held-out frames
/// 2.7% and 2.5% smaller).
const FORGET_BITS: u32 = 5;

/// Where the rows `[prev, same, pos]` of the three embeddings lie in the input change.
fn change_rows([prev, same, pos]: [usize; 3]) -> [usize; 3] {
    [prev, INPUT_VOCAB + same, 2 * INPUT_VOCAB + pos]
}

/// `x_i = sat32(x_i + shift_round(sum of the three rows' changes at i, 12))`: the element's
/// input (Q12) with what its rows have learnt (Q24).
pub(super) fn add_input_changes(changes: &[i32], rows: [usize; 3], x: &mut [i32]) {
    let d = x.len();
    let rows = change_rows(rows).map(|r| &changes[r * d..][..d]);
    for (i, v) in x.iter_mut().enumerate() {
        let sum: i64 = rows.iter().map(|r| i64::from(r[i])).sum();
        *v = v.saturating_add(shift_round(sum, 12));
    }
}

fn sat32(x: i128) -> i32 {
    x.clamp(i32::MIN.into(), i32::MAX.into()) as i32
}

impl Transformer {
    /// After the element that predicts the session's next token was coded: one step of rate
    /// `2^-rate` on the rows it read, from `grads`, the nonzero gradients of its logits
    /// (`(token, g)`, Q6), and `residual`, its last residual row (Q12). The session's tokens
    /// do not yet hold the coded token.
    pub fn learn_inputs_step(&self, session: &mut Session, grads: &[(usize, i32)], residual: &[i32], rate: u32) {
        let d = self.spec.width;
        // The gradient of the normalized row: the output matrix's rows (the Q12 table of
        // `tok_same`) weighted by g, Q18.
        let mut dh = vec![0i64; d];
        for &(v, g) in grads {
            for (a, &e) in dh.iter_mut().zip(&self.tok_same[v * d..][..d]) {
                *a += i64::from(g) * i64::from(e);
            }
        }
        let dh: Vec<i32> = dh.into_iter().map(|a| sat32(a.into())).collect();
        let r = i128::from(kernels::rms(residual));
        // The residual's gradient is U / (R 2^18); the change, Q24, moves by 2^-rate of it.
        let step: Vec<i128> =
            norm_backward(residual, &self.norm_out, &dh, r).iter().map(|&u| floor_div(u << 6, r << rate)).collect();
        for row in change_rows(super::inputs(&session.tokens)) {
            for (m, &s) in session.inputs[row * d..][..d].iter_mut().zip(&step) {
                let m0 = i128::from(*m);
                *m = sat32(m0 - (m0 >> FORGET_BITS) - s);
            }
        }
    }
}

/// RMS norm's backward, but for the final division by its divisor `R` (`kernels::rms`):
/// `U_j = A_j - floor(X_j c / 2^16)` with `A = gain * dh` (Q30) and
/// `c = floor(2^16 sum_i X_i A_i / (n R^2))` (clamped to i64).
fn norm_backward(x: &[i32], gain: &[i32], dh: &[i32], r: i128) -> Vec<i128> {
    let a: Vec<i128> = gain.iter().zip(dh).map(|(&g, &h)| i128::from(g) * i128::from(h)).collect();
    let t: i128 = x.iter().zip(&a).map(|(&x, &a)| i128::from(x) * a).sum();
    let c = ((t << 16).div_euclid(x.len() as i128 * r * r)).clamp(i64::MIN.into(), i64::MAX.into());
    x.iter().zip(&a).map(|(&x, &a)| a - ((i128::from(x) * c) >> 16)).collect()
}

/// `floor(n / d)` for `d > 0`; in i64 where both fit, which is the usual case and many
/// times faster than i128's division (the same quotient either way).
fn floor_div(n: i128, d: i128) -> i128 {
    match (i64::try_from(n), i64::try_from(d)) {
        (Ok(n), Ok(d)) => n.div_euclid(d).into(),
        _ => n.div_euclid(d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::{ModelSpec, Weights};

    /// The integer step of rate 2^0 from a zero change, against the gradient of the same loss
    /// in f64 by central differences: `sum_v g_v l_v` with `l = W rms_norm(x)` for the
    /// output matrix `W` (Q12 `tok_same`) and the final norm, whose gradient at `l` is `g`.
    #[test]
    fn the_input_step_is_the_float_gradient_of_the_residual() {
        let spec = ModelSpec::new(1, 48, 2, 1, 64);
        let t = Transformer::new(&Weights::random(spec, 3).unwrap());
        let d = spec.width;
        let mut next = super::super::fixed::test_values(99);
        for case in 0..20 {
            // Residual rows of a few units (Q12), like the trained network's.
            let residual: Vec<i32> = (0..d).map(|_| (next(1 << 15) - (1 << 14)) as i32).collect();
            let mut grads: Vec<(usize, i32)> = (0..8).map(|_| (next(1024) as usize, (next(129) - 64) as i32)).collect();
            grads.sort();
            grads.dedup_by_key(|g| g.0);
            let mut s = t.session(2 * TOKENS_PER_FRAME);
            t.learn_inputs(&mut s);
            s.tokens.extend((0..TOKENS_PER_FRAME + 5).map(|_| next(1024) as u16));
            t.learn_inputs_step(&mut s, &grads, &residual, 0);

            let real = |v: i32| f64::from(v) / 4096.0;
            let loss = |x: &[f64]| {
                let ms = x.iter().map(|v| v * v).sum::<f64>() / d as f64 + 2f64.powi(-16);
                let h: Vec<f64> = x.iter().zip(&t.norm_out).map(|(v, &g)| v * real(g) / ms.sqrt()).collect();
                let logit = |v: usize| t.tok_same[v * d..][..d].iter().zip(&h).map(|(&w, h)| real(w) * h).sum::<f64>();
                grads.iter().map(|&(v, g)| f64::from(g) / 64.0 * logit(v)).sum::<f64>()
            };
            let x0: Vec<f64> = residual.iter().map(|&v| real(v)).collect();
            let eps = 1e-4;
            let fd: Vec<f64> = (0..d)
                .map(|i| {
                    let (mut a, mut b) = (x0.clone(), x0.clone());
                    a[i] += eps;
                    b[i] -= eps;
                    (loss(&a) - loss(&b)) / (2.0 * eps)
                })
                .collect();
            let scale = fd.iter().fold(0f64, |m, v| m.max(v.abs()));
            for row in change_rows(super::super::inputs(&s.tokens)) {
                for (i, &m) in s.inputs[row * d..][..d].iter().enumerate() {
                    // The change moved by minus the gradient, in Q24.
                    let step = -f64::from(m) / f64::from(1 << 24);
                    assert!((step - fd[i]).abs() <= 1e-3 * scale + 1e-6, "case {case}, dim {i}: {step} vs {}", fd[i]);
                }
            }
        }
    }
}
