//! `cvq plot`: where the bits go in one segment, as a PNG. Top: a heat map of each token's
//! code length (x = frame, y = position in the frame in raster order), with a colour bar at
//! the right. Below: the mean bits per token of each frame. No text (no font to draw it
//! with): the scales are fixed and printed with the description.

use super::files;
use crate::code::token_bits;
use crate::data::{read_segment_file, TOKENS_PER_FRAME};
use crate::predict::Model;
use anyhow::{ensure, Context, Result};
use std::io::Write;
use std::path::Path;

/// Colour scale of the heat map, in bits per token (fixed, so plots compare).
const HEAT_MAX: f64 = 16.0;
/// Axis of the per-frame curve, in bits per token.
const CURVE_MAX: f64 = 12.0;
/// Gridlines of the curve and ticks of the colour bar, in bits.
const GRID_STEP: f64 = 2.0;
/// Pixels per position row of the heat map.
const ROW_PX: usize = 2;
/// A segment shorter than this many frames gets wider columns, so it stays readable.
const MIN_WIDTH: usize = 1200;
const CURVE_PX: usize = 160;
const LEGEND_PX: usize = 16;
const TICK_PX: usize = 4;
const MARGIN: usize = 8;

const WHITE: Rgb = [255; 3];
const GRID: Rgb = [220; 3];
const INK: Rgb = [20, 20, 20];

type Rgb = [u8; 3];

pub fn run(input: &Path, model: &Model, output: &Path, force: bool) -> Result<()> {
    files::check_output(output, force)?;
    let seg = read_segment_file(input)?;
    ensure!(seg.frames() > 0, "{}: no frames to plot", input.display());
    // Each token's code length under `model`, as the coder pays it.
    let bits = token_bits(&seg.tokens, model.batch(&[seg.tokens.len()]).get(0));
    let per_frame: Vec<f64> = bits.chunks(TOKENS_PER_FRAME).map(|f| f.iter().sum::<f64>() / f.len() as f64).collect();
    let col_px = (MIN_WIDTH / per_frame.len()).max(1);
    let image = draw(&bits, &per_frame, col_px);
    files::write_output(output, &image.png().context("encoding the PNG")?, force)?;

    let mean = bits.iter().sum::<f64>() / bits.len() as f64;
    println!("wrote {}: {} x {} pixels", output.display(), image.width, image.height);
    println!("{}: {} frames, {mean:.4} bits/token under {model:?}", seg.name, per_frame.len());
    println!(
        "top: bits of each token, x = frame ({col_px} px each), y = position in the frame (raster order, \
         {ROW_PX} px each); colour 0-{HEAT_MAX} bits (viridis, dark = cheap), bar at the right ticked every {GRID_STEP} bits"
    );
    println!("bottom: mean bits/token of each frame, axis 0-{CURVE_MAX} bits/token, grid every {GRID_STEP} bits");
    let mut order: Vec<usize> = (0..per_frame.len()).collect();
    order.sort_by(|&a, &b| per_frame[b].total_cmp(&per_frame[a]));
    let worst: Vec<String> = order.iter().take(5).map(|&f| format!("{f} ({:.3})", per_frame[f])).collect();
    println!("most expensive frames (bits/token): {}", worst.join(", "));
    Ok(())
}

fn draw(bits: &[f64], per_frame: &[f64], col_px: usize) -> Image {
    let (plot_w, heat_h) = (per_frame.len() * col_px, TOKENS_PER_FRAME * ROW_PX);
    let legend_x = MARGIN + plot_w + MARGIN;
    let curve_y = MARGIN + heat_h + MARGIN;
    let mut img = Image::new(legend_x + LEGEND_PX + TICK_PX + MARGIN, curve_y + CURVE_PX + MARGIN);
    for (i, &b) in bits.iter().enumerate() {
        let (f, p) = (i / TOKENS_PER_FRAME, i % TOKENS_PER_FRAME);
        img.fill(MARGIN + f * col_px, MARGIN + p * ROW_PX, col_px, ROW_PX, viridis(b / HEAT_MAX));
    }
    // Colour bar: 0 bits at the bottom, HEAT_MAX at the top, with a tick every GRID_STEP.
    for y in 0..heat_h {
        let v = (heat_h - 1 - y) as f64 / (heat_h - 1) as f64;
        img.fill(legend_x, MARGIN + y, LEGEND_PX, 1, viridis(v));
    }
    for y in grid_rows(HEAT_MAX, heat_h) {
        img.fill(legend_x + LEGEND_PX, MARGIN + y, TICK_PX, 1, INK);
    }
    for y in grid_rows(CURVE_MAX, CURVE_PX) {
        img.fill(MARGIN, curve_y + y, plot_w, 1, GRID);
    }
    // The curve: a flat step per frame, joined by vertical strokes so it reads as one line.
    let mut prev = None;
    for (f, &b) in per_frame.iter().enumerate() {
        let y = curve_y + axis_row(b, CURVE_MAX, CURVE_PX);
        let x = MARGIN + f * col_px;
        let (top, bottom) = prev.map_or((y, y), |p: usize| (p.min(y), p.max(y)));
        img.fill(x, top, 1, bottom - top + 1, INK);
        img.fill(x, y, col_px, 1, INK);
        prev = Some(y);
    }
    img
}

/// Row (0 = top) of `value` on an axis from 0 (bottom row) to `max` (top row) of `height`
/// rows; values off the axis sit at its ends.
fn axis_row(value: f64, max: f64, height: usize) -> usize {
    let v = (value / max).clamp(0.0, 1.0);
    height - 1 - (v * (height - 1) as f64).round() as usize
}

/// Rows of the gridlines (or ticks) every GRID_STEP from 0 to `max`.
fn grid_rows(max: f64, height: usize) -> impl Iterator<Item = usize> {
    (0..=(max / GRID_STEP) as usize).map(move |i| axis_row(i as f64 * GRID_STEP, max, height))
}

/// Approximately viridis at `v` in 0..1 (clamped): linear between five of its colours.
fn viridis(v: f64) -> Rgb {
    const KNOTS: [Rgb; 5] = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
    let x = v.clamp(0.0, 1.0) * (KNOTS.len() - 1) as f64;
    let i = (x as usize).min(KNOTS.len() - 2);
    let t = x - i as f64;
    std::array::from_fn(|c| (KNOTS[i][c] as f64 * (1.0 - t) + KNOTS[i + 1][c] as f64 * t).round() as u8)
}

/// An RGB picture, rows top to bottom.
struct Image {
    width: usize,
    height: usize,
    rgb: Vec<u8>,
}

impl Image {
    fn new(width: usize, height: usize) -> Image {
        Image { width, height, rgb: WHITE.repeat(width * height) }
    }

    fn fill(&mut self, x: usize, y: usize, w: usize, h: usize, colour: Rgb) {
        for row in y..y + h {
            let start = (row * self.width + x) * 3;
            for px in self.rgb[start..start + w * 3].chunks_exact_mut(3) {
                px.copy_from_slice(&colour);
            }
        }
    }

    /// The smallest valid PNG: signature, IHDR (8-bit RGB), one zlib IDAT of the rows each
    /// behind filter byte 0, IEND.
    fn png(&self) -> std::io::Result<Vec<u8>> {
        let mut z = flate2::write::ZlibEncoder::new(vec![], flate2::Compression::default());
        for row in self.rgb.chunks_exact(self.width * 3) {
            z.write_all(&[0])?;
            z.write_all(row)?;
        }
        let mut ihdr = vec![];
        ihdr.extend_from_slice(&(self.width as u32).to_be_bytes());
        ihdr.extend_from_slice(&(self.height as u32).to_be_bytes());
        // Bit depth 8, colour type 2 (RGB), deflate, adaptive filtering, no interlace.
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        png_chunk(&mut out, b"IHDR", &ihdr);
        png_chunk(&mut out, b"IDAT", &z.finish()?);
        png_chunk(&mut out, b"IEND", &[]);
        Ok(out)
    }
}

/// Length, type, data, then the CRC-32 of type and data.
fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut crc = crc32fast::Hasher::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(&crc.finalize().to_be_bytes());
}
