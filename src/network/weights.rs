//! Int8 weights in safetensors: each matrix `NAME` is int8 `[out, in]` with an f32 scale
//! per output row in `NAME.scale`; gains and biases are f32. The spec is in the metadata.

use super::spec::{Kind, ModelSpec, MAX_ROW_SCALE};
use crate::data::synthetic::XorShift;
use anyhow::{bail, ensure, Context, Result};
use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::Path;

/// An int8 matrix `[rows, cols]` (rows = outputs) with one scale per row.
#[derive(Clone, Debug, PartialEq)]
pub struct Linear {
    pub rows: usize,
    pub cols: usize,
    pub w: Vec<i8>,
    pub scale: Vec<f32>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Layer {
    pub norm1: Vec<f32>,
    pub qkv: Linear,
    pub frame_bias: Vec<f32>,
    pub out: Linear,
    pub norm2: Vec<f32>,
    pub up: Linear,
    pub down: Linear,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Weights {
    pub spec: ModelSpec,
    pub tok_prev: Linear,
    pub tok_same: Linear,
    pub pos: Linear,
    pub layers: Vec<Layer>,
    pub norm_out: Vec<f32>,
    pub head_bias: Vec<f32>,
    /// The model id archives record: SHA-256 of the canonical encoding of the spec and every
    /// tensor (FORMAT.md, section 4), not of the file, so any equal weights get the same id.
    pub hash: [u8; 32],
}

enum Value {
    Linear(Linear),
    F32(Vec<f32>),
}

/// A tensor of `Weights`, borrowed.
enum ValueRef<'a> {
    Linear(&'a Linear),
    F32(&'a [f32]),
}

/// Tensors read in the order of `ModelSpec::tensors`, taken one by one as fields.
struct InOrder(std::vec::IntoIter<Value>);

impl InOrder {
    fn linear(&mut self) -> Linear {
        match self.0.next() {
            Some(Value::Linear(l)) => l,
            _ => unreachable!("the spec lists a matrix here"),
        }
    }

    fn f32(&mut self) -> Vec<f32> {
        match self.0.next() {
            Some(Value::F32(v)) => v,
            _ => unreachable!("the spec lists f32 values here"),
        }
    }
}

impl Weights {
    pub fn load(path: &Path) -> Result<Weights> {
        let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
        Weights::from_bytes(&bytes).with_context(|| format!("{}: not valid cvq weights", path.display()))
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Weights> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| anyhow::anyhow!("not a safetensors file: {e}"))?;
        let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
        let spec = ModelSpec::from_metadata(meta.metadata().as_ref().context("no metadata (the model spec)")?)?;
        let expected = spec.tensors();
        let values = expected
            .iter()
            .map(|(name, shape, kind)| match kind {
                Kind::Int8Rows => read_linear(&st, name, shape).map(Value::Linear),
                Kind::F32 => read_f32(&st, name, shape).map(Value::F32),
            })
            .collect::<Result<Vec<_>>>()?;
        let hash = model_id(&spec, &st);
        let known = expected.len() + expected.iter().filter(|t| t.2 == Kind::Int8Rows).count();
        if st.len() != known {
            let names: Vec<&str> = expected.iter().map(|t| t.0.as_str()).collect();
            let extra: Vec<String> = st
                .names()
                .into_iter()
                .filter(|n| !names.contains(&n.trim_end_matches(".scale")))
                .map(String::from)
                .collect();
            bail!("unexpected tensors for this spec: {extra:?}");
        }
        // The fields in the order of `spec.tensors()`, the one list of names (as `values` lists them).
        let mut next = InOrder(values.into_iter());
        let (tok_prev, tok_same, pos) = (next.linear(), next.linear(), next.linear());
        let layers = (0..spec.layers)
            .map(|_| Layer {
                norm1: next.f32(),
                qkv: next.linear(),
                frame_bias: next.f32(),
                out: next.linear(),
                norm2: next.f32(),
                up: next.linear(),
                down: next.linear(),
            })
            .collect();
        Ok(Weights { spec, tok_prev, tok_same, pos, layers, norm_out: next.f32(), head_bias: next.f32(), hash })
    }

    /// Every tensor, in the order of `ModelSpec::tensors`, which names them.
    fn values(&self) -> Vec<ValueRef<'_>> {
        use ValueRef::{Linear as L, F32};
        let mut v = vec![L(&self.tok_prev), L(&self.tok_same), L(&self.pos)];
        for l in &self.layers {
            v.extend([F32(&l.norm1), L(&l.qkv), F32(&l.frame_bias), L(&l.out), F32(&l.norm2), L(&l.up), L(&l.down)]);
        }
        v.extend([F32(&self.norm_out), F32(&self.head_bias)]);
        v
    }

    /// The safetensors bytes of these weights.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = vec![];
        // Names for the layers held (tests write weights whose spec disagrees with them).
        let held = ModelSpec { layers: self.layers.len(), ..self.spec };
        for ((name, shape, _), value) in held.tensors().into_iter().zip(self.values()) {
            match value {
                ValueRef::Linear(l) => {
                    owned.push((format!("{name}.scale"), Dtype::F32, vec![l.rows], f32_bytes(&l.scale)));
                    owned.push((name, Dtype::I8, vec![l.rows, l.cols], l.w.iter().map(|&x| x as u8).collect()));
                }
                ValueRef::F32(v) => {
                    // The spec's shape, or flat where the values do not fill it.
                    let shape = if shape.iter().product::<usize>() == v.len() { shape } else { vec![v.len()] };
                    owned.push((name, Dtype::F32, shape, f32_bytes(v)))
                }
            }
        }
        let views = owned
            .iter()
            .map(|(n, dt, shape, data)| Ok((n.clone(), TensorView::new(*dt, shape.clone(), data)?)))
            .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
        with_sorted_metadata(&safetensors::serialize(views, None)?, &self.spec.to_metadata())
    }

    /// A seeded random model, for tests and benchmarks: weights ~ uniform int8, scales such
    /// that activations keep a unit-ish scale. Same seed, same bytes, on every machine.
    pub fn random(spec: ModelSpec, seed: u64) -> Result<Weights> {
        spec.validate()?;
        let mut rng = XorShift::new(seed);
        let mut linear = |rows: usize, cols: usize, gain: f32| Linear {
            rows,
            cols,
            w: (0..rows * cols).map(|_| ((rng.next() % 255) as i32 - 127) as i8).collect(),
            // Uniform int8 has standard deviation ~73; aim each output at `gain`.
            scale: vec![gain / (73.0 * (cols as f32).sqrt()); rows],
        };
        let (d, m, k) = (spec.width, spec.mlp_width, spec.context_frames);
        let embed = |l: &mut dyn FnMut(usize, usize, f32) -> Linear, rows| {
            let mut e = l(rows, d, 1.0);
            // Unit-norm rows: tied output logits then span a few nats, as a trained model's do.
            e.scale = vec![1.0 / (73.0 * (d as f32).sqrt()); rows];
            e
        };
        let tok_prev = embed(&mut linear, super::spec::INPUT_VOCAB);
        let tok_same = embed(&mut linear, super::spec::INPUT_VOCAB);
        let pos = embed(&mut linear, crate::data::TOKENS_PER_FRAME);
        let layers = (0..spec.layers)
            .map(|_| Layer {
                norm1: vec![1.0; d],
                qkv: linear(spec.qkv_rows(), d, 1.0),
                frame_bias: (0..spec.heads * (k + 1)).map(|i| -((i % (k + 1)) as f32) * 0.5).collect(),
                out: linear(d, d, 0.5),
                norm2: vec![1.0; d],
                up: linear(m, d, 1.0),
                down: linear(d, m, 0.5),
            })
            .collect();
        let w = Weights {
            spec,
            tok_prev,
            tok_same,
            pos,
            layers,
            norm_out: vec![1.0; d],
            head_bias: (0..crate::data::VOCAB).map(|i| (i % 7) as f32 * 0.1).collect(),
            hash: [0; 32],
        };
        // Round-trip through the file format so the hash is computed as for a loaded file.
        Weights::from_bytes(&w.to_bytes()?)
    }
}

/// The tensors of the spec in id order: each matrix followed by its scales.
fn id_tensor_names(spec: &ModelSpec) -> Vec<String> {
    let mut names = vec![];
    for (name, _, kind) in spec.tensors() {
        if kind == Kind::Int8Rows {
            names.push(name.clone());
            names.push(format!("{name}.scale"));
        } else {
            names.push(name);
        }
    }
    names
}

/// SHA-256 of the canonical encoding of FORMAT.md section 4: the format tag, the spec's
/// fields (five, or eight in the second format), then each tensor's name, dtype, shape and bytes. Only fixed-width little-endian
/// integers and length-prefixed strings, so any implementation can recompute it. `st` must
/// hold every tensor of the spec (`from_bytes` checked that).
fn model_id(spec: &ModelSpec, st: &SafeTensors) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let string = |h: &mut Sha256, s: &str| {
        h.update((s.len() as u32).to_le_bytes());
        h.update(s.as_bytes());
    };
    let int = |h: &mut Sha256, v: usize| h.update((v as u64).to_le_bytes());
    string(&mut h, spec.format());
    for (_, v) in spec.fields() {
        int(&mut h, v);
    }
    let names = id_tensor_names(spec);
    int(&mut h, names.len());
    for name in &names {
        let t = st.tensor(name).expect("from_bytes checked every tensor");
        string(&mut h, name);
        string(&mut h, if t.dtype() == Dtype::I8 { "I8" } else { "F32" });
        int(&mut h, t.shape().len());
        t.shape().iter().for_each(|&d| int(&mut h, d));
        int(&mut h, t.data().len());
        h.update(t.data());
    }
    h.finalize().into()
}

/// safetensors writes its metadata from a HashMap, in an order that changes from run to run:
/// put it into `bare` (serialized without metadata) first, keys sorted, so equal weights
/// always make equal files. Tensor offsets count from the data, so they stay valid.
fn with_sorted_metadata(bare: &[u8], meta: &HashMap<String, String>) -> Result<Vec<u8>> {
    let n = u64::from_le_bytes(bare[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bare[8..8 + n])?.trim_end();
    let tensors = header.strip_prefix('{').context("safetensors header is not a JSON object")?;
    let sorted: std::collections::BTreeMap<&String, &String> = meta.iter().collect();
    let mut json = format!("{{\"__metadata__\":{},{tensors}", serde_json::to_string(&sorted)?).into_bytes();
    // The data must start 8-byte aligned, as safetensors pads it.
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend(json);
    out.extend_from_slice(&bare[8 + n..]);
    Ok(out)
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn view<'a>(st: &SafeTensors<'a>, name: &str, dtype: Dtype, shape: &[usize]) -> Result<TensorView<'a>> {
    let t = st.tensor(name).map_err(|_| anyhow::anyhow!("missing tensor {name:?}"))?;
    ensure!(t.dtype() == dtype, "tensor {name:?} is {:?}, expected {dtype:?}", t.dtype());
    ensure!(t.shape() == shape, "tensor {name:?} has shape {:?}, expected {shape:?}", t.shape());
    Ok(t)
}

fn read_f32(st: &SafeTensors, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
    let v: Vec<f32> = view(st, name, Dtype::F32, shape)?
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    ensure!(v.iter().all(|x| x.is_finite()), "tensor {name:?} holds a non-finite value");
    Ok(v)
}

fn read_linear(st: &SafeTensors, name: &str, shape: &[usize]) -> Result<Linear> {
    let w = view(st, name, Dtype::I8, shape)?.data().iter().map(|&b| b as i8).collect();
    let scale = read_f32(st, &format!("{name}.scale"), &shape[..1])?;
    if let Some(s) = scale.iter().find(|&&s| !(0.0..=MAX_ROW_SCALE).contains(&s)) {
        bail!("tensor {name:?}.scale holds {s}, outside 0..={MAX_ROW_SCALE} (the limit that keeps the integer rescale within i64)");
    }
    Ok(Linear { rows: shape[0], cols: shape[1], w, scale })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file holds each field under the name FORMAT.md gives it: every tensor made
    /// distinct, written, and read back by name.
    #[test]
    fn each_tensor_is_written_under_its_own_name() {
        let spec = ModelSpec::new(2, 16, 2, 1, 32);
        let mut w = Weights::random(spec, 3).unwrap();
        for (i, l) in w.layers.iter_mut().enumerate() {
            let i = i as f32;
            (l.norm1, l.norm2) = (vec![1.0 + i; 16], vec![2.0 + i; 16]);
            l.frame_bias = vec![3.0 + i; 4];
            (l.qkv.scale[0], l.out.scale[0], l.up.scale[0], l.down.scale[0]) = (4.0 + i, 5.0 + i, 6.0 + i, 7.0 + i);
        }
        (w.tok_prev.scale[0], w.tok_same.scale[0], w.pos.scale[0]) = (8.0, 9.0, 10.0);
        (w.norm_out, w.head_bias[0]) = (vec![11.0; 16], 12.0);
        let bytes = w.to_bytes().unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let first = |name: &str| f32::from_le_bytes(st.tensor(name).unwrap().data()[..4].try_into().unwrap());
        for l in 0..2 {
            let i = l as f32;
            for (name, v) in [
                ("norm1.gain", 1.0),
                ("norm2.gain", 2.0),
                ("attn.frame_bias", 3.0),
                ("attn.qkv.scale", 4.0),
                ("attn.out.scale", 5.0),
                ("mlp.up.scale", 6.0),
                ("mlp.down.scale", 7.0),
            ] {
                assert_eq!(first(&format!("layers.{l}.{name}")), v + i, "layers.{l}.{name}");
            }
        }
        for (name, v) in [
            ("tok_prev.scale", 8.0),
            ("tok_same.scale", 9.0),
            ("pos.scale", 10.0),
            ("norm_out.gain", 11.0),
            ("head_bias", 12.0),
        ] {
            assert_eq!(first(name), v, "{name}");
        }
        assert_eq!(
            st.tensor("layers.1.mlp.down").unwrap().data(),
            w.layers[1].down.w.iter().map(|&x| x as u8).collect::<Vec<_>>()
        );
        assert_eq!(Weights::from_bytes(&bytes).unwrap().layers, w.layers, "read back field by field");
    }
}
