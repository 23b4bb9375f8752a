//! `cvq synth`: segments of a known generator and the exact information content of each: a
//! data set whose entropy is known, on which a trainer can be checked to converge (rates on
//! real data are only ever measured on real tokens). The generator is the integer model,
//! sampled with the coder's own tables, or moving noise (`data::synthetic::motion`), which a
//! network can only learn with attention that learns where to look.

use super::files;
use crate::data::synthetic::{splitmix, Motion, MOTION_SHIFT};
use crate::data::{Segment, TOKENS_PER_FRAME};
use crate::predict::{hex, transformer::Transformer, Learning, Model};
use anyhow::{ensure, Result};
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Arc;

pub enum Generator {
    /// Sampled from the network.
    Neural(Arc<Transformer>),
    /// Moving noise.
    Motion(Motion),
}

pub struct Plan<'a> {
    pub generator: Generator,
    pub segments: usize,
    pub frames: usize,
    pub seed: u64,
    pub dir: &'a Path,
    pub manifest: Option<&'a Path>,
    pub force: bool,
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
pub fn run(plan: &Plan) -> Result<()> {
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
    let tokens = plan.frames * TOKENS_PER_FRAME;
    let bar = super::progress(plan.segments, "synth");
    let write = |name: String, toks: Vec<u16>, bits: f64, extra: serde_json::Value| -> Result<serde_json::Value> {
        let seg = Segment::int16(&name, toks);
        files::write_output(&plan.dir.join(&name), &seg.to_npy_bytes()?, plan.force)?;
        let mut row = serde_json::json!({ "name": name, "tokens": tokens, "bits": bits });
        if let (Some(row), serde_json::Value::Object(extra)) = (row.as_object_mut(), extra) {
            row.extend(extra);
        }
        Ok(row)
    };
    let indices: Vec<usize> = (0..plan.segments).collect();
    let rows = match &plan.generator {
        Generator::Neural(t) => {
            let model = Model::Neural(Arc::clone(t), Learning::Frozen);
            indices
                .par_chunks(model.batch_size())
                .map(|chunk| {
                    let (mut states, names): (Vec<u64>, Vec<String>) =
                        chunk.iter().map(|&i| source(plan.seed, i)).unzip();
                    let mut rngs: Vec<_> = states.iter_mut().map(|s| move || splitmix(s)).collect();
                    let sampled = crate::code::sample(&mut model.batch(&vec![tokens; chunk.len()]), tokens, &mut rngs);
                    let rows = names
                        .into_iter()
                        .zip(sampled)
                        .map(|(name, (toks, bits))| write(name, toks, bits, serde_json::json!({})))
                        .collect::<Result<Vec<_>>>();
                    bar.inc(chunk.len() as u64);
                    rows
                })
                .collect::<Result<Vec<_>>>()?
                .concat()
        }
        Generator::Motion(motion) => indices
            .par_iter()
            .map(|&i| {
                let (mut state, name) = source(plan.seed, i);
                let (seg, offset, bits) = motion.segment(&name, plan.frames, &mut || splitmix(&mut state));
                let row = write(name, seg.tokens, bits, serde_json::json!({ "offset": [offset.0, offset.1] }));
                bar.inc(1);
                row
            })
            .collect::<Result<Vec<_>>>()?,
    };
    bar.finish_and_clear();
    let total: f64 = rows.iter().map(|r| r["bits"].as_f64().expect("written above")).sum();
    let per_token = total / (tokens * plan.segments) as f64;
    if let Some(m) = plan.manifest {
        let generator = match &plan.generator {
            Generator::Neural(t) => serde_json::json!({ "generator": "neural", "weights": hex(&t.hash) }),
            Generator::Motion(m) => serde_json::json!({
                "generator": "motion",
                "noise": m.noise(),
                "alphabet": m.alphabet,
                "shift": m.shift.map_or(
                    serde_json::json!(format!("drawn per segment, up to {MOTION_SHIFT}")),
                    |s| serde_json::json!([s.0, s.1])
                ),
            }),
        };
        let mut manifest = serde_json::json!({
            "seed": plan.seed,
            "frames": plan.frames,
            "bits_per_token": per_token,
            "segments": rows,
        });
        if let (Some(m), serde_json::Value::Object(g)) = (manifest.as_object_mut(), generator) {
            m.extend(g);
        }
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
