//! Online adaptation: the network keeps learning while a segment codes.
//!
//! After each token, one step of gradient descent on that token's cross-entropy moves
//! per-segment changes of (by choice of `Rates`) the output matrix, the output bias and the
//! three input embeddings. The gradient of the logits is `p - onehot(token)`, and `p` is
//! exactly the integer table the coder just used, so the output layer's step needs no float
//! and no backward pass; the input embeddings' step passes it back through the output matrix,
//! the final norm and the residual stream in integers (`transformer::backward`). The encoder
//! and the decoder make the same integer update on every machine. Every segment starts from
//! zero.
//!
//! Units (FORMAT.md section 3.4): the gradient is rounded to Q6, so tokens the table gives
//! less than 2^-7 leave their rows alone and a step touches few rows (Q12 coded the same to
//! within 0.002 bits/token and ran 30% slower). The matrix change is kept in Q30 (`master`)
//! and read through a 12-bit view in Q`VIEW_BITS` that the forward pass multiplies with the
//! 12-bit hidden row like an attention score (so the sum fits i32).

use super::table::FreqTable;
use super::transformer::fixed::{shift_round, QMAX};
use super::transformer::{kernels, Session, Transformer, INPUT_ROWS};
use crate::data::VOCAB;

/// Widest network whose output layer can learn: the view's products with the hidden row sum
/// in i32 like an attention score (2047 x 2047 x 512 < 2^31).
pub const MAX_WIDTH: usize = crate::network::spec::MAX_HEAD_DIM;
/// Fractional bits of the logits' gradient `p - onehot`: tokens below 2^-(GRAD_BITS+1) get 0.
const GRAD_BITS: i32 = 6;
/// Fractional bits of the view of the matrix change: it spans +-2047 / 2^14 = +-0.125.
const VIEW_BITS: i32 = 14;
/// Fractional bits of the matrix change's master copy.
const MASTER_BITS: i32 = 30;

/// Learning rates as powers of two (the step is `2^-rate` times the gradient); `None` leaves
/// that part alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rates {
    /// Of the output matrix's change.
    pub matrix: Option<u32>,
    /// Of the output bias's change.
    pub bias: Option<u32>,
    /// Of the input embeddings' change (`transformer::backward`).
    pub inputs: Option<u32>,
}

impl Rates {
    /// Cells of the matrix change for a network of this width (none if it stays).
    fn cells(&self, width: usize) -> usize {
        if self.matrix.is_some() {
            VOCAB * width
        } else {
            0
        }
    }

    /// Bytes of a segment's adaptation state for a network of this width: the matrix change
    /// and its view, the bias change, the products with the view, the hidden and residual
    /// rows, and the input embeddings' change.
    pub fn memory(&self, width: usize) -> usize {
        let inputs = if self.inputs.is_some() { INPUT_ROWS * width * 4 } else { 0 };
        self.cells(width) * 6 + VOCAB * 8 + width * 6 + inputs
    }
}

pub struct Adapter {
    rates: Rates,
    width: usize,
    /// Matrix change in Q30, `[1024, width]`.
    master: Vec<i32>,
    /// Its 12-bit view in Q14, what the forward pass uses.
    view: Vec<i16>,
    /// Bias change in Q24.
    bias: Vec<i32>,
    /// The view's products with the hidden row (a buffer kept for every step).
    dot: Vec<i32>,
    /// The hidden row and shift of the step being coded, and its residual row before the
    /// final norm, for its update.
    hidden: Vec<i16>,
    shift: i32,
    residual: Vec<i32>,
    /// The nonzero gradients of the logits of that step, `(token, g)`, Q`GRAD_BITS`.
    grads: Vec<(usize, i32)>,
}

impl Adapter {
    pub fn new(rates: Rates, width: usize) -> Adapter {
        assert!(width <= MAX_WIDTH, "adaptation of a network wider than {MAX_WIDTH}");
        let cells = rates.cells(width);
        Adapter {
            rates,
            width,
            master: vec![0; cells],
            view: vec![0; cells],
            bias: vec![0; VOCAB],
            dot: vec![0; VOCAB],
            hidden: vec![0; width],
            shift: 0,
            residual: vec![0; width],
            grads: vec![],
        }
    }

    /// Add the segment's changes to the frozen network's logits (Q12) for the hidden row
    /// `hidden` (x ~= hidden * 2^shift in Q12), and keep that row and the residual row before
    /// the final norm for `learn`.
    pub fn adjust(&mut self, hidden: &[i16], shift: i32, residual: &[i32], logits: &mut [i32]) {
        self.hidden.copy_from_slice(hidden);
        self.residual.copy_from_slice(residual);
        self.shift = shift;
        if self.rates.matrix.is_some() {
            kernels::matmul(hidden, self.width, &self.view, &mut self.dot);
            for (l, &s) in logits.iter_mut().zip(&self.dot) {
                *l = l.saturating_add(shift_round(i64::from(s), VIEW_BITS - shift));
            }
        }
        for (l, &b) in logits.iter_mut().zip(&self.bias) {
            *l = l.saturating_add(shift_round(i64::from(b), 12));
        }
    }

    /// A session for a segment of `tokens` tokens of `model`, its inputs learning if the
    /// rates say so.
    pub fn session(&self, model: &Transformer, tokens: usize) -> Session {
        let mut session = model.session(tokens);
        if self.rates.inputs.is_some() {
            model.learn_inputs(&mut session);
        }
        session
    }

    /// One gradient step on `token`, coded with `table` (the table `adjust`'s logits gave),
    /// by the network `model` in `session` (which does not hold `token` yet).
    pub fn learn(&mut self, table: &FreqTable, token: u16, model: &Transformer, session: &mut Session) {
        self.grads.clear();
        for v in 0..VOCAB {
            let target = if v == usize::from(token) { 1i64 << 24 } else { 0 };
            let g = shift_round(i64::from(table.mass(v, v + 1)) - target, 24 - GRAD_BITS);
            if g != 0 {
                self.grads.push((v, g));
            }
        }
        // The inputs' step reads the trained output matrix, not the change `learn_output`
        // makes, so the two steps may come in either order.
        if let Some(rate) = self.rates.inputs {
            model.learn_inputs_step(session, &self.grads, &self.residual, rate);
        }
        self.learn_output();
    }

    /// The output matrix's and bias's step from the gradients in `grads`.
    fn learn_output(&mut self) {
        let w = self.width;
        for &(v, g) in &self.grads {
            if let Some(rate) = self.rates.bias {
                self.bias[v] = self.bias[v].saturating_sub(shift_round(i64::from(g) << (24 - GRAD_BITS), rate as i32));
            }
            let Some(rate) = self.rates.matrix else { continue };
            // d master = -g h 2^-rate, from g in Q`GRAD_BITS` and h = hidden * 2^(shift - 12),
            // in Q30.
            let s = GRAD_BITS + 12 - MASTER_BITS + rate as i32 - self.shift;
            update_row(&mut self.master[v * w..][..w], &mut self.view[v * w..][..w], &self.hidden, g, s);
        }
    }
}

/// Before its step, a row's change loses 2^-8 of itself: what the segment taught long ago
/// fades, so the change stays near the trained weights. Without it the network alone coded
/// the clip's training frames 1.4% worse than frozen (4.5940 against 4.5291 bits/token);
/// with it 0.3%, and the held-out frames about as well (4.8235 against 4.8210).
const FORGET_BITS: u32 = 8;

/// Largest master value: its view, rounded, is at most `QMAX`, so the view needs no clamp.
const MASTER_MAX: i64 = ((QMAX as i64) << (MASTER_BITS - VIEW_BITS)) + (1 << (MASTER_BITS - VIEW_BITS - 1)) - 1;

/// `master = master - (master >> 8) - round(g * hidden * 2^-s)` (a left shift for s <= 0;
/// exact, as |g h| < 2^18 and s >= -27), clamped to +-MASTER_MAX, and the row's view rounded
/// from it.
fn update_row(master: &mut [i32], view: &mut [i16], hidden: &[i16], g: i32, s: i32) {
    const VIEW_SHIFT: i32 = MASTER_BITS - VIEW_BITS;
    let step = |m: &mut i32, v: &mut i16, d: i64| {
        let m0 = i64::from(*m);
        let next = (m0 - (m0 >> FORGET_BITS) - d).clamp(-MASTER_MAX, MASTER_MAX);
        *m = next as i32;
        *v = ((next + (1 << (VIEW_SHIFT - 1))) >> VIEW_SHIFT) as i16;
    };
    let rows = master.iter_mut().zip(view.iter_mut()).zip(hidden);
    if s > 0 {
        let half = 1i64 << (s - 1);
        rows.for_each(|((m, v), &h)| step(m, v, (i64::from(g) * i64::from(h) + half) >> s));
    } else {
        rows.for_each(|((m, v), &h)| step(m, v, (i64::from(g) * i64::from(h)) << -s));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_update_is_the_rounded_step_clamped() {
        // The rule of FORMAT.md section 3.4, written out with the engine's shift_round.
        let mut next = crate::predict::transformer::fixed::test_values(12345);
        for s in -27..=30 {
            let hidden: Vec<i16> = (0..16).map(|_| next(4095) as i16 - 2047).collect();
            let g = next(129) as i32 - 64;
            let mut master: Vec<i32> = (0..16).map(|_| (next(1 << 28) - (1 << 27)) as i32).collect();
            let want: Vec<i32> = master
                .iter()
                .zip(&hidden)
                .map(|(&m, &h)| {
                    let d = shift_round(i64::from(g) * i64::from(h), s);
                    let m = i64::from(m);
                    (m - m.div_euclid(256) - i64::from(d)).clamp(-MASTER_MAX, MASTER_MAX) as i32
                })
                .collect();
            let mut view = vec![0i16; 16];
            update_row(&mut master, &mut view, &hidden, g, s);
            assert_eq!(master, want, "s = {s}");
            for (&m, &v) in master.iter().zip(&view) {
                assert_eq!(i32::from(v), shift_round(i64::from(m), MASTER_BITS - VIEW_BITS));
                assert!(i32::from(v).abs() <= QMAX);
            }
        }
    }
}
