//! Shared helpers: where the real data lives, and synthetic segments.
#![allow(dead_code)]

use cvq::data::{read_segment_file, Segment};

pub use cvq::data::shared::shared_data as real_data;

pub fn clip() -> Option<Segment> {
    real_data("clip.npy").map(|p| read_segment_file(&p).unwrap())
}

pub use cvq::data::synthetic::segment as synthetic;
