//! The runtime's model spec (`cvq::model::spec`) in float, trainable with candle.
//!
//! Training runs on windows of `K + F` whole frames at once: every element attends to the
//! elements of its own and the K previous frames that come before it in raster order, with
//! a learned bias per head and frame offset, exactly as the integer engine's sliding cache.
//! Attention logits are scaled by 1/sqrt(head_dim) here; export folds that into W_q.

use crate::data::Rng;
use candle_core::{DType, Device, Result, Tensor, D};
use candle_nn::{VarBuilder, VarMap};
use cvq::data::{TOKENS_PER_FRAME, VOCAB};
use cvq::model::spec::{ModelSpec, INPUT_VOCAB, NORM_EPS_LOG2};

/// A matrix `[rows, cols]` that can be fake-quantized to int8 per row (straight-through).
pub struct Matrix {
    pub w: Tensor,
}

/// Creates the parameters in a `VarMap`, drawing initial values from a seeded generator
/// (candle's CPU generator cannot be seeded), so a seed gives the same model anywhere.
struct Params<'a> {
    vm: &'a VarMap,
    device: &'a Device,
    rng: Rng,
}

impl Params<'_> {
    fn constant(&self, name: &str, shape: &[usize], value: f64) -> Result<Tensor> {
        let vb = VarBuilder::from_varmap(self.vm, DType::F32, self.device);
        vb.get_with_hints(shape, name, candle_nn::Init::Const(value))
    }

    fn normal(&mut self, name: &str, rows: usize, cols: usize, std: f64) -> Result<Matrix> {
        let w = self.constant(name, &[rows, cols], 0.0)?;
        let values: Vec<f32> = (0..rows * cols).map(|_| (self.rng.normal() * std) as f32).collect();
        self.vm.data().lock().unwrap()[name].set(&Tensor::from_vec(values, (rows, cols), self.device)?)?;
        Ok(Matrix { w })
    }
}

impl Matrix {
    /// The weights as the model uses them: float, or rounded to int8 per row in the forward
    /// pass while gradients pass straight through.
    pub fn weights(&self, fake_quant: bool) -> Result<Tensor> {
        if !fake_quant {
            return Ok(self.w.clone());
        }
        let scale = (self.w.abs()?.max_keepdim(1)?.detach() / 127.0)?.clamp(1e-8, f64::MAX)?;
        let q = self.w.broadcast_div(&scale)?.round()?.clamp(-127.0, 127.0)?.broadcast_mul(&scale)?;
        (q - &self.w)?.detach() + &self.w
    }
}

pub struct Layer {
    pub norm1: Tensor,
    pub qkv: Matrix,
    pub frame_bias: Tensor,
    pub out: Matrix,
    pub norm2: Tensor,
    pub up: Matrix,
    pub down: Matrix,
}

pub struct Gpt {
    pub spec: ModelSpec,
    pub tok_prev: Matrix,
    pub tok_same: Matrix,
    pub pos: Matrix,
    pub layers: Vec<Layer>,
    pub norm_out: Tensor,
    pub head_bias: Tensor,
    /// Attention layouts by window frames, built once: every step uses the same one.
    layouts: std::sync::Mutex<Vec<(usize, Tensor, Tensor)>>,
}

/// One batch of training windows: ids and targets `[B, N]`, loss mask `[B, N]` (f32).
pub struct Batch {
    pub prev: Tensor,
    pub same: Tensor,
    pub pos: Tensor,
    pub targets: Tensor,
    pub mask: Tensor,
    /// Frames per window.
    pub frames: usize,
    /// Tokens scored (the mask's sum, known on the host).
    pub scored: usize,
}

fn rms_norm(x: &Tensor, gain: &Tensor) -> Result<Tensor> {
    let eps = 2f64.powi(-(NORM_EPS_LOG2 as i32));
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    x.broadcast_div(&(ms + eps)?.sqrt()?)?.broadcast_mul(gain)
}

impl Gpt {
    /// Parameters live in `vm`, named as the runtime's tensors, initialised from `seed`.
    pub fn new(spec: ModelSpec, vm: &VarMap, device: &Device, seed: u64) -> Result<Gpt> {
        let mut p = Params { vm, device, rng: Rng::new(seed) };
        let (d, m, k) = (spec.width, spec.mlp_width, spec.context_frames);
        let resid_std = 0.02 / (2.0 * spec.layers as f64).sqrt();
        let mut layers = vec![];
        for l in 0..spec.layers {
            let n = |s: &str| format!("layers.{l}.{s}");
            layers.push(Layer {
                norm1: p.constant(&n("norm1.gain"), &[d], 1.0)?,
                qkv: p.normal(&n("attn.qkv"), 3 * d, d, 0.02)?,
                frame_bias: p.constant(&n("attn.frame_bias"), &[spec.heads, k + 1], 0.0)?,
                out: p.normal(&n("attn.out"), d, d, resid_std)?,
                norm2: p.constant(&n("norm2.gain"), &[d], 1.0)?,
                up: p.normal(&n("mlp.up"), m, d, 0.02)?,
                down: p.normal(&n("mlp.down"), d, m, resid_std)?,
            });
        }
        Ok(Gpt {
            spec,
            tok_prev: p.normal("tok_prev", INPUT_VOCAB, d, 0.02)?,
            tok_same: p.normal("tok_same", INPUT_VOCAB, d, 0.02)?,
            pos: p.normal("pos", TOKENS_PER_FRAME, d, 0.02)?,
            layers,
            norm_out: p.constant("norm_out.gain", &[d], 1.0)?,
            head_bias: p.constant("head_bias", &[VOCAB], 0.0)?,
            layouts: Default::default(),
        })
    }

    /// Attention mask (0 or -inf) `[N, N]` and frame offsets `[N, N]` (u32) for windows of
    /// `frames` frames, on the model's device.
    fn attention_layout(&self, frames: usize) -> Result<(Tensor, Tensor)> {
        let mut layouts = self.layouts.lock().expect("not poisoned");
        if let Some((_, mask, offsets)) = layouts.iter().find(|l| l.0 == frames) {
            return Ok((mask.clone(), offsets.clone()));
        }
        let n = frames * TOKENS_PER_FRAME;
        let k = self.spec.context_frames;
        let mut mask = vec![f32::NEG_INFINITY; n * n];
        let mut offsets = vec![0u32; n * n];
        for i in 0..n {
            for j in 0..=i {
                let dt = i / TOKENS_PER_FRAME - j / TOKENS_PER_FRAME;
                if dt <= k {
                    mask[i * n + j] = 0.0;
                    offsets[i * n + j] = dt as u32;
                }
            }
        }
        let device = self.norm_out.device();
        let (mask, offsets) = (Tensor::from_vec(mask, (n, n), device)?, Tensor::from_vec(offsets, (n, n), device)?);
        layouts.push((frames, mask.clone(), offsets.clone()));
        Ok((mask, offsets))
    }

    /// Logits `[B, N, 1024]` (f32). Matrix products run in `dtype` (bf16 on a GPU: tensor
    /// cores), everything else in f32: the residual stream, norms, softmax and the loss.
    pub fn forward(&self, b: &Batch, fake_quant: bool, dtype: DType) -> Result<Tensor> {
        let s = &self.spec;
        let (bsz, n) = b.prev.dims2()?;
        let (d, heads, hd) = (s.width, s.heads, s.head_dim());
        let embed =
            |m: &Matrix, ids: &Tensor| -> Result<Tensor> { m.weights(fake_quant)?.embedding(&ids.flatten_all()?) };
        let tok_same = self.tok_same.weights(fake_quant)?;
        // x @ w^T in the compute type, back in f32.
        let mm = |x: &Tensor, w: &Tensor| -> Result<Tensor> {
            x.to_dtype(dtype)?.broadcast_matmul(&w.to_dtype(dtype)?.t()?)?.to_dtype(DType::F32)
        };
        let mut x =
            (embed(&self.tok_prev, &b.prev)? + tok_same.embedding(&b.same.flatten_all()?)?)?.reshape((bsz, n, d))?;
        x = x.broadcast_add(&embed(&self.pos, &b.pos)?.reshape((1, n, d))?)?;
        let (mask, offsets) = self.attention_layout(b.frames)?;
        let scale = 1.0 / (hd as f64).sqrt();
        for layer in &self.layers {
            let h = rms_norm(&x, &layer.norm1)?;
            let qkv = h.to_dtype(dtype)?.broadcast_matmul(&layer.qkv.weights(fake_quant)?.to_dtype(dtype)?.t()?)?; // [B, N, 3d]
            let split = |i: usize| -> Result<Tensor> {
                qkv.narrow(2, i * d, d)?.reshape((bsz, n, heads, hd))?.transpose(1, 2)?.contiguous()
            };
            let (q, k, v) = (split(0)?, split(1)?, split(2)?);
            // Frame-offset bias per head: [heads, N, N].
            let bias = layer.frame_bias.index_select(&offsets.flatten_all()?, 1)?.reshape((heads, n, n))?;
            let att = (q.matmul(&k.t()?)?.to_dtype(DType::F32)? * scale)?.broadcast_add(&bias)?.broadcast_add(&mask)?;
            let att = candle_nn::ops::softmax_last_dim(&att)?.to_dtype(dtype)?;
            let y = att.matmul(&v)?.transpose(1, 2)?.reshape((bsz, n, d))?;
            x = (x + mm(&y, &layer.out.weights(fake_quant)?)?)?;
            let h = rms_norm(&x, &layer.norm2)?;
            let h = mm(&h, &layer.up.weights(fake_quant)?)?.gelu()?;
            x = (x + mm(&h, &layer.down.weights(fake_quant)?)?)?;
        }
        let h = rms_norm(&x, &self.norm_out)?;
        mm(&h, &tok_same.narrow(0, 0, VOCAB)?)?.broadcast_add(&self.head_bias)
    }

    /// Mean cross-entropy in nats over the scored positions (a scalar on the device).
    pub fn loss(&self, b: &Batch, fake_quant: bool, dtype: DType) -> Result<Tensor> {
        let logits = self.forward(b, fake_quant, dtype)?;
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let picked = logp.gather(&b.targets.unsqueeze(2)?, 2)?.squeeze(2)?;
        let total = (picked * &b.mask)?.sum_all()?;
        total.neg()? / b.scored.max(1) as f64
    }

    /// The parameters by name, in name order (the optimizer's and the checkpoint's order).
    pub fn vars(vm: &VarMap) -> Vec<(String, candle_core::Var)> {
        let mut vars: Vec<_> = vm.data().lock().unwrap().iter().map(|(n, v)| (n.clone(), v.clone())).collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars
    }
}
