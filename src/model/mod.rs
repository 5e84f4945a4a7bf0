//! The model layer: manifest, I/O contracts, tract loading, and the models themselves.

pub mod clip;
pub mod contract;
/// The own tract operators and their rewrite passes (`crates/sonomask-ops`).
pub use sonomask_ops as fast_ops;
pub mod manifest;
pub mod native_decoder;
pub mod onnx;
pub mod precision_table;
pub mod quant_check;
pub mod sam;

pub use clip::{ClipImageEncoder, ClipTextEncoder};
pub use manifest::{Family, Manifest, Precision, Role};
pub use sam::{DecoderOutput, Embedding, SamDecoder, SamEncoder};
