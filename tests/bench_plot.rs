//! `cvq bench` and `cvq plot` as a user runs them, on small synthetic segments.

mod common;

use cvq::network::{ModelSpec, Weights};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const SMALL: ModelSpec = ModelSpec::new(1, 32, 2, 1, 64);

fn cvq(args: &[&str], path_env: Option<&str>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cvq"));
    c.args(args);
    if let Some(p) = path_env {
        c.env("PATH", p);
    }
    c.output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A synthetic segment file and a small random weights file in `dir`.
fn inputs(dir: &Path, frames: usize) -> (PathBuf, PathBuf) {
    let seg = dir.join("seg.npy");
    std::fs::write(&seg, common::synthetic("seg.npy", frames, 7).to_npy_bytes().unwrap()).unwrap();
    let weights = dir.join("w.safetensors");
    std::fs::write(&weights, Weights::random(SMALL, 1).unwrap().to_bytes().unwrap()).unwrap();
    (seg, weights)
}

/// The line of the bench table for `method`.
fn row<'a>(out: &'a str, method: &str) -> &'a str {
    out.lines()
        .find(|l| l.split_whitespace().nth(1) == Some(method))
        .unwrap_or_else(|| panic!("no {method} row:\n{out}"))
}

#[test]
fn plot_writes_png_or_svg_of_the_documented_size() {
    let tmp = tempfile::tempdir().unwrap();
    let (seg, weights) = inputs(tmp.path(), 7);
    let plot = |out: &Path| {
        let predictors = ["--predictor", "context-mix", "--predictor", "neural"];
        cvq(&[&["plot", p(&seg), "-o", p(out), "--weights", p(&weights)][..], &predictors].concat(), None)
    };
    let png_path = tmp.path().join("bits.png");
    let o = plot(&png_path);
    assert!(o.status.success(), "{}", text(&o));
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png_path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let frame = reader.next_frame(&mut pixels).unwrap();
    assert_eq!((frame.width, frame.height), (1400, 1000));
    assert_eq!(frame.color_type, png::ColorType::Rgb);
    assert!(pixels.chunks(3).any(|px| px != [255, 255, 255]), "something is drawn");
    let out = text(&o);
    assert!(out.contains("1400 x 1000 pixels"), "{out}");
    assert!(out.contains("under context-mix") && out.contains("under neural"), "{out}");
    assert!(out.contains("most expensive frames"), "{out}");

    let svg_path = tmp.path().join("bits.svg");
    assert!(plot(&svg_path).status.success());
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert!(svg.contains(r#"<svg width="1400" height="1000""#), "{}", &svg[..200]);
    // The text is in the picture: the title, the axes and the legend.
    for label in ["seg.npy", "position in frame", "bits/token", "context-mix (", "neural ("] {
        assert!(svg.contains(label), "{label}");
    }

    let again = plot(&png_path);
    assert!(!again.status.success() && text(&again).contains("already exists"), "{}", text(&again));
    let jpeg = plot(&tmp.path().join("bits.jpg"));
    assert!(text(&jpeg).contains("must end in .png or .svg"), "{}", text(&jpeg));
}

#[cfg(unix)]
#[test]
fn bench_prints_every_method_and_a_score() {
    let tmp = tempfile::tempdir().unwrap();
    let (seg, weights) = inputs(tmp.path(), 6);
    // A stand-in zpaq that stores its file as is, so the file-based path runs everywhere.
    let bin = fake_tool(tmp.path(), "zpaq", "if [ \"$1\" = a ]; then cp \"$3\" \"$2\"; else cp \"$2\" \"$5\"; fi");
    let path = format!("{}:{}", p(&bin), std::env::var("PATH").unwrap());
    let decoder = tmp.path().join("cvq.xz");
    std::fs::write(&decoder, vec![0u8; 12345]).unwrap();
    let o = cvq(&["bench", p(&seg), "--weights", p(&weights), "--decoder", p(&decoder)], Some(&path));
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    for method in ["lzma", "zstd"] {
        assert!(!row(&out, method).contains("not installed"), "{out}");
    }
    // The stand-in stores 6 frames of int16 tokens: 1536 bytes, 16 bits/token, on either
    // layout, so the first one tried (natural) is the one named.
    let zpaq: Vec<&str> = row(&out, "zpaq").split_whitespace().collect();
    assert_eq!(zpaq[1..5], ["zpaq", "-m5", "natural", "1536"], "{out}");
    for method in ["lzma", "zstd"] {
        let layout = row(&out, method).split_whitespace().nth(3).unwrap_or_default();
        assert!(["natural", "pos-major"].contains(&layout), "no layout named:\n{out}");
    }
    for model in ["context-mix", "neural", "mixed"] {
        assert!(out.lines().any(|l| l.contains(&format!("cvq {model}"))), "no cvq {model} row:\n{out}");
    }
    assert!(out.contains("12345 bytes"), "the decoder is counted:\n{out}");
    assert!(out.contains("score"), "{out}");
    // The winner's lockstep decode speed, with what it means for the challenge set: all 6
    // frames of the input, in as many copies as a lockstep batch holds.
    let decode = out.lines().find(|l| l.trim_start().starts_with("decode ")).unwrap_or_else(|| panic!("{out}"));
    assert!(decode.contains("tokens/s per core") && decode.contains("768 tokens each"), "{decode}");
    assert!(decode.contains(" h for the 5000 segments on 16 such cores"), "{decode}");
}

#[cfg(unix)]
#[test]
fn bench_reports_missing_tools_and_names_a_failing_one() {
    let tmp = tempfile::tempdir().unwrap();
    let (seg, weights) = inputs(tmp.path(), 2);
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let missing = tmp.path().join("missing.xz");
    let o = cvq(&["bench", p(&seg), "--weights", p(&weights), "--decoder", p(&missing)], Some(p(&empty)));
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    for method in ["lzma", "zstd", "zpaq"] {
        assert!(row(&out, method).contains("not installed"), "{out}");
    }
    assert!(out.contains("decoder not built"), "{out}");

    let bin = fake_tool(tmp.path(), "xz", "echo 'xz: out of cheese' >&2; exit 1");
    let o = cvq(&["bench", p(&seg), "--weights", p(&weights)], Some(p(&bin)));
    assert!(!o.status.success());
    assert!(text(&o).contains("xz") && text(&o).contains("out of cheese"), "{}", text(&o));
}

/// A directory holding an executable shell script `name` running `body`.
#[cfg(unix)]
fn fake_tool(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join(format!("bin-{name}"));
    std::fs::create_dir_all(&bin).unwrap();
    let script = bin.join(name);
    std::fs::write(&script, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}
