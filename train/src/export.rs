//! Export: the trained float model rounded to the runtime's int8 safetensors weights.

use crate::model::{Gpt, Matrix};
use anyhow::Result;
use candle_core::Tensor;
use cvq::model::weights::{Layer, Linear};
use cvq::model::Weights;

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
