//! AdamW with gradient clipping by global norm, written out (rather than candle-nn's) so that
//! its moments and step count can be checkpointed, and so that clipping stays on the device:
//! the clip factor is a tensor, and no step waits for the device to report a number.

use anyhow::Result;
use candle_core::{Tensor, Var};

pub struct AdamW {
    /// The parameters, by name, in a fixed order (the checkpoint's).
    pub vars: Vec<(String, Var)>,
    /// First and second moments, one per parameter.
    pub m: Vec<Var>,
    pub v: Vec<Var>,
    /// Steps taken (for the bias correction).
    pub t: usize,
    pub weight_decay: f64,
}

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f64 = 1e-8;

impl AdamW {
    pub fn new(vars: Vec<(String, Var)>, weight_decay: f64) -> Result<AdamW> {
        let zeros = |v: &Var| Var::zeros(v.shape(), v.dtype(), v.device());
        let m = vars.iter().map(|(_, v)| zeros(v)).collect::<candle_core::Result<_>>()?;
        let v = vars.iter().map(|(_, v)| zeros(v)).collect::<candle_core::Result<_>>()?;
        Ok(AdamW { vars, m, v, t: 0, weight_decay })
    }

    /// One update from `grads` (one per parameter, in order), scaled down together when
    /// their global norm exceeds `max_norm`. Returns the norm before clipping (on the device).
    pub fn step(&mut self, grads: &[Tensor], lr: f64, max_norm: f64) -> Result<Tensor> {
        let mut squares = vec![];
        for g in grads {
            squares.push(g.sqr()?.sum_all()?);
        }
        let norm = Tensor::stack(&squares, 0)?.sum_all()?.sqrt()?;
        let factor = (norm.maximum(max_norm)?.recip()? * max_norm)?;
        self.t += 1;
        let scale_m = 1.0 / (1.0 - BETA1.powi(self.t as i32));
        let scale_v = 1.0 / (1.0 - BETA2.powi(self.t as i32));
        for (((_, theta), (m, v)), g) in self.vars.iter().zip(self.m.iter().zip(&self.v)).zip(grads) {
            let g = g.broadcast_mul(&factor)?;
            let next_m = ((m.as_tensor() * BETA1)? + (&g * (1.0 - BETA1))?)?;
            let next_v = ((v.as_tensor() * BETA2)? + (g.sqr()? * (1.0 - BETA2))?)?;
            let step = ((&next_m * scale_m)? / ((&next_v * scale_v)?.sqrt()? + EPS)?)?;
            theta.set(&((theta.as_tensor() * (1.0 - lr * self.weight_decay))? - (step * lr)?)?)?;
            m.set(&next_m)?;
            v.set(&next_v)?;
        }
        Ok(norm)
    }
}
