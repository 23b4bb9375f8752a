//! `cvq-train`: train cvq's neural predictor and export its int8 weights.
//!
//!     cvq-train --dataset commaai/commavq --shards 0-1 --preset challenge --cuda -o weights.safetensors
//!     cvq-train --data clip.npy --val-from-frame 900 -o weights.safetensors

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device};
use candle_nn::VarMap;
use clap::{Parser, ValueEnum};
use cvq::network::ModelSpec;
use cvq::predict::{transformer::Transformer, Neural};
use cvq_train::checkpoint::{self, Data, State};
use cvq_train::stream::{self, Source, Stream};
use cvq_train::train::{self, End};
use cvq_train::{data, export, hub, model::Gpt, optim::AdamW};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// candle allocates every intermediate tensor afresh; glibc's malloc hands large ones back to
/// the kernel on free, so each step page-faults its whole working set in again (a quarter of
/// the CPU step). mimalloc keeps them: 1.5x (challenge preset) to 1.7x (default) the CPU
/// step's speed here.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (its option 15 in mimalloc 2 and 3): by default it
/// hands memory unused for 10 ms back to the kernel, and the next step faults it in again
/// zeroed (a quarter of the frame-block step's time in `clear_page`); -1 keeps it.
fn keep_freed_memory() {
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: sets one of mimalloc's options, a plain integer it reads at each purge.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
}

#[derive(Parser)]
// A flag given twice takes its last value, so a sweep can put a recipe's flags after common ones.
#[command(
    name = "cvq-train",
    version,
    args_override_self = true,
    about = "Train cvq's neural predictor and export int8 weights"
)]
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
    /// Replace an existing output file, or start over where a checkpoint exists.
    #[arg(long)]
    force: bool,
    /// Model and schedule: `tiny` (a smoke test), `default` (the built-in model's shape), or
    /// `challenge` (the model recommended for the 5,000-segment challenge, for one GPU).
    /// Flags given explicitly override the preset's values.
    #[arg(long, value_enum, default_value_t = Preset::Default)]
    preset: Preset,
    #[arg(long)]
    layers: Option<usize>,
    #[arg(long)]
    width: Option<usize>,
    #[arg(long)]
    heads: Option<usize>,
    /// Previous frames attended to (K).
    #[arg(long)]
    context_frames: Option<usize>,
    #[arg(long)]
    mlp_width: Option<usize>,
    /// Key/value heads, dividing --heads (grouped-query attention; 1: multi-query). Default:
    /// the preset's, or every head its own when --heads is given.
    #[arg(long)]
    kv_heads: Option<usize>,
    /// How far a query reads into earlier frames: the places within ROWS rows and COLS
    /// columns of its own (default: the preset's; 7,15 is the whole frame).
    #[arg(long, value_name = "ROWS,COLS", value_parser = parse_reach)]
    reach: Option<(usize, usize)>,
    /// Float training steps.
    #[arg(long)]
    steps: Option<usize>,
    /// Quantization-aware steps after the float ones (int8 fake quantization).
    #[arg(long)]
    qat_steps: Option<usize>,
    /// Windows per batch.
    #[arg(long)]
    batch: Option<usize>,
    /// Batches whose gradients add up to one step (gradient accumulation).
    #[arg(long, default_value_t = 1)]
    accum: usize,
    /// Frames scored per window (each window also holds the K context frames).
    #[arg(long)]
    frames: Option<usize>,
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long)]
    warmup: Option<usize>,
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Gradient clipping: largest global gradient norm.
    #[arg(long, default_value_t = 1.0)]
    clip: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Windows the shuffle buffer holds (memory: about this many x window size).
    #[arg(long, default_value_t = 4096)]
    shuffle_buffer: usize,
    #[arg(long, default_value_t = 100)]
    eval_every: usize,
    /// Steps between progress updates (each reads the loss back from the device).
    #[arg(long, default_value_t = 10)]
    log_every: usize,
    /// Time each step's forward, backward and optimizer apart (the device synchronised after
    /// each, a little slower) and print them at the end.
    #[arg(long)]
    profile: bool,
    /// Validation: hold out the last N segments (of the data, or of --val-shard)...
    #[arg(long, default_value_t = 1)]
    val_segments: usize,
    /// ...validate on this dataset shard instead (not trained on; its last N segments)...
    #[arg(long, requires = "dataset", conflicts_with_all = ["holdout", "val_from_frame"])]
    val_shard: Option<usize>,
    /// ...or these segments (by name, comma-separated)...
    #[arg(long, value_delimiter = ',')]
    holdout: Vec<String>,
    /// ...or, for single-clip experiments, every segment's frames from this one on.
    #[arg(long, conflicts_with = "holdout")]
    val_from_frame: Option<usize>,
    /// Checkpoint directory, written at each validation, at --stop-at and on Ctrl-C
    /// [default: the output's path with extension `.checkpoint`].
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Continue exactly where the checkpoint left off (same data and settings).
    #[arg(long)]
    resume: bool,
    /// End after this many steps with a checkpoint (for time-limited jobs); resume with --resume.
    #[arg(long)]
    stop_at: Option<usize>,
    /// Train on the first CUDA GPU (needs a build with `--features cuda`).
    #[arg(long)]
    cuda: bool,
    /// Type of the matrix products: bf16 on CUDA, f32 on the CPU by default (master weights,
    /// norms, softmax and the loss stay f32).
    #[arg(long, value_enum)]
    precision: Option<Precision>,
    /// Test only: no gradient through the attention scores (queries, keys, frame biases), as
    /// the trainer before 0.5 did; the control run that shows what attention learns.
    #[arg(long, hide = true)]
    fixed_attention: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Preset {
    Tiny,
    Default,
    Challenge,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Precision {
    F32,
    Bf16,
}

/// A preset's model and schedule.
struct Recipe {
    spec: ModelSpec,
    steps: usize,
    qat_steps: usize,
    batch: usize,
    frames: usize,
    lr: f64,
    warmup: usize,
    weight_decay: f64,
}

fn recipe(p: Preset) -> Recipe {
    let spec = ModelSpec::new;
    // The options that read less (issue 28, train/README.md "Attention that reads less"):
    // one key/value head for all query heads and a reach of 1 row and 1 column into earlier
    // frames validated best at equal tokens and decode about 3x faster at the challenge shape.
    let read_less = |s: ModelSpec| ModelSpec { kv_heads: 1, reach_rows: 1, reach_cols: 1, ..s };
    match p {
        Preset::Tiny => Recipe {
            spec: spec(1, 32, 2, 1, 64),
            steps: 200,
            qat_steps: 20,
            batch: 8,
            frames: 2,
            lr: 1e-2,
            warmup: 20,
            weight_decay: 0.01,
        },
        // The built-in model's shape and its recipe (weights/README.md), longer. 2 scored
        // frames per window: at equal tokens they validated best of 2, 4, 8 and 12 (README,
        // "Scored frames per window").
        Preset::Default => Recipe {
            spec: read_less(spec(2, 128, 4, 2, 512)),
            steps: 5_000,
            qat_steps: 200,
            batch: 16,
            frames: 2,
            lr: 2e-3,
            warmup: 100,
            weight_decay: 0.1,
        },
        // About one epoch of the challenge's 768M tokens: 64 windows x 4 scored frames x 128
        // tokens = 32,768 tokens a step, 23,000 float steps and 1,000 int8 ones (README).
        Preset::Challenge => Recipe {
            spec: read_less(spec(6, 256, 8, 4, 1024)),
            steps: 23_000,
            qat_steps: 1_000,
            batch: 64,
            frames: 4,
            lr: 1.5e-3,
            warmup: 500,
            weight_decay: 0.1,
        },
    }
}

/// The preset's spec with the flags given.
fn spec_of(a: &Args, preset: &ModelSpec) -> ModelSpec {
    let heads = a.heads.unwrap_or(preset.heads);
    let kv_heads = a.kv_heads.unwrap_or(if a.heads.is_some() { heads } else { preset.kv_heads });
    let (reach_rows, reach_cols) = a.reach.unwrap_or((preset.reach_rows, preset.reach_cols));
    let spec = ModelSpec::new(
        a.layers.unwrap_or(preset.layers),
        a.width.unwrap_or(preset.width),
        heads,
        a.context_frames.unwrap_or(preset.context_frames),
        a.mlp_width.unwrap_or(preset.mlp_width),
    );
    ModelSpec { kv_heads, reach_rows, reach_cols, ..spec }
}

fn parse_reach(s: &str) -> Result<(usize, usize), String> {
    let parsed = s.split_once(',').and_then(|(r, c)| Some((r.trim().parse().ok()?, c.trim().parse().ok()?)));
    parsed.ok_or_else(|| format!("expected ROWS,COLS (two numbers, as 2,2), not {s:?}"))
}

/// Set by SIGINT/SIGTERM; the loop ends at the next step with a checkpoint. A second signal
/// ends the process at once.
static INTERRUPT: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    if INTERRUPT.swap(true, Ordering::SeqCst) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(130) };
    }
}

fn catch_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only touches an atomic and calls _exit.
        unsafe { libc::signal(sig, on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t) };
    }
}

fn main() {
    keep_freed_memory();
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

/// Training sources and the validation segments (the only ones held in memory).
fn sources(a: &Args) -> Result<(Vec<Source>, Vec<cvq::data::Segment>)> {
    let shards = match &a.dataset {
        Some(d) => shard_paths(a, d)?,
        None => vec![],
    };
    ensure!(!shards.is_empty() || !a.data.is_empty(), "give --dataset NAME or --data PATH...");
    let all = stream::sources(&shards, &a.data)?;
    if let Some(f) = a.val_from_frame {
        let (train, val) = data::split_by_frame(stream::load_all(&all)?, f)?;
        return Ok((train.into_iter().map(|s| Source::Memory(Arc::new(s))).collect(), val));
    }
    let val = match (a.val_shard, &a.dataset) {
        (Some(n), Some(d)) => {
            ensure!(!hub::parse_shards(&a.shards)?.contains(&n), "--val-shard {n} is also a training shard");
            let shard = hub::shards(d, &[n], a.cache_dir.clone(), hub::offline_from_env())?;
            stream::hold_out(&stream::sources(&shard, &[])?, &[], a.val_segments)?
        }
        _ => stream::hold_out(&all, &a.holdout, a.val_segments)?,
    };
    Ok((all, val))
}

/// Fail now, not after hours of training, if the output cannot be written.
fn check_output(output: &Path, force: bool) -> Result<()> {
    if output.exists() && !force {
        bail!("{}: already exists (use --force to replace it)", output.display());
    }
    let tmp = temp_path(output);
    std::fs::write(&tmp, b"").with_context(|| format!("{}: cannot write the output here", output.display()))?;
    Ok(std::fs::remove_file(&tmp)?)
}

/// The output is written beside itself under a name no one else uses, then renamed.
fn temp_path(output: &Path) -> PathBuf {
    output.with_extension(format!("cvq-train-{}.tmp", std::process::id()))
}

/// The checkpoint directory, refusing to start over a checkpoint unasked or to resume none.
fn checkpoint_dir(a: &Args, output: &Path) -> Result<PathBuf> {
    let dir = a.checkpoint.clone().unwrap_or_else(|| output.with_extension("checkpoint"));
    let has = checkpoint::path(&dir).exists();
    ensure!(
        a.resume || !has || a.force,
        "{}: holds a checkpoint: --resume to continue it, --force to start over",
        dir.display()
    );
    ensure!(!a.resume || has, "{}: no checkpoint to resume", checkpoint::path(&dir).display());
    Ok(dir)
}

/// Validation bits/token of the exported int8 weights on the runtime's integer coding path.
fn integer_bits(weights: &cvq::network::Weights, val: &[cvq::data::Segment]) -> f64 {
    let t = Arc::new(Transformer::new(weights));
    let (mut bits, mut tokens) = (0.0, 0usize);
    for seg in val {
        bits += cvq::code::ideal_bits(&seg.tokens, &mut Neural::new(Arc::clone(&t), seg.tokens.len(), None));
        tokens += seg.tokens.len();
    }
    bits / tokens as f64
}

fn run(a: Args) -> Result<()> {
    if a.fetch_only {
        for p in shard_paths(&a, a.dataset.as_deref().expect("clap requires --dataset"))? {
            println!("{}", p.display());
        }
        return Ok(());
    }
    let output = a.output.clone().expect("clap requires --output");
    check_output(&output, a.force)?;
    let ckpt_dir = checkpoint_dir(&a, &output)?;
    let r = recipe(a.preset);
    let spec = spec_of(&a, &r.spec);
    spec.validate()?;
    let device = device(a.cuda)?;
    let dtype = match a.precision {
        Some(Precision::Bf16) => DType::BF16,
        Some(Precision::F32) => DType::F32,
        None if device.is_cuda() => DType::BF16,
        None => DType::F32,
    };
    let config = train::Config {
        steps: a.steps.unwrap_or(r.steps),
        qat_steps: a.qat_steps.unwrap_or(r.qat_steps),
        accum: a.accum.max(1),
        lr: a.lr.unwrap_or(r.lr),
        warmup: a.warmup.unwrap_or(r.warmup),
        clip: a.clip,
        eval_every: a.eval_every.max(1),
        log_every: a.log_every.max(1),
        checkpoint: Some(ckpt_dir.clone()),
        stop_at: a.stop_at,
        dtype,
        profile: a.profile,
    };
    let (frames, batch) = (a.frames.unwrap_or(r.frames), a.batch.unwrap_or(r.batch));
    let (train_sources, val) = sources(&a)?;
    let skip: HashSet<String> = val.iter().map(|s| s.name.clone()).collect();
    let sources_count = train_sources.len();
    let window = spec.context_frames + frames;
    let stream = Stream::new(train_sources, skip, a.seed, window, spec.context_frames, batch, a.shuffle_buffer);

    let vm = VarMap::new();
    let mut model = Gpt::new(spec, &vm, &device, a.seed, DType::F32)?;
    model.fixed_attention = a.fixed_attention;
    let mut state =
        State { step: 0, tokens: 0, opt: AdamW::new(Gpt::vars(&vm), a.weight_decay.unwrap_or(r.weight_decay))? };
    let mut data = Data { stream, queued: vec![] };
    if a.resume {
        checkpoint::load(&ckpt_dir, &spec, &mut state, &mut data)?;
    }
    let params: usize = state.opt.vars.iter().map(|(_, v)| v.elem_count()).sum();
    eprintln!(
        "model {spec:?}: {params} parameters; {sources_count} training sources, {} validation segments; {:?} on {device:?}; {} steps of {} tokens{}",
        val.len(),
        dtype,
        config.total(),
        batch * config.accum * frames * cvq::data::TOKENS_PER_FRAME,
        if a.resume { format!(", resuming at step {}", state.step) } else { String::new() }
    );
    catch_signals();
    let started = Instant::now();
    let tokens_before = state.tokens;
    let (_, outcome) = train::run(&model, &mut state, data, &val, &config, &INTERRUPT)?;
    let end = outcome.end;
    if let Some(p) = &outcome.profile {
        eprintln!("profile: {}", p.summary());
    }
    if end != End::Finished {
        eprintln!(
            "{} at step {}: checkpoint in {}; continue with the same command and --resume",
            if end == End::Stopped { "stopped" } else { "interrupted" },
            state.step,
            ckpt_dir.display()
        );
        if end == End::Interrupted {
            std::process::exit(130);
        }
        return Ok(());
    }
    let float = train::validate(&model, &val, window, batch, false, DType::F32)?;
    let weights = export::export(&model)?;
    let integer = integer_bits(&weights, &val);
    let bytes = weights.to_bytes()?;
    let tmp = temp_path(&output);
    std::fs::write(&tmp, &bytes).with_context(|| format!("{}: cannot write", tmp.display()))?;
    std::fs::rename(&tmp, &output).with_context(|| format!("{}: cannot write", output.display()))?;
    let secs = started.elapsed().as_secs_f64();
    let seen = state.tokens - tokens_before;
    eprintln!(
        "trained {} steps, {} tokens ({seen} in this run: {:.1} min, {:.0} tokens/s in training steps); validation float {float:.4} bits/token, int8 {integer:.4} (gap {:+.2}%); wrote {} ({} bytes)",
        state.step,
        state.tokens,
        secs / 60.0,
        outcome.tokens_per_sec,
        (integer - float) / float * 100.0,
        output.display(),
        bytes.len()
    );
    Ok(())
}
