//! Checkpoints: everything a run needs to continue exactly as if it had never stopped, in one
//! safetensors file written atomically (`DIR/checkpoint.safetensors`): the parameters, the
//! AdamW moments and step count, the training step and tokens seen, and the data stream's
//! position, generator, shuffle buffer and the batches it had made but not yet trained on.

use crate::data::Window;
use crate::optim::AdamW;
use crate::stream::{Position, Stream};
use anyhow::{bail, ensure, Context, Result};
use candle_core::{Tensor, Var};
use cvq::network::ModelSpec;
use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use serde_json::json;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The optimisation's state: steps taken, tokens scored, the optimizer (which holds the
/// parameters).
pub struct State {
    pub step: usize,
    pub tokens: u64,
    pub opt: AdamW,
}

/// Where the data stands: the stream, and the batches it made that were not trained on yet.
pub struct Data {
    pub stream: Stream,
    pub queued: Vec<Vec<Window>>,
}

const FORMAT: &str = "cvq-train checkpoint 2";
const META: &str = "cvq-train";

pub fn path(dir: &Path) -> PathBuf {
    dir.join("checkpoint.safetensors")
}

fn f32_bytes(v: &Var) -> Result<(Vec<usize>, Vec<u8>)> {
    let t = v.as_tensor().to_dtype(candle_core::DType::F32)?;
    Ok((t.dims().to_vec(), t.flatten_all()?.to_vec1::<f32>()?.iter().flat_map(|x| x.to_le_bytes()).collect()))
}

/// The windows of the queued batches, the partial batch and the buffer, in that order.
fn windows(d: &Data) -> impl Iterator<Item = &Window> {
    d.queued.iter().flatten().chain(&d.stream.partial).chain(&d.stream.buffer)
}

/// Write the checkpoint (to a temporary file, then renamed over the last one).
pub fn save(dir: &Path, spec: &ModelSpec, s: &State, d: &Data) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create checkpoint directory", dir.display()))?;
    let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = vec![];
    for (i, (name, var)) in s.opt.vars.iter().enumerate() {
        for (prefix, v) in [("param", var), ("adam_m", &s.opt.m[i]), ("adam_v", &s.opt.v[i])] {
            let (shape, bytes) = f32_bytes(v)?;
            owned.push((format!("{prefix}/{name}"), Dtype::F32, shape, bytes));
        }
    }
    let ws: Vec<&Window> = windows(d).collect();
    let tokens: Vec<u8> = ws.iter().flat_map(|w| w.tokens.iter().flat_map(|t| t.to_le_bytes())).collect();
    let lengths: Vec<u8> = ws.iter().flat_map(|w| (w.tokens.len() as u32).to_le_bytes()).collect();
    let score_from: Vec<u8> = ws.iter().flat_map(|w| (w.score_from as u32).to_le_bytes()).collect();
    owned.push(("windows/tokens".into(), Dtype::U16, vec![tokens.len() / 2], tokens));
    owned.push(("windows/lengths".into(), Dtype::U32, vec![ws.len()], lengths));
    owned.push(("windows/score_from".into(), Dtype::U32, vec![ws.len()], score_from));
    owned.push(("windows/lead".into(), Dtype::U8, vec![ws.len()], ws.iter().map(|w| u8::from(w.lead)).collect()));
    let meta = json!({
        "format": FORMAT,
        "spec": spec.to_metadata().into_iter().collect::<std::collections::BTreeMap<_, _>>(),
        "step": s.step,
        "tokens": s.tokens,
        "adam_t": s.opt.t,
        "epoch": d.stream.pos.epoch,
        "source": d.stream.pos.source,
        "segment": d.stream.pos.segment,
        "rng": d.stream.rng.0.to_string(),
        "frames": d.stream.frames,
        "batch": d.stream.batch,
        "queued": d.queued.iter().map(Vec::len).collect::<Vec<_>>(),
        "partial": d.stream.partial.len(),
    });
    let views = owned
        .iter()
        .map(|(n, d, shape, b)| Ok((n.clone(), TensorView::new(*d, shape.clone(), b)?)))
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(views, Some(HashMap::from([(META.to_string(), meta.to_string())])))?;
    let (target, tmp) = (path(dir), dir.join("checkpoint.safetensors.tmp"));
    let mut f = std::fs::File::create(&tmp).with_context(|| format!("{}: cannot write checkpoint", tmp.display()))?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &target).with_context(|| format!("{}: cannot write checkpoint", target.display()))?;
    Ok(())
}

/// Load the checkpoint in `dir` into `s` and `d`, fresh ones of the same run's settings.
pub fn load(dir: &Path, spec: &ModelSpec, s: &mut State, d: &mut Data) -> Result<()> {
    let file = path(dir);
    let bytes = std::fs::read(&file).with_context(|| format!("{}: no checkpoint to resume", file.display()))?;
    restore(&bytes, spec, s, d).with_context(|| format!("{}: cannot resume from it", file.display()))
}

fn restore(bytes: &[u8], spec: &ModelSpec, s: &mut State, d: &mut Data) -> Result<()> {
    let st = SafeTensors::deserialize(bytes)?;
    let (_, header) = SafeTensors::read_metadata(bytes)?;
    let meta = header.metadata().as_ref().and_then(|m| m.get(META)).context("not a cvq-train checkpoint")?;
    let meta: serde_json::Value = serde_json::from_str(meta)?;
    ensure!(meta["format"] == FORMAT, "written by another version of cvq-train ({})", meta["format"]);
    let saved = ModelSpec::from_metadata(&serde_json::from_value(meta["spec"].clone())?)?;
    ensure!(saved == *spec, "it holds a model {saved:?}, this run trains {spec:?}");
    for key in ["frames", "batch"] {
        let now = if key == "frames" { d.stream.frames } else { d.stream.batch };
        ensure!(meta[key] == now, "it was written with --{key} {}, this run has {now}", meta[key]);
    }
    let device = s.opt.vars[0].1.device().clone();
    for (i, (name, var)) in s.opt.vars.iter().enumerate() {
        for (prefix, v) in [("param", var), ("adam_m", &s.opt.m[i]), ("adam_v", &s.opt.v[i])] {
            let t = st.tensor(&format!("{prefix}/{name}"))?;
            ensure!(t.dtype() == Dtype::F32 && t.shape() == v.dims(), "{prefix}/{name}: wrong type or shape");
            let values: Vec<f32> =
                t.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
            v.set(&Tensor::from_vec(values, v.dims(), &device)?)?;
        }
    }
    let number = |key: &str| meta[key].as_u64().with_context(|| format!("no {key}"));
    s.step = number("step")? as usize;
    s.tokens = number("tokens")?;
    s.opt.t = number("adam_t")? as usize;
    d.stream.pos =
        Position { epoch: number("epoch")?, source: number("source")? as usize, segment: number("segment")? as usize };
    d.stream.rng.0 = meta["rng"].as_str().context("no rng")?.parse()?;
    let mut ws = read_windows(&st)?.into_iter();
    let sizes: Vec<usize> = serde_json::from_value(meta["queued"].clone())?;
    d.queued = sizes.iter().map(|&n| ws.by_ref().take(n).collect()).collect();
    d.stream.partial = ws.by_ref().take(number("partial")? as usize).collect();
    d.stream.buffer = ws.collect();
    Ok(())
}

fn read_windows(st: &SafeTensors) -> Result<Vec<Window>> {
    let u32s = |name: &str| -> Result<Vec<usize>> {
        Ok(st
            .tensor(name)?
            .data()
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()) as usize)
            .collect())
    };
    let (lengths, score_from) = (u32s("windows/lengths")?, u32s("windows/score_from")?);
    let lead = st.tensor("windows/lead")?;
    let tokens: Vec<u16> =
        st.tensor("windows/tokens")?.data().chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect();
    if lengths.iter().sum::<usize>() != tokens.len() || score_from.len() != lengths.len() {
        bail!("its stored windows are inconsistent");
    }
    let mut at = 0;
    Ok(lengths
        .iter()
        .zip(&score_from)
        .zip(lead.data())
        .map(|((&n, &score_from), &lead)| {
            at += n;
            Window { tokens: tokens[at - n..at].to_vec(), lead: lead != 0, score_from }
        })
        .collect())
}
