//! Dynamic evaluation in float: what a network gains by taking a gradient step on each frame
//! of a segment right after coding it, and with which of its parameters, alone and inside
//! the context mixer. A measurement for choosing what the integer engine adapts (README,
//! "Online adaptation"); it codes nothing.
//!
//!     cargo run --release -p cvq-train --example dynamic_eval -- \
//!         WEIGHTS SEGMENT.npy LR [--residual] [PARAMETER PREFIX...]
//!
//! Scores every frame of the segment in order, each with the K frames before it (fewer at
//! the start, as the integer engine does), then moves the parameters whose names start with
//! one of the prefixes (all of them when none is given; names as in the weights file, e.g.
//! `head_bias`, `layers.1.mlp`, `tok_same`) by plain SGD with learning rate LR. LR 0 gives
//! the static network's figures. Two figures: the network alone (its cross-entropy), and
//! `mixed` with the float network's tables (rounded to the coder's integer tables) as the
//! context mixer's prior, as `cvq bench` codes a segment (the mixer's ideal code length).
//!
//! `--residual`: the input embeddings (`tok_prev`, `tok_same`, `pos`) move by the gradient
//! of the last residual stream instead of their own, as if every layer passed gradients
//! straight through its skip connection: the step the integer engine can afford per token
//! (FORMAT.md section 3.4), against the true gradient's ceiling.

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device};
use candle_nn::VarMap;
use cvq::data::{read_segment_file, TOKENS_PER_FRAME, VOCAB};
use cvq::predict::{ContextMix, FreqTable, TABLES_WITH_PRIOR, TOTAL};
use cvq_train::data::{HostBatch, Window};
use cvq_train::export;
use cvq_train::model::Gpt;
use std::path::Path;

/// A float distribution as a coder's table: each token at least 1, total `TOTAL`, the
/// rounding's leftover on the most probable token.
fn integer_table(p: &[f32]) -> FreqTable {
    let spare = f64::from(TOTAL - VOCAB as u32);
    let mut freqs: Vec<u32> = p.iter().map(|&p| 1 + (f64::from(p) * spare) as u32).collect();
    let top = (0..VOCAB).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap_or(0);
    freqs[top] += TOTAL - freqs.iter().sum::<u32>();
    FreqTable::new(&freqs)
}

/// The rows each window element reads from the embedding `name` (None: not an embedding).
fn embedding_ids(name: &str, b: &cvq_train::data::Batch) -> Option<candle_core::Tensor> {
    match name {
        "tok_prev" => b.prev.squeeze(0).ok(),
        "tok_same" => b.same.squeeze(0).ok(),
        "pos" => Some(b.pos.clone()),
        _ => None,
    }
}

/// The loss's gradient at the last residual stream `x` of the scored frame, `[128, d]`.
fn residual_gradient(model: &Gpt, x: &candle_core::Tensor, b: &cvq_train::data::Batch) -> Result<candle_core::Tensor> {
    let leaf = candle_core::Var::from_tensor(&x.detach())?;
    let grads = model.loss_of(&model.head(leaf.as_tensor(), false, DType::F32)?, b)?.backward()?;
    Ok(grads.get(leaf.as_tensor()).context("no gradient reaches the residual")?.squeeze(0)?)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    ensure!(args.len() >= 3, "usage: dynamic_eval WEIGHTS SEGMENT.npy LR [--residual] [PARAMETER PREFIX...]");
    let (vm, device) = (VarMap::new(), Device::Cpu);
    let model = export::import(Path::new(&args[0]), &vm, &device)?;
    let seg = read_segment_file(Path::new(&args[1]))?;
    let lr: f64 = args[2].parse().context("LR")?;
    let residual = args.get(3).is_some_and(|a| a == "--residual");
    let prefixes = &args[3 + usize::from(residual)..];
    let k = model.spec.context_frames;

    let vars = Gpt::vars(&vm);
    let chosen: Vec<_> = vars
        .iter()
        .filter(|(n, _)| prefixes.is_empty() || prefixes.iter().any(|p| n.starts_with(p.as_str())))
        .collect();
    ensure!(!chosen.is_empty(), "no parameter starts with {prefixes:?}");

    let mut mixer = ContextMix::new(seg.tokens.len(), TABLES_WITH_PRIOR);
    let (mut alone, mut mixed) = (0.0, 0.0);
    for t in 0..seg.frames() {
        let start = t.saturating_sub(k);
        let window = Window::cut(&seg.tokens, start, t - start + 1, t - start);
        let batch = HostBatch::new(&[window], t - start + 1).to_device(&device)?;
        // One forward pass gives both the tables and, for the step, the loss.
        let (logits, x) = model.forward_with_residual(&batch)?;
        let probs: Vec<Vec<f32>> = candle_nn::ops::softmax_last_dim(&logits.squeeze(0)?)?.to_vec2()?;
        for (row, &token) in probs.iter().zip(&seg.tokens[t * TOKENS_PER_FRAME..(t + 1) * TOKENS_PER_FRAME]) {
            alone -= f64::from(row[usize::from(token)]).log2();
            let prior = integer_table(row);
            mixed -= (f64::from(mixer.interval_with(Some(&prior), token).freq) / f64::from(TOTAL)).log2();
            mixer.learn(Some(&prior), token);
        }
        if lr > 0.0 {
            let grads = model.loss_of(&logits, &batch)?.backward()?;
            for (name, var) in &chosen {
                if residual {
                    let Some(ids) = embedding_ids(name, &batch) else { continue };
                    let gx = residual_gradient(&model, &x, &batch)?;
                    let ids = ids.narrow(0, (t - start) * TOKENS_PER_FRAME, TOKENS_PER_FRAME)?;
                    let g = var.as_tensor().zeros_like()?.index_add(&ids, &gx, 0)?;
                    var.set(&(var.as_tensor() - (g * lr)?)?)?;
                } else if let Some(g) = grads.get(var.as_tensor()) {
                    var.set(&(var.as_tensor() - (g * lr)?)?)?;
                }
            }
        }
    }
    let tokens = seg.tokens.len() as f64;
    println!(
        "{}: {} frames, lr {lr}, adapting {}: network alone {:.4} bits/token, in the mix {:.4}",
        args[1],
        seg.frames(),
        match (residual, prefixes.is_empty()) {
            (_, true) => "everything".to_string(),
            (true, false) => format!("{} by the residual's gradient", prefixes.join(" ")),
            (false, false) => prefixes.join(" "),
        },
        alone / tokens,
        mixed / tokens
    );
    Ok(())
}
