//! sonomask: an edge runtime for text-prompted medical image segmentation.
//!
//! Data flows one way, and the modules are laid out by stage (docs/ARCHITECTURE.md):
//!
//! ```text
//! input -> preprocess, text -> model -> mask -> prompting -> output -> stream -> link
//!                                   \_______ pipelines (glue) _______/
//! ```
//!
//! A module imports only stages to its left (and the platform modules: `bounded`, `heap`,
//! `timing`, `cpu`, `logger`); the CLI sits on top. The core (everything but the CLI and the
//! I/O edges) is pure and testable without a device.

// Platform: bounded reads, the kept heap, timings, CPU features, logging, board profiles.
pub mod board;
pub mod bounded;
pub mod cpu;
pub mod heap;
pub mod logger;
pub mod timing;

// The stages, in data-path order.
pub mod input;
pub mod link;
pub mod mask;
pub mod model;
pub mod output;
pub mod pipelines;
pub mod preprocess;
pub mod prompting;
pub mod stream;
pub mod text;

// On top.
pub mod cli;
#[doc(hidden)]
pub mod fuzzing;

/// The slice kernels and the process's kernel choice (their own crate, `crates/sonomask-kernels`).
pub use sonomask_kernels as simd;
/// The wire protocol (its own `no_std` crate, `crates/sonomask-wire`).
pub use sonomask_wire as wire;
