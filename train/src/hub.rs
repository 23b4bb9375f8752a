//! The commaVQ shards through hf-hub: `data-NNNN.tar.gz` files of a dataset repository,
//! looked up in the usual Hugging Face cache and downloaded when missing.

use anyhow::{bail, ensure, Context, Result};
use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};
use std::path::PathBuf;

/// Whether HF_HUB_OFFLINE asks for no network (hf-hub itself does not read it).
pub fn offline_from_env() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

/// Shard numbers from a list like `0-1,5`.
pub fn parse_shards(spec: &str) -> Result<Vec<usize>> {
    let mut out = vec![];
    for part in spec.split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (usize, usize) = (a.trim().parse()?, b.trim().parse()?);
        ensure!(a <= b, "bad shard range {part:?}");
        out.extend(a..=b);
    }
    Ok(out)
}

/// Local paths of the shards, from `cache_dir` (default: HF_HOME's hub cache), downloading
/// those missing unless `offline`.
pub fn shards(dataset: &str, numbers: &[usize], cache_dir: Option<PathBuf>, offline: bool) -> Result<Vec<PathBuf>> {
    let cache = cache_dir.map_or_else(Cache::from_env, Cache::new);
    let repo = Repo::new(dataset.to_string(), RepoType::Dataset);
    let mut api = None;
    numbers
        .iter()
        .map(|n| {
            let name = format!("data-{n:04}.tar.gz");
            if let Some(path) = cache.repo(repo.clone()).get(&name) {
                return Ok(path);
            }
            if offline {
                bail!("{dataset}/{name} is not in the cache at {} and HF_HUB_OFFLINE is set", cache.path().display());
            }
            if api.is_none() {
                api = Some(ApiBuilder::from_cache(cache.clone()).with_progress(true).build()?);
            }
            let api = api.as_ref().unwrap();
            api.repo(repo.clone()).get(&name).with_context(|| format!("cannot download {dataset}/{name}"))
        })
        .collect()
}
