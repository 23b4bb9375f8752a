//! Training data: segments from local .npy files or dataset shards, a split by segment, and
//! batches of windows of whole frames.

use crate::model::Batch;
use anyhow::{ensure, Context, Result};
use candle_core::{Device, Tensor};
use cvq::data::{read_segment_file, Segment, TOKENS_PER_FRAME};
use cvq::model::spec::BOS;
use std::path::{Path, PathBuf};

/// Every .npy segment in `dir` (not recursive), in name order.
pub fn load_dir(dir: &Path) -> Result<Vec<Segment>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list the data directory", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    paths.retain(|p| p.is_file());
    paths.sort();
    ensure!(!paths.is_empty(), "{}: no segment files", dir.display());
    paths.iter().map(|p| read_segment_file(p)).collect()
}

/// Every segment of the given shards, in order.
pub fn load_shards(shards: &[PathBuf]) -> Result<Vec<Segment>> {
    let mut out = vec![];
    for s in shards {
        cvq::data::shard::read_shard(s, |seg| {
            out.push(seg);
            Ok(())
        })?;
    }
    Ok(out)
}

/// Training and validation segments.
pub struct Split {
    pub train: Vec<Segment>,
    pub val: Vec<Segment>,
}

/// Hold out the segments named in `holdout`, or else the last `val_segments` segments.
pub fn split_by_segment(mut segments: Vec<Segment>, holdout: &[String], val_segments: usize) -> Result<Split> {
    let val: Vec<Segment> = if holdout.is_empty() {
        ensure!(
            val_segments < segments.len(),
            "{val_segments} validation segments leave none of {} to train on",
            segments.len()
        );
        segments.split_off(segments.len() - val_segments)
    } else {
        let (val, train): (Vec<_>, Vec<_>) = segments.into_iter().partition(|s| holdout.contains(&s.name));
        ensure!(val.len() == holdout.len(), "only {} of the {} held-out segments were found", val.len(), holdout.len());
        segments = train;
        val
    };
    ensure!(!segments.is_empty(), "no training segments left");
    Ok(Split { train: segments, val })
}

/// For single-clip experiments: frames before `frame` train, the rest validate (the rest
/// becomes its own segment, coded from its first frame).
pub fn split_by_frame(segments: Vec<Segment>, frame: usize) -> Result<Split> {
    let mut split = Split { train: vec![], val: vec![] };
    for s in segments {
        ensure!(frame > 0 && frame < s.frames(), "{}: cannot split {} frames at frame {frame}", s.name, s.frames());
        let cut = frame * TOKENS_PER_FRAME;
        split.train.push(Segment::int16(&format!("{}[..{frame}]", s.name), s.tokens[..cut].to_vec()));
        split.val.push(Segment::int16(&format!("{}[{frame}..]", s.name), s.tokens[cut..].to_vec()));
    }
    Ok(split)
}

/// Deterministic random numbers (xorshift64*), so a seed gives the same run anywhere.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() >> 33) as usize % n.max(1)
    }

    /// A standard normal draw (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u = ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let v = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// A window: frames `start..start + frames` of a segment, scored from frame `score_from` of
/// the window on (the frames before it are context only).
#[derive(Clone, Copy)]
pub struct Window<'a> {
    pub tokens: &'a [u16],
    pub start: usize,
    pub score_from: usize,
}

impl<'a> Window<'a> {
    /// Scored from the first frame that has its full K-frame context inside the window, or
    /// from frame 0 for a window that starts the segment (no earlier context in inference).
    pub fn new(tokens: &'a [u16], start: usize, context: usize) -> Window<'a> {
        Window { tokens, start, score_from: if start == 0 { 0 } else { context } }
    }
}

/// Inputs, targets and loss mask for windows of `frames` frames.
pub fn batch(windows: &[Window], frames: usize, device: &Device) -> Result<Batch> {
    let n = frames * TOKENS_PER_FRAME;
    let (mut prev, mut same, mut targets, mut mask) = (vec![], vec![], vec![], vec![]);
    for w in windows {
        for i in 0..n {
            let p = w.start * TOKENS_PER_FRAME + i;
            prev.push(if p > 0 { u32::from(w.tokens[p - 1]) } else { BOS as u32 });
            same.push(if p >= TOKENS_PER_FRAME { u32::from(w.tokens[p - TOKENS_PER_FRAME]) } else { BOS as u32 });
            targets.push(u32::from(w.tokens[p]));
            mask.push(if i / TOKENS_PER_FRAME >= w.score_from { 1f32 } else { 0.0 });
        }
    }
    let b = windows.len();
    let pos: Vec<u32> = (0..n).map(|i| (i % TOKENS_PER_FRAME) as u32).collect();
    Ok(Batch {
        prev: Tensor::from_vec(prev, (b, n), device)?,
        same: Tensor::from_vec(same, (b, n), device)?,
        pos: Tensor::from_vec(pos, n, device)?,
        targets: Tensor::from_vec(targets, (b, n), device)?,
        mask: Tensor::from_vec(mask, (b, n), device)?,
        frames,
    })
}

/// Random training windows (segments shorter than a window are skipped).
pub fn sample<'a>(
    segments: &'a [Segment],
    frames: usize,
    context: usize,
    count: usize,
    rng: &mut Rng,
) -> Vec<Window<'a>> {
    let usable: Vec<&Segment> = segments.iter().filter(|s| s.frames() >= frames).collect();
    (0..count)
        .map(|_| {
            let s = usable[rng.below(usable.len())];
            Window::new(&s.tokens, rng.below(s.frames() - frames + 1), context)
        })
        .collect()
}

/// Validation windows tiling each segment so that every frame is scored exactly once, each
/// with its K-frame context (the segment's first window from its first frame).
pub fn tiles(segments: &[Segment], frames: usize, context: usize) -> Vec<Window<'_>> {
    let mut out = vec![];
    for s in segments.iter().filter(|s| s.frames() >= frames) {
        out.push(Window::new(&s.tokens, 0, context));
        let mut scored = frames;
        while scored < s.frames() {
            let start = (scored - context).min(s.frames() - frames);
            out.push(Window { tokens: &s.tokens, start, score_from: scored - start });
            scored = start + frames;
        }
    }
    out
}
