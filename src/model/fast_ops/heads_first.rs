//! Projections of channels-first tokens written channels-first: a rewrite of the decluttered
//! graph (einsums, before they become [`super::Gemm`]s) that changes where a product's columns
//! go, not what it computes.
//!
//! Why: SAM's decoder keeps the image tokens as the encoder made them, `[256, 4096]` (channels
//! first), and projects them with `x^T . W` to `[4096, 128]` for the token-to-image attention
//! (keys and values). Written that way the product reads its A operand down columns (each of a
//! block's rows 16 KiB apart), which no kernel here ran faster than the sgemm's packing (62-67
//! GFLOP/s; docs/BENCHMARKS.md, seventh step). Written channels-first, `W^T . x` is a 1x1
//! convolution: constant weights on the left, rows of `x` read in order, rows of C written in
//! order, the case [`super::pointwise`] was built for. The attention that reads the projection
//! then finds each head's keys and values as contiguous rows of 4096 (its score product reads B
//! rows in order, its value product takes dot products of contiguous rows) instead of 16
//! values every 128.
//!
//! The rewrite: the product's last output axis (the projection's columns, `N`) moves to the
//! front; a bias added along it follows; reshapes of the other axes shift by one, the reshape
//! that splits `N` into heads moves to the front; each einsum reading the result reads it with
//! its axes in the new order (the same function, relabelled). Only where every reader either
//! sums over the token axis or writes it as its own last axis, so the readers keep writing
//! their outputs in order (the image-to-token attention, whose queries are the tokens, is left
//! as it is: its fused [`super::Attention`] wants them token-major).
//!
//! Measured on the decoder (`DECODER=1 OFF=heads_first ROUNDS=30 cargo bench --bench
//! encoder_ab`, same process, interleaved): 1.048x at 1 thread, 1.014x at 2; each projection
//! 4.0 -> 3.5 ms, each score product 1.0 -> 0.6 ms (1 thread).

use tract_core::internal::*;
use tract_core::ops::binary::TypedBinOp;
use tract_core::ops::change_axes::AxisOp;
use tract_core::ops::einsum::EinSum;
use tract_core::ops::math::Add;

use super::{konst, sole_user};

/// One matched projection: the product, the chain after it, the einsums that read its end.
struct Plan {
    product: usize,
    /// Nodes after the product, in order, each the previous one's only user.
    chain: Vec<Step>,
    /// Number of leading axes of the end's output that are tokens (the rest come from `N`).
    token_axes: usize,
    /// Readers: (node, slot reading the end).
    readers: Vec<(usize, usize)>,
}

enum Step {
    /// A reshape of token axes only.
    Tokens(usize, TVec<TDim>, TVec<TDim>),
    /// A constant added along `N` only.
    Bias(Arc<Tensor>),
    /// The reshape splitting `N` (the last axis) into these sizes.
    Split(TVec<TDim>, TVec<TDim>),
}

/// Rewrites every matching projection; returns how many.
pub(super) fn rewrite(model: &mut TypedModel) -> TractResult<usize> {
    let mut done = 0;
    for id in 0..model.nodes.len() {
        if let Some(plan) = pattern(model, id) {
            apply(model, &plan)?;
            done += 1;
        }
    }
    Ok(done)
}

/// The axis labels of each input and of the output of `op`.
fn labels(op: &EinSum) -> (TVec<String>, String) {
    let (inputs, mut outputs) = op.axes.to_strs();
    (inputs, outputs.swap_remove(0))
}

fn pattern(model: &TypedModel, id: usize) -> Option<Plan> {
    let node = &model.nodes[id];
    let op = node.op_as::<EinSum>()?;
    if op.q_params.is_some()
        || op.operating_dt != DatumType::F32
        || node.inputs.len() != 2
        || node.outputs.len() != 1
        || op.axes.output_count() != 1
    {
        return None;
    }
    let (inputs, output) = labels(op);
    let weights = (0..2).find(|&s| {
        konst(model, node, s).is_some_and(|w| w.rank() == 2 && w.datum_type() == DatumType::F32)
    })?;
    let x = &inputs[1 - weights];
    let w: Vec<char> = inputs[weights].chars().collect();
    let out: Vec<char> = output.chars().collect();
    let [k, n] = w[..] else { return None };
    // W is `[K, N]`: K summed with x, N the output's last axis; every other output axis is x's.
    let last = *out.last()?;
    if !x.contains(k)
        || out.contains(&k)
        || x.contains(n)
        || last != n
        || out.len() < 2
        || out[..out.len() - 1].iter().any(|c| !x.contains(*c))
    {
        return None;
    }
    // Worth it only where x's innermost axis is a token axis (x channels-first).
    if !out.contains(&x.chars().last()?) {
        return None;
    }
    let fact = &node.outputs[0].fact;
    let rank = fact.rank();
    let nlen = fact.shape.as_concrete()?[rank - 1];
    let mut chain = Vec::new();
    let (mut end, mut rank, mut token_axes) = (id, rank, rank - 1);
    let mut split = false;
    while let Some(next) = sole_user(model, end) {
        if next.outputs[0].fact.datum_type != DatumType::F32 {
            break;
        }
        let step = match next.op_as::<AxisOp>() {
            Some(AxisOp::Reshape(at, from, to)) if !split && at + from.len() < rank => {
                Step::Tokens(*at, from.clone(), to.clone())
            }
            Some(AxisOp::Reshape(at, from, to))
                if !split && *at == rank - 1 && from.len() == 1 && from[0] == nlen.to_dim() =>
            {
                split = true;
                Step::Split(from.clone(), to.clone())
            }
            _ => match bias_along_last(model, next, end, rank, nlen) {
                Some(b) if !split => Step::Bias(b),
                _ => break,
            },
        };
        let out_rank = next.outputs[0].fact.rank();
        if let Step::Tokens(..) = step {
            token_axes = token_axes + out_rank - rank;
        }
        rank = out_rank;
        chain.push(step);
        end = next.id;
    }
    let readers = readers(model, end, token_axes)?;
    Some(Plan {
        product: id,
        chain,
        token_axes,
        readers,
    })
}

/// The constant `next` adds to node `from`'s output, if it varies along the last axis only.
fn bias_along_last(
    model: &TypedModel,
    next: &TypedNode,
    from: usize,
    rank: usize,
    nlen: usize,
) -> Option<Arc<Tensor>> {
    let bin = next.op_as::<TypedBinOp>()?;
    if next.inputs.len() != 2 || !bin.0.is::<Add>() {
        return None;
    }
    let slot = next.inputs.iter().position(|i| i.node != from)?;
    let b = konst(model, next, slot)?;
    let shape = b.shape();
    let ok = b.datum_type() == DatumType::F32
        && shape.len() <= rank
        && shape.last() == Some(&nlen)
        && shape[..shape.len() - 1].iter().all(|&d| d == 1)
        && next.outputs[0].fact.shape == model.outlet_fact(OutletId::new(from, 0)).ok()?.shape;
    ok.then_some(b)
}

/// The einsums reading node `end`'s output, with the slot each reads it on, if every user is
/// one that sums over the token axes or writes them as its last axes (and none is an output).
fn readers(model: &TypedModel, end: usize, token_axes: usize) -> Option<Vec<(usize, usize)>> {
    let outlet = OutletId::new(end, 0);
    if model.output_outlets().ok()?.contains(&outlet) {
        return None;
    }
    let succ = &model.nodes[end].outputs[0].successors;
    if succ.is_empty() {
        return None;
    }
    let mut readers = Vec::new();
    for s in succ {
        let user = &model.nodes[s.node];
        let op = user.op_as::<EinSum>()?;
        if op.q_params.is_some() || user.inputs.iter().filter(|&&i| i == outlet).count() != 1 {
            return None;
        }
        let (inputs, output) = labels(op);
        let tokens: String = inputs[s.slot].chars().take(token_axes).collect();
        let summed = tokens.chars().all(|c| !output.contains(c));
        if !summed && !output.ends_with(&tokens) {
            return None;
        }
        readers.push((s.node, s.slot));
    }
    Some(readers)
}

fn apply(model: &mut TypedModel, plan: &Plan) -> TractResult<()> {
    let node = &model.nodes[plan.product];
    let op = node.op_as::<EinSum>().context("not an einsum")?;
    let (inputs, output) = labels(op);
    let mut moved: Vec<char> = output.chars().collect();
    moved.rotate_right(1);
    let moved: String = moved.into_iter().collect();
    let axes = AxesMapping::from_strs(&inputs, &[moved])?;
    let mut patch = TypedModelPatch::default();
    let taps = patch.taps(model, &node.inputs)?;
    let name = &node.name;
    let mut wire = patch.wire_node(
        format!("{name}.heads_first"),
        EinSum::new(axes, DatumType::F32),
        &taps,
    )?;
    // Biases first (they commute with the token reshapes): right after the product, the
    // product folds them in.
    let biases = plan.chain.iter().filter(|s| matches!(s, Step::Bias(_)));
    let others = plan.chain.iter().filter(|s| !matches!(s, Step::Bias(_)));
    for (i, step) in biases.chain(others).enumerate() {
        let rank = patch.outlet_fact(wire[0])?.rank();
        let name = format!("{name}.heads_first.{i}");
        wire = match step {
            Step::Tokens(at, from, to) => patch.wire_node(
                name,
                AxisOp::Reshape(at + 1, from.clone(), to.clone()),
                &wire,
            )?,
            Step::Bias(b) => {
                let mut shape = vec![1; rank];
                shape[0] = *b.shape().last().context("scalar bias")?;
                let b = b.clone().into_tensor().into_shape(&shape)?;
                let k = patch.add_const(format!("{name}.bias"), b)?;
                patch.wire_node(name, tract_core::ops::math::add(), &[wire[0], k])?
            }
            Step::Split(from, to) => {
                patch.wire_node(name, AxisOp::Reshape(0, from.clone(), to.clone()), &wire)?
            }
        };
    }
    for &(reader, slot) in &plan.readers {
        let user = &model.nodes[reader];
        let op = user.op_as::<EinSum>().context("not an einsum")?;
        let (mut inputs, output) = labels(op);
        let mut order: Vec<char> = inputs[slot].chars().collect();
        order.rotate_left(plan.token_axes);
        inputs[slot] = order.into_iter().collect();
        let axes = AxesMapping::from_strs(&inputs, &[output])?;
        let mut taps = patch.taps(model, &user.inputs)?;
        taps[slot] = wire[0];
        let out = patch.wire_node(
            format!("{}.heads_first", user.name),
            EinSum::new(axes, op.operating_dt),
            &taps,
        )?;
        patch.shunt_outside(model, OutletId::new(reader, 0), out[0])?;
    }
    patch.apply(model)
}

#[cfg(test)]
mod tests {
    use super::super::{Replaced, substitute_decluttered, test_values};
    use crate::model::onnx::f32s;
    use crate::simd::Kernel;
    use tract_core::internal::*;
    use tract_core::ops::change_axes::AxisOp;
    use tract_core::ops::einsum::EinSum;

    const K: usize = 24;
    const N: usize = 32;
    const H: usize = 4;
    const T: usize = 7;

    fn konst(m: &mut TypedModel, name: &str, seed: &mut u64, shape: &[usize]) -> OutletId {
        let v = test_values(seed, shape.iter().product());
        m.add_const(name, Tensor::from_shape(shape, &v).unwrap())
            .unwrap()
    }

    fn wire(
        m: &mut TypedModel,
        name: &str,
        op: impl Into<Box<dyn TypedOp>>,
        i: &[OutletId],
    ) -> OutletId {
        m.wire_node(name, op, i).unwrap()[0]
    }

    /// A channels-first projection `x^T . W + b` split into heads, as SAM's decoder has them:
    /// `tokens` is x's token shape (one axis, or two merged by a reshape after the product).
    fn projection(
        m: &mut TypedModel,
        name: &str,
        x: OutletId,
        tokens: &[usize],
        seed: &mut u64,
    ) -> OutletId {
        let w = konst(m, &format!("{name}.w"), seed, &[K, N]);
        let b = konst(m, &format!("{name}.b"), seed, &[1, N]);
        let mut y = if tokens.len() == 1 {
            wire(
                m,
                name,
                EinSum::new("akm,kn->mn".parse().unwrap(), f32::datum_type()),
                &[x, w],
            )
        } else {
            let y = wire(
                m,
                name,
                EinSum::new("akbm,kn->bmn".parse().unwrap(), f32::datum_type()),
                &[x, w],
            );
            let from = tokens.iter().map(|t| t.to_dim()).collect();
            let merged = tvec![tokens.iter().product::<usize>().to_dim()];
            wire(
                m,
                &format!("{name}.merge"),
                AxisOp::Reshape(0, from, merged),
                &[y],
            )
        };
        y = wire(
            m,
            &format!("{name}.bias"),
            tract_core::ops::math::add(),
            &[y, b],
        );
        let split = AxisOp::Reshape(1, tvec![N.to_dim()], tvec![H.to_dim(), (N / H).to_dim()]);
        wire(m, &format!("{name}.heads"), split, &[y])
    }

    /// Token-to-image attention over `tokens` image tokens (queries `q` attend to projected
    /// keys and values of x); with `queries_are_tokens`, also an image-to-token score product
    /// whose rows are the tokens (left as it is by the rewrite).
    fn model(tokens: &[usize], queries_are_tokens: bool) -> (TypedModel, TVec<TValue>) {
        let mut seed = 7u64;
        let mut m = TypedModel::default();
        let x_shape: Vec<usize> = [1, K].iter().chain(tokens).copied().collect();
        let x = m.add_source("x", f32::fact(&x_shape)).unwrap();
        let q = m.add_source("q", f32::fact([T, H, N / H])).unwrap();
        let k = projection(&mut m, "k", x, tokens, &mut seed);
        let v = projection(&mut m, "v", x, tokens, &mut seed);
        let scores = if queries_are_tokens {
            EinSum::new("mhd,thd->hmt".parse().unwrap(), f32::datum_type())
        } else {
            EinSum::new("thd,mhd->htm".parse().unwrap(), f32::datum_type())
        };
        let (first, second) = if queries_are_tokens { (k, q) } else { (q, k) };
        let s = wire(&mut m, "scores", scores, &[first, second]);
        let out = if queries_are_tokens {
            s
        } else {
            let pv = EinSum::new("htm,mhd->thd".parse().unwrap(), f32::datum_type());
            wire(&mut m, "values", pv, &[s, v])
        };
        m.select_output_outlets(&[out]).unwrap();
        let n: usize = x_shape.iter().product();
        let inputs = tvec![
            Tensor::from_shape(&x_shape, &test_values(&mut seed, n))
                .unwrap()
                .into_tvalue(),
            Tensor::from_shape(&[T, H, N / H], &test_values(&mut seed, N * T))
                .unwrap()
                .into_tvalue(),
        ];
        (m, inputs)
    }

    fn compare(tokens: &[usize], queries_are_tokens: bool) -> (Replaced, f32) {
        let (stock, inputs) = model(tokens, queries_are_tokens);
        let run = |m: TypedModel| {
            let out = m.into_runnable().unwrap().run(inputs.clone()).unwrap();
            f32s(&out[0]).unwrap().to_vec()
        };
        let want = run(stock.clone().into_optimized().unwrap());
        let mut ours = stock;
        ours.declutter().unwrap();
        let done = substitute_decluttered(&mut ours, Kernel::best()).unwrap();
        ours.optimize().unwrap();
        let got = run(ours);
        assert_eq!(got.len(), want.len());
        let scale = want.iter().fold(1f32, |a, v| a.max(v.abs()));
        let diff = want
            .iter()
            .zip(&got)
            .map(|(a, b)| (a - b).abs() / scale)
            .fold(0f32, f32::max);
        (done, diff)
    }

    #[test]
    fn token_to_image_projections_are_written_heads_first() {
        // 256 tokens or more: the 1x1 kernel's smallest C.
        for tokens in [&[300][..], &[16, 21][..]] {
            let (done, diff) = compare(tokens, false);
            assert_eq!(done.heads_first, 2, "{tokens:?}: keys and values");
            assert_eq!(done.gemm_direct, 2, "{tokens:?}: both by the 1x1 kernel");
            assert_eq!(done.gemm_bias, 2, "{tokens:?}: biases folded");
            assert!(diff < 1e-5, "{tokens:?}: {diff}");
        }
    }

    #[test]
    fn token_major_readers_are_left_as_they_are() {
        // The keys' reader has the tokens as rows: only the values (read by nobody) would
        // qualify, and a projection nobody reads is no projection to rewrite.
        let (done, diff) = compare(&[70], true);
        assert_eq!(done.heads_first, 0);
        assert!(diff < 1e-5, "{diff}");
    }
}
