//! The challenge submission as the grader sees it: `cvq pack` from a dataset shard, then
//! scripts/evaluate.sh unzips it, runs decompress.py with the static decoder and compares
//! every file with its original.

mod common;

use cvq::data::shard::write_shard;
use cvq::data::Segment;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(out.status.code().is_some(), "killed: {cmd:?}");
    out
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Build the static decoder once, with the script users run.
fn build_decoder() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let out = run(&mut Command::new(root().join("scripts/build-decoder.sh")));
        assert!(out.status.success(), "scripts/build-decoder.sh failed:\n{}", text(&out));
    });
}

/// The score line's number from `output`.
fn score(output: &str) -> f64 {
    let at = output.find("score ").expect("a score line") + 6;
    output[at..].split_whitespace().next().unwrap().parse().unwrap()
}

/// Segments in the dataset's naming: the real clip when present, and generated ones.
fn segments() -> Vec<Segment> {
    let mut segs: Vec<Segment> =
        (0..3).map(|i| common::synthetic(&format!("0a1b2c3d4e5f60718293a4b5c6d7e8f9_{i}"), 20 + i, i as u64)).collect();
    segs.push(Segment { name: "3b41c0fa8959aea6c118e5714f412a2e_13".into(), ..common::clip() });
    segs
}

/// Pack `segs` from a shard with `predictor`, evaluate the zip against the originals; returns
/// the zip's path, pack's output and evaluate's output.
fn pack_and_evaluate(dir: &Path, segs: &[Segment], predictor: &str) -> (PathBuf, String, Output) {
    let (shard, originals, zip) = (dir.join("data-0000.tar.gz"), dir.join("originals"), dir.join("submission.zip"));
    write_shard(&shard, segs).unwrap();
    std::fs::create_dir_all(&originals).unwrap();
    for s in segs {
        std::fs::write(originals.join(&s.name), s.to_npy_bytes().unwrap()).unwrap();
    }
    // Run from elsewhere without --decoder: pack finds the one scripts/build-decoder.sh built.
    build_decoder();
    let pack = run(Command::new(env!("CARGO_BIN_EXE_cvq"))
        .current_dir(dir)
        .args(["pack", "--predictor", predictor])
        .args([&shard, Path::new("-o"), &zip]));
    assert!(pack.status.success(), "{}", text(&pack));
    let eval = run(Command::new(root().join("scripts/evaluate.sh")).args([&zip, &originals]));
    (zip, String::from_utf8_lossy(&pack.stdout).into_owned(), eval)
}

#[test]
fn packed_submission_restores_every_file_and_scores_its_real_size() {
    let tmp = tempfile::tempdir().unwrap();
    let segs = segments();
    let (zip, pack, eval) = pack_and_evaluate(tmp.path(), &segs, "mixed");
    assert!(eval.status.success(), "{}", text(&eval));
    let n = segs.len();
    assert!(text(&eval).contains(&format!("{n}/{n} files identical")), "{}", text(&eval));
    for member in ["data (archive)", "weights", "decoder (static, xz)", "script", "zip overhead"] {
        assert!(pack.contains(member), "{pack}");
    }
    // Both score lines are the original tokens at 10 bits over the real zip's bytes.
    let tokens: usize = segs.iter().map(|s| s.tokens.len()).sum();
    let expected = (tokens * 10 / 8) as f64 / std::fs::metadata(&zip).unwrap().len() as f64;
    assert!((score(&pack) - expected).abs() < 1e-4, "{pack}");
    assert!((score(&text(&eval)) - expected).abs() < 1e-4, "{}", text(&eval));
}

#[test]
fn evaluate_fails_on_a_missing_or_different_file() {
    let tmp = tempfile::tempdir().unwrap();
    let segs: Vec<Segment> = segments().into_iter().take(2).collect();
    let (zip, pack, _) = pack_and_evaluate(tmp.path(), &segs, "context-mix");
    assert!(!pack.contains("weights"), "the context mixer needs no weights in the zip: {pack}");
    let originals = tmp.path().join("originals");
    // An original the archive lacks is missing from the output.
    std::fs::write(originals.join("extra_0"), segs[0].to_npy_bytes().unwrap()).unwrap();
    // An original that differs from what the archive holds.
    let mut changed = segs[1].to_npy_bytes().unwrap();
    *changed.last_mut().unwrap() ^= 1;
    std::fs::write(originals.join(&segs[1].name), changed).unwrap();
    let eval = run(Command::new(root().join("scripts/evaluate.sh")).args([&zip, &originals]));
    assert!(!eval.status.success());
    let out = text(&eval);
    assert!(out.contains("missing: extra_0") && out.contains(&format!("differs: {}", segs[1].name)), "{out}");
    assert!(out.contains("1/3 files identical"), "{out}");
}
