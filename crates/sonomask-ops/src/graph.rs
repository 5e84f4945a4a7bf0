//! Reading a typed graph for the rewrites: who reads a node, which binary op it is, its
//! constant inputs.

use tract_core::ops::binary::TypedBinOp;
use tract_onnx::prelude::*;

/// The node that alone reads node `id`'s only output, if there is one.
pub(crate) fn sole_user(model: &TypedModel, id: usize) -> Option<&TypedNode> {
    let node = &model.nodes[id];
    let succ = &node.outputs.first()?.successors;
    let outputs = model.output_outlets().ok()?;
    (node.outputs.len() == 1 && succ.len() == 1 && !outputs.contains(&OutletId::new(id, 0)))
        .then(|| &model.nodes[succ[0].node])
}

/// Whether `node` is the binary op `B`.
pub(crate) fn is_bin<B: tract_core::ops::binary::BinMiniOp>(node: &TypedNode) -> bool {
    node.inputs.len() == 2 && node.op_as::<TypedBinOp>().is_some_and(|b| b.0.is::<B>())
}

/// The constant on input `slot` of `node`.
pub(crate) fn konst(model: &TypedModel, node: &TypedNode, slot: usize) -> Option<Arc<Tensor>> {
    model
        .outlet_fact(*node.inputs.get(slot)?)
        .ok()?
        .konst
        .clone()
}

/// The constant on the input of binary `node` that does not come from node `from`.
pub(crate) fn other_konst(
    model: &TypedModel,
    node: &TypedNode,
    from: usize,
) -> Option<Arc<Tensor>> {
    let slot = node.inputs.iter().position(|i| i.node != from)?;
    konst(model, node, slot)
}
