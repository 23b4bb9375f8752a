//! `cvq plot`: where the bits go in one segment, drawn with plotters. Top: a heat map of each
//! token's code length over frame x position in the frame, with its colour bar. Bottom left:
//! the mean bits of each position in the frame's own 8 x 16 layout (which parts of the camera
//! view cost the most). Bottom right: the mean bits per token of each frame under every
//! predictor asked for. PNG or SVG by the output's extension; text in the bundled DejaVu Sans,
//! so no system font is needed.

use super::files;
use crate::code::token_bits;
use crate::data::{read_segment_file, Segment, TOKENS_PER_FRAME};
use crate::predict::Model;
use anyhow::{anyhow, bail, ensure, Context, Result};
use plotters::chart::MeshStyle;
use plotters::coord::ranged1d::ValueFormatter;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::colors::colormaps::ViridisRGB;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;

/// The picture's size in pixels (SVG units for SVG).
pub const SIZE: (u32, u32) = (1400, 1000);
/// Colour scale of the heat map, in bits per token: fixed, so that plots compare.
const HEAT_MAX: f64 = 16.0;
/// At most this many heat-map columns: longer segments average neighbouring frames, which
/// keeps an SVG small and a PNG's columns at least a few pixels wide.
const MAX_COLUMNS: usize = 240;
/// The frame's layout: rows x columns of tokens.
const FRAME_ROWS: usize = 8;
const FRAME_COLS: usize = TOKENS_PER_FRAME / FRAME_ROWS;
const FONT: &str = "sans-serif";
/// Curves of the per-frame chart, one colour per predictor.
const LINE_COLOURS: [RGBColor; 3] = [RGBColor(31, 119, 180), RGBColor(214, 39, 40), RGBColor(44, 160, 44)];

/// One predictor's code lengths for the segment.
struct Curve {
    name: &'static str,
    bits: Vec<f64>,
    per_frame: Vec<f64>,
    mean: f64,
}

impl Curve {
    fn of(model: &Model, seg: &Segment) -> Curve {
        // Each token's code length under `model`, as the coder pays it.
        let bits = token_bits(&seg.tokens, model.batch(&[seg.tokens.len()]).get(0));
        let per_frame = bits.chunks(TOKENS_PER_FRAME).map(mean).collect();
        Curve { name: model.name(), mean: mean(&bits), bits, per_frame }
    }

    /// Mean bits of position `k` of the frame over `frames`.
    fn place_mean(&self, k: usize, frames: std::ops::Range<usize>) -> f64 {
        let n = frames.len().max(1);
        frames.map(|f| self.bits[f * TOKENS_PER_FRAME + k]).sum::<f64>() / n as f64
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

pub fn run(input: &Path, models: &[Model], output: &Path, force: bool) -> Result<()> {
    files::check_output(output, force)?;
    let svg = match output.extension().and_then(|e| e.to_str()) {
        Some("svg") => true,
        Some("png") => false,
        _ => bail!("{}: the picture's name must end in .png or .svg", output.display()),
    };
    let seg = read_segment_file(input)?;
    ensure!(seg.frames() > 0, "{}: no frames to plot", input.display());
    let curves: Vec<Curve> = models.iter().map(|m| Curve::of(m, &seg)).collect();
    let bytes = if svg { render_svg(&seg.name, &curves)? } else { render_png(&seg.name, &curves)? };
    files::write_output(output, &bytes, force)?;

    println!("wrote {}: {} x {} {}", output.display(), SIZE.0, SIZE.1, if svg { "SVG units" } else { "pixels" });
    for c in &curves {
        println!("{}: {} frames, {:.4} bits/token under {}", seg.name, c.per_frame.len(), c.mean, c.name);
    }
    let mut worst: Vec<(usize, f64)> = curves[0].per_frame.iter().copied().enumerate().collect();
    worst.sort_by(|a, b| b.1.total_cmp(&a.1));
    let worst: Vec<String> = worst.iter().take(5).map(|(f, b)| format!("{f} ({b:.2})")).collect();
    println!("most expensive frames under {} (bits/token): {}", curves[0].name, worst.join(", "));
    Ok(())
}

fn render_png(name: &str, curves: &[Curve]) -> Result<Vec<u8>> {
    let mut rgb = vec![0u8; SIZE.0 as usize * SIZE.1 as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, SIZE).into_drawing_area();
        draw(&root, name, curves)?;
        root.present().map_err(drawing)?;
    }
    let mut out = vec![];
    let mut encoder = png::Encoder::new(&mut out, SIZE.0, SIZE.1);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.write_header().and_then(|mut w| w.write_image_data(&rgb)).context("encoding the PNG")?;
    Ok(out)
}

fn render_svg(name: &str, curves: &[Curve]) -> Result<Vec<u8>> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        draw(&root, name, curves)?;
        root.present().map_err(drawing)?;
    }
    Ok(svg.into_bytes())
}

fn drawing(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing the plot: {e}")
}

/// The font, registered once from the bytes built into cvq.
fn font(size: u32) -> TextStyle<'static> {
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    REGISTERED.call_once(|| {
        let bytes = include_bytes!("DejaVuSans.ttf");
        plotters::style::register_font(FONT, FontStyle::Normal, bytes)
            .unwrap_or_else(|_| panic!("the bundled font parses"));
    });
    (FONT, size).into_font().into()
}

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, name: &str, curves: &[Curve]) -> Result<()> {
    root.fill(&WHITE).map_err(drawing)?;
    let first = &curves[0];
    let title = format!("{name}: {:.3} bits/token under {}", first.mean, first.name);
    let body = root.titled(&title, font(26)).map_err(drawing)?;
    let (top, bottom) = body.split_vertically(SIZE.1 as i32 * 45 / 100);
    let (heat, bar) = top.split_horizontally(SIZE.0 as i32 - 130);
    heat_map(&heat, first)?;
    colour_bar(&bar)?;
    let (positions, frames) = bottom.split_horizontally(SIZE.0 as i32 * 40 / 100);
    position_map(&positions, first)?;
    frame_chart(&frames, curves)
}

/// A chart with a caption and room for axis labels (`y_labels` pixels wide at the left).
fn titled_chart<'a, 'b, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, Shift>,
    caption: impl AsRef<str>,
    y_labels: u32,
) -> ChartBuilder<'a, 'b, DB> {
    let mut builder = ChartBuilder::on(area);
    builder.caption(caption, font(18)).margin(10).x_label_area_size(40).y_label_area_size(y_labels);
    builder
}

/// Draw a chart's axes in the text styles all the charts share.
fn draw_axes<X, Y, DB>(mesh: &mut MeshStyle<'_, '_, X, Y, DB>) -> Result<()>
where
    X: Ranged + ValueFormatter<X::ValueType>,
    Y: Ranged + ValueFormatter<Y::ValueType>,
    DB: DrawingBackend,
{
    mesh.label_style(font(14)).axis_desc_style(font(16)).draw().map_err(drawing)
}

fn heat_colour(bits: f64) -> RGBColor {
    ViridisRGB.get_color((bits / HEAT_MAX).clamp(0.0, 1.0) as f32)
}

/// Bits of each token over frame (x) and position in the frame (y, 0 at the top), averaged
/// over `per_column` frames where the segment is long.
// plotters reads a reversed range as a flipped axis: row 0 at the top, as in the frame.
#[allow(clippy::reversed_empty_ranges)]
fn heat_map<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, c: &Curve) -> Result<()> {
    let frames = c.per_frame.len();
    let per_column = frames.div_ceil(MAX_COLUMNS);
    let caption = match per_column {
        1 => "bits per token".to_string(),
        n => format!("bits per token (each column the mean of {n} frames)"),
    };
    let mut chart =
        titled_chart(area, caption, 60).build_cartesian_2d(0..frames, TOKENS_PER_FRAME..0usize).map_err(drawing)?;
    draw_axes(chart.configure_mesh().disable_mesh().x_desc("frame").y_desc("position in frame (raster order)"))?;
    let cells = (0..frames).step_by(per_column).flat_map(|f0| {
        let f1 = (f0 + per_column).min(frames);
        (0..TOKENS_PER_FRAME).map(move |k| {
            let v = c.place_mean(k, f0..f1);
            Rectangle::new([(f0, k), (f1, k + 1)], heat_colour(v).filled())
        })
    });
    chart.draw_series(cells).map_err(drawing)?;
    Ok(())
}

/// The heat map's colour scale, with its values.
fn colour_bar<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>) -> Result<()> {
    let mut chart = ChartBuilder::on(area)
        .margin_top(40)
        .margin_bottom(50)
        .margin_right(10)
        .y_label_area_size(50)
        .build_cartesian_2d(0..1, 0.0..HEAT_MAX)
        .map_err(drawing)?;
    draw_axes(chart.configure_mesh().disable_mesh().disable_x_axis().y_labels(9).y_desc("bits/token"))?;
    let steps = 128;
    let strip = (0..steps).map(|i| {
        let (lo, hi) = (HEAT_MAX * i as f64 / steps as f64, HEAT_MAX * (i + 1) as f64 / steps as f64);
        Rectangle::new([(0, lo), (1, hi)], heat_colour((lo + hi) / 2.0).filled())
    });
    chart.draw_series(strip).map_err(drawing)?;
    Ok(())
}

/// Mean bits of each position over the segment, laid out as the camera frame (8 rows of 16),
/// each cell coloured on its own scale and labelled with its value.
// plotters reads a reversed range as a flipped axis: row 0 at the top, as in the frame.
#[allow(clippy::reversed_empty_ranges)]
fn position_map<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, c: &Curve) -> Result<()> {
    let frames = c.per_frame.len();
    let means: Vec<f64> = (0..TOKENS_PER_FRAME).map(|k| c.place_mean(k, 0..frames)).collect();
    let (lo, hi) = means.iter().fold((f64::MAX, f64::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let mut chart = titled_chart(area, format!("mean bits/token by place in the frame ({lo:.2} to {hi:.2})"), 40)
        .build_cartesian_2d(0..FRAME_COLS, FRAME_ROWS..0usize)
        .map_err(drawing)?;
    draw_axes(
        chart.configure_mesh().disable_mesh().x_labels(FRAME_COLS).y_labels(FRAME_ROWS).x_desc("column").y_desc("row"),
    )?;
    let scale = |v: f64| ((v - lo) / (hi - lo).max(1e-9)) as f32;
    let cells = means.iter().enumerate().map(|(k, &v)| {
        let (row, col) = (k / FRAME_COLS, k % FRAME_COLS);
        Rectangle::new([(col, row), (col + 1, row + 1)], ViridisRGB.get_color(scale(v)).filled())
    });
    chart.draw_series(cells).map_err(drawing)?;
    // Each label sits at its cell's centre: the cell's corner plus half a cell, in pixels.
    let (w, h) = chart.plotting_area().dim_in_pixel();
    let half = ((w / FRAME_COLS as u32 / 2) as i32, (h / FRAME_ROWS as u32 / 2) as i32);
    let labels = means.iter().enumerate().map(|(k, &v)| {
        let (row, col) = (k / FRAME_COLS, k % FRAME_COLS);
        // Dark text on the light end of the scale, light on the dark end.
        let ink: &RGBColor = if scale(v) > 0.6 { &BLACK } else { &WHITE };
        let style = font(13).color(ink).pos(Pos::new(HPos::Center, VPos::Center));
        EmptyElement::at((col, row)) + Text::new(format!("{v:.1}"), half, style)
    });
    chart.draw_series(labels).map_err(drawing)?;
    Ok(())
}

/// Mean bits per token of each frame, one line per predictor, with a legend.
fn frame_chart<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, curves: &[Curve]) -> Result<()> {
    let frames = curves[0].per_frame.len();
    let top = curves.iter().flat_map(|c| c.per_frame.iter()).fold(0.0f64, |m, &v| m.max(v));
    let mut chart = titled_chart(area, "bits per token of each frame", 60)
        .build_cartesian_2d(0..frames.max(2) - 1, 0.0..(top / 2.0).ceil().max(1.0) * 2.0)
        .map_err(drawing)?;
    draw_axes(chart.configure_mesh().x_desc("frame").y_desc("bits/token"))?;
    // The first predictor is drawn last, on top of the others.
    for (i, c) in curves.iter().enumerate().rev() {
        let colour = LINE_COLOURS[i % LINE_COLOURS.len()];
        let line = LineSeries::new(c.per_frame.iter().copied().enumerate(), colour.stroke_width(2));
        chart
            .draw_series(line)
            .map_err(drawing)?
            .label(format!("{} ({:.3})", c.name, c.mean))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(3)));
    }
    chart
        .configure_series_labels()
        .label_font(font(14))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(drawing)?;
    Ok(())
}
