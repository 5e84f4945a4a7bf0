//! Matrix products (tract `EinSum` of two f32 tensors, with the constant bias `Add` that follows
//! it folded in) computed by a cache-blocked, packed sgemm.
//!
//! Why: tract's product kernel has no blocking along the reduced axis and packs the activations
//! of every call without tiling the rest, so the encoder's large products (the stage-3 MLP's
//! 4096x1280x320, the stage-0 1x1 convolutions over 65536 pixels) stream their operands from
//! memory and ran at half the rate of the best products on an AVX2 core (figures: docs/BENCHMARKS.md, appendix, "What each own operator replaced").
//! `matrixmultiply` (already compiled in through `ndarray`) is a BLIS-style sgemm: operands are
//! packed into cache-sized blocks (kc x mc of A in L2, kc x nr panels of B in L1) with runtime
//! selection of its FMA/AVX/SSE or NEON micro-kernel; on the same shapes it ran about twice as
//! fast.
//!
//! The product geometry is fixed when the op is made (shapes are pinned): each axis of the
//! einsum is a batch, row (m), column (n) or reduced (k) axis, and each group must be one
//! strided run in memory so the whole product is `batch x (m x k) . (k x n)` with strides,
//! without copies. Anything else stays with tract.

use tract_core::internal::*;
use tract_core::ops::einsum::EinSum;

use crate::f32s;
use crate::pointwise::{self, NR, PackedWeights};
use crate::softmax::softmax_rows;
use crate::{exec::par_tasks, linear};
use sonomask_kernels::Kernel;
use sonomask_kernels::narrow::{NARROW, NARROW_K, narrow};

/// One group of einsum axes merged into one strided matrix dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Dim {
    pub(super) len: usize,
    /// Element stride of the dimension in input 0, input 1 and the output (0 where absent).
    pub(super) stride: [isize; 3],
}

/// A constant added to the product: `values` read with one stride per batch axis, per row and
/// per column of the computed `C` (0 along the axes it is broadcast over).
#[derive(Debug, Clone, PartialEq)]
pub struct Bias {
    pub(super) values: Vec<f32>,
    pub(super) batch: TVec<isize>,
    pub(super) rows: isize,
    pub(super) cols: isize,
}

// Plan equality (tract compares ops to merge duplicates): bias values are compared bit-exactly
// enough for that; a NaN bias only makes two equal ops look different.
impl Eq for Bias {}

/// Which axis of C a bias vector runs along.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Along {
    Rows,
    Columns,
}

impl Bias {
    /// The bias as one value per row (or per column) of C, `len` of them, if it varies along
    /// that axis only (the kernels that take a vector: [`pointwise`] per row, [`linear`] per
    /// column).
    fn vector(&self, along: Along, len: usize) -> Option<Vec<f32>> {
        let (stride, other) = match along {
            Along::Rows => (self.rows, self.cols),
            Along::Columns => (self.cols, self.rows),
        };
        (other == 0 && self.batch.iter().all(|&s| s == 0)).then(|| {
            (0..len)
                .map(|i| self.values[(i as isize * stride) as usize])
                .collect()
        })
    }
}

/// How an input is read: a tensor of `shape` at `offset` with `strides` inside a tensor of shape
/// `full` (a slice of it, read in place instead of copied by tract's `Slice`).
#[derive(Debug, Clone)]
pub struct View {
    pub shape: TVec<usize>,
    pub full: TVec<usize>,
    pub strides: TVec<isize>,
    pub offset: isize,
}

impl View {
    /// A whole contiguous tensor of `shape`.
    pub fn whole(shape: &[usize]) -> View {
        View {
            shape: shape.into(),
            full: shape.into(),
            strides: strides(shape),
            offset: 0,
        }
    }

    /// The view `start..end` along `axis` of a contiguous tensor of shape `full`.
    pub fn slice(full: &[usize], axis: usize, start: usize, end: usize) -> Option<View> {
        if axis >= full.len() || start > end || end > full[axis] {
            return None;
        }
        let st = strides(full);
        let mut shape: TVec<usize> = full.into();
        shape[axis] = end - start;
        Some(View {
            shape,
            full: full.into(),
            offset: start as isize * st[axis],
            strides: st,
        })
    }
}

/// `out[batch] = alpha * A[batch] . B[batch] (+ bias)` for f32 tensors of pinned shapes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gemm {
    pub(super) m: Dim,
    pub(super) k: Dim,
    pub(super) n: Dim,
    pub(super) batch: TVec<Dim>,
    /// `A` is input 1 and `B` input 0 (chosen so that `C` is written row by row).
    pub(super) swap: bool,
    /// Shapes of the tensors the inputs are read from, and where in them each input starts.
    pub(super) input_shapes: [TVec<usize>; 2],
    pub(super) offsets: [isize; 2],
    /// Output axes (size > 1) making up the rows and the columns of C, outermost first.
    out_axes: [TVec<usize>; 2],
    /// Output axis of each batch dimension.
    batch_axes: TVec<usize>,
    /// A constant scale folded in (the attention's `* scale`).
    pub(super) alpha: F32Bits,
    /// A 1x1 convolution over channels-first activations, computed by [`pointwise`] with the
    /// constant weights packed at load (see [`Gemm::pack_direct`]).
    pub(super) direct: Option<Direct>,
    /// A linear layer (the B operand constant weights), computed by [`linear`] with the
    /// weights packed at load (see [`Gemm::pack_linear`]).
    pub(super) linear: Option<Linear>,
    /// A small A operand packed on each run for [`pointwise`] (see [`Gemm::pack_small_a`]).
    pub(super) small_a: Option<SmallA>,
    /// A softmax over the output's last axis, applied to each row of C after the bias (the
    /// attention's): rows are then computed whole and normalised while still in cache.
    pub(super) softmax: Option<Kernel>,
    pub(super) output_shape: TVec<usize>,
    pub(super) bias: Option<Bias>,
}

/// Row-major element strides of `shape`.
pub(super) fn strides(shape: &[usize]) -> TVec<isize> {
    let mut s: TVec<isize> = tvec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1] as isize;
    }
    s
}

/// The axes of one group (positions per tensor, `None` where absent) merged into one [`Dim`],
/// in the order given; `None` if they are not one strided run in every tensor holding them.
fn merge(axes: &[[Option<usize>; 3]], sizes: &[usize], st: &[TVec<isize>; 3]) -> Option<Dim> {
    let len = sizes.iter().product();
    let mut stride = [0isize; 3];
    for t in 0..3 {
        let Some(last) = axes.last() else { break };
        let Some(p) = last[t] else { continue };
        stride[t] = st[t][p];
        // Outer axes must step over exactly the inner ones.
        let mut span = st[t][p] * sizes[sizes.len() - 1] as isize;
        for (ax, &size) in axes.iter().zip(sizes).rev().skip(1) {
            let q = ax[t]?;
            if st[t][q] != span {
                return None;
            }
            span *= size as isize;
        }
    }
    Some(Dim { len, stride })
}

impl Gemm {
    /// The replacement for `op` (a decluttered f32 two-input einsum) on inputs and output of
    /// these concrete shapes, if it is a product this op computes.
    pub fn replacing(op: &EinSum, inputs: [&TypedFact; 2], output: &TypedFact) -> Option<Self> {
        let views = [
            View::whole(inputs[0].shape.as_concrete()?),
            View::whole(inputs[1].shape.as_concrete()?),
        ];
        Self::replacing_views(op, inputs, views, output)
    }

    /// [`Gemm::replacing`] for inputs read through [`View`]s of larger tensors.
    pub fn replacing_views(
        op: &EinSum,
        inputs: [&TypedFact; 2],
        views: [View; 2],
        output: &TypedFact,
    ) -> Option<Self> {
        if op.q_params.is_some()
            || op.operating_dt != DatumType::F32
            || inputs.iter().any(|f| f.datum_type != DatumType::F32)
            || output.datum_type != DatumType::F32
            || op.axes.input_count() != 2
            || op.axes.output_count() != 1
        {
            return None;
        }
        let out_shape = output.shape.as_concrete()?;
        let shapes = [&*views[0].shape, &*views[1].shape, out_shape];
        let st = [
            views[0].strides.clone(),
            views[1].strides.clone(),
            strides(out_shape),
        ];
        // Per group: axis positions in (input 0, input 1, output) and sizes.
        let (mut m, mut k, mut n, mut b) = (vec![], vec![], vec![], vec![]);
        for axis in op.axes.iter_all_axes() {
            let lists = [&axis.inputs[0], &axis.inputs[1], &axis.outputs[0]];
            if lists.iter().any(|l| l.len() > 1) {
                return None;
            }
            let pos = lists.map(|l| l.first().copied());
            let sizes: Vec<usize> = (0..3)
                .filter_map(|t| pos[t].map(|p| shapes[t][p]))
                .collect();
            let size = sizes[0];
            if sizes.iter().any(|&s| s != size) {
                return None;
            }
            if size == 1 {
                continue;
            }
            let group = match (pos[0].is_some(), pos[1].is_some(), pos[2].is_some()) {
                (true, true, true) => &mut b,
                (true, false, true) => &mut m,
                (false, true, true) => &mut n,
                (true, true, false) => &mut k,
                _ => return None,
            };
            group.push((pos, size));
        }
        // Rows and columns in output order, the reduced axes in input-0 order.
        m.sort_by_key(|(p, _)| p[2]);
        n.sort_by_key(|(p, _)| p[2]);
        k.sort_by_key(|(p, _)| p[0]);
        b.sort_by_key(|(p, _)| p[2]);
        let dim = |g: &[([Option<usize>; 3], usize)]| {
            let pos: Vec<_> = g.iter().map(|x| x.0).collect();
            let sizes: Vec<_> = g.iter().map(|x| x.1).collect();
            merge(&pos, &sizes, &st)
        };
        let axes_of = |g: &[([Option<usize>; 3], usize)]| -> TVec<usize> {
            g.iter().filter_map(|x| x.0[2]).collect()
        };
        let mut out_axes = [axes_of(&m), axes_of(&n)];
        let (m, k, n) = (dim(&m)?, dim(&k)?, dim(&n)?);
        let batch = b
            .iter()
            .map(|(p, size)| Dim {
                len: *size,
                stride: [0, 1, 2].map(|t| p[t].map_or(0, |q| st[t][q])),
            })
            .collect();
        // Write C along its contiguous axis: if the output's columns are not it, compute the
        // transposed product (swap A and B, rows and columns).
        let swap = n.len > 1 && n.stride[2] != 1 && m.stride[2] == 1;
        let (m, n) = if swap { (n, m) } else { (m, n) };
        if swap {
            out_axes.swap(0, 1);
        }
        Some(Gemm {
            m,
            k,
            n,
            batch,
            swap,
            input_shapes: [views[0].full.clone(), views[1].full.clone()],
            offsets: [views[0].offset, views[1].offset],
            out_axes,
            batch_axes: b.iter().filter_map(|(p, _)| p[2]).collect(),
            alpha: F32Bits(1f32.to_bits()),
            softmax: None,
            direct: None,
            linear: None,
            small_a: None,
            output_shape: shapes[2].into(),
            bias: None,
        })
    }

    /// Computes this product with [`pointwise`] (weights `a`, the constant A operand, packed
    /// now) if it is one: a single product whose B rows and C rows are contiguous (a
    /// channels-first 1x1 convolution), with no scale or softmax and at most a per-row bias.
    /// Call after the folds. Returns whether it will.
    pub fn pack_direct(&mut self, a: &Tensor, kernel: Kernel, always_stream: bool) -> bool {
        let [(rsa, csa), ..] = self.layout();
        let plain_a = self.offsets == [0, 0]
            && a.datum_type() == DatumType::F32
            && a.shape() == &*self.input_shapes[self.swap as usize];
        let Some(bias) = self.direct_bias().filter(|_| plain_a) else {
            return false;
        };
        let Ok(w) = f32s(a) else {
            return false;
        };
        let weights = PackedWeights::pack(w, self.m.len, self.k.len, (rsa as usize, csa as usize));
        self.direct = Some(Direct {
            kernel,
            weights,
            bias,
            stream: self.m.len * self.n.len >= STREAM_MIN || always_stream,
        });
        true
    }

    /// If this product fits the 1x1 kernel ([`pointwise`]): a single product whose B rows and
    /// C rows are contiguous, wide enough, A's strides non-negative, no scale or softmax, at most
    /// a per-row bias; then that bias per row, if any.
    fn direct_bias(&self) -> Option<Option<Vec<f32>>> {
        let batches: usize = self.batch.iter().map(|d| d.len).product();
        let [(rsa, csa), (rsb, csb), (rsc, csc)] = self.layout();
        if batches != 1
            || f32::from_bits(self.alpha.0) != 1.0
            || self.softmax.is_some()
            || csb != 1
            || csc != 1
            || rsa < 0
            || csa < 0
            || rsb <= 0
            || rsc <= 0
            || self.k.len == 0
            || self.n.len < 16 * NR
        {
            return None;
        }
        match &self.bias {
            None => Some(None),
            Some(b) => b.vector(Along::Rows, self.m.len).map(Some),
        }
    }

    /// Computes this product with [`pointwise`], its A operand (not constant) packed on each
    /// run, if A is small and the product otherwise fits that kernel (see
    /// [`Gemm::pack_direct`]): the decoder's masks, 4 hypernetwork rows of 32 over 65536 pixels,
    /// ran at 10 GFLOP/s through the packed sgemm's partial tiles. Returns whether it will.
    pub fn pack_small_a(&mut self, kernel: Kernel) -> bool {
        if self.direct.is_some() || self.linear.is_some() || self.m.len * self.k.len > SMALL_A {
            return false;
        }
        let Some(bias) = self.direct_bias() else {
            return false;
        };
        self.small_a = Some(SmallA { kernel, bias });
        true
    }

    /// Computes this product with [`linear`] (weights `b`, the constant B operand, packed now)
    /// if it is one: B the same for every batch, A's rows and C's rows contiguous, C at least
    /// one panel wide and 8 register blocks high (the decoder's 7 prompt tokens ran slower
    /// through 6-row blocks than through the sgemm's 8), no scale or softmax, at most a
    /// per-column bias. Call after the folds. Returns whether it will.
    pub fn pack_linear(&mut self, b: &Tensor, kernel: Kernel) -> bool {
        let [(_, csa), (rsb, csb), (rsc, csc)] = self.layout();
        let plain_b = self.offsets[1 - self.swap as usize] == 0
            && b.datum_type() == DatumType::F32
            && b.shape() == &*self.input_shapes[1 - self.swap as usize];
        let b_batched = self
            .batch
            .iter()
            .any(|d| d.stride[if self.swap { 0 } else { 1 }] != 0);
        if self.direct.is_some()
            || !plain_b
            || b_batched
            || f32::from_bits(self.alpha.0) != 1.0
            || self.softmax.is_some()
            || csa != 1
            || csc != 1
            || rsc <= 0
            || rsb < 0
            || csb < 0
            || self.k.len == 0
            || self.n.len < linear::NR
            || self.m.len < 8 * linear::MR
        {
            return false;
        }
        let bias = match &self.bias {
            None => None,
            Some(b) => match b.vector(Along::Columns, self.n.len) {
                Some(v) => Some(v),
                None => return false,
            },
        };
        let Ok(w) = f32s(b) else {
            return false;
        };
        let panels =
            linear::WeightPanels::pack(w, self.k.len, self.n.len, (rsb as usize, csb as usize));
        self.linear = Some(Linear {
            kernel,
            panels,
            bias,
        });
        true
    }

    /// Folds a softmax over the output's last axis into this product, if C's columns are exactly
    /// that axis, stored contiguously. Returns whether it was folded.
    pub fn fold_softmax(&mut self, kernel: Kernel) -> bool {
        let last = self.output_shape.len().saturating_sub(1);
        if self.softmax.is_some() || *self.out_axes[1] != [last] || self.layout()[2].1 != 1 {
            return false;
        }
        self.softmax = Some(kernel);
        true
    }

    /// Folds `out * scale` into this product, for a constant scalar `scale`, before any bias.
    /// Returns whether it was folded.
    pub fn fold_scale(&mut self, scale: &Tensor) -> bool {
        if self.bias.is_some()
            || self.softmax.is_some()
            || scale.datum_type() != DatumType::F32
            || scale.len() != 1
        {
            return false;
        }
        let Ok(v) = scale.cast_to_scalar::<f32>() else {
            return false;
        };
        self.alpha = F32Bits((f32::from_bits(self.alpha.0) * v).to_bits());
        true
    }

    /// Folds `out + bias` into this product, for a constant `bias` of the output's rank that
    /// broadcasts to it, if its rows and columns are strided runs (or broadcast) like C's.
    /// Returns whether it was folded.
    pub fn fold_bias(&mut self, bias: &Tensor) -> bool {
        let shape = bias.shape();
        if self.bias.is_some()
            || self.softmax.is_some()
            || bias.datum_type() != DatumType::F32
            || shape.len() != self.output_shape.len()
            || shape
                .iter()
                .zip(&self.output_shape)
                .any(|(&b, &o)| b != 1 && b != o)
        {
            return false;
        }
        let Ok(plain) = bias.try_as_plain_ram() else {
            return false;
        };
        let Ok(values) = plain.as_slice::<f32>() else {
            return false;
        };
        // Stride of each output axis in the bias; 0 where it is broadcast.
        let full = strides(shape);
        let st: TVec<isize> = (0..shape.len())
            .map(|a| if shape[a] == 1 { 0 } else { full[a] })
            .collect();
        let out = &self.output_shape;
        // One stride for a group of output axes (outermost first), if they are one run.
        let group = |axes: &[usize]| -> Option<isize> {
            let Some(&inner) = axes.last() else {
                return Some(0);
            };
            if axes.iter().all(|&a| st[a] == 0) {
                return Some(0);
            }
            let mut span = st[inner] * out[inner] as isize;
            for &a in axes.iter().rev().skip(1) {
                if st[a] != span {
                    return None;
                }
                span *= out[a] as isize;
            }
            Some(st[inner])
        };
        let (Some(rows), Some(cols)) = (group(&self.out_axes[0]), group(&self.out_axes[1])) else {
            return false;
        };
        self.bias = Some(Bias {
            values: values.to_vec(),
            batch: self.batch_axes.iter().map(|&a| st[a]).collect(),
            rows,
            cols,
        });
        true
    }

    /// Whether A is input 1 (and B input 0).
    pub fn swapped(&self) -> bool {
        self.swap
    }

    /// Multiply-adds per evaluation.
    fn fma(&self) -> usize {
        self.batch.iter().map(|d| d.len).product::<usize>() * self.m.len * self.k.len * self.n.len
    }

    /// Element offsets of batch `i` in A, B, C and the bias.
    pub(super) fn batch_offsets(&self, mut i: usize) -> [isize; 4] {
        let mut off = [self.offsets[0], self.offsets[1], 0, 0];
        for (j, d) in self.batch.iter().enumerate().rev() {
            let idx = (i % d.len) as isize;
            i /= d.len;
            for (o, s) in off.iter_mut().zip(d.stride) {
                *o += idx * s;
            }
            if let Some(b) = &self.bias {
                off[3] += idx * b.batch[j];
            }
        }
        if self.swap {
            off.swap(0, 1);
        }
        off
    }

    /// (row stride, column stride) of A, B and C in the computed orientation.
    pub(super) fn layout(&self) -> [(isize, isize); 3] {
        let (a, b) = if self.swap { (1, 0) } else { (0, 1) };
        [
            (self.m.stride[a], self.k.stride[a]),
            (self.k.stride[b], self.n.stride[b]),
            (self.m.stride[2], self.n.stride[2]),
        ]
    }

    /// Rows `rows` of batch `bi`'s C, columns `cols`.
    ///
    /// # Safety
    /// `a`, `b`, `c` hold the op's input and output shapes; no other thread writes this block.
    unsafe fn block(
        &self,
        (a, b, c): (*const f32, *const f32, *mut f32),
        bi: usize,
        rows: std::ops::Range<usize>,
        cols: std::ops::Range<usize>,
    ) {
        let [oa, ob, oc, obias] = self.batch_offsets(bi);
        let [(rsa, csa), (rsb, csb), (rsc, csc)] = self.layout();
        // The 1x1 kernel: weights packed at load (pack_direct), or a small A packed now
        // (pack_small_a); one batch, B and C rows contiguous.
        let packed_now;
        let direct = match (&self.direct, &self.small_a) {
            (Some(d), _) => Some((d.kernel, &d.weights, d.bias.as_deref(), d.stream)),
            (None, Some(sa)) => {
                let (m, k) = (self.m.len, self.k.len);
                let len = (m - 1) * rsa as usize + (k - 1) * csa as usize + 1;
                // SAFETY: A's m x k elements lie in these `len` floats (caller's contract on
                // shapes; strides non-negative, `direct_bias`).
                let a = unsafe { std::slice::from_raw_parts(a.offset(oa), len) };
                packed_now = PackedWeights::pack(a, m, k, (rsa as usize, csa as usize));
                Some((sa.kernel, &packed_now, sa.bias.as_deref(), true))
            }
            (None, None) => None,
        };
        if let Some((kernel, weights, bias, stream)) = direct {
            // SAFETY: caller's contract on shapes and disjoint columns.
            unsafe {
                pointwise::multiply(
                    kernel,
                    weights,
                    &pointwise::Rows {
                        x: b.offset(ob),
                        rs: rsb as usize,
                    },
                    (c.offset(oc), rsc as usize),
                    cols,
                    bias,
                    stream,
                )
            };
            return;
        }
        if let Some(l) = &self.linear {
            // pack_linear: B the same for every batch, C's columns contiguous.
            // SAFETY: caller's contract on shapes and disjoint blocks; bands of columns start
            // at multiples of 16 (`tasks`).
            unsafe {
                linear::multiply(
                    l.kernel,
                    (a.offset(oa), rsa, csa),
                    &l.panels,
                    (c.offset(oc), rsc as usize),
                    (rows, cols),
                    l.bias.as_deref(),
                )
            };
            return;
        }
        let (r0, c0) = (rows.start as isize, cols.start as isize);
        let (m, n) = (rows.len(), cols.len());
        // SAFETY: every offset below stays inside the tensors (caller's contract on shapes).
        unsafe {
            let a = a.offset(oa + r0 * rsa);
            let b = b.offset(ob + c0 * csb);
            let c = c.offset(oc + r0 * rsc + c0 * csc);
            let bias_at = self
                .bias
                .as_ref()
                .map_or(0, |b| obias + r0 * b.rows + c0 * b.cols);
            self.multiply((a, rsa, csa), (b, rsb, csb), (c, rsc, csc), (m, n), bias_at);
        }
    }

    /// `C = alpha A.B (+ bias)` for one block: `m x k` A, `k x n` B, `m x n` C, each (pointer,
    /// row stride, column stride); `bias_at` is where the block's first element is in the bias.
    ///
    /// # Safety
    /// The pointers and strides address valid matrices of these sizes.
    unsafe fn multiply(
        &self,
        (a, rsa, csa): (*const f32, isize, isize),
        (b, rsb, csb): (*const f32, isize, isize),
        (c, rsc, csc): (*mut f32, isize, isize),
        (m, n): (usize, usize),
        bias_at: isize,
    ) {
        // SAFETY: caller's contract.
        unsafe {
            let beta = match &self.bias {
                None => 0.0,
                Some(bias) => {
                    for i in 0..m {
                        let src = bias_at + i as isize * bias.rows;
                        let dst = c.offset(i as isize * rsc);
                        match (bias.cols, csc) {
                            (1, 1) => std::slice::from_raw_parts_mut(dst, n)
                                .copy_from_slice(&bias.values[src as usize..][..n]),
                            (0, 1) => std::slice::from_raw_parts_mut(dst, n)
                                .fill(bias.values[src as usize]),
                            _ => {
                                for j in 0..n as isize {
                                    *dst.offset(j * csc) =
                                        bias.values[(src + j * bias.cols) as usize];
                                }
                            }
                        }
                    }
                    1.0
                }
            };
            if self.k.len == 0 {
                if beta == 0.0 {
                    for i in 0..m as isize {
                        for j in 0..n as isize {
                            *c.offset(i * rsc + j * csc) = 0.0;
                        }
                    }
                }
                return;
            }
            let alpha = f32::from_bits(self.alpha.0);
            let is_narrow = n <= NARROW && self.k.len <= NARROW_K;
            if is_narrow {
                let dims = (m, self.k.len, n);
                narrow(
                    Kernel::best(),
                    (dims, alpha, beta, self.softmax.is_some()),
                    (a, rsa, csa),
                    (b, rsb, csb),
                    (c, rsc, csc),
                );
            } else {
                matrixmultiply::sgemm(
                    m, self.k.len, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc,
                );
            }
            if let Some(kernel) = self.softmax.filter(|_| !is_narrow) {
                // fold_softmax: columns are the whole, contiguous last axis.
                for i in 0..m as isize {
                    let row = std::slice::from_raw_parts_mut(c.offset(i * rsc), n);
                    softmax_rows(kernel, row, n);
                }
            }
        }
    }

    /// How the work is split for threads: whole batches when there are enough of them, else
    /// bands of rows or columns (multiples of the micro-kernel's 8).
    /// Returns (batches, bands per batch, band width, whether bands are rows).
    fn tasks(&self) -> (usize, usize, usize, bool) {
        let batches = self.batch.iter().map(|d| d.len).product::<usize>();
        // A folded softmax needs whole rows; the direct path whole columns.
        let by_rows = (self.m.len >= self.n.len || self.softmax.is_some())
            && self.direct.is_none()
            && self.small_a.is_none();
        let len = if by_rows { self.m.len } else { self.n.len };
        if batches >= 8 {
            return (batches, 1, len, by_rows);
        }
        // Multiples of the micro-kernels' widths (matrixmultiply's 8, pointwise's 16).
        let band = len.div_ceil(8).next_multiple_of(16).max(16);
        (batches, len.div_ceil(band), band, by_rows)
    }
}

/// Fewest elements of a C the 1x1 kernel stores around the cache: a smaller C (the decoder's
/// 2 MiB projections) stays in the shared last-level cache for the attention that reads it next
/// (streamed, the decoder's channels-first projections ran slower at 2 threads:
/// docs/BENCHMARKS.md, appendix, eighth step).
const STREAM_MIN: usize = 1 << 21;

/// The packed weights (A) and per-row bias of a product computed by [`pointwise`].
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Direct {
    pub(super) kernel: Kernel,
    pub(super) weights: PackedWeights,
    pub(super) bias: Option<Vec<f32>>,
    /// Store C around the cache (a C of at least [`STREAM_MIN`] values).
    pub(super) stream: bool,
}

// Plan equality only (tract compares ops to merge duplicates).
impl Eq for Direct {}

/// Largest A (in values) packed on each run for [`pointwise`]: 64 KiB, in L2 (each thread's
/// band of columns packs its own copy).
const SMALL_A: usize = 16 * 1024;

/// The kernel and per-row bias of a product whose small A is packed on each run.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct SmallA {
    pub(super) kernel: Kernel,
    pub(super) bias: Option<Vec<f32>>,
}

// Plan equality only (tract compares ops to merge duplicates).
impl Eq for SmallA {}

/// The packed weights (B) and per-column bias of a product computed by [`linear`].
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Linear {
    pub(super) kernel: Kernel,
    pub(super) panels: linear::WeightPanels,
    pub(super) bias: Option<Vec<f32>>,
}

// Plan equality only (tract compares ops to merge duplicates).
impl Eq for Linear {}

/// An f32 compared and hashed by its bits (ops are compared for equality).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct F32Bits(pub(super) u32);

/// The operands, shared by the threads writing disjoint blocks of one output.
#[derive(Clone, Copy)]
struct Shared(*const f32, *const f32, *mut f32);

impl Shared {
    /// The pointers (a method, so that closures capture the whole `Sync` wrapper).
    fn get(self) -> (*const f32, *const f32, *mut f32) {
        (self.0, self.1, self.2)
    }
}
// SAFETY: the threads write disjoint blocks (see `Gemm::tasks`).
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Op for Gemm {
    fn name(&self) -> StaticName {
        "Gemm".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "batch {} m {} k {} n {} swap {} alpha {} bias {} softmax {} direct {} linear {}",
            self.batch.iter().map(|d| d.len).product::<usize>(),
            self.m.len,
            self.k.len,
            self.n.len,
            self.swap,
            f32::from_bits(self.alpha.0),
            self.bias.is_some(),
            self.softmax.is_some(),
            self.direct.is_some(),
            self.linear.is_some()
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for Gemm {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(inputs.len() == 2, "Gemm: {} inputs", inputs.len());
        for (i, x) in inputs.iter().enumerate() {
            ensure!(
                x.datum_type() == DatumType::F32 && x.shape() == &*self.input_shapes[i],
                "Gemm: input {i} is {:?} {:?}, planned for f32 {:?}",
                x.datum_type(),
                x.shape(),
                self.input_shapes[i]
            );
        }
        let a = inputs[0].try_as_plain_ram()?;
        let b = inputs[1].try_as_plain_ram()?;
        let (pa, pb) = (a.as_slice::<f32>()?.as_ptr(), b.as_slice::<f32>()?.as_ptr());
        let (pa, pb) = if self.swap { (pb, pa) } else { (pa, pb) };
        // SAFETY: every element is written by the blocks below (bias or product).
        let mut output = unsafe { Tensor::uninitialized::<f32>(&self.output_shape)? };
        let mut plain = output.try_as_plain_ram_mut()?;
        let ptrs = Shared(pa, pb, plain.as_slice_mut::<f32>()?.as_mut_ptr());
        let (batches, bands, band, by_rows) = self.tasks();
        let band_of = |len: usize, i: usize| (i * band).min(len)..((i + 1) * band).min(len);
        par_tasks(batches * bands, self.fma(), |t| {
            let p = ptrs.get();
            let (bi, band) = (t / bands, t % bands);
            let (rows, cols) = if by_rows {
                (band_of(self.m.len, band), 0..self.n.len)
            } else {
                (0..self.m.len, band_of(self.n.len, band))
            };
            // SAFETY: shapes checked above; tasks cover disjoint blocks.
            unsafe { self.block(p, bi, rows, cols) };
        })?;
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for Gemm {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        for (i, f) in inputs.iter().enumerate() {
            ensure!(
                f.shape.as_concrete() == Some(&*self.input_shapes[i]),
                "Gemm: input {i} fact {:?}, planned for {:?}",
                f.shape,
                self.input_shapes[i]
            );
        }
        Ok(tvec!(f32::fact(&*self.output_shape)))
    }

    fn cost(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        Ok(tvec!((Cost::FMA(DatumType::F32), self.fma().into())))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::f32s;
    use crate::{Replaced, compare_with_tract, substitute_decluttered};
    use sonomask_kernels::Kernel;

    use crate::test_values as rand;

    fn tensor(seed: &mut u64, shape: &[usize]) -> Tensor {
        Tensor::from_shape(shape, &rand(seed, shape.iter().product())).unwrap()
    }

    /// A decluttered model `expr(x, w) (+ bias)` with `w` (and the bias) constant unless
    /// `w_const` is false, then `w` is a second input.
    fn model(
        expr: &str,
        x: &Tensor,
        w: &Tensor,
        w_const: bool,
        (scale, bias): (Option<f32>, Option<&Tensor>),
    ) -> TypedModel {
        let mut m = TypedModel::default();
        let xs = m.add_source("x", f32::fact(x.shape())).unwrap();
        let ws = if w_const {
            m.add_const("w", w.clone()).unwrap()
        } else {
            m.add_source("w", f32::fact(w.shape())).unwrap()
        };
        let op = EinSum::new(expr.parse().unwrap(), DatumType::F32);
        let mut out = m.wire_node("product", op, &[xs, ws]).unwrap();
        if let Some(v) = scale {
            let rank = x.rank().max(w.rank());
            let k = m
                .add_const("scale.value", tensor0(v).broadcast_into_rank(rank).unwrap())
                .unwrap();
            out = m
                .wire_node("scale", tract_core::ops::math::mul(), &[out[0], k])
                .unwrap();
        }
        if let Some(b) = bias {
            let bs = m.add_const("bias.value", b.clone()).unwrap();
            out = m
                .wire_node("bias", tract_core::ops::math::add(), &[out[0], bs])
                .unwrap();
        }
        m.select_output_outlets(&out).unwrap();
        m
    }

    fn run(m: TypedModel, inputs: TVec<TValue>) -> Vec<f32> {
        let out = m.into_runnable().unwrap().run(inputs).unwrap();
        f32s(&out[0]).unwrap().to_vec()
    }

    /// Runs `expr` through tract alone and through our substitution; returns how many products
    /// and biases were replaced and the largest difference.
    fn compare(
        expr: &str,
        xs: &[usize],
        ws: &[usize],
        w_const: bool,
        (scale, bias): (Option<f32>, Option<&[usize]>),
    ) -> (Replaced, f32) {
        let mut seed = (xs.iter().sum::<usize>() * 31 + ws.len()) as u64;
        let x = tensor(&mut seed, xs);
        let w = tensor(&mut seed, ws);
        let b = bias.map(|s| tensor(&mut seed, s));
        let inputs = || {
            let mut v = tvec![x.clone().into_tvalue()];
            if !w_const {
                v.push(w.clone().into_tvalue());
            }
            v
        };
        let stock = model(expr, &x, &w, w_const, (scale, b.as_ref()));
        compare_with_tract(stock, inputs())
    }

    #[test]
    fn matches_tract_on_the_models_products() {
        // (expression, input, weights, weights constant, bias) as they occur in MobileSAM/CLIP
        // (smaller), with odd sizes to hit every kernel edge.
        type Case<'a> = (&'a str, &'a [usize], &'a [usize], bool, Option<&'a [usize]>);
        let cases: &[Case] = &[
            ("mk,kn->mn", &[37, 29], &[29, 19], true, Some(&[1, 19])),
            ("mk,kn->mn", &[64, 64], &[64, 3], true, None),
            (
                "amk,kn->amn",
                &[5, 13, 16],
                &[16, 24],
                true,
                Some(&[1, 1, 24]),
            ),
            (
                "ambk,bkn->amn",
                &[5, 13, 3, 8],
                &[3, 8, 10],
                true,
                Some(&[1, 1, 10]),
            ),
            (
                "ambk,anbk->abmn",
                &[5, 13, 3, 8],
                &[5, 11, 3, 8],
                false,
                None,
            ),
            (
                "abmk,akbn->ambn",
                &[5, 3, 13, 11],
                &[5, 11, 3, 8],
                false,
                None,
            ),
            (
                "NIHW,OI->OHW",
                &[1, 6, 9, 7],
                &[10, 6],
                true,
                Some(&[10, 1, 1]),
            ),
            (
                "IHW,OI->NOHW",
                &[10, 9, 7],
                &[6, 10],
                true,
                Some(&[1, 6, 1, 1]),
            ),
            ("IHW,OI->OHW", &[10, 9, 7], &[12, 10], true, None),
            (
                "HWI,OI->OHW",
                &[9, 7, 10],
                &[12, 10],
                true,
                Some(&[12, 1, 1]),
            ),
            (
                "HWI,OI->NOHW",
                &[9, 7, 10],
                &[12, 10],
                true,
                Some(&[1, 1, 1, 1]),
            ),
            ("mk,nk->mn", &[17, 33], &[9, 33], true, None),
        ];
        for &(expr, xs, ws, w_const, bias) in cases {
            let (done, diff) = compare(expr, xs, ws, w_const, (None, bias));
            assert_eq!(done.gemm, 1, "{expr} not replaced");
            assert_eq!(
                done.gemm_bias,
                bias.is_some() as usize,
                "{expr} bias not folded"
            );
            assert!(diff < 1e-5, "{expr}: relative difference {diff:e}");
        }
    }

    #[test]
    fn full_bias_is_folded() {
        // A full [8, 6] bias is a strided run along rows and columns: folded.
        let (done, diff) = compare("mk,kn->mn", &[8, 5], &[5, 6], true, (None, Some(&[8, 6])));
        assert_eq!((done.gemm, done.gemm_bias), (1, 1));
        assert!(diff < 1e-5, "{diff:e}");
    }

    #[test]
    fn attention_scale_and_bias_are_folded() {
        // TinyViT: attn = (q . k^T) * scale + bias[heads, n, n], broadcast over windows.
        let (done, diff) = compare(
            "ambk,anbk->abmn",
            &[5, 13, 3, 8],
            &[5, 13, 3, 8],
            false,
            (Some(0.125), Some(&[1, 3, 13, 13])),
        );
        assert_eq!((done.gemm, done.gemm_bias), (1, 1));
        assert!(diff < 1e-5, "{diff:e}");
        // A scale alone.
        let (done, diff) = compare("mk,kn->mn", &[7, 5], &[5, 9], true, (Some(-3.0), None));
        assert_eq!((done.gemm, done.gemm_bias), (1, 0));
        assert!(diff < 1e-5, "{diff:e}");
    }

    #[test]
    fn attention_softmax_is_folded() {
        use tract_core::ops::nn::{Softmax, SoftmaxKind};
        // softmax(q . k^T * scale + bias) over the last axis, per window and head.
        let mut seed = 21;
        let (q, k) = (
            tensor(&mut seed, &[9, 13, 3, 8]),
            tensor(&mut seed, &[9, 13, 3, 8]),
        );
        let bias = tensor(&mut seed, &[1, 3, 13, 13]);
        let mut m = model("ambk,anbk->abmn", &q, &k, false, (Some(0.35), Some(&bias)));
        let last = m.output_outlets().unwrap()[0];
        let sm = Softmax {
            axes: tvec![3],
            quant_output_dt: None,
            kind: SoftmaxKind::Softmax,
        };
        let out = m.wire_node("softmax", sm, &[last]).unwrap();
        m.select_output_outlets(&out).unwrap();
        let inputs = || tvec![q.clone().into_tvalue(), k.clone().into_tvalue()];
        let want = run(m.clone().into_optimized().unwrap(), inputs());
        m.declutter().unwrap();
        let done = substitute_decluttered(&mut m, Kernel::best()).unwrap();
        assert_eq!((done.gemm, done.gemm_bias, done.gemm_softmax), (1, 1, 1));
        m.optimize().unwrap();
        assert!(!m.nodes.iter().any(|n| n.op.name().contains("Softmax")));
        let got = run(m, inputs());
        let diff = want
            .iter()
            .zip(&got)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-6, "{diff:e}");
        // Rows of a softmax sum to one.
        for row in got.chunks(13) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
    }

    #[test]
    fn channels_first_1x1_convolutions_take_the_direct_kernel() {
        // Wide enough (>= 256 pixels) for the direct path; 13 output channels (two blocks of 6
        // and a partial one), 390 pixels (a partial 16-wide tile), with and without a bias.
        for (xs, ws, bias) in [
            (
                &[1usize, 20, 15, 26][..],
                &[13usize, 20][..],
                Some(&[13usize, 1, 1][..]),
            ),
            (&[20, 15, 26][..], &[13, 20][..], None),
        ] {
            let expr = if xs.len() == 4 {
                "NIHW,OI->OHW"
            } else {
                "IHW,OI->OHW"
            };
            let (done, diff) = compare(expr, xs, ws, true, (None, bias));
            assert_eq!((done.gemm, done.gemm_direct), (1, 1), "{expr}");
            assert!(diff < 1e-5, "{expr}: {diff:e}");
        }
    }

    #[test]
    fn linear_layers_take_the_linear_kernel() {
        // (expression, input, weights, bias, taken): tokens x channels times constant weights,
        // with partial row blocks and panels, k sliced (> 512) and not, the weights stored as
        // [k, n] or as a MatMul's transposed [n, k]; a transposed A, too few rows and a
        // per-row bias stay with the packed sgemm.
        type Case<'a> = (&'a str, &'a [usize], &'a [usize], Option<&'a [usize]>, bool);
        let cases: &[Case] = &[
            ("mk,kn->mn", &[50, 29], &[29, 37], Some(&[1, 37]), true),
            ("mk,nk->mn", &[61, 600], &[20, 600], Some(&[1, 20]), true),
            ("amk,kn->amn", &[3, 20, 16], &[16, 24], None, true),
            ("km,kn->mn", &[29, 50], &[29, 37], None, false),
            ("mk,kn->mn", &[47, 29], &[29, 37], None, false),
            ("mk,kn->mn", &[50, 29], &[29, 37], Some(&[50, 1]), false),
        ];
        for &(expr, xs, ws, bias, taken) in cases {
            let (done, diff) = compare(expr, xs, ws, true, (None, bias));
            assert_eq!(done.gemm, 1, "{expr} {xs:?} not replaced");
            assert_eq!(done.gemm_linear, taken as usize, "{expr} {xs:?}");
            assert!(diff < 1e-5, "{expr} {xs:?}: relative difference {diff:e}");
        }
    }

    #[test]
    fn small_computed_a_operands_take_the_1x1_kernel() {
        // The decoder's masks: 4 hypernetwork rows (computed, not constant) of 32 over a map of
        // pixels; with a per-row bias too. Too big an A, or too few pixels, stays with the sgemm.
        type Case<'a> = (&'a str, &'a [usize], &'a [usize], Option<&'a [usize]>, bool);
        let cases: &[Case] = &[
            ("mk,kn->mn", &[4, 32], &[32, 300], None, true),
            ("mk,kn->mn", &[5, 7], &[7, 333], Some(&[5, 1]), true),
            ("mk,kn->mn", &[200, 100], &[100, 300], None, false),
            ("mk,kn->mn", &[4, 32], &[32, 200], None, false),
        ];
        for &(expr, xs, ws, bias, taken) in cases {
            let (done, diff) = compare(expr, xs, ws, false, (None, bias));
            assert_eq!(done.gemm, 1, "{expr} {xs:?} not replaced");
            assert_eq!(done.gemm_small_a, taken as usize, "{expr} {xs:?} {ws:?}");
            assert!(diff < 1e-5, "{expr} {xs:?}: relative difference {diff:e}");
        }
    }

    #[test]
    fn sliced_inputs_are_read_in_place() {
        // TinyViT attention: q and k cut out of one qkv tensor along its last axis.
        let mut seed = 11;
        let qkv = tensor(&mut seed, &[5, 13, 3, 24]);
        let mut m = TypedModel::default();
        let x = m.add_source("qkv", f32::fact(qkv.shape())).unwrap();
        let slice = |m: &mut TypedModel, name: &str, r: std::ops::Range<usize>| {
            let op = tract_core::ops::array::Slice::new(3, r.start, r.end);
            m.wire_node(name, op, &[x]).unwrap()[0]
        };
        let q = slice(&mut m, "q", 0..8);
        let k = slice(&mut m, "k", 8..16);
        let op = EinSum::new("ambk,anbk->abmn".parse().unwrap(), DatumType::F32);
        let out = m.wire_node("attn", op, &[q, k]).unwrap();
        m.select_output_outlets(&out).unwrap();
        let want = run(
            m.clone().into_optimized().unwrap(),
            tvec![qkv.clone().into_tvalue()],
        );
        m.declutter().unwrap();
        let done = substitute_decluttered(&mut m, Kernel::best()).unwrap();
        assert_eq!((done.gemm, done.gemm_sliced), (1, 1));
        m.optimize().unwrap();
        let slices = m.nodes.iter().filter(|n| n.op.name() == "Slice").count();
        let got = run(m, tvec![qkv.into_tvalue()]);
        assert_eq!(got.len(), want.len());
        let diff = want
            .iter()
            .zip(&got)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-5, "{diff:e}");
        assert_eq!(slices, 0, "the slices are no longer computed");
    }

    #[test]
    fn bias_broadcast_inside_a_group_stays_an_add() {
        // Rows are H x W merged; a bias varying along W only is not one run over them.
        let (done, diff) = compare(
            "IHW,OI->OHW",
            &[4, 3, 5],
            &[6, 4],
            true,
            (None, Some(&[1, 1, 5])),
        );
        assert_eq!((done.gemm, done.gemm_bias), (1, 0));
        assert!(diff < 1e-5, "{diff:e}");
    }

    #[test]
    fn other_einsums_are_left_to_tract() {
        let fact = |s: &[usize]| f32::fact(s);
        let op = |e: &str| EinSum::new(e.parse().unwrap(), DatumType::F32);
        // A summed axis only one input has.
        assert!(
            Gemm::replacing(
                &op("mk,nj->mn"),
                [&fact(&[4, 3]), &fact(&[5, 2])],
                &fact(&[4, 5])
            )
            .is_none()
        );
        // A diagonal.
        assert!(
            Gemm::replacing(
                &op("mm,mn->mn"),
                [&fact(&[4, 4]), &fact(&[4, 5])],
                &fact(&[4, 5])
            )
            .is_none()
        );
        // Rows that are not one strided run in the first input (m and j interleaved with k).
        assert!(
            Gemm::replacing(
                &op("mkj,kn->mjn"),
                [&fact(&[4, 3, 2]), &fact(&[3, 5])],
                &fact(&[4, 2, 5])
            )
            .is_none()
        );
        // Not f32.
        let mut q = op("mk,kn->mn");
        q.operating_dt = DatumType::I32;
        assert!(Gemm::replacing(&q, [&fact(&[4, 3]), &fact(&[3, 5])], &fact(&[4, 5])).is_none());
        assert!(
            Gemm::replacing(
                &op("mk,kn->mn"),
                [&fact(&[4, 3]), &fact(&[3, 5])],
                &fact(&[4, 5])
            )
            .is_some()
        );
    }

    /// The narrow path against a packed sgemm (1e-5) on the decoder's shapes and edges, with
    /// transposed operands and C; every kernel equals scalar bit for bit.
    #[test]
    fn narrow_products_match_sgemm_and_every_kernel_equals_scalar() {
        let mut seed = 5;
        for (m, k, n) in [
            (4096, 16, 7),
            (13, 7, 8),
            (1, 1, 1),
            (9, NARROW_K, 3),
            (6, 0, 2),
        ] {
            let a = rand(&mut seed, m * k);
            let b = rand(&mut seed, k * n);
            let c0 = rand(&mut seed, m * n);
            for (alpha, beta) in [(1.0f32, 0.0f32), (0.25, 1.0)] {
                // A row-major, B transposed (as k is read inside the token tensor), C either way.
                let (pa, pb) = ((a.as_ptr(), k as isize, 1), (b.as_ptr(), 1, k as isize));
                let mut want = c0.clone();
                unsafe {
                    matrixmultiply::sgemm(
                        m,
                        k,
                        n,
                        alpha,
                        pa.0,
                        pa.1,
                        pa.2,
                        pb.0,
                        pb.1,
                        pb.2,
                        beta,
                        want.as_mut_ptr(),
                        n as isize,
                        1,
                    )
                };
                let run = |kernel, ct: bool, softmax: bool| {
                    let (rsc, csc) = if ct { (1, m as isize) } else { (n as isize, 1) };
                    let mut c = vec![0f32; m * n];
                    for i in 0..m {
                        for j in 0..n {
                            c[i * rsc as usize + j * csc as usize] = c0[i * n + j];
                        }
                    }
                    unsafe {
                        narrow(
                            kernel,
                            ((m, k, n), alpha, beta, softmax),
                            pa,
                            pb,
                            (c.as_mut_ptr(), rsc, csc),
                        )
                    };
                    let mut out = vec![0f32; m * n];
                    for i in 0..m {
                        for j in 0..n {
                            out[i * n + j] = c[i * rsc as usize + j * csc as usize];
                        }
                    }
                    out
                };
                let scalar = run(Kernel::Scalar, false, false);
                let diff = scalar
                    .iter()
                    .zip(&want)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0f32, f32::max);
                assert!(diff < 1e-5, "{m}x{k}x{n}: {diff:e}");
                // The folded softmax is softmax_rows' result exactly, for every kernel of it.
                let mut soft = scalar.clone();
                if n > 0 {
                    softmax_rows(Kernel::Scalar, &mut soft, n);
                }
                for kern in Kernel::available() {
                    let mut other = scalar.clone();
                    if n > 0 {
                        softmax_rows(kern, &mut other, n);
                    }
                    assert_eq!(other, soft, "{kern:?} softmax_rows");
                    for ct in [false, true] {
                        let what = format!("{kern:?} {m}x{k}x{n} C transposed {ct}");
                        assert_eq!(run(kern, ct, false), scalar, "{what}");
                        assert_eq!(run(kern, ct, true), soft, "{what} softmax");
                    }
                }
            }
        }
    }
}
