//! `cvq extract`: dataset shards back to the dataset's .npy files, all or nothing.

use super::{count, detail, files, note};
use crate::archive;
use crate::data::shard::{read_shard, read_shard_members};
use anyhow::{bail, ensure, Context, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Write every segment of `shards` into `dir` under its dataset name, each file whole. Every
/// target is checked before the first write (see `check`); the shards are then read a second
/// time rather than held, as a shard runs to gigabytes of tokens.
pub fn run(shards: &[PathBuf], dir: &Path, force: bool) -> Result<()> {
    files::output_dir(dir)?;
    check(shards, dir, force)?;
    let mut written = 0;
    for shard in shards {
        read_shard(shard, |seg| {
            let target = dir.join(&seg.name);
            files::write_output(&target, &seg.to_npy_bytes()?, force)?;
            detail(format_args!("{}: {}", target.display(), count(seg.frames(), "frame")));
            written += 1;
            Ok(())
        })
        .with_context(|| format!("{} written before this error", count(written, "segment")))?;
    }
    note(format_args!(
        "extracted {} from {} into {}",
        count(written, "segment"),
        count(shards.len(), "shard"),
        dir.display()
    ));
    Ok(())
}

/// Extract's checks, writing nothing: every shard is a shard and reads whole, no two members
/// name one file (the second would replace the first), and every file may be written.
fn check(shards: &[PathBuf], dir: &Path, force: bool) -> Result<()> {
    let mut named_by: HashMap<String, String> = HashMap::new();
    for shard in shards {
        let is_archive = files::head(shard, 4)?.is_some_and(|h| h == archive::MAGIC);
        ensure!(
            !is_archive,
            "{}: a cvq archive, not a dataset shard: restore its segments with `cvq decompress`",
            shard.display()
        );
        read_shard_members(shard, |json, seg| {
            let here = format!("{}: member {json}", shard.display());
            if let Some(first) = named_by.insert(seg.name.clone(), here.clone()) {
                bail!("{first} and {here} both name the file {:?}: nothing was extracted", seg.name);
            }
            files::check_output(&dir.join(&seg.name), force)
        })?;
    }
    Ok(())
}
