//! sonomask's own tract operators, swapped into a model after tract has optimized it, for the
//! nodes where tract's stock operator was measured slow (see docs/BENCHMARKS.md, "Own
//! operators"). Each replacement computes the same function as the op it replaces (tests
//! compare them), falls back to the stock op on any input it was not built for, and can be
//! switched off with `SONOMASK_STOCK_OPS=1` (then every model runs tract's operators only).
//!
//! This uses tract's extension points (a crate-defined `TypedOp` put into the optimized graph);
//! tract itself is not patched.

pub mod add;
pub mod attention;
pub mod conv3x3;
pub mod conv_packed;
pub mod deconv;
pub mod depthwise_nhwc;
pub mod few_keys;
pub mod gelu;
pub mod gemm;
mod heads_first;
pub mod int8_linear;
pub mod layer_norm;
pub mod mbconv;
pub mod movement;
pub mod pad;
pub mod patch_embed;
pub mod softmax;

pub(crate) use sonomask_kernels::ring;
/// The packed linear-layer and 1x1-convolution kernels and the padded-row ring live in the
/// kernels crate (pure slice kernels); re-exported under their old paths.
pub use sonomask_kernels::{linear, pointwise};

mod exec;
mod graph;
mod rewrite;
#[cfg(test)]
mod testing;
#[cfg(test)]
pub(crate) use testing::{compare_with_tract, max_abs_diff, run_one, test_values};

pub use add::AddSame;
pub use attention::Attention;
pub use conv_packed::Conv3x3Packed;
pub use conv3x3::Conv3x3;
pub use deconv::Deconv2x2;
pub use depthwise_nhwc::DepthwiseNhwc3x3;
pub use few_keys::FewKeysAttention;
pub use gelu::Gelu;
pub use gemm::{Gemm, View};
pub use int8_linear::{Im2col3x3, Int8Linear, U8Out};
pub use layer_norm::AxisLayerNorm;
pub use mbconv::MbConv;
pub use movement::MoveRuns;
pub use pad::RowPad;
pub use patch_embed::PatchEmbed;
pub use rewrite::{
    Fusions, OWN_OPS_OFF_ENV, Replaced, STOCK_OPS_ENV, stock_ops_requested, substitute,
    substitute_decluttered, substitute_decluttered_with, substitute_with,
};
pub use softmax::RowSoftmax;

use tract_onnx::prelude::*;

/// The values of an f32 tensor held in plain memory.
pub fn f32s(t: &Tensor) -> TractResult<&[f32]> {
    t.try_as_plain_ram()?.as_slice::<f32>()
}
