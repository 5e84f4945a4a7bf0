//! SAM's mask decoder (prompt encoder + two-way transformer + heads) in plain Rust, for the
//! many prompts of everything mode on one embedding.
//!
//! Why not tract: a grid of 256 prompts runs the decoder 256 times on one embedding, and every
//! run recomputes what all prompts share. Here the work is split by what it depends on:
//! - **per model** (at load): the dense positional encoding of the embedding grid, every weight
//!   packed once for the linear-layer kernel (`sonomask_ops::linear`);
//! - **per frame** ([`NativeDecoder::prepare`]): the embedding plus the no-mask dense embedding,
//!   and the first layer's image-side projections (token-to-image keys and values,
//!   image-to-token queries), the largest products of a decoder run, and the second layer's
//!   projections of the centred embedding (`FactoredFrame`);
//! - **per prompt** ([`NativeDecoder::tokens`]): the rest of the transformer and the predicted
//!   IoUs. With only `T` tokens (7 for one point), every product between the 4096 image rows and
//!   the tokens of a later layer goes through a `C x (heads * T)` matrix instead of a
//!   `C x C/2` projection (`(k W_k) . q = k . (W_k q)`, the value and output projections
//!   likewise): fewer multiply-adds than the graph's order, and the image rows are streamed
//!   in place through a small packed right-hand side. Each layer's image-to-token attention is
//!   one pass over blocks of pixels: the block's scores, their softmax over each head's tokens
//!   (a pixel's tokens kept in separate rows, so that softmax is vertical SIMD), the residual
//!   product and the norm run while the block is in cache, with no `pixels x C` residual or
//!   `pixels x heads*T` scores written to memory. The token-to-image attention that reads those
//!   new keys next (the next layer's, or the final one for the IoU token) depends only on the
//!   tokens, so it runs in the same pass with its softmax over the pixels kept online (running
//!   maxima and sums): the keys are read once per layer, and keys plus positional encoding
//!   never written. The second layer's two attentions' scores (and its token-to-image
//!   values) read the first layer's keys through its norm (`Factored`): per pixel, per-frame
//!   products plus the first layer's attention weights (`heads*T` values) instead of `C`
//!   channels;
//! - **per surviving prompt** ([`NativeDecoder::masks`]): the output upscaling and the
//!   hypernetwork product, paid only by prompts whose predicted IoU passed the filter.
//!
//! The weights are read from the same fp32 decoder ONNX file tract runs, by the module paths
//! SAM's exporter writes into node and initializer names; a file that lacks one is refused with
//! its name. The arithmetic is fp32 in another order than the graph's: outputs match tract's
//! within rounding (`tests/native_decoder.rs` states and checks the tolerance).

use anyhow::{Context, Result, anyhow, ensure};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tract_onnx::pb::{GraphProto, NodeProto, TensorProto};
use tract_onnx::prelude::*;

use super::fast_ops::linear::{self as lin, WeightPanels};
use super::fast_ops::{gelu::gelu_slice, layer_norm::layer_norm_row, softmax};
use super::manifest::SamSection;
use crate::simd::Kernel;
use sonomask_kernels::layer_norm::add_norm_pe_row;

/// `C[0..m, 0..w.n] = A . W (+ bias)` by the linear-layer kernel: `A` is `m x w.k` read in
/// place (rows `rsa` apart, columns `csa` apart), `W` packed, `C` rows `rsc` apart.
fn mul(
    k: Kernel,
    a: &[f32],
    dims: (usize, usize, usize),
    w: &WeightPanels,
    bias: Option<&[f32]>,
    c: &mut [f32],
    rsc: usize,
) {
    product(k, a, dims, (w, 0..w.n), (bias, false), c, rsc);
}

/// `C[0..m, 0..w.n] += A . W`, strides as [`mul`].
fn mul_add(
    k: Kernel,
    a: &[f32],
    dims: (usize, usize, usize),
    w: &WeightPanels,
    c: &mut [f32],
    rsc: usize,
) {
    product(k, a, dims, (w, 0..w.n), (None, true), c, rsc);
}

/// `C[0..m, ..] (+)= A . W[:, cols]`: columns `cols` of a packed right-hand side (`cols.start`
/// a multiple of the panel width) into C's columns from 0 (one block of pixels of a per-frame
/// `[dh, pixels]` pack).
fn mul_cols(
    k: Kernel,
    a: &[f32],
    dims: (usize, usize, usize),
    w: (&WeightPanels, std::ops::Range<usize>),
    c: &mut [f32],
    rsc: usize,
    accumulate: bool,
) {
    product(k, a, dims, w, (None, accumulate), c, rsc);
}

/// `C[0..m, 0..n] += A . W` with `W` a `kw x n` row-major slice read in place (rows `n`
/// apart, `n` a multiple of the panel width): a right-hand side used once, e.g. a block of image
/// rows, that packing would copy whole. A's strides as [`mul`].
fn mul_add_rows(
    k: Kernel,
    a: &[f32],
    (m, rsa, csa): (usize, usize, usize),
    (w, kw, n): (&[f32], usize, usize),
    c: &mut [f32],
    rsc: usize,
) {
    if m == 0 || n == 0 || kw == 0 {
        return;
    }
    assert!(n.is_multiple_of(lin::NR) && kw * n <= w.len(), "product: W");
    assert!(
        (m - 1) * rsa + (kw - 1) * csa < a.len(),
        "product: A out of bounds"
    );
    assert!((m - 1) * rsc + n <= c.len(), "product: C out of bounds");
    let a = (a.as_ptr(), rsa as isize, csa as isize);
    // SAFETY: A's `m x kw` elements, W's `kw x n` and C's `m x n` block were checked above;
    // `c` is exclusively borrowed.
    unsafe {
        lin::multiply_add_rows(
            k,
            a,
            (w.as_ptr(), n, kw, n),
            (c.as_mut_ptr(), rsc),
            (0..m, 0..n),
        )
    }
}

/// The checked product behind [`mul`], [`mul_add`] and [`mul_cols`]: checks that every element
/// the strides reach lies inside its slice.
fn product(
    k: Kernel,
    a: &[f32],
    (m, rsa, csa): (usize, usize, usize),
    (w, cols): (&WeightPanels, std::ops::Range<usize>),
    (bias, accumulate): (Option<&[f32]>, bool),
    c: &mut [f32],
    rsc: usize,
) {
    if m == 0 || cols.is_empty() {
        return;
    }
    assert!(
        cols.start.is_multiple_of(lin::NR) && cols.end <= w.n,
        "product: columns"
    );
    assert!(
        w.k == 0 || (m - 1) * rsa + (w.k - 1) * csa < a.len(),
        "product: A out of bounds"
    );
    assert!(
        (m - 1) * rsc + cols.len() <= c.len(),
        "product: C out of bounds"
    );
    assert!(
        bias.is_none_or(|b| b.len() >= cols.end) && !(accumulate && bias.is_some()),
        "product: bias"
    );
    // C's column j is written at `c + i * rsc + (j - cols.start)`, inside the checked block.
    let cp = c.as_mut_ptr().wrapping_sub(cols.start);
    let a = (a.as_ptr(), rsa as isize, csa as isize);
    // SAFETY: A's `m x k` elements and C's `m x cols.len()` block were checked above; `c` is
    // exclusively borrowed, so no one else reads or writes it.
    unsafe {
        match accumulate {
            true => lin::multiply_add(k, a, w, (cp, rsc), (0..m, cols)),
            false => lin::multiply(k, a, w, (cp, rsc), (0..m, cols), bias),
        }
    }
}

/// `y = x W + b` for `rows` rows; `w` is `[inp, out]` row-major (kept for the products that
/// fold a projection into the tokens, empty after [`Linear::packed_only`]), `p` the same packed.
#[derive(Clone, Debug)]
struct Linear {
    w: Vec<f32>,
    p: WeightPanels,
    b: Vec<f32>,
    inp: usize,
    out: usize,
}

impl Linear {
    fn new(w: Vec<f32>, b: Vec<f32>, inp: usize, out: usize) -> Self {
        let p = WeightPanels::pack(&w, inp, out, (out, 1));
        Linear { w, p, b, inp, out }
    }

    /// This layer without its unpacked weights, for a layer only ever applied (not folded):
    /// the MLPs', the value and output projections' once packed per head (~12 MB of
    /// LiteMedSAM's decoder that was never read again).
    fn packed_only(mut self) -> Self {
        self.w = Vec::new();
        self
    }

    fn apply(&self, k: Kernel, x: &[f32], rows: usize, y: &mut [f32]) {
        mul(
            k,
            x,
            (rows, self.inp, 1),
            &self.p,
            Some(&self.b),
            y,
            self.out,
        );
    }

    fn applied(&self, k: Kernel, x: &[f32], rows: usize) -> Vec<f32> {
        let mut y = vec![0f32; rows * self.out];
        self.apply(k, x, rows, &mut y);
        y
    }

    /// `x W` without the bias.
    fn product(&self, k: Kernel, x: &[f32], rows: usize) -> Vec<f32> {
        let mut y = vec![0f32; rows * self.out];
        mul(k, x, (rows, self.inp, 1), &self.p, None, &mut y, self.out);
        y
    }
}

#[derive(Clone, Debug)]
struct Norm {
    g: Vec<f32>,
    b: Vec<f32>,
    eps: f32,
}

impl Norm {
    fn rows(&self, k: Kernel, x: &mut [f32]) {
        for r in x.chunks_exact_mut(self.g.len()) {
            layer_norm_row(k, r, self.eps, &self.g, &self.b);
        }
    }
}

/// SAM's `Attention`: projections to `internal` channels split into `heads`; the value and
/// output projections also packed per head (`[C, dh]` and `[dh, C]`).
#[derive(Clone, Debug)]
struct Attn {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    heads: usize,
    v_heads: Vec<WeightPanels>,
    o_heads: Vec<WeightPanels>,
}

impl Attn {
    fn new(q: Linear, k: Linear, v: Linear, o: Linear, heads: usize) -> Self {
        let dh = q.out / heads;
        let v_heads = (0..heads)
            .map(|h| WeightPanels::pack(&v.w[h * dh..], v.inp, dh, (v.out, 1)))
            .collect();
        let o_heads = (0..heads)
            .map(|h| WeightPanels::pack(&o.w[h * dh * o.out..], dh, o.out, (o.out, 1)))
            .collect();
        // q and k keep their unpacked weights: queries are folded into them (`fold_heads`)
        Attn {
            q,
            k,
            v: v.packed_only(),
            o: o.packed_only(),
            heads,
            v_heads,
            o_heads,
        }
    }

    fn dh(&self) -> usize {
        self.q.out / self.heads
    }

    fn scale(&self) -> f32 {
        1.0 / (self.dh() as f32).sqrt()
    }
}

#[derive(Clone, Debug)]
struct Block {
    self_attn: Attn,
    norm1: Norm,
    t2i: Attn,
    norm2: Norm,
    lin1: Linear,
    lin2: Linear,
    norm3: Norm,
    i2t: Attn,
    norm4: Norm,
}

/// SAM's `MLP`: linear layers with ReLU between them.
#[derive(Clone, Debug)]
struct Mlp(Vec<Linear>);

impl Mlp {
    fn apply(&self, k: Kernel, x: &[f32]) -> Vec<f32> {
        let mut cur = x.to_vec();
        for (i, l) in self.0.iter().enumerate() {
            let mut y = l.applied(k, &cur, 1);
            if i + 1 < self.0.len() {
                y.iter_mut().for_each(|v| *v = v.max(0.0));
            }
            cur = y;
        }
        cur
    }
}

/// A 2x2 stride-2 transposed convolution as a product: `[pixels, cin] . [cin, cout*4]`
/// (columns `(o, dy, dx)`, the ONNX weight's own order), packed.
#[derive(Clone, Debug)]
struct Up {
    w: WeightPanels,
    b: Vec<f32>,
    cin: usize,
    cout: usize,
}

/// SAM's mask decoder with its weights, ready for [`NativeDecoder::prepare`].
pub struct NativeDecoder {
    file: PathBuf,
    kernel: Kernel,
    /// Channels of the embedding and tokens.
    c: usize,
    /// Side of the embedding grid (64).
    side: usize,
    image_size: f32,
    low_res: usize,
    gauss: Vec<f32>,
    point_embed: [Vec<f32>; 4],
    not_a_point: Vec<f32>,
    no_mask: Vec<f32>,
    /// The IoU token then the mask tokens, `[1 + masks, C]`.
    out_tokens: Vec<f32>,
    blocks: Vec<Block>,
    final_attn: Attn,
    norm_final: Norm,
    up1: Up,
    up_norm: Norm,
    up2: Up,
    hyper: Vec<Mlp>,
    iou_head: Mlp,
    /// Dense positional encoding of the embedding grid, `[side*side, C]`.
    pe: Vec<f32>,
    /// The second layer's per-model part, when there is a second layer.
    factored: Option<Factored>,
}

/// The second layer's token-to-image attention read through the first layer's norm. With
/// `P0` the first layer's image-to-token attention (`[pixels, heads*T]`, each head's row
/// summing to 1), `U` its per-token residual rows and `s_p` its norm's scale at pixel `p`, the
/// first layer's new keys are `X1[p] = s_p (g0 * Xc[p] + P0[p] . D) + b0`, `Xc` the frame's
/// centred embedding, `g0`/`b0` the norm's affine and `D[r] = g0 * centred(U[r] (+ b_o in
/// head 0's rows))`. A score `X1[p] . (W_k q)` is then the per-frame `(g0 * Xc) W_k` times `q`
/// (16 multiply-adds a head) plus `P0[p] . (D W_k q)` (`heads*T`), not `C`; the values
/// likewise. The first layer's pass computes the second layer's token-to-image attention while
/// `P0` and `s` of a block are in cache (`Next::Factored`), and keeps both for the second
/// layer's image-to-token scores, which read the first layer's keys the same way
/// (`Scores::Factored`: `(keys + pe) . (W_q kt)` is the per-frame `(g0 * Xc) W_q` times `kt`, plus
/// `P0 . (D W_q kt)`, times `s`, plus the model's `(pe + b0) W_q + b_q` times `kt`). The first
/// layer's keys are still written: the second layer's residual adds to them.
struct Factored {
    /// `pe W_k` (no bias) per head, packed `[dh, pixels]`.
    kpe: Vec<WeightPanels>,
    /// The second layer's image-to-token queries' model part, `(pe + b0) W_q + b_q` per head,
    /// packed `[dh, pixels]` ([`Scores::Factored`]).
    qpe: Vec<WeightPanels>,
    /// `b0 W_v + b_v`.
    cv: Vec<f32>,
}

/// What every prompt of one frame shares (see the module doc).
pub struct FramePrep {
    /// Embedding + no-mask embedding, `[pixels, C]`.
    src: Vec<f32>,
    /// First layer, image-to-token queries of `src + pe` per head, packed as `[dh, pixels]`.
    q0: Vec<WeightPanels>,
    /// First layer, token-to-image keys per head, packed as `[dh, pixels]`.
    k0: Vec<WeightPanels>,
    /// First layer, token-to-image values per head, packed as `[pixels, dh]`.
    v0: Vec<WeightPanels>,
    /// The second layer's per-frame part ([`Factored`]).
    fac: Option<FactoredFrame>,
}

/// `(g0 * Xc) W` of the second layer's token-to-image keys (per head, packed `[dh, pixels]`)
/// and values (per row block of the image-to-token pass and head, packed `[rows, dh]`).
struct FactoredFrame {
    k: Vec<WeightPanels>,
    v: Vec<WeightPanels>,
    /// `(g0 * Xc) W_q` of the second layer's image-to-token queries, per head, packed
    /// `[dh, pixels]` ([`Scores::Factored`]).
    q: Vec<WeightPanels>,
}

/// Pixels per row block of the image-to-token pass: its scores and residual (96 x C floats)
/// stay in L2 between the products and the norm, and each block's ~40 small products are
/// called half as often as with 48 (measured faster than 48 and 64, 144 and 192 no better:
/// docs/BENCHMARKS.md). A multiple of the panel width, so a block's `P0` rows are whole
/// panels (read in place).
const I2T_ROWS: usize = 96;

/// Reusable buffers of one worker: a prompt allocates nothing large once they have grown.
#[derive(Default)]
pub struct Scratch {
    keys: Vec<f32>,
    /// Token-to-image scores (`t2i_first`, `t2i_generic`).
    scores: Vec<f32>,
    /// One row block's image-to-token scores (`heads * T x I2T_ROWS` values, see
    /// [`NativeDecoder::i2t_pass`]) and residual `[I2T_ROWS, C]`.
    block_scores: Vec<f32>,
    block_delta: Vec<f32>,
    /// One row block's keys plus positional encoding `[I2T_ROWS, C]`: the old keys' (the
    /// image-to-token scores), then the new ones' (the next attention's scores).
    block_pe: Vec<f32>,
    /// The attention that reads a pass's new keys ([`Next`]): its folded queries `R`, one
    /// block's scores, maxima and sums, and the factors rescaling what was accumulated.
    next_pack: WeightPanels,
    next_scores: Vec<f32>,
    block_max: Vec<f32>,
    block_sum: Vec<f32>,
    rescale: Vec<f32>,
    /// A block's norm scales (a factored pass keeps every block's in `s0_all`); for
    /// [`Next::Factored`] the packed `P0`, the rows `D`, `B = D R`, the accumulated values
    /// `E^T (s Vf)` (`[heads*T, dh]`) and `E^T (s P0)`.
    block_s1: Vec<f32>,
    /// The first layer's `P0` (its blocks' `[ht0, rows]` one after the other) and norm scales
    /// of every pixel, kept for the second layer's scores ([`Scores::Factored`]), and `D W_q kt`
    /// (`[ht0, heads*T]`) for them.
    p0_all: Vec<f32>,
    s0_all: Vec<f32>,
    db: Vec<f32>,
    p0_pack: WeightPanels,
    d1: Vec<f32>,
    b: Vec<f32>,
    gf: Vec<f32>,
    hacc: Vec<f32>,
    dv_pack: WeightPanels,
    small: Vec<f32>,
    /// Column maxima and sums of the token-to-image softmax.
    max: Vec<f32>,
    sum: Vec<f32>,
    /// Right-hand sides packed per prompt.
    r_pack: WeightPanels,
    u_pack: WeightPanels,
    r: Vec<f32>,
    /// `r` with its columns token-major.
    perm: Vec<f32>,
    u: Vec<f32>,
    g: Vec<f32>,
    up1: Vec<f32>,
    up_mid: Vec<f32>,
    up2: Vec<f32>,
    planes: Vec<f32>,
}

/// A batch of prompts after the first layer's token side ([`NativeDecoder::first_layer`]):
/// per prompt `T` stacked rows of tokens, positional tokens, and image-to-token keys and
/// values.
pub struct FirstLayer {
    t: usize,
    qpe: Vec<f32>,
    queries: Vec<f32>,
    kt: Vec<f32>,
    vt: Vec<f32>,
}

/// One prompt after the transformer: its predicted IoUs and what its masks need (the mask
/// tokens before the final attention, with their positional tokens).
pub struct TokenPass {
    pub iou: Vec<f32>,
    queries: Vec<f32>,
    qpe: Vec<f32>,
}

/// `x` (`[rows, heads * dh]`) per head, packed `[dh, rows]` (the keys of scores `q_h . x_h^T`).
fn pack_heads(x: &[f32], rows: usize, heads: usize) -> Vec<WeightPanels> {
    let ci = x.len() / rows.max(1);
    let dh = ci / heads;
    (0..heads)
        .map(|h| WeightPanels::pack(&x[h * dh..], dh, rows, (1, ci)))
        .collect()
}

/// Where a pass's image-to-token scores come from, and their layout.
#[derive(Clone, Copy)]
enum Scores<'a> {
    /// Per head, the tokens' keys `kt` (`[T, Ci]`) times the frame's queries (the first layer:
    /// `q0` packed `[dh, pixels]`): head-major `[heads, T, rows]`, as the products give them.
    Heads {
        q: &'a [WeightPanels],
        kt: &'a [f32],
    },
    /// `(keys + pe) . R + c`, `R` token-major in `Scratch::r_pack`: `[rows, T, heads]`.
    Dense(&'a [f32]),
    /// The second layer's scores through the first layer's norm ([`Factored`]): per head
    /// `kt` times the frame's `(g0 * Xc) W_q` (`qf`), plus `P0 . db` (`db = D W_q kt`,
    /// `[ht0, heads*T]`; `p0` and the norm's scales `s0` kept by the first layer's pass), times
    /// the scale, plus `kt` times the model's `(pe + b0) W_q + b_q` (`qpe`): head-major
    /// `[heads, T, rows]`.
    Factored {
        qf: &'a [WeightPanels],
        qpe: &'a [WeightPanels],
        kt: &'a [f32],
        p0: &'a [f32],
        s0: &'a [f32],
        db: &'a [f32],
    },
}

/// The attention that reads a pass's new keys ([`NativeDecoder::i2t_pass`]), its queries
/// folded by [`NativeDecoder::fold_queries`].
#[derive(Clone, Copy)]
enum Next<'a> {
    /// On the new keys in cache: scores `(keys + pe) . R`, values `E^T keys`.
    Dense,
    /// The second layer's token-to-image attention through the first layer's norm
    /// ([`Factored`]); `q` its scaled queries `[t, Ci]`.
    Factored {
        fm: &'a Factored,
        ff: &'a FactoredFrame,
        q: &'a [f32],
        t: usize,
    },
}

/// One block of an online softmax: `max` (running maxima) takes the block's `block_max`; where
/// a maximum grows, `rescale` gets `exp(old - new)` for what was accumulated and `true` is
/// returned. The first block (`first`) only sets the maxima.
fn online_max(
    k: Kernel,
    max: &mut [f32],
    block_max: &[f32],
    rescale: &mut Vec<f32>,
    first: bool,
) -> bool {
    if first {
        max.copy_from_slice(block_max);
        return false;
    }
    if !block_max.iter().zip(max.iter()).any(|(b, m)| b > m) {
        return false;
    }
    let f = grow(rescale, max.len());
    for ((f, m), b) in f.iter_mut().zip(max.iter_mut()).zip(block_max) {
        let new = m.max(*b);
        *f = *m - new;
        *m = new;
    }
    softmax::exp_in_place(k, f);
    true
}

fn grow(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
}

/// Scores `[heads * t, rows]` (head-major) of `t` query rows per head (`q`, `[t, Ci]`) against
/// the first layer's keys read through its norm ([`Factored`]), for the pixels `cols`: per head
/// `q` times the per-frame table (`kf`), plus `b^T P0^T` (`b` `[ht0, heads*t]`, `p0` the
/// block's `[ht0, rows]`, read in place where its rows are whole panels, else packed into
/// `pack`), times the norm's scale per pixel, plus per head `q` times the per-model table
/// (`kpe`). Both the second layer's attentions score this way.
fn factored_scores(
    k: Kernel,
    (q, t): (&[f32], usize),
    (kf, kpe): (&[WeightPanels], &[WeightPanels]),
    (b, p0, scale): (&[f32], &[f32], &[f32]),
    pack: &mut WeightPanels,
    cols: std::ops::Range<usize>,
    out: &mut [f32],
) {
    let (rows, heads) = (cols.len(), kf.len());
    let (ci, hn) = (q.len() / t, heads * t);
    let (dh, ht0) = (ci / heads, p0.len() / rows);
    let per_head = |tables: &[WeightPanels], out: &mut [f32], accumulate: bool| {
        for (h, w) in tables.iter().enumerate() {
            let (a, w) = (&q[h * dh..], (w, cols.clone()));
            mul_cols(
                k,
                a,
                (t, ci, 1),
                w,
                &mut out[h * t * rows..],
                rows,
                accumulate,
            );
        }
    };
    per_head(kf, out, false);
    if rows.is_multiple_of(lin::NR) {
        mul_add_rows(k, b, (hn, 1, hn), (p0, ht0, rows), out, rows);
    } else {
        pack.repack(p0, ht0, rows, (rows, 1));
        mul_add(k, b, (hn, 1, hn), pack, out, rows);
    }
    for row in out.chunks_exact_mut(rows) {
        row.iter_mut().zip(scale).for_each(|(v, f)| *v *= f);
    }
    per_head(kpe, out, true);
}

/// Per head `h`, `[c, t]` = `W[:, head h] . q[:, head h]^T` into columns `h*t..` of `r`
/// (`[c, heads*t]`): the projection folded into the tokens (`W` `[c, Ci]` row-major, `q`
/// `[t, Ci]`).
fn fold_heads(k: Kernel, w: &Linear, q: &[f32], t: usize, heads: usize, r: &mut [f32]) {
    let (ci, dh) = (w.out, w.out / heads);
    for h in 0..heads {
        let qt = WeightPanels::pack(&q[h * dh..], dh, t, (1, ci));
        mul(
            k,
            &w.w[h * dh..],
            (w.inp, ci, 1),
            &qt,
            None,
            &mut r[h * t..],
            heads * t,
        );
    }
}

/// The ONNX file's tensors and nodes, looked up by SAM's module paths.
struct Source<'a> {
    file: &'a Path,
    /// Resolves tensor data (built once: `tract_onnx::onnx()` builds the whole op registry).
    onnx: &'a tract_onnx::Onnx,
    inits: HashMap<&'a str, &'a TensorProto>,
    graph: &'a GraphProto,
    constants: HashMap<&'a str, &'a TensorProto>,
}

impl<'a> Source<'a> {
    fn new(file: &'a Path, onnx: &'a tract_onnx::Onnx, graph: &'a GraphProto) -> Self {
        let inits = graph
            .initializer
            .iter()
            .map(|t| (t.name.as_str(), t))
            .collect();
        let constants = graph
            .node
            .iter()
            .filter(|n| n.op_type == "Constant")
            .filter_map(|n| {
                let t = n.attribute.iter().find(|a| a.name == "value")?.t.as_ref()?;
                Some((n.output.first()?.as_str(), t))
            })
            .collect();
        Source {
            file,
            onnx,
            inits,
            graph,
            constants,
        }
    }

    fn missing(&self, what: &str) -> anyhow::Error {
        anyhow!(
            "{}: no {what}: not a SAM mask decoder exported by quantize/export_sam.py (the native everything-mode decoder reads its weights by SAM's module names)",
            self.file.display()
        )
    }

    fn tensor(&self, t: &TensorProto) -> Result<Vec<f32>> {
        let x = tract_onnx::tensor::load_tensor(&*self.onnx.provider, t, None)
            .map_err(|e| anyhow!("{}: tensor {}: {e}", self.file.display(), t.name))?;
        ensure!(
            x.datum_type() == f32::datum_type(),
            "{}: tensor {} is {:?}, the native decoder needs the fp32 model",
            self.file.display(),
            t.name,
            x.datum_type()
        );
        Ok(super::onnx::f32s(&x)?.to_vec())
    }

    /// The initializer whose name ends with `suffix` (SAM's parameter path), with its shape.
    fn named(&self, suffix: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let mut hits = self.inits.iter().filter(|(n, _)| n.ends_with(suffix));
        let (_, t) = hits.next().ok_or_else(|| self.missing(suffix))?;
        ensure!(
            hits.next().is_none(),
            "{}: more than one tensor named *{suffix}",
            self.file.display()
        );
        Ok((self.tensor(t)?, dims(t)))
    }

    fn vec(&self, suffix: &str, len: usize) -> Result<Vec<f32>> {
        let (v, _) = self.named(suffix)?;
        ensure!(
            v.len() == len,
            "{}: {suffix} has {} values, expected {len}",
            self.file.display(),
            v.len()
        );
        Ok(v)
    }

    fn node(&self, name: &str) -> Result<&'a NodeProto> {
        self.graph
            .node
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| self.missing(&format!("node {name}")))
    }

    /// The constant input of node `name` (an initializer or a Constant node's value).
    fn const_input(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let node = self.node(name)?;
        for i in &node.input {
            if let Some(t) = self.inits.get(i.as_str()) {
                return Ok((self.tensor(t)?, dims(t)));
            }
        }
        for i in &node.input {
            if let Some(t) = self.constants.get(i.as_str()) {
                return Ok((self.tensor(t)?, dims(t)));
            }
        }
        Err(self.missing(&format!("constant input of {name}")))
    }

    /// An integer constant feeding input `index` of node `name`.
    fn int_input(&self, name: &str, index: usize) -> Result<i64> {
        let node = self.node(name)?;
        let input = node
            .input
            .get(index)
            .ok_or_else(|| self.missing(&format!("input {index} of {name}")))?;
        let t = self
            .constants
            .get(input.as_str())
            .or_else(|| self.inits.get(input.as_str()))
            .ok_or_else(|| self.missing(&format!("constant input {index} of {name}")))?;
        let x = tract_onnx::tensor::load_tensor(&*self.onnx.provider, t, None)
            .map_err(|e| anyhow!("{}: {name}: {e}", self.file.display()))?;
        let x = x.cast_to::<i64>().map_err(|e| anyhow!("{e}"))?;
        let plain = x.try_as_plain_ram().map_err(|e| anyhow!("{e}"))?;
        let s = plain.as_slice::<i64>().map_err(|e| anyhow!("{e}"))?;
        ensure!(
            s.len() == 1,
            "{}: {name}: not a scalar",
            self.file.display()
        );
        Ok(s[0])
    }

    fn float_attr(&self, node: &str, attr: &str, default: f32) -> Result<f32> {
        let n = self.node(node)?;
        Ok(n.attribute
            .iter()
            .find(|a| a.name == attr)
            .map_or(default, |a| a.f))
    }

    /// A `MatMul` weight (`[inp, out]`) and its bias, by module path (`transformer/layers.0/...`).
    fn matmul(&self, module: &str) -> Result<Linear> {
        let (w, d) = self.const_input(&format!("/{module}/MatMul"))?;
        ensure!(
            d.len() == 2,
            "{}: {module} weight is not a matrix",
            self.file.display()
        );
        let b = self.vec(
            &format!("mask_decoder.{}.bias", module.replace('/', ".")),
            d[1],
        )?;
        Ok(Linear::new(w, b, d[0], d[1]))
    }

    /// A `Gemm` (torch `Linear` exported with `transB = 1`), stored as `[inp, out]`.
    fn gemm_layer(&self, module: &str) -> Result<Linear> {
        let path = format!("mask_decoder.{}", module.replace('/', "."));
        let (w, d) = self.named(&format!("{path}.weight"))?;
        ensure!(
            d.len() == 2,
            "{}: {path} is not a matrix",
            self.file.display()
        );
        let node = self.node(&format!("/{module}/Gemm"))?;
        let trans_b = node
            .attribute
            .iter()
            .find(|a| a.name == "transB")
            .is_some_and(|a| a.i == 1);
        let (inp, out) = if trans_b { (d[1], d[0]) } else { (d[0], d[1]) };
        let w = if trans_b {
            let mut t = vec![0f32; w.len()];
            for o in 0..out {
                for i in 0..inp {
                    t[i * out + o] = w[o * inp + i];
                }
            }
            t
        } else {
            w
        };
        let b = self.vec(&format!("{path}.bias"), out)?;
        Ok(Linear::new(w, b, inp, out))
    }

    fn attn(&self, module: &str) -> Result<Attn> {
        let heads = self.int_input(&format!("/{module}/Concat"), 2)?;
        let q = self.matmul(&format!("{module}/q_proj"))?;
        ensure!(
            heads > 0 && q.out % heads as usize == 0,
            "{}: {module}: {heads} heads do not divide {} channels",
            self.file.display(),
            q.out
        );
        Ok(Attn::new(
            q,
            self.matmul(&format!("{module}/k_proj"))?,
            self.matmul(&format!("{module}/v_proj"))?,
            self.matmul(&format!("{module}/out_proj"))?,
            heads as usize,
        ))
    }

    fn norm(&self, module: &str, c: usize) -> Result<Norm> {
        let p = format!("mask_decoder.{}", module.replace('/', "."));
        Ok(Norm {
            g: self.vec(&format!("{p}.weight"), c)?,
            b: self.vec(&format!("{p}.bias"), c)?,
            eps: self.float_attr(&format!("/{module}/LayerNormalization"), "epsilon", 1e-5)?,
        })
    }

    fn mlp(&self, module: &str) -> Result<Mlp> {
        let mut layers = Vec::new();
        while let Ok(l) = self.gemm_layer(&format!("{module}/layers.{}", layers.len())) {
            layers.push(l.packed_only());
        }
        ensure!(!layers.is_empty(), self.missing(module));
        Ok(Mlp(layers))
    }

    fn up(&self, index: usize) -> Result<Up> {
        let p = format!("mask_decoder.output_upscaling.{index}");
        let (w, d) = self.named(&format!("{p}.weight"))?;
        ensure!(
            d.len() == 4 && d[2] == 2 && d[3] == 2,
            "{}: {p} is not a 2x2 transposed convolution",
            self.file.display()
        );
        let node = self.node(&format!(
            "/output_upscaling/output_upscaling.{index}/ConvTranspose"
        ))?;
        let strides: Vec<i64> = node
            .attribute
            .iter()
            .find(|a| a.name == "strides")
            .map(|a| a.ints.clone())
            .unwrap_or_default();
        ensure!(
            strides == [2, 2],
            "{}: {p} has strides {strides:?}, expected [2, 2]",
            self.file.display()
        );
        let b = self.vec(&format!("{p}.bias"), d[1])?;
        Ok(Up {
            w: WeightPanels::pack(&w, d[0], d[1] * 4, (d[1] * 4, 1)),
            b,
            cin: d[0],
            cout: d[1],
        })
    }
}

fn dims(t: &TensorProto) -> Vec<usize> {
    t.dims.iter().map(|&d| d.max(0) as usize).collect()
}

/// `[sin(2 pi (2c - 1) G), cos(...)]` of a point in [0, 1]^2 (SAM's `PositionEmbeddingRandom`).
fn pe_encode(gauss: &[f32], x: f32, y: f32, out: &mut [f32]) {
    let half = gauss.len() / 2;
    let (x, y) = (2.0 * x - 1.0, 2.0 * y - 1.0);
    for j in 0..half {
        let v = 2.0 * std::f32::consts::PI * (x * gauss[j] + y * gauss[half + j]);
        out[j] = v.sin();
        out[half + j] = v.cos();
    }
}

impl NativeDecoder {
    /// Reads the decoder's weights from the fp32 ONNX `bytes` of `file`.
    pub fn from_onnx(file: &Path, bytes: &[u8], s: &SamSection, kernel: Kernel) -> Result<Self> {
        let onnx = tract_onnx::onnx();
        let proto = onnx
            .proto_model_for_read(&mut &bytes[..])
            .map_err(|e| anyhow!("cannot parse ONNX model {}: {e}", file.display()))?;
        let graph = proto
            .graph
            .as_ref()
            .ok_or_else(|| anyhow!("{}: no graph", file.display()))?;
        let src = Source::new(file, &onnx, graph);
        let c = s.embed_dim as usize;
        let (gauss, gd) = src.named("pe_layer.positional_encoding_gaussian_matrix")?;
        ensure!(
            gd == [2, c / 2],
            "{}: positional encoding matrix is {gd:?}, expected [2, {}]",
            file.display(),
            c / 2
        );
        let point_embed = [
            src.vec("point_embeddings.0.weight", c)?,
            src.vec("point_embeddings.1.weight", c)?,
            src.vec("point_embeddings.2.weight", c)?,
            src.vec("point_embeddings.3.weight", c)?,
        ];
        let not_a_point = src.vec("not_a_point_embed.weight", c)?;
        // Two tensors the exporter leaves unnamed, found by their unique shapes: the no-mask
        // dense embedding `[1, C, 1, 1]` and the output tokens `[1, 1 + masks, C]`.
        let by_shape = |want: &dyn Fn(&[usize]) -> bool, what: &str| -> Result<Vec<f32>> {
            let hits: Vec<&&TensorProto> = src
                .inits
                .values()
                .filter(|t| t.name.starts_with("onnx::") && want(&dims(t)))
                .collect();
            ensure!(hits.len() == 1, src.missing(what));
            src.tensor(hits[0])
        };
        let no_mask = by_shape(&|d| d == [1, c, 1, 1], "no-mask embedding [1, C, 1, 1]")?;
        let out_tokens = by_shape(
            &|d| d.len() == 3 && d[0] == 1 && d[1] >= 2 && d[2] == c,
            "output tokens [1, 1 + masks, C]",
        )?;
        let n_tokens = out_tokens.len() / c;
        let mut blocks = Vec::new();
        while src
            .node(&format!(
                "/transformer/layers.{}/self_attn/q_proj/MatMul",
                blocks.len()
            ))
            .is_ok()
        {
            let p = format!("transformer/layers.{}", blocks.len());
            blocks.push(Block {
                self_attn: src.attn(&format!("{p}/self_attn"))?,
                norm1: src.norm(&format!("{p}/norm1"), c)?,
                t2i: src.attn(&format!("{p}/cross_attn_token_to_image"))?,
                norm2: src.norm(&format!("{p}/norm2"), c)?,
                lin1: src.matmul(&format!("{p}/mlp/lin1"))?.packed_only(),
                lin2: src.matmul(&format!("{p}/mlp/lin2"))?.packed_only(),
                norm3: src.norm(&format!("{p}/norm3"), c)?,
                i2t: src.attn(&format!("{p}/cross_attn_image_to_token"))?,
                norm4: src.norm(&format!("{p}/norm4"), c)?,
            });
        }
        ensure!(!blocks.is_empty(), src.missing("transformer layers"));
        let up1 = src.up(0)?;
        let up2 = src.up(3)?;
        ensure!(
            up1.cin == c && up2.cin == up1.cout,
            "{}: output upscaling channels {} -> {} -> {} do not chain from {c}",
            file.display(),
            up1.cin,
            up1.cout,
            up2.cout
        );
        let (g, _) = src.const_input("/output_upscaling/output_upscaling.1/Mul")?;
        let (b, _) = src.const_input("/output_upscaling/output_upscaling.1/Add_1")?;
        ensure!(
            g.len() == up1.cout && b.len() == up1.cout,
            "{}: upscaling norm has {} values, expected {}",
            file.display(),
            g.len(),
            up1.cout
        );
        // LayerNorm2d's epsilon is the constant added to the variance
        let (eps, _) = src.const_input("/output_upscaling/output_upscaling.1/Add")?;
        ensure!(eps.len() == 1, "{}: upscaling norm epsilon", file.display());
        let masks = n_tokens - 1;
        let hyper = (0..masks)
            .map(|i| src.mlp(&format!("output_hypernetworks_mlps.{i}")))
            .collect::<Result<Vec<_>>>()?;
        let iou_head = src.mlp("iou_prediction_head")?;
        ensure!(
            hyper
                .iter()
                .all(|m| m.0.last().is_some_and(|l| l.out == up2.cout))
                && iou_head.0.last().is_some_and(|l| l.out == masks),
            "{}: head sizes do not match {masks} masks of {} channels",
            file.display(),
            up2.cout
        );
        let side = s.embedding_size as usize;
        ensure!(
            side * 4 == s.low_res_size as usize,
            "{}: low-res masks ({}) are not 4x the embedding ({side})",
            file.display(),
            s.low_res_size
        );
        let mut pe = vec![0f32; side * side * c];
        for (i, row) in pe.chunks_exact_mut(c).enumerate() {
            let (y, x) = (i / side, i % side);
            pe_encode(
                &gauss,
                (x as f32 + 0.5) / side as f32,
                (y as f32 + 0.5) / side as f32,
                row,
            );
        }
        let n = side * side;
        let factored = blocks.get(1).map(|b1| {
            let (b0, q) = (&blocks[0].norm4.b, &b1.i2t.q);
            // temporaries one at a time (see `prepare`)
            let kpe = pack_heads(&b1.t2i.k.product(kernel, &pe, n), n, b1.t2i.heads);
            // (pe + b0) W_q + b_q: the product of pe, plus the constant row b0 W_q + b_q
            let mut qpe = q.product(kernel, &pe, n);
            let row0 = q.applied(kernel, b0, 1);
            for row in qpe.chunks_exact_mut(q.out) {
                row.iter_mut().zip(&row0).for_each(|(v, c)| *v += c);
            }
            Factored {
                kpe,
                qpe: pack_heads(&qpe, n, b1.i2t.heads),
                cv: b1.t2i.v.applied(kernel, b0, 1),
            }
        });
        Ok(NativeDecoder {
            file: file.to_path_buf(),
            kernel,
            c,
            side,
            image_size: s.image_size as f32,
            low_res: s.low_res_size as usize,
            gauss,
            point_embed,
            not_a_point,
            no_mask,
            out_tokens,
            final_attn: src.attn("transformer/final_attn_token_to_image")?,
            norm_final: src.norm("transformer/norm_final_attn", c)?,
            blocks,
            up1,
            up_norm: Norm { g, b, eps: eps[0] },
            up2,
            hyper,
            iou_head,
            pe,
            factored,
        })
    }

    /// This decoder with every attention computed densely (no [`Factored`] forms): the path a
    /// decoder of other than two layers takes for its later layers, kept checkable against
    /// tract on SAM's.
    pub fn unfactored(mut self) -> Self {
        self.factored = None;
        self
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Mask tokens (and predicted IoUs) per prompt.
    pub fn mask_count(&self) -> usize {
        self.hyper.len()
    }

    fn pixels(&self) -> usize {
        self.side * self.side
    }

    /// The per-frame part, from the encoder's `[1, C, side, side]` embedding.
    pub fn prepare(&self, embedding: &[f32]) -> Result<FramePrep> {
        let (c, n, k) = (self.c, self.pixels(), self.kernel);
        ensure!(
            embedding.len() == c * n,
            "embedding has {} values, the decoder needs {}",
            embedding.len(),
            c * n
        );
        let mut src = vec![0f32; n * c];
        for ch in 0..c {
            let plane = &embedding[ch * n..(ch + 1) * n];
            for (i, &v) in plane.iter().enumerate() {
                src[i * c + ch] = v + self.no_mask[ch];
            }
        }
        // Each product is packed and its temporary dropped before the next: the heap keeps
        // what it has mapped (`crate::heap`), so temporaries alive together would raise the
        // process's peak for good.
        let b0 = &self.blocks[0];
        let (t2i, ci) = (&b0.t2i, b0.t2i.q.out);
        let dh = t2i.dh();
        let fac = self.factored.as_ref().and(self.blocks.get(1)).map(|b1| {
            // g0 * (src - mean): the frame's part of the first layer's normed keys
            let g = &b0.norm4.g;
            let mut xc = src.clone();
            for row in xc.chunks_exact_mut(c) {
                let mean = row.iter().sum::<f32>() / c as f32;
                row.iter_mut()
                    .zip(g)
                    .for_each(|(v, g)| *v = (*v - mean) * g);
            }
            let (a, i2t) = (&b1.t2i, &b1.i2t);
            let (ci, dh) = (a.v.out, a.dh());
            let q = pack_heads(&i2t.q.product(k, &xc, n), n, i2t.heads);
            let kf = pack_heads(&a.k.product(k, &xc, n), n, a.heads);
            let v = a.v.product(k, &xc, n);
            drop(xc);
            let v = (0..n)
                .step_by(I2T_ROWS)
                .flat_map(|r0| (0..a.heads).map(move |h| (r0, h)))
                .map(|(r0, h)| {
                    let rows = I2T_ROWS.min(n - r0);
                    WeightPanels::pack(&v[r0 * ci + h * dh..], rows, dh, (ci, 1))
                })
                .collect();
            FactoredFrame { q, k: kf, v }
        });
        let src_pe: Vec<f32> = src.iter().zip(&self.pe).map(|(a, b)| a + b).collect();
        let q0 = pack_heads(&b0.i2t.q.applied(k, &src_pe, n), n, b0.i2t.heads);
        let k0 = pack_heads(&t2i.k.applied(k, &src_pe, n), n, t2i.heads);
        drop(src_pe);
        let v0 = t2i.v.applied(k, &src, n);
        let v0 = (0..t2i.heads)
            .map(|h| WeightPanels::pack(&v0[h * dh..], n, dh, (ci, 1)))
            .collect();
        Ok(FramePrep {
            fac,
            q0,
            k0,
            v0,
            src,
        })
    }

    /// The prompt's tokens `[T, C]`: output tokens then one embedding per point (`coords` in the
    /// model input frame, `labels` as the ONNX decoder takes them).
    fn prompt_tokens(&self, coords: &[f32], labels: &[f32]) -> Vec<f32> {
        let c = self.c;
        let mut t = self.out_tokens.clone();
        let mut e = vec![0f32; c];
        for (p, &l) in coords.chunks_exact(2).zip(labels) {
            let label = l as i64;
            if label == -1 {
                e.copy_from_slice(&self.not_a_point);
            } else {
                let s = self.image_size;
                pe_encode(&self.gauss, (p[0] + 0.5) / s, (p[1] + 0.5) / s, &mut e);
                if let Some(pe) = usize::try_from(label)
                    .ok()
                    .and_then(|i| self.point_embed.get(i))
                {
                    e.iter_mut().zip(pe).for_each(|(a, b)| *a += b);
                }
            }
            t.extend_from_slice(&e);
        }
        t
    }

    /// Self-attention among the tokens of each prompt: `rows` stacked rows, every `t` of them
    /// one prompt's (the projections run on all rows at once); `q_in` already carries the
    /// positional encoding.
    fn token_attn(&self, a: &Attn, q_in: &[f32], v_in: &[f32], rows: usize, t: usize) -> Vec<f32> {
        let k = self.kernel;
        let ci = a.q.out;
        let (q, kk, v) = (
            a.q.applied(k, q_in, rows),
            a.k.applied(k, q_in, rows),
            a.v.applied(k, v_in, rows),
        );
        let (dh, scale) = (a.dh(), a.scale());
        let mut mixed = vec![0f32; rows * ci];
        let mut p = vec![0f32; t];
        for (h, g0) in (0..a.heads).flat_map(|h| (0..rows).step_by(t).map(move |g| (h, g))) {
            let cols = h * dh..(h + 1) * dh;
            for i in g0..g0 + t {
                for (j, pj) in (g0..g0 + t).zip(p.iter_mut()) {
                    let d: f32 = q[i * ci..][cols.clone()]
                        .iter()
                        .zip(&kk[j * ci..][cols.clone()])
                        .map(|(x, y)| x * y)
                        .sum();
                    *pj = d * scale;
                }
                softmax::softmax_rows(k, &mut p, t);
                for (j, &pj) in (g0..g0 + t).zip(p.iter()) {
                    for (o, x) in mixed[i * ci..][cols.clone()]
                        .iter_mut()
                        .zip(&v[j * ci..][cols.clone()])
                    {
                        *o += pj * x;
                    }
                }
            }
        }
        a.o.applied(k, &mixed, rows)
    }

    /// First-layer token-to-image attention on the frame's packed keys and values.
    fn t2i_first(
        &self,
        a: &Attn,
        q_in: &[f32],
        t: usize,
        f: &FramePrep,
        s: &mut Scratch,
    ) -> Vec<f32> {
        let (n, ci, dh, k) = (self.pixels(), a.q.out, a.dh(), self.kernel);
        let mut q = a.q.applied(k, q_in, t);
        q.iter_mut().for_each(|v| *v *= a.scale());
        let p = grow(&mut s.scores, t * n);
        let mut mixed = vec![0f32; t * ci];
        for h in 0..a.heads {
            mul(k, &q[h * dh..], (t, ci, 1), &f.k0[h], None, p, n);
            softmax::softmax_rows(k, p, n);
            mul(k, p, (t, n, 1), &f.v0[h], None, &mut mixed[h * dh..], ci);
        }
        a.o.applied(k, &mixed, t)
    }

    /// Token-to-image attention of the first `t_out` tokens over `keys` (`[pixels, C]`):
    /// `R = W_k q` per head and token, so the scores are the products of the image rows and of
    /// the positional encoding with `R` (`[C, heads * t_out]`; keys + pe is not stored), and
    /// the values `(P keys) W_v`.
    fn t2i_generic(
        &self,
        a: &Attn,
        q_in: &[f32],
        t_out: usize,
        keys: &[f32],
        s: &mut Scratch,
    ) -> Vec<f32> {
        let (c, n, k) = (self.c, self.pixels(), self.kernel);
        let (ht, _) = self.fold_queries(a, q_in, t_out, s);
        let sc = grow(&mut s.scores, n * ht);
        mul(k, keys, (n, c, 1), &s.next_pack, None, sc, ht);
        mul_add(k, &self.pe, (n, c, 1), &s.next_pack, sc, ht);
        // softmax down each column; the normalisation is applied to G below
        let (max, sum) = (grow(&mut s.max, ht), grow(&mut s.sum, ht));
        softmax::column_max(k, sc, ht, max);
        softmax::column_exp_sums(k, sc, max, sum);
        // G [ht, C] = E^T . keys
        let g = grow(&mut s.g, ht * c);
        g.fill(0.0);
        mul_add_rows(k, sc, (ht, 1, ht), (keys, n, c), g, c);
        self.attn_values(a, t_out, s)
    }

    /// `R = W_k q` (`[C, heads * t_out]`, head-major columns `h*t_out + j`) packed into
    /// `s.next_pack`, for `q` the scaled query projection of `q_in`; returns its width and `q`.
    /// The key bias adds `q . b_k` to all of a (head, token)'s scores: the softmax over pixels
    /// cancels it.
    fn fold_queries(
        &self,
        a: &Attn,
        q_in: &[f32],
        t_out: usize,
        s: &mut Scratch,
    ) -> (usize, Vec<f32>) {
        let (c, k) = (self.c, self.kernel);
        let ht = a.heads * t_out;
        let mut q = a.q.applied(k, q_in, t_out);
        q.iter_mut().for_each(|v| *v *= a.scale());
        let r = grow(&mut s.r, c * ht);
        fold_heads(k, &a.k, &q, t_out, a.heads, r);
        s.next_pack.repack(r, c, ht, (ht, 1));
        (ht, q)
    }

    /// A token-to-image attention's output from `G = E^T keys` in `s.g` (`[heads * t_out,
    /// C]`) and the column sums of `E` in `s.sum`: `out[j, head h] = (G[h*t + j] / sum)
    /// . W_v[:, head h] + b_v`, then the output projection.
    fn attn_values(&self, a: &Attn, t_out: usize, s: &mut Scratch) -> Vec<f32> {
        let (c, ci, dh, k) = (self.c, a.q.out, a.dh(), self.kernel);
        let ht = a.heads * t_out;
        let (g, sum) = (&mut s.g[..ht * c], &s.sum[..ht]);
        for (row, s) in g.chunks_exact_mut(c).zip(sum.iter()) {
            row.iter_mut().for_each(|x| *x /= s);
        }
        let mut mixed = vec![0f32; t_out * ci];
        for h in 0..a.heads {
            mul(
                k,
                &g[h * t_out * c..],
                (t_out, c, 1),
                &a.v_heads[h],
                Some(&a.v.b[h * dh..]),
                &mut mixed[h * dh..],
                ci,
            );
        }
        a.o.applied(k, &mixed, t_out)
    }

    /// One block of [`Next::Factored`] in the first layer's pass: `P0` of the block in
    /// `s.p0_all` (head-major, `[ht0, rows]` from `r0 * ht0`), its norm scales in `s.s0_all`. Scores
    /// `[hn, rows]` = per head `q . Kf` + `B^T P0^T`, times `s`, + per head `q . Kpe`; the
    /// softmax along each row online (maxima in `s.max`, sums in `s.sum`); then
    /// `gf += (E s) . Vf` per head and `hacc += (E s) . P0`.
    fn next_block_factored(
        &self,
        (fm, ff, q, tn): (&Factored, &FactoredFrame, &[f32], usize),
        r0: usize,
        rows: usize,
        ht0: usize,
        s: &mut Scratch,
    ) {
        let k = self.kernel;
        let a = &self.blocks[1].t2i;
        let (nh, dh) = (a.heads, a.dh());
        let hn = nh * tn;
        let cols = r0..r0 + rows;
        let p0 = &s.p0_all[r0 * ht0..(r0 + rows) * ht0];
        let st = grow(&mut s.next_scores, hn * rows);
        let scale = &s.s0_all[cols.clone()];
        let tables = (ff.k.as_slice(), fm.kpe.as_slice());
        factored_scores(
            k,
            (q, tn),
            tables,
            (&s.b, p0, scale),
            &mut s.p0_pack,
            cols,
            st,
        );
        // the softmax along each row, online
        let (max, bmax) = (&mut s.max[..hn], grow(&mut s.block_max, hn));
        softmax::row_maxima(k, st, rows, bmax);
        if online_max(k, max, bmax, &mut s.rescale, r0 == 0) {
            for (r, &f) in s.rescale[..hn].iter().enumerate() {
                s.sum[r] *= f;
                s.gf[r * dh..(r + 1) * dh].iter_mut().for_each(|x| *x *= f);
                s.hacc[r * ht0..(r + 1) * ht0]
                    .iter_mut()
                    .for_each(|x| *x *= f);
            }
        }
        let bsum = grow(&mut s.block_sum, hn);
        softmax::row_exp_sums(k, st, rows, max, bsum);
        for ((row, sum), b) in st.chunks_exact_mut(rows).zip(s.sum.iter_mut()).zip(bsum) {
            *sum += *b;
            row.iter_mut().zip(scale).for_each(|(v, f)| *v *= f);
        }
        let blk = r0 / I2T_ROWS;
        for h in 0..nh {
            let (a, w) = (&st[h * tn * rows..], &ff.v[blk * nh + h]);
            mul_add(k, a, (tn, rows, 1), w, &mut s.gf[h * tn * dh..], dh);
        }
        s.p0_pack.repack(p0, rows, ht0, (1, rows));
        mul_add(k, st, (hn, rows, 1), &s.p0_pack, &mut s.hacc, ht0);
    }

    /// `D[r] = g0 * centred(U[r] (+ b_o in head 0's rows))` ([`Factored`]) from the first
    /// layer's residual rows in `s.u` (head-major: row `h * t + j`; a head's `P0` sums to 1,
    /// so the bias in one head's rows adds it once).
    fn residual_rows(&self, ht0: usize, s: &mut Scratch) {
        let (c, b0) = (self.c, &self.blocks[0]);
        let t = ht0 / b0.i2t.heads;
        let d = grow(&mut s.d1, ht0 * c);
        for (r, (dst, u)) in d.chunks_exact_mut(c).zip(s.u.chunks_exact(c)).enumerate() {
            dst.copy_from_slice(u);
            if r < t {
                dst.iter_mut().zip(&b0.i2t.o.b).for_each(|(v, b)| *v += b);
            }
            let mean = dst.iter().sum::<f32>() / c as f32;
            dst.iter_mut()
                .zip(&b0.norm4.g)
                .for_each(|(v, g)| *v = (*v - mean) * g);
        }
    }

    /// [`Next::Factored`]'s output: `out[j, head h] = (gf[h*t + j] + (hacc (D W_v))[h*t + j,
    /// head h]) / sum + b0 W_v + b_v`, then the output projection.
    fn attn_values_factored(
        &self,
        fm: &Factored,
        t: usize,
        ht0: usize,
        s: &mut Scratch,
    ) -> Vec<f32> {
        let (c, k) = (self.c, self.kernel);
        let a = &self.blocks[1].t2i;
        let (ci, dh, hn) = (a.q.out, a.dh(), a.heads * t);
        let dv = a.v.product(k, &s.d1[..ht0 * c], ht0);
        s.dv_pack.repack(&dv, ht0, ci, (ci, 1));
        let m2 = grow(&mut s.small, hn * ci);
        mul(k, &s.hacc, (hn, ht0, 1), &s.dv_pack, None, m2, ci);
        let mut mixed = vec![0f32; t * ci];
        for h in 0..a.heads {
            for j in 0..t {
                let r = h * t + j;
                for (d, col) in (h * dh..(h + 1) * dh).enumerate() {
                    let v = s.gf[r * dh + d] + m2[r * ci + col];
                    mixed[j * ci + col] = v / s.sum[r] + fm.cv[col];
                }
            }
        }
        a.o.applied(k, &mixed, t)
    }

    /// Image-to-token attention into `keys` in place, block of pixels by block: the block's
    /// scores (laid out as [`Scores`] says) softmaxed over the tokens of each head, then
    /// `keys = norm((base or keys) + scores . U + b_o)` with `U`'s row for token `j` and head
    /// `h` = `v[j, head h] . W_o[head h, :]` (in the scores' order). A block's scores and
    /// residual stay in cache from the product to the norm.
    ///
    /// The token-to-image attention that reads the new keys next (the next layer's, or the
    /// final one; its queries depend only on the tokens, so they are known now, folded into
    /// `s.next_pack` by [`Self::fold_queries`], `ht_next` columns) runs in the same pass, while
    /// the block's new keys are in cache: its scores `(keys + pe) . R`, a softmax over all
    /// pixels kept online (running column maxima and sums; what was accumulated is rescaled
    /// when a maximum grows) and `G += E^T keys`, left in `s.g` and `s.sum` for
    /// [`Self::attn_values`]; or the second layer's through the first layer's norm
    /// ([`Next::Factored`], [`Self::next_block_factored`]). The keys are not read again for it,
    /// and keys + pe never written.
    #[allow(clippy::too_many_arguments)]
    fn i2t_pass(
        &self,
        a: &Attn,
        norm: &Norm,
        scores: Scores,
        v: &[f32],
        t: usize,
        (base, keys): (Option<&[f32]>, &mut [f32]),
        (next, ht_next): (Next, usize),
        s: &mut Scratch,
    ) {
        let (c, n, ci, dh, k) = (self.c, self.pixels(), a.q.out, a.dh(), self.kernel);
        let ht = a.heads * t;
        // The scores' columns, and so U's rows: head-major (`h*t + j`) where they come per head
        // (`Scores::Heads`, `Scores::Factored`), token-major (`j*heads + h`) where they come
        // from one product.
        let head_major = !matches!(scores, Scores::Dense(_));
        let u = grow(&mut s.u, ht * c);
        for h in 0..a.heads {
            let (at, rs) = match head_major {
                true => (h * t * c, c),
                false => (h * c, a.heads * c),
            };
            mul(
                k,
                &v[h * dh..],
                (t, ci, 1),
                &a.o_heads[h],
                None,
                &mut u[at..],
                rs,
            );
        }
        s.u_pack.repack(u, ht, c, (c, 1));
        let hn = ht_next;
        grow(&mut s.max, hn);
        grow(&mut s.sum, hn).fill(0.0);
        match next {
            Next::Dense => grow(&mut s.g, hn * c).fill(0.0),
            Next::Factored { .. } => {
                // D, then B = D . R ([ht, hn])
                self.residual_rows(ht, s);
                let b = grow(&mut s.b, ht * hn);
                mul(k, &s.d1, (ht, c, 1), &s.next_pack, None, b, hn);
                grow(&mut s.gf, hn * self.blocks[1].t2i.dh()).fill(0.0);
                grow(&mut s.hacc, hn * ht).fill(0.0);
            }
        }
        // A factored next attention's pass keeps every block's P0 and norm scales (the next
        // layer's scores read them again)
        let keep = matches!(next, Next::Factored { .. });
        if keep {
            grow(&mut s.p0_all, n * ht);
            grow(&mut s.s0_all, n);
        }
        for r0 in (0..n).step_by(I2T_ROWS) {
            let rows = I2T_ROWS.min(n - r0);
            let sc = match keep {
                true => &mut s.p0_all[r0 * ht..(r0 + rows) * ht],
                false => grow(&mut s.block_scores, rows * ht),
            };
            let xpe = grow(&mut s.block_pe, rows * c);
            // the block's scores softmaxed over each head's tokens: `[heads, t, rows]` (a
            // pixel's tokens `rows` apart) or `[rows, t, heads]` (`heads` apart)
            let strides = match scores {
                Scores::Heads { q, kt } => {
                    // per head `kt . q^T` (`[t, rows]`)
                    for (h, q) in q.iter().enumerate() {
                        let (a, w) = (&kt[h * dh..], (q, r0..r0 + rows));
                        mul_cols(k, a, (t, ci, 1), w, &mut sc[h * t * rows..], rows, false);
                    }
                    softmax::softmax_interleaved(k, sc, t, rows);
                    (1, rows)
                }
                Scores::Factored {
                    qf,
                    qpe,
                    kt,
                    p0,
                    s0,
                    db,
                } => {
                    let ht0 = db.len() / ht;
                    let p0 = &p0[r0 * ht0..(r0 + rows) * ht0];
                    let (cols, pack) = (r0..r0 + rows, &mut s.p0_pack);
                    let s0 = &s0[cols.clone()];
                    factored_scores(k, (kt, t), (qf, qpe), (db, p0, s0), pack, cols, sc);
                    softmax::softmax_interleaved(k, sc, t, rows);
                    (1, rows)
                }
                Scores::Dense(c2) => {
                    let at = r0 * c..(r0 + rows) * c;
                    xpe.iter_mut()
                        .zip(keys[at.clone()].iter().zip(&self.pe[at]))
                        .for_each(|(o, (x, p))| *o = x + p);
                    mul(k, xpe, (rows, c, 1), &s.r_pack, Some(c2), sc, ht);
                    softmax::softmax_interleaved(k, sc, t, a.heads);
                    (ht, 1)
                }
            };
            let delta = grow(&mut s.block_delta, rows * c);
            let dims = (rows, strides.0, strides.1);
            mul(k, sc, dims, &s.u_pack, Some(&a.o.b), delta, c);
            // a factored next attention reads the positional encoding from its tables
            let pe_out = matches!(next, Next::Dense);
            let s1 = match keep {
                true => &mut s.s0_all[r0..r0 + rows],
                false => grow(&mut s.block_s1, rows),
            };
            for (i, d) in delta.chunks_exact(c).enumerate() {
                let at = (r0 + i) * c..(r0 + i + 1) * c;
                s1[i] = add_norm_pe_row(
                    k,
                    &mut keys[at.clone()],
                    base.map(|b| &b[at.clone()]),
                    d,
                    (norm.eps, &norm.g, &norm.b),
                    &self.pe[at],
                    pe_out.then(|| &mut xpe[i * c..(i + 1) * c]),
                );
            }
            if let Next::Factored { fm, ff, q, t: tn } = next {
                self.next_block_factored((fm, ff, q, tn), r0, rows, ht, s);
                continue;
            }
            // the next attention, online
            let sn = grow(&mut s.next_scores, rows * hn);
            mul(k, xpe, (rows, c, 1), &s.next_pack, None, sn, hn);
            let (max, bmax) = (&mut s.max[..hn], grow(&mut s.block_max, hn));
            softmax::column_max(k, sn, hn, bmax);
            if online_max(k, max, bmax, &mut s.rescale, r0 == 0) {
                let f = &s.rescale[..hn];
                for (row, f) in s.g[..hn * c].chunks_exact_mut(c).zip(f.iter()) {
                    row.iter_mut().for_each(|x| *x *= f);
                }
                s.sum[..hn]
                    .iter_mut()
                    .zip(f.iter())
                    .for_each(|(x, f)| *x *= f);
            }
            let bsum = grow(&mut s.block_sum, hn);
            softmax::column_exp_sums(k, sn, max, bsum);
            s.sum[..hn]
                .iter_mut()
                .zip(bsum.iter())
                .for_each(|(x, b)| *x += b);
            // G += E^T keys, the block's keys read in place
            let kb = (&keys[r0 * c..(r0 + rows) * c], rows, c);
            mul_add_rows(k, sn, (hn, 1, hn), kb, &mut s.g, c);
        }
    }

    /// The transformer for one prompt: predicted IoUs, and the final keys left in `s` for
    /// [`Self::masks`].
    pub fn tokens(
        &self,
        f: &FramePrep,
        coords: &[f32],
        labels: &[f32],
        s: &mut Scratch,
    ) -> Result<TokenPass> {
        let first = self.first_layer(f, &[(coords, labels)], s)?;
        self.tokens_from(f, &first, 0, s)
    }

    /// The first layer's token side for a batch of prompts with the same number of points,
    /// their rows stacked: it reads only the frame's first-layer keys and values, so the
    /// batch's products (self-attention projections, token-to-image queries against the frame,
    /// the MLP) run on `batch * T` rows with each weight read once. Every row is computed as
    /// alone (the kernels are row-independent): the same values as one prompt at a time.
    pub fn first_layer(
        &self,
        f: &FramePrep,
        prompts: &[(&[f32], &[f32])],
        s: &mut Scratch,
    ) -> Result<FirstLayer> {
        let Some(&(_, l0)) = prompts.first() else {
            anyhow::bail!("a batch needs at least one prompt");
        };
        for &(coords, labels) in prompts {
            ensure!(
                !labels.is_empty() && coords.len() == 2 * labels.len(),
                "decoder needs N>0 labels and 2N coordinates (got {} and {})",
                labels.len(),
                coords.len()
            );
            ensure!(
                labels.len() == l0.len(),
                "a batch's prompts need the same number of points ({} and {})",
                l0.len(),
                labels.len()
            );
        }
        let (c, k) = (self.c, self.kernel);
        let qpe: Vec<f32> = prompts
            .iter()
            .flat_map(|&(coords, labels)| self.prompt_tokens(coords, labels))
            .collect();
        let rows = qpe.len() / c;
        let t = rows / prompts.len();
        let add =
            |a: &[f32], b: &[f32]| -> Vec<f32> { a.iter().zip(b).map(|(x, y)| x + y).collect() };
        let b = &self.blocks[0];
        // self-attention (the first layer skips the positional encoding and the residual)
        let mut queries = self.token_attn(&b.self_attn, &qpe, &qpe, rows, t);
        b.norm1.rows(k, &mut queries);
        let out = self.t2i_first(&b.t2i, &add(&queries, &qpe), rows, f, s);
        queries.iter_mut().zip(&out).for_each(|(x, y)| *x += y);
        b.norm2.rows(k, &mut queries);
        self.mlp(b, &mut queries, rows);
        let a = &b.i2t;
        let mut kt = a.k.applied(k, &add(&queries, &qpe), rows);
        kt.iter_mut().for_each(|v| *v *= a.scale());
        let vt = a.v.applied(k, &queries, rows);
        Ok(FirstLayer {
            t,
            qpe,
            queries,
            kt,
            vt,
        })
    }

    /// A layer's MLP with its residual and norm, on `rows` token rows.
    fn mlp(&self, b: &Block, queries: &mut [f32], rows: usize) {
        let k = self.kernel;
        let mut hid = b.lin1.applied(k, queries, rows);
        hid.iter_mut().for_each(|v| *v = v.max(0.0));
        let out = b.lin2.applied(k, &hid, rows);
        queries.iter_mut().zip(&out).for_each(|(x, y)| *x += y);
        b.norm3.rows(k, queries);
    }

    /// The rest of the transformer for prompt `i` of a [`Self::first_layer`] batch: its
    /// predicted IoUs, and its final keys left in `s` for [`Self::masks`].
    pub fn tokens_from(
        &self,
        f: &FramePrep,
        first: &FirstLayer,
        i: usize,
        s: &mut Scratch,
    ) -> Result<TokenPass> {
        let (c, n, k, t) = (self.c, self.pixels(), self.kernel, first.t);
        ensure!(
            (i + 1) * t * c <= first.queries.len(),
            "prompt {i} is not in the batch of {}",
            first.queries.len() / (t * c)
        );
        let ci0 = self.blocks[0].i2t.k.out;
        let qpe = first.qpe[i * t * c..(i + 1) * t * c].to_vec();
        let mut queries = first.queries[i * t * c..(i + 1) * t * c].to_vec();
        let add =
            |a: &[f32], b: &[f32]| -> Vec<f32> { a.iter().zip(b).map(|(x, y)| x + y).collect() };
        let mut keys = std::mem::take(&mut s.keys);
        grow(&mut keys, n * c);
        let (mut kt, mut vt) = {
            let at = i * t * ci0..(i + 1) * t * ci0;
            (first.kt[at.clone()].to_vec(), first.vt[at].to_vec())
        };
        let layers = self.blocks.len();
        let mut iou = Vec::new();
        // the first layer's pass computes the second layer's token-to-image attention through
        // `Factored`
        let factored = match (&self.factored, &f.fac) {
            (Some(fm), Some(ff)) => Some((fm, ff)),
            _ => None,
        };
        for (li, b) in self.blocks.iter().enumerate() {
            let a = &b.i2t;
            // The attention that reads this layer's new keys: the next layer's token-to-image
            // one (after its self-attention, which needs only the tokens), or the final one for
            // the IoU token (the filter needs nothing else; the mask tokens attend in `masks`,
            // for the prompts that pass it).
            let next = self.blocks.get(li + 1);
            let (na, nt) = match next {
                Some(nb) => {
                    let q = add(&queries, &qpe);
                    let out = self.token_attn(&nb.self_attn, &q, &queries, t, t);
                    queries.iter_mut().zip(&out).for_each(|(x, y)| *x += y);
                    nb.norm1.rows(k, &mut queries);
                    (&nb.t2i, t)
                }
                None => (&self.final_attn, 1),
            };
            let q_next = add(&queries[..nt * c], &qpe[..nt * c]);
            let (ht_next, q_scaled) = self.fold_queries(na, &q_next, nt, s);
            // the second layer's token-to-image attention through the first layer's norm
            let fac = factored.filter(|_| li == 0);
            let nx = match fac {
                Some((fm, ff)) => Next::Factored {
                    fm,
                    ff,
                    q: &q_scaled,
                    t: nt,
                },
                None => Next::Dense,
            };
            // image to token
            let (ci, dh, ht) = (a.q.out, a.dh(), a.heads * t);
            // A pixel's scores are kept token-major (`j * heads + h`) after the one product of
            // a later layer: the softmax over a head's tokens is then a vertical operation
            // (`softmax_interleaved`), as it is on the first layer's `[heads, T, rows]`.
            let hs = a.heads;
            let c2;
            // the first layer's P0 and norm scales, taken out of `s` while the second layer's
            // pass reads them (`Scores::Factored`)
            let (mut p0_all, mut s0_all, mut db) =
                (Vec::new(), Vec::new(), std::mem::take(&mut s.db));
            let scores = if li == 0 {
                // scores[h, j, i] = q0[i, head h] . kt[j, head h]
                Scores::Heads { q: &f.q0, kt: &kt }
            } else if let (1, Some((fm, ff))) = (li, factored) {
                // through the first layer's norm: D W_q kt ([ht0, ht]) for P0's part
                let ht0 = self.blocks[0].i2t.heads * t;
                let r = grow(&mut s.r, c * ht);
                fold_heads(k, &a.q, &kt, t, hs, r);
                s.r_pack.repack(r, c, ht, (ht, 1));
                grow(&mut db, ht0 * ht);
                mul(k, &s.d1, (ht0, c, 1), &s.r_pack, None, &mut db, ht);
                (p0_all, s0_all) = (std::mem::take(&mut s.p0_all), std::mem::take(&mut s.s0_all));
                Scores::Factored {
                    qf: &ff.q,
                    qpe: &fm.qpe,
                    kt: &kt,
                    p0: &p0_all,
                    s0: &s0_all,
                    db: &db[..ht0 * ht],
                }
            } else {
                // scores = (keys + pe) . R2 + c2, R2[:, j*heads + h] = W_q[:, head h] .
                // kt[j, head h] (`fold_heads` writes head-major columns `h*t + j`, read
                // permuted when packed)
                let r = grow(&mut s.r, c * ht);
                fold_heads(k, &a.q, &kt, t, hs, r);
                let perm = grow(&mut s.perm, c * ht);
                for (dst, src) in perm.chunks_exact_mut(ht).zip(r.chunks_exact(ht)) {
                    for h in 0..hs {
                        for j in 0..t {
                            dst[j * hs + h] = src[h * t + j];
                        }
                    }
                }
                s.r_pack.repack(perm, c, ht, (ht, 1));
                c2 = (0..ht)
                    .map(|col| {
                        let (j, h) = (col / hs, col % hs);
                        let head = h * dh..(h + 1) * dh;
                        let kj = &kt[j * ci..(j + 1) * ci];
                        (a.q.b[head.clone()].iter().zip(&kj[head]))
                            .map(|(x, y)| x * y)
                            .sum()
                    })
                    .collect::<Vec<f32>>();
                Scores::Dense(&c2)
            };
            let base = (li == 0).then_some(f.src.as_slice());
            self.i2t_pass(
                a,
                &b.norm4,
                scores,
                &vt,
                t,
                (base, &mut keys),
                (nx, ht_next),
                s,
            );
            if !p0_all.is_empty() {
                (s.p0_all, s.s0_all) = (p0_all, s0_all);
            }
            s.db = db;
            let out = match fac {
                Some((fm, _)) => self.attn_values_factored(fm, nt, a.heads * t, s),
                None => self.attn_values(na, nt, s),
            };
            match next {
                Some(nb) => {
                    queries.iter_mut().zip(&out).for_each(|(x, y)| *x += y);
                    nb.norm2.rows(k, &mut queries);
                    self.mlp(nb, &mut queries, t);
                    let na = &nb.i2t;
                    kt = na.k.applied(k, &add(&queries, &qpe), t);
                    kt.iter_mut().for_each(|v| *v *= na.scale());
                    vt = na.v.applied(k, &queries, t);
                }
                None => {
                    debug_assert_eq!(li + 1, layers);
                    let mut hs = queries[..c].to_vec();
                    hs.iter_mut().zip(&out).for_each(|(x, y)| *x += y);
                    self.norm_final.rows(k, &mut hs);
                    iou = self.iou_head.apply(k, &hs);
                }
            }
        }
        s.keys = keys;
        let t_out = self.out_tokens.len() / c;
        Ok(TokenPass {
            iou,
            queries: queries[c..t_out * c].to_vec(),
            qpe: qpe[c..t_out * c].to_vec(),
        })
    }

    /// The final attention and norm of `t` tokens (`queries`, their `qpe`) over the keys in `s`.
    fn final_tokens(&self, queries: &[f32], qpe: &[f32], t: usize, s: &mut Scratch) -> Vec<f32> {
        let q: Vec<f32> = queries.iter().zip(qpe).map(|(a, b)| a + b).collect();
        let keys = std::mem::take(&mut s.keys);
        let out = self.t2i_generic(&self.final_attn, &q, t, &keys, s);
        s.keys = keys;
        let mut hs = queries.to_vec();
        hs.iter_mut().zip(&out).for_each(|(x, y)| *x += y);
        self.norm_final.rows(self.kernel, &mut hs);
        hs
    }

    /// The low-res mask logits `[masks, low, low]` of the prompt whose [`Self::tokens`] ran
    /// last on `s` (its final keys are there).
    pub fn masks(&self, tp: &TokenPass, s: &mut Scratch, out: &mut Vec<f32>) {
        let (n, side, k) = (self.pixels(), self.side, self.kernel);
        let tokens = self.final_tokens(&tp.queries, &tp.qpe, self.hyper.len(), s);
        let (u1, u2) = (&self.up1, &self.up2);
        // first transposed convolution: [n, C] . [C, cout*4], scattered to [2side, 2side, cout]
        let y1 = grow(&mut s.up1, n * u1.cout * 4);
        mul(k, &s.keys, (n, u1.cin, 1), &u1.w, None, y1, u1.cout * 4);
        let side2 = side * 2;
        let mid = grow(&mut s.up_mid, 4 * n * u1.cout);
        for (i, px) in y1.chunks_exact(u1.cout * 4).enumerate() {
            let (y, x) = (i / side, i % side);
            for d in 0..4 {
                let o = ((2 * y + d / 2) * side2 + 2 * x + d % 2) * u1.cout;
                for ch in 0..u1.cout {
                    mid[o + ch] = px[ch * 4 + d] + u1.b[ch];
                }
            }
        }
        self.up_norm.rows(k, mid);
        gelu_slice(k, mid);
        // second: [4n, cout1] . [cout1, cout2*4], scattered to [4side, 4side, cout2]
        let y2 = grow(&mut s.up1, 4 * n * u2.cout * 4);
        mul(k, mid, (4 * n, u2.cin, 1), &u2.w, None, y2, u2.cout * 4);
        let side4 = side * 4;
        let up = grow(&mut s.up2, 16 * n * u2.cout);
        for (i, px) in y2.chunks_exact(u2.cout * 4).enumerate() {
            let (y, x) = (i / side2, i % side2);
            for d in 0..4 {
                let o = ((2 * y + d / 2) * side4 + 2 * x + d % 2) * u2.cout;
                for ch in 0..u2.cout {
                    up[o + ch] = px[ch * 4 + d] + u2.b[ch];
                }
            }
        }
        gelu_slice(k, up);
        // hypernetwork: [pixels, m] = up . hyper^T, then one plane per mask
        let m = self.hyper.len();
        let mut hyper = Vec::with_capacity(m * u2.cout);
        for (i, mlp) in self.hyper.iter().enumerate() {
            hyper.extend(mlp.apply(k, &tokens[i * self.c..(i + 1) * self.c]));
        }
        let hp = WeightPanels::pack(&hyper, u2.cout, m, (1, u2.cout));
        let px = self.low_res * self.low_res;
        let planes = grow(&mut s.planes, px * m);
        mul(k, up, (px, u2.cout, 1), &hp, None, planes, m);
        out.clear();
        out.resize(m * px, 0.0);
        for (p, row) in planes.chunks_exact(m).enumerate() {
            for (j, &v) in row.iter().enumerate() {
                out[j * px + p] = v;
            }
        }
    }
}

/// Workers for the prompts of a frame: tract's thread count (`--threads`).
pub fn worker_threads() -> usize {
    #[cfg(feature = "multithread-mm")]
    if let tract_linalg::multithread::Executor::MultiThread(pool) =
        tract_linalg::multithread::current_tract_executor()
    {
        return pool.current_num_threads().max(1);
    }
    1
}

impl std::fmt::Debug for NativeDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NativeDecoder({})", self.file.display())
    }
}

/// The native decoder of a manifest's fp32 decoder file (its sha256 checked as for tract).
pub fn load(manifest: &super::Manifest, kernel: Kernel) -> Result<NativeDecoder> {
    let entry = manifest.entry(super::Role::SamDecoder, super::Precision::Fp32)?;
    let bytes = manifest.read_verified(entry)?;
    let file = manifest.path_of(entry);
    NativeDecoder::from_onnx(&file, &bytes, &manifest.sam, kernel)
        .with_context(|| format!("native decoder from {}", file.display()))
}
