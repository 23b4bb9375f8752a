//! Shared helpers: where the real data lives, and synthetic segments.
#![allow(dead_code)]

use cvq::data::{read_segment_file, Segment};

mod real_data;
pub use real_data::real_data;

pub fn clip() -> Segment {
    read_segment_file(&real_data("clip.npy")).unwrap()
}

pub use cvq::data::synthetic::segment as synthetic;

/// The clip's first `frames` frames as a segment of its own (header included).
pub fn clip_frames(frames: usize) -> Segment {
    let mut seg = clip();
    seg.tokens.truncate(frames * 128);
    seg.header = synthetic("h", frames, 0).header;
    seg
}
