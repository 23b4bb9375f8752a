//! The `cvq` command line: thin glue over the library.

mod bench;
mod files;

use crate::archive::{self, CodedSegment};
use crate::data::{read_segment_file, TOKENS_PER_FRAME};
use crate::model::Weights;
use crate::pipeline::{archive_model, decode_batch, encode_batch};
use crate::predict::transformer::Transformer;
use crate::predict::Model;
use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Parser)]
#[command(name = "cvq", version, about = "Lossless compressor for commaVQ driving-video tokens")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Compress .npy token segments (files, or directories of them) into one archive.
    Compress {
        /// .npy files, or directories whose files are all .npy segments.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// The archive to write.
        #[arg(short, long)]
        output: PathBuf,
        #[command(flatten)]
        model: ModelOpts,
        #[command(flatten)]
        run: RunOpts,
    },
    /// Restore every segment of an archive into a directory, byte for byte.
    Decompress {
        archive: PathBuf,
        /// Directory to write the segments into (created if missing).
        #[arg(short, long)]
        output: PathBuf,
        #[command(flatten)]
        model: ModelOpts,
        #[command(flatten)]
        run: RunOpts,
    },
    /// Report bits per token for each segment without writing anything.
    Eval {
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        #[command(flatten)]
        model: ModelOpts,
        #[arg(short = 'j', long)]
        threads: Option<usize>,
    },
    /// Measure bits per token, coder overhead and speed both ways on real segments.
    Bench {
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        #[command(flatten)]
        model: ModelOpts,
    },
}

#[derive(Args)]
struct ModelOpts {
    /// Int8 safetensors weights of the neural predictor (default: the adaptive context mixer).
    #[arg(long)]
    weights: Option<PathBuf>,
}

impl ModelOpts {
    fn load(&self) -> Result<Model> {
        Ok(match &self.weights {
            None => Model::ContextMix,
            Some(p) => Model::Neural(std::sync::Arc::new(Transformer::new(&Weights::load(p)?))),
        })
    }
}

#[derive(Args)]
struct RunOpts {
    /// Worker threads (default: all cores). The output never depends on it.
    #[arg(short = 'j', long)]
    threads: Option<usize>,
    /// Replace existing output files.
    #[arg(long)]
    force: bool,
}

pub fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Compress { inputs, output, model, run } => {
            with_threads(run.threads, || compress(&inputs, &output, &model.load()?, run.force))
        }
        Command::Decompress { archive, output, model, run } => {
            with_threads(run.threads, || decompress(&archive, &output, &model, run.force))
        }
        Command::Eval { inputs, model, threads } => with_threads(threads, || eval(&inputs, &model.load()?)),
        Command::Bench { inputs, model } => bench::run(&files::collect_inputs(&inputs)?, &model.load()?),
    }
}

fn with_threads<T: Send>(threads: Option<usize>, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads.unwrap_or(0)).build()?;
    pool.install(f)
}

fn progress(len: usize, what: &str) -> ProgressBar {
    let style = ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} segments, {elapsed} (eta {eta})")
        .expect("valid template")
        .progress_chars("=> ");
    ProgressBar::new(len as u64).with_style(style).with_message(what.to_string())
}

/// The closing line of every command that codes tokens.
fn summary(verb: &str, segments: usize, tokens: usize, archive_bytes: usize, secs: f64) -> String {
    let bits = archive_bytes as f64 * 8.0 / tokens.max(1) as f64;
    format!(
        "{verb} {segments} segments, {tokens} tokens, {archive_bytes} archive bytes: {bits:.4} bits/token, rate {:.3}, {:.0} tokens/s",
        10.0 / bits,
        tokens as f64 / secs
    )
}

/// Read and code segment files, a lockstep batch per worker, showing progress.
fn encode_files(paths: &[PathBuf], model: &Model, what: &str) -> Result<Vec<CodedSegment>> {
    let bar = progress(paths.len(), what);
    let coded = paths
        .par_chunks(model.batch_size())
        .map(|chunk| {
            let segments = chunk.iter().map(|p| read_segment_file(p)).collect::<Result<Vec<_>>>()?;
            let coded = encode_batch(model, &segments)?;
            bar.inc(chunk.len() as u64);
            Ok(coded)
        })
        .collect::<Result<Vec<_>>>()?;
    bar.finish_and_clear();
    Ok(coded.concat())
}

fn compress(inputs: &[PathBuf], output: &Path, model: &Model, force: bool) -> Result<()> {
    files::check_writable(output, force)?;
    let paths = files::collect_inputs(inputs)?;
    let start = Instant::now();
    let coded = encode_files(&paths, model, "compress")?;
    files::check_unique_names(coded.iter().map(|c| c.name.as_str()))?;
    let bytes = archive::write(&model.id(), &coded);
    files::write_atomic(output, &bytes, force)?;
    let tokens = coded.iter().map(|c| c.frames * TOKENS_PER_FRAME).sum();
    eprintln!("{}", summary("compressed", coded.len(), tokens, bytes.len(), start.elapsed().as_secs_f64()));
    Ok(())
}

fn decompress(archive_path: &Path, dir: &Path, model: &ModelOpts, force: bool) -> Result<()> {
    let bytes = std::fs::read(archive_path).with_context(|| format!("{}: cannot read", archive_path.display()))?;
    let at = || archive_path.display().to_string();
    let archive = archive::parse(&bytes).with_context(at)?;
    let neural = if model.weights.is_some() { Some(model.load()?) } else { None };
    let model = archive_model(&archive, neural.as_ref()).with_context(at)?;
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create directory", dir.display()))?;
    let targets: Vec<PathBuf> = archive.entries.iter().map(|e| dir.join(&e.name)).collect();
    for t in &targets {
        files::check_writable(t, force)?;
    }
    let start = Instant::now();
    let bar = progress(targets.len(), "decompress");
    let indices: Vec<usize> = (0..targets.len()).collect();
    indices.par_chunks(model.batch_size()).try_for_each(|chunk| -> Result<()> {
        for (&i, seg) in chunk.iter().zip(decode_batch(&archive, &model, chunk)) {
            files::write_atomic(&targets[i], &seg.with_context(at)?.to_npy_bytes()?, force)?;
        }
        bar.inc(chunk.len() as u64);
        Ok(())
    })?;
    bar.finish_and_clear();
    let tokens = archive.entries.iter().map(|e| e.frames * TOKENS_PER_FRAME).sum();
    eprintln!("{}", summary("decompressed", targets.len(), tokens, bytes.len(), start.elapsed().as_secs_f64()));
    Ok(())
}

fn eval(inputs: &[PathBuf], model: &Model) -> Result<()> {
    let paths = files::collect_inputs(inputs)?;
    let start = Instant::now();
    let rows: Vec<_> = encode_files(&paths, model, "eval")?
        .into_iter()
        .map(|c| (c.name, c.frames * TOKENS_PER_FRAME, c.payload.len()))
        .collect();
    println!("{:<48} {:>10} {:>10} {:>10}", "segment", "tokens", "bytes", "bits/token");
    for (name, tokens, bytes) in &rows {
        println!("{name:<48} {tokens:>10} {bytes:>10} {:>10.4}", *bytes as f64 * 8.0 / *tokens.max(&1) as f64);
    }
    let tokens = rows.iter().map(|r| r.1).sum();
    let bytes = rows.iter().map(|r| r.2).sum();
    println!("{}", summary("evaluated", rows.len(), tokens, bytes, start.elapsed().as_secs_f64()));
    Ok(())
}
