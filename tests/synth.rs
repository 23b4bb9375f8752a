//! `cvq synth`: segments sampled from the model, whose information content is known exactly.

use std::path::Path;
use std::process::{Command, Output};

fn cvq(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cvq")).args(args).output().unwrap()
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

fn synth(dir: &Path, manifest: &Path, threads: &str) {
    let args = ["synth", "--segments", "3", "--frames", "12", "--seed", "7", "-j", threads, "-o"];
    ok(cvq(&[&args[..], &[dir.to_str().unwrap(), "--manifest", manifest.to_str().unwrap()]].concat()));
}

#[test]
fn coding_a_sample_with_its_generator_costs_its_information_content() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, manifest) = (tmp.path().join("segments"), tmp.path().join("manifest.json"));
    synth(&dir, &manifest, "2");
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    let segments = m["segments"].as_array().unwrap();
    assert_eq!(segments.len(), 3);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 3, "the directory holds the segments only");
    // eval prints one row per segment: name, tokens, payload bytes, bits/token.
    let table = ok(cvq(&["eval", "--predictor", "neural", dir.to_str().unwrap()]));
    for s in segments {
        let (name, bits) = (s["name"].as_str().unwrap(), s["bits"].as_f64().unwrap());
        assert_eq!(name.len(), 32 + 2, "dataset-style name {name}");
        let row = table.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name} in\n{table}"));
        let coded = row.split_whitespace().nth(2).unwrap().parse::<f64>().unwrap() * 8.0;
        // The range coder's overhead: its 8-byte flush plus rounding, well under 0.1%.
        assert!(coded >= bits - 1.0 && coded <= bits * 1.001 + 64.0, "{name}: coded {coded} bits, information {bits}");
    }
}

#[test]
fn a_seed_gives_the_same_segments_at_any_thread_count_and_nothing_is_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    synth(&a, &tmp.path().join("a.json"), "1");
    synth(&b, &tmp.path().join("b.json"), "2");
    for e in std::fs::read_dir(&a).unwrap() {
        let name = e.unwrap().file_name();
        assert_eq!(std::fs::read(a.join(&name)).unwrap(), std::fs::read(b.join(&name)).unwrap());
    }
    let again = cvq(&["synth", "--segments", "3", "--frames", "12", "--seed", "7", "-o", a.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    let inside = a.join("m.json");
    let o = cvq(&[
        "synth",
        "--segments",
        "1",
        "--frames",
        "2",
        "-o",
        a.to_str().unwrap(),
        "--manifest",
        inside.to_str().unwrap(),
        "--force",
    ]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("keep the manifest outside"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
