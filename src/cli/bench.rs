//! `cvq bench`: cvq's predictors against lzma, zstd and zpaq (each on its best layout) on the same segments, one table
//! measured in one run (sizes, round trips and speeds), then an estimate of the challenge score.

use crate::archive::{self, CodedSegment};
use crate::code::{decode, encode, ideal_bits};
use crate::data::npy::npy_header;
use crate::data::{read_segment_file, Segment, TOKENS_PER_FRAME};
use crate::predict::transformer::Transformer;
use crate::predict::{Learning, Model};
use anyhow::{ensure, Context, Result};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Instant;

/// The challenge: 5000 segments of 1200 frames, scored against their 10-bit tokens.
const CHALLENGE_SEGMENTS: usize = 5000;
const CHALLENGE_FRAMES: usize = 1200;
const CHALLENGE_TOKENS: usize = CHALLENGE_FRAMES * TOKENS_PER_FRAME;
/// A commaVQ-style segment name (32 hex digits, `_n`), for the index cost of one entry.
const DATASET_NAME: &str = "3b41c0fa8959aea6c118e5714f412a2e_10";

/// One method's result on one segment.
struct Measured {
    bytes: usize,
    compress_s: f64,
    decompress_s: f64,
    /// The model's ideal code length, for cvq rows where it costs little to compute.
    ideal_bits: Option<f64>,
    /// Bytes a cvq predictor's state takes for the segment (`Model::memory`).
    memory: Option<usize>,
}

/// `weights_bytes`: the size of the weights file the neural and mixed models ship with.
pub fn run(paths: &[PathBuf], weights: &Arc<Transformer>, decoder: Option<&Path>, weights_bytes: usize) -> Result<()> {
    let models = Model::all(Some(weights));
    let neural = Model::Neural(Arc::clone(weights), Learning::Frozen);
    println!("{neural:?}; one thread, one segment at a time");
    println!(
        "{:<24} {:<20} {:>10} {:>9} {:>7} {:>9} {:>9} {:>12} {:>12} {:>9}",
        "input", "method", "bytes", "bits/tok", "rate", "ideal", "overhead", "comp tok/s", "decomp tok/s", "state MB"
    );
    // Per cvq model: total payload bytes over the inputs.
    let mut payload_totals = vec![0usize; models.len()];
    let mut tokens = 0;
    // The first input, which the lockstep decode speed is timed on.
    let mut first: Option<Vec<u16>> = None;
    for p in paths {
        let seg = read_segment_file(p)?;
        let at = || p.display().to_string();
        let n = seg.tokens.len();
        type Peer = fn(&[u8]) -> Result<Option<Measured>>;
        let peers: [(&str, Peer); 3] = [
            ("lzma -6", |d| external_pipe("xz", &["-6", "-T1"], d)),
            ("zstd -19", |d| external_pipe("zstd", &["-19", "-q"], d)),
            ("zpaq -m5", zpaq),
        ];
        for (name, peer) in peers {
            let (layout, m) = at_best_layout(&seg, peer).with_context(at)?.unzip();
            print_row(&seg.name, format!("{name} {}", layout.unwrap_or_default()).trim_end(), n, m);
        }
        for (model, total) in models.iter().zip(&mut payload_totals) {
            let m = cvq(model, &seg.tokens).with_context(at)?;
            *total += m.bytes;
            print_row(&seg.name, &format!("cvq {}", model.name()), n, Some(m));
        }
        tokens += n;
        first.get_or_insert(seg.tokens);
    }
    let estimates = models.iter().zip(payload_totals).map(|(model, total)| {
        let archive = archive_estimate(model, total * CHALLENGE_TOKENS / tokens.max(1));
        let weights = if model.transformer().is_some() { weights_bytes } else { 0 };
        (model, archive, weights)
    });
    let (model, archive, weights) = estimates.min_by_key(|&(_, a, w)| a + w).expect("cvq models");
    print_score(model.name(), archive, weights, decoder)?;
    let first = first.context("bench: no input")?;
    print_decode_time(model, &first).with_context(|| paths[0].display().to_string())
}

/// Frames of the first input that `print_decode_time` times, past any model's context window.
const LOCKSTEP_FRAMES: usize = 48;

/// The winning model's decode speed as `cvq decompress` runs it, a lockstep batch of
/// `Model::batch_size` segments (here copies of the first input's first frames) on one
/// thread, and what it means for the challenge set on 16 cores.
fn print_decode_time(model: &Model, tokens: &[u16]) -> Result<()> {
    let n = tokens.len().min(LOCKSTEP_FRAMES * TOKENS_PER_FRAME);
    let batch = model.batch_size();
    let (toks, sizes) = (vec![&tokens[..n]; batch], vec![n; batch]);
    let payloads = encode(&mut model.batch(&sizes), &toks);
    let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
    let t0 = Instant::now();
    let back = decode(&mut model.batch(&sizes), &refs, &sizes);
    let rate = (batch * n) as f64 / t0.elapsed().as_secs_f64();
    ensure!(
        back.into_iter().all(|b| b.is_ok_and(|b| b == toks[0])),
        "cvq {}: lockstep round trip mismatch",
        model.name()
    );
    let hours = (CHALLENGE_SEGMENTS * CHALLENGE_TOKENS) as f64 / (16.0 * rate) / 3600.0;
    println!(
        "  decode         {rate:.0} tokens/s per core ({batch} segments in lockstep, {n} tokens each): \
         {hours:.2} h for the {CHALLENGE_SEGMENTS} segments on 16 such cores"
    );
    Ok(())
}

fn print_row(input: &str, method: &str, tokens: usize, m: Option<Measured>) {
    let Some(m) = m else {
        return println!("{input:<24} {method:<20} not installed");
    };
    let bits = m.bytes as f64 * 8.0;
    let (ideal, overhead) = match m.ideal_bits {
        Some(i) => (format!("{:.4}", i / tokens as f64), format!("{:.4}%", (bits / i - 1.0) * 100.0)),
        None => ("-".into(), "-".into()),
    };
    println!(
        "{input:<24} {method:<20} {:>10} {:>9.4} {:>7.3} {ideal:>9} {overhead:>9} {:>12.0} {:>12.0} {:>9}",
        m.bytes,
        bits / tokens as f64,
        10.0 * tokens as f64 / bits,
        tokens as f64 / m.compress_s,
        tokens as f64 / m.decompress_s,
        m.memory.map_or("-".into(), |b| format!("{:.1}", b as f64 / 1e6))
    );
}

/// The byte layouts the general-purpose peers are run on: int16 LE tokens as the dataset
/// stores them (frame by frame), and position-major, each of the 128 positions' tokens over
/// time contiguous (`tokens.reshape(-1, 128).T`, the challenge baseline's layout). Which one
/// suits a tool depends on its model: on the real clip all three code position-major smaller
/// (zpaq -m5 7.34 -> 6.07 bits/token, xz -6 7.65 -> 6.76, zstd -19 9.18 -> 7.60).
const LAYOUTS: [(&str, bool); 2] = [("natural", false), ("pos-major", true)];

fn layout_bytes(seg: &Segment, position_major: bool) -> Vec<u8> {
    let frames = seg.frames();
    let at = |i: usize| match position_major {
        false => seg.tokens[i],
        true => seg.tokens[(i % frames) * TOKENS_PER_FRAME + i / frames],
    };
    (0..seg.tokens.len()).flat_map(|i| (at(i) as i16).to_le_bytes()).collect()
}

/// `peer` run on every layout of `seg`, the smallest result with its layout's name; None when
/// the tool is not installed.
fn at_best_layout(
    seg: &Segment,
    peer: fn(&[u8]) -> Result<Option<Measured>>,
) -> Result<Option<(&'static str, Measured)>> {
    let mut best: Option<(&str, Measured)> = None;
    for (layout, position_major) in LAYOUTS {
        let Some(m) = peer(&layout_bytes(seg, position_major))? else { return Ok(None) };
        if best.as_ref().is_none_or(|(_, b)| m.bytes < b.bytes) {
            best = Some((layout, m));
        }
    }
    Ok(best)
}

/// Compress `data` through `tool ARGS -c` and back through `tool -d -c`, checking the round
/// trip. `xz -6` (single-threaded, so one block as Python's lzma writes) gives Python's
/// `lzma.compress` defaults: xz format, CRC64. None when the tool is not installed.
fn external_pipe(tool: &str, args: &[&str], data: &[u8]) -> Result<Option<Measured>> {
    let t0 = Instant::now();
    let Some(packed) = pipe(tool, &[args, &["-c"]].concat(), data)? else {
        return Ok(None);
    };
    let compress_s = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let back = pipe(tool, &["-d", "-c"], &packed)?.with_context(|| format!("{tool}: vanished mid-run"))?;
    let decompress_s = t0.elapsed().as_secs_f64();
    ensure!(back == data, "{tool}: round trip mismatch");
    Ok(Some(Measured { bytes: packed.len(), compress_s, decompress_s, ideal_bits: None, memory: None }))
}

/// Run `tool` with `input` on stdin; its stdout, or None when it is not installed. The input
/// comes from a scratch file rather than a pipe, so a tool that stops reading early fails
/// with its own error instead of a broken pipe.
fn pipe(tool: &str, args: &[&str], input: &[u8]) -> Result<Option<Vec<u8>>> {
    let dir = ScratchDir::new()?;
    let path = dir.0.join("input");
    std::fs::write(&path, input).with_context(|| format!("{}: cannot write", path.display()))?;
    let stdin = std::fs::File::open(&path).with_context(|| format!("{}: cannot read", path.display()))?;
    match Command::new(tool).args(args).stdin(stdin).output() {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        out => Ok(Some(checked(tool, args, out)?.stdout)),
    }
}

/// The tool's output if it ran and succeeded; otherwise an error naming it, with its stderr.
fn checked(tool: &str, args: &[&str], out: std::io::Result<Output>) -> Result<Output> {
    let out = out.with_context(|| format!("{tool}: cannot run"))?;
    ensure!(
        out.status.success(),
        "{tool} {}: failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(out)
}

/// zpaq works on files: archive `data` with `-m5` in a scratch
/// directory and extract it again. None when zpaq is not installed.
fn zpaq(data: &[u8]) -> Result<Option<Measured>> {
    let dir = ScratchDir::new()?;
    std::fs::write(dir.0.join("tokens"), data).with_context(|| format!("{}: cannot write", dir.0.display()))?;
    let run = |args: &[&str]| -> Result<Option<()>> {
        match Command::new("zpaq").args(args).current_dir(&dir.0).output() {
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            out => checked("zpaq", args, out).map(|_| Some(())),
        }
    };
    let t0 = Instant::now();
    if run(&["a", "tokens.zpaq", "tokens", "-m5"])?.is_none() {
        return Ok(None);
    }
    let compress_s = t0.elapsed().as_secs_f64();
    let bytes = std::fs::metadata(dir.0.join("tokens.zpaq")).context("zpaq: wrote no archive")?.len() as usize;
    let t0 = Instant::now();
    run(&["x", "tokens.zpaq", "tokens", "-to", "back"])?.context("zpaq: vanished mid-run")?;
    let decompress_s = t0.elapsed().as_secs_f64();
    ensure!(std::fs::read(dir.0.join("back")).ok().as_deref() == Some(data), "zpaq: round trip mismatch");
    Ok(Some(Measured { bytes, compress_s, decompress_s, ideal_bits: None, memory: None }))
}

/// A fresh directory under the system temp dir, removed when dropped.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new() -> Result<ScratchDir> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos();
        let dir = std::env::temp_dir().join(format!("cvq-bench-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&dir).with_context(|| format!("{}: cannot create", dir.display()))?;
        Ok(ScratchDir(dir))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Code `tokens` as one segment with `model`, decode and check. The ideal code length costs
/// another pass of the model, so only the context mixer (fast) reports it; the coder is the
/// same for every model.
fn cvq(model: &Model, tokens: &[u16]) -> Result<Measured> {
    let n = tokens.len();
    let t0 = Instant::now();
    let payload = encode(&mut model.batch(&[n]), &[tokens]).remove(0);
    let compress_s = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let back = decode(&mut model.batch(&[n]), &[&payload], &[n]).remove(0)?;
    let decompress_s = t0.elapsed().as_secs_f64();
    ensure!(back == tokens, "cvq {}: round trip mismatch", model.name());
    let ideal_bits = matches!(model, Model::ContextMix).then(|| ideal_bits(tokens, model.batch(&[n]).get(0)));
    Ok(Measured { bytes: payload.len(), compress_s, decompress_s, ideal_bits, memory: Some(model.memory(n)) })
}

/// Archive bytes for the challenge's segments, each with a `payload`-byte payload, as
/// `archive::write` lays them out: the difference between a two-entry and a one-entry archive
/// is the cost of one more segment.
fn archive_estimate(model: &Model, payload: usize) -> usize {
    let entry = CodedSegment {
        name: DATASET_NAME.into(),
        header: npy_header("<i2", false, &[CHALLENGE_FRAMES, 8, 16]),
        frames: CHALLENGE_FRAMES,
        checksum: 0,
        payload: vec![0; payload],
    };
    let one = archive::write(&model.id(), std::slice::from_ref(&entry)).len();
    let two = archive::write(&model.id(), &[entry.clone(), entry]).len();
    one + (two - one) * (CHALLENGE_SEGMENTS - 1)
}

fn print_score(method: &str, archive: usize, weights: usize, decoder: Option<&Path>) -> Result<()> {
    println!();
    println!(
        "challenge estimate for cvq {method}: {CHALLENGE_SEGMENTS} segments of {CHALLENGE_FRAMES} frames at the \
         inputs' bits/token, zip overhead left out"
    );
    println!("  archive        {archive:>12} bytes");
    match weights {
        0 => println!("  weights                   none (the context mixer needs none)"),
        w => println!("  weights        {w:>12} bytes"),
    }
    let found = super::pack::find_decoder(decoder).and_then(|path| match path.is_file() {
        true => Ok(path),
        false => Err(format!("decoder not built: none at {} (scripts/build-decoder.sh builds it)", path.display())),
    });
    let decoder_bytes = match found {
        Ok(path) => {
            let bytes = std::fs::metadata(&path).with_context(|| format!("{}: cannot read", path.display()))?.len();
            println!("  decoder        {bytes:>12} bytes ({})", path.display());
            bytes as usize
        }
        Err(not_found) => {
            println!("  {not_found}; the estimate leaves it out");
            0
        }
    };
    println!("  decompress.py  {:>12} bytes", super::pack::DECOMPRESS_PY.len());
    let total = archive + weights + decoder_bytes + super::pack::DECOMPRESS_PY.len();
    let original_bytes = (CHALLENGE_SEGMENTS * CHALLENGE_TOKENS * 10) as f64 / 8.0;
    println!("  total          {total:>12} bytes: score {:.4}", original_bytes / total as f64);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_major_lists_each_position_over_time() {
        let tokens: Vec<u16> = (0..2 * TOKENS_PER_FRAME as u16).collect();
        let seg = Segment::int16("s", tokens.clone());
        let le = |v: &[u16]| -> Vec<u8> { v.iter().flat_map(|t| t.to_le_bytes()).collect() };
        assert_eq!(layout_bytes(&seg, false), le(&tokens));
        let (first, second) = tokens.split_at(TOKENS_PER_FRAME);
        let by_position: Vec<u16> = first.iter().zip(second).flat_map(|(&a, &b)| [a, b]).collect();
        assert_eq!(layout_bytes(&seg, true), le(&by_position));
    }
}
