//! `cvq synth`: segments sampled from the integer model with the coder's own tables, and the
//! exact information content of each: a data set whose entropy is known, on which a trainer
//! can be checked to converge (rates on real data are only ever measured on real tokens).

use super::files;
use crate::data::{Segment, TOKENS_PER_FRAME};
use crate::predict::{hex, transformer::Transformer, Learning, Model};
use anyhow::{ensure, Result};
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Arc;

pub struct Plan<'a> {
    pub segments: usize,
    pub frames: usize,
    pub seed: u64,
    pub dir: &'a Path,
    pub manifest: Option<&'a Path>,
    pub force: bool,
}

/// splitmix64: a tiny, well-mixed generator whose output is the same everywhere.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Segment `i`'s random source and dataset-style name (32 hex digits, `_`, a number).
fn source(seed: u64, i: usize) -> (u64, String) {
    let h = Sha256::new()
        .chain_update(b"cvq synth")
        .chain_update(seed.to_le_bytes())
        .chain_update((i as u64).to_le_bytes());
    let h = h.finalize();
    (u64::from_le_bytes(h[..8].try_into().expect("8 bytes")), format!("{}_{i}", hex(&h[16..32])))
}

/// Sample the plan's segments, write them into the directory and the manifest beside it.
pub fn run(t: &Arc<Transformer>, plan: &Plan) -> Result<()> {
    ensure!(plan.segments > 0 && plan.frames > 0, "--segments and --frames must be at least 1");
    if let Some(m) = plan.manifest {
        let parent = files::parent(m);
        let inside = match (plan.dir.canonicalize(), parent.canonicalize()) {
            (Ok(dir), Ok(parent)) => parent.starts_with(dir),
            _ => false,
        };
        ensure!(
            !inside,
            "{}: keep the manifest outside {} so that the directory holds segments only",
            m.display(),
            plan.dir.display()
        );
        files::check_output(m, plan.force)?;
    }
    // Every target is checked before any sampling, so a refusal leaves nothing half-written.
    files::output_dir(plan.dir)?;
    for i in 0..plan.segments {
        files::check_output(&plan.dir.join(source(plan.seed, i).1), plan.force)?;
    }
    let model = Model::Neural(Arc::clone(t), Learning::Frozen);
    let tokens = plan.frames * TOKENS_PER_FRAME;
    let bar = super::progress(plan.segments, "synth");
    let indices: Vec<usize> = (0..plan.segments).collect();
    let rows = indices
        .par_chunks(model.batch_size())
        .map(|chunk| {
            let (mut states, names): (Vec<u64>, Vec<String>) = chunk.iter().map(|&i| source(plan.seed, i)).unzip();
            let mut rngs: Vec<_> = states.iter_mut().map(|s| move || splitmix(s)).collect();
            let sampled = crate::code::sample(&mut model.batch(&vec![tokens; chunk.len()]), tokens, &mut rngs);
            let mut rows = vec![];
            for (name, (toks, bits)) in names.into_iter().zip(sampled) {
                let seg = Segment::int16(&name, toks);
                files::write_output(&plan.dir.join(&name), &seg.to_npy_bytes()?, plan.force)?;
                rows.push(serde_json::json!({ "name": name, "tokens": tokens, "bits": bits }));
            }
            bar.inc(chunk.len() as u64);
            Ok(rows)
        })
        .collect::<Result<Vec<_>>>()?
        .concat();
    bar.finish_and_clear();
    let total: f64 = rows.iter().map(|r| r["bits"].as_f64().expect("written above")).sum();
    let per_token = total / (tokens * plan.segments) as f64;
    if let Some(m) = plan.manifest {
        let manifest = serde_json::json!({
            "weights": hex(&t.hash),
            "seed": plan.seed,
            "frames": plan.frames,
            "bits_per_token": per_token,
            "segments": rows,
        });
        files::write_output(m, serde_json::to_string_pretty(&manifest)?.as_bytes(), plan.force)?;
    }
    super::note(format_args!(
        "sampled {} of {} into {}: {per_token:.4} bits/token of information",
        super::count(plan.segments, "segment"),
        super::count(plan.frames, "frame"),
        plan.dir.display()
    ));
    Ok(())
}
