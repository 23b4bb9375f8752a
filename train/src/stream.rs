//! Training data as a stream with bounded memory: sources (dataset shards, .npy files, or
//! segments in memory) are visited in a seeded order that changes every epoch, each segment is
//! cut into windows, and windows pass through a seeded shuffle buffer into batches. Memory is
//! the buffer plus one segment, whatever the size of the data.
//!
//! The stream is a deterministic state machine whose state (position, generator, buffer) is
//! small enough to checkpoint: a run stopped and resumed sees exactly the batches of a run
//! that never stopped. A loader thread runs it ahead of the trainer, preparing batches on the
//! CPU while the device works.

use crate::data::{tile, HostBatch, Rng, Window};
use anyhow::{ensure, Context, Result};
use cvq::data::{read_segment_file, shard::read_shard, Segment};
use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Where segments come from.
pub enum Source {
    /// A dataset shard (tar.gz webdataset), read as a stream.
    Shard(PathBuf),
    /// One .npy segment file.
    File(PathBuf),
    /// A segment already in memory (single-clip experiments).
    Memory(Arc<Segment>),
}

/// Returned through a source's reader to stop it between two segments.
#[derive(Debug)]
struct Stop;

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("stopped")
    }
}

impl std::error::Error for Stop {}

impl Source {
    /// Call `each` with the source's segments from the `skip`-th on, in order, until it
    /// returns false.
    fn read(&self, skip: usize, mut each: impl FnMut(Segment) -> Result<bool>) -> Result<()> {
        let mut index = 0;
        let mut visit = |seg: Segment| -> Result<()> {
            index += 1;
            if index > skip && !each(seg)? {
                return Err(Stop.into());
            }
            Ok(())
        };
        let read = match self {
            Source::Shard(p) => read_shard(p, &mut visit).map(|_| ()),
            Source::File(p) if skip == 0 => visit(read_segment_file(p)?),
            Source::Memory(s) if skip == 0 => visit(Segment::clone(s)),
            _ => Ok(()),
        };
        match read {
            Err(e) if e.downcast_ref::<Stop>().is_some() => Ok(()),
            other => other,
        }
    }
}

/// Sources for shard paths and for .npy files or directories of them (their files in name
/// order; subdirectories are not entered).
pub fn sources(shards: &[PathBuf], data: &[PathBuf]) -> Result<Vec<Source>> {
    let mut out: Vec<Source> = shards.iter().cloned().map(Source::Shard).collect();
    for p in data {
        if !p.is_dir() {
            ensure!(p.exists(), "{}: no such file or directory", p.display());
            out.push(Source::File(p.clone()));
            continue;
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(p)
            .with_context(|| format!("{}: cannot list the data directory", p.display()))?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()?;
        files.retain(|f| f.is_file());
        files.sort();
        ensure!(!files.is_empty(), "{}: no segment files", p.display());
        out.extend(files.into_iter().map(Source::File));
    }
    Ok(out)
}

/// The validation segments, the only ones held in memory: those named in `holdout`, or else
/// the last `last` segments of the data. Sources are read from the end until they are found.
pub fn hold_out(sources: &[Source], holdout: &[String], last: usize) -> Result<Vec<Segment>> {
    let wanted = if holdout.is_empty() { last } else { holdout.len() };
    let mut found: VecDeque<Segment> = VecDeque::new();
    for source in sources.iter().rev() {
        let mut tail: VecDeque<Segment> = VecDeque::new();
        source.read(0, |seg| {
            if holdout.is_empty() || holdout.contains(&seg.name) {
                tail.push_back(seg);
                if tail.len() + found.len() > wanted {
                    tail.pop_front();
                }
            }
            Ok(true)
        })?;
        tail.into_iter().rev().for_each(|s| found.push_front(s));
        if found.len() == wanted {
            break;
        }
    }
    ensure!(found.len() == wanted, "only {} of the {wanted} validation segments were found", found.len());
    Ok(found.into())
}

/// How far the stream has read: epoch, the source's place in that epoch's order, and the
/// segments of that source already cut.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Position {
    pub epoch: u64,
    pub source: usize,
    pub segment: usize,
}

/// The stream's settings and state.
pub struct Stream {
    sources: Arc<Vec<Source>>,
    /// Segments never trained on (the validation ones).
    skip: Arc<HashSet<String>>,
    seed: u64,
    /// Frames per window, of which the first `context` are context.
    pub frames: usize,
    pub context: usize,
    pub batch: usize,
    /// Windows the shuffle buffer holds before it lets one out.
    pub capacity: usize,
    pub pos: Position,
    pub rng: Rng,
    pub buffer: Vec<Window>,
    /// The batch being filled.
    pub partial: Vec<Window>,
    /// Windows cut by this stream (since it started or resumed).
    cut: usize,
}

/// A batch from the loader: its windows, their prepared inputs, and how far the epoch is.
pub struct Item {
    pub windows: Vec<Window>,
    pub host: HostBatch,
    /// Epochs done, fractional: the epoch's number plus the share of its sources read.
    pub epoch: f64,
}

impl Stream {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        sources: Vec<Source>,
        skip: HashSet<String>,
        seed: u64,
        frames: usize,
        context: usize,
        batch: usize,
        capacity: usize,
    ) -> Stream {
        Stream {
            sources: Arc::new(sources),
            skip: Arc::new(skip),
            seed,
            frames,
            context,
            batch,
            capacity,
            pos: Position::default(),
            rng: Rng::new(seed ^ 0x5EED_DA7A),
            buffer: vec![],
            partial: vec![],
            cut: 0,
        }
    }

    /// The order of the sources in `epoch`: a seeded shuffle (Fisher-Yates).
    fn order(&self, epoch: u64) -> Vec<usize> {
        let mut rng = Rng::new(self.seed ^ epoch.wrapping_mul(0xD6E8_FEB8_6659_FD93));
        let mut order: Vec<usize> = (0..self.sources.len()).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i + 1));
        }
        order
    }

    fn epoch_done(&self) -> f64 {
        self.pos.epoch as f64 + self.pos.source as f64 / self.sources.len().max(1) as f64
    }

    /// Cut a segment into the buffer and let out what overflows; false once nobody listens.
    fn add(&mut self, seg: &Segment, out: &SyncSender<Item>) -> bool {
        let windows = tile(&seg.tokens, self.frames, self.context, self.rng.below(self.frames - self.context));
        self.cut += windows.len();
        self.buffer.extend(windows);
        while self.buffer.len() > self.capacity {
            let w = self.buffer.swap_remove(self.rng.below(self.buffer.len()));
            self.partial.push(w);
            if self.partial.len() == self.batch {
                let windows = std::mem::take(&mut self.partial);
                let host = HostBatch::new(&windows, self.frames);
                if out.send(Item { windows, host, epoch: self.epoch_done() }).is_err() {
                    return false;
                }
            }
        }
        true
    }

    /// Run until `stop` is set (checked between segments) or the receiver hangs up; returns
    /// the state at a segment boundary.
    fn run(mut self, out: SyncSender<Item>, stop: Arc<AtomicBool>) -> Result<Stream> {
        let sources = Arc::clone(&self.sources);
        let skip = Arc::clone(&self.skip);
        loop {
            // An epoch read from its start that cuts no window never will.
            let (fresh, cut_before) = (self.pos.source == 0 && self.pos.segment == 0, self.cut);
            let order = self.order(self.pos.epoch);
            while self.pos.source < order.len() {
                let mut go = true;
                sources[order[self.pos.source]].read(self.pos.segment, |seg| {
                    self.pos.segment += 1;
                    go = (skip.contains(&seg.name) || self.add(&seg, &out)) && !stop.load(Ordering::Relaxed);
                    Ok(go)
                })?;
                if !go {
                    return Ok(self);
                }
                self.pos.source += 1;
                self.pos.segment = 0;
            }
            ensure!(!fresh || self.cut > cut_before, "no training segment holds a window of {} frames", self.frames);
            self.pos.epoch += 1;
            self.pos.source = 0;
        }
    }
}

/// The stream running ahead in its own thread, a few batches deep.
pub struct Loader {
    rx: Receiver<Item>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<Stream>>>,
    /// Batches made before a checkpoint and not yet trained on.
    queued: VecDeque<Vec<Window>>,
}

/// Batches the loader prepares ahead of the trainer.
const AHEAD: usize = 4;

impl Loader {
    pub fn start(stream: Stream, queued: Vec<Vec<Window>>) -> Loader {
        let (tx, rx) = sync_channel(AHEAD);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = Some(std::thread::spawn(move || stream.run(tx, flag)));
        Loader { rx, stop, thread, queued: queued.into() }
    }

    pub fn next_batch(&mut self) -> Result<Item> {
        if let Some(windows) = self.queued.pop_front() {
            let host = HostBatch::new(&windows, frames_of(&windows[0]));
            return Ok(Item { windows, host, epoch: f64::NAN });
        }
        match self.rx.recv() {
            Ok(item) => Ok(item),
            // The thread ended: it failed (a bad shard, say).
            Err(_) => Err(self.join().err().unwrap_or_else(|| anyhow::anyhow!("the data stream ended"))),
        }
    }

    /// Stop the thread between two segments; returns its state and the batches it made that
    /// were not trained on, in order: together, exactly where the data stands.
    pub fn pause(mut self) -> Result<(Stream, Vec<Vec<Window>>)> {
        self.stop.store(true, Ordering::Relaxed);
        let mut queued: Vec<Vec<Window>> = self.queued.drain(..).collect();
        // Draining lets a thread blocked on a full channel reach its next segment boundary.
        queued.extend(self.rx.iter().map(|item| item.windows));
        Ok((self.join()?, queued))
    }

    fn join(&mut self) -> Result<Stream> {
        let thread = self.thread.take().context("the data loader already ended")?;
        thread.join().map_err(|_| anyhow::anyhow!("the data loader panicked"))?
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // Let a thread blocked on the channel end: its sends fail once the receiver is gone.
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Frames in a window (its lead frame is input only).
fn frames_of(w: &Window) -> usize {
    w.tokens.len() / cvq::data::TOKENS_PER_FRAME - usize::from(w.lead)
}

/// Every segment of a list of .npy paths or directories, in memory (small experiments).
pub fn load_all(sources: &[Source]) -> Result<Vec<Segment>> {
    let mut out = vec![];
    for s in sources {
        s.read(0, |seg| {
            out.push(seg);
            Ok(true)
        })?;
    }
    Ok(out)
}
