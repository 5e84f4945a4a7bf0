//! Text side of the text-prompted pipelines: open_clip's clean-up and BPE tokenizer ported
//! to Rust, and prompt banks (precomputed, model-bound text embeddings).

pub mod bpe;
pub mod clean;
pub mod prompts;

mod tables;

pub use bpe::{Tokenizer, Tokens};
