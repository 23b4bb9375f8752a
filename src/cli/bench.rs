//! `cvq bench`: bits per token, coder overhead and speed on real segments, one table a run.

use crate::code::{decode, encode, ideal_bits};
use crate::data::read_segment_file;
use crate::predict::Model;
use anyhow::{ensure, Result};
use std::path::PathBuf;
use std::time::Instant;

pub fn run(paths: &[PathBuf], model: &Model) -> Result<()> {
    println!("model: {model:?}, one thread per segment");
    println!(
        "{:<32} {:>8} {:>10} {:>10} {:>9} {:>12} {:>12}",
        "input", "tokens", "bits/tok", "ideal", "overhead", "comp tok/s", "decomp tok/s"
    );
    for p in paths {
        let seg = read_segment_file(p)?;
        let n = seg.tokens.len();
        let t0 = Instant::now();
        let payload = encode(&mut model.batch(&[n]), &[&seg.tokens]).remove(0);
        let comp = t0.elapsed().as_secs_f64();
        let t0 = Instant::now();
        let back = decode(&mut model.batch(&[n]), &[&payload], &[n]).remove(0)?;
        let decomp = t0.elapsed().as_secs_f64();
        ensure!(back == seg.tokens, "{}: round trip mismatch", p.display());
        let ideal = ideal_bits(&seg.tokens, model.batch(&[n]).get(0));
        let actual = payload.len() as f64 * 8.0;
        println!(
            "{:<32} {:>8} {:>10.4} {:>10.4} {:>8.4}% {:>12.0} {:>12.0}",
            seg.name,
            n,
            actual / n as f64,
            ideal / n as f64,
            (actual / ideal - 1.0) * 100.0,
            n as f64 / comp,
            n as f64 / decomp
        );
    }
    Ok(())
}
