//! Data I/O: reading token segments from .npy files and writing them back byte for byte.

pub mod npy;
pub mod shard;
pub mod synthetic;

pub use npy::{parse_segment, read_segment_file, Layout, Segment, TOKENS_PER_FRAME, VOCAB};

use anyhow::{ensure, Result};

/// Longest segment name, in bytes (the usual file-system limit).
pub const MAX_NAME: usize = 255;

/// Names become file names in the output directory: no paths, nothing hidden behind them.
pub fn check_name(name: &str) -> Result<()> {
    ensure!(
        !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0']),
        "segment name {name:?} is not a plain file name"
    );
    ensure!(name.len() <= MAX_NAME, "segment name {name:?} is longer than {MAX_NAME} bytes");
    Ok(())
}
