//! Training data: windows of whole frames cut from segments, and the inputs, targets and loss
//! mask of a batch of them. Where windows come from is `stream.rs`.

use anyhow::{ensure, Result};
use candle_core::{Device, Tensor};
use cvq::data::{Segment, TOKENS_PER_FRAME};
use cvq::network::spec::BOS;

/// For single-clip experiments: frames before `frame` train, the rest validate (the rest
/// becomes its own segment, coded from its first frame).
pub fn split_by_frame(segments: Vec<Segment>, frame: usize) -> Result<(Vec<Segment>, Vec<Segment>)> {
    let (mut train, mut val) = (vec![], vec![]);
    for s in segments {
        ensure!(frame > 0 && frame < s.frames(), "{}: cannot split {} frames at frame {frame}", s.name, s.frames());
        let cut = frame * TOKENS_PER_FRAME;
        train.push(Segment::int16(&format!("{}[..{frame}]", s.name), s.tokens[..cut].to_vec()));
        val.push(Segment::int16(&format!("{}[{frame}..]", s.name), s.tokens[cut..].to_vec()));
    }
    Ok((train, val))
}

/// Deterministic random numbers (xorshift64*), so a seed gives the same run anywhere. Its
/// state is one number, which checkpoints keep.
#[derive(Clone, Debug, PartialEq)]
pub struct Rng(pub u64);

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

/// A window of whole frames copied out of a segment, scored from frame `score_from` of the
/// window on (the frames before it are context only). A window that does not start its
/// segment also carries the frame before it (`lead`): that frame's tokens are the first
/// frame's same-position inputs, as in inference.
#[derive(Clone, Debug, PartialEq)]
pub struct Window {
    pub tokens: Vec<u16>,
    pub lead: bool,
    pub score_from: usize,
}

impl Window {
    pub fn cut(tokens: &[u16], start: usize, frames: usize, score_from: usize) -> Window {
        let from = start.saturating_sub(1) * TOKENS_PER_FRAME;
        Window { tokens: tokens[from..(start + frames) * TOKENS_PER_FRAME].to_vec(), lead: start > 0, score_from }
    }

    /// Tokens scored.
    pub fn scored(&self) -> usize {
        self.tokens.len() - (usize::from(self.lead) + self.score_from) * TOKENS_PER_FRAME
    }
}

/// Windows of `frames` frames over a segment of `tokens` such that every frame is scored,
/// each with its K = `context` frames of context: the first window starts the segment and
/// scores all its frames but the last `phase`; each later one scores `frames - context`
/// frames (the last one fewer, where the segment ends). `phase` (below `frames - context`)
/// shifts where windows fall, so epochs see different cuts. Empty for a segment shorter than
/// a window.
pub fn tile(tokens: &[u16], frames: usize, context: usize, phase: usize) -> Vec<Window> {
    let total = tokens.len() / TOKENS_PER_FRAME;
    if total < frames {
        return vec![];
    }
    let mut out = vec![Window::cut(tokens, 0, frames, 0)];
    let mut scored = frames - phase;
    while scored < total {
        let start = (scored - context).min(total - frames);
        out.push(Window::cut(tokens, start, frames, scored - start));
        scored = start + frames;
    }
    out
}

/// One batch of training windows: ids and targets `[B, N]`, loss mask `[B, N]` (f32).
pub struct Batch {
    pub prev: Tensor,
    pub same: Tensor,
    pub pos: Tensor,
    pub targets: Tensor,
    pub mask: Tensor,
    /// Frames per window.
    pub frames: usize,
    /// Tokens scored (the mask's sum, known on the host).
    pub scored: usize,
    /// The first frame that any window scores: the model runs its output head from there on.
    pub first_scored: usize,
}

/// A batch's inputs prepared on the CPU (in the loader's thread, while the device works).
pub struct HostBatch {
    prev: Vec<u32>,
    same: Vec<u32>,
    targets: Vec<u32>,
    mask: Vec<f32>,
    windows: usize,
    frames: usize,
    /// Tokens scored.
    pub scored: usize,
    first_scored: usize,
}

impl HostBatch {
    /// Inputs, targets and loss mask of windows of `frames` frames.
    pub fn new(windows: &[Window], frames: usize) -> HostBatch {
        let n = frames * TOKENS_PER_FRAME;
        let mut b = HostBatch {
            prev: Vec::with_capacity(n * windows.len()),
            same: Vec::with_capacity(n * windows.len()),
            targets: Vec::with_capacity(n * windows.len()),
            mask: Vec::with_capacity(n * windows.len()),
            windows: windows.len(),
            frames,
            scored: windows.iter().map(Window::scored).sum(),
            first_scored: windows.iter().map(|w| w.score_from).min().unwrap_or(0),
        };
        for w in windows {
            debug_assert_eq!(w.tokens.len(), (frames + usize::from(w.lead)) * TOKENS_PER_FRAME);
            let first = if w.lead { TOKENS_PER_FRAME } else { 0 };
            for i in 0..n {
                let p = first + i;
                b.prev.push(if p > 0 { u32::from(w.tokens[p - 1]) } else { BOS as u32 });
                b.same.push(if p >= TOKENS_PER_FRAME { u32::from(w.tokens[p - TOKENS_PER_FRAME]) } else { BOS as u32 });
                b.targets.push(u32::from(w.tokens[p]));
                b.mask.push(if i / TOKENS_PER_FRAME >= w.score_from { 1.0 } else { 0.0 });
            }
        }
        b
    }

    pub fn to_device(&self, device: &Device) -> Result<Batch> {
        let (b, n) = (self.windows, self.frames * TOKENS_PER_FRAME);
        let pos: Vec<u32> = (0..n).map(|i| (i % TOKENS_PER_FRAME) as u32).collect();
        Ok(Batch {
            prev: Tensor::from_slice(&self.prev, (b, n), device)?,
            same: Tensor::from_slice(&self.same, (b, n), device)?,
            pos: Tensor::from_vec(pos, n, device)?,
            targets: Tensor::from_slice(&self.targets, (b, n), device)?,
            mask: Tensor::from_slice(&self.mask, (b, n), device)?,
            frames: self.frames,
            scored: self.scored,
            first_scored: self.first_scored,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_score_every_frame_with_its_context() {
        let tokens: Vec<u16> = (0..30 * TOKENS_PER_FRAME).map(|i| (i / TOKENS_PER_FRAME) as u16).collect();
        for phase in 0..4 {
            let mut scored = vec![0; 30];
            for w in tile(&tokens, 6, 2, phase) {
                let first = usize::from(w.tokens[0]) + usize::from(w.lead);
                assert!(w.score_from == 0 || w.score_from >= 2, "context before the scored frames");
                (first + w.score_from..first + 6).for_each(|f| scored[f] += 1);
                if w.lead {
                    assert_eq!(usize::from(w.tokens[0]) + 1, first, "the lead frame precedes the window");
                }
            }
            assert!(scored.iter().all(|&s| s >= 1), "phase {phase}: {scored:?}");
        }
        assert!(tile(&tokens[..5 * TOKENS_PER_FRAME], 6, 2, 0).is_empty());
    }
}
