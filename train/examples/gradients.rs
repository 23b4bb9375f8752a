//! Writes a model's parameters, one batch of the real clip, the loss and every gradient, all
//! in f64, for an independent implementation to recompute (`train/bench/gradient-check.sh`
//! feeds the file to `torch_reference.py --gradients`):
//!
//!     cargo run --release -p cvq-train --example gradients -- OUT.safetensors [LAYERS WIDTH HEADS K MLP FRAMES [KV_HEADS REACH_ROWS REACH_COLS]]
//!
//! Tensors: `param.NAME` and `grad.NAME` for every parameter (the runtime's names),
//! `batch.prev`, `batch.same`, `batch.targets` (u32, `[B, N]`), `batch.mask` (`[B, N]`),
//! `loss` (mean nats over the scored tokens), `spec` (u32: layers, width, heads, K, MLP
//! width, frames per window, key/value heads, reach in rows and in columns). Parameters are spread (`Gpt::spread`) so that attention is far
//! from uniform. Default: the built-in model's shape, 2 x 128, 4 heads, K = 2, MLP 512, 2
//! scored frames.

#[path = "../../tests/common/real_data.rs"]
mod real_data;
use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use cvq::data::{read_segment_file, TOKENS_PER_FRAME};
use cvq::network::ModelSpec;
use cvq_train::data::{tile, HostBatch};
use cvq_train::model::Gpt;
use real_data::real_data;
use std::collections::HashMap;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    ensure!(
        [1, 7, 10].contains(&args.len()),
        "usage: gradients OUT.safetensors [LAYERS WIDTH HEADS K MLP FRAMES [KV_HEADS REACH_ROWS REACH_COLS]]"
    );
    let n: Vec<usize> = if args.len() > 1 {
        args[1..].iter().map(|a| a.parse().with_context(|| format!("{a}: not a number"))).collect::<Result<_>>()?
    } else {
        vec![2, 128, 4, 2, 512, 2]
    };
    let mut spec = ModelSpec::new(n[0], n[1], n[2], n[3], n[4]);
    if let [kv_heads, reach_rows, reach_cols] = n[6..] {
        spec = ModelSpec { kv_heads, reach_rows, reach_cols, ..spec };
    }
    spec.validate()?;
    let frames = spec.context_frames + n[5];

    let vm = VarMap::new();
    let model = Gpt::new(spec, &vm, &Device::Cpu, 1, DType::F64)?;
    Gpt::spread(&vm, 7)?;
    // Two windows from inside the clip, each with its lead frame, as the stream cuts them.
    let clip = read_segment_file(&real_data("clip.npy"))?;
    let windows = tile(&clip.tokens[..(4 * frames + 2) * TOKENS_PER_FRAME], frames, spec.context_frames, 0);
    let batch = HostBatch::new(&windows[1..3], frames).to_device(&Device::Cpu)?;

    let loss = model.loss(&batch, false, DType::F64)?;
    let grads = loss.backward()?;
    let mut out: HashMap<String, Tensor> = HashMap::new();
    for (name, var) in Gpt::vars(&vm) {
        let grad = grads.get(&var).with_context(|| format!("{name}: no gradient"))?;
        out.insert(format!("grad.{name}"), grad.clone());
        out.insert(format!("param.{name}"), var.as_tensor().clone());
    }
    out.insert("batch.prev".into(), batch.prev.clone());
    out.insert("batch.same".into(), batch.same.clone());
    out.insert("batch.targets".into(), batch.targets.clone());
    out.insert("batch.mask".into(), batch.mask.to_dtype(DType::F64)?);
    out.insert("loss".into(), loss.reshape(1)?);
    let spec_values = [
        spec.layers,
        spec.width,
        spec.heads,
        spec.context_frames,
        spec.mlp_width,
        frames,
        spec.kv_heads,
        spec.reach_rows,
        spec.reach_cols,
    ];
    out.insert("spec".into(), Tensor::new(&spec_values.map(|v| v as u32), &Device::Cpu)?);
    candle_core::safetensors::save(&out, &args[0]).with_context(|| format!("{}: cannot write", args[0]))?;
    eprintln!("{spec:?}, {frames} frames per window: loss {:.6} nats; wrote {}", loss.to_scalar::<f64>()?, args[0]);
    Ok(())
}
