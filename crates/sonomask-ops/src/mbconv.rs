//! TinyViT's convolution blocks in one pass over the image, row by row, the expanded
//! activations never leaving the cache: `1x1 -> GELU -> depthwise 3x3 -> GELU -> 1x1`, then
//! either `+ x -> GELU` (stage 0's MBConv, the inverted residual) or, for a stride-2 depthwise
//! (the patch merging after stage 0), the result as is, channels-first or as tokens
//! (`[pixels, channels]`, the transpose after it folded in).
//!
//! Why: at stage 0 the MBConv expands 64 channels of a 256x256 map to 256 (a 64 MiB tensor),
//! and each of its five nodes reads and writes such a tensor from memory: the two 1x1
//! convolutions ran at half the products' rate elsewhere, the depthwise pass and the two GELUs
//! are memory-bound, together over a quarter of the encoder for a twentieth of its multiply-adds (figures: docs/BENCHMARKS.md, appendix, "What each own operator replaced"). Here each thread walks a run of output rows
//! keeping three expanded rows in a ring (the depthwise window): per output row it expands the
//! next input row or two (GELU applied while it is in cache), runs the depthwise taps and GELU
//! into one row of all expanded channels, projects that back, and finishes the row (residual
//! and GELU, or the store). Rows above and below a thread's run are expanded twice (once by
//! each thread). The same for the patch merging after stage 0 (64 -> 128 -> 128 channels,
//! 256x256 -> 128x128 tokens), whose unfused expansion scaled poorly and whose transpose ran on
//! one thread. Measured against the unfused plan, interleaved in one process:
//! docs/BENCHMARKS.md, appendix, sixth step.
//!
//! The kernels are the unfused ops' own ([`pointwise::multiply`], [`taps_rows`],
//! [`gelu_slice`]) in the same order per value, so the result equals the unfused plan bit for
//! bit (tested with `==`, and to 1e-5 against tract's stock ops).
//!
//! In an int8 model's plan the projection may run in int8 ([`Int8Projection`]): the quantizer
//! leaves these convolutions fp32 (onnxruntime's `QLinearConv` rounds its output to u8 too,
//! which cost LiteMedSAM's embedding 0.18 of cosine), so the weights are quantized here, per
//! output channel, and each output row's depthwise activations over their own range, with an
//! f32 output.

use std::cell::RefCell;

use tract_core::internal::*;

use crate::conv3x3::Conv3x3;
use crate::exec::{eval_by_rows, planned_facts};
use crate::f32s;
use crate::gelu::gelu_slice;
use crate::gemm::Gemm;
use crate::pointwise::{self, PackedWeights, Rows};
use crate::ring::{PaddedRow, slot};
use sonomask_kernels::Kernel;
use sonomask_kernels::conv::taps_rows;
use sonomask_kernels::int8::{
    self, I8Kernel, I8Weights, Requant, WeightBits, quantize_u8_transposed,
};
use sonomask_kernels::saliency::min_max;
use sonomask_kernels::transpose::transpose;

thread_local! {
    /// Each thread's expanded-row ring, depthwise output row and projected row, reused across
    /// calls (the sizes are pinned by the model, so it is allocated once per thread).
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Each thread's u8 rows, column scales and row-major output of an int8 projection.
    static SCRATCH_I8: RefCell<(Vec<u8>, Vec<f32>, Vec<f32>)> =
        const { RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
}

/// The projection `[c_out, e]` in int8: weights symmetric per output channel in 8 bits (scale
/// `max |w| / 127`) or 7 (`/ 64`, a 7-bit-weight model's plan), quantized at load; the
/// activations of each output row (`e x ow`, after the depthwise GELU) asymmetric u8 over the
/// row's own range, 0 included (onnxruntime's `DynamicQuantizeLinear` rule, on a row instead
/// of a tensor): no calibration, and a row's range is what its values need. Measured on
/// LiteMedSAM (`quantize/mbconv_int8.py`): embedding cosine to fp32 0.9993 with stage 0's
/// projections so, 0.9879 with its expansions too (left fp32).
#[derive(Debug, Clone, PartialEq)]
pub struct Int8Projection {
    weights: I8Weights,
    w_scale: Vec<f32>,
}

impl Int8Projection {
    /// From `w` (`c_out x e`, row-major); `None` for a weight that is not finite or a
    /// reduction longer than the int8 kernel takes.
    pub fn quantize(
        kernel: I8Kernel,
        bits: WeightBits,
        w: &[f32],
        c_out: usize,
        e: usize,
    ) -> Option<Self> {
        if e == 0 || c_out == 0 || e > int8::MAX_K || w.len() != c_out * e {
            return None;
        }
        let mut q = vec![0i8; e * c_out];
        let mut w_scale = vec![0f32; c_out];
        let qmax = bits.max();
        for (o, row) in w.chunks_exact(e).enumerate() {
            if !row.iter().all(|v| v.is_finite()) {
                return None;
            }
            let amax = row.iter().fold(0f32, |a, v| a.max(v.abs()));
            let s = if amax > 0.0 { amax / qmax } else { 1.0 };
            w_scale[o] = s;
            for (i, v) in row.iter().enumerate() {
                q[i * c_out + o] = (v / s).round_ties_even().clamp(-qmax, qmax) as i8;
            }
        }
        let weights = I8Weights::pack(kernel, &q, e, c_out, (c_out, 1));
        Some(Int8Projection { weights, w_scale })
    }

    /// `proj` (`c_out x ow`) = the projection of `x` (`e x ow`) plus `bias`: `x` quantized to
    /// `q = clamp(round(x / s) + z, 0, 255)` with `s = (max(hi, 0) - min(lo, 0)) / 255` and
    /// `z = round(-min(lo, 0) / s)` over its values, the product exact in i32, then
    /// `(sum (q - z) w) * (s * w_scale) + bias` per value. False, and `proj` untouched, when the
    /// range is not finite (the caller runs the f32 projection).
    pub fn project(
        &self,
        k: Kernel,
        x: &[f32],
        (e, ow): (usize, usize),
        bias: &[f32],
        proj: &mut [f32],
    ) -> bool {
        let c_out = self.w_scale.len();
        assert!(x.len() >= e * ow && proj.len() >= c_out * ow && bias.len() >= c_out);
        let (lo, hi) = min_max(k, &x[..e * ow]);
        let (lo, hi) = (lo.min(0.0), hi.max(0.0));
        if !(lo.is_finite() && hi.is_finite()) {
            return false;
        }
        let s = if hi > lo { (hi - lo) / 255.0 } else { 1.0 };
        let z = (-lo / s).round_ties_even().clamp(0.0, 255.0) as u8;
        let k4 = self.weights.row_len();
        SCRATCH_I8.with_borrow_mut(|(a, scale, c)| {
            a.resize(ow * k4, z);
            quantize_u8_transposed(k, x, ow, (ow, e), (1.0 / s, z), a, k4);
            scale.clear();
            scale.extend(self.w_scale.iter().map(|w| w * s));
            c.resize(ow * c_out, 0.0);
            let rq = Requant {
                a_zero: z,
                scale,
                bias: &bias[..c_out],
                out_q: None,
                post_bias: None,
            };
            int8::multiply(a, k4, ow, &self.weights, &rq, c, c_out);
            // SAFETY: proj holds c_out rows of ow.
            unsafe { transpose(k, c, c_out, (ow, c_out), proj.as_mut_ptr(), ow) };
        });
        true
    }
}

/// What follows the projection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tail {
    /// `GELU(x + ...)`, channels-first (an inverted residual: stride 1, as many channels out
    /// as in).
    Residual,
    /// Nothing: the `[c_out, oh, ow]` map.
    Planar,
    /// Nothing, stored as `[oh * ow, c_out]` tokens.
    Tokens,
}

/// A fused convolution block over a `[1, c, h, w]` (or `[c, h, w]`) f32 map.
#[derive(Debug, Clone, PartialEq)]
pub struct MbConv {
    kernel: Kernel,
    /// Input channels, expanded channels, output channels; input height and width.
    c: usize,
    e: usize,
    c_out: usize,
    h: usize,
    w: usize,
    /// The depthwise convolution's stride (1 or 2; padding 1).
    stride: usize,
    tail: Tail,
    /// The 1x1 expansion `[e, c]` and its bias.
    expand: PackedWeights,
    expand_bias: Vec<f32>,
    /// The depthwise 3x3 taps (`[e, 9]`, row-major) and bias.
    taps: Vec<f32>,
    dw_bias: Vec<f32>,
    /// The 1x1 projection `[c_out, e]` and its bias.
    project: PackedWeights,
    project_bias: Vec<f32>,
    /// The projection in int8 (an int8 model's plan), else f32.
    project_i8: Option<Int8Projection>,
    in_shape: TVec<usize>,
    out_shape: TVec<usize>,
}

// Plan equality only (tract compares ops to merge duplicates).
impl Eq for MbConv {}

impl MbConv {
    /// The fused block for `expand` (a direct 1x1 product over a map of `in_shape`), depthwise
    /// `dw` with constant `taps` and `bias`, `project` (a direct 1x1 product) and `tail`,
    /// producing `out_shape`, if their geometries chain: padding 1, each stage's plane the one
    /// the next reads.
    pub fn fusing(
        expand: &Gemm,
        (dw, taps, bias): (&Conv3x3, &Tensor, &Tensor),
        project: &Gemm,
        (tail, in_shape, out_shape): (Tail, &[usize], &[usize]),
    ) -> Option<Self> {
        let (de, dp) = (expand.direct.as_ref()?, project.direct.as_ref()?);
        let r = in_shape.len();
        if !(3..=4).contains(&r) || (r == 4 && in_shape[0] != 1) {
            return None;
        }
        let (c, h, w) = (in_shape[r - 3], in_shape[r - 2], in_shape[r - 1]);
        let (e, c_out, stride) = (de.weights.m, dp.weights.m, dw.stride);
        let (oh, ow) = ((h - 1) / stride + 1, (w - 1) / stride + 1);
        // Each 1x1 reads its input's channels and writes its output's as contiguous planes.
        let planar = |g: &Gemm, pixels: usize| {
            let [_, (rsb, csb), (rsc, csc)] = g.layout();
            let plane = pixels as isize;
            g.batch.iter().all(|d| d.len == 1)
                && g.n.len == pixels
                && (rsb, csb, rsc, csc) == (plane, 1, plane, 1)
        };
        let out_ok = match tail {
            Tail::Residual => stride == 1 && c_out == c && out_shape == in_shape,
            Tail::Planar => out_shape.iter().product::<usize>() == c_out * oh * ow,
            Tail::Tokens => {
                let n = out_shape.len();
                n >= 2
                    && out_shape[n - 2..] == [oh * ow, c_out]
                    && out_shape[..n - 2].iter().all(|&d| d == 1)
            }
        };
        let ok = h > 0
            && w > 0
            && (1..=2).contains(&stride)
            && out_ok
            && planar(expand, h * w)
            && planar(project, oh * ow)
            && de.weights.k == c
            && dp.weights.k == e
            && dw.dense.is_none()
            && dw.pad == [(1, 1), (1, 1)]
            && taps.datum_type() == DatumType::F32
            && taps.shape() == [e, 1, 3, 3]
            && bias.datum_type() == DatumType::F32
            && [0, 1, e].contains(&bias.len());
        if !ok {
            return None;
        }
        let taps = f32s(taps).ok()?.to_vec();
        let b = f32s(bias).ok()?;
        let dw_bias = (0..e).map(|i| b.get(i).or(b.first()).copied().unwrap_or(0.0));
        let or_zeros = |b: &Option<Vec<f32>>, n: usize| b.clone().unwrap_or_else(|| vec![0.0; n]);
        Some(MbConv {
            kernel: de.kernel,
            c,
            e,
            c_out,
            h,
            w,
            stride,
            tail,
            expand: de.weights.clone(),
            expand_bias: or_zeros(&de.bias, e),
            taps,
            dw_bias: dw_bias.collect(),
            project: dp.weights.clone(),
            project_bias: or_zeros(&dp.bias, c_out),
            project_i8: None,
            in_shape: in_shape.into(),
            out_shape: out_shape.into(),
        })
    }

    /// The block with its projection in int8 (see [`Int8Projection`]) where its weights allow,
    /// else as it was.
    pub fn with_int8_projection(mut self, kernel: I8Kernel, bits: WeightBits) -> Self {
        let w = self.project.unpacked();
        self.project_i8 = Int8Projection::quantize(kernel, bits, &w, self.c_out, self.e);
        self
    }

    /// Whether the projection runs in int8.
    pub fn int8_projection(&self) -> bool {
        self.project_i8.is_some()
    }

    /// Output height and width.
    fn out_hw(&self) -> (usize, usize) {
        (
            (self.h - 1) / self.stride + 1,
            (self.w - 1) / self.stride + 1,
        )
    }

    /// Layout of one padded expanded row in the ring.
    fn padded(&self) -> PaddedRow {
        PaddedRow {
            w: self.w,
            stride: self.stride,
        }
    }

    /// Floats of one thread's scratch: the ring of three padded expanded rows per channel, a
    /// staging row for stride 2, one depthwise output row, one projected row.
    fn scratch_len(&self) -> usize {
        let (_, ow) = self.out_hw();
        let staging = if self.stride == 1 { 0 } else { self.e * self.w };
        self.e * 3 * self.padded().len() + staging + self.e * ow + self.c_out * ow
    }

    /// Output rows `ys` of the block.
    ///
    /// # Safety
    /// `x` is the `c x h x w` input; `out` addresses the output, of which no one else writes
    /// rows `ys`.
    unsafe fn rows(&self, x: &[f32], out: *mut f32, ys: std::ops::Range<usize>) {
        let (k, e, c_out, s) = (self.kernel, self.e, self.c_out, self.stride);
        let (oh, ow) = self.out_hw();
        let (row, pw) = (self.padded(), self.padded().len());
        SCRATCH.with_borrow_mut(|scratch| {
            if scratch.len() < self.scratch_len() {
                scratch.resize(self.scratch_len(), 0.0);
            }
            let (ring, rest) = scratch.split_at_mut(e * 3 * pw);
            let staging = if s == 1 { 0 } else { e * self.w };
            let (staging, rest) = rest.split_at_mut(staging);
            let (dwo, proj) = rest.split_at_mut(e * ow);
            let proj = &mut proj[..c_out * ow];
            // The ring's padding columns are zeros (another op may have used the scratch).
            row.zero_padding(ring);
            let tap_at: [usize; 3] = std::array::from_fn(|kx| row.at(kx));
            let mut tag = [None::<isize>; 3];
            for y in ys {
                let top = (s * y) as isize - 1;
                for r in top..top + 3 {
                    if tag[slot(r)] != Some(r) {
                        self.expand_row(x, ring, staging, slot(r), r);
                        tag[slot(r)] = Some(r);
                    }
                }
                for (ch, dst) in dwo.chunks_exact_mut(ow).enumerate() {
                    let planes = &ring[ch * 3 * pw..(ch + 1) * 3 * pw];
                    let src = |t: usize| {
                        let at = slot(top + t as isize / 3) * pw + tap_at[t % 3];
                        &planes[at..at + ow]
                    };
                    let taps: &[f32; 9] = self.taps[ch * 9..ch * 9 + 9].try_into().expect("9");
                    taps_rows(k, dst, self.dw_bias[ch], &std::array::from_fn(src), taps);
                    gelu_slice(k, dst);
                }
                let int8 = self
                    .project_i8
                    .as_ref()
                    .is_some_and(|p| p.project(k, dwo, (e, ow), &self.project_bias, proj));
                let d = Rows {
                    x: dwo.as_ptr(),
                    rs: ow,
                };
                // SAFETY: dwo is e rows of ow, proj c_out rows of ow.
                unsafe {
                    if !int8 {
                        pointwise::multiply(
                            k,
                            &self.project,
                            &d,
                            (proj.as_mut_ptr(), ow),
                            0..ow,
                            Some(&self.project_bias),
                            false,
                        )
                    }
                };
                // SAFETY: output row y is ours (caller's contract).
                unsafe { self.finish_row(x, proj, out, (y, oh, ow)) };
            }
        });
    }

    /// Stores projected row `y` (`proj`, `c_out x ow`) after the tail.
    ///
    /// # Safety
    /// As [`MbConv::rows`], for row `y`.
    unsafe fn finish_row(
        &self,
        x: &[f32],
        proj: &mut [f32],
        out: *mut f32,
        (y, oh, ow): (usize, usize, usize),
    ) {
        if self.tail == Tail::Tokens {
            // Token by token: contiguous stores, the reads strided within the cached block.
            // SAFETY: tokens y * ow .. (y + 1) * ow are ours (caller's contract).
            let dst = unsafe {
                std::slice::from_raw_parts_mut(out.add(y * ow * self.c_out), ow * self.c_out)
            };
            for (i, token) in dst.chunks_exact_mut(self.c_out).enumerate() {
                for (ch, v) in token.iter_mut().enumerate() {
                    *v = proj[ch * ow + i];
                }
            }
            return;
        }
        for (ch, p) in proj.chunks_exact_mut(ow).enumerate() {
            if self.tail == Tail::Residual {
                let at = ch * self.h * self.w + y * self.w;
                for (v, xv) in p.iter_mut().zip(&x[at..at + ow]) {
                    *v += xv;
                }
                gelu_slice(self.kernel, p);
            }
            // SAFETY: row y of channel ch is ours (caller's contract).
            let at = ch * oh * ow + y * ow;
            unsafe { std::slice::from_raw_parts_mut(out.add(at), ow) }.copy_from_slice(p);
        }
    }

    /// Fills ring slot `slot` with expanded row `r` after GELU (zeros outside the image: the
    /// depthwise convolution's padding).
    fn expand_row(&self, x: &[f32], ring: &mut [f32], staging: &mut [f32], slot: usize, r: isize) {
        let (w, layout) = (self.w, self.padded());
        let pw = layout.len();
        if r < 0 || r as usize >= self.h {
            for p in ring.chunks_exact_mut(3 * pw) {
                let row = &mut p[slot * pw..(slot + 1) * pw];
                layout.clear(row);
            }
            return;
        }
        let xs = Rows {
            x: x[r as usize * w..].as_ptr(),
            rs: self.h * w,
        };
        // Stride 1: straight into the ring, after the left zero column; stride 2: into the
        // staging rows, then split into even and odd columns.
        let (c, rs_c) = if self.stride == 1 {
            (ring[slot * pw + 1..].as_mut_ptr(), 3 * pw)
        } else {
            (staging.as_mut_ptr(), w)
        };
        // SAFETY: x holds c planes of h x w, so c rows of w from row r's start; C is e rows of
        // w values rs_c apart (the ring's rows for this slot, or the staging rows).
        unsafe {
            pointwise::multiply(
                self.kernel,
                &self.expand,
                &xs,
                (c, rs_c),
                0..w,
                Some(&self.expand_bias),
                false,
            )
        };
        if self.stride == 1 {
            let rows = ring
                .chunks_exact_mut(3 * pw)
                .map(|p| &mut p[slot * pw + 1..][..w]);
            rows.for_each(|row| gelu_slice(self.kernel, row));
            return;
        }
        for (p, st) in ring
            .chunks_exact_mut(3 * pw)
            .zip(staging.chunks_exact_mut(w))
        {
            gelu_slice(self.kernel, st);
            layout.store(st, &mut p[slot * pw..(slot + 1) * pw]);
        }
    }

    fn fma(&self) -> usize {
        let (oh, ow) = self.out_hw();
        self.c * self.e * self.h * self.w + (self.c_out + 9) * self.e * oh * ow
    }

    /// GELU evaluations: after the expansion, after the depthwise, after the residual.
    fn gelus(&self) -> usize {
        let (oh, ow) = self.out_hw();
        let last = if self.tail == Tail::Residual {
            self.c_out
        } else {
            0
        };
        self.e * self.h * self.w + (self.e + last) * oh * ow
    }
}

impl Op for MbConv {
    fn name(&self) -> StaticName {
        "MbConv".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{} -> {} -> {} channels, {}x{} stride {}, {:?}, kernel {:?}{}",
            self.c,
            self.e,
            self.c_out,
            self.h,
            self.w,
            self.stride,
            self.tail,
            self.kernel,
            match &self.project_i8 {
                Some(p) => format!(", int8 projection ({})", p.weights.kernel().name()),
                None => String::new(),
            }
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for MbConv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        let shapes = (&self.in_shape[..], &self.out_shape[..]);
        eval_by_rows(
            "MbConv",
            &x,
            shapes,
            (self.out_hw().0, self.fma()),
            |xs, out, ys| {
                // SAFETY: shapes checked; the row runs are disjoint and cover every row.
                unsafe { self.rows(xs, out.get(), ys) };
                Ok(())
            },
        )
    }
}

impl TypedOp for MbConv {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        planned_facts("MbConv", inputs[0], (&self.in_shape, &self.out_shape))
    }

    /// The products' and taps' multiply-adds plus tract's cost for the GELUs (so that profiles
    /// count the same work as the unfused plan's).
    fn cost(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        Ok(tvec!(
            (
                Cost::FMA(DatumType::F32),
                (self.fma() + 14 * self.gelus()).into()
            ),
            (Cost::Div(DatumType::F32), self.gelus().into())
        ))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use tract_core::ops::change_axes::AxisOp;
    use tract_core::ops::cnn::{Conv, KernelFormat, PaddingSpec, PoolSpec};
    use tract_core::ops::element_wise::ElementWiseOp;
    use tract_core::ops::nn::{DataFormat, GeluExact};

    use super::*;
    use crate::{
        Fusions, Replaced, max_abs_diff, run_one, substitute_decluttered, substitute_with,
        test_values,
    };

    /// A `k x k` convolution from `ci` to `co` channels in `group`s, stride `s`, padding `k / 2`.
    fn conv(ci: usize, co: usize, group: usize, k: usize, s: usize) -> Conv {
        let p = k / 2;
        Conv {
            pool_spec: PoolSpec {
                data_format: DataFormat::NCHW,
                kernel_shape: tvec![k, k],
                padding: PaddingSpec::Explicit(tvec![p, p], tvec![p, p]),
                dilations: None,
                strides: Some(tvec![s, s]),
                input_channels: ci,
                output_channels: co,
            },
            kernel_fmt: KernelFormat::OIHW,
            group,
            q_params: None,
        }
    }

    /// TinyViT's convolution block over `[1, c, h, w]`: 1x1 to `e` channels, GELU, depthwise
    /// 3x3 of `stride`, GELU, 1x1 to `co` channels, then `tail`: `+ x` and GELU (`Residual`),
    /// nothing (`Planar`), or flattened to `[1, pixels, co]` tokens (`Tokens`).
    fn block(
        (c, e, co): (usize, usize, usize),
        (h, w): (usize, usize),
        stride: usize,
        tail: Tail,
    ) -> TypedModel {
        let mut seed = (c * 131 + e * 17 + h + w) as u64;
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact([1, c, h, w])).unwrap();
        let mut konst = |m: &mut TypedModel, name: &str, shape: &[usize], scale: f32| {
            let n = shape.iter().product();
            let v: Vec<f32> = test_values(&mut seed, n)
                .iter()
                .map(|v| v * scale)
                .collect();
            m.add_const(name, Tensor::from_shape(shape, &v).unwrap())
                .unwrap()
        };
        let gelu = |m: &mut TypedModel, name: &str, i: OutletId| {
            m.wire_node(name, ElementWiseOp(Box::new(GeluExact {}), None), &[i])
                .unwrap()[0]
        };
        let (w1, b1) = (
            konst(&mut m, "w1", &[e, c, 1, 1], 1.0),
            konst(&mut m, "b1", &[e], 1.0),
        );
        let y = m
            .wire_node("conv1", conv(c, e, 1, 1, 1), &[x, w1, b1])
            .unwrap()[0];
        let y = gelu(&mut m, "act1", y);
        let (wd, bd) = (
            konst(&mut m, "wd", &[e, 1, 3, 3], 1.0),
            konst(&mut m, "bd", &[e], 1.0),
        );
        let y = m
            .wire_node("conv2", conv(e, e, e, 3, stride), &[y, wd, bd])
            .unwrap()[0];
        let y = gelu(&mut m, "act2", y);
        let (w3, b3) = (
            konst(&mut m, "w3", &[co, e, 1, 1], 0.5),
            konst(&mut m, "b3", &[co], 1.0),
        );
        let mut y = m
            .wire_node("conv3", conv(e, co, 1, 1, 1), &[y, w3, b3])
            .unwrap()[0];
        match tail {
            Tail::Residual => {
                y = m
                    .wire_node("add", tract_core::ops::math::add(), &[y, x])
                    .unwrap()[0];
                y = gelu(&mut m, "act3", y);
            }
            Tail::Planar => (),
            Tail::Tokens => {
                let (oh, ow) = ((h - 1) / stride + 1, (w - 1) / stride + 1);
                let flat = AxisOp::Reshape(2, tvec![oh.into(), ow.into()], tvec![(oh * ow).into()]);
                y = m.wire_node("flatten", flat, &[y]).unwrap()[0];
                y = m.wire_node("transpose", AxisOp::Move(1, 2), &[y]).unwrap()[0];
            }
        }
        m.select_output_outlets(&[y]).unwrap();
        m
    }

    /// The block through tract alone, and through our replacements with `kernel`, without
    /// and with the fusion: (stock, unfused, fused), and what the fused plan's pass replaced.
    fn run(model: &TypedModel, x: &Tensor, kernel: Kernel) -> ([Vec<f32>; 3], Replaced) {
        let want = run_one(model.clone().into_optimized().unwrap(), x);
        let ours = |except: &[&str]| {
            let (m, done) = plan(model, kernel, except);
            let ops = m
                .nodes
                .iter()
                .map(|n| format!("{} {:?}", n.op.name(), n.op.info()));
            let ops: Vec<String> = ops.collect();
            (run_one(m, x), done, ops)
        };
        let (unfused, none, _) = ours(&["mbconv"]);
        let (fused, done, ops) = ours(&[]);
        assert_eq!(none.mbconv, 0);
        OPS.with_borrow_mut(|o| *o = ops);
        ([want, unfused, fused], done)
    }

    /// `model` planned as sonomask plans it, with every rewrite but `except`.
    fn plan(model: &TypedModel, kernel: Kernel, except: &[&str]) -> (TypedModel, Replaced) {
        let mut m = model.clone();
        m.declutter().unwrap();
        substitute_decluttered(&mut m, kernel).unwrap();
        m.optimize().unwrap();
        let done = substitute_with(&mut m, kernel, &Fusions::without(except).unwrap()).unwrap();
        (m, done)
    }

    thread_local! {
        /// The last fused plan's operators (debug form), for the tail checks.
        static OPS: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    /// Whether tract leaves such blocks channels-first, as the fusion needs. On aarch64 its
    /// declutter turns them channels-last (the products write pixels x channels, the depthwise
    /// kernel goes tap-major) and keeps its own `DepthWiseConv`, so there is no chain to fuse.
    const FUSABLE: bool = cfg!(target_arch = "x86_64");

    fn input(c: usize, h: usize, w: usize) -> Tensor {
        let mut seed = 7;
        Tensor::from_shape(&[1, c, h, w], &test_values(&mut seed, c * h * w)).unwrap()
    }

    /// (channels in, expanded, out), input size, stride, tail: stage 0's MBConv and patch
    /// merging shapes in small, with 20 or 24 expanded channels (row blocks of 6 and 2) and
    /// widths leaving a partial 16-pixel tile (the direct products need 256 pixels or more).
    type Case = ((usize, usize, usize), (usize, usize), usize, Tail);
    const BLOCKS: [Case; 6] = [
        ((8, 20, 8), (17, 19), 1, Tail::Residual),
        ((6, 24, 6), (16, 16), 1, Tail::Residual),
        ((4, 16, 4), (9, 40), 1, Tail::Residual),
        ((8, 20, 12), (34, 37), 2, Tail::Planar),
        ((8, 20, 12), (33, 36), 2, Tail::Tokens),
        ((8, 20, 12), (17, 19), 1, Tail::Planar),
    ];

    #[test]
    fn fused_block_equals_the_unfused_plan_and_matches_tract() {
        for (ch, hw, stride, tail) in BLOCKS {
            let (m, x) = (block(ch, hw, stride, tail), input(ch.0, hw.0, hw.1));
            let what = format!("{ch:?} {hw:?} stride {stride} {tail:?}");
            for k in Kernel::available() {
                let ([want, unfused, fused], done) = run(&m, &x, k);
                assert_eq!(done.mbconv, FUSABLE as usize, "{k:?} {what}");
                // The whole block is the one op: its tail too (residual, transpose).
                let ops = OPS.with_borrow(|o| o.clone());
                if FUSABLE {
                    let tail_at = ops.iter().filter(|o| o.contains(&format!(", {tail:?},")));
                    assert_eq!(tail_at.count(), 1, "{k:?} {what}: {ops:?}");
                    assert_eq!(ops.len(), 2, "{k:?} {what}: {ops:?}");
                }
                assert!(fused == unfused, "{k:?} {what}: fused differs from unfused");
                let scale = want.iter().fold(1f32, |a, v| a.max(v.abs()));
                let diff = max_abs_diff(&want, &fused);
                assert!(diff < 1e-5 * scale, "{k:?} {what}: {diff:e} (max {scale})");
            }
        }
    }

    #[cfg(feature = "multithread-mm")]
    #[test]
    fn threads_split_the_rows_without_changing_a_bit() {
        use tract_core::tract_linalg::multithread::{Executor, multithread_tract_scope};
        for (ch, hw, stride, tail) in [BLOCKS[0], BLOCKS[4]] {
            let (m, x) = (block(ch, hw, stride, tail), input(ch.0, hw.0, hw.1));
            let ([_, _, one], _) = run(&m, &x, Kernel::best());
            // Three threads: twelve runs of output rows, each expanding the rows around it.
            let ([_, unfused, three], done) =
                multithread_tract_scope(Executor::multithread(3), || run(&m, &x, Kernel::best()));
            assert_eq!(done.mbconv, FUSABLE as usize);
            assert!(three == one && three == unfused, "{ch:?} {hw:?} {tail:?}");
            // The int8 projection quantizes each output row on its own: no thread split
            // changes its values either.
            if FUSABLE {
                let (_, int8) = plan_with_int8_projection(&m);
                let one = run_one(int8.clone(), &x);
                let three = multithread_tract_scope(Executor::multithread(3), || run_one(int8, &x));
                assert!(three == one, "int8 {ch:?} {hw:?} {tail:?}");
            }
        }
    }

    #[test]
    fn blocks_with_narrow_maps_are_left_alone() {
        // 15 x 16 pixels: fewer than the direct products take, so no chain of them.
        let (m, x) = (
            block((8, 20, 8), (15, 16), 1, Tail::Residual),
            input(8, 15, 16),
        );
        let ([want, unfused, fused], done) = run(&m, &x, Kernel::best());
        assert_eq!(done.mbconv, 0);
        assert!(fused == unfused && max_abs_diff(&want, &fused) < 1e-4);
    }

    #[test]
    fn the_int8_projection_is_its_integer_definition_on_every_kernel() {
        // Reductions with a tail past the 4-byte steps and of the int8 kernel's longest,
        // partial output panels, rows past the 16 x 16 quantisation tiles and a single one.
        let shapes = [(20, 12, 19), (256, 64, 37), (13, 5, 1)];
        for ((e, c_out, ow), bits) in shapes
            .into_iter()
            .flat_map(|s| [(s, WeightBits::Eight), (s, WeightBits::Seven)])
        {
            let mut seed = (e * c_out + ow) as u64;
            let w = test_values(&mut seed, c_out * e);
            let x: Vec<f32> = test_values(&mut seed, e * ow)
                .iter()
                .map(|v| v * 3.0 - 0.5)
                .collect();
            let bias = test_values(&mut seed, c_out);
            // The definition (Int8Projection's doc), value by value.
            let (lo, hi) = x
                .iter()
                .fold((0f32, 0f32), |(l, h), &v| (l.min(v), h.max(v)));
            let s = (hi - lo) / 255.0;
            let z = (-lo / s).round_ties_even().clamp(0.0, 255.0);
            let qa: Vec<i32> = x
                .iter()
                .map(|&v| {
                    ((v * (1.0 / s)).round_ties_even() + z).clamp(0.0, 255.0) as i32 - z as i32
                })
                .collect();
            let mut want = vec![0f32; c_out * ow];
            for (o, row) in w.chunks_exact(e).enumerate() {
                let qmax = bits.max();
                let ws = row.iter().fold(0f32, |a, v| a.max(v.abs())) / qmax;
                let qw: Vec<i32> = row
                    .iter()
                    .map(|v| (v / ws).round_ties_even().clamp(-qmax, qmax) as i32)
                    .collect();
                // 7 bits: the magnitude reaches 64 and no further.
                let top = qw.iter().map(|v| v.abs()).max().unwrap();
                assert_eq!(top as f32, qmax, "{bits:?}");
                for p in 0..ow {
                    let acc: i32 = (0..e).map(|i| qa[i * ow + p] * qw[i]).sum();
                    want[o * ow + p] = acc as f32 * (ws * s) + bias[o];
                }
            }
            for k8 in I8Kernel::available() {
                let proj = Int8Projection::quantize(k8, bits, &w, c_out, e).unwrap();
                // AVX2 runs 7-bit weights in one pass.
                let one_pass = bits == WeightBits::Seven || k8 != I8Kernel::Avx2;
                assert_eq!(proj.weights.split(), !one_pass, "{k8:?} {bits:?}");
                for k in Kernel::available() {
                    let mut got = vec![f32::NAN; c_out * ow];
                    assert!(proj.project(k, &x, (e, ow), &bias, &mut got));
                    let what = format!("{k8:?} {k:?} {bits:?} {e}x{c_out}x{ow}");
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&got), bits(&want), "{what}");
                }
            }
        }
    }

    #[test]
    fn the_int8_projection_declines_a_row_without_a_finite_range() {
        let w = vec![0.5f32; 8 * 4];
        let proj = Int8Projection::quantize(I8Kernel::best(), WeightBits::Eight, &w, 4, 8).unwrap();
        let mut x = vec![1.0f32; 8 * 3];
        x[5] = f32::INFINITY;
        let mut out = vec![7.0f32; 4 * 3];
        assert!(!proj.project(Kernel::best(), &x, (8, 3), &[0.0; 4], &mut out));
        assert!(
            out.iter().all(|&v| v == 7.0),
            "left untouched for the f32 path"
        );
        // A weight that is not finite: no int8 projection at all.
        let mut bad = w.clone();
        bad[3] = f32::NAN;
        assert!(
            Int8Projection::quantize(I8Kernel::best(), WeightBits::Eight, &bad, 4, 8).is_none()
        );
        // All zeros: the range is 0, the output the bias.
        let mut out = vec![7.0f32; 4 * 3];
        assert!(proj.project(Kernel::best(), &[0.0; 24], (8, 3), &[0.25; 4], &mut out));
        assert!(out.iter().all(|&v| v == 0.25));
    }

    /// The fused plan of `m` (an fp32 model: its block's projection f32), and the same plan with
    /// that projection in int8.
    fn plan_with_int8_projection(m: &TypedModel) -> (TypedModel, TypedModel) {
        let (fp32, _) = plan(m, Kernel::best(), &[]);
        let mut int8 = fp32.clone();
        let node = int8.nodes.iter_mut().find(|n| n.op_is::<MbConv>()).unwrap();
        let op = node.op_as::<MbConv>().unwrap().clone();
        assert!(
            !op.int8_projection(),
            "an fp32 model keeps its f32 projection"
        );
        let op = op.with_int8_projection(I8Kernel::best(), WeightBits::Eight);
        assert!(op.int8_projection());
        node.op = Box::new(op);
        (fp32, int8)
    }

    #[test]
    fn a_block_with_an_int8_projection_stays_near_the_fp32_block() {
        if !FUSABLE {
            return;
        }
        for (ch, hw, stride, tail) in BLOCKS {
            let (m, x) = (block(ch, hw, stride, tail), input(ch.0, hw.0, hw.1));
            let (fp32, int8) = plan_with_int8_projection(&m);
            let (want, got) = (run_one(fp32, &x), run_one(int8, &x));
            let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
            let diff = max_abs_diff(&want, &got);
            // 8-bit weights and activations: within a few percent of the output's range, and
            // not the f32 result (the int8 path ran).
            let what = format!("{ch:?} {hw:?} stride {stride} {tail:?}");
            assert!(diff <= 0.03 * scale, "{what}: {diff:e} of {scale}");
            assert!(diff > 0.0, "{what}: the int8 projection did not run");
        }
    }
}
