//! cvq-train: trains the runtime's model spec in float with candle, fine-tunes it with int8
//! fake quantization, and exports the int8 safetensors the runtime's integer engine loads.

pub mod data;
pub mod export;
pub mod hub;
pub mod model;
pub mod train;
