//! Embedding lookup whose backward is a one-hot matrix product, for the GPU.
//!
//! candle's `embedding` is an `index_select`, whose backward is an `index_add`: on CUDA one
//! block of threads loops over every id of the batch (65,536 on the challenge preset), a
//! serial pass per table and step. The same gradient is `onehot(ids)^T . dy`, one matrix
//! product (`[V, M] x [M, d]`) that the GPU runs at full width. On the CPU the `index_add`
//! is the cheap one (M x d additions against M x V x d), so the trainer keeps candle's
//! embedding there; this op's CPU forward exists so that its gradient is checked here.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

/// Rows `ids` (u32, any shape) of `w` (`[V, d]`): `[ids..., d]`, with a gradient for `w` by a
/// one-hot product.
pub fn embedding(w: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let (w, ids) = (w.contiguous()?, ids.flatten_all()?.contiguous()?);
    w.apply_op2(&ids, OneHotEmbedding)
}

struct OneHotEmbedding;

/// The output shape: one row of `w` per id.
fn rows_shape(wl: &Layout, idsl: &Layout) -> Result<Shape> {
    match wl.dims() {
        [_, d] => Ok(Shape::from((idsl.shape().elem_count(), *d))),
        dims => candle_core::bail!("embedding: a table of shape {dims:?} (expected [V, d])"),
    }
}

impl CustomOp2 for OneHotEmbedding {
    fn name(&self) -> &'static str {
        "cvq-one-hot-embedding"
    }

    fn cpu_fwd(&self, w: &CpuStorage, wl: &Layout, ids: &CpuStorage, idsl: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((w.index_select(ids, wl, idsl, 0)?, rows_shape(wl, idsl)?))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        w: &candle_core::CudaStorage,
        wl: &Layout,
        ids: &candle_core::CudaStorage,
        idsl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        Ok((w.index_select(ids, wl, idsl, 0)?, rows_shape(wl, idsl)?))
    }

    fn bwd(&self, w: &Tensor, ids: &Tensor, _rows: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let vocab = w.dim(0)? as u32;
        let range = Tensor::arange(0u32, vocab, ids.device())?.unsqueeze(0)?;
        // [M, V]: 1 where row m took id v. Exact in any float type, so the product sums the
        // same values as index_add does.
        let one_hot = ids.unsqueeze(1)?.broadcast_eq(&range)?.to_dtype(dy.dtype())?;
        Ok((Some(one_hot.t()?.matmul(dy)?.to_dtype(w.dtype())?), None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    /// Same rows and the same gradient as candle's index_add path, repeated ids included.
    #[test]
    fn forward_and_gradient_match_candles_embedding() {
        let dev = Device::Cpu;
        let values: Vec<f64> = (0..7 * 3).map(|i| (i as f64 * 0.61).sin()).collect();
        let w = Var::from_vec(values, (7, 3), &dev).unwrap();
        let ids = Tensor::new(&[[3u32, 0, 3], [6, 3, 1]], &dev).unwrap();
        let weights: Vec<f64> = (0..6 * 3).map(|i| (i as f64 * 0.37).cos()).collect();
        let weights = Tensor::from_vec(weights, (6, 3), &dev).unwrap();
        let run = |f: &dyn Fn(&Tensor, &Tensor) -> Result<Tensor>| {
            let rows = f(w.as_tensor(), &ids).unwrap();
            let grads = (&rows * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            (rows.to_vec2::<f64>().unwrap(), grads.get(&w).unwrap().to_vec2::<f64>().unwrap())
        };
        let (rows, grad) = run(&embedding);
        let (rows_ref, grad_ref) = run(&|w, ids| w.embedding(&ids.flatten_all()?));
        assert_eq!(rows, rows_ref);
        for (a, b) in grad.iter().flatten().zip(grad_ref.iter().flatten()) {
            assert!((a - b).abs() < 1e-15, "{a} vs {b}");
        }
        assert!(grad[3].iter().all(|&g| g != 0.0) && grad[2].iter().all(|&g| g == 0.0));
        assert_eq!(embedding(&w.to_dtype(DType::F32).unwrap(), &ids).unwrap().dims(), [6, 3]);
    }
}
