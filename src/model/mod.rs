//! The neural model: its spec (shared with the trainer) and its int8 safetensors weights.

pub mod spec;
pub mod weights;

pub use spec::ModelSpec;
pub use weights::{Linear, Weights};
