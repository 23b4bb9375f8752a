//! Data I/O: reading token segments from .npy files and writing them back byte for byte.

pub mod npy;
pub mod shard;
pub mod shared;
pub mod synthetic;

pub use npy::{parse_segment, read_segment_file, Layout, Segment, TOKENS_PER_FRAME, VOCAB};
