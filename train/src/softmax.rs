//! Softmax over the last dimension, fused, with a backward.
//!
//! candle-nn 0.11.1's fused `softmax_last_dim` is built without a backward
//! (`apply_op1_no_bwd`): used in attention it silently stops every gradient to the queries,
//! the keys and the frame bias, and the attention never learns. candle-nn's composed `softmax`
//! has a backward but keeps several score-sized tensors alive for it (3x slower, 2.5x the
//! memory on the challenge preset's CPU step). This op computes the forward in one pass and
//! keeps only its output for the backward, `dx = y * (dy - sum(dy * y))`, fused on the CPU
//! too (composed, that formula allocates three more score-sized tensors per layer).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, D};
use num_traits::Float;
use rayon::prelude::*;

/// `softmax(x)` along the last dimension, with its gradient.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Softmax)
}

struct Softmax;

/// Each row `exp(x - max) / sum`; a row of -inf only (nothing to attend to) gives zeros.
fn rows<T: Float + Send + Sync>(src: &[T], len: usize) -> Vec<T> {
    let mut dst = vec![T::zero(); src.len()];
    dst.par_chunks_mut(len).zip(src.par_chunks(len)).for_each(|(dst, src)| {
        let max = src.iter().fold(T::neg_infinity(), |m, &v| m.max(v));
        if max == T::neg_infinity() {
            return;
        }
        let mut sum = T::zero();
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = (s - max).exp();
            sum = sum + *d;
        }
        let inv = sum.recip();
        dst.iter_mut().for_each(|d| *d = *d * inv);
    });
    dst
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "cvq-softmax-last-dim"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("softmax: the input must be contiguous")
        };
        let len = layout.dims().last().copied().unwrap_or(1).max(1);
        let out = match storage {
            CpuStorage::F32(v) => CpuStorage::F32(rows(&v[start..end], len)),
            CpuStorage::F64(v) => CpuStorage::F64(rows(&v[start..end], len)),
            other => candle_core::bail!("softmax: {:?} is not supported (f32 or f64)", other.dtype()),
        };
        Ok((out, layout.shape().clone()))
    }

    /// candle's own fused CUDA softmax kernel (the one `softmax_last_dim` launches).
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg};
        use candle_core::cuda_backend::{kernel_name, kernels, Map1, WrapErr};
        use candle_core::{CudaDevice, WithDType};

        struct Rows;
        impl Map1 for Rows {
            fn f<T: DeviceRepr + WithDType>(
                &self,
                src: &CudaSlice<T>,
                dev: &CudaDevice,
                layout: &Layout,
            ) -> Result<CudaSlice<T>> {
                let Some((start, end)) = layout.contiguous_offsets() else {
                    candle_core::bail!("softmax: the input must be contiguous")
                };
                let src = src.slice(start..end);
                let elements = layout.shape().elem_count();
                let len = layout.dims().last().copied().unwrap_or(1).max(1);
                let cfg = LaunchConfig {
                    grid_dim: ((elements / len) as u32, 1, 1),
                    block_dim: (1, 32, 1),
                    shared_mem_bytes: 0,
                };
                let func = dev.get_or_load_func(&kernel_name::<T>("softmax"), &kernels::REDUCE)?;
                // SAFETY: every element is written by the kernel.
                let dst = unsafe { dev.alloc::<T>(elements)? };
                let mut builder = func.builder();
                builder.arg(&src);
                builder.arg(&dst);
                candle_core::builder_arg!(builder, len as i32);
                // SAFETY: the kernel reads `elements` values of src and writes as many of dst.
                unsafe { builder.launch(cfg) }.w()?;
                Ok(dst)
            }
        }
        let dev = storage.device();
        let slice = Rows.map(&storage.slice, dev, layout)?;
        Ok((candle_core::CudaStorage { slice, device: dev.clone() }, layout.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        if y.device().is_cpu() {
            return Ok(Some(y.apply_op2_no_bwd(&dy.contiguous()?, &Gradient)?));
        }
        let dot = (dy * y)?.sum_keepdim(D::Minus1)?;
        Ok(Some((dy.broadcast_sub(&dot)? * y)?))
    }
}

/// The softmax's input gradient from its output `y` and output gradient `dy`, one pass per row.
struct Gradient;

fn gradient_rows<T: Float + Send + Sync>(y: &[T], dy: &[T], len: usize) -> Vec<T> {
    let mut dx = vec![T::zero(); y.len()];
    dx.par_chunks_mut(len).zip(y.par_chunks(len).zip(dy.par_chunks(len))).for_each(|(dx, (y, dy))| {
        let dot = y.iter().zip(dy).fold(T::zero(), |s, (&y, &dy)| s + y * dy);
        for ((dx, &y), &dy) in dx.iter_mut().zip(y).zip(dy) {
            *dx = y * (dy - dot);
        }
    });
    dx
}

impl CustomOp2 for Gradient {
    fn name(&self) -> &'static str {
        "cvq-softmax-gradient"
    }

    fn cpu_fwd(&self, y: &CpuStorage, yl: &Layout, dy: &CpuStorage, dyl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (Some((ys, ye)), Some((ds, de))) = (yl.contiguous_offsets(), dyl.contiguous_offsets()) else {
            candle_core::bail!("softmax gradient: the inputs must be contiguous")
        };
        let len = yl.dims().last().copied().unwrap_or(1).max(1);
        let out = match (y, dy) {
            (CpuStorage::F32(y), CpuStorage::F32(dy)) => CpuStorage::F32(gradient_rows(&y[ys..ye], &dy[ds..de], len)),
            (CpuStorage::F64(y), CpuStorage::F64(dy)) => CpuStorage::F64(gradient_rows(&y[ys..ye], &dy[ds..de], len)),
            _ => candle_core::bail!("softmax gradient: {:?} is not supported (f32 or f64)", y.dtype()),
        };
        Ok((out, yl.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    #[test]
    fn forward_and_gradient_match_the_composed_softmax() {
        let x = Var::from_vec(
            vec![0.5f64, -1.0, 2.0, f64::NEG_INFINITY, 0.0, 3.0, -2.0, 1.0, f64::NEG_INFINITY, 0.25, 0.75, -0.5],
            (3, 4),
            &Device::Cpu,
        )
        .unwrap();
        let weights =
            Tensor::from_vec((0..12).map(|i| (i as f64 * 0.37).sin()).collect::<Vec<_>>(), (3, 4), &Device::Cpu)
                .unwrap();
        let run = |f: &dyn Fn(&Tensor) -> Result<Tensor>| {
            let y = f(x.as_tensor()).unwrap();
            let grad = (&y * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            (y.to_vec2::<f64>().unwrap(), grad.get(&x).unwrap().to_vec2::<f64>().unwrap())
        };
        let (y, g) = run(&softmax_last_dim);
        let (y_ref, g_ref) = run(&|x| candle_nn::ops::softmax(x, D::Minus1));
        for (a, b) in
            y.iter().flatten().zip(y_ref.iter().flatten()).chain(g.iter().flatten().zip(g_ref.iter().flatten()))
        {
            assert!((a - b).abs() < 1e-14, "{a} vs {b}");
        }
        assert!(g.iter().flatten().any(|&v| v != 0.0));
        let f32 = softmax_last_dim(&x.as_tensor().to_dtype(DType::F32).unwrap()).unwrap();
        assert_eq!(f32.dims(), [3, 4]);
        let zeros = softmax_last_dim(&Tensor::full(f64::NEG_INFINITY, (1, 3), &Device::Cpu).unwrap()).unwrap();
        assert_eq!(zeros.to_vec2::<f64>().unwrap(), [[0.0; 3]]);
    }
}
