//! The `cvq` command line: thin glue over the library.

mod bench;
mod extract;
mod files;
mod pack;
mod part;
#[cfg(feature = "plot")]
mod plot;
mod synth;
#[cfg(test)]
mod tests;

use crate::archive::{self, Archive, CodedSegment};
use crate::data::synthetic::Motion;
use crate::data::{Segment, TOKENS_PER_FRAME};
use crate::network::{default_weights, earlier_weights, Weights};
use crate::pipeline::{self, archive_model, write_archive};
use crate::predict::transformer::Transformer;
use crate::predict::{hex, Learning, Model, MAX_ADAPTIVE_WIDTH};
use anyhow::{bail, ensure, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use files::Input;
use indicatif::{ProgressBar, ProgressStyle};
use part::Part;
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "cvq",
    version,
    propagate_version = true,
    about = "Lossless compressor for commaVQ driving-video tokens"
)]
struct Cli {
    /// Print nothing but errors and the command's own report: no progress, no summary.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// Also print a line for each segment.
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train the neural model: runs `cvq-train` with these arguments (`cvq train --help` is its
    /// help), found beside this binary or on PATH; it holds candle, which cvq does not link.
    #[command(disable_help_flag = true, disable_version_flag = true)]
    Train {
        /// The trainer's arguments, e.g. --dataset commaai/commavq --preset challenge --cuda.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
        args: Vec<std::ffi::OsString>,
    },
    /// Compress .npy token segments (files, directories of them, or dataset shards) into one
    /// archive.
    Compress {
        #[command(flatten)]
        inputs: InputOpts,
        /// The archive to write (- for stdout).
        #[arg(short, long)]
        output: PathBuf,
        /// Code only the I-th of N slices of the inputs sorted by name (1 <= I <= N), for N
        /// jobs on N machines; `cvq merge` joins their archives.
        #[arg(long, value_name = "I/N")]
        part: Option<Part>,
        #[command(flatten)]
        model: ModelOpts,
        #[command(flatten)]
        run: RunOpts,
        #[command(flatten)]
        verify: VerifyOpt,
    },
    /// Build the challenge submission zip: the archive, decompress.py, the static decoder and
    /// the weights the archive needs; prints the size of each and the score.
    Pack {
        #[command(flatten)]
        inputs: InputOpts,
        /// The zip to write.
        #[arg(short, long, default_value = "submission.zip")]
        output: PathBuf,
        /// The xz-compressed static decoder that scripts/build-decoder.sh writes [default:
        /// cvq.xz beside this cvq, else the workspace's target/challenge/cvq.xz].
        #[arg(long)]
        decoder: Option<PathBuf>,
        #[command(flatten)]
        model: ModelOpts,
        #[command(flatten)]
        run: RunOpts,
        #[command(flatten)]
        verify: VerifyOpt,
    },
    /// Restore every segment of an archive into a directory, byte for byte.
    Decompress {
        /// The archive (- for stdin).
        archive: PathBuf,
        /// Directory to write the segments into (created if missing), or - to write the one
        /// segment of a one-segment archive to stdout.
        #[arg(short, long)]
        output: PathBuf,
        /// Restore only the I-th of N slices of the archive's segments sorted by name.
        #[arg(long, value_name = "I/N")]
        part: Option<Part>,
        #[command(flatten)]
        weights: WeightsOpt,
        #[command(flatten)]
        run: RunOpts,
        /// Keep an output file that already holds its segment byte for byte (checked against
        /// the archive's token checksum) and restore the rest: how an interrupted run goes on.
        #[arg(long)]
        skip_existing: bool,
    },
    /// Write the segments of dataset shards (.tar.gz) as the dataset's original .npy files,
    /// named as the grader names them: the originals that scripts/evaluate.sh compares with.
    Extract {
        /// Dataset shards (.tar.gz of `<key>.token.npy` and `<key>.json`, as in commaai/commavq).
        /// Every target is checked before the first file is written: a name two members give
        /// and an existing file without --force are refused, and nothing is written.
        #[arg(required = true)]
        shards: Vec<PathBuf>,
        /// Directory to write the files into (created if missing).
        #[arg(short, long)]
        output: PathBuf,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Join archives of one model into one, without coding again (names must be unique).
    Merge {
        /// The archives to join (e.g. the parts of `cvq compress --part`), in the order given;
        /// - reads one from stdin.
        #[arg(required = true)]
        archives: Vec<PathBuf>,
        /// The archive to write (- for stdout).
        #[arg(short, long)]
        output: PathBuf,
        /// Replace an existing output file.
        #[arg(long)]
        force: bool,
    },
    /// List an archive's segments (name, frames, stored bytes, bits/token), its predictor and
    /// totals, from its index alone.
    List {
        /// The archive (- for stdin).
        archive: PathBuf,
        #[command(flatten)]
        weights: WeightsOpt,
    },
    /// Decode every segment of an archive and check its checksums, writing nothing; exits 1
    /// naming each damaged segment.
    Test {
        /// The archive (- for stdin).
        archive: PathBuf,
        #[command(flatten)]
        weights: WeightsOpt,
        /// Worker threads (default: all cores).
        #[arg(short = 'j', long, value_parser = parse_threads)]
        threads: Option<usize>,
    },
    /// Report bits per token for each segment without writing anything.
    Eval {
        #[command(flatten)]
        inputs: InputOpts,
        #[command(flatten)]
        model: ModelOpts,
        /// Worker threads (default: all cores). The figures never depend on it.
        #[arg(short = 'j', long, value_parser = parse_threads)]
        threads: Option<usize>,
    },
    /// Compare cvq's predictors with lzma, zstd and zpaq on segments: bits per token and
    /// speed, one table measured in one run, and an estimate of the challenge score.
    Bench {
        /// .npy segment files or directories of them (not shards), each measured on its own.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        #[command(flatten)]
        weights: WeightsOpt,
        /// The xz-compressed challenge decoder, counted in the score estimate [default: as
        /// for pack].
        #[arg(long)]
        decoder: Option<PathBuf>,
    },
    /// Draw where the bits go in one segment: a PNG heat map of bits per token over frame and
    /// position, and the bits of each frame.
    #[cfg(feature = "plot")]
    Plot {
        /// The .npy segment file to draw.
        input: PathBuf,
        /// The picture to write: .png or .svg.
        #[arg(short, long)]
        output: PathBuf,
        #[command(flatten)]
        weights: WeightsOpt,
        /// A predictor whose bits per frame are drawn; give it again for more on one chart.
        /// The first also draws the heat map and the map by place in the frame.
        #[arg(long = "predictor", value_enum, default_values_t = [Predictor::MixedAdaptive])]
        predictors: Vec<Predictor>,
        /// Replace an existing output file.
        #[arg(long)]
        force: bool,
    },
    /// Sample segments from the neural model (with the coder's own integer tables, so a seed
    /// gives the same segments anywhere) and record each one's exact information content: a
    /// data set of known entropy for checking a trainer.
    Synth {
        #[command(flatten)]
        weights: WeightsOpt,
        /// Moving noise instead of the network's samples: each frame is the previous one moved
        /// by the segment's offset (wrapping around), and --noise of the tokens are uniform.
        /// Only attention that learns where to look predicts it.
        #[arg(long, conflicts_with = "weights")]
        motion: bool,
        /// With --motion: the share of tokens drawn uniformly instead of moved.
        #[arg(long, requires = "motion", default_value_t = 0.1)]
        noise: f64,
        /// With --motion: every segment moves by DR,DC rows and columns a frame (e.g. 1,1);
        /// otherwise each segment draws its own offset in -1..=1 x -1..=1.
        #[arg(long, requires = "motion", value_parser = parse_shift, allow_hyphen_values = true)]
        shift: Option<(i32, i32)>,
        /// With --motion: token values used, the first N of 1024 (a power of two). A network
        /// whose output is tied to a 128-wide embedding can model a sharp copy over a uniform
        /// rest of 64 values but not of 1024.
        #[arg(long, requires = "motion", default_value_t = 1024)]
        alphabet: usize,
        /// How many segments.
        #[arg(long, default_value_t = 8)]
        segments: usize,
        /// Frames per segment.
        #[arg(long, default_value_t = 1200)]
        frames: usize,
        /// The seed the segments are drawn from: one seed, the same segments on any machine.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Directory for the segments (dataset-style names without extension; created if missing).
        #[arg(short, long)]
        output: PathBuf,
        /// JSON manifest to write, outside the directory: each segment's name and information
        /// content in bits (the sum of -log2 p of its sampled tokens).
        #[arg(long)]
        manifest: Option<PathBuf>,
        #[command(flatten)]
        run: RunOpts,
    },
}

#[derive(Args)]
struct InputOpts {
    /// .npy segment files, directories of them (skipping hidden files, named .*, and the
    /// output), dataset shards (.tar.gz), or - for one .npy segment on stdin.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Also read the files in subdirectories of input directories (otherwise skipped, with a
    /// note).
    #[arg(short, long)]
    recursive: bool,
    /// The name the segment read from stdin is stored and restored under.
    #[arg(long)]
    name: Option<String>,
}

impl InputOpts {
    /// The segments to code; `output`, the file the run writes, is never one of them.
    fn segments(&self, output: Option<&Path>) -> Result<Vec<Input>> {
        files::inputs(&self.inputs, self.recursive, self.name.as_deref(), output)
    }
}

#[derive(Args)]
struct ModelOpts {
    #[command(flatten)]
    weights: WeightsOpt,
    /// The predictor: the network mixed into the context mixer, the network alone, or the
    /// context mixer alone (needs no weights); `-adaptive`: the network's output layer and
    /// input embeddings keep learning while each segment codes (smaller, slower; networks up
    /// to width 512).
    #[arg(long, value_enum, default_value_t = Predictor::MixedAdaptive)]
    predictor: Predictor,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Predictor {
    Mixed,
    Neural,
    ContextMix,
    MixedAdaptive,
    NeuralAdaptive,
}

#[derive(Args)]
struct WeightsOpt {
    /// Int8 safetensors weights of the neural model [default: the ones built into cvq].
    #[arg(long)]
    weights: Option<PathBuf>,
}

impl WeightsOpt {
    /// The weights file's bytes: the one given, else the built-in one.
    fn bytes(&self) -> Result<Cow<'static, [u8]>> {
        match (&self.weights, default_weights()) {
            (Some(p), _) => Ok(Cow::Owned(std::fs::read(p).with_context(|| format!("{}: cannot read", p.display()))?)),
            (None, Some(bytes)) => Ok(Cow::Borrowed(bytes)),
            (None, None) => bail!("this cvq has no built-in weights (built without `default-weights`): pass --weights"),
        }
    }

    /// The model of weights file `bytes`, as `bytes()` read them.
    fn parse(&self, bytes: &[u8]) -> Result<Arc<Transformer>> {
        let what = self.weights.as_ref().map_or("built-in weights".to_string(), |p| p.display().to_string());
        let weights = Weights::from_bytes(bytes).with_context(|| format!("{what}: not valid cvq weights"))?;
        Ok(Arc::new(Transformer::new(&weights)))
    }

    fn load(&self) -> Result<Arc<Transformer>> {
        self.parse(&self.bytes()?)
    }
}

impl Predictor {
    /// The predictor's model, with the weights file it was built from (none for the context
    /// mixer): read once, so a zip never carries other weights than the archive was coded with.
    fn load(self, weights: &WeightsOpt) -> Result<(Model, Option<Cow<'static, [u8]>>)> {
        let kind: fn(Arc<Transformer>, Learning) -> Model = match self {
            Predictor::ContextMix => return Ok((Model::ContextMix, None)),
            Predictor::Neural | Predictor::NeuralAdaptive => Model::Neural,
            Predictor::Mixed | Predictor::MixedAdaptive => Model::Mixed,
        };
        let learning = match self {
            Predictor::NeuralAdaptive | Predictor::MixedAdaptive => Learning::Network,
            _ => Learning::Frozen,
        };
        let bytes = weights.bytes()?;
        let t = weights.parse(&bytes)?;
        ensure!(
            learning == Learning::Frozen || t.spec.width <= MAX_ADAPTIVE_WIDTH,
            "the adaptive predictors (mixed-adaptive is the default) take networks up to width {MAX_ADAPTIVE_WIDTH}, and these weights have width {}: pass --predictor mixed or neural",
            t.spec.width
        );
        Ok((kind(t, learning), Some(bytes)))
    }
}

impl ModelOpts {
    fn load_with_bytes(&self) -> Result<(Model, Option<Cow<'static, [u8]>>)> {
        ensure!(
            self.predictor != Predictor::ContextMix || self.weights.weights.is_none(),
            "--predictor context-mix uses no weights: drop --weights"
        );
        self.predictor.load(&self.weights)
    }

    fn load(&self) -> Result<Model> {
        Ok(self.load_with_bytes()?.0)
    }
}

#[derive(Args)]
struct RunOpts {
    /// Worker threads (default: all cores). The output never depends on it.
    #[arg(short = 'j', long, value_parser = parse_threads)]
    threads: Option<usize>,
    /// Replace existing output files.
    #[arg(long)]
    force: bool,
}

/// What decompress does with existing output files.
struct Restore {
    force: bool,
    skip_existing: bool,
}

#[derive(Args)]
struct VerifyOpt {
    /// Decode the whole archive before writing it, and fail unless every segment comes back
    /// with its token checksum (the index is always read back).
    #[arg(long)]
    verify: bool,
}

/// How much a command says on stderr.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Quiet,
    Normal,
    Verbose,
}

/// Set once from the command line, read wherever a command reports.
static LEVEL: std::sync::OnceLock<Level> = std::sync::OnceLock::new();

fn level() -> Level {
    *LEVEL.get().unwrap_or(&Level::Normal)
}

/// A progress or summary line on stderr, unless -q.
fn note(line: impl std::fmt::Display) {
    if level() >= Level::Normal {
        eprintln!("{line}");
    }
}

/// A line per segment on stderr, with -v.
fn detail(line: impl std::fmt::Display) {
    if level() == Level::Verbose {
        eprintln!("{line}");
    }
}

pub fn main() -> Result<()> {
    let cli = Cli::parse();
    // The trainer handles its own signals (Ctrl-C ends a run with a checkpoint).
    #[cfg(unix)]
    if !matches!(cli.command, Command::Train { .. }) {
        files::remove_temporary_files_on_signals();
    }
    let _ = LEVEL.set(match (cli.quiet, cli.verbose) {
        (true, _) => Level::Quiet,
        (_, true) => Level::Verbose,
        _ => Level::Normal,
    });
    match cli.command {
        Command::Compress { inputs, output, part, model, run, verify } => with_threads(run.threads, || {
            files::check_output(&output, run.force)?;
            let (bytes, _) = build_archive(&inputs, &output, part, &model.load()?, verify.verify)?;
            files::write_output(&output, &bytes, run.force)
        }),
        Command::Pack { inputs, output, decoder, model, run, verify } => with_threads(run.threads, || {
            files::check_output(&output, run.force)?;
            let decoder = pack::read_decoder(decoder.as_deref())?;
            let (model, weights) = model.load_with_bytes()?;
            let (archive, tokens) = build_archive(&inputs, &output, None, &model, verify.verify)?;
            pack::write(&output, &archive, &decoder, weights.as_deref(), tokens, run.force)
        }),
        Command::Decompress { archive, output, part, weights, run, skip_existing } => {
            let restore = Restore { force: run.force, skip_existing };
            with_threads(run.threads, || decompress(&archive, &output, part, &weights, &restore))
        }
        Command::Extract { shards, output, force } => extract::run(&shards, &output, force),
        Command::Merge { archives, output, force } => part::merge(&archives, &output, force),
        Command::List { archive, weights } => list(&archive, &weights),
        Command::Test { archive, weights, threads } => with_threads(threads, || test(&archive, &weights)),
        Command::Eval { inputs, model, threads } => with_threads(threads, || eval(&inputs, &model.load()?)),
        Command::Bench { inputs, weights, decoder } => {
            let bytes = weights.bytes()?;
            bench::run(
                &files::collect_inputs(&inputs, false, None)?,
                &weights.parse(&bytes)?,
                decoder.as_deref(),
                bytes.len(),
            )
        }
        Command::Train { args } => train(&args),
        #[cfg(feature = "plot")]
        Command::Plot { input, output, weights, predictors, force } => {
            let models = predictors.iter().map(|p| Ok(p.load(&weights)?.0)).collect::<Result<Vec<_>>>()?;
            plot::run(&input, &models, &output, force)
        }
        Command::Synth { weights, motion, noise, shift, alphabet, segments, frames, seed, output, manifest, run } => {
            with_threads(run.threads, || {
                ensure!((0.0..=1.0).contains(&noise), "--noise must be in 0..=1, not {noise}");
                ensure!(
                    alphabet.is_power_of_two() && alphabet <= 1024,
                    "--alphabet must be a power of two up to 1024, not {alphabet}"
                );
                let generator = if motion {
                    synth::Generator::Motion(Motion { noise, shift, alphabet })
                } else {
                    synth::Generator::Neural(weights.load()?)
                };
                let plan = synth::Plan {
                    generator,
                    segments,
                    frames,
                    seed,
                    dir: &output,
                    manifest: manifest.as_deref(),
                    force: run.force,
                };
                synth::run(&plan)
            })
        }
    }
}

/// `-j N`, N >= 1: rayon takes 0 for all cores, which is what leaving out -j already says.
fn parse_threads(text: &str) -> Result<usize> {
    let n: usize = text.parse().context("expected a number of threads")?;
    ensure!(n >= 1, "at least 1 thread (leave out -j for all cores)");
    Ok(n)
}

/// `--shift DR,DC`: rows and columns, each -8..=8.
fn parse_shift(text: &str) -> Result<(i32, i32)> {
    let parse = |s: Option<&str>| -> Result<i32> {
        let v: i32 = s.context("expected DR,DC")?.trim().parse().context("expected DR,DC, two integers")?;
        ensure!((-8..=8).contains(&v), "a shift of {v} is more than a frame's height");
        Ok(v)
    };
    let mut parts = text.split(',');
    let shift = (parse(parts.next())?, parse(parts.next())?);
    ensure!(parts.next().is_none(), "expected DR,DC, two integers");
    Ok(shift)
}

fn with_threads<T: Send>(threads: Option<usize>, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads.unwrap_or(0)).build()?;
    pool.install(f)
}

/// A pool of as many workers as the current one has, or fewer if their predictors for
/// segments of up to `max_tokens` tokens would not fit in three quarters of the available
/// memory. The output never depends on the worker count, so this only trades time for memory.
fn worker_pool(model: &Model, max_tokens: usize) -> Result<rayon::ThreadPool> {
    let wanted = rayon::current_num_threads();
    let per_worker = (model.batch_size() * model.memory(max_tokens)).max(1);
    let available = files::available_memory();
    let fit = available.map_or(wanted, |avail| (avail / 4 * 3 / per_worker).max(1));
    if fit < wanted {
        note(format_args!(
            "using {fit} of {wanted} threads: each needs about {} MB, and {} MB are available",
            per_worker >> 20,
            available.unwrap_or(0) >> 20
        ));
    }
    Ok(rayon::ThreadPoolBuilder::new().num_threads(wanted.min(fit)).build()?)
}

fn progress(len: usize, what: &str) -> ProgressBar {
    let style = ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} segments, {elapsed} (eta {eta})")
        .expect("valid template")
        .progress_chars("=> ");
    let bar = if level() == Level::Quiet { ProgressBar::hidden() } else { ProgressBar::new(len as u64) };
    bar.with_style(style).with_message(what.to_string())
}

/// `n` and `word`, plural unless `n` is 1.
fn count(n: usize, word: &str) -> String {
    format!("{n} {word}{}", if n == 1 { "" } else { "s" })
}

/// The closing line of every command that reads or codes tokens. `bytes` are `what` (the
/// whole archive, index and headers included, or the payloads alone), and bits/token says
/// which; the speed where the command took `secs` coding.
fn summary(verb: &str, segments: usize, tokens: usize, bytes: usize, what: &str, secs: Option<f64>) -> String {
    let head = format!("{verb} {}, {}, {bytes} {what} bytes", count(segments, "segment"), count(tokens, "token"));
    if tokens == 0 {
        return head;
    }
    let bits = bytes as f64 * 8.0 / tokens as f64;
    let speed = secs.map_or(String::new(), |secs| format!(", {:.0} tokens/s", tokens as f64 / secs));
    format!("{head}: {bits:.4} bits/token of {what}, rate {:.3}{speed}", 10.0 / bits)
}

/// Read and code segments, a lockstep batch per worker, showing progress.
fn encode_inputs(inputs: &[Input], model: &Model, what: &str) -> Result<Vec<CodedSegment>> {
    let max_tokens = inputs.iter().map(Input::max_tokens).max().unwrap_or(0);
    with_workers(model, max_tokens, inputs.len(), what, |bar| {
        pipeline::encode_each(inputs, model, Input::segment, |c| {
            let tokens = c.frames * TOKENS_PER_FRAME;
            detail(format_args!("{}: {}, {} payload bytes", c.name, count(tokens, "token"), c.payload.len()));
            bar.inc(1);
        })
    })
}

/// Code the segments of `inputs` into an archive for `output`; returns it with its token count.
/// The archive is read back (index, headers, lengths, payload checksums) before it counts as
/// written, and with `verify` also decoded whole.
fn build_archive(
    inputs: &InputOpts,
    output: &Path,
    part: Option<Part>,
    model: &Model,
    verify: bool,
) -> Result<(Vec<u8>, usize)> {
    let mut inputs = inputs.segments(Some(output))?;
    if let Some(part) = part {
        inputs = part.select(inputs, Input::name);
    }
    crate::data::check_unique_names(inputs.iter().map(Input::name))?;
    let start = Instant::now();
    let coded = encode_inputs(&inputs, model, "compress")?;
    let bytes = write_archive(&model.id(), &coded)?;
    let tokens = coded.iter().map(|c| c.frames * TOKENS_PER_FRAME).sum();
    note(summary("compressed", coded.len(), tokens, bytes.len(), "archive", Some(start.elapsed().as_secs_f64())));
    if verify {
        let failed = "the archive just written does not decode (a bug in cvq; nothing was written)";
        let all: Vec<usize> = (0..coded.len()).collect();
        let archive = archive::parse(&bytes)?;
        with_workers(model, max_tokens(&archive, &all), all.len(), "verify", |bar| {
            pipeline::decode_each(&archive, model, &all, |_, seg| seg.map(|_| bar.inc(1)))
        })
        .context(failed)?;
        note("verified: every segment decodes to its token checksum");
    }
    Ok((bytes, tokens))
}

/// Run `f` on a pool of workers for segments of up to `max_tokens` tokens (`worker_pool`),
/// with a progress bar of `len` segments that `f` advances.
fn with_workers<T: Send>(
    model: &Model,
    max_tokens: usize,
    len: usize,
    what: &str,
    f: impl FnOnce(&ProgressBar) -> Result<T> + Send,
) -> Result<T> {
    let bar = progress(len, what);
    let out = worker_pool(model, max_tokens)?.install(|| f(&bar))?;
    bar.finish_and_clear();
    Ok(out)
}

/// The longest of the entries `indices` of `archive`, in tokens.
fn max_tokens(archive: &Archive, indices: &[usize]) -> usize {
    indices.iter().map(|&i| archive.entries[i].frames * TOKENS_PER_FRAME).max().unwrap_or(0)
}

/// `pipeline::decode_intact` on a pool of workers with a progress bar.
fn decode_intact(
    archive: &Archive,
    model: &Model,
    what: &str,
    indices: &[usize],
    sink: impl Fn(usize, Segment) -> Result<()> + Sync,
) -> Result<Vec<(usize, anyhow::Error)>> {
    with_workers(model, max_tokens(archive, indices), indices.len(), what, |bar| {
        pipeline::decode_intact(archive, model, indices, |i, seg| {
            sink(i, seg)?;
            bar.inc(1);
            Ok(())
        })
    })
}

/// Run `cvq-train ARGS` (beside this binary, else on PATH) in place of cvq (exec, so that
/// its signals reach it alone), as cargo and git run their external subcommands.
fn train(args: &[std::ffi::OsString]) -> Result<()> {
    const TRAINER: &str = "cvq-train";
    let beside = std::env::current_exe().ok().and_then(|exe| Some(exe.parent()?.join(TRAINER)));
    let on_path = || std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(TRAINER)).find(|p| p.is_file());
    let Some(trainer) = beside.filter(|p| p.is_file()).or_else(on_path) else {
        bail!(
            "cvq train runs {TRAINER}, which is neither beside cvq nor on PATH: build it with \
             `cargo build --release -p cvq-train` (add `--features cuda` for a GPU)"
        )
    };
    let mut command = std::process::Command::new(&trainer);
    command.args(args);
    #[cfg(unix)]
    let error = std::os::unix::process::CommandExt::exec(&mut command);
    #[cfg(not(unix))]
    let error = match command.status() {
        Ok(status) => std::process::exit(status.code().unwrap_or(1)),
        Err(e) => e,
    };
    Err(error).with_context(|| format!("{}: cannot run", trainer.display()))
}

/// The predictor that wrote `archive`, loading weights only if it needs them: those given by
/// --weights, else the built-in ones of this release or of an earlier one.
fn model_of(archive: &Archive, weights: &WeightsOpt) -> Result<Model> {
    if let Ok(m) = archive_model(archive, None) {
        return Ok(m);
    }
    if weights.weights.is_some() {
        return archive_model(archive, Some(&weights.load()?));
    }
    let earlier = earlier_weights().iter().map(|&(_, bytes)| bytes);
    for bytes in default_weights().into_iter().chain(earlier) {
        if let Ok(m) = archive_model(archive, Some(&weights.parse(bytes)?)) {
            return Ok(m);
        }
    }
    bail!(
        "archive was written by model {}..., which needs neural weights that cvq {} does not carry: pass them with --weights",
        hex(&archive.model_id[..8]),
        env!("CARGO_PKG_VERSION")
    )
}

fn decompress(archive_path: &Path, out: &Path, part: Option<Part>, weights: &WeightsOpt, run: &Restore) -> Result<()> {
    let at = || files::shown(archive_path, "stdin");
    let bytes = files::read_all(archive_path)?;
    // The index only: a damaged payload costs its own segment, checked as it is decoded.
    let archive = archive::parse_index(&bytes).with_context(at)?;
    let model = model_of(&archive, weights).with_context(at)?;
    let all: Vec<usize> = (0..archive.entries.len()).collect();
    let chosen = match part {
        Some(p) => p.select(all, |&i| archive.entries[i].name.clone()),
        None => all,
    };
    if files::is_std(out) {
        let n = chosen.len();
        ensure!(n == 1, "{}: -o - writes one segment to stdout, and {n} are to be restored: give a directory", at());
    } else {
        files::output_dir(out)?;
    }
    let target = |i: usize| if files::is_std(out) { out.to_path_buf() } else { out.join(&archive.entries[i].name) };
    let mut todo = vec![];
    for &i in &chosen {
        let t = target(i);
        if run.skip_existing && !files::is_std(out) {
            if holds(&t, &archive, i) {
                continue;
            }
            ensure!(
                run.force || !t.exists(),
                "{}: already exists and does not hold segment {} (use --force to replace it)",
                t.display(),
                archive.entries[i].name
            );
        }
        files::check_output(&t, run.force)?;
        todo.push(i);
    }
    if todo.len() < chosen.len() {
        note(format_args!("kept {} already restored (--skip-existing)", count(chosen.len() - todo.len(), "file")));
    }
    let start = Instant::now();
    let damaged = decode_intact(&archive, &model, "decompress", &todo, |i, seg| {
        files::write_output(&target(i), &seg.to_npy_bytes()?, run.force)?;
        detail(format_args!("{}: {}, restored", target(i).display(), count(seg.frames(), "frame")));
        Ok(())
    })
    .with_context(at)?;
    let restored: Vec<usize> = todo.iter().copied().filter(|i| !damaged.iter().any(|d| d.0 == *i)).collect();
    let tokens = restored.iter().map(|&i| archive.entries[i].frames * TOKENS_PER_FRAME).sum();
    // A part is measured by its own payloads, the whole archive by all its bytes.
    let (stored, what) = match part {
        Some(_) => (restored.iter().map(|&i| archive.entries[i].payload.len()).sum(), "payload"),
        None => (bytes.len(), "archive"),
    };
    note(summary("decompressed", restored.len(), tokens, stored, what, Some(start.elapsed().as_secs_f64())));
    check_damaged(&at(), damaged, todo.len(), "restored")
}

/// Whether the file at `path` exists and holds segment `i` of `archive` exactly as decompress
/// writes it: its header, its tokens (the archive's token checksum) and nothing else.
fn holds(path: &Path, archive: &Archive, i: usize) -> bool {
    let Ok(bytes) = std::fs::read(path) else { return false };
    let e = &archive.entries[i];
    crate::data::npy::parse_segment(e.name.clone(), &bytes).is_ok_and(|seg| {
        seg.header == archive.headers[e.header]
            && archive::token_checksum(&seg.tokens) == e.checksum
            && seg.to_npy_bytes().is_ok_and(|b| b == bytes)
    })
}

/// Print an archive's contents: each segment's name, frames, stored bytes and bits/token, the
/// predictor and the totals. Reads the index only.
fn list(archive_path: &Path, weights: &WeightsOpt) -> Result<()> {
    let bytes = files::read_all(archive_path)?;
    let archive = archive::parse_index(&bytes).with_context(|| files::shown(archive_path, "stdin"))?;
    // Name the predictor where the weights at hand wrote it; an archive is listed without them.
    let predictor = match model_of(&archive, weights) {
        Ok(m) => {
            let release = m.since().map_or(String::new(), |r| format!(" of cvq {r}"));
            match m.transformer() {
                Some(t) => format!("{}{release}, weights {}...", m.name(), hex(&t.hash[..8])),
                None => format!("{}{release}", m.name()),
            }
        }
        Err(_) => "not the context mixer nor a model of the weights at hand".into(),
    };
    println!(
        "{}: format {}, model {}... ({predictor})",
        files::shown(archive_path, "stdin"),
        archive::VERSION,
        hex(&archive.model_id[..8])
    );
    println!("{:<48} {:>7} {:>10} {:>10}", "segment", "frames", "bytes", "bits/token");
    for e in &archive.entries {
        let tokens = e.frames * TOKENS_PER_FRAME;
        let bits =
            if tokens == 0 { "-".into() } else { format!("{:.4}", e.payload.len() as f64 * 8.0 / tokens as f64) };
        println!("{:<48} {:>7} {:>10} {bits:>10}", e.name, e.frames, e.payload.len());
    }
    let tokens = archive.entries.iter().map(|e| e.frames * TOKENS_PER_FRAME).sum();
    println!("{}", summary("listed", archive.entries.len(), tokens, bytes.len(), "archive", None));
    Ok(())
}

/// Decode every segment and check its payload and token checksums, writing nothing; names each
/// damaged segment and fails if there is any.
fn test(archive_path: &Path, weights: &WeightsOpt) -> Result<()> {
    let at = || files::shown(archive_path, "stdin");
    let bytes = files::read_all(archive_path)?;
    let archive = archive::parse_index(&bytes).with_context(at)?;
    let model = model_of(&archive, weights).with_context(at)?;
    let start = Instant::now();
    let all: Vec<usize> = (0..archive.entries.len()).collect();
    let damaged = decode_intact(&archive, &model, "test", &all, |_, _| Ok(()))?;
    let n = archive.entries.len();
    check_damaged(&at(), damaged, n, "tested")?;
    let tokens = archive.entries.iter().map(|e| e.frames * TOKENS_PER_FRAME).sum();
    note(summary("tested", n, tokens, bytes.len(), "archive", Some(start.elapsed().as_secs_f64())));
    note("every segment decodes to its token checksum");
    Ok(())
}

/// Name each damaged segment and fail if there is any, saying that the `n - damaged` others
/// were `done`.
fn check_damaged(archive: &str, damaged: Vec<(usize, anyhow::Error)>, n: usize, done: &str) -> Result<()> {
    for (_, e) in &damaged {
        eprintln!("cvq: damaged: {e:#}");
    }
    ensure!(
        damaged.is_empty(),
        "{archive}: {} of {} damaged (named above), the other {} {done}",
        damaged.len(),
        count(n, "segment"),
        n - damaged.len()
    );
    Ok(())
}

fn eval(inputs: &InputOpts, model: &Model) -> Result<()> {
    let inputs = inputs.segments(None)?;
    let start = Instant::now();
    let rows: Vec<_> = encode_inputs(&inputs, model, "eval")?
        .into_iter()
        .map(|c| (c.name, c.frames * TOKENS_PER_FRAME, c.payload.len()))
        .collect();
    println!("{:<48} {:>10} {:>10} {:>10}", "segment", "tokens", "bytes", "bits/token");
    for (name, tokens, bytes) in &rows {
        println!("{name:<48} {tokens:>10} {bytes:>10} {:>10.4}", *bytes as f64 * 8.0 / *tokens.max(&1) as f64);
    }
    let tokens = rows.iter().map(|r| r.1).sum();
    let bytes = rows.iter().map(|r| r.2).sum();
    println!("{}", summary("evaluated", rows.len(), tokens, bytes, "payload", Some(start.elapsed().as_secs_f64())));
    Ok(())
}
