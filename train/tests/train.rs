//! The trainer on CPU: learning, export into the runtime, the offline hub path, streaming data
//! and exact resume.

#[path = "../../tests/common/real_data.rs"]
mod real_data;
use candle_core::{DType, Device};
use candle_nn::VarMap;
use cvq::data::{read_segment_file, Segment};
use cvq::network::ModelSpec;
use cvq::predict::{transformer::Transformer, Learning, Model};
use cvq_train::checkpoint::{self, Data, State};
use cvq_train::stream::{self, Source, Stream};
use cvq_train::train::{self, End};
use cvq_train::{data, export, hub, model::Gpt, optim::AdamW};
use real_data::real_data;
use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

const TINY: ModelSpec = ModelSpec::new(1, 32, 2, 1, 64);
const FRAMES: usize = 2;

fn config(steps: usize, qat_steps: usize) -> train::Config {
    train::Config {
        steps,
        qat_steps,
        accum: 1,
        lr: 1e-2,
        warmup: 3,
        clip: 1.0,
        eval_every: 1000,
        log_every: 10,
        checkpoint: None,
        stop_at: None,
        dtype: DType::F32,
        profile: false,
    }
}

fn clip_split() -> (Vec<Segment>, Vec<Segment>) {
    let clip = read_segment_file(&real_data("clip.npy")).unwrap();
    data::split_by_frame(vec![clip], 900).unwrap()
}

/// A fresh model, optimizer and stream over `sources`.
fn setup(sources: Vec<Source>, val: &[Segment], seed: u64) -> (Gpt, State, Data) {
    setup_batch(sources, val, seed, 4)
}

fn setup_batch(sources: Vec<Source>, val: &[Segment], seed: u64, batch: usize) -> (Gpt, State, Data) {
    let vm = VarMap::new();
    let model = Gpt::new(TINY, &vm, &Device::Cpu, seed, DType::F32).unwrap();
    let state = State { step: 0, tokens: 0, opt: AdamW::new(Gpt::vars(&vm), 0.0).unwrap() };
    let skip: HashSet<String> = val.iter().map(|s| s.name.clone()).collect();
    let stream = Stream::new(sources, skip, seed, TINY.context_frames + FRAMES, TINY.context_frames, batch, 32);
    (model, state, Data { stream, queued: vec![] })
}

fn memory(segments: Vec<Segment>) -> Vec<Source> {
    segments.into_iter().map(|s| Source::Memory(Arc::new(s))).collect()
}

fn train(model: &Gpt, s: &mut State, d: Data, val: &[Segment], c: &train::Config) -> (Data, End) {
    let (d, outcome) = train::run(model, s, d, val, c, &AtomicBool::new(false)).unwrap();
    (d, outcome.end)
}

#[test]
fn a_few_cpu_steps_lower_the_validation_loss() {
    let (train_segs, val) = clip_split();
    let (model, mut s, d) = setup(memory(train_segs), &val, 1);
    let before = train::validate(&model, &val, 3, 8, false, DType::F32).unwrap();
    train(&model, &mut s, d, &val, &config(40, 0));
    let after = train::validate(&model, &val, 3, 8, false, DType::F32).unwrap();
    eprintln!("validation bits/token: {before:.4} before, {after:.4} after 40 steps");
    assert!(after < before - 0.3, "{before} -> {after}");
    // bf16 matrix products train too, and validate close to f32.
    let bf16 = train::validate(&model, &val, 3, 8, false, DType::BF16).unwrap();
    assert!((bf16 - after).abs() < 0.05, "bf16 {bf16} vs f32 {after}");
}

#[test]
fn exported_weights_code_the_clip_losslessly_in_the_runtime() {
    let (train_segs, val) = clip_split();
    let (model, mut s, d) = setup(memory(train_segs), &val, 2);
    train(&model, &mut s, d, &val, &config(5, 3));
    let weights = export::export(&model).unwrap();
    // The file the trainer writes is the file the runtime loads.
    let loaded = cvq::network::Weights::from_bytes(&weights.to_bytes().unwrap()).unwrap();
    assert_eq!(loaded.hash, weights.hash);
    let m = Model::Neural(Arc::new(Transformer::new(&loaded)), Learning::Frozen);
    let clip = read_segment_file(&real_data("clip.npy")).unwrap();
    let bytes = cvq::pipeline::compress_segments(&m, std::slice::from_ref(&clip)).unwrap();
    let back = cvq::pipeline::decompress_segments(&bytes, m.transformer()).unwrap();
    assert_eq!(back[0].to_npy_bytes().unwrap(), std::fs::read(real_data("clip.npy")).unwrap());
}

#[test]
fn offline_hub_reads_a_shard_from_the_cache() {
    let path = real_data("clip.npy");
    let mut clip = read_segment_file(&path).unwrap();
    clip.name = "3b41c0fa8959aea6c118e5714f412a2e_13".into();
    let other = Segment::int16("0a1b2c3d4e5f60718293a4b5c6d7e8f9_2", clip.tokens[..128 * 10].to_vec());
    // The Hugging Face cache layout: refs/main names a snapshot holding the shard.
    let cache = tempfile::tempdir().unwrap();
    let repo = cache.path().join("datasets--commaai--commavq");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123abcd").unwrap();
    let snapshot = repo.join("snapshots/0123abcd");
    std::fs::create_dir_all(&snapshot).unwrap();
    cvq::data::shard::write_shard(&snapshot.join("data-0000.tar.gz"), &[clip.clone(), other.clone()]).unwrap();

    let paths = hub::shards("commaai/commavq", &[0], Some(cache.path().to_path_buf()), true).unwrap();
    let sources = stream::sources(&paths, &[]).unwrap();
    assert_eq!(stream::load_all(&sources).unwrap(), vec![clip.clone(), other.clone()]);
    assert_eq!(stream::hold_out(&sources, &[], 1).unwrap(), vec![other]);
    let missing = hub::shards("commaai/commavq", &[1], Some(cache.path().to_path_buf()), true).unwrap_err();
    assert!(format!("{missing:#}").contains("data-0001.tar.gz is not in the cache"), "{missing:#}");
    assert_eq!(hub::parse_shards("0-1,5").unwrap(), vec![0, 1, 5]);

    // The command line finds the same file for `cvq pack`.
    let fetch = std::process::Command::new(env!("CARGO_BIN_EXE_cvq-train"))
        .args(["--dataset", "commaai/commavq", "--shards", "0", "--fetch-only", "--cache-dir"])
        .arg(cache.path())
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(fetch.status.success(), "{}", String::from_utf8_lossy(&fetch.stderr));
    assert_eq!(String::from_utf8(fetch.stdout).unwrap().trim(), paths[0].to_str().unwrap());

    // Training end to end from the cache: shard 0 streams, shard 1 validates.
    let held = Segment::int16("ffeeddccbbaa99887766554433221100_7", clip.tokens[..128 * 6].to_vec());
    cvq::data::shard::write_shard(&snapshot.join("data-0001.tar.gz"), &[held]).unwrap();
    let out = cache.path().join("w.safetensors");
    let train = std::process::Command::new(env!("CARGO_BIN_EXE_cvq-train"))
        .args(["--dataset", "commaai/commavq", "--shards", "0", "--val-shard", "1", "--preset", "tiny"])
        .args(["--steps", "3", "--qat-steps", "1", "--shuffle-buffer", "8", "--cache-dir"])
        .arg(cache.path())
        .arg("-o")
        .arg(&out)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&train.stderr);
    assert!(train.status.success(), "{log}");
    assert!(log.contains("1 training sources, 1 validation segments"), "{log}");
    assert!(log.contains("trained 4 steps"), "{log}");
    cvq::network::Weights::load(&out).unwrap();
}

/// Generated segments as dataset-style files in `dir`.
fn segment_dir(dir: &Path, count: usize, frames: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..count {
        let seg = cvq::data::synthetic::segment(&format!("{i:032x}_{i}"), frames, i as u64);
        std::fs::write(dir.join(&seg.name), seg.to_npy_bytes().unwrap()).unwrap();
    }
}

#[test]
fn the_stream_visits_every_training_segment_each_epoch_and_never_a_validation_one() {
    let dir = tempfile::tempdir().unwrap();
    segment_dir(dir.path(), 5, 6);
    let sources = stream::sources(&[], &[dir.path().to_path_buf()]).unwrap();
    let val = stream::hold_out(&sources, &[], 2).unwrap();
    let names: Vec<&str> = val.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, [format!("{:032x}_3", 3), format!("{:032x}_4", 4)], "the last two segments validate");
    // Segment i's tokens all differ from the others' first tokens: recognise windows by it.
    let firsts: Vec<u16> = stream::load_all(&sources).unwrap().iter().map(|s| s.tokens[0]).collect();
    let (_, _, d) = setup(sources, &val, 3);
    let mut loader = stream::Loader::start(d.stream, vec![]);
    let mut seen = HashSet::new();
    // 3 training segments x 6 frames: each epoch cuts 3 x 3 windows, 32 fill the buffer.
    for _ in 0..30 {
        for w in loader.next_batch().unwrap().windows {
            if !w.lead {
                seen.insert(w.tokens[0]);
            }
        }
    }
    let (stream, queued) = loader.pause().unwrap();
    assert!(stream.pos.epoch >= 3, "epochs cycle");
    assert!(queued.iter().all(|b| b.len() == 4));
    assert_eq!(seen, firsts[..3].iter().copied().collect(), "every training segment, no validation one");
}

#[test]
fn a_run_stopped_and_resumed_exports_byte_identical_weights() {
    let dir = tempfile::tempdir().unwrap();
    segment_dir(&dir.path().join("data"), 6, 12);
    let run = |stop_at: Option<usize>, resume: bool| {
        let sources = stream::sources(&[], &[dir.path().join("data")]).unwrap();
        let val = stream::hold_out(&sources, &[], 1).unwrap();
        let (model, mut s, mut d) = setup(sources, &val, 4);
        let mut c = config(10, 4);
        c.eval_every = 3;
        c.stop_at = stop_at;
        c.checkpoint = Some(dir.path().join("ckpt"));
        if resume {
            checkpoint::load(&dir.path().join("ckpt"), &TINY, &mut s, &mut d).unwrap();
        }
        let (_, end) = train(&model, &mut s, d, &val, &c);
        (export::export(&model).unwrap().to_bytes().unwrap(), end, s.step)
    };
    let (whole, end, step) = run(None, false);
    assert_eq!((end, step), (End::Finished, 14));
    std::fs::remove_dir_all(dir.path().join("ckpt")).unwrap();
    let (_, end, step) = run(Some(7), false);
    assert_eq!((end, step), (End::Stopped, 7));
    let (resumed, end, step) = run(None, true);
    assert_eq!((end, step), (End::Finished, 14));
    assert!(resumed == whole, "stopped at 7 and resumed: other weights than the uninterrupted run");

    // A checkpoint of another model is refused, naming both.
    let vm = VarMap::new();
    let other = ModelSpec { width: 64, ..TINY };
    let model = Gpt::new(other, &vm, &Device::Cpu, 1, DType::F32).unwrap();
    let mut s = State { step: 0, tokens: 0, opt: AdamW::new(Gpt::vars(&vm), 0.0).unwrap() };
    let sources = stream::sources(&[], &[dir.path().join("data")]).unwrap();
    let mut d = Data { stream: Stream::new(sources, HashSet::new(), 1, 3, 1, 4, 32), queued: vec![] };
    let err = checkpoint::load(&dir.path().join("ckpt"), &model.spec, &mut s, &mut d).unwrap_err();
    assert!(format!("{err:#}").contains("width: 32"), "{err:#}");
    let missing = checkpoint::load(&dir.path().join("nothing"), &TINY, &mut s, &mut d).unwrap_err();
    assert!(format!("{missing:#}").contains("no checkpoint to resume"), "{missing:#}");
}

#[test]
fn accumulating_two_half_batches_is_one_whole_batch() {
    let (train_segs, val) = clip_split();
    // The shuffle buffer lets windows out in the same order whatever the batch size, so both
    // runs see the same windows in each step; only float rounding may differ.
    let val = vec![Segment::int16("short", val[0].tokens[..128 * 4].to_vec())];
    let params = |batch: usize, accum: usize| {
        let (model, mut s, d) = setup_batch(memory(train_segs.clone()), &val, 6, batch);
        train(&model, &mut s, d, &val, &train::Config { accum, ..config(5, 0) });
        let w = export::export(&model).unwrap();
        w.layers[0].up.w.iter().chain(&w.tok_same.w).map(|&q| i32::from(q)).collect::<Vec<_>>()
    };
    let (whole, halves) = (params(4, 1), params(2, 2));
    let differ = whole.iter().zip(&halves).filter(|(a, b)| (*a - *b).abs() > 1).count();
    assert_eq!(differ, 0, "int8 weights differ by more than one step");
    assert_ne!(whole, params(2, 1), "a half batch alone trains differently");
}
