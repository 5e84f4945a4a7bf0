//! Projections of channels-first tokens written channels-first: a rewrite of the decluttered
//! graph (einsums, before they become [`crate::Gemm`]s) that changes where a product's columns
//! go, not what it computes.
//!
//! Why: SAM's decoder keeps the image tokens as the encoder made them, `[256, 4096]` (channels
//! first), and projects them with `x^T . W` to `[4096, 128]` for its attentions. Written that
//! way the product reads its A operand down columns (each of a block's rows 16 KiB apart),
//! which no kernel here ran faster than the sgemm's packing (docs/BENCHMARKS.md, appendix,
//! seventh step). Written channels-first, `W^T . x` is a 1x1 convolution: constant weights on
//! the left, rows of `x` read in order, rows of C written in order, the case
//! [`crate::pointwise`] was built for.
//!
//! The rewrite: the product's last output axis (the projection's columns, `N`) moves to the
//! front; a bias added along it follows; reshapes of the token axes shift behind it, reshapes of
//! the rest (the split of `N` into heads) move to the front; each einsum reading the result
//! reads it with its axes in the new order (the same function, relabelled). Two kinds of
//! readers:
//! - einsums that sum over the token axes or write them as their own last axes (the
//!   token-to-image attention's keys and values: its score product then reads each head's keys
//!   as contiguous rows of 4096, its value product takes dot products of contiguous rows);
//! - an attention whose queries are the tokens over a few keys (the image-to-token attention):
//!   scores, scale, softmax and product with v become one [`FewKeysAttention`] that reads the
//!   queries channels-first and writes its output channels-first, whose readers (the output
//!   projection, then a 1x1 convolution too) are rewritten the same way.
//!
//! Measured on the decoder with `DECODER=1 OFF=heads_first cargo bench --bench encoder_ab`
//! (figures: docs/BENCHMARKS.md, appendix, eighth step).

use tract_core::internal::*;
use tract_core::ops::binary::TypedBinOp;
use tract_core::ops::change_axes::AxisOp;
use tract_core::ops::einsum::EinSum;
use tract_core::ops::math::{Add, Mul};
use tract_core::ops::nn::{Softmax, SoftmaxKind};

use crate::few_keys::{FewKeysAttention, Operand};
use crate::gemm::strides;
use crate::graph::{konst, sole_user};
use sonomask_kernels::Kernel;

/// What follows a rewritten tensor: logically `[tokens..., rest...]`, stored `[rest...,
/// tokens...]` from the rewrite on.
struct Chain {
    /// Nodes after the start, in order, each the previous one's only user, as they are written
    /// in the new layout.
    steps: Vec<Step>,
    /// Token axes at the start and at the end of the chain.
    tokens_in: usize,
    tokens_out: usize,
    /// The node whose output the readers read (the start or the chain's last node).
    end: usize,
}

enum Step {
    /// A reshape, as it applies to the new layout.
    Reshape(Box<AxisOp>),
    /// A constant added along the rest axes only: those dims (the token dims are 1).
    Bias(Arc<Tensor>, TVec<usize>),
}

/// Rewrites every matching projection; returns how many were rewritten (each with its
/// attention where it has one), and how many attentions were made [`FewKeysAttention`]s.
pub(super) fn rewrite(
    model: &mut TypedModel,
    kernel: Kernel,
    few_keys_on: bool,
) -> TractResult<(usize, usize)> {
    let (mut done, mut attentions) = (0, 0);
    for id in 0..model.nodes.len() {
        let Some(chain) = projection(model, id) else {
            continue;
        };
        if let Some(readers) = readers(model, chain.end, chain.tokens_out) {
            let mut patch = TypedModelPatch::default();
            let wire = heads_first(&mut patch, model, id, &chain)?;
            rewire(&mut patch, model, &readers, wire, chain.tokens_out)?;
            patch.apply(model)?;
            done += 1;
        } else if few_keys_on && let Some(att) = few_keys(model, &chain, kernel) {
            let mut patch = TypedModelPatch::default();
            let q = heads_first(&mut patch, model, id, &chain)?;
            // The op's q shape is the chain's end rotated (`few_keys`); wiring checks it.
            let inputs = patch.taps(model, &att.kv)?;
            let out = patch.wire_node(
                format!("{}.few_keys", model.nodes[att.scores].name),
                att.op,
                &[q, inputs[0], inputs[1]],
            )?[0];
            let out = emit(&mut patch, out, &att.after, &model.nodes[att.values].name)?;
            rewire(&mut patch, model, &att.readers, out, att.after.tokens_out)?;
            patch.apply(model)?;
            done += 1;
            attentions += 1;
        }
    }
    Ok((done, attentions))
}

/// The axis labels of each input and of the output of `op`.
fn labels(op: &EinSum) -> (TVec<String>, String) {
    let (inputs, mut outputs) = op.axes.to_strs();
    (inputs, outputs.swap_remove(0))
}

/// The f32 einsum at `id` with two inputs and one output, and its labels.
fn einsum(model: &TypedModel, id: usize) -> Option<(&EinSum, TVec<String>, String)> {
    let node = &model.nodes[id];
    let op = node.op_as::<EinSum>()?;
    let plain = op.q_params.is_none()
        && op.operating_dt == DatumType::F32
        && node.inputs.len() == 2
        && node.outputs.len() == 1
        && op.axes.output_count() == 1;
    plain.then(|| {
        let (i, o) = labels(op);
        (op, i, o)
    })
}

/// The chain after einsum `id` if it is a projection `x^T . W` of channels-first tokens: W
/// constant `[K, N]`, N the output's last axis, every other output axis x's, x's innermost axis
/// a token axis.
fn projection(model: &TypedModel, id: usize) -> Option<Chain> {
    let (_, inputs, output) = einsum(model, id)?;
    let node = &model.nodes[id];
    let weights = (0..2).find(|&s| {
        konst(model, node, s).is_some_and(|w| w.rank() == 2 && w.datum_type() == DatumType::F32)
    })?;
    let x = &inputs[1 - weights];
    let w: Vec<char> = inputs[weights].chars().collect();
    let out: Vec<char> = output.chars().collect();
    let [k, n] = w[..] else { return None };
    let last = *out.last()?;
    if !x.contains(k)
        || out.contains(&k)
        || x.contains(n)
        || last != n
        || out.len() < 2
        || out[..out.len() - 1].iter().any(|c| !x.contains(*c))
        || !out.contains(&x.chars().last()?)
    {
        return None;
    }
    follow(model, id, out.len() - 1)
}

/// The reshapes and biases after node `start` (whose output has `tokens` leading token axes),
/// each the only user of the one before, as they apply once the layout is rotated.
fn follow(model: &TypedModel, start: usize, tokens: usize) -> Option<Chain> {
    let fact = &model.nodes[start].outputs.first()?.fact;
    let (mut rank, mut tok) = (fact.rank(), tokens);
    let mut chain = Chain {
        steps: Vec::new(),
        tokens_in: tokens,
        tokens_out: tokens,
        end: start,
    };
    let mut rest_reshaped = false;
    while let Some(next) = sole_user(model, chain.end) {
        let out = &next.outputs[0].fact;
        if out.datum_type != DatumType::F32 {
            break;
        }
        let step = match next.op_as::<AxisOp>() {
            Some(AxisOp::Reshape(at, from, to)) if at + from.len() <= tok => {
                let step = AxisOp::Reshape(at + rank - tok, from.clone(), to.clone());
                tok = tok + to.len() - from.len();
                step
            }
            Some(AxisOp::Reshape(at, from, to)) if *at >= tok => {
                rest_reshaped = true;
                AxisOp::Reshape(at - tok, from.clone(), to.clone())
            }
            Some(_) => break,
            None => match bias_on_rest(model, next, chain.end, tok).filter(|_| !rest_reshaped) {
                Some((b, dims)) => {
                    chain.steps.push(Step::Bias(b, dims));
                    chain.end = next.id;
                    continue;
                }
                None => break,
            },
        };
        chain.steps.push(Step::Reshape(Box::new(step)));
        rank = out.rank();
        chain.end = next.id;
    }
    chain.tokens_out = tok;
    Some(chain)
}

/// The constant `next` adds to node `from`'s output if it is 1 along the first `tokens` axes
/// and adds no axis, and its dims along the rest.
fn bias_on_rest(
    model: &TypedModel,
    next: &TypedNode,
    from: usize,
    tokens: usize,
) -> Option<(Arc<Tensor>, TVec<usize>)> {
    let bin = next.op_as::<TypedBinOp>()?;
    if next.inputs.len() != 2 || !bin.0.is::<Add>() {
        return None;
    }
    let slot = next.inputs.iter().position(|i| i.node != from)?;
    let b = konst(model, next, slot)?;
    let fact = model.outlet_fact(OutletId::new(from, 0)).ok()?;
    let rank = fact.rank();
    let lead = rank.checked_sub(b.rank())?;
    let mut dims: TVec<usize> = tvec![1; lead];
    dims.extend(b.shape().iter().copied());
    let ok = b.datum_type() == DatumType::F32
        && next.outputs[0].fact.shape == fact.shape
        && dims[..tokens].iter().all(|&d| d == 1);
    ok.then(|| (b, dims[tokens..].into()))
}

/// The einsums reading node `end`'s output, with the slot each reads it on, if every user is
/// one that sums over the token axes or writes them as its last axes (and none is an output).
fn readers(model: &TypedModel, end: usize, tokens: usize) -> Option<Vec<(usize, usize)>> {
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
        let (_, inputs, output) = einsum(model, s.node)?;
        let user = &model.nodes[s.node];
        if user.inputs.iter().filter(|&&i| i == outlet).count() != 1 {
            return None;
        }
        let toks: String = inputs[s.slot].chars().take(tokens).collect();
        let summed = toks.chars().all(|c| !output.contains(c));
        if !summed && !output.ends_with(&toks) {
            return None;
        }
        readers.push((s.node, s.slot));
    }
    Some(readers)
}

/// Wires projection `id` with its output rotated (`N` first), then its chain; returns the end.
fn heads_first(
    patch: &mut TypedModelPatch,
    model: &TypedModel,
    id: usize,
    chain: &Chain,
) -> TractResult<OutletId> {
    let node = &model.nodes[id];
    let op = node.op_as::<EinSum>().context("not an einsum")?;
    let (inputs, output) = labels(op);
    let mut moved: Vec<char> = output.chars().collect();
    moved.rotate_right(1);
    let moved: String = moved.into_iter().collect();
    let axes = AxesMapping::from_strs(&inputs, &[moved])?;
    let taps = patch.taps(model, &node.inputs)?;
    let product = EinSum::new(axes, DatumType::F32);
    let wire = patch.wire_node(format!("{}.heads_first", node.name), product, &taps)?[0];
    emit(patch, wire, chain, &node.name)
}

/// Wires `chain` after `wire` (already in the new layout). Biases come first (they are 1 along
/// the tokens, so they commute with the token reshapes; none follows a reshape of the rest):
/// right after a product, the product folds them in.
fn emit(
    patch: &mut TypedModelPatch,
    mut wire: OutletId,
    chain: &Chain,
    name: &str,
) -> TractResult<OutletId> {
    let biases = chain.steps.iter().filter(|s| matches!(s, Step::Bias(..)));
    let others = chain.steps.iter().filter(|s| !matches!(s, Step::Bias(..)));
    for (i, step) in biases.chain(others).enumerate() {
        let name = format!("{name}.heads_first.{i}");
        wire = match step {
            Step::Reshape(op) => patch.wire_node(name, (**op).clone(), &[wire])?[0],
            Step::Bias(b, dims) => {
                let mut shape: TVec<usize> = dims.clone();
                shape.extend(std::iter::repeat_n(1, chain.tokens_in));
                let b = b.clone().into_tensor().into_shape(&shape)?;
                let k = patch.add_const(format!("{name}.bias"), b)?;
                patch.wire_node(name, tract_core::ops::math::add(), &[wire, k])?[0]
            }
        };
    }
    Ok(wire)
}

/// Wires each reader again on `wire`, its slot's axes rotated like the data (the first
/// `tokens` axes last), in place of the old one.
fn rewire(
    patch: &mut TypedModelPatch,
    model: &TypedModel,
    readers: &[(usize, usize)],
    wire: OutletId,
    tokens: usize,
) -> TractResult<()> {
    for &(reader, slot) in readers {
        let user = &model.nodes[reader];
        let op = user.op_as::<EinSum>().context("not an einsum")?;
        let (mut inputs, output) = labels(op);
        let mut order: Vec<char> = inputs[slot].chars().collect();
        order.rotate_left(tokens);
        inputs[slot] = order.into_iter().collect();
        let axes = AxesMapping::from_strs(&inputs, &[output])?;
        let mut taps = patch.taps(model, &user.inputs)?;
        taps[slot] = wire;
        let out = patch.wire_node(
            format!("{}.heads_first", user.name),
            EinSum::new(axes, op.operating_dt),
            &taps,
        )?;
        patch.shunt_outside(model, OutletId::new(reader, 0), out[0])?;
    }
    Ok(())
}

/// An attention of the projected tokens (queries) over a few keys, found after a projection's
/// chain, with what it takes to put a [`FewKeysAttention`] in.
struct FewKeys {
    op: FewKeysAttention,
    /// The scores' and the values' einsums.
    scores: usize,
    values: usize,
    /// k and v.
    kv: [OutletId; 2],
    /// What follows the values (logically `[tokens, heads, dim_v]`), and its readers.
    after: Chain,
    readers: Vec<(usize, usize)>,
}

/// `softmax(scale q.k^T) . v` after the chain of a projection (q, one token axis and two more,
/// heads and channels), with k and v `[keys, heads, dim]` in any axis order, the values'
/// output `[tokens, heads, dim_v]` (heads and channels in any order) read by readers the
/// rotation keeps in order.
fn few_keys(model: &TypedModel, q: &Chain, kernel: Kernel) -> Option<FewKeys> {
    if q.tokens_out != 1 {
        return None;
    }
    let scores = sole_user(model, q.end)?;
    let (_, s_in, s_out) = einsum(model, scores.id)?;
    let qs = scores.inputs.iter().position(|i| i.node == q.end)?;
    let k_wire = scores.inputs[1 - qs];
    if k_wire.node == q.end {
        return None;
    }
    let qa: Vec<char> = s_in[qs].chars().collect();
    let &[m, ha, da] = &qa[..] else { return None };
    let ka: Vec<char> = s_in[1 - qs].chars().collect();
    let t = *ka.iter().find(|c| !qa.contains(c))?;
    let so: Vec<char> = s_out.chars().collect();
    // q [m, h, d] or [m, d, h]: h is the one in the output (a batch axis), d is summed.
    let (h, d) = if so.contains(&ha) { (ha, da) } else { (da, ha) };
    if ka.len() != 3
        || !ka.contains(&h)
        || !ka.contains(&d)
        || so.len() != 3
        || !so.contains(&m)
        || !so.contains(&h)
        || !so.contains(&t)
        || so.contains(&d)
    {
        return None;
    }
    // Then an optional scalar scale, a softmax over the keys, the product with v.
    let mut next = sole_user(model, scores.id)?;
    let mut scale = 1f32;
    if next.op_as::<TypedBinOp>().is_some_and(|b| b.0.is::<Mul>()) && next.inputs.len() == 2 {
        let k = crate::graph::other_konst(model, next, scores.id)?;
        if k.len() != 1 || k.datum_type() != DatumType::F32 {
            return None;
        }
        scale = k.cast_to_scalar::<f32>().ok()?;
        next = sole_user(model, next.id)?;
    }
    let sm = next.op_as::<Softmax>()?;
    let t_pos = so.iter().position(|&c| c == t)?;
    if *sm.axes != [t_pos]
        || sm.kind != SoftmaxKind::Softmax
        || sm.quant_output_dt.is_some()
        || next.outputs[0].fact.shape != scores.outputs[0].fact.shape
    {
        return None;
    }
    let values = sole_user(model, next.id)?;
    let (_, v_in, v_out) = einsum(model, values.id)?;
    let ps = values.inputs.iter().position(|i| i.node == next.id)?;
    let v_wire = values.inputs[1 - ps];
    // The probabilities read with the scores' labels; v carries t, h and its channels e.
    let pa: Vec<char> = v_in[ps].chars().collect();
    let va: Vec<char> = v_in[1 - ps].chars().collect();
    let vo: Vec<char> = v_out.chars().collect();
    if pa.len() != 3 || va.len() != 3 || vo.len() != 3 || v_wire.node == next.id {
        return None;
    }
    // Map the values' labels to the scores': its m, h, t are the probabilities' axes at the
    // positions the scores wrote them.
    let (vm, vh, vt) = (
        pa[so.iter().position(|&c| c == m)?],
        pa[so.iter().position(|&c| c == h)?],
        pa[t_pos],
    );
    let e = *va.iter().find(|&&c| c != vt && c != vh)?;
    if !va.contains(&vt)
        || !va.contains(&vh)
        || vo[0] != vm
        || !vo.contains(&vh)
        || !vo.contains(&e)
        || vo.contains(&vt)
    {
        return None;
    }
    let shape = |o: OutletId| {
        model
            .outlet_fact(o)
            .ok()?
            .shape
            .as_concrete()
            .map(TVec::from_slice)
    };
    let (k_shape, v_shape) = (shape(k_wire)?, shape(v_wire)?);
    let at = |labels: &[char], c: char| labels.iter().position(|&x| x == c);
    let (kst, vst) = (strides(&k_shape), strides(&v_shape));
    let k = Operand {
        strides: [kst[at(&ka, t)?], kst[at(&ka, h)?], kst[at(&ka, d)?]],
        shape: k_shape.clone(),
    };
    let v = Operand {
        strides: [vst[at(&va, vt)?], vst[at(&va, vh)?], vst[at(&va, e)?]],
        shape: v_shape.clone(),
    };
    let (keys, heads) = (k_shape[at(&ka, t)?], k_shape[at(&ka, h)?]);
    let (dim, dim_v) = (k_shape[at(&ka, d)?], v_shape[at(&va, e)?]);
    let q_fact = model.outlet_fact(OutletId::new(q.end, 0)).ok()?;
    let q_logical = q_fact.shape.as_concrete()?;
    let tokens = q_logical[0];
    if !FewKeysAttention::fits(keys, dim, dim_v)
        || v_shape[at(&va, vt)?] != keys
        || v_shape[at(&va, vh)?] != heads
    {
        return None;
    }
    // q stored [rest..., m]: its logical [m, a, b] as [a, b, m].
    let q_phys = [q_logical[1], q_logical[2], tokens];
    let q_st = strides(&q_phys);
    let q_strides = if qa[1] == h {
        [q_st[0], q_st[1]]
    } else {
        [q_st[1], q_st[0]]
    };
    // The output stored [rest..., m] likewise, rest in the values' output order.
    let out_logical = values.outputs[0].fact.shape.as_concrete()?;
    let out_phys = [out_logical[1], out_logical[2], out_logical[0]];
    let o_st = strides(&out_phys);
    let out_strides = if vo[1] == vh {
        [o_st[0], o_st[1]]
    } else {
        [o_st[1], o_st[0]]
    };
    let after = follow(model, values.id, 1)?;
    let readers = readers(model, after.end, after.tokens_out)?;
    Some(FewKeys {
        op: FewKeysAttention {
            kernel,
            heads,
            keys,
            tokens,
            dim,
            dim_v,
            scale: scale.to_bits(),
            q_shape: TVec::from_slice(&q_phys),
            q_strides,
            k,
            v,
            out_shape: TVec::from_slice(&out_phys),
            out_strides,
        },
        scores: scores.id,
        values: values.id,
        kv: [k_wire, v_wire],
        after,
        readers,
    })
}
#[cfg(test)]
mod tests {
    use crate::{Replaced, compare_with_tract, test_values};
    use tract_core::internal::*;
    use tract_core::ops::change_axes::AxisOp;
    use tract_core::ops::einsum::EinSum;
    use tract_core::ops::nn::SoftmaxKind;

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

    /// Image-to-token attention: the projected tokens (queries) attend over `T` prompt tokens
    /// (k, v inputs), scale, softmax, then the heads merged and projected back channels-first
    /// (`[C, tokens]`, as SAM's output projection writes it), with a bias.
    fn image_to_token(tokens: usize, keys: usize, kind: SoftmaxKind) -> (TypedModel, TVec<TValue>) {
        let mut seed = 11u64;
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact([1, K, tokens])).unwrap();
        let k = m.add_source("k", f32::fact([keys, H, N / H])).unwrap();
        let v = m.add_source("v", f32::fact([keys, H, N / H])).unwrap();
        let q = projection(&mut m, "q", x, &[tokens], &mut seed);
        let op = |e: &str| EinSum::new(e.parse().unwrap(), f32::datum_type());
        let s = wire(&mut m, "scores", op("mhd,thd->hmt"), &[q, k]);
        let scale = m
            .add_const(
                "scale.value",
                tensor0(0.25f32).broadcast_into_rank(3).unwrap(),
            )
            .unwrap();
        let s = wire(&mut m, "scale", tract_core::ops::math::mul(), &[s, scale]);
        let softmax = tract_core::ops::nn::Softmax {
            axes: tvec![2],
            quant_output_dt: None,
            kind,
        };
        let p = wire(&mut m, "softmax", softmax, &[s]);
        let o = wire(&mut m, "values", op("hmt,the->mhe"), &[p, v]);
        let merge = AxisOp::Reshape(1, tvec![H.to_dim(), (N / H).to_dim()], tvec![N.to_dim()]);
        let o = wire(&mut m, "merge", merge, &[o]);
        let w = konst(&mut m, "out.w", &mut seed, &[N, 40]);
        let b = konst(&mut m, "out.b", &mut seed, &[40, 1]);
        let y = wire(&mut m, "out", op("mc,cn->nm"), &[o, w]);
        let y = wire(&mut m, "out.bias", tract_core::ops::math::add(), &[y, b]);
        m.select_output_outlets(&[y]).unwrap();
        let t = |shape: &[usize], seed: &mut u64| {
            let v = test_values(seed, shape.iter().product());
            // Queries of a few units: a softmax far from uniform.
            let v: Vec<f32> = v.iter().map(|x| x * 4.0).collect();
            Tensor::from_shape(shape, &v).unwrap().into_tvalue()
        };
        let inputs = tvec![
            t(&[1, K, tokens], &mut seed),
            t(&[keys, H, N / H], &mut seed),
            t(&[keys, H, N / H], &mut seed)
        ];
        (m, inputs)
    }

    fn compare(tokens: &[usize], queries_are_tokens: bool) -> (Replaced, f32) {
        let (stock, inputs) = model(tokens, queries_are_tokens);
        compare_with_tract(stock, inputs)
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
    fn image_to_token_attention_runs_over_channels_first_queries() {
        for tokens in [300, 45] {
            let (m, inputs) = image_to_token(tokens, T, SoftmaxKind::Softmax);
            let (done, diff) = compare_with_tract(m, inputs);
            assert_eq!((done.heads_first, done.few_keys), (1, 1), "{tokens}");
            // The query and output projections by the 1x1 kernel where 256 tokens or more.
            let direct = if tokens >= 256 { 2 } else { 0 };
            assert_eq!(done.gemm_direct, direct, "{tokens}");
            assert!(diff < 1e-5, "{tokens}: {diff}");
        }
    }

    #[test]
    fn too_many_keys_stay_token_major() {
        // More prompt tokens than FewKeysAttention takes: the queries' projection is left as
        // it is (its reader wants the tokens as rows).
        let (m, inputs) = image_to_token(300, crate::few_keys::MAX_KEYS + 1, SoftmaxKind::Softmax);
        let (done, diff) = compare_with_tract(m, inputs);
        assert_eq!((done.heads_first, done.few_keys), (0, 0));
        assert!(diff < 1e-5, "{diff}");
    }

    #[test]
    fn a_log_softmax_is_no_attention() {
        let (m, inputs) = image_to_token(300, T, SoftmaxKind::LogSoftmax);
        let (done, diff) = compare_with_tract(m, inputs);
        assert_eq!((done.heads_first, done.few_keys), (0, 0));
        assert!(diff < 1e-5, "{diff}");
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
