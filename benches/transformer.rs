//! Integer transformer decode speed: `cargo bench --bench transformer [-- FILTER]`.
//!
//! For each model shape, decodes a lockstep batch of segments (`Model::batch_size`) on one thread (the real coding
//! path: range decoder, frequency tables, KV cache) and reports tokens/s per core, the
//! multiply-accumulates per token, and their rate against this core's measured integer
//! multiply-accumulate peak (independent chains of i16 multiply-adds on registers), for the
//! whole decode step and for its linear layers' matrix products alone. The last columns bound
//! what the step can reach: attention reads each slot's cached key and value once per token,
//! so a step takes at least the time to stream those bytes (at this core's measured read rate
//! from a buffer the size of the batch's caches) plus its matrix products at their measured
//! rate.

use cvq::code;
use cvq::data::Segment;
use cvq::network::{ModelSpec, Weights};
use cvq::predict::transformer::{kernels, Transformer};
use cvq::predict::{Learning, Model};
use std::sync::Arc;
use std::time::Instant;

fn tokens(frames: usize, seed: u64) -> Vec<u16> {
    let mut rng = cvq::data::synthetic::XorShift::new(seed);
    (0..frames * 128).map(|_| (rng.next() % 1024) as u16).collect()
}

/// Multiply-accumulates per second of the linear layers alone: the model's matrices applied
/// to a batch of `batch` rows, the matrix work of one lockstep step.
/// Tokens of the challenge's 5,000 segments.
const CHALLENGE_TOKENS: f64 = 5000.0 * 1200.0 * 128.0;

fn matrix_rate(spec: &ModelSpec, batch: usize) -> f64 {
    let (d, m) = (spec.width, spec.mlp_width);
    let mut shapes = vec![(1024, d)];
    for _ in 0..spec.layers {
        shapes.extend([(spec.qkv_rows(), d), (d, d), (m, d), (d, m)]);
    }
    let mats: Vec<(Vec<i16>, kernels::Packed)> = shapes
        .iter()
        .map(|&(rows, cols)| {
            let w: Vec<i8> = (0..rows * cols).map(|i| (i * 7 % 255) as i8).collect();
            let x = (0..batch * cols).map(|i| (i * 13 % 4095) as i16 - 2047).collect();
            (x, kernels::Packed::new(&w, rows, cols))
        })
        .collect();
    let macs_per_step: usize = shapes.iter().map(|(r, c)| batch * r * c).sum();
    let mut out = vec![0i32; batch * shapes.iter().map(|s| s.0).max().unwrap()];
    let steps = (2_000_000_000 / macs_per_step).max(1);
    let t = Instant::now();
    for _ in 0..steps {
        for (x, w) in &mats {
            kernels::matmul_packed(std::hint::black_box(x), w, &mut out[..batch * w.rows()]);
        }
    }
    (steps * macs_per_step) as f64 / t.elapsed().as_secs_f64()
}

/// Bytes per second one core reads from a buffer of `bytes` (1 GiB of reads or more: the first pass runs slower), with
/// the widest loads the CPU has: the rate at which attention can stream a cache of that size.
fn read_rate(bytes: usize) -> f64 {
    let buf: Vec<u64> = (0..bytes / 8).map(|i| i as u64).collect();
    let passes = (1 << 30) / bytes + 1;
    let t = Instant::now();
    for _ in 0..passes {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512 is present.
            std::hint::black_box(unsafe { sum_avx512(&buf) });
            continue;
        }
        std::hint::black_box(sum(&buf));
    }
    (passes * buf.len() * 8) as f64 / t.elapsed().as_secs_f64()
}

fn sum(buf: &[u64]) -> u64 {
    buf.iter().fold(0, |a, &v| a.wrapping_add(v))
}

/// Two independent chains of 64-byte loads and adds.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn sum_avx512(buf: &[u64]) -> u64 {
    use std::arch::x86_64::*;
    let (mut a, mut b) = (_mm512_setzero_si512(), _mm512_setzero_si512());
    // Aligned loads: one cache line each.
    let skip = buf.as_ptr().align_offset(64).min(buf.len());
    for pair in buf[skip..].chunks_exact(16) {
        a = _mm512_add_epi64(a, _mm512_loadu_si512(pair.as_ptr().cast()));
        b = _mm512_add_epi64(b, _mm512_loadu_si512(pair[8..].as_ptr().cast()));
    }
    _mm512_reduce_add_epi64(_mm512_add_epi64(a, b)) as u64
}

fn main() {
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let peak = kernels::peak_macs_per_second();
    println!(
        "integer MAC peak of one core (chains of the multiply-add the matrix product uses: vpdpwssd with AVX-512 VNNI, else vpmaddwd; registers only): {:.2} GMAC/s",
        peak / 1e9
    );
    println!(
        "{:<24} {:>10} {:>10} {:>9} {:>9} {:>15} {:>16} {:>13} {:>11} {:>15}",
        "model (layers x width, K)",
        "MAC/token",
        "tokens/s",
        "GMAC/s",
        "of peak",
        "matmuls of peak",
        "768M tok, 16 cores",
        "cache B/token",
        "read GB/s",
        "ceiling of peak"
    );
    // 6 x 256, K=4 is cvq-train's challenge preset; 10 x 384, K=8 a model of ~20M parameters.
    // Then the default and challenge shapes with the options that read less: kv = key/value
    // heads of the `width / 32` query heads, reach = rows, columns (full: 7,15).
    let full = (7, 15);
    let shapes = [(2, 128, 2), (2, 128, 3), (2, 128, 4), (2, 256, 2), (4, 128, 2), (4, 256, 2), (4, 256, 3)];
    let shapes = shapes.into_iter().chain([(4, 256, 4), (6, 256, 4), (8, 512, 8), (10, 384, 8)]).map(|s| (s, 0, full));
    let options = [(1, full), (0, (2, 2)), (0, (1, 15)), (1, (2, 2)), (1, (1, 1))];
    let options = options.into_iter().flat_map(|o| [((2, 128, 2), o.0, o.1), ((6, 256, 4), o.0, o.1)]);
    let options = options.chain([((6, 256, 4), 2, full), ((6, 256, 4), 2, (2, 2))]);
    for ((layers, width, k), kv, (reach_rows, reach_cols)) in shapes.chain(options) {
        let spec = ModelSpec::new(layers, width, width / 32, k, 4 * width);
        let kv_heads = if kv == 0 { spec.heads } else { kv };
        let spec = ModelSpec { kv_heads, reach_rows, reach_cols, ..spec };
        let mut name = format!("{layers} x {width}, K={k}");
        if kv > 0 {
            name += &format!(" kv{kv}");
        }
        if (reach_rows, reach_cols) != full {
            name += &format!(" r{reach_rows},{reach_cols}");
        }
        if filter.as_ref().is_some_and(|f| !name.contains(f.as_str())) {
            continue;
        }
        let model = Model::Neural(Arc::new(Transformer::new(&Weights::random(spec, 1).unwrap())), Learning::Frozen);
        // Frames past the K-frame window cost the same as any later frame: time those.
        let frames = k + 2;
        let batch = model.batch_size();
        let segs: Vec<Segment> = (0..batch).map(|i| Segment::int16("s", tokens(frames, i as u64))).collect();
        let toks: Vec<&[u16]> = segs.iter().map(|s| s.tokens.as_slice()).collect();
        let sizes = vec![frames * 128; batch];
        let payloads = code::encode(&mut model.batch(&sizes), &toks);
        let refs: Vec<&[u8]> = payloads.iter().map(|p| p.as_slice()).collect();
        let t = Instant::now();
        let out = code::decode(&mut model.batch(&sizes), &refs, &sizes);
        let secs = t.elapsed().as_secs_f64();
        assert!(out.into_iter().zip(&toks).all(|(o, t)| o.unwrap() == *t));
        let n = (batch * frames * 128) as f64;
        // Attention: a score and a weighted value per head dimension for each slot of each
        // element's window (the places within reach in the K previous frames and the current
        // frame up to the element).
        let reached = |pos: usize| (0..128).filter(|&j| spec.reaches(pos, j)).count();
        let window: usize = (0..frames * 128).map(|p| (p / 128).min(k) * reached(p % 128) + p % 128 + 1).sum();
        let macs = spec.linear_macs() as f64 + 2.0 * (window * layers * width) as f64 / (frames * 128) as f64;
        let rate = n / secs;
        let matrices = matrix_rate(&spec, batch);
        // Cached bytes each token's attention reads: its window's slots, each slot's keys,
        // values and their shifts in every layer (of the key/value heads).
        let cache_bytes = window as f64 / (frames * 128) as f64 * (spec.kv_cache_bytes() / spec.window()) as f64;
        let read = read_rate(batch * spec.kv_cache_bytes());
        let ceiling = 1.0 / (cache_bytes / read + spec.linear_macs() as f64 / matrices);
        println!(
            "{name:<24} {macs:>10.0} {rate:>10.0} {:>9.2} {:>8.1}% {:>14.1}% {:>16.1}h {cache_bytes:>13.0} {:>11.1} {:>14.1}%",
            rate * macs / 1e9,
            rate * macs / peak * 100.0,
            matrices / peak * 100.0,
            // The challenge set's decode time, if 16 cores each ran this one's rate.
            CHALLENGE_TOKENS / (16.0 * rate) / 3600.0,
            read / 1e9,
            ceiling * macs / peak * 100.0
        );
    }
}
