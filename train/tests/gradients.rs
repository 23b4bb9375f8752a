//! The trainer's gradients: every parameter gets one, and each equals the loss's slope
//! measured by central finite differences in f64. A loss that goes down proves little: until
//! these checks, the attention (queries, keys, frame bias) trained with no gradient at all.

#[path = "../../tests/common/real_data.rs"]
mod real_data;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use cvq::data::{read_segment_file, TOKENS_PER_FRAME};
use cvq::network::ModelSpec;
use cvq_train::data::{tile, Batch, HostBatch, Rng};
use cvq_train::model::{Gpt, Matrix};
use cvq_train::optim::AdamW;
use real_data::real_data;

/// Two layers, so that gradients cross a layer boundary; K = 2 so that frame offsets 0, 1, 2
/// each get a bias.
const SMALL: ModelSpec = ModelSpec::new(2, 16, 2, 2, 32);
/// The same with the options that read less: both heads share one key/value head, and a
/// query reaches 1 row and 2 columns around its place in earlier frames.
const OPTIONS: ModelSpec = ModelSpec { kv_heads: 1, reach_rows: 1, reach_cols: 2, ..SMALL };
/// Frames scored per window (each also holds its K context frames).
const FRAMES: usize = 2;

/// Two windows of the real clip, each with its lead frame (as the stream cuts them).
fn batch(device: &Device) -> Batch {
    let clip = read_segment_file(&real_data("clip.npy")).unwrap();
    let frames = SMALL.context_frames + FRAMES;
    let windows = tile(&clip.tokens[..40 * TOKENS_PER_FRAME], frames, SMALL.context_frames, 0);
    HostBatch::new(&windows[3..5], frames).to_device(device).unwrap()
}

/// A model of type `dtype` with its parameters spread (`Gpt::spread`) so that attention is far
/// from uniform and every path carries signal.
fn model(spec: ModelSpec, dtype: DType) -> (VarMap, Gpt) {
    let vm = VarMap::new();
    let gpt = Gpt::new(spec, &vm, &Device::Cpu, 3, dtype).unwrap();
    Gpt::spread(&vm, 11).unwrap();
    (vm, gpt)
}

fn loss(gpt: &Gpt, b: &Batch, fake_quant: bool) -> f64 {
    gpt.loss(b, fake_quant, gpt.dtype()).unwrap().to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

fn values(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1().unwrap()
}

/// Each parameter's gradient by backprop, flattened, in `Gpt::vars` order.
fn backprop(vm: &VarMap, gpt: &Gpt, b: &Batch, fake_quant: bool) -> Vec<(String, Vec<f64>)> {
    let grads = gpt.loss(b, fake_quant, gpt.dtype()).unwrap().backward().unwrap();
    Gpt::vars(vm)
        .into_iter()
        .map(|(name, var)| {
            let g = grads.get(&var).map_or_else(|| vec![0.0; var.elem_count()], values);
            (name, g)
        })
        .collect()
}

/// The loss's slope along one entry of `var`, by central differences.
fn finite_difference(gpt: &Gpt, b: &Batch, var: &Var, entry: usize, eps: f64) -> f64 {
    let original = var.as_tensor().copy().unwrap();
    let at = |delta: f64| {
        let mut v = values(&original);
        v[entry] += delta;
        var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap()).unwrap();
        loss(gpt, b, false)
    };
    let slope = (at(eps) - at(-eps)) / (2.0 * eps);
    var.set(&original).unwrap();
    slope
}

/// Entries to probe in a tensor: for `attn.qkv` rows of the queries, the keys and the values;
/// for embeddings rows the batch uses; every frame bias; elsewhere spread entries.
fn samples(spec: &ModelSpec, name: &str, dims: &[usize], b: &Batch, rng: &mut Rng) -> Vec<usize> {
    let cols = if dims.len() == 2 { dims[1] } else { 1 };
    let rows = dims[0];
    let ids = |t: &Tensor| -> Vec<u32> { t.flatten_all().unwrap().to_vec1().unwrap() };
    let row_choices: Vec<usize> = match name {
        "tok_prev" => ids(&b.prev).iter().step_by(97).take(4).map(|&r| r as usize).collect(),
        "tok_same" => ids(&b.same).iter().step_by(89).take(3).map(|&r| r as usize).chain([1024, 7]).collect(),
        "pos" => vec![0, 17, 127],
        n if n.ends_with("attn.qkv") => {
            let (d, kv) = (spec.width, spec.kv_heads * spec.head_dim());
            vec![1, d / 2 + 3, d + 2, d + kv - 1, d + kv + 4, rows - 1]
        }
        n if n.ends_with("frame_bias") => return (0..rows * cols).collect(),
        _ => (0..4).map(|_| rng.below(rows)).collect(),
    };
    row_choices.into_iter().map(|r| r * cols + rng.below(cols)).collect()
}

/// Central differences with eps = 1e-5 in f64 carry an error near 1e-9 (the truncation term
/// eps^2 f'''/6 and the loss's rounding, ~1e-14 / eps); candle's GELU backward uses 6-digit
/// constants (0.797885 for sqrt(2/pi), 0.398942, ...), which put a relative error up to ~1e-6
/// into every gradient below an MLP. A tolerance of 1e-7 + 1e-4 x |slope| clears both by
/// about a hundred times, while a missing or wrong term (an op without a backward) is off by
/// the whole gradient.
fn agrees(slope: f64, grad: f64) -> bool {
    (slope - grad).abs() <= 1e-7 + 1e-4 * slope.abs()
}

#[test]
fn every_gradient_matches_central_finite_differences_in_f64() {
    for spec in [SMALL, OPTIONS] {
        gradients_match_finite_differences(spec);
    }
}

fn gradients_match_finite_differences(spec: ModelSpec) {
    let (vm, gpt) = model(spec, DType::F64);
    let b = batch(&Device::Cpu);
    let grads = backprop(&vm, &gpt, &b, false);
    let mut rng = Rng::new(5);
    let mut failures = vec![];
    let mut probed = 0;
    for ((name, var), (_, grad)) in Gpt::vars(&vm).into_iter().zip(&grads) {
        let mut largest = 0f64;
        for entry in samples(&spec, &name, var.dims(), &b, &mut rng) {
            let slope = finite_difference(&gpt, &b, &var, entry, 1e-5);
            largest = largest.max(slope.abs());
            probed += 1;
            if !agrees(slope, grad[entry]) {
                failures.push(format!("{name}[{entry}]: backprop {:.6e}, finite differences {slope:.6e}", grad[entry]));
            }
        }
        // The probe must test something: a tensor whose sampled slopes all vanish could hide a
        // missing gradient inside the tolerance.
        assert!(largest > 1e-5, "{name}: every sampled slope is below 1e-5 ({largest:e}); probe other entries");
    }
    let n = failures.len();
    assert!(failures.is_empty(), "{spec:?}: {n} of {probed} gradient entries disagree:\n{}", failures.join("\n"));
}

/// The trainer's attention scores each query frame against its K+1 frames' keys only; the
/// dense form scores the whole window and masks. Same logits and same gradients, up to f64
/// rounding, on windows longer than K+1 frames (so blocks drop frames) whose first frames
/// lack context (so the padding is masked); with and without the options that read less.
#[test]
fn frame_block_attention_equals_the_dense_masked_form() {
    for spec in [SMALL, OPTIONS] {
        frame_blocks_equal_dense(spec);
    }
}

fn frame_blocks_equal_dense(spec: ModelSpec) {
    let (vm, mut gpt) = model(spec, DType::F64);
    let b = batch(&Device::Cpu);
    assert!(b.frames > SMALL.context_frames + 1);
    let run = |gpt: &Gpt| (values(&gpt.forward(&b, false, DType::F64).unwrap()), backprop(&vm, gpt, &b, false));
    let (logits, grads) = run(&gpt);
    gpt.dense_attention = true;
    let (dense_logits, dense_grads) = run(&gpt);
    let worst = |a: &[f64], b: &[f64]| {
        let scale = b.iter().fold(0f64, |m, v| m.max(v.abs()));
        a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((x - y).abs())) / scale
    };
    assert!(worst(&logits, &dense_logits) < 1e-12, "logits differ by {:e}", worst(&logits, &dense_logits));
    for ((name, g), (_, dense)) in grads.iter().zip(&dense_grads) {
        assert!(dense.iter().any(|&v| v != 0.0), "{name}: no gradient to compare");
        assert!(worst(g, dense) < 1e-10, "{spec:?} {name}: gradients differ by {:e} of their largest", worst(g, dense));
    }
}

#[test]
fn the_check_catches_attention_without_a_gradient() {
    // The trainer's first version: no gradient through the attention scores. The same
    // comparison must then fail on the queries, keys and frame biases, and only there.
    let (vm, mut gpt) = model(SMALL, DType::F64);
    gpt.fixed_attention = true;
    let b = batch(&Device::Cpu);
    let grads = backprop(&vm, &gpt, &b, false);
    gpt.fixed_attention = false;
    let vars = Gpt::vars(&vm);
    let at = |name: &str| vars.iter().position(|(n, _)| n == name).unwrap();
    for (name, entry) in
        [("layers.0.attn.frame_bias", 1), ("layers.1.attn.qkv", 2 * 16 + 3), ("layers.1.attn.qkv", 16 * 16 + 5)]
    {
        let (slope, grad) = (finite_difference(&gpt, &b, &vars[at(name)].1, entry, 1e-5), grads[at(name)].1[entry]);
        assert!(!agrees(slope, grad), "{name}[{entry}]: fixed attention passed ({grad} vs {slope})");
    }
    // Values still learn without attention's gradient.
    let v_entry = 2 * 16 * 16 + 9;
    let slope = finite_difference(&gpt, &b, &vars[at("layers.1.attn.qkv")].1, v_entry, 1e-5);
    assert!(agrees(slope, grads[at("layers.1.attn.qkv")].1[v_entry]));
}

#[test]
fn one_step_gives_every_parameter_a_gradient_and_moves_it() {
    // The trainer's own start (f32, its init), one AdamW step.
    let vm = VarMap::new();
    let gpt = Gpt::new(SMALL, &vm, &Device::Cpu, 1, DType::F32).unwrap();
    let b = batch(&Device::Cpu);
    let grads = backprop(&vm, &gpt, &b, false);
    let zero: Vec<&str> = grads.iter().filter(|(_, g)| g.iter().all(|&v| v == 0.0)).map(|(n, _)| n.as_str()).collect();
    assert!(zero.is_empty(), "no gradient reaches {zero:?}");

    let before: Vec<Vec<f64>> = Gpt::vars(&vm).iter().map(|(_, v)| values(v.as_tensor())).collect();
    let mut opt = AdamW::new(Gpt::vars(&vm), 0.0).unwrap();
    let tensors: Vec<Tensor> =
        grads.iter().map(|(_, g)| Tensor::from_vec(g.clone(), g.len(), &Device::Cpu).unwrap()).collect();
    let tensors: Vec<Tensor> = tensors
        .iter()
        .zip(Gpt::vars(&vm))
        .map(|(g, (_, v))| g.reshape(v.shape()).unwrap().to_dtype(DType::F32).unwrap())
        .collect();
    opt.step(&tensors, 1e-3, 1.0).unwrap();
    let still: Vec<String> = Gpt::vars(&vm)
        .iter()
        .zip(&before)
        .filter(|((_, v), b)| values(v.as_tensor()) == **b)
        .map(|((n, _), _)| n.clone())
        .collect();
    assert!(still.is_empty(), "one step left {still:?} unchanged");
}

#[test]
fn fake_quantization_passes_the_gradient_of_the_rounded_weights_straight_through() {
    // With int8 fake quantization the gradient of each matrix is the float model's gradient
    // taken at the rounded weights (straight-through): compare against a float model whose
    // weights are those rounded values.
    let (vm, gpt) = model(SMALL, DType::F64);
    let b = batch(&Device::Cpu);
    let through = backprop(&vm, &gpt, &b, true);
    let fake_quantized = loss(&gpt, &b, true);
    for (name, var) in Gpt::vars(&vm) {
        if var.dims().len() == 2 && !name.ends_with("frame_bias") {
            var.set(&Matrix { w: var.as_tensor().clone() }.weights(true).unwrap().detach()).unwrap();
        }
    }
    assert!(
        (loss(&gpt, &b, false) - fake_quantized).abs() < 1e-12,
        "the rounded float model is the fake-quantized one"
    );
    let plain = backprop(&vm, &gpt, &b, false);
    for ((name, a), (_, b)) in through.iter().zip(&plain) {
        let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f64, f64::max);
        assert!(worst < 1e-12, "{name}: straight-through gradient differs by {worst:e}");
    }
}
