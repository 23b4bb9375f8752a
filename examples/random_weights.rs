//! Writes a seeded random model in cvq's int8 safetensors format, for trying the neural path
//! before a trained model exists:
//! `cargo run --release --example random_weights -- OUT.safetensors [LAYERS WIDTH HEADS K MLP SEED [KV_HEADS REACH_ROWS REACH_COLS]]`
//! (the last three give a model of the second weights format: FORMAT.md section 3.2.2).

use cvq::network::{ModelSpec, Weights};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage =
        "usage: random_weights OUT.safetensors [LAYERS WIDTH HEADS K MLP SEED [KV_HEADS REACH_ROWS REACH_COLS]]";
    let out = args.first().expect(usage);
    let num = |i: usize, default: usize| args.get(i).map_or(Ok(default), |a| a.parse());
    let spec = ModelSpec::new(num(1, 2)?, num(2, 128)?, num(3, 4)?, num(4, 2)?, num(5, 512)?);
    let (reach_rows, reach_cols) = (num(8, spec.reach_rows)?, num(9, spec.reach_cols)?);
    let spec = ModelSpec { kv_heads: num(7, spec.heads)?, reach_rows, reach_cols, ..spec };
    let w = Weights::random(spec, num(6, 1)? as u64)?;
    std::fs::write(out, w.to_bytes()?)?;
    eprintln!("wrote {out}: {spec:?}");
    Ok(())
}
