//! Dynamic evaluation in float: what a network gains by taking a gradient step on each frame
//! of a segment right after coding it, and with which of its parameters. A measurement for
//! choosing what the integer engine adapts (README, "Online adaptation"); it codes nothing.
//!
//!     cargo run --release -p cvq-train --example dynamic_eval -- \
//!         WEIGHTS SEGMENT.npy FROM_FRAME LR [PARAMETER PREFIX...]
//!
//! Scores frames FROM_FRAME.. of the segment one at a time, each with its K context frames,
//! then moves the parameters whose names start with one of the prefixes (all of them when
//! none is given; names as in the weights file, e.g. `head_bias`, `layers.1.mlp`, `tok_same`)
//! by plain SGD with learning rate LR. LR 0 gives the static network's figure.

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use cvq::data::read_segment_file;
use cvq::model::spec::Kind;
use cvq::model::Weights;
use cvq_train::data::{HostBatch, Window};
use cvq_train::model::Gpt;
use safetensors::SafeTensors;
use std::path::Path;

/// The weights file's tensors back in float, by the spec's names (the trainer's too): int8
/// matrices times their row scales, the query rows without the 1/sqrt(head_dim) that export
/// folded into them.
fn float_tensors(w: &Weights, bytes: &[u8]) -> Result<Vec<(String, Vec<f32>)>> {
    let st = SafeTensors::deserialize(bytes)?;
    let f32s = |name: &str| -> Result<Vec<f32>> {
        let data = st.tensor(name)?.data().to_vec();
        Ok(data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
    };
    let unfold = (w.spec.head_dim() as f32).sqrt();
    let mut out = vec![];
    for (name, shape, kind) in w.spec.tensors() {
        let values = match kind {
            Kind::F32 => f32s(&name)?,
            Kind::Int8Rows => {
                let (scales, cols) = (f32s(&format!("{name}.scale"))?, shape[1]);
                let folded = if name.ends_with("attn.qkv") { w.spec.width } else { 0 };
                let rows = st.tensor(&name)?.data().chunks_exact(cols).zip(scales).enumerate();
                rows.flat_map(|(r, (row, s))| {
                    let s = if r < folded { s * unfold } else { s };
                    row.iter().map(move |&v| f32::from(v as i8) * s)
                })
                .collect()
            }
        };
        out.push((name, values));
    }
    Ok(out)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    ensure!(args.len() >= 4, "usage: dynamic_eval WEIGHTS SEGMENT.npy FROM_FRAME LR [PARAMETER PREFIX...]");
    let bytes = std::fs::read(&args[0]).with_context(|| format!("{}: cannot read", args[0]))?;
    let w = Weights::from_bytes(&bytes).with_context(|| format!("{}: not valid cvq weights", args[0]))?;
    let seg = read_segment_file(Path::new(&args[1]))?;
    let from: usize = args[2].parse().context("FROM_FRAME")?;
    let lr: f64 = args[3].parse().context("LR")?;
    let prefixes = &args[4..];
    let k = w.spec.context_frames;
    ensure!(from >= k && from < seg.frames(), "FROM_FRAME must be in {k}..{}", seg.frames());

    let (vm, device) = (VarMap::new(), Device::Cpu);
    let model = Gpt::new(w.spec, &vm, &device, 0)?;
    let vars = Gpt::vars(&vm);
    for (name, values) in float_tensors(&w, &bytes)? {
        let var = &vars.iter().find(|(n, _)| *n == name).with_context(|| format!("no parameter {name}"))?.1;
        var.set(&Tensor::from_vec(values, var.shape(), &device)?)?;
    }
    let chosen: Vec<_> = vars
        .iter()
        .filter(|(n, _)| prefixes.is_empty() || prefixes.iter().any(|p| n.starts_with(p.as_str())))
        .collect();
    ensure!(!chosen.is_empty(), "no parameter starts with {prefixes:?}");

    let mut bits = 0.0;
    for t in from..seg.frames() {
        let window = Window::cut(&seg.tokens, t - k, k + 1, k);
        let batch = HostBatch::new(&[window], k + 1).to_device(&device)?;
        let loss = model.loss(&batch, false, DType::F32)?;
        bits += f64::from(loss.to_scalar::<f32>()?) / std::f64::consts::LN_2;
        if lr > 0.0 {
            let grads = loss.backward()?;
            for (_, var) in &chosen {
                if let Some(g) = grads.get(var.as_tensor()) {
                    var.set(&(var.as_tensor() - (g * lr)?)?)?;
                }
            }
        }
    }
    let frames = seg.frames() - from;
    println!(
        "{}: frames {from}..{}, lr {lr}, adapting {}: {:.4} bits/token",
        args[1],
        seg.frames(),
        if prefixes.is_empty() { "everything".to_string() } else { prefixes.join(" ") },
        bits / frames as f64
    );
    Ok(())
}
