//! The neural network: its spec (shared with the trainer) and its int8 safetensors weights.

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

/// `weights/NAME.safetensors`, built in.
#[cfg(feature = "default-weights")]
macro_rules! weights_file {
    ($name:literal) => {
        include_bytes!(concat!("../../weights/", $name, ".safetensors"))
    };
}

/// The built-in weights of earlier releases, by model id (FORMAT.md section 4), so that their
/// archives decode out of the box. A release that replaces `weights/default.safetensors` moves
/// the old file to `weights/cvq-X.Y.safetensors` (X.Y: the last release it was built into) and
/// adds its line here; a test checks each id against its file.
#[cfg(feature = "default-weights")]
const EARLIER_WEIGHTS: &[(&str, &[u8])] = &[
    ("e31c4e8e8d0eb6cfd2a052fef2f1a96866bd28379218255ec34b28359a981aed", weights_file!("cvq-0.2")), // 0.1, 0.2
    ("8b5dbf4780c7c83f10f0fa4388bfb64e0985a2b66c1342f5592c783319482206", weights_file!("cvq-0.4")), // 0.3, 0.4
    ("cd27668013563bab8232e9312610c2272d66d3e18f1031ccceae86fd690cba8a", weights_file!("cvq-0.5")), // 0.5
];
#[cfg(not(feature = "default-weights"))]
const EARLIER_WEIGHTS: &[(&str, &[u8])] = &[];

/// The earlier releases' built-in weights: their model ids in hex and their files' bytes.
pub fn earlier_weights() -> &'static [(&'static str, &'static [u8])] {
    EARLIER_WEIGHTS
}
