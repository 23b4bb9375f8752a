//! cvq: lossless compression of commaVQ driving-video tokens.
//!
//! The stages, in pipeline order: `data` reads and writes .npy segments, `predict` models
//! the next token as an integer frequency table, `code` turns tables and tokens into bytes,
//! `archive` lays the coded segments out on disk, `pipeline` joins them, `cli` is the binary.

pub mod archive;
pub mod cli;
pub mod code;
pub mod data;
pub mod network;
pub mod pipeline;
pub mod predict;
