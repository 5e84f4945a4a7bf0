//! sonomask: an edge runtime for text-prompted medical image segmentation.
//!
//! Data flows one way: source -> [`preprocess`] -> [`model`] -> prompts -> [`mask`] -> sink.
//! The core (everything but the CLI and I/O edges) is pure and testable without a device.

pub mod autoprompt;
pub mod board;
pub mod bounded;
pub mod cine;
pub mod cli;
pub mod components;
pub mod cpu;
pub mod dataset;
pub mod dicom;
pub mod everything;
#[doc(hidden)]
pub mod fuzzing;
pub mod heap;
pub mod image_io;
pub mod link;
pub mod logger;
pub mod mask;
pub mod measure;
pub mod metrics;
pub mod model;
pub mod oracle;
pub mod overlay;
pub mod preprocess;
pub mod prompt;
pub mod saliency;
pub mod salip;
pub mod segment;
/// The slice kernels and the process's kernel choice (their own crate, `crates/sonomask-kernels`).
pub use sonomask_kernels as simd;
pub mod source;
pub mod stream;
pub mod text;
pub mod textseg;
pub mod timing;
/// The wire protocol (its own `no_std` crate, `crates/sonomask-wire`).
pub use sonomask_wire as wire;
