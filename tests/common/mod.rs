//! Shared helpers: where the real data lives, and synthetic segments.
#![allow(dead_code)]

use cvq::data::{read_segment_file, Segment};

pub use cvq::data::shared::shared_data as real_data;

pub fn clip() -> Segment {
    read_segment_file(&real_data("clip.npy")).unwrap()
}

pub use cvq::data::synthetic::segment as synthetic;
