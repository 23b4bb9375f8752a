//! Integer transformer decode speed: `cargo bench --bench transformer [-- FILTER]`.
//!
//! For each model shape, decodes 32 segments in lockstep on one thread (the real coding
//! path: range decoder, frequency tables, KV cache) and reports tokens/s per core, the
//! multiply-accumulates per token, and their rate against this core's measured integer
//! multiply-accumulate peak (a kernel of back-to-back i16 multiply-adds on L1-resident data).

use cvq::code;
use cvq::data::Segment;
use cvq::model::{ModelSpec, Weights};
use cvq::predict::transformer::{kernels, Transformer};
use cvq::predict::Model;
use std::sync::Arc;
use std::time::Instant;

const BATCH: usize = 32;

/// i16 multiply-accumulates per second of the dot kernel on data that stays in L1.
fn peak_macs() -> f64 {
    let (a, b): (Vec<i16>, Vec<i16>) = (
        (0..4096).map(|i| (i % 2047) as i16).collect(),
        (0..4096).map(|i| (i % 127) as i16).collect(),
    );
    let reps = 200_000;
    let t = Instant::now();
    let mut acc = 0i32;
    for r in 0..reps {
        let k = (r % 8) * 512;
        acc = acc.wrapping_add(kernels::dot(
            std::hint::black_box(&a[k..k + 512]),
            &b[k..k + 512],
        ));
    }
    std::hint::black_box(acc);
    (reps * 512) as f64 / t.elapsed().as_secs_f64()
}

fn tokens(frames: usize, seed: u64) -> Vec<u16> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..frames * 128)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 1024) as u16
        })
        .collect()
}

fn main() {
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let peak = peak_macs();
    println!(
        "integer MAC peak of one core (dot kernel, L1): {:.2} GMAC/s",
        peak / 1e9
    );
    println!(
        "{:<28} {:>12} {:>12} {:>12} {:>10}",
        "model (layers x width, K)", "MAC/token", "tokens/s", "GMAC/s", "of peak"
    );
    for (layers, width, k) in [
        (2, 128, 2),
        (2, 128, 3),
        (2, 128, 4),
        (2, 256, 2),
        (4, 128, 2),
        (4, 256, 2),
        (4, 256, 3),
        (4, 256, 4),
    ] {
        let name = format!("{layers} x {width}, K={k}");
        if filter.as_ref().is_some_and(|f| !name.contains(f.as_str())) {
            continue;
        }
        let spec = ModelSpec {
            layers,
            width,
            heads: width / 32,
            context_frames: k,
            mlp_width: 4 * width,
        };
        let model = Model::Neural(Arc::new(Transformer::new(
            &Weights::random(spec, 1).unwrap(),
        )));
        // Frames past the K-frame window cost the same as any later frame: time those.
        let frames = k + 2;
        let segs: Vec<Segment> = (0..BATCH)
            .map(|i| Segment::int16("s", tokens(frames, i as u64)))
            .collect();
        let toks: Vec<&[u16]> = segs.iter().map(|s| s.tokens.as_slice()).collect();
        let sizes = vec![frames * 128; BATCH];
        let payloads = code::encode(&mut model.batch(&sizes), &toks);
        let refs: Vec<&[u8]> = payloads.iter().map(|p| p.as_slice()).collect();
        let t = Instant::now();
        let out = code::decode(&mut model.batch(&sizes), &refs, &sizes);
        let secs = t.elapsed().as_secs_f64();
        assert!(out.into_iter().zip(&toks).all(|(o, t)| o.unwrap() == *t));
        let n = (BATCH * frames * 128) as f64;
        // Attention: scores and weighted values over the window, on average K frames + half a frame.
        let window = (k * 128 + 64) as f64 * (frames - k) as f64 / frames as f64
            + 64.0 * k as f64 / frames as f64;
        let macs = spec.linear_macs() as f64 + 2.0 * window * (layers * width) as f64;
        let rate = n / secs;
        println!(
            "{name:<28} {macs:>12.0} {rate:>12.0} {:>12.2} {:>9.1}%",
            rate * macs / 1e9,
            rate * macs / peak * 100.0
        );
    }
}
