//! Writes a seeded random model in cvq's int8 safetensors format, for trying the neural path
//! before a trained model exists:
//! `cargo run --release --example random_weights -- OUT.safetensors [LAYERS WIDTH HEADS K MLP SEED]`

use cvq::network::{ModelSpec, Weights};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = args.first().expect("usage: random_weights OUT.safetensors [LAYERS WIDTH HEADS K MLP SEED]");
    let num = |i: usize, default: usize| args.get(i).map_or(Ok(default), |a| a.parse());
    let spec = ModelSpec {
        layers: num(1, 2)?,
        width: num(2, 128)?,
        heads: num(3, 4)?,
        context_frames: num(4, 2)?,
        mlp_width: num(5, 512)?,
    };
    let w = Weights::random(spec, num(6, 1)? as u64)?;
    std::fs::write(out, w.to_bytes()?)?;
    eprintln!("wrote {out}: {spec:?}");
    Ok(())
}
