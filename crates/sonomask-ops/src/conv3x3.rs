//! 3x3 convolutions, channels-first, stride 1 or 2, padding 0 or 1 per side, computed a row at
//! a time from padded copies of three input rows: depthwise (one filter per channel), or dense
//! over a few input channels (the patch embedding's first convolution, RGB in).
//!
//! Why: tract's `DepthWiseConv` walks patch zones element by element; on the encoder's
//! 256-channel 256x256 MBConv depthwise layers it ran at a few GFLOP/s (figures: docs/BENCHMARKS.md, appendix, "What each own operator replaced"). The 3 -> 32 stride-2 patch-embedding convolution
//! runs in tract as a product with a 27-long reduction over a lazily gathered 27 x 262144
//! matrix, as slowly. Here every output row is 9 (depthwise) or 9 x C_in (dense)
//! vector multiply-adds over contiguous slices: the padded row (stride 1) or its even and odd
//! halves (stride 2), so the inner loop has no bounds logic.
//!
//! The AVX2, NEON and scalar paths are bit-identical (same order: bias, then taps row by row,
//! input channel by input channel, no FMA). Against tract's op the sums are taken in another
//! order: tested to 1e-5 relative.

use tract_core::internal::*;
use tract_core::ops::cnn::{Conv, KernelFormat, PaddingSpec};
use tract_core::ops::nn::DataFormat;

use crate::exec::SharedMut;
use sonomask_kernels::Kernel;
use sonomask_kernels::conv::taps_rows;

/// Replaces a decluttered f32 [`Conv`] that is 3x3 with constant weights, depthwise or dense
/// over at most [`MAX_DENSE_INPUTS`] channels. Inputs stay those of the conv: image, kernel
/// (`[C,1,3,3]` depthwise, `[C_out,C_in,3,3]` dense), bias (one per output channel or a scalar).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conv3x3 {
    pub kernel: Kernel,
    /// Dense (one group): `Some([C_in, C_out])`; depthwise: `None`.
    pub dense: Option<[usize; 2]>,
    pub stride: usize,
    /// Padding before and after, rows then columns: each 0 or 1.
    pub pad: [(usize, usize); 2],
    /// The image has a leading batch axis of 1 (NCHW) rather than none (CHW).
    pub batch_axis: bool,
}

/// What every own 3x3 convolution requires of a decluttered f32 [`Conv`]: OIHW 3x3 kernel,
/// no dilation, stride 1 or 2 on both axes, padding 0 or 1 per side, no quantization, and an
/// input `[1, C, H, W]` (NCHW) or `[C, H, W]` (CHW) of concrete shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry3x3 {
    pub batch_axis: bool,
    pub stride: usize,
    /// Padding before and after, rows then columns.
    pub pad: [(usize, usize); 2],
}

impl Geometry3x3 {
    /// The geometry of `conv` over `input`, if it is one of these.
    pub fn of(conv: &Conv, input: &TypedFact) -> Option<Self> {
        let shape = input.shape.as_concrete()?;
        if input.datum_type != DatumType::F32 || conv.q_params.is_some() {
            return None;
        }
        Self::of_shape(conv, shape)
    }

    /// The geometry of a quantized `conv` (tract's `QLinearConv`) over an input of `shape`.
    pub fn of_quantized(conv: &Conv, shape: &[usize]) -> Option<Self> {
        conv.q_params?;
        Self::of_shape(conv, shape)
    }

    fn of_shape(conv: &Conv, shape: &[usize]) -> Option<Self> {
        let ps = &conv.pool_spec;
        let batch_axis = match ps.data_format {
            DataFormat::NCHW => true,
            DataFormat::CHW => false,
            _ => return None,
        };
        let ok = conv.kernel_fmt == KernelFormat::OIHW
            && ps.kernel_shape.as_slice() == [3, 3]
            && ps
                .dilations
                .as_ref()
                .is_none_or(|d| d.iter().all(|&x| x == 1))
            && shape.len() == if batch_axis { 4 } else { 3 }
            && (!batch_axis || shape[0] == 1)
            && shape[shape.len() - 3] == ps.input_channels;
        if !ok {
            return None;
        }
        let strides = ps.strides.clone().unwrap_or_else(|| tvec![1, 1]);
        if strides.len() != 2 || strides[0] != strides[1] || !(1..=2).contains(&strides[0]) {
            return None;
        }
        let (before, after) = match &ps.padding {
            PaddingSpec::Explicit(b, a) | PaddingSpec::ExplicitOnnxPool(b, a, false) => {
                (b.clone(), a.clone())
            }
            PaddingSpec::Valid => (tvec![0, 0], tvec![0, 0]),
            _ => return None,
        };
        if before.len() != 2 || after.len() != 2 || before.iter().chain(&after).any(|&p| p > 1) {
            return None;
        }
        Some(Geometry3x3 {
            batch_axis,
            stride: strides[0],
            pad: [(before[0], after[0]), (before[1], after[1])],
        })
    }
}

impl Conv3x3 {
    /// The replacement for `conv` reading an input of `input` (decluttered model), if it is one
    /// this op computes.
    pub fn replacing(
        conv: &Conv,
        input: &TypedFact,
        weights: &TypedFact,
        kernel: Kernel,
    ) -> Option<Self> {
        let g = Geometry3x3::of(conv, input)?;
        let ps = &conv.pool_spec;
        let (c, co) = (ps.input_channels, ps.output_channels);
        let dense = if conv.group == c && co == c && c > 1 {
            None
        } else if conv.group == 1 && (1..=MAX_DENSE_INPUTS).contains(&c) {
            Some([c, co])
        } else {
            return None;
        };
        let ok = weights.konst.is_some()
            && weights.shape.as_concrete() == Some(&[co, dense.map_or(1, |d| d[0]), 3, 3][..]);
        ok.then_some(Conv3x3 {
            kernel,
            dense,
            stride: g.stride,
            pad: g.pad,
            batch_axis: g.batch_axis,
        })
    }

    /// Output height and width for an input of `h` x `w`.
    pub(super) fn out_hw(&self, h: usize, w: usize) -> (usize, usize) {
        let o = |n: usize, (a, b): (usize, usize)| (n + a + b).saturating_sub(3) / self.stride + 1;
        (o(h, self.pad[0]), o(w, self.pad[1]))
    }

    /// Fresh row caches for a dense conv's `ci` input planes of width `w`.
    pub(super) fn row_caches(&self, ci: usize, w: usize) -> Vec<RowCache> {
        (0..ci)
            .map(|_| {
                let mut r = RowCache::new();
                r.reset(self.pad[1].0 + w + 1, self.stride);
                r
            })
            .collect()
    }

    /// Output rows `oys` of every output plane of a dense conv over `rows.len()` (1 to
    /// [`MAX_DENSE_INPUTS`]) input planes `x` of `h` x `w`; `weights` are `[C_out, C_in, 3,
    /// 3]`; row `oy` of output channel `oc` goes to `dst(oc, oy)`. Split by rows rather than
    /// planes so that each thread gathers its input rows once for all output channels; `rows`
    /// (see [`Conv3x3::row_caches`]) keeps input rows from one call to the next.
    ///
    /// # Safety
    /// `dst(oc, oy)` addresses `ow` values no one else writes, for every `oc < co`, `oy` in
    /// `oys`.
    pub(super) unsafe fn dense_rows(
        &self,
        (x, h, w): (&[f32], usize, usize),
        (weights, bias): (&[f32], &dyn Fn(usize) -> f32),
        oys: std::ops::Range<usize>,
        (dst, co): (&dyn Fn(usize, usize) -> *mut f32, usize),
        rows: &mut [RowCache],
    ) -> TractResult<()> {
        let args = ((x, h, w), (weights, bias), oys, (dst, co), rows);
        // SAFETY: caller's contract.
        unsafe {
            match args.4.len() {
                1 => self.dense_rows_n::<9>(args),
                2 => self.dense_rows_n::<18>(args),
                3 => self.dense_rows_n::<27>(args),
                4 => self.dense_rows_n::<36>(args),
                ci => bail!("Conv3x3: {ci} input channels"),
            }
        }
        Ok(())
    }

    /// [`Conv3x3::dense_rows`] for `N / 9` input channels.
    ///
    /// # Safety
    /// As [`Conv3x3::dense_rows`].
    #[allow(clippy::type_complexity)]
    unsafe fn dense_rows_n<const N: usize>(
        &self,
        ((x, h, w), (weights, bias), oys, (dst, co), rows): (
            (&[f32], usize, usize),
            (&[f32], &dyn Fn(usize) -> f32),
            std::ops::Range<usize>,
            (&dyn Fn(usize, usize) -> *mut f32, usize),
            &mut [RowCache],
        ),
    ) {
        let (_, ow) = self.out_hw(h, w);
        let (pt, pl) = (self.pad[0].0, self.pad[1].0);
        for oy in oys {
            for (ic, r) in rows.iter_mut().enumerate() {
                let x = &x[ic * h * w..(ic + 1) * h * w];
                for ky in 0..3 {
                    let iy = (oy * self.stride + ky) as isize - pt as isize;
                    let src = (iy >= 0 && (iy as usize) < h)
                        .then(|| &x[iy as usize * w..(iy as usize + 1) * w]);
                    r.load(ky, iy, src, pl);
                }
            }
            let srcs: [&[f32]; N] = std::array::from_fn(|t| rows[t / 9].tap(t % 9 / 3, t % 3, ow));
            for oc in 0..co {
                let taps: &[f32; N] = weights[oc * N..(oc + 1) * N].try_into().expect("N taps");
                // SAFETY: caller's contract.
                let dst = unsafe { std::slice::from_raw_parts_mut(dst(oc, oy), ow) };
                taps_rows(self.kernel, dst, bias(oc), &srcs, taps);
            }
        }
    }

    /// One channel plane: `x` is `h` x `w`, `out` is the output plane, `taps` row-major 3x3.
    fn plane(
        &self,
        (x, h, w): (&[f32], usize, usize),
        (taps, bias): (&[f32; 9], f32),
        out: &mut [f32],
        rows: &mut RowCache,
    ) {
        let (oh, ow) = self.out_hw(h, w);
        let (pt, pl) = (self.pad[0].0, self.pad[1].0);
        rows.reset(pl + w + 1, self.stride);
        for oy in 0..oh {
            let dst = &mut out[oy * ow..(oy + 1) * ow];
            let mut srcs: [&[f32]; 9] = [&[]; 9];
            for ky in 0..3 {
                // Input row for this tap row; outside the image it is a zero row.
                let iy = (oy * self.stride + ky) as isize - pt as isize;
                let src = (iy >= 0 && (iy as usize) < h)
                    .then(|| &x[iy as usize * w..(iy as usize + 1) * w]);
                rows.load(ky, iy, src, pl);
            }
            for ky in 0..3 {
                for kx in 0..3 {
                    srcs[ky * 3 + kx] = rows.tap(ky, kx, ow);
                }
            }
            taps_rows(self.kernel, dst, bias, &srcs, taps);
        }
    }
}

/// Three padded input rows (with even/odd halves for stride 2), refilled as the output row moves.
pub(super) struct RowCache {
    stride: usize,
    width: usize,
    /// Which input row each slot holds (`None`: unfilled).
    tag: [Option<isize>; 3],
    /// Padded row per slot; for stride 2, even elements then odd elements.
    buf: [Vec<f32>; 3],
    slot_of: [usize; 3],
}

impl RowCache {
    fn new() -> Self {
        RowCache {
            stride: 1,
            width: 0,
            tag: [None; 3],
            buf: [Vec::new(), Vec::new(), Vec::new()],
            slot_of: [0, 1, 2],
        }
    }

    fn reset(&mut self, width: usize, stride: usize) {
        self.stride = stride;
        self.width = width;
        self.tag = [None; 3];
        for b in &mut self.buf {
            b.clear();
            b.resize(width + 2, 0.0);
        }
    }

    /// Makes tap row `ky` the padded copy of input row `iy` (`src`, or zeros where `None`).
    fn load(&mut self, ky: usize, iy: isize, src: Option<&[f32]>, pl: usize) {
        if let Some(s) = self.tag.iter().position(|t| *t == Some(iy)) {
            self.slot_of[ky] = s;
            return;
        }
        // A slot no other tap row of this output row uses.
        let used = &self.slot_of[..ky];
        let s = (0..3).find(|s| !used.contains(s)).expect("three slots");
        self.tag[s] = Some(iy);
        self.slot_of[ky] = s;
        let b = &mut self.buf[s];
        b.fill(0.0);
        if let Some(src) = src {
            if self.stride == 1 {
                b[pl..pl + src.len()].copy_from_slice(src);
            } else {
                // Padded index p = pl + i goes to the even or the odd half.
                let half = odd_start(self.width);
                for (i, &v) in src.iter().enumerate() {
                    let p = pl + i;
                    b[(p & 1) * half + p / 2] = v;
                }
            }
        }
    }

    /// The `n` padded inputs tap (`ky`, `kx`) reads for consecutive outputs.
    fn tap(&self, ky: usize, kx: usize, n: usize) -> &[f32] {
        let b = &self.buf[self.slot_of[ky]];
        let start = if self.stride == 1 {
            kx
        } else {
            (kx & 1) * odd_start(self.width) + kx / 2
        };
        &b[start..start + n]
    }
}

/// The most input channels of a dense convolution this op takes (more are tract's products).
pub const MAX_DENSE_INPUTS: usize = 4;

/// Where the odd half of a stride-2 padded row of `width` starts in its buffer.
fn odd_start(width: usize) -> usize {
    width.div_ceil(2) + 1
}

impl Op for Conv3x3 {
    fn name(&self) -> StaticName {
        if self.dense.is_some() {
            "Conv3x3".into()
        } else {
            "Depthwise3x3".into()
        }
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "stride {} pad {:?} kernel {:?} dense {:?}",
            self.stride, self.pad, self.kernel, self.dense
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for Conv3x3 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (x, k, b) = args_3!(inputs);
        let shape = x.shape();
        let r = shape.len();
        ensure!(r == 3 + self.batch_axis as usize, "Conv3x3: input rank {r}");
        let (c, h, w) = (shape[r - 3], shape[r - 2], shape[r - 1]);
        let (ci, co) = match self.dense {
            Some([ci, co]) => (ci, co),
            None => (1, c),
        };
        ensure!(
            self.dense.is_none_or(|d| d[0] == c),
            "Conv3x3: {c} input channels, planned for {ci}"
        );
        let (oh, ow) = self.out_hw(h, w);
        let xs = x.try_as_plain_ram()?;
        let xs = xs.as_slice::<f32>()?;
        let ks = k.try_as_plain_ram()?;
        let ks = ks.as_slice::<f32>()?;
        let bs = b.try_as_plain_ram()?;
        let bs = bs.as_slice::<f32>()?;
        ensure!(
            ks.len() == 9 * ci * co,
            "Conv3x3: {} weights for {ci} x {co} channels",
            ks.len()
        );
        ensure!(
            bs.len() <= 1 || bs.len() == co,
            "Conv3x3: {} biases for {co} channels",
            bs.len()
        );
        let bias = |ch: usize| match bs.len() {
            0 => 0.0,
            1 => bs[0],
            _ => bs[ch],
        };
        let mut out_shape: TVec<usize> = shape.into();
        out_shape[r - 3] = co;
        out_shape[r - 2] = oh;
        out_shape[r - 1] = ow;
        // SAFETY: `plane` / `dense_planes` write every element of every output plane.
        let mut output = unsafe { Tensor::uninitialized::<f32>(&out_shape)? };
        let mut plain = output.try_as_plain_ram_mut()?;
        let data = plain.as_slice_mut::<f32>()?;
        let plane = oh * ow;
        if plane > 0 {
            let total = xs.len() + data.len();
            if self.dense.is_some() {
                let out = SharedMut(data.as_mut_ptr());
                let mut oys: Vec<usize> = (0..oh).collect();
                let x = (xs, h, w);
                tract_core::tract_linalg::multithread::par_chunks_mut(
                    &mut oys,
                    1,
                    total,
                    |_, band| {
                        let o = out.get();
                        let (Some(&a), Some(&b)) = (band.first(), band.last()) else {
                            return Ok(());
                        };
                        let k = (ks, &bias as &dyn Fn(usize) -> f32);
                        // SAFETY: the output holds co planes; bands are disjoint rows.
                        let dst = |oc: usize, oy: usize| unsafe { o.add(oc * plane + oy * ow) };
                        let mut rows = self.row_caches(ci, w);
                        // SAFETY: as above.
                        unsafe { self.dense_rows(x, k, a..b + 1, (&dst, co), &mut rows) }?;
                        Ok(())
                    },
                )?;
            } else {
                tract_core::tract_linalg::multithread::par_chunks_mut(
                    data,
                    plane,
                    total,
                    |first, chunk| {
                        let mut rows = RowCache::new();
                        for (i, out) in chunk.chunks_exact_mut(plane).enumerate() {
                            let ch = first + i;
                            let taps: &[f32; 9] =
                                ks[ch * 9..ch * 9 + 9].try_into().expect("9 taps");
                            self.plane(
                                (&xs[ch * h * w..(ch + 1) * h * w], h, w),
                                (taps, bias(ch)),
                                out,
                                &mut rows,
                            );
                        }
                        Ok(())
                    },
                )?;
            }
        }
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for Conv3x3 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let s = inputs[0]
            .shape
            .as_concrete()
            .context("Conv3x3 needs concrete shapes")?;
        let r = s.len();
        let (oh, ow) = self.out_hw(s[r - 2], s[r - 1]);
        let mut o: TVec<usize> = s.into();
        if let Some([_, co]) = self.dense {
            o[r - 3] = co;
        }
        o[r - 2] = oh;
        o[r - 1] = ow;
        Ok(tvec!(f32::fact(&*o)))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let o = self.output_facts(inputs)?;
        let taps = 9 * self.dense.map_or(1, |d| d[0]);
        Ok(tvec!((
            Cost::FMA(DatumType::F32),
            o[0].shape.volume() * taps
        )))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::f32s;
    use crate::max_abs_diff;
    use tract_core::ops::cnn::PoolSpec;

    use crate::test_values as rand;

    fn conv(c: usize, stride: usize, pad: [(usize, usize); 2], fmt: DataFormat) -> Conv {
        dense_conv(c, c, c, stride, pad, fmt)
    }

    fn dense_conv(
        ci: usize,
        co: usize,
        group: usize,
        stride: usize,
        pad: [(usize, usize); 2],
        fmt: DataFormat,
    ) -> Conv {
        Conv {
            pool_spec: PoolSpec {
                data_format: fmt,
                kernel_shape: tvec![3, 3],
                padding: PaddingSpec::Explicit(
                    tvec![pad[0].0, pad[1].0],
                    tvec![pad[0].1, pad[1].1],
                ),
                dilations: None,
                strides: Some(tvec![stride, stride]),
                input_channels: ci,
                output_channels: co,
            },
            kernel_fmt: KernelFormat::OIHW,
            group,
            q_params: None,
        }
    }

    /// Runs tract's own conv (through a one-node optimized model) and ours on the same data:
    /// depthwise over `c` channels, or dense from `c` to `dense_out` channels.
    fn both(
        (c, dense_out): (usize, Option<usize>),
        h: usize,
        w: usize,
        stride: usize,
        pad: [(usize, usize); 2],
    ) -> (Vec<f32>, Vec<f32>) {
        let mut seed = (c * 1000 + h * 10 + w + stride) as u64;
        let (co, per_out, group) = match dense_out {
            Some(co) => (co, c, 1),
            None => (c, 1, c),
        };
        let x = Tensor::from_shape(&[1, c, h, w], &rand(&mut seed, c * h * w)).unwrap();
        let k =
            Tensor::from_shape(&[co, per_out, 3, 3], &rand(&mut seed, co * per_out * 9)).unwrap();
        let b = Tensor::from_shape(&[co], &rand(&mut seed, co)).unwrap();
        let op = dense_conv(c, co, group, stride, pad, DataFormat::NCHW);
        let mut m = TypedModel::default();
        let src = m.add_source("x", f32::fact([1, c, h, w])).unwrap();
        let kw = m.add_const("k", k.clone()).unwrap();
        let bw = m.add_const("b", b.clone()).unwrap();
        let out = m.wire_node("conv", op.clone(), &[src, kw, bw]).unwrap();
        m.select_output_outlets(&out).unwrap();
        let want = m
            .into_optimized()
            .unwrap()
            .into_runnable()
            .unwrap()
            .run(tvec!(x.clone().into_tvalue()))
            .unwrap();
        let ours = Conv3x3::replacing(
            &op,
            &f32::fact([1, c, h, w]),
            &TypedFact::try_from(k.clone()).unwrap(),
            Kernel::best(),
        )
        .expect("replaceable");
        let got = ours
            .eval_out_of_plan(tvec!(x.into_tvalue(), k.into_tvalue(), b.into_tvalue()))
            .unwrap()
            .unwrap();
        assert_eq!(got[0].shape(), want[0].shape());
        (
            f32s(&want[0]).unwrap().to_vec(),
            f32s(&got[0]).unwrap().to_vec(),
        )
    }

    #[test]
    fn matches_tract_on_every_geometry() {
        let shapes = [
            (2, 5, 5),
            (3, 17, 13),
            (4, 1, 9),
            (5, 16, 16),
            (2, 2, 2),
            (1, 7, 6),
        ];
        for (c, h, w) in shapes {
            // Depthwise (for more than one channel), then dense to 5 outputs (few inputs).
            let kinds = [
                (c > 1).then_some((c, None)),
                (c <= MAX_DENSE_INPUTS).then_some((c, Some(5))),
            ];
            for kind in kinds.into_iter().flatten() {
                for stride in [1, 2] {
                    for pad in [[(1, 1), (1, 1)], [(0, 0), (0, 0)], [(1, 0), (0, 1)]] {
                        if h + pad[0].0 + pad[0].1 < 3 || w + pad[1].0 + pad[1].1 < 3 {
                            continue;
                        }
                        let (want, got) = both(kind, h, w, stride, pad);
                        let diff = max_abs_diff(&want, &got);
                        assert!(diff < 1e-5, "{kind:?} {h}x{w} s{stride} {pad:?}: {diff:e}");
                    }
                }
            }
        }
    }

    #[test]
    fn every_kernel_equals_scalar_bit_for_bit() {
        let mut seed = 3;
        for n in 0..40 {
            let rows: Vec<Vec<f32>> = (0..9).map(|_| rand(&mut seed, n + 2)).collect();
            let src: [&[f32]; 9] = std::array::from_fn(|t| &rows[t][..]);
            let w: [f32; 9] = rand(&mut seed, 9).try_into().unwrap();
            let mut want = vec![0f32; n];
            taps_rows(Kernel::Scalar, &mut want, 0.25, &src, &w);
            for k in Kernel::available() {
                let mut got = vec![0f32; n];
                taps_rows(k, &mut got, 0.25, &src, &w);
                assert_eq!(got, want, "{k:?} n {n}");
            }
        }
    }

    #[test]
    fn other_convolutions_are_left_to_tract() {
        let x = f32::fact([1, 4, 8, 8]);
        let k = TypedFact::try_from(Tensor::zero::<f32>(&[4, 1, 3, 3]).unwrap()).unwrap();
        assert!(
            Conv3x3::replacing(
                &conv(4, 1, [(1, 1); 2], DataFormat::NCHW),
                &x,
                &k,
                Kernel::Scalar
            )
            .is_some()
        );
        let mut dense = conv(4, 1, [(1, 1); 2], DataFormat::NCHW);
        dense.group = 1;
        assert!(Conv3x3::replacing(&dense, &x, &k, Kernel::Scalar).is_none());
        let dense_k =
            |ci: usize| TypedFact::try_from(Tensor::zero::<f32>(&[4, ci, 3, 3]).unwrap()).unwrap();
        assert!(Conv3x3::replacing(&dense, &x, &dense_k(4), Kernel::Scalar).is_some());
        // Dense over more input channels than the direct form pays for.
        let wide = dense_conv(8, 4, 1, 1, [(1, 1); 2], DataFormat::NCHW);
        let x8 = f32::fact([1, 8, 8, 8]);
        assert!(Conv3x3::replacing(&wide, &x8, &dense_k(8), Kernel::Scalar).is_none());
        assert!(
            Conv3x3::replacing(
                &conv(4, 3, [(1, 1); 2], DataFormat::NCHW),
                &x,
                &k,
                Kernel::Scalar
            )
            .is_none()
        );
        assert!(
            Conv3x3::replacing(
                &conv(4, 1, [(2, 2); 2], DataFormat::NCHW),
                &x,
                &k,
                Kernel::Scalar
            )
            .is_none()
        );
        assert!(
            Conv3x3::replacing(
                &conv(4, 1, [(1, 1); 2], DataFormat::NHWC),
                &x,
                &k,
                Kernel::Scalar
            )
            .is_none()
        );
        let runtime_k = f32::fact([4, 1, 3, 3]);
        assert!(
            Conv3x3::replacing(
                &conv(4, 1, [(1, 1); 2], DataFormat::NCHW),
                &x,
                &runtime_k,
                Kernel::Scalar
            )
            .is_none()
        );
    }
}

#[cfg(test)]
mod band_tests {
    use super::*;
    use crate::test_values as rand;

    /// The dense path split into row bands (as threads run it) writes what one band does.
    #[test]
    fn dense_row_bands_equal_one_pass() {
        for stride in [1, 2] {
            let op = Conv3x3 {
                kernel: Kernel::best(),
                dense: Some([3, 5]),
                stride,
                pad: [(1, 1), (1, 1)],
                batch_axis: true,
            };
            let (h, w, co) = (11, 9, 5);
            let (oh, ow) = op.out_hw(h, w);
            let mut seed = 21;
            let x = rand(&mut seed, 3 * h * w);
            let weights = rand(&mut seed, co * 27);
            let bias = |c: usize| c as f32 * 0.1;
            let run = |bands: &[std::ops::Range<usize>]| {
                let mut out = vec![f32::NAN; co * oh * ow];
                let o = out.as_mut_ptr();
                let dst = |oc: usize, oy: usize| o.wrapping_add(oc * oh * ow + oy * ow);
                for b in bands {
                    let k = (&weights[..], &bias as &dyn Fn(usize) -> f32);
                    // Fresh caches per band, as each thread starts.
                    let mut rows = op.row_caches(3, w);
                    unsafe { op.dense_rows((&x, h, w), k, b.clone(), (&dst, co), &mut rows) }
                        .unwrap();
                }
                out
            };
            let one = run(std::slice::from_ref(&(0..oh)));
            assert!(one.iter().all(|v| v.is_finite()));
            assert_eq!(run(&[0..2, 2..3, 3..oh]), one, "stride {stride}");
        }
    }
}
