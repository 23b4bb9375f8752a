//! The training loop: AdamW with linear warmup then cosine decay and gradient clipping,
//! gradient accumulation, periodic validation in bits/token, checkpoints; the last
//! `qat_steps` steps train through int8 fake quantization so the exported integer model
//! loses little. Batches come from the stream's loader thread; the loop asks the device for a
//! number only when it logs or validates.

use crate::checkpoint::{self, Data, State};
use crate::data::{tile, HostBatch, Window};
use crate::model::Gpt;
use crate::stream::Loader;
use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use cvq::data::Segment;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct Config {
    /// Float steps, then `qat_steps` with fake quantization.
    pub steps: usize,
    pub qat_steps: usize,
    /// Batches whose gradients add up to one step.
    pub accum: usize,
    pub lr: f64,
    pub warmup: usize,
    pub clip: f64,
    pub eval_every: usize,
    /// Steps between progress updates that read the loss back from the device.
    pub log_every: usize,
    /// Directory of `checkpoint.safetensors`, written at each validation and when a run stops
    /// early.
    pub checkpoint: Option<PathBuf>,
    /// End the run after this many steps (a checkpoint is written), to resume later.
    pub stop_at: Option<usize>,
    /// The type matrix products run in (bf16 on a GPU, f32 on the CPU).
    pub dtype: DType,
    /// Time forward, backward and optimizer apart (`Profile`).
    pub profile: bool,
}

impl Config {
    pub fn total(&self) -> usize {
        self.steps + self.qat_steps
    }
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

/// Validation bits/token: every frame of every validation segment scored once, with its
/// K-frame context, in windows of `frames` frames.
pub fn validate(
    model: &Gpt,
    val: &[Segment],
    frames: usize,
    batch: usize,
    fake_quant: bool,
    dtype: DType,
) -> Result<f64> {
    let k = model.spec.context_frames;
    let windows: Vec<Window> = val.iter().flat_map(|s| tile(&s.tokens, frames, k, 0)).collect();
    anyhow::ensure!(!windows.is_empty(), "no validation segment holds a whole window of {frames} frames");
    let (mut nats, mut count) = (0.0, 0.0);
    let device = model.norm_out.device();
    for chunk in windows.chunks(batch) {
        let b = HostBatch::new(chunk, frames).to_device(device)?;
        let loss = model.loss(&b, fake_quant, dtype)?;
        nats += f64::from(loss.to_dtype(DType::F32)?.to_scalar::<f32>()?) * b.scored as f64;
        count += b.scored as f64;
    }
    Ok(nats / count / std::f64::consts::LN_2)
}

/// How a run ended, and its speed.
pub struct Outcome {
    pub end: End,
    /// Tokens scored per second of training steps (validation and checkpoints left out).
    pub tokens_per_sec: f64,
    pub profile: Option<Profile>,
}

/// Where the training steps' time went, the device synchronised after each part (which
/// costs the overlap of one part with the next: a profiled run is a little slower).
#[derive(Clone, Debug, Default)]
pub struct Profile {
    pub steps: u32,
    pub forward: Duration,
    pub backward: Duration,
    pub optimizer: Duration,
}

impl Profile {
    /// Run `f`, then wait for the device, adding the time to `part` (when profiling).
    fn time<T>(
        this: &mut Option<Profile>,
        part: fn(&mut Profile) -> &mut Duration,
        device: &Device,
        f: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let Some(p) = this else { return f() };
        let t0 = Instant::now();
        let out = f()?;
        device.synchronize()?;
        *part(p) += t0.elapsed();
        Ok(out)
    }

    /// "forward X ms, backward Y ms, optimizer Z ms per step".
    pub fn summary(&self) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1e3 / f64::from(self.steps.max(1));
        format!(
            "forward {:.1} ms, backward {:.1} ms, optimizer {:.1} ms per step (device synchronised after each; {} steps)",
            ms(self.forward),
            ms(self.backward),
            ms(self.optimizer),
            self.steps
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    Finished,
    /// At `--stop-at`.
    Stopped,
    /// By Ctrl-C.
    Interrupted,
}

/// One step's gradients: the sum over `accum` batches of each batch's mean loss / `accum`.
/// Returns them (one per parameter) and the summed loss (on the device).
fn gradients(
    model: &Gpt,
    s: &mut State,
    loader: &mut Loader,
    c: &Config,
    epoch: &mut f64,
    profile: &mut Option<Profile>,
) -> Result<(Vec<Tensor>, Tensor)> {
    let fake_quant = s.step >= c.steps;
    let mut sum: Vec<Option<Tensor>> = vec![None; s.opt.vars.len()];
    let mut loss_sum = None;
    for _ in 0..c.accum {
        let item = loader.next_batch()?;
        if item.epoch.is_finite() {
            *epoch = item.epoch;
        }
        let device = model.norm_out.device();
        let batch = item.host.to_device(device)?;
        let loss = Profile::time(
            profile,
            |p| &mut p.forward,
            device,
            || Ok((model.loss(&batch, fake_quant, c.dtype)? / c.accum as f64)?),
        )?;
        let grads = Profile::time(profile, |p| &mut p.backward, device, || Ok(loss.backward()?))?;
        for (acc, (_, var)) in sum.iter_mut().zip(&s.opt.vars) {
            if let Some(g) = grads.get(var) {
                *acc = Some(match acc.take() {
                    Some(a) => (a + g)?,
                    None => g.clone(),
                });
            }
        }
        loss_sum = Some(match loss_sum {
            Some(l) => (l + loss.detach())?,
            None => loss.detach(),
        });
        s.tokens += batch.scored as u64;
    }
    let grads = sum
        .into_iter()
        .zip(&s.opt.vars)
        .map(|(g, (_, v))| g.map_or_else(|| v.zeros_like(), Ok))
        .collect::<candle_core::Result<_>>()?;
    Ok((grads, loss_sum.expect("accum >= 1")))
}

/// GPU memory in use, for the progress line (CUDA builds only).
fn gpu_memory(device: &Device) -> String {
    #[cfg(feature = "cuda")]
    if device.is_cuda() {
        if let Ok((free, total)) = candle_core::cuda_backend::cudarc::driver::result::mem_get_info() {
            return format!(", GPU {:.1}/{:.1} GB", (total - free) as f64 / 1e9, total as f64 / 1e9);
        }
    }
    let _ = device;
    String::new()
}

/// Progress: tokens/s, epoch and its ETA; the bar shows the run's ETA.
struct Meter {
    bar: ProgressBar,
    started: Instant,
    /// Time spent validating and checkpointing, left out of tokens/s.
    aside: std::time::Duration,
    tokens_at_start: u64,
    /// The first epoch position seen, and when.
    epoch_start: Option<(Instant, f64)>,
}

impl Meter {
    fn new(s: &State, total: usize) -> Meter {
        let style = ProgressStyle::with_template("{bar:30} {pos}/{len} steps {msg} ({elapsed}, eta {eta})")
            .expect("valid template");
        let bar = ProgressBar::new(total as u64).with_style(style);
        bar.set_position(s.step as u64);
        Meter { bar, started: Instant::now(), aside: Default::default(), tokens_at_start: s.tokens, epoch_start: None }
    }

    /// Tokens scored per second of training steps.
    fn rate(&self, s: &State) -> f64 {
        (s.tokens - self.tokens_at_start) as f64 / (self.started.elapsed() - self.aside).as_secs_f64()
    }

    fn show(&mut self, s: &State, train: f64, val: f64, epoch: f64, device: &Device) {
        let mut epoch_text = String::new();
        if epoch.is_finite() {
            let (t0, e0) = *self.epoch_start.get_or_insert((Instant::now(), epoch));
            let speed = (epoch - e0) / t0.elapsed().as_secs_f64();
            let left = (epoch.floor() + 1.0 - epoch) / speed;
            epoch_text = format!(", epoch {} {:.1}%", epoch.floor() as u64 + 1, epoch.fract() * 100.0);
            if speed > 0.0 && left.is_finite() {
                epoch_text += &format!(" (eta {})", indicatif::HumanDuration(std::time::Duration::from_secs_f64(left)));
            }
        }
        self.bar.set_message(format!(
            "train {train:.3} bits/token, val {val:.3}, {:.0} tokens/s{epoch_text}{}",
            self.rate(s),
            gpu_memory(device)
        ));
    }
}

/// Train from `s.step` on: to the end, to `--stop-at`, or until `interrupt` is set (Ctrl-C).
/// Returns where the data stands and how the run ended; a run that ends early writes a
/// checkpoint when it has a directory for one.
pub fn run(
    model: &Gpt,
    s: &mut State,
    data: Data,
    val: &[Segment],
    c: &Config,
    interrupt: &AtomicBool,
) -> Result<(Data, Outcome)> {
    let device = model.norm_out.device().clone();
    let (frames, batch) = (data.stream.frames, data.stream.batch);
    let mut loader = Loader::start(data.stream, data.queued);
    let mut meter = Meter::new(s, c.total());
    let (mut train_bits, mut val_bits, mut epoch) = (f64::NAN, f64::NAN, f64::NAN);
    let mut end = End::Finished;
    let mut profile = c.profile.then(Profile::default);
    while s.step < c.total() {
        if c.stop_at.is_some_and(|at| s.step >= at) {
            end = End::Stopped;
            break;
        }
        if interrupt.load(Ordering::Relaxed) {
            end = End::Interrupted;
            break;
        }
        let (grads, loss) = gradients(model, s, &mut loader, c, &mut epoch, &mut profile)?;
        let lr = learning_rate(c, s.step);
        Profile::time(&mut profile, |p| &mut p.optimizer, &device, || s.opt.step(&grads, lr, c.clip))?;
        if let Some(p) = &mut profile {
            p.steps += 1;
        }
        s.step += 1;
        meter.bar.inc(1);
        let validating = s.step.is_multiple_of(c.eval_every) || s.step == c.total();
        if s.step.is_multiple_of(c.log_every) || validating {
            train_bits = f64::from(loss.to_dtype(DType::F32)?.to_scalar::<f32>()?) / std::f64::consts::LN_2;
            meter.show(s, train_bits, val_bits, epoch, &device);
        }
        if validating {
            let aside = Instant::now();
            val_bits = validate(model, val, frames, batch, s.step > c.steps, c.dtype)?;
            let rate = meter.rate(s);
            meter.bar.suspend(|| {
                eprintln!(
                    "step {}: {} tokens seen, train {train_bits:.4} bits/token, validation {val_bits:.4}, {rate:.0} tokens/s",
                    s.step, s.tokens
                )
            });
            if let Some(dir) = &c.checkpoint {
                let (stream, queued) = loader.pause()?;
                let d = Data { stream, queued };
                checkpoint::save(dir, &model.spec, s, &d)?;
                loader = Loader::start(d.stream, d.queued);
            }
            meter.aside += aside.elapsed();
        }
    }
    meter.bar.finish_and_clear();
    let (stream, queued) = loader.pause()?;
    let d = Data { stream, queued };
    if end != End::Finished {
        if let Some(dir) = &c.checkpoint {
            checkpoint::save(dir, &model.spec, s, &d)?;
        }
    }
    Ok((d, Outcome { end, tokens_per_sec: meter.rate(s), profile }))
}
