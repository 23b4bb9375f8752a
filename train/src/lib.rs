//! cvq-train: trains the runtime's model spec in float with candle, fine-tunes it with int8
//! fake quantization, and exports the int8 safetensors the runtime's integer engine loads.
//! Data streams from shards or files with bounded memory (`stream`); checkpoints hold
//! everything needed to resume exactly (`checkpoint`).

pub mod checkpoint;
pub mod data;
pub mod embedding;
pub mod export;
pub mod hub;
pub mod model;
pub mod optim;
pub mod softmax;
pub mod stream;
pub mod train;
