//! The rewrite passes: which own operator replaces which nodes (configured by [`Fusions`]),
//! applied to a decluttered model and again after tract's code generation.

use tract_core::internal::DimLike;
use tract_core::ops::array::{Pad, Slice};
use tract_core::ops::binary::OptBinUnicast;
use tract_core::ops::change_axes::{AxisOp, IntoShape};
use tract_core::ops::cnn::{Conv, Deconv};
use tract_core::ops::einsum::EinSum;
use tract_core::ops::element_wise::ElementWiseOp;
use tract_core::ops::math::{Add, Mul, Sub};
use tract_core::ops::nn::Softmax;
use tract_core::ops::nn::{Reduce, Reducer, RmsNorm};
use tract_core::ops::quant::{DequantizeLinearF32, QuantizeLinearU8};
use tract_onnx::prelude::*;

use crate::conv3x3::Geometry3x3;
use crate::graph::{is_bin, konst, other_konst, sole_user};
use crate::*;
use sonomask_kernels::Kernel;
use sonomask_kernels::int8::{I8Kernel, I8Weights, OutQuant, WeightBits};

/// Environment variable that turns the replacements off (any value but `0`).
pub const STOCK_OPS_ENV: &str = "SONOMASK_STOCK_OPS";

/// Environment variable naming replacements to leave out, comma-separated (any of
/// [`Fusions::KINDS`]): for measuring one replacement against the plan without it in the same
/// process (`benches/encoder_ab.rs`). Read once per model load ([`Fusions::from_env`]).
pub const OWN_OPS_OFF_ENV: &str = "SONOMASK_OWN_OPS_OFF";

/// Which of the own-operator rewrites a plan applies: all by default. Decided once, when a
/// model is loaded, and handed to the rewrite passes; no pass reads the environment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fusions {
    off: Vec<&'static str>,
}

impl Fusions {
    /// Every rewrite, in the order the passes apply them: the one list of the own operators
    /// (`SONOMASK_OWN_OPS_OFF` takes these names).
    pub const KINDS: &'static [&'static str] = &[
        // Before tract's code generation (`substitute_decluttered_with`).
        "int8_linear",
        "heads_first",
        "few_keys",
        "gemm",
        "softmax_fold",
        "direct",
        "cached_c",
        "linear",
        "small_a",
        "layer_norm",
        "deconv",
        "nhwc",
        "conv3x3",
        "conv_packed",
        "attention",
        // After it (`substitute_with`).
        "movement",
        "softmax",
        "gelu",
        "int8_chain",
        "pad",
        "mbconv",
        "mbconv_merge",
        "mbconv_int8",
        "patch_embed",
        "add",
    ];

    /// Every rewrite on.
    pub fn all() -> Self {
        Self::default()
    }

    /// Every rewrite but `kinds`; a name not in [`Fusions::KINDS`] is an error that lists them.
    pub fn without(kinds: &[&str]) -> anyhow::Result<Self> {
        let mut off = Vec::new();
        for k in kinds.iter().map(|k| k.trim()).filter(|k| !k.is_empty()) {
            match Self::KINDS.iter().find(|&&known| known == k) {
                Some(&known) => off.push(known),
                None => anyhow::bail!(
                    "unknown own-operator kind {k:?} (known: {})",
                    Self::KINDS.join(", ")
                ),
            }
        }
        Ok(Fusions { off })
    }

    /// From [`OWN_OPS_OFF_ENV`] (all on when it is unset).
    pub fn from_env() -> anyhow::Result<Self> {
        let v = std::env::var(OWN_OPS_OFF_ENV).unwrap_or_default();
        let kinds: Vec<&str> = v.split(',').collect();
        Self::without(&kinds).map_err(|e| anyhow::anyhow!("{OWN_OPS_OFF_ENV}: {e}"))
    }

    /// Whether rewrite `kind` is left out.
    pub fn is_off(&self, kind: &str) -> bool {
        debug_assert!(Self::KINDS.contains(&kind), "unlisted kind {kind}");
        self.off.contains(&kind)
    }
}

/// Whether the environment asks for tract's stock operators only.
pub fn stock_ops_requested() -> bool {
    std::env::var(STOCK_OPS_ENV).is_ok_and(|v| v != "0" && !v.is_empty())
}

/// How many nodes of each kind were replaced.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Replaced {
    pub softmax: usize,
    /// Quantized linear layers (`QuantizeLinear -> QLinearMatMul -> DequantizeLinear`) and 3x3
    /// convolutions (`QLinearConv`) made one [`Int8Linear`].
    pub int8_linear: usize,
    /// Pairs of them with a GELU between made to pass u8 (the first writes the second's input).
    pub int8_chain: usize,
    pub pad: usize,
    pub depthwise: usize,
    /// Channels-last depthwise convolutions, with the two transposes around them.
    pub depthwise_nhwc: usize,
    /// Dense 3x3 convolutions over phase-split inputs (`conv_packed`).
    pub conv_packed: usize,
    /// 2x2 stride-2 transposed convolutions ([`Deconv2x2`]).
    pub deconv: usize,
    /// Products, and of them those with the following bias `Add` folded in.
    pub gemm: usize,
    pub gemm_bias: usize,
    /// Products reading a sliced input in place.
    pub gemm_sliced: usize,
    /// Products with the softmax after them folded in.
    pub gemm_softmax: usize,
    /// Products computed by the 1x1-convolution kernel (`pointwise`).
    pub gemm_direct: usize,
    /// Products computed by the linear-layer kernel (`linear`, constant B).
    pub gemm_linear: usize,
    /// Products computed by the 1x1 kernel with their small A packed on each run.
    pub gemm_small_a: usize,
    /// Pairs of products (scores with a softmax, then values) fused into one [`Attention`].
    pub attention: usize,
    pub layer_norm: usize,
    pub gelu: usize,
    /// Chains of data movement made one [`MoveRuns`], and of them those with the `Add` after
    /// them folded in.
    pub movement: usize,
    pub movement_add: usize,
    /// Inverted-residual blocks (1x1, GELU, depthwise, GELU, 1x1, add, GELU) and patch
    /// mergings made one [`MbConv`].
    pub mbconv: usize,
    /// Of them, those whose projection runs in int8 (an int8 model's plan).
    pub mbconv_int8: usize,
    /// Pairs of dense 3x3 convolutions with a GELU between made one [`PatchEmbed`].
    pub patch_embed: usize,
    /// Sums of two tensors of one shape ([`AddSame`]).
    pub add: usize,
    /// Projections of channels-first tokens made to write channels-first (`heads_first`).
    pub heads_first: usize,
    /// Of them, attentions over a few keys made one [`FewKeysAttention`].
    pub few_keys: usize,
}

impl Replaced {
    pub fn total(&self) -> usize {
        self.softmax
            + self.pad
            + self.depthwise
            + self.depthwise_nhwc
            + self.gemm
            + self.layer_norm
            + self.deconv
    }
}

/// Replaces, in a decluttered model (before tract's code generation turns convolutions and
/// products into its own kernels), the convolutions and products our operators compute faster.
pub fn substitute_decluttered(model: &mut TypedModel, kernel: Kernel) -> TractResult<Replaced> {
    substitute_decluttered_with(model, kernel, &Fusions::all())
}

/// [`substitute_decluttered`] with only the rewrites `fusions` leaves on.
pub fn substitute_decluttered_with(
    model: &mut TypedModel,
    kernel: Kernel,
    fusions: &Fusions,
) -> TractResult<Replaced> {
    let off = |kind: &str| fusions.is_off(kind);
    let mut done = Replaced::default();
    if !off("int8_linear") {
        let k8 = I8Kernel::best();
        for id in 0..model.nodes.len() {
            let plan = match int8_linear_plan(model, id, k8)? {
                None => int8_conv_plan(model, id, k8)?,
                some => some,
            };
            if let Some((x, op, tail)) = plan {
                let name = format!("{}.int8", model.nodes[id].name);
                replace_span(model, &[x], name, op, tail)?;
                done.int8_linear += 1;
            }
        }
    }
    if !off("heads_first") && !off("gemm") {
        (done.heads_first, done.few_keys) = heads_first::rewrite(model, kernel, !off("few_keys"))?;
    }
    for id in 0..model.nodes.len() {
        if model.nodes[id].op_is::<EinSum>() {
            if !off("gemm") {
                substitute_product(model, id, kernel, fusions, &mut done)?;
            }
            continue;
        }
        if model.nodes[id].op_is::<RmsNorm>() {
            if !off("layer_norm") {
                substitute_layer_norm(model, id, kernel, &mut done)?;
            }
            continue;
        }
        let node = &model.nodes[id];
        if let Some(deconv) = node.op.downcast_ref::<Deconv>() {
            if node.inputs.len() == 3 && !off("deconv") {
                let op = {
                    let f = model.node_input_facts(id)?;
                    Deconv2x2::replacing(deconv, f[0], f[1], f[2], kernel)
                };
                if let Some(op) = op {
                    model.nodes[id].op = Box::new(op);
                    done.deconv += 1;
                }
            }
            continue;
        }
        let Some(conv) = node.op.downcast_ref::<Conv>() else {
            continue;
        };
        if node.inputs.len() != 3 {
            continue;
        }
        let nhwc = (!off("nhwc"))
            .then(|| channels_last_depthwise(model, id, conv, kernel))
            .flatten();
        if let Some((x, op, tail)) = nhwc {
            let name = format!("{}.nhwc", model.nodes[id].name);
            replace_span(model, &[x], name, op, tail)?;
            done.depthwise_nhwc += 1;
            continue;
        }
        let x = model.outlet_fact(node.inputs[0])?;
        let k = model.outlet_fact(node.inputs[1])?;
        if let Some(op) = Conv3x3::replacing(conv, x, k, kernel).filter(|_| !off("conv3x3")) {
            model.nodes[id].op = Box::new(op);
            done.depthwise += 1;
            continue;
        }
        let b = model.outlet_fact(node.inputs[2])?;
        if let Some(op) =
            Conv3x3Packed::replacing(conv, x, k, b, kernel).filter(|_| !off("conv_packed"))
        {
            model.nodes[id].op = Box::new(op);
            done.conv_packed += 1;
        }
    }
    if !off("attention") {
        fuse_attention(model, kernel, &mut done)?;
    }
    Ok(done)
}

/// Puts an [`Attention`] in place of each [`Gemm`] with a folded softmax whose output only the
/// A side of another [`Gemm`] reads (an attention's scores, then the product with V).
fn fuse_attention(model: &mut TypedModel, kernel: Kernel, done: &mut Replaced) -> TractResult<()> {
    for id in 0..model.nodes.len() {
        let Some(scores) = model.nodes[id].op_as::<Gemm>() else {
            continue;
        };
        let Some(next) = sole_user(model, id) else {
            continue;
        };
        let Some(values) = next.op_as::<Gemm>() else {
            continue;
        };
        let a = values.swapped() as usize;
        let from_scores = OutletId::new(id, 0);
        if next.inputs.len() != 2
            || next.inputs[a] != from_scores
            || next.inputs[1 - a] == from_scores
        {
            continue;
        }
        let Some(op) = Attention::fusing(scores, values, kernel) else {
            continue;
        };
        let inputs = [
            model.nodes[id].inputs[0],
            model.nodes[id].inputs[1],
            next.inputs[1 - a],
        ];
        let (name, tail) = (format!("{}.attention", model.nodes[id].name), next.id);
        replace_span(model, &inputs, name, op, tail)?;
        done.attention += 1;
    }
    Ok(())
}

/// Puts a [`Gemm`] in place of einsum node `id` if it computes it, with what follows folded in
/// while it is the product's only user: a multiplication by a constant scalar, an addition of a
/// constant, then a last-axis softmax (the attention's `softmax(q.k * scale + bias)`, a layer's
/// bias).
fn substitute_product(
    model: &mut TypedModel,
    id: usize,
    kernel: Kernel,
    fusions: &Fusions,
    done: &mut Replaced,
) -> TractResult<()> {
    let off = |kind: &str| fusions.is_off(kind);
    let node = &model.nodes[id];
    let Some(einsum) = node.op_as::<EinSum>() else {
        return Ok(());
    };
    if node.inputs.len() != 2 || node.outputs.len() != 1 {
        return Ok(());
    }
    let inputs = [
        model.outlet_fact(node.inputs[0])?,
        model.outlet_fact(node.inputs[1])?,
    ];
    let out = &node.outputs[0].fact;
    // Inputs cut by a `Slice` (attention's q, k, v out of one qkv product) are read in place.
    let sliced = [0, 1].map(|i| sliced_view(model, node.inputs[i]));
    let whole = |i: usize| inputs[i].shape.as_concrete().map(View::whole);
    let views = [0, 1].map(|i| sliced[i].as_ref().map(|s| s.0.clone()).or_else(|| whole(i)));
    let [Some(v0), Some(v1)] = views else {
        return Ok(());
    };
    let Some(mut gemm) = Gemm::replacing_views(einsum, inputs, [v0, v1], out) else {
        return Ok(());
    };
    let wires: TVec<OutletId> = (0..2)
        .map(|i| sliced[i].as_ref().map_or(node.inputs[i], |s| s.1))
        .collect();
    let folded_inputs = *wires != *node.inputs;
    done.gemm_sliced += folded_inputs as usize;
    done.gemm += 1;
    let shape = node.outputs[0].fact.shape.clone();
    let mut tail = id;
    while let Some(next) = sole_user(model, tail) {
        let fact = &next.outputs[0].fact;
        if fact.datum_type != DatumType::F32 || fact.shape != shape {
            break;
        }
        if let Some(sm) = next.op_as::<Softmax>() {
            if RowSoftmax::replacing(sm, fact.datum_type, fact.rank(), kernel).is_some()
                && !off("softmax_fold")
                && gemm.fold_softmax(kernel)
            {
                done.gemm_softmax += 1;
                tail = next.id;
            }
            break;
        }
        let Some(k) = other_konst(model, next, tail) else {
            break;
        };
        let folded = if is_bin::<Mul>(next) {
            gemm.fold_scale(&k)
        } else if is_bin::<Add>(next) {
            let ok = gemm.fold_bias(&k);
            done.gemm_bias += ok as usize;
            ok
        } else {
            false
        };
        if !folded {
            break;
        }
        tail = next.id;
    }
    // A constant A operand: a 1x1 convolution's weights, packed once for the direct kernel.
    let a_input = if gemm.swapped() { 1 } else { 0 };
    if let Some(w) = model.outlet_fact(wires[a_input])?.konst.clone()
        && !off("direct")
        && gemm.pack_direct(&w, kernel, off("cached_c"))
    {
        done.gemm_direct += 1;
    } else if let Some(w) = model.outlet_fact(wires[1 - a_input])?.konst.clone()
        && !off("linear")
        && gemm.pack_linear(&w, kernel)
    {
        done.gemm_linear += 1;
    } else if !off("small_a") && gemm.pack_small_a(kernel) {
        done.gemm_small_a += 1;
    }
    if tail == id && !folded_inputs {
        model.nodes[id].op = Box::new(gemm);
        return Ok(());
    }
    let name = format!("{}.gemm", model.nodes[id].name);
    replace_span(model, &wires, name, gemm, tail)
}

/// The [`Int8Linear`] for the chain through node `id`, if it is one: a `QuantizeLinearU8` of
/// f32 activations `[.., k]` read by a quantized `EinSum` `..k,kn->..n` (node `id`) with constant i8
/// weights (symmetric: zero points 0), scalar activation and output quantisations and
/// per-column or scalar weight scales, read only by a `DequantizeLinearF32` of the same output
/// quantisation, and the bias `Add` after it when there is one. Returns the activations, the op
/// and the last node it stands for.
fn int8_linear_plan(
    model: &TypedModel,
    id: usize,
    kernel: I8Kernel,
) -> TractResult<Option<(OutletId, Int8Linear, usize)>> {
    let mm = &model.nodes[id];
    if !mm.op_is::<EinSum>() || mm.inputs.len() != 9 {
        return Ok(None);
    }
    let Some((q, x, in_shape)) = quantized_input(model, mm) else {
        return Ok(None);
    };
    let Some(es) = mm.op_as::<EinSum>() else {
        return Ok(None);
    };
    if in_shape.is_empty() || es.q_params.is_none() {
        return Ok(None);
    }
    // `..k,kn,,,,[n],[n],,->..n`: the activations' last axes reduced against all but the
    // weights' last (one axis, or several contiguous ones, as `ambk,bkn->amn` after a head
    // merge).
    let expr = format!("{}", es.axes);
    let Some((ins, out)) = expr.split_once("->") else {
        return Ok(None);
    };
    let ins: Vec<Vec<char>> = ins.split(',').map(|s| s.chars().collect()).collect();
    let full_out: Vec<char> = out.chars().collect();
    let Some(out_shape) = model
        .outlet_fact(OutletId::new(id, 0))?
        .shape
        .as_concrete()
        .map(|s| s.to_vec())
    else {
        return Ok(None);
    };
    if ins.len() != 9 || ins[0].len() != in_shape.len() || full_out.len() != out_shape.len() {
        return Ok(None);
    }
    // Axes of size 1 do not move data (the decoder's `amk,kn->mn` drops one, `mbk,bkn->amn`
    // adds one): compare the others.
    let a: Vec<char> = (ins[0].iter().zip(&in_shape))
        .filter(|(_, d)| **d != 1)
        .map(|(c, _)| *c)
        .collect();
    let out: Vec<char> = (full_out.iter().zip(&out_shape))
        .filter(|(_, d)| **d != 1)
        .map(|(c, _)| *c)
        .collect();
    let b = &ins[1];
    let r = b.len().saturating_sub(1);
    if r == 0 || a.len() < r || out.len() != a.len() - r + 1 {
        return Ok(None);
    }
    // The reduced axes last (`..k`) or first (channels-first, `k..`); the output's column axis
    // last or first (channels-first), the row axes in the input's order either way.
    let a_t = a[..r] == b[..r] && a[a.len() - r..] != b[..r];
    let (ka, ma) = if a_t {
        (&a[..r], &a[r..])
    } else {
        (&a[a.len() - r..], &a[..a.len() - r])
    };
    let c_t = out.len() > 1 && out[0] == b[r];
    let (nc, mc) = if c_t {
        (out[0], &out[1..])
    } else {
        (out[out.len() - 1], &out[..out.len() - 1])
    };
    let fits = ka == &b[..r]
        && mc == ma
        && nc == b[r]
        && [3, 4, 7, 8].iter().all(|&i| ins[i].is_empty())
        && [2, 5, 6]
            .iter()
            .all(|&i| ins[i].is_empty() || ins[i] == [b[r]]);
    if !fits {
        return Ok(None);
    }
    // Where the column axis sits in the full output (a folded bias broadcasts along it).
    let n_axis = full_out.iter().position(|c| *c == b[r]);
    let Some(w) = konst(model, mm, 1) else {
        return Ok(None);
    };
    if w.rank() != r + 1 || w.datum_type().unquantized() != DatumType::I8 {
        return Ok(None);
    }
    let n = w.shape()[r];
    let k: usize = w.shape()[..r].iter().product();
    let volume: usize = in_shape.iter().product();
    if n == 0
        || k == 0
        || !volume.is_multiple_of(k)
        || out_shape.iter().product::<usize>() != volume / k * n
    {
        return Ok(None);
    }
    let w = w.cast_to::<i8>()?;
    let geometry = Int8Geometry {
        in_shape,
        out_shape,
        m: volume / k,
        k,
        n,
        n_axis,
        a_t,
        c_t,
        im2col: None,
    };
    int8_plan(
        model,
        mm,
        (q, x),
        geometry,
        w.try_as_plain_ram()?.as_slice::<i8>()?,
        kernel,
    )
}

/// The [`Int8Linear`] for a quantized 3x3 convolution (node `id`: a tract `Conv` with
/// quantisation inputs, the `QuantizeLinear -> QLinearConv -> DequantizeLinear` chain), stride
/// 1, padding 1, one group, batch 1, constant i8 weights: a product over each pixel's nine
/// neighbours ([`Im2col3x3`]), written channels-first. The weights `[co, c, 3, 3]` are
/// reordered to the rows' `(ky, kx, c)`.
fn int8_conv_plan(
    model: &TypedModel,
    id: usize,
    kernel: I8Kernel,
) -> TractResult<Option<(OutletId, Int8Linear, usize)>> {
    let node = &model.nodes[id];
    let Some(conv) = node.op_as::<Conv>() else {
        return Ok(None);
    };
    if node.inputs.len() != 9 || conv.group != 1 {
        return Ok(None);
    }
    let Some((q, x, in_shape)) = quantized_input(model, node) else {
        return Ok(None);
    };
    let Some(g) = Geometry3x3::of_quantized(conv, &in_shape) else {
        return Ok(None);
    };
    let (c, co) = (
        conv.pool_spec.input_channels,
        conv.pool_spec.output_channels,
    );
    let (h, w) = (in_shape[in_shape.len() - 2], in_shape[in_shape.len() - 1]);
    let Some(weights) = konst(model, node, 1) else {
        return Ok(None);
    };
    if g.stride != 1
        || g.pad != [(1, 1), (1, 1)]
        || weights.shape() != [co, c, 3, 3]
        || weights.datum_type().unquantized() != DatumType::I8
        || c == 0
        || co == 0
        || h * w == 0
    {
        return Ok(None);
    }
    let weights = weights.cast_to::<i8>()?;
    let oihw = weights.try_as_plain_ram()?;
    let oihw = oihw.as_slice::<i8>()?;
    let k = 9 * c;
    let mut w_kn = vec![0i8; k * co];
    for o in 0..co {
        for ci in 0..c {
            for t in 0..9 {
                w_kn[(t * c + ci) * co + o] = oihw[(o * c + ci) * 9 + t];
            }
        }
    }
    let mut out_shape = in_shape.clone();
    out_shape[in_shape.len() - 3] = co;
    let geometry = Int8Geometry {
        n_axis: Some(in_shape.len() - 3),
        in_shape,
        out_shape,
        m: h * w,
        k,
        n: co,
        a_t: false,
        c_t: true,
        im2col: Some(Im2col3x3 { c, h, w }),
    };
    int8_plan(model, node, (q, x), geometry, &w_kn, kernel)
}

/// The f32 activations, their concrete shape and their `QuantizeLinearU8` on input 0 of
/// `node`. The quantisation may feed several products (the decoder's q, k and v projections of
/// one input): each gets its own op, quantizing its input again (a pass over k values per row,
/// against k n multiply-adds).
fn quantized_input<'a>(
    model: &'a TypedModel,
    node: &TypedNode,
) -> Option<(&'a QuantizeLinearU8, OutletId, Vec<usize>)> {
    let q = &model.nodes[node.inputs.first()?.node];
    let op = q
        .op_as::<ElementWiseOp>()
        .and_then(|e| e.0.downcast_ref::<QuantizeLinearU8>())?;
    let x = q.inputs[0];
    let xf = model.outlet_fact(x).ok()?;
    if xf.datum_type != DatumType::F32 {
        return None;
    }
    Some((op, x, xf.shape.as_concrete()?.to_vec()))
}

/// The shapes of an [`Int8Linear`]: its input and output, the product's `m x k . k x n`, where
/// the output's column axis sits (`n_axis`: a folded bias broadcasts along it) and the layouts.
struct Int8Geometry {
    in_shape: Vec<usize>,
    out_shape: Vec<usize>,
    m: usize,
    k: usize,
    n: usize,
    n_axis: Option<usize>,
    a_t: bool,
    c_t: bool,
    im2col: Option<Im2col3x3>,
}

/// What quantized products and convolutions share: node `mm`'s quantisation inputs (`[x, w,
/// bias, a0, a_scale, b0, b_scale, c0, c_scale]`, the order of tract's quantized `EinSum` and
/// `Conv`) checked against what the kernel computes (symmetric weights, scalar u8 activation and
/// output grids matching the `QuantizeLinearU8` before and the `DequantizeLinearF32` that alone
/// reads the output), the weights `w_kn` (`k x n`, row-major) packed, and a bias `Add` after
/// the dequantisation folded in.
fn int8_plan(
    model: &TypedModel,
    mm: &TypedNode,
    (q, x): (&QuantizeLinearU8, OutletId),
    g: Int8Geometry,
    w_kn: &[i8],
    kernel: I8Kernel,
) -> TractResult<Option<(OutletId, Int8Linear, usize)>> {
    let (k, n) = (g.k, g.n);
    let consts: Option<Vec<Arc<Tensor>>> = (2..9).map(|s| konst(model, mm, s)).collect();
    let Some(c) = consts else {
        return Ok(None);
    };
    let f = |t: &Tensor| -> TractResult<Vec<f32>> {
        Ok(t.cast_to::<f32>()?
            .try_as_plain_ram()?
            .as_slice::<f32>()?
            .to_vec())
    };
    let (bias, a0, a_scale, b0, b_scale, c0, c_scale) = (
        f(&c[0])?,
        f(&c[1])?,
        f(&c[2])?,
        f(&c[3])?,
        f(&c[4])?,
        f(&c[5])?,
        f(&c[6])?,
    );
    let per_col = |v: &[f32], j: usize| if v.len() == 1 { v[0] } else { v[j] };
    let Some(dq_node) = sole_user(model, mm.id) else {
        return Ok(None);
    };
    let Some(dq) = dq_node.op_as::<DequantizeLinearF32>() else {
        return Ok(None);
    };
    let scalar_u8 =
        |v: &[f32]| v.len() == 1 && (0.0..=255.0).contains(&v[0]) && v[0].fract() == 0.0;
    let ok = scalar_u8(&a0)
        && a0[0] as u8 == q.zero_point
        && scalar_u8(&c0)
        && a_scale.len() == 1
        && c_scale.len() == 1
        && [bias.len(), b0.len(), b_scale.len()]
            .iter()
            .all(|&l| l == 1 || l == n)
        && b0.iter().all(|&z| z == 0.0)
        && dq.scale == c_scale[0]
        && dq.zero_point == c0[0] as i32
        && q.scale.is_finite()
        && q.scale > 0.0
        && c_scale[0].is_finite()
        && c_scale[0] > 0.0
        && k <= sonomask_kernels::int8::MAX_K;
    if !ok {
        return Ok(None);
    }
    if w_kn.len() != k * n {
        return Ok(None);
    }
    let weights = I8Weights::pack(kernel, w_kn, k, n, (n, 1));
    let scale: Vec<f32> = (0..n).map(|j| a_scale[0] * per_col(&b_scale, j)).collect();
    let bias: Vec<f32> = (0..n).map(|j| per_col(&bias, j) * scale[j]).collect();
    // A bias added right after the dequantisation (one value per output column, constant):
    // folded in, the same addition.
    let mut tail = dq_node.id;
    let mut post_bias = None;
    if let Some(add) = sole_user(model, dq_node.id)
        && is_bin::<Add>(add)
        && let Some(b) = other_konst(model, add, dq_node.id)
        && b.datum_type() == DatumType::F32
        && b.len() == n
        && b.rank() <= g.out_shape.len()
        && bias_along(b.shape(), g.out_shape.len(), g.n_axis, n)
        && model
            .outlet_fact(OutletId::new(add.id, 0))?
            .shape
            .as_concrete()
            == Some(&g.out_shape[..])
    {
        post_bias = Some(Arc::new(b.try_as_plain_ram()?.as_slice::<f32>()?.to_vec()));
        tail = add.id;
    }
    let op = Int8Linear {
        post_bias,
        m: g.m,
        k,
        n,
        in_shape: g.in_shape.into(),
        out_shape: g.out_shape.into(),
        a_inv_scale: q.scale,
        a_zero: q.zero_point,
        weights: Arc::new(weights),
        a_t: g.a_t,
        c_t: g.c_t,
        im2col: g.im2col,
        u8_in: false,
        u8_out: None,
        scale: Arc::new(scale),
        bias: Arc::new(bias),
        out_q: OutQuant {
            inv_scale: 1.0 / c_scale[0],
            zero: c0[0] as u8,
            scale: c_scale[0],
        },
    };
    Ok(Some((x, op, tail)))
}

/// Whether a constant of `shape`, broadcast against a rank-`rank` output (aligned right), holds
/// `n` values along axis `axis` and is 1 along every other: one value per output column.
fn bias_along(shape: &[usize], rank: usize, axis: Option<usize>, n: usize) -> bool {
    let Some(axis) = axis else {
        return false;
    };
    let pad = rank - shape.len();
    (0..rank).all(|i| {
        let d = if i < pad { 1 } else { shape[i - pad] };
        d == if i == axis { n } else { 1 }
    })
}

/// Wires `op` on `inputs` and makes it produce what node `tail` produced; the nodes it stands
/// for are left unread (tract drops them).
fn replace_span(
    model: &mut TypedModel,
    inputs: &[OutletId],
    name: String,
    op: impl Into<Box<dyn TypedOp>>,
    tail: usize,
) -> TractResult<()> {
    let mut patch = TypedModelPatch::default();
    let taps = patch.taps(model, inputs)?;
    let out = patch.wire_node(name, op, &taps)?;
    patch.shunt_outside(model, tail.into(), out[0])?;
    patch.apply(model)
}

/// Puts an [`AxisLayerNorm`] in place of the expansion of a layer norm anchored on `RmsNorm`
/// node `id`: `Sub(x, Mul(Reduce<Sum>(x), 1/n))` -> `RmsNorm` -> `Mul(gamma)` -> `Add(beta)`,
/// every intermediate read by the next node only, all over one axis (a transformer's last one,
/// an NCHW map's channels).
fn substitute_layer_norm(
    model: &mut TypedModel,
    id: usize,
    kernel: Kernel,
    done: &mut Replaced,
) -> TractResult<()> {
    let Some((x, op, tail)) = layer_norm_pattern(model, id, kernel) else {
        return Ok(());
    };
    let name = format!("{}.layer_norm", model.nodes[id].name);
    replace_span(model, &[x], name, op, tail)?;
    done.layer_norm += 1;
    Ok(())
}

/// The input, the op and the last node of the layer norm anchored on `RmsNorm` node `id`.
fn layer_norm_pattern(
    model: &TypedModel,
    id: usize,
    kernel: Kernel,
) -> Option<(OutletId, AxisLayerNorm, usize)> {
    let rms_node = &model.nodes[id];
    let rms = rms_node.op_as::<RmsNorm>()?;
    let fact = model.outlet_fact(rms_node.inputs[0]).ok()?;
    let full = fact.shape.as_concrete()?;
    let len = *full.get(rms.axis)?;
    if fact.datum_type != DatumType::F32 {
        return None;
    }
    // d = x - mean(x), read by the RmsNorm only.
    let sub = &model.nodes[rms_node.inputs[0].node];
    if !is_bin::<Sub>(sub) || sole_user(model, sub.id)?.id != id {
        return None;
    }
    let x = sub.inputs[0];
    let mean = &model.nodes[sub.inputs[1].node];
    if !is_bin::<Mul>(mean) || sole_user(model, mean.id)?.id != sub.id {
        return None;
    }
    let (sum_slot, recip) = if let Some(k) = konst(model, mean, 1) {
        (0, k)
    } else {
        (1, konst(model, mean, 0)?)
    };
    let sum = &model.nodes[mean.inputs[sum_slot].node];
    let reduce = sum.op_as::<Reduce>()?;
    let recip = recip.cast_to_scalar::<f32>().ok()?;
    if reduce.reducer != Reducer::Sum
        || *reduce.axes != [rms.axis]
        || sum.inputs[0] != x
        || sole_user(model, sum.id)?.id != mean.id
        || (recip * len as f32 - 1.0).abs() > 1e-6
    {
        return None;
    }
    // * gamma + beta, each read by the next only.
    let scale = sole_user(model, id)?;
    let shift = sole_user(model, scale.id)?;
    if !is_bin::<Mul>(scale) || !is_bin::<Add>(shift) {
        return None;
    }
    let (gamma, beta) = (
        other_konst(model, scale, id)?,
        other_konst(model, shift, scale.id)?,
    );
    let shape = &shift.outputs[0].fact.shape;
    if *shape != fact.shape || shift.outputs[0].fact.datum_type != DatumType::F32 {
        return None;
    }
    let eps = rms.eps.cast_to_scalar::<f32>().ok()?;
    let op = AxisLayerNorm::new(kernel, eps, full, rms.axis, &gamma, &beta)?;
    Some((x, op, shift.id))
}

/// The tokens, the op and the last node of a depthwise 3x3 convolution (stride 1, padding 1)
/// `id` run channels-first between two transposes of channels-last tokens:
/// `[h*w, c]` -> `Move(0, 1)` -> reshape `[c, h, w]` -> conv -> reshape `[c, h*w]` -> `Move(0, 1)`
/// (TinyViT's `local_conv`), each intermediate read by the next node only.
fn channels_last_depthwise(
    model: &TypedModel,
    id: usize,
    conv: &Conv,
    kernel: Kernel,
) -> Option<(OutletId, DepthwiseNhwc3x3, usize)> {
    let node = &model.nodes[id];
    let x = model.outlet_fact(node.inputs[0]).ok()?;
    let k = model.outlet_fact(node.inputs[1]).ok()?;
    let plain = Conv3x3::replacing(conv, x, k, kernel)?;
    if plain.dense.is_some()
        || plain.stride != 1
        || plain.pad != [(1, 1), (1, 1)]
        || plain.batch_axis
    {
        return None;
    }
    let &[c, h, w] = x.shape.as_concrete()? else {
        return None;
    };
    let is_axis = |n: &TypedNode, shape: &[usize]| {
        n.op_is::<AxisOp>() && n.outputs[0].fact.shape.as_concrete() == Some(shape)
    };
    let moved = |n: &TypedNode| n.op_as::<AxisOp>() == Some(&AxisOp::Move(0, 1));
    // In: tokens -> Move(0, 1) -> reshape to the map.
    let r_in = &model.nodes[node.inputs[0].node];
    let t_in = &model.nodes[r_in.inputs.first()?.node];
    if !is_axis(r_in, &[c, h, w])
        || !is_axis(t_in, &[c, h * w])
        || !moved(t_in)
        || sole_user(model, r_in.id)?.id != id
        || sole_user(model, t_in.id)?.id != r_in.id
    {
        return None;
    }
    // Out: reshape to [c, h*w] -> Move(0, 1).
    let r_out = sole_user(model, id)?;
    let t_out = sole_user(model, r_out.id)?;
    if !is_axis(r_out, &[c, h * w]) || !is_axis(t_out, &[h * w, c]) || !moved(t_out) {
        return None;
    }
    let weights = konst(model, node, 1)?;
    let bias = konst(model, node, 2)?;
    let (weights, bias) = (
        weights.try_as_plain_ram().ok()?,
        bias.try_as_plain_ram().ok()?,
    );
    let op = DepthwiseNhwc3x3::new(
        kernel,
        (h, w, c),
        weights.as_slice::<f32>().ok()?,
        bias.as_slice::<f32>().ok()?,
    )?;
    Some((*t_in.inputs.first()?, op, t_out.id))
}

/// The view an input produced by a `Slice` of a concrete f32 tensor reads, and that tensor.
fn sliced_view(model: &TypedModel, input: OutletId) -> Option<(View, OutletId)> {
    let node = &model.nodes[input.node];
    let slice = node.op_as::<Slice>()?;
    let src = *node.inputs.first()?;
    let fact = model.outlet_fact(src).ok()?;
    if fact.datum_type != DatumType::F32 {
        return None;
    }
    let full = fact.shape.as_concrete()?;
    let (start, end) = (slice.start.to_usize().ok()?, slice.end.to_usize().ok()?);
    Some((View::slice(full, slice.axis, start, end)?, src))
}

/// Replaces, in an optimized model, every node one of our operators computes faster.
pub fn substitute(model: &mut TypedModel, kernel: Kernel) -> TractResult<Replaced> {
    substitute_with(model, kernel, &Fusions::all())
}

/// [`substitute`] with only the rewrites `fusions` leaves on (tests compare plans with and
/// without one, as [`OWN_OPS_OFF_ENV`] does for benchmarks).
pub fn substitute_with(
    model: &mut TypedModel,
    kernel: Kernel,
    fusions: &Fusions,
) -> TractResult<Replaced> {
    let off = |kind: &str| fusions.is_off(kind);
    let mut done = Replaced::default();
    if !off("movement") {
        fuse_movements(model, &mut done)?;
    }
    for id in 0..model.nodes.len() {
        let node = &model.nodes[id];
        let Some(input) = node.inputs.first() else {
            continue;
        };
        let fact = model.outlet_fact(*input)?;
        let (dt, rank) = (fact.datum_type, fact.rank());
        let new: Option<Box<dyn TypedOp>> = if let Some(op) = node.op.downcast_ref::<Softmax>() {
            RowSoftmax::replacing(op, dt, rank, kernel)
                .filter(|_| !off("softmax"))
                .map(|o| {
                    done.softmax += 1;
                    Box::new(o) as _
                })
        } else if let Some(op) = node.op.downcast_ref::<ElementWiseOp>() {
            Gelu::replacing(op, dt, kernel)
                .filter(|_| !off("gelu"))
                .map(|o| {
                    done.gelu += 1;
                    Box::new(o) as _
                })
        } else if let Some(op) = node.op.downcast_ref::<Pad>() {
            RowPad::replacing(op, dt).filter(|_| !off("pad")).map(|o| {
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
    if !off("int8_chain") {
        chain_int8(model, &mut done)?;
    }
    if !off("mbconv") {
        // An int8 model's plan (its products made int8 before): the blocks' projections too.
        let int8 = !off("mbconv_int8") && model.nodes.iter().any(|n| n.op_is::<Int8Linear>());
        // In the model's weight width: a 7-bit-weight model (AVX2's) gets 7-bit projections.
        let int8 = int8.then(|| (I8Kernel::best(), int8_weight_bits(model)));
        fuse_mbconv(model, !off("mbconv_merge"), int8, &mut done)?;
    }
    if !off("patch_embed") {
        fuse_patch_embed(model, &mut done)?;
    }
    // After the fusions, which look for tract's Add.
    if !off("add") {
        for id in 0..model.nodes.len() {
            let new = match model.nodes[id].op_as::<OptBinUnicast>() {
                Some(op) => {
                    let f = model.node_input_facts(id)?;
                    AddSame::replacing(op, f[0], f[1])
                }
                None => None,
            };
            if let Some(new) = new {
                model.nodes[id].op = Box::new(new);
                done.add += 1;
            }
        }
    }
    Ok(done)
}

/// Each `Int8Linear -> Gelu -> Int8Linear` (a transformer MLP of a QOperator model: `fc1`,
/// its dequantisation and bias, the GELU, `fc2`'s quantisation), each node the sole reader of
/// the one before and the rows in order between them: the first writes `fc2`'s u8 input
/// ([`U8Out`]: the GELU and the quantisation on each task's rows in cache) and the second reads
/// it as it is. The same values as the three ops (the same kernels on the same f32 values), but
/// the hidden layer (4x the block's width) crosses memory once as u8 instead of as f32 three
/// times (written, read and written by the GELU, read by the quantisation).
fn chain_int8(model: &mut TypedModel, done: &mut Replaced) -> TractResult<()> {
    for id in 0..model.nodes.len() {
        let Some(a) = model.nodes[id].op_as::<Int8Linear>() else {
            continue;
        };
        // The second layer reads rows of n bytes 4 at a time: n a multiple of 4.
        if a.c_t || a.u8_out.is_some() || !a.n.is_multiple_of(4) {
            continue;
        }
        let Some(g) = sole_user(model, id) else {
            continue;
        };
        let Some(gelu) = g.op_as::<Gelu>() else {
            continue;
        };
        let Some(b_node) = sole_user(model, g.id) else {
            continue;
        };
        let Some(b) = b_node.op_as::<Int8Linear>() else {
            continue;
        };
        if b.a_t || b.u8_in || b.k != a.n || b.in_shape != a.out_shape {
            continue;
        }
        let mut first = a.clone();
        first.u8_out = Some(U8Out {
            gelu: gelu.kernel,
            inv_scale: b.a_inv_scale,
            zero: b.a_zero,
        });
        let mut second = b.clone();
        second.u8_in = true;
        let (x, b_id) = (model.nodes[id].inputs[0], b_node.id);
        let names = (
            format!("{}.u8", model.nodes[id].name),
            format!("{}.u8", model.nodes[b_id].name),
        );
        let mut patch = TypedModelPatch::default();
        let x = patch.tap_model(model, x)?;
        let y = patch.wire_node(names.0, first, &[x])?;
        let z = patch.wire_node(names.1, second, &y)?;
        patch.shunt_outside(model, b_id.into(), z[0])?;
        patch.apply(model)?;
        done.int8_chain += 1;
    }
    Ok(())
}

/// The width of the weights of a plan's [`Int8Linear`] ops: 7 bits when every one's are within
/// [-64, 64] (a 7-bit-weight model, what AVX2 runs in one pass), else 8. The plan quantizes its
/// own int8 weights (the MBConv projections) to the same width.
pub(crate) fn int8_weight_bits(model: &TypedModel) -> WeightBits {
    let seven = model.nodes.iter().all(|n| {
        n.op_as::<Int8Linear>()
            .is_none_or(|op| op.weights.within_7_bits())
    });
    if seven {
        WeightBits::Seven
    } else {
        WeightBits::Eight
    }
}

/// Puts an [`MbConv`] in place of each chain `x -> Gemm (1x1) -> Gelu -> Conv3x3 (depthwise)
/// -> Gelu -> Gemm (1x1)`, each node the sole reader of the one before, with what follows it
/// (see [`mbconv::Tail`]): `-> Add x -> Gelu`, or a reshape to `[c, pixels]` and a transpose.
/// Without `merges`, only the inverted residuals (no patch mergings). With `int8`, their
/// projections in int8 on that kernel, in that weight width ([`MbConv::with_int8_projection`]).
fn fuse_mbconv(
    model: &mut TypedModel,
    merges: bool,
    int8: Option<(I8Kernel, WeightBits)>,
    done: &mut Replaced,
) -> TractResult<()> {
    let before = done.mbconv;
    for id in 0..model.nodes.len() {
        let Some(expand) = model.nodes[id].op_as::<Gemm>() else {
            continue;
        };
        let x = model.nodes[id].inputs[1 - expand.swapped() as usize];
        // The chain's nodes, each the sole reader of the previous one's output.
        let mut chain = vec![id];
        for _ in 0..6 {
            match sole_user(model, chain[chain.len() - 1]) {
                Some(next) => chain.push(next.id),
                None => break,
            }
        }
        let [_, g1, dw, g2, project, ref rest @ ..] = chain[..] else {
            continue;
        };
        let node = |i: usize| &model.nodes[i];
        let is_gelu = |i: usize| node(i).op_is::<Gelu>();
        let Some(conv) = node(dw).op_as::<Conv3x3>() else {
            continue;
        };
        let Some(proj) = node(project).op_as::<Gemm>() else {
            continue;
        };
        let chained = node(dw).inputs.first() == Some(&g1.into())
            && node(project).inputs[1 - proj.swapped() as usize] == g2.into();
        if !(is_gelu(g1) && is_gelu(g2) && chained) {
            continue;
        }
        let (tail, last) = mbconv_tail(model, x, project, rest);
        if tail != mbconv::Tail::Residual && !merges {
            continue;
        }
        let (Some(taps), Some(bias)) = (konst(model, node(dw), 1), konst(model, node(dw), 2))
        else {
            continue;
        };
        let fact = model.outlet_fact(x)?;
        let shapes = (
            fact.shape.as_concrete().map(TVec::from),
            node(last).outputs[0]
                .fact
                .shape
                .as_concrete()
                .map(TVec::from),
        );
        let (Some(in_shape), Some(out_shape)) = shapes else {
            continue;
        };
        if fact.datum_type != DatumType::F32 {
            continue;
        }
        let shapes = (tail, &in_shape[..], &out_shape[..]);
        let Some(mut op) = MbConv::fusing(expand, (conv, &taps, &bias), proj, shapes) else {
            continue;
        };
        if let Some((k8, bits)) = int8 {
            op = op.with_int8_projection(k8, bits);
            done.mbconv_int8 += op.int8_projection() as usize;
        }
        let name = format!("{}.mbconv", model.nodes[id].name);
        replace_span(model, &[x], name, op, last)?;
        done.mbconv += 1;
    }
    if done.mbconv > before {
        model.compact()?;
    }
    Ok(())
}

/// Puts a [`PatchEmbed`] in place of each chain `x -> Conv3x3 (dense) -> Gelu ->
/// Conv3x3Packed`, each node the sole reader of the one before.
fn fuse_patch_embed(model: &mut TypedModel, done: &mut Replaced) -> TractResult<()> {
    let before = done.patch_embed;
    for id in 0..model.nodes.len() {
        let Some(first) = model.nodes[id].op_as::<Conv3x3>() else {
            continue;
        };
        let Some(gelu) = sole_user(model, id).filter(|n| n.op_is::<Gelu>()) else {
            continue;
        };
        let Some(next) = sole_user(model, gelu.id) else {
            continue;
        };
        let Some(second) = next.op_as::<Conv3x3Packed>() else {
            continue;
        };
        let node = &model.nodes[id];
        let (Some(weights), Some(bias)) = (konst(model, node, 1), konst(model, node, 2)) else {
            continue;
        };
        let x = node.inputs[0];
        let fact = model.outlet_fact(x)?;
        let Some(shape) = fact.shape.as_concrete().map(TVec::from) else {
            continue;
        };
        if fact.datum_type != DatumType::F32 || next.inputs[0] != gelu.id.into() {
            continue;
        }
        let Some(op) = PatchEmbed::fusing((first, &weights, &bias), second, &shape) else {
            continue;
        };
        let (name, tail) = (format!("{}.patch_embed", node.name), next.id);
        replace_span(model, &[x], name, op, tail)?;
        done.patch_embed += 1;
    }
    if done.patch_embed > before {
        model.compact()?;
    }
    Ok(())
}

/// What follows a fusable block's projection `project` (its sole readers in turn: `rest`), and
/// the block's last node: `Add x -> Gelu`, a reshape of the `[c, h, w]` map to `[c, h w]` then
/// a transpose, or neither.
fn mbconv_tail(
    model: &TypedModel,
    x: OutletId,
    project: usize,
    rest: &[usize],
) -> (mbconv::Tail, usize) {
    let node = |i: usize| &model.nodes[i];
    if let [add, gelu, ..] = *rest {
        let is_add = node(add)
            .op_as::<OptBinUnicast>()
            .is_some_and(|b| b.binop.is::<Add>())
            || is_bin::<Add>(node(add));
        let inputs = &node(add).inputs;
        if is_add
            && inputs.len() == 2
            && inputs.contains(&project.into())
            && inputs.contains(&x)
            && node(gelu).op_is::<Gelu>()
        {
            return (mbconv::Tail::Residual, gelu);
        }
    }
    if let [reshape, transpose, ..] = *rest {
        let map = node(project).outputs[0].fact.shape.as_concrete();
        let flat = node(reshape).outputs[0].fact.shape.as_concrete();
        // `[c, h w]`, or `[1, c, h w]` where tract kept the batch axis.
        let (flattens, rank) = match (map, flat) {
            (Some([.., c, h, w]), Some(f @ ([_, _] | [1, _, _]))) => {
                (f[f.len() - 2..] == [*c, h * w], f.len())
            }
            _ => (false, 0),
        };
        let is_reshape = node(reshape).op_is::<IntoShape>()
            || matches!(node(reshape).op_as::<AxisOp>(), Some(AxisOp::Reshape(..)));
        let transposes = match node(transpose).op_as::<AxisOp>() {
            Some(&AxisOp::Move(a, b)) => a.min(b) + 2 == rank && a.max(b) + 1 == rank,
            _ => false,
        };
        if flattens && is_reshape && transposes {
            return (mbconv::Tail::Tokens, transpose);
        }
    }
    (mbconv::Tail::Planar, project)
}

/// Puts a [`MoveRuns`] in place of each chain of data-movement nodes (each the sole reader of
/// the one before) that copies something, with the unicast `Add` reading it folded in.
fn fuse_movements(model: &mut TypedModel, done: &mut Replaced) -> TractResult<()> {
    let moves = |model: &TypedModel, id: usize| {
        let node = &model.nodes[id];
        node.inputs.len() == 1
            && node.outputs.len() == 1
            && node.outputs[0].fact.datum_type == DatumType::F32
            && model
                .outlet_fact(node.inputs[0])
                .is_ok_and(|f| movement::is_movement(node.op.as_ref(), f.rank()))
    };
    let before = done.movement;
    for id in 0..model.nodes.len() {
        if !moves(model, id) {
            continue;
        }
        // Only chain starts: not the sole reader of a movement node.
        let prev = model.nodes[id].inputs[0].node;
        if moves(model, prev) && sole_user(model, prev).is_some_and(|n| n.id == id) {
            continue;
        }
        let mut chain = vec![id];
        while let Some(next) = sole_user(model, chain[chain.len() - 1]) {
            if !moves(model, next.id) {
                break;
            }
            chain.push(next.id);
        }
        if !chain
            .iter()
            .any(|&i| movement::copies(model.nodes[i].op.as_ref()))
        {
            continue;
        }
        let last = chain[chain.len() - 1];
        let out_shape = &model.nodes[last].outputs[0].fact.shape;
        // The unicast residual `Add` reading the chain's result, if any: its other input.
        let residual = sole_user(model, last).and_then(|add| {
            let is_add = add
                .op_as::<OptBinUnicast>()
                .is_some_and(|b| b.binop.is::<Add>())
                || is_bin::<Add>(add);
            let other = *add.inputs.iter().find(|i| i.node != last)?;
            let fact = model.outlet_fact(other).ok()?;
            (is_add
                && add.inputs.len() == 2
                && fact.datum_type == DatumType::F32
                && fact.shape == *out_shape
                && add.outputs[0].fact.shape == *out_shape)
                .then_some((add.id, other))
        });
        let x = model.nodes[id].inputs[0];
        let Some(shape) = model.outlet_fact(x)?.shape.as_concrete().map(TVec::from) else {
            continue;
        };
        let ops: Vec<Box<dyn TypedOp>> = chain.iter().map(|&i| model.nodes[i].op.clone()).collect();
        let Some(op) = MoveRuns::of_chain(&shape, &ops, residual.is_some())? else {
            continue;
        };
        let name = format!("{}.moves", model.nodes[last].name);
        match residual {
            Some((add, other)) => {
                replace_span(model, &[x, other], name, op, add)?;
                done.movement_add += 1;
            }
            None => replace_span(model, &[x], name, op, last)?,
        }
        done.movement += 1;
    }
    if done.movement > before {
        model.compact()?;
    }
    Ok(())
}

#[cfg(test)]
mod fusions_tests {
    use crate::Fusions;

    #[test]
    fn kinds_are_unique_and_each_can_be_turned_off_alone() {
        for (i, k) in Fusions::KINDS.iter().enumerate() {
            assert!(!Fusions::KINDS[i + 1..].contains(k), "{k} listed twice");
            let f = Fusions::without(&[k]).unwrap();
            assert!(f.is_off(k));
            assert!(
                Fusions::KINDS
                    .iter()
                    .filter(|o| o != &k)
                    .all(|o| !f.is_off(o))
            );
        }
        assert!(Fusions::KINDS.iter().all(|k| !Fusions::all().is_off(k)));
    }

    #[test]
    fn unknown_kinds_are_refused_by_name() {
        let e = Fusions::without(&["gemm", "gem"]).unwrap_err().to_string();
        assert!(e.contains("\"gem\"") && e.contains("softmax_fold"), "{e}");
        // Blanks (a trailing comma in the variable) are ignored.
        assert_eq!(Fusions::without(&["", " "]).unwrap(), Fusions::all());
    }
}
