//! Data I/O: reading token segments from .npy files and writing them back byte for byte.

pub mod npy;
pub mod shard;
pub mod synthetic;

pub use npy::{parse_segment, read_segment_file, Layout, Segment, TOKENS_PER_FRAME, VOCAB};

use anyhow::{ensure, Result};
use std::collections::HashSet;

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

/// Segments are restored by name, so two may not share one.
pub fn check_unique_names(names: impl Iterator<Item = String>) -> Result<()> {
    let mut seen = HashSet::new();
    for n in names {
        ensure!(
            !seen.contains(&n),
            "two segments are named {n:?}: segments are restored by name, which must be unique"
        );
        seen.insert(n);
    }
    Ok(())
}

/// What the coder takes: whole frames of 128 tokens, each 0..1023. Segments read from files
/// are so (`parse_segment` checks); this guards the library's other callers, whose partial
/// frames or wider values would otherwise code into an archive that does not decode.
pub fn check_tokens(tokens: &[u16]) -> Result<()> {
    ensure!(
        tokens.len().is_multiple_of(TOKENS_PER_FRAME),
        "{} tokens is not a whole number of {TOKENS_PER_FRAME}-token frames",
        tokens.len()
    );
    if let Some((i, t)) = tokens.iter().enumerate().find(|(_, &t)| usize::from(t) >= VOCAB) {
        anyhow::bail!("token {i} is {t}, out of range 0..{}", VOCAB - 1);
    }
    Ok(())
}
