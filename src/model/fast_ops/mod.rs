//! sonomask's own tract operators, swapped into a model after tract has optimized it, for the
//! nodes where tract's stock operator was measured slow (see docs/BENCHMARKS.md, "Own
//! operators"). Each replacement computes the same function as the op it replaces (tests
//! compare them), falls back to the stock op on any input it was not built for, and can be
//! switched off with `SONOMASK_STOCK_OPS=1` (then every model runs tract's operators only).
//!
//! This uses tract's extension points (a crate-defined `TypedOp` put into the optimized graph);
//! tract itself is not patched.

pub mod depthwise;
pub mod pad;
pub mod softmax;

use tract_core::ops::array::Pad;
use tract_core::ops::cnn::Conv;
use tract_core::ops::nn::Softmax;
use tract_onnx::prelude::*;

use crate::simd::Kernel;
pub use depthwise::Depthwise3x3;
pub use pad::RowPad;
pub use softmax::RowSoftmax;

/// Environment variable that turns the replacements off (any value but `0`).
pub const STOCK_OPS_ENV: &str = "SONOMASK_STOCK_OPS";

/// Whether the environment asks for tract's stock operators only.
pub fn stock_ops_requested() -> bool {
    std::env::var(STOCK_OPS_ENV).is_ok_and(|v| v != "0" && !v.is_empty())
}

/// How many nodes of each kind were replaced.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Replaced {
    pub softmax: usize,
    pub pad: usize,
    pub depthwise: usize,
}

impl Replaced {
    pub fn total(&self) -> usize {
        self.softmax + self.pad + self.depthwise
    }
}

/// Replaces, in a decluttered model (before tract's code generation turns convolutions into
/// its own kernels), the convolutions one of our operators computes faster.
pub fn substitute_decluttered(model: &mut TypedModel, kernel: Kernel) -> TractResult<Replaced> {
    let mut done = Replaced::default();
    for id in 0..model.nodes.len() {
        let node = &model.nodes[id];
        let Some(conv) = node.op.downcast_ref::<Conv>() else {
            continue;
        };
        if node.inputs.len() != 3 {
            continue;
        }
        let x = model.outlet_fact(node.inputs[0])?;
        let k = model.outlet_fact(node.inputs[1])?;
        if let Some(op) = Depthwise3x3::replacing(conv, x, k, kernel) {
            model.nodes[id].op = Box::new(op);
            done.depthwise += 1;
        }
    }
    Ok(done)
}

/// Replaces, in an optimized model, every node one of our operators computes faster.
pub fn substitute(model: &mut TypedModel, kernel: Kernel) -> TractResult<Replaced> {
    let mut done = Replaced::default();
    for id in 0..model.nodes.len() {
        let node = &model.nodes[id];
        let Some(input) = node.inputs.first() else {
            continue;
        };
        let fact = model.outlet_fact(*input)?;
        let (dt, rank) = (fact.datum_type, fact.rank());
        let new: Option<Box<dyn TypedOp>> = if let Some(op) = node.op.downcast_ref::<Softmax>() {
            RowSoftmax::replacing(op, dt, rank, kernel).map(|o| {
                done.softmax += 1;
                Box::new(o) as _
            })
        } else if let Some(op) = node.op.downcast_ref::<Pad>() {
            RowPad::replacing(op, dt).map(|o| {
                done.pad += 1;
                Box::new(o) as _
            })
        } else {
            None
        };
        if let Some(op) = new {
            model.nodes[id].op = op;
        }
    }
    Ok(done)
}
