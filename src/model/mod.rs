//! The neural model: its spec (shared with the trainer) and its int8 safetensors weights.

pub mod spec;
pub mod weights;

pub use spec::ModelSpec;
pub use weights::{Linear, Weights};

/// The weights built into this cvq (`weights/default.safetensors`), unless it was built
/// without the `default-weights` feature (the challenge decoder, which ships them beside it).
pub fn default_weights() -> Option<&'static [u8]> {
    #[cfg(feature = "default-weights")]
    return Some(include_bytes!("../../weights/default.safetensors"));
    #[cfg(not(feature = "default-weights"))]
    None
}
