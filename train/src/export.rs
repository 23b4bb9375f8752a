//! Export: the trained float model rounded to the runtime's int8 safetensors weights; and
//! back (`import`), for measurements on an exported model in float.

use crate::model::{Gpt, Matrix};
use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use cvq::network::spec::Kind;
use cvq::network::weights::{Layer, Linear};
use cvq::network::Weights;
use safetensors::SafeTensors;
use std::path::Path;

/// Round a matrix to int8 with one scale per row (`max |row| / 127`), rows `[..fold_rows]`
/// first multiplied by `fold` (the query rows take the attention's 1/sqrt(head_dim)).
fn linear(m: &Matrix, fold_rows: usize, fold: f32) -> Result<Linear> {
    let rows: Vec<Vec<f32>> = m.w.to_dtype(candle_core::DType::F32)?.to_vec2()?;
    let (n, cols) = (rows.len(), rows[0].len());
    let mut w = Vec::with_capacity(n * cols);
    let mut scale = Vec::with_capacity(n);
    for (r, row) in rows.iter().enumerate() {
        let f = if r < fold_rows { fold } else { 1.0 };
        let max = row.iter().fold(0f32, |a, &v| a.max((v * f).abs()));
        let s = if max > 0.0 { max / 127.0 } else { 1.0 };
        w.extend(row.iter().map(|&v| (v * f / s).round().clamp(-127.0, 127.0) as i8));
        scale.push(s);
    }
    Ok(Linear { rows: n, cols, w, scale })
}

fn vec1(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1()?)
}

pub fn export(model: &Gpt) -> Result<Weights> {
    let s = model.spec;
    let fold = 1.0 / (s.head_dim() as f32).sqrt();
    let layers = model
        .layers
        .iter()
        .map(|l| {
            Ok(Layer {
                norm1: vec1(&l.norm1)?,
                qkv: linear(&l.qkv, s.width, fold)?,
                frame_bias: vec1(&l.frame_bias)?,
                out: linear(&l.out, 0, 1.0)?,
                norm2: vec1(&l.norm2)?,
                up: linear(&l.up, 0, 1.0)?,
                down: linear(&l.down, 0, 1.0)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let w = Weights {
        spec: s,
        tok_prev: linear(&model.tok_prev, 0, 1.0)?,
        tok_same: linear(&model.tok_same, 0, 1.0)?,
        pos: linear(&model.pos, 0, 1.0)?,
        layers,
        norm_out: vec1(&model.norm_out)?,
        head_bias: vec1(&model.head_bias)?,
        hash: [0; 32],
    };
    // Through the file format, so the hash is the one a loaded file gets.
    Weights::from_bytes(&w.to_bytes()?)
}

/// An int8 weights file as a float model (f32) with its parameters in `vm`: int8 matrices
/// times their row scales, the query rows without the 1/sqrt(head_dim) that export folded
/// into them.
pub fn import(path: &Path, vm: &VarMap, device: &Device) -> Result<Gpt> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let w = Weights::from_bytes(&bytes).with_context(|| format!("{}: not valid cvq weights", path.display()))?;
    let st = SafeTensors::deserialize(&bytes)?;
    let f32s = |name: &str| -> Result<Vec<f32>> {
        let data = st.tensor(name)?.data().to_vec();
        Ok(data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
    };
    let model = Gpt::new(w.spec, vm, device, 0, DType::F32)?;
    let vars = Gpt::vars(vm);
    let unfold = (w.spec.head_dim() as f32).sqrt();
    for (name, shape, kind) in w.spec.tensors() {
        let values: Vec<f32> = match kind {
            Kind::F32 => f32s(&name)?,
            Kind::Int8Rows => {
                let (scales, cols) = (f32s(&format!("{name}.scale"))?, shape[1]);
                let folded = if name.ends_with("attn.qkv") { w.spec.width } else { 0 };
                let rows = st.tensor(&name)?.data().chunks_exact(cols).zip(scales).enumerate();
                rows.flat_map(|(r, (row, s))| {
                    let s = if r < folded { s * unfold } else { s };
                    row.iter().map(move |&v| f32::from(v as i8) * s)
                })
                .collect()
            }
        };
        let var = &vars.iter().find(|(n, _)| *n == name).with_context(|| format!("no parameter {name}"))?.1;
        var.set(&Tensor::from_vec(values, var.shape(), device)?)?;
    }
    Ok(model)
}
