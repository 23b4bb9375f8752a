//! The training loop: AdamW, linear warmup then cosine decay, gradient clipping by global
//! norm, periodic validation in bits/token, checkpoints; the last `qat_steps` steps train
//! through int8 fake quantization so the exported integer model loses little.

use crate::data::{batch, sample, tiles, Rng, Split};
use crate::model::Gpt;
use anyhow::{Context, Result};
use candle_core::Device;
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarMap};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct Config {
    /// Float steps, then `qat_steps` with fake quantization.
    pub steps: usize,
    pub qat_steps: usize,
    pub batch: usize,
    /// Frames scored per training window (the window also holds K context frames).
    pub frames: usize,
    pub lr: f64,
    pub warmup: usize,
    pub weight_decay: f64,
    pub clip: f64,
    pub seed: u64,
    pub eval_every: usize,
    /// Directory for `checkpoint.safetensors` and `checkpoint.step`.
    pub checkpoint: Option<PathBuf>,
}

/// Learning rate at `step`: warmup, cosine to 10% over the float steps, 10% during QAT.
pub fn learning_rate(c: &Config, step: usize) -> f64 {
    if step < c.warmup {
        return c.lr * (step + 1) as f64 / c.warmup as f64;
    }
    if step >= c.steps {
        return c.lr * 0.1;
    }
    let t = (step - c.warmup) as f64 / (c.steps - c.warmup).max(1) as f64;
    c.lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * t).cos()))
}

/// Validation bits/token of the float model (with or without fake quantization).
pub fn validate(
    model: &Gpt,
    split: &Split,
    frames: usize,
    batch_size: usize,
    fake_quant: bool,
    device: &Device,
) -> Result<f64> {
    let k = model.spec.context_frames;
    let windows = tiles(&split.val, k + frames, k);
    anyhow::ensure!(!windows.is_empty(), "no validation segment holds a whole window of {} frames", k + frames);
    let (mut nats, mut count) = (0.0, 0.0);
    for chunk in windows.chunks(batch_size) {
        let (loss, n) = model.loss(&batch(chunk, k + frames, device)?, fake_quant)?;
        nats += f64::from(loss.to_scalar::<f32>()?) * n;
        count += n;
    }
    Ok(nats / count / std::f64::consts::LN_2)
}

fn clip_gradients(grads: &mut candle_core::backprop::GradStore, vm: &VarMap, max_norm: f64) -> Result<f64> {
    let vars = vm.all_vars();
    let mut sq = 0.0;
    for v in &vars {
        if let Some(g) = grads.get(v) {
            sq += f64::from(g.sqr()?.sum_all()?.to_scalar::<f32>()?);
        }
    }
    let norm = sq.sqrt();
    if norm > max_norm {
        for v in &vars {
            if let Some(g) = grads.remove(v) {
                grads.insert(v, (g * (max_norm / norm))?);
            }
        }
    }
    Ok(norm)
}

/// Train from `first_step` to the end; returns the final float validation bits/token.
pub fn run(model: &Gpt, vm: &VarMap, split: &Split, c: &Config, first_step: usize, device: &Device) -> Result<f64> {
    let k = model.spec.context_frames;
    let params = ParamsAdamW { lr: c.lr, weight_decay: c.weight_decay, ..Default::default() };
    let mut opt = AdamW::new(vm.all_vars(), params)?;
    let mut rng = Rng::new(c.seed ^ first_step as u64);
    let total = c.steps + c.qat_steps;
    let bar = ProgressBar::new(total as u64).with_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps {msg} ({elapsed}, eta {eta})")
            .expect("valid template"),
    );
    bar.set_position(first_step as u64);
    let started = Instant::now();
    let mut tokens = 0usize;
    let mut val = f64::NAN;
    for step in first_step..total {
        let fake_quant = step >= c.steps;
        let windows = sample(&split.train, k + c.frames, k, c.batch, &mut rng);
        let (loss, n) = model.loss(&batch(&windows, k + c.frames, device)?, fake_quant)?;
        let mut grads = loss.backward()?;
        clip_gradients(&mut grads, vm, c.clip)?;
        opt.set_learning_rate(learning_rate(c, step));
        opt.step(&grads)?;
        tokens += n as usize;
        let bits = f64::from(loss.to_scalar::<f32>()?) / std::f64::consts::LN_2;
        let rate = tokens as f64 / started.elapsed().as_secs_f64();
        bar.set_message(format!(
            "train {bits:.3} bits/token, val {val:.3}, {rate:.0} tokens/s{}",
            if fake_quant { ", int8 fake-quant" } else { "" }
        ));
        bar.inc(1);
        if (step + 1) % c.eval_every == 0 || step + 1 == total {
            val = validate(model, split, c.frames, c.batch, fake_quant, device)?;
            bar.suspend(|| {
                eprintln!("step {}: train {bits:.4} bits/token, validation {val:.4}, {rate:.0} tokens/s", step + 1)
            });
            if let Some(dir) = &c.checkpoint {
                save_checkpoint(vm, dir, step + 1)?;
            }
        }
    }
    bar.finish_and_clear();
    Ok(val)
}

pub fn save_checkpoint(vm: &VarMap, dir: &std::path::Path, step: usize) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create checkpoint directory", dir.display()))?;
    let tmp = dir.join("checkpoint.safetensors.tmp");
    vm.save(&tmp).with_context(|| format!("{}: cannot write checkpoint", tmp.display()))?;
    std::fs::rename(&tmp, dir.join("checkpoint.safetensors"))?;
    std::fs::write(dir.join("checkpoint.step"), step.to_string())?;
    Ok(())
}

/// Load a checkpoint into `vm`; returns the step to continue from (optimizer moments restart).
pub fn load_checkpoint(vm: &mut VarMap, dir: &std::path::Path) -> Result<usize> {
    let step_file = dir.join("checkpoint.step");
    let step = std::fs::read_to_string(&step_file)
        .with_context(|| format!("{}: no checkpoint to resume", step_file.display()))?
        .trim()
        .parse()
        .with_context(|| format!("{}: not a step number", step_file.display()))?;
    vm.load(dir.join("checkpoint.safetensors")).context("cannot load checkpoint weights")?;
    Ok(step)
}
