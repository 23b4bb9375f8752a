//! Where a trained model's attention looks: for each layer and head, the attention mass of the
//! queries of frames FROM_FRAME.. by frame offset (0 = the current frame, 1 = the one before,
//! ...), and within each offset by place: the query's own place, its 8 neighbours (one row
//! or column away), and the rest of the frame; with the head's exported frame biases.
//!
//!     cargo run --release -p cvq-train --example attention -- WEIGHTS SEGMENT.npy FROM_FRAME
//!
//! Each frame t from FROM_FRAME on is scored once, in a window of its K context frames (as the
//! integer engine sees it); the weights are the int8 file's, in float. Prints a Markdown table.

use anyhow::{ensure, Context, Result};
use candle_core::Device;
use candle_nn::VarMap;
use cvq::data::{read_segment_file, TOKENS_PER_FRAME};
use cvq_train::data::{HostBatch, Window};
use cvq_train::export;
use std::path::Path;

const COLS: usize = 16;

/// 0: the same place, 1: a neighbour (Chebyshev distance 1), 2: the rest.
fn place(query: usize, key: usize) -> usize {
    let (qr, qc, kr, kc) = (query / COLS, query % COLS, key / COLS, key % COLS);
    match qr.abs_diff(kr).max(qc.abs_diff(kc)) {
        0 => 0,
        1 => 1,
        _ => 2,
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    ensure!(args.len() == 3, "usage: attention WEIGHTS SEGMENT.npy FROM_FRAME");
    let (vm, device) = (VarMap::new(), Device::Cpu);
    let model = export::import(Path::new(&args[0]), &vm, &device)?;
    let seg = read_segment_file(Path::new(&args[1]))?;
    let from: usize = args[2].parse().context("FROM_FRAME")?;
    let (k, heads, layers) = (model.spec.context_frames, model.spec.heads, model.spec.layers);
    ensure!(from >= k && from < seg.frames(), "FROM_FRAME must be in {k}..{}", seg.frames());

    // mass[layer][head][offset][place], summed over queries.
    let mut mass = vec![vec![vec![[0f64; 3]; k + 1]; heads]; layers];
    let windows: Vec<Window> = (from..seg.frames()).map(|t| Window::cut(&seg.tokens, t - k, k + 1, k)).collect();
    let n = (k + 1) * TOKENS_PER_FRAME;
    for chunk in windows.chunks(16) {
        let batch = HostBatch::new(chunk, k + 1).to_device(&device)?;
        for (l, att) in model.attention_weights(&batch)?.iter().enumerate() {
            // The queries of the window's last frame: [B, heads, 128, (K+1) 128] (block o:
            // frame offset o), flattened.
            let att: Vec<f32> = att.narrow(2, k, 1)?.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1()?;
            for (i, row) in att.chunks_exact(n).enumerate() {
                let (h, query) = ((i / TOKENS_PER_FRAME) % heads, i % TOKENS_PER_FRAME);
                for (j, &w) in row.iter().enumerate() {
                    mass[l][h][j / TOKENS_PER_FRAME][place(query, j % TOKENS_PER_FRAME)] += f64::from(w);
                }
            }
        }
    }
    let queries = (windows.len() * TOKENS_PER_FRAME) as f64;
    println!("| layer.head | frame offset | frame bias | mass | same place | neighbours | rest of the frame |");
    println!("|---|---|---|---|---|---|---|");
    for (l, layer) in model.layers.iter().enumerate() {
        let bias: Vec<Vec<f32>> = layer.frame_bias.to_dtype(candle_core::DType::F32)?.to_vec2()?;
        for h in 0..heads {
            for offset in 0..=k {
                let m = mass[l][h][offset];
                let pct = |v: f64| format!("{:.1}%", 100.0 * v / queries);
                println!(
                    "| {l}.{h} | {offset} | {:+.3} | {} | {} | {} | {} |",
                    bias[h][offset],
                    pct(m.iter().sum()),
                    pct(m[0]),
                    pct(m[1]),
                    pct(m[2])
                );
            }
        }
    }
    eprintln!("{} queries (frames {from}..{} of {})", windows.len() * TOKENS_PER_FRAME, seg.frames(), args[1]);
    Ok(())
}
