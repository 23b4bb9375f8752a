//! Writes generated segments in the dataset's layout (int16 (frames, 8, 16) .npy, names like
//! `<32 hex digits>_<n>` without extension), for scale checks of pack and decompress:
//! `cargo run --release --example synthetic_segments -- DIR COUNT [FRAMES]`

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(args.len() >= 2, "usage: synthetic_segments DIR COUNT [FRAMES]");
    let dir = std::path::Path::new(&args[0]);
    let (count, frames): (usize, usize) = (args[1].parse()?, args.get(2).map_or(Ok(1200), |a| a.parse())?);
    std::fs::create_dir_all(dir)?;
    for i in 0..count {
        let name = format!("{:032x}_{}", (i as u128).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835), i % 20);
        let seg = cvq::data::synthetic::segment(&name, frames, i as u64);
        std::fs::write(dir.join(&name), seg.to_npy_bytes()?)?;
    }
    eprintln!("wrote {count} segments of {frames} frames to {}", dir.display());
    Ok(())
}
