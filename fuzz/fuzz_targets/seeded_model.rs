//! The small seeded model that the fuzz targets decode neural and mixed payloads with, and
//! that `examples/fuzz_seeds.rs` writes their seed archives with: one layer of width 16, so a
//! run gets through many inputs.

use cvq::network::{ModelSpec, Weights};
use cvq::predict::transformer::Transformer;
use std::sync::{Arc, OnceLock};

pub fn seeded_model() -> Arc<Transformer> {
    static MODEL: OnceLock<Arc<Transformer>> = OnceLock::new();
    let spec = ModelSpec { kv_heads: 1, reach_rows: 1, reach_cols: 1, ..ModelSpec::new(1, 16, 2, 1, 16) };
    Arc::clone(MODEL.get_or_init(|| Arc::new(Transformer::new(&Weights::random(spec, 1).expect("a valid spec")))))
}
