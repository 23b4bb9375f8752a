//! `cvq-train`: train cvq's neural predictor and export its int8 weights.
//!
//!     cvq-train --dataset commaai/commavq --shards 0-1 -o weights.safetensors
//!     cvq-train --data clip.npy --val-from-frame 900 -o weights.safetensors

use anyhow::{bail, ensure, Context, Result};
use candle_core::Device;
use candle_nn::VarMap;
use clap::Parser;
use cvq::model::ModelSpec;
use cvq::predict::{transformer::Transformer, Neural};
use cvq_train::{data, export, hub, model::Gpt, train};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
#[command(name = "cvq-train", version, about = "Train cvq's neural predictor and export int8 weights")]
struct Args {
    /// Hugging Face dataset to train on (tar.gz webdataset shards), e.g. commaai/commavq.
    #[arg(long, conflicts_with = "data")]
    dataset: Option<String>,
    /// Shards of the dataset, e.g. `0-1` or `0,3-4`.
    #[arg(long, default_value = "0")]
    shards: String,
    /// Hugging Face cache directory (default: HF_HOME's hub cache). HF_HUB_OFFLINE=1 never downloads.
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Local .npy segments instead: files, or directories of them.
    #[arg(long, num_args = 1..)]
    data: Vec<PathBuf>,
    /// The int8 safetensors to write.
    #[arg(short, long, required_unless_present = "fetch_only")]
    output: Option<PathBuf>,
    /// Only fetch the dataset's shards (from the cache, else downloading them) and print their
    /// paths, one a line: `cvq pack $(cvq-train --dataset commaai/commavq --shards 0-1 --fetch-only)`.
    #[arg(long, requires = "dataset")]
    fetch_only: bool,
    /// Replace an existing output file.
    #[arg(long)]
    force: bool,
    #[arg(long, default_value_t = 2)]
    layers: usize,
    #[arg(long, default_value_t = 128)]
    width: usize,
    #[arg(long, default_value_t = 4)]
    heads: usize,
    /// Previous frames attended to (K).
    #[arg(long, default_value_t = 2)]
    context_frames: usize,
    #[arg(long, default_value_t = 512)]
    mlp_width: usize,
    /// Float training steps.
    #[arg(long, default_value_t = 1000)]
    steps: usize,
    /// Quantization-aware steps after the float ones (int8 fake quantization).
    #[arg(long, default_value_t = 100)]
    qat_steps: usize,
    /// Windows per step.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Frames scored per window (each window also holds the K context frames).
    #[arg(long, default_value_t = 2)]
    frames: usize,
    #[arg(long, default_value_t = 3e-3)]
    lr: f64,
    #[arg(long, default_value_t = 50)]
    warmup: usize,
    #[arg(long, default_value_t = 0.01)]
    weight_decay: f64,
    /// Gradient clipping: largest global gradient norm.
    #[arg(long, default_value_t = 1.0)]
    clip: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value_t = 100)]
    eval_every: usize,
    /// Validation: hold out the last N segments...
    #[arg(long, default_value_t = 1)]
    val_segments: usize,
    /// ...or these segments (by name, comma-separated)...
    #[arg(long, value_delimiter = ',')]
    holdout: Vec<String>,
    /// ...or, for single-clip experiments, every segment's frames from this one on.
    #[arg(long)]
    val_from_frame: Option<usize>,
    /// Directory for checkpoints, written at each validation.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Continue from the checkpoint in --checkpoint.
    #[arg(long, requires = "checkpoint")]
    resume: bool,
    /// Train on the first CUDA GPU (needs a build with `--features cuda`).
    #[arg(long)]
    cuda: bool,
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("cvq-train: error: {e:#}");
        std::process::exit(1);
    }
}

fn device(cuda: bool) -> Result<Device> {
    if !cuda {
        return Ok(Device::Cpu);
    }
    if !candle_core::utils::cuda_is_available() {
        bail!("--cuda: this cvq-train was built without CUDA (rebuild with --features cuda)");
    }
    Ok(Device::new_cuda(0)?)
}

fn shard_paths(a: &Args, dataset: &str) -> Result<Vec<PathBuf>> {
    hub::shards(dataset, &hub::parse_shards(&a.shards)?, a.cache_dir.clone(), hub::offline_from_env())
}

fn load_segments(a: &Args) -> Result<Vec<cvq::data::Segment>> {
    if let Some(dataset) = &a.dataset {
        return data::load_shards(&shard_paths(a, dataset)?);
    }
    ensure!(!a.data.is_empty(), "give --dataset NAME or --data PATH...");
    let mut segments = vec![];
    for p in &a.data {
        if p.is_dir() {
            segments.extend(data::load_dir(p)?);
        } else {
            segments.push(cvq::data::read_segment_file(p)?);
        }
    }
    Ok(segments)
}

fn run(a: Args) -> Result<()> {
    if a.fetch_only {
        for p in shard_paths(&a, a.dataset.as_deref().expect("clap requires --dataset"))? {
            println!("{}", p.display());
        }
        return Ok(());
    }
    let output = a.output.clone().expect("clap requires --output");
    if output.exists() && !a.force {
        bail!("{}: already exists (use --force to replace it)", output.display());
    }
    // The output is written beside itself under a name no one else uses, then renamed; try
    // that now to find an unwritable output before hours of training, not after.
    let tmp = output.with_extension(format!("cvq-train-{}.tmp", std::process::id()));
    std::fs::write(&tmp, b"").with_context(|| format!("{}: cannot write the output here", output.display()))?;
    std::fs::remove_file(&tmp)?;
    let spec = ModelSpec {
        layers: a.layers,
        width: a.width,
        heads: a.heads,
        context_frames: a.context_frames,
        mlp_width: a.mlp_width,
    };
    spec.validate()?;
    let device = device(a.cuda)?;
    let segments = load_segments(&a)?;
    let split = match a.val_from_frame {
        Some(f) => data::split_by_frame(segments, f)?,
        None => data::split_by_segment(segments, &a.holdout, a.val_segments)?,
    };
    eprintln!(
        "{} training and {} validation segments; model {spec:?}; device {device:?}",
        split.train.len(),
        split.val.len()
    );
    let mut vm = VarMap::new();
    let model = Gpt::new(spec, &vm, &device, a.seed)?;
    let first_step = if a.resume { train::load_checkpoint(&mut vm, a.checkpoint.as_ref().unwrap())? } else { 0 };
    let config = train::Config {
        steps: a.steps,
        qat_steps: a.qat_steps,
        batch: a.batch,
        frames: a.frames,
        lr: a.lr,
        warmup: a.warmup,
        weight_decay: a.weight_decay,
        clip: a.clip,
        seed: a.seed,
        eval_every: a.eval_every.max(1),
        checkpoint: a.checkpoint.clone(),
    };
    train::run(&model, &vm, &split, &config, first_step, &device)?;
    let float = train::validate(&model, &split, a.frames, a.batch, false, &device)?;
    let weights = export::export(&model)?;
    let t = Arc::new(Transformer::new(&weights));
    let (mut bits, mut tokens) = (0.0, 0usize);
    for seg in &split.val {
        bits += cvq::code::ideal_bits(&seg.tokens, &mut Neural::new(Arc::clone(&t), seg.tokens.len()));
        tokens += seg.tokens.len();
    }
    let integer = bits / tokens as f64;
    eprintln!(
        "validation: float {float:.4} bits/token, integer (int8 weights, coding path) {integer:.4} bits/token, gap {:+.2}%",
        (integer - float) / float * 100.0
    );
    let bytes = weights.to_bytes()?;
    std::fs::write(&tmp, &bytes).with_context(|| format!("{}: cannot write", tmp.display()))?;
    std::fs::rename(&tmp, &output).with_context(|| format!("{}: cannot write", output.display()))?;
    eprintln!("wrote {} ({} bytes)", output.display(), bytes.len());
    Ok(())
}
