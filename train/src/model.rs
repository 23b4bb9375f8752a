//! The runtime's model spec (`cvq::network::spec`) in float, trainable with candle.
//!
//! Training runs on windows of `K + F` whole frames at once: every element attends to the
//! elements of its own and the K previous frames that come before it in raster order, with
//! a learned bias per head and frame offset, exactly as the integer engine's sliding cache.
//! Attention logits are scaled by 1/sqrt(head_dim) here; export folds that into W_q.
//!
//! Every op on the forward path has a backward (`softmax` has the attention's; the tests
//! check every parameter's gradient against finite differences in f64). Parameters are f32,
//! or f64 for those checks.

use crate::data::{Batch, Rng};
use crate::softmax::softmax_last_dim;
use candle_core::{DType, Device, Result, Tensor, D};
use candle_nn::{VarBuilder, VarMap};
use cvq::data::{TOKENS_PER_FRAME, VOCAB};
use cvq::network::spec::{ModelSpec, INPUT_VOCAB, NORM_EPS_LOG2};

/// A matrix `[rows, cols]` that can be fake-quantized to int8 per row (straight-through).
pub struct Matrix {
    pub w: Tensor,
}

/// Creates the parameters in a `VarMap`, drawing initial values from a seeded generator
/// (candle's CPU generator cannot be seeded), so a seed gives the same model anywhere.
struct Params<'a> {
    vm: &'a VarMap,
    device: &'a Device,
    dtype: DType,
    rng: Rng,
}

impl Params<'_> {
    fn constant(&self, name: &str, shape: &[usize], value: f64) -> Result<Tensor> {
        let vb = VarBuilder::from_varmap(self.vm, self.dtype, self.device);
        vb.get_with_hints(shape, name, candle_nn::Init::Const(value))
    }

    fn normal(&mut self, name: &str, rows: usize, cols: usize, std: f64) -> Result<Matrix> {
        let w = self.constant(name, &[rows, cols], 0.0)?;
        // Drawn in f32 whatever the parameters' type, so a seed gives the same start in both.
        let values: Vec<f32> = (0..rows * cols).map(|_| (self.rng.normal() * std) as f32).collect();
        let values = Tensor::from_vec(values, (rows, cols), self.device)?.to_dtype(self.dtype)?;
        self.vm.data().lock().unwrap()[name].set(&values)?;
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
    /// Test-only: no gradient reaches the attention scores (queries, keys, frame bias), as
    /// in the trainer before this was found; a control for showing what attention learns.
    pub fixed_attention: bool,
    /// Test-only: attention as one dense masked score matrix (`attend_dense`), the reference
    /// that the frame-block form is checked against.
    pub dense_attention: bool,
    /// Attention layouts by window frames, built once: every step uses the same one.
    layouts: std::sync::Mutex<Vec<(usize, Layout)>>,
}

/// Where attention may look in a window of W frames of T = 128 elements: the queries of
/// frame f read the keys of frames f, f-1, .., f-K, one block of T keys each (newest first,
/// so block o is frame offset o and takes `frame_bias[.., o]`).
#[derive(Clone)]
struct Layout {
    /// 0 where a query may read a key, else -inf, as `[W, T, K+1, T]` (query frame, query
    /// place, block, key place): blocks before the window's start are out, and in block 0
    /// (the query's own frame) the places after the query's, in the others those out of the
    /// spec's reach.
    mask: Tensor,
}

/// Rows `ids` of the table `w`: `[ids, d]`. On a GPU by `embedding::embedding`, whose
/// backward is a matrix product instead of candle's serial `index_add`.
fn lookup(w: &Tensor, ids: &Tensor) -> Result<Tensor> {
    match w.device().is_cuda() {
        true => crate::embedding::embedding(w, ids),
        false => w.embedding(&ids.flatten_all()?),
    }
}

fn rms_norm(x: &Tensor, gain: &Tensor) -> Result<Tensor> {
    let eps = 2f64.powi(-(NORM_EPS_LOG2 as i32));
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    x.broadcast_div(&(ms + eps)?.sqrt()?)?.broadcast_mul(gain)
}

impl Gpt {
    /// Parameters live in `vm`, named as the runtime's tensors, initialised from `seed`, of
    /// type `dtype` (f32 to train; f64 for gradient checks).
    pub fn new(spec: ModelSpec, vm: &VarMap, device: &Device, seed: u64, dtype: DType) -> Result<Gpt> {
        let mut p = Params { vm, device, dtype, rng: Rng::new(seed) };
        let (d, m, k) = (spec.width, spec.mlp_width, spec.context_frames);
        let resid_std = 0.02 / (2.0 * spec.layers as f64).sqrt();
        let mut layers = vec![];
        for l in 0..spec.layers {
            let n = |s: &str| format!("layers.{l}.{s}");
            layers.push(Layer {
                norm1: p.constant(&n("norm1.gain"), &[d], 1.0)?,
                qkv: p.normal(&n("attn.qkv"), spec.qkv_rows(), d, 0.02)?,
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
            fixed_attention: false,
            dense_attention: false,
            layouts: Default::default(),
        })
    }

    /// The attention layout for windows of `frames` frames, on the model's device.
    fn attention_layout(&self, frames: usize) -> Result<Layout> {
        let mut layouts = self.layouts.lock().expect("not poisoned");
        if let Some((_, layout)) = layouts.iter().find(|l| l.0 == frames) {
            return Ok(layout.clone());
        }
        let (k, t) = (self.spec.context_frames, TOKENS_PER_FRAME);
        let mut mask = vec![0f32; frames * t * (k + 1) * t];
        for (e, m) in mask.iter_mut().enumerate() {
            let (f, i, o, j) = (e / (t * (k + 1) * t), e / ((k + 1) * t) % t, e / t % (k + 1), e % t);
            if o > f || (o == 0 && j > i) || (o > 0 && !self.spec.reaches(i, j)) {
                *m = f32::NEG_INFINITY;
            }
        }
        let device = self.norm_out.device();
        let layout = Layout { mask: Tensor::from_vec(mask, (frames, t, k + 1, t), device)?.to_dtype(self.dtype())? };
        layouts.push((frames, layout.clone()));
        Ok(layout)
    }

    /// The parameters' type: the residual stream's, the norms', the softmax's and the loss's.
    pub fn dtype(&self) -> DType {
        self.norm_out.dtype()
    }

    /// Logits `[B, N - S, 1024]` in the parameters' type, for the elements from the batch's
    /// first scored frame on (S = `first_scored` x 128: the head, a 1024-row product per
    /// element, runs only where the loss looks). Matrix products run in `dtype` (bf16 on
    /// a GPU: tensor cores), everything else in the parameters' type (f32): the residual
    /// stream, norms, softmax and the loss.
    pub fn forward(&self, b: &Batch, fake_quant: bool, dtype: DType) -> Result<Tensor> {
        Ok(self.run(b, fake_quant, dtype, None)?.0)
    }

    /// `forward`'s logits and the last residual stream (before the final norm) of the scored
    /// elements, `[B, N - S, d]`: `head` gives the logits from it.
    pub fn forward_with_residual(&self, b: &Batch) -> Result<(Tensor, Tensor)> {
        self.run(b, false, self.dtype(), None)
    }

    /// Each layer's attention weights, `[B, heads, W, T, (K+1) T]` (`Layout`), in float.
    pub fn attention_weights(&self, b: &Batch) -> Result<Vec<Tensor>> {
        let mut weights = vec![];
        self.run(b, false, self.dtype(), Some(&mut weights))?;
        Ok(weights)
    }

    /// The forward pass, keeping each layer's attention weights in `keep` if given: the
    /// logits and the last residual stream.
    fn run(
        &self,
        b: &Batch,
        fake_quant: bool,
        dtype: DType,
        mut keep: Option<&mut Vec<Tensor>>,
    ) -> Result<(Tensor, Tensor)> {
        let (bsz, n) = b.prev.dims2()?;
        let (d, float) = (self.spec.width, self.dtype());
        let embed = |m: &Matrix, ids: &Tensor| -> Result<Tensor> { lookup(&m.weights(fake_quant)?, ids) };
        let tok_same = self.tok_same.weights(fake_quant)?;
        // x @ w^T in the compute type, back in the parameters' type.
        let mm = |x: &Tensor, w: &Tensor| -> Result<Tensor> {
            x.to_dtype(dtype)?.broadcast_matmul(&w.to_dtype(dtype)?.t()?)?.to_dtype(float)
        };
        let mut x = (embed(&self.tok_prev, &b.prev)? + lookup(&tok_same, &b.same)?)?.reshape((bsz, n, d))?;
        x = x.broadcast_add(&embed(&self.pos, &b.pos)?.reshape((1, n, d))?)?;
        let layout = self.attention_layout(b.frames)?;
        for layer in &self.layers {
            let h = rms_norm(&x, &layer.norm1)?;
            // [B, N, 3d] in the compute type.
            let qkv = h.to_dtype(dtype)?.broadcast_matmul(&layer.qkv.weights(fake_quant)?.to_dtype(dtype)?.t()?)?;
            // [B, heads, N, head_dim]
            let y = if self.dense_attention {
                self.attend_dense(layer, &qkv)?
            } else {
                let att = self.attention(layer, &qkv, &layout)?;
                if let Some(keep) = keep.as_deref_mut() {
                    keep.push(att.detach().reshape((bsz, self.spec.heads, b.frames, TOKENS_PER_FRAME, ()))?);
                }
                let y = att.to_dtype(dtype)?.matmul(&self.blocks(&self.heads(&qkv, 2)?)?)?;
                y.reshape((bsz, self.spec.heads, n, self.spec.head_dim()))?
            };
            let y = y.transpose(1, 2)?.reshape((bsz, n, d))?;
            x = (x + mm(&y, &layer.out.weights(fake_quant)?)?)?;
            let h = rms_norm(&x, &layer.norm2)?;
            let h = mm(&h, &layer.up.weights(fake_quant)?)?.gelu()?;
            x = (x + mm(&h, &layer.down.weights(fake_quant)?)?)?;
        }
        let x = x.narrow(1, b.first_scored * TOKENS_PER_FRAME, n - b.first_scored * TOKENS_PER_FRAME)?;
        Ok((self.head(&x, fake_quant, dtype)?, x))
    }

    /// Logits `[B, N, 1024]` of a last residual stream `x` `[B, N, d]`: the final norm and the
    /// output matrix (`tok_same`'s first 1024 rows, tied) with its bias.
    pub fn head(&self, x: &Tensor, fake_quant: bool, dtype: DType) -> Result<Tensor> {
        let w = self.tok_same.weights(fake_quant)?.narrow(0, 0, VOCAB)?;
        let h = rms_norm(x, &self.norm_out)?;
        h.to_dtype(dtype)?
            .broadcast_matmul(&w.to_dtype(dtype)?.t()?)?
            .to_dtype(self.dtype())?
            .broadcast_add(&self.head_bias)
    }

    /// Part `i` of `qkv` (`[B, N, d + 2 kv_heads head_dim]`; 0: queries, 1: keys, 2: values)
    /// as `[B, heads, N, head_dim]`, each key/value head repeated for the query heads of its
    /// group (the backward of the repeat, a broadcast, sums the group's gradients).
    fn heads(&self, qkv: &Tensor, i: usize) -> Result<Tensor> {
        let (bsz, n, _) = qkv.dims3()?;
        let (d, heads, hd, kvh) = (self.spec.width, self.spec.heads, self.spec.head_dim(), self.spec.kv_heads);
        let (start, count) = if i == 0 { (0, heads) } else { (d + (i - 1) * kvh * hd, kvh) };
        let x = qkv.narrow(2, start, count * hd)?.reshape((bsz, n, count, hd))?.transpose(1, 2)?;
        match count == heads {
            true => x.contiguous(),
            false => x.unsqueeze(2)?.broadcast_as((bsz, count, heads / count, n, hd))?.reshape((bsz, heads, n, hd)),
        }
    }

    /// Keys or values `[B, heads, N, head_dim]` as each query frame reads them:
    /// `[B, heads x W, (K+1) T, head_dim]`, block o holding frame f - o (zeros before the
    /// window's start, which the mask leaves out). Heads and frames share one dimension:
    /// candle's CPU matmul takes at most two batch dimensions.
    fn blocks(&self, x: &Tensor) -> Result<Tensor> {
        let (bsz, heads, n, hd) = x.dims4()?;
        let (k, t) = (self.spec.context_frames, TOKENS_PER_FRAME);
        let frames = n / t;
        let padded = Tensor::cat(&[&Tensor::zeros((bsz, heads, k * t, hd), x.dtype(), x.device())?, x], 2)?;
        let shifted = (0..=k)
            .map(|o| padded.narrow(2, (k - o) * t, n)?.reshape((bsz, heads, frames, t, hd)))
            .collect::<Result<Vec<_>>>()?;
        Tensor::stack(&shifted, 3)?.reshape((bsz, heads * frames, (k + 1) * t, hd))
    }

    /// Attention weights `[B, heads x W, T, (K+1) T]` (head and query frame, query place, key
    /// block and place; `Layout`) in the parameters' type, from the layer's queries and keys (`qkv`
    /// `[B, N, 3d]` in the compute type) over windows of whole frames. Each query frame
    /// scores only its K+1 frames' keys, so the cost grows with the window, not its square.
    fn attention(&self, layer: &Layer, qkv: &Tensor, layout: &Layout) -> Result<Tensor> {
        let (bsz, n, _) = qkv.dims3()?;
        let (heads, hd, k, t) = (self.spec.heads, self.spec.head_dim(), self.spec.context_frames, TOKENS_PER_FRAME);
        let frames = n / t;
        let q = (self.heads(qkv, 0)? * (1.0 / (hd as f64).sqrt()))?.reshape((bsz, heads * frames, t, hd))?;
        let keys = self.blocks(&self.heads(qkv, 1)?)?;
        // The frame bias of each head for each block, spread over its T x T places by
        // broadcasting (whose backward is a sum), plus the mask: [heads x W, T, (K+1) T].
        let bias = layer.frame_bias.reshape((heads, 1, 1, k + 1, 1))?.broadcast_add(&layout.mask)?;
        let bias = bias.reshape((heads * frames, t, (k + 1) * t))?;
        let scores = q.matmul(&keys.t()?)?.to_dtype(self.dtype())?.broadcast_add(&bias)?;
        let scores = if self.fixed_attention { scores.detach() } else { scores };
        softmax_last_dim(&scores)
    }

    /// Test-only, the reference for `attention`: the same attention over the whole window as
    /// one masked `[N, N]` score matrix per head; `[B, heads, N, head_dim]`.
    fn attend_dense(&self, layer: &Layer, qkv: &Tensor) -> Result<Tensor> {
        let (hd, k, t) = (self.spec.head_dim(), self.spec.context_frames, TOKENS_PER_FRAME);
        let n = qkv.dim(1)?;
        let q = (self.heads(qkv, 0)? * (1.0 / (hd as f64).sqrt()))?;
        let (mut mask, mut offsets) = (vec![f32::NEG_INFINITY; n * n], vec![0u32; n * n]);
        for (e, (m, o)) in mask.iter_mut().zip(&mut offsets).enumerate() {
            let (i, j) = (e / n, e % n);
            if j <= i && i / t - j / t <= k && (i / t == j / t || self.spec.reaches(i % t, j % t)) {
                (*m, *o) = (0.0, (i / t - j / t) as u32);
            }
        }
        let device = qkv.device();
        let mask = Tensor::from_vec(mask, (n, n), device)?.to_dtype(self.dtype())?;
        let offsets = Tensor::from_vec(offsets, n * n, device)?;
        let bias = layer.frame_bias.index_select(&offsets, 1)?.reshape((self.spec.heads, n, n))?;
        let scores =
            q.matmul(&self.heads(qkv, 1)?.t()?)?.to_dtype(self.dtype())?.broadcast_add(&bias.broadcast_add(&mask)?)?;
        softmax_last_dim(&scores)?.to_dtype(qkv.dtype())?.matmul(&self.heads(qkv, 2)?)
    }

    /// Mean cross-entropy in nats over the scored positions (a scalar on the device).
    pub fn loss(&self, b: &Batch, fake_quant: bool, dtype: DType) -> Result<Tensor> {
        self.loss_of(&self.forward(b, fake_quant, dtype)?, b)
    }

    /// The loss of `logits` that `forward` gave for `b` (for a caller that also reads them).
    pub fn loss_of(&self, logits: &Tensor, b: &Batch) -> Result<Tensor> {
        let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
        let (from, n) = (b.first_scored * TOKENS_PER_FRAME, logits.dim(1)?);
        let picked = logp.gather(&b.targets.narrow(1, from, n)?.contiguous()?.unsqueeze(2)?, 2)?.squeeze(2)?;
        let total = (picked * b.mask.narrow(1, from, n)?.to_dtype(self.dtype())?)?.sum_all()?;
        total.neg()? / b.scored.max(1) as f64
    }

    /// The parameters by name, in name order (the optimizer's and the checkpoint's order).
    pub fn vars(vm: &VarMap) -> Vec<(String, candle_core::Var)> {
        let mut vars: Vec<_> = vm.data().lock().unwrap().iter().map(|(n, v)| (n.clone(), v.clone())).collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars
    }

    /// For gradient checks: every parameter in `vm` drawn from `seed` at a scale where every
    /// path carries signal (gains near 1, frame biases of order 1, matrices that keep the
    /// activations' scale, so attention is far from uniform). The trainer's own start, with
    /// zero frame biases and near-uniform attention, is where a wrong gradient hides best.
    pub fn spread(vm: &VarMap, seed: u64) -> Result<()> {
        let mut rng = Rng::new(seed);
        for (name, var) in Gpt::vars(vm) {
            let (mean, std) = match var.dims() {
                [_] if name.ends_with("gain") => (1.0, 0.3),
                [_] => (0.0, 0.5),
                [_, _] if name.ends_with("frame_bias") => (0.0, 1.0),
                [_, cols] => (0.0, 1.0 / (*cols as f64).sqrt()),
                dims => candle_core::bail!("{name}: a parameter of shape {dims:?}"),
            };
            let values: Vec<f64> = (0..var.elem_count()).map(|_| mean + std * rng.normal()).collect();
            var.set(&Tensor::from_vec(values, var.shape(), var.device())?.to_dtype(var.dtype())?)?;
        }
        Ok(())
    }
}
