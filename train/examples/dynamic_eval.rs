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
use candle_core::{DType, Device};
use candle_nn::VarMap;
use cvq::data::read_segment_file;
use cvq_train::data::{HostBatch, Window};
use cvq_train::export;
use cvq_train::model::Gpt;
use std::path::Path;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    ensure!(args.len() >= 4, "usage: dynamic_eval WEIGHTS SEGMENT.npy FROM_FRAME LR [PARAMETER PREFIX...]");
    let (vm, device) = (VarMap::new(), Device::Cpu);
    let model = export::import(Path::new(&args[0]), &vm, &device)?;
    let seg = read_segment_file(Path::new(&args[1]))?;
    let from: usize = args[2].parse().context("FROM_FRAME")?;
    let lr: f64 = args[3].parse().context("LR")?;
    let prefixes = &args[4..];
    let k = model.spec.context_frames;
    ensure!(from >= k && from < seg.frames(), "FROM_FRAME must be in {k}..{}", seg.frames());

    let vars = Gpt::vars(&vm);
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
