//! The trainer on CPU: learning, export into the runtime, and the offline hub path.

use candle_core::Device;
use candle_nn::VarMap;
use cvq::data::shared::shared_data;
use cvq::data::{read_segment_file, Segment};
use cvq::model::ModelSpec;
use cvq::predict::{transformer::Transformer, Model};
use cvq_train::{data, export, hub, model::Gpt, train};
use std::sync::Arc;

const TINY: ModelSpec = ModelSpec { layers: 1, width: 32, heads: 2, context_frames: 1, mlp_width: 64 };

fn config(steps: usize, qat_steps: usize) -> train::Config {
    train::Config {
        steps,
        qat_steps,
        batch: 4,
        frames: 1,
        lr: 1e-2,
        warmup: 3,
        weight_decay: 0.0,
        clip: 1.0,
        seed: 3,
        eval_every: 1000,
        checkpoint: None,
    }
}

fn clip_split() -> Option<data::Split> {
    let clip = read_segment_file(&shared_data("clip.npy")?).unwrap();
    Some(data::split_by_frame(vec![clip], 900).unwrap())
}

#[test]
fn a_few_cpu_steps_lower_the_validation_loss() {
    let Some(split) = clip_split() else { return };
    let vm = VarMap::new();
    let model = Gpt::new(TINY, &vm, &Device::Cpu, 1).unwrap();
    let before = train::validate(&model, &split, 1, 8, false, &Device::Cpu).unwrap();
    let after = train::run(&model, &vm, &split, &config(40, 0), 0, &Device::Cpu).unwrap();
    eprintln!("validation bits/token: {before:.4} before, {after:.4} after 40 steps");
    assert!(after < before - 0.3, "{before} -> {after}");
}

#[test]
fn exported_weights_code_the_clip_losslessly_in_the_runtime() {
    let Some(split) = clip_split() else { return };
    let vm = VarMap::new();
    let model = Gpt::new(TINY, &vm, &Device::Cpu, 2).unwrap();
    train::run(&model, &vm, &split, &config(5, 3), 0, &Device::Cpu).unwrap();
    let weights = export::export(&model).unwrap();
    // The file the trainer writes is the file the runtime loads.
    let loaded = cvq::model::Weights::from_bytes(&weights.to_bytes().unwrap()).unwrap();
    assert_eq!(loaded.hash, weights.hash);
    let m = Model::Neural(Arc::new(Transformer::new(&loaded)));
    let clip = read_segment_file(&shared_data("clip.npy").unwrap()).unwrap();
    let bytes = cvq::pipeline::compress_segments(&m, std::slice::from_ref(&clip)).unwrap();
    let back = cvq::pipeline::decompress_segments(&bytes, m.transformer()).unwrap();
    assert_eq!(back[0].to_npy_bytes().unwrap(), std::fs::read(shared_data("clip.npy").unwrap()).unwrap());
}

#[test]
fn offline_hub_reads_a_shard_from_the_cache() {
    let Some(path) = shared_data("clip.npy") else { return };
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
    assert_eq!(data::load_shards(&paths).unwrap(), vec![clip, other]);
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
}

#[test]
fn training_resumes_from_a_checkpoint() {
    let Some(split) = clip_split() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(6, 0);
    c.eval_every = 4;
    c.checkpoint = Some(dir.path().to_path_buf());
    let vm = VarMap::new();
    let model = Gpt::new(TINY, &vm, &Device::Cpu, 4).unwrap();
    train::run(&model, &vm, &split, &c, 0, &Device::Cpu).unwrap();
    let saved = export::export(&model).unwrap();
    // A fresh model loads the last checkpoint (written at step 6, the end) and agrees.
    let mut vm2 = VarMap::new();
    let model2 = Gpt::new(TINY, &vm2, &Device::Cpu, 5).unwrap();
    assert_eq!(train::load_checkpoint(&mut vm2, dir.path()).unwrap(), 6);
    assert_eq!(export::export(&model2).unwrap().hash, saved.hash);
    // Resuming runs only the steps left.
    c.steps = 8;
    train::run(&model2, &vm2, &split, &c, 6, &Device::Cpu).unwrap();
    assert_eq!(std::fs::read_to_string(dir.path().join("checkpoint.step")).unwrap(), "8");
    let missing = train::load_checkpoint(&mut VarMap::new(), &dir.path().join("nothing")).unwrap_err();
    assert!(format!("{missing:#}").contains("no checkpoint to resume"), "{missing:#}");
}
