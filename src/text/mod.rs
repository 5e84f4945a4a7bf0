//! Text side of the text-prompted pipelines: open_clip's clean-up and BPE tokenizer ported
//! to Rust: the text side of preprocessing (prompt banks, which need the text model, are
//! `prompting::bank`).

pub mod bpe;
pub mod clean;

mod tables;

pub use bpe::{Tokenizer, Tokens};
