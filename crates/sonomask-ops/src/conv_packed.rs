//! Dense 3x3 convolutions over a few dozen input channels (stride 1 or 2, padding 0 or 1),
//! channels-first, as the 1x1-convolution kernel's product over a phase-split copy of the input.
//!
//! Why: the patch embedding's second convolution (32 -> 64 channels, stride 2, 512x512 ->
//! 256x256, K = 288) ran in tract as a product over a lazily gathered im2col matrix at half the
//! machine's product rate (figures: docs/BENCHMARKS.md, appendix, "What each own operator replaced"). Here the input is split once
//! into `stride x stride` phase planes (even/odd rows and columns for stride 2) with the zero
//! border written in, so that every tap `(c, ky, kx)` of 16 neighbouring output pixels is 16
//! contiguous values of one phase plane: the [`pointwise`] kernel (weights packed at load,
//! 6 x 16 register blocks, one tile of X gathered per 16 pixels) then runs it as a 1x1
//! convolution with K = 9 C_in rows. Bounded to K <= [`MAX_K`]: the tile stays in L1 (the neck's
//! 2304-long convolution runs at tract's full product rate and stays there).

use tract_core::internal::*;
use tract_core::ops::cnn::Conv;

use crate::conv3x3::Geometry3x3;
use crate::exec::{SharedMut, par_tasks};
use crate::pointwise::{self, Columns, NR, PackedWeights};
use sonomask_kernels::Kernel;

/// The longest reduction taken: a `K x 16` tile of 32 KiB.
pub const MAX_K: usize = 512;

/// A dense 3x3 f32 convolution with constant weights and bias, input `[1, C_in, H, W]` or
/// `[C_in, H, W]`. Inputs stay those of the conv (image, weights, bias); only the image is read.
#[derive(Debug, Clone, PartialEq)]
pub struct Conv3x3Packed {
    pub(super) kernel: Kernel,
    pub(super) stride: usize,
    /// Padding before (top, left); each 0 or 1. Padding after is implied by the output size.
    pub(super) pad: (usize, usize),
    pub(super) input_shape: TVec<usize>,
    pub(super) output_shape: TVec<usize>,
    pub(super) weights: PackedWeights,
    pub(super) bias: Vec<f32>,
}

// Plan equality only (tract compares ops to merge duplicates).
impl Eq for Conv3x3Packed {}

impl Conv3x3Packed {
    /// The replacement for `conv` (decluttered model) with input `x`, constant `weights` and
    /// `bias`, if it is one this op computes.
    pub fn replacing(
        conv: &Conv,
        x: &TypedFact,
        weights: &TypedFact,
        bias: &TypedFact,
        kernel: Kernel,
    ) -> Option<Self> {
        let g = Geometry3x3::of(conv, x)?;
        let ps = &conv.pool_spec;
        let shape = x.shape.as_concrete()?;
        let (c, co) = (ps.input_channels, ps.output_channels);
        let (h, w) = (shape[shape.len() - 2], shape[shape.len() - 1]);
        let ok = conv.group == 1
            && (1..=MAX_K).contains(&(9 * c))
            && weights.shape.as_concrete() == Some(&[co, c, 3, 3][..]);
        if !ok {
            return None;
        }
        let stride = g.stride;
        let [(pt, pb), (pl, pr)] = g.pad;
        let out = |n: usize, a: usize, b: usize| (n + a + b).checked_sub(3).map(|v| v / stride + 1);
        let (oh, ow) = (out(h, pt, pb)?, out(w, pl, pr)?);
        let wk = weights.konst.as_ref()?;
        let wk = wk.try_as_plain_ram().ok()?;
        let wk = wk.as_slice::<f32>().ok()?;
        let bk = bias.konst.as_ref()?;
        let bk = bk.try_as_plain_ram().ok()?;
        let bias = match bk.as_slice::<f32>().ok()? {
            [] => vec![0.0; co],
            [b] => vec![*b; co],
            b if b.len() == co => b.to_vec(),
            _ => return None,
        };
        let mut output_shape: TVec<usize> = shape.into();
        let r = output_shape.len();
        output_shape[r - 3] = co;
        output_shape[r - 2] = oh;
        output_shape[r - 1] = ow;
        Some(Conv3x3Packed {
            kernel,
            stride,
            pad: (pt, pl),
            input_shape: shape.into(),
            output_shape,
            // OIHW is [C_out][C_in * 9]: row-major, K = (c, ky, kx).
            weights: PackedWeights::pack(wk, co, 9 * c, (9 * c, 1)),
            bias,
        })
    }

    /// (C_in, H, W) of the input, (C_out, OH, OW) of the output.
    pub(super) fn dims(&self) -> ([usize; 3], [usize; 3]) {
        let [.., c, h, w] = self.input_shape[..] else {
            unreachable!("rank checked at construction")
        };
        let [.., co, oh, ow] = self.output_shape[..] else {
            unreachable!("rank checked at construction")
        };
        ([c, h, w], [co, oh, ow])
    }

    /// Height and width of one phase plane: enough for output row/column `o` plus tap `2 / s`.
    fn phase_hw(&self) -> (usize, usize) {
        let (_, [_, oh, ow]) = self.dims();
        (oh + 2 / self.stride, ow + 2 / self.stride)
    }

    /// Phase planes `[c][a][b]` of `qh x qw`: `Q[c][a][b][i][j] = P[s i + a][s j + b]`, `P` the
    /// input with its zero border.
    fn split_phases(&self, x: &[f32], q: &mut [f32]) -> TractResult<()> {
        let ([_, h, w], _) = self.dims();
        let s = self.stride;
        let (qh, qw) = self.phase_hw();
        let (pt, pl) = (self.pad.0 as isize, self.pad.1 as isize);
        let per_channel = s * s * qh * qw;
        tract_core::tract_linalg::multithread::par_chunks_mut(
            q,
            per_channel,
            q.len(),
            |first, chunk: &mut [f32]| {
                for (i, planes) in chunk.chunks_exact_mut(per_channel).enumerate() {
                    let xc = &x[(first + i) * h * w..(first + i + 1) * h * w];
                    for (ab, plane) in planes.chunks_exact_mut(qh * qw).enumerate() {
                        let (a, b) = ((ab / s) as isize, (ab % s) as isize);
                        for (qi, row) in plane.chunks_exact_mut(qw).enumerate() {
                            let y = s as isize * qi as isize + a - pt;
                            if y < 0 || y >= h as isize {
                                row.fill(0.0);
                                continue;
                            }
                            let src = &xc[y as usize * w..(y as usize + 1) * w];
                            for (qj, v) in row.iter_mut().enumerate() {
                                let x = s as isize * qj as isize + b - pl;
                                *v = if x >= 0 && x < w as isize {
                                    src[x as usize]
                                } else {
                                    0.0
                                };
                            }
                        }
                    }
                }
                Ok(())
            },
        )
    }
}

/// X's rows for the product: tap `p = (c, ky, kx)` at output pixel `j = (oy, ox)` is phase
/// plane `(c, ky % s, kx % s)` at `(oy + ky / s, ox + kx / s)`.
struct Taps {
    /// Per tap: its phase plane's start, moved by the tap's offset.
    starts: Vec<*const f32>,
    qw: usize,
    ow: usize,
}

impl Columns for Taps {
    fn at(&self, p: usize, j: usize) -> *const f32 {
        self.starts[p].wrapping_add(j / self.ow * self.qw + j % self.ow)
    }

    fn run_from(&self, j: usize) -> usize {
        self.ow - j % self.ow
    }
}

// SAFETY: read-only pointers into one phase buffer that outlives the threads.
unsafe impl Sync for Taps {}

impl Op for Conv3x3Packed {
    fn name(&self) -> StaticName {
        "Conv3x3Packed".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let ([c, ..], [co, ..]) = self.dims();
        Ok(vec![format!(
            "{c} -> {co} stride {} pad {:?} kernel {:?}",
            self.stride, self.pad, self.kernel
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for Conv3x3Packed {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = &inputs[0];
        ensure!(
            x.datum_type() == DatumType::F32 && x.shape() == &*self.input_shape,
            "Conv3x3Packed: input {:?} {:?}, planned for f32 {:?}",
            x.datum_type(),
            x.shape(),
            self.input_shape
        );
        let ([c, _, _], [co, oh, ow]) = self.dims();
        let s = self.stride;
        let (qh, qw) = self.phase_hw();
        let xs = x.try_as_plain_ram()?;
        // SAFETY: `split_phases` writes every element.
        let mut phases = unsafe { Tensor::uninitialized::<f32>(&[c * s * s * qh * qw])? };
        let mut phases_ram = phases.try_as_plain_ram_mut()?;
        let q = phases_ram.as_slice_mut::<f32>()?;
        self.split_phases(xs.as_slice::<f32>()?, q)?;
        let starts = (0..9 * c)
            .map(|p| {
                let (ch, ky, kx) = (p / 9, p % 9 / 3, p % 3);
                let plane = (ch * s + ky % s) * s + kx % s;
                q[plane * qh * qw + ky / s * qw + kx / s..].as_ptr()
            })
            .collect();
        let taps = Taps { starts, qw, ow };
        // SAFETY: every output element is written (all channels of every pixel band).
        let mut output = unsafe { Tensor::uninitialized::<f32>(&self.output_shape)? };
        let mut plain = output.try_as_plain_ram_mut()?;
        let out = SharedMut(plain.as_slice_mut::<f32>()?.as_mut_ptr());
        let pixels = oh * ow;
        // Bands of whole 16-pixel tiles, eight of them.
        let band = pixels.div_ceil(8).next_multiple_of(NR).max(NR);
        par_tasks(pixels.div_ceil(band), co * pixels * 9 * c, |i| {
            let cols = i * band..((i + 1) * band).min(pixels);
            // SAFETY: X's taps lie inside `q` for every output pixel (phase planes cover
            // oh + 2 / s rows and ow + 2 / s columns); C is co x pixels; bands are disjoint.
            unsafe {
                pointwise::multiply(
                    self.kernel,
                    &self.weights,
                    &taps,
                    (out.get(), pixels),
                    cols,
                    Some(&self.bias),
                    true,
                )
            };
        })?;
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for Conv3x3Packed {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(
            inputs[0].shape.as_concrete() == Some(&*self.input_shape),
            "Conv3x3Packed: input fact {:?}, planned for {:?}",
            inputs[0].shape,
            self.input_shape
        );
        Ok(tvec!(f32::fact(&*self.output_shape)))
    }

    fn cost(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let ([c, ..], [co, oh, ow]) = self.dims();
        Ok(tvec!((
            Cost::FMA(DatumType::F32),
            (co * oh * ow * 9 * c).into()
        )))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::f32s;
    use crate::test_values as rand;
    use crate::{max_abs_diff, substitute_decluttered};
    use tract_core::ops::cnn::{KernelFormat, PaddingSpec, PoolSpec};
    use tract_core::ops::nn::DataFormat;

    fn model(
        (c, co, h, w): (usize, usize, usize, usize),
        stride: usize,
        pad: [usize; 4],
        seed: &mut u64,
    ) -> TypedModel {
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact([1, c, h, w])).unwrap();
        let k = Tensor::from_shape(&[co, c, 3, 3], &rand(seed, co * c * 9)).unwrap();
        let k = m.add_const("k", k).unwrap();
        let b = m
            .add_const("b", Tensor::from_shape(&[co], &rand(seed, co)).unwrap())
            .unwrap();
        let pool_spec = PoolSpec {
            data_format: DataFormat::NCHW,
            kernel_shape: tvec![3, 3],
            padding: PaddingSpec::Explicit(tvec![pad[0], pad[1]], tvec![pad[2], pad[3]]),
            dilations: Some(tvec![1, 1]),
            strides: Some(tvec![stride, stride]),
            input_channels: c,
            output_channels: co,
        };
        let conv = Conv {
            pool_spec,
            kernel_fmt: KernelFormat::OIHW,
            group: 1,
            q_params: None,
        };
        let y = m.wire_node("conv", conv, &[x, k, b]).unwrap();
        m.select_output_outlets(&y).unwrap();
        m
    }

    #[test]
    fn matches_tract_on_every_geometry() {
        // The patch embedding's shape (scaled down), odd sizes, partial tiles, no padding
        // (at least 5 input channels: fewer go to `Conv3x3`'s dense path).
        let cases = [
            ((32, 64, 32, 32), 2, [1, 1, 1, 1]),
            ((5, 7, 13, 11), 2, [1, 1, 1, 1]),
            ((5, 7, 13, 11), 1, [1, 1, 1, 1]),
            ((6, 6, 9, 40), 1, [0, 0, 0, 0]),
            ((8, 13, 10, 10), 2, [0, 1, 0, 1]),
            ((5, 1, 3, 3), 1, [1, 0, 1, 0]),
        ];
        for (i, (dims, stride, pad)) in cases.into_iter().enumerate() {
            let mut seed = i as u64 + 40;
            let m = model(dims, stride, pad, &mut seed);
            let (c, _, h, w) = dims;
            let x = Tensor::from_shape(&[1, c, h, w], &rand(&mut seed, c * h * w)).unwrap();
            let run = |m: TypedModel| {
                let out = m
                    .into_runnable()
                    .unwrap()
                    .run(tvec!(x.clone().into_tvalue()))
                    .unwrap();
                (out[0].shape().to_vec(), f32s(&out[0]).unwrap().to_vec())
            };
            let want = run(m.clone().into_optimized().unwrap());
            let mut ours = m;
            ours.declutter().unwrap();
            let done = substitute_decluttered(&mut ours, Kernel::best()).unwrap();
            assert_eq!(done.conv_packed, 1, "case {i}");
            ours.optimize().unwrap();
            let got = run(ours);
            assert_eq!(got.0, want.0, "case {i}");
            let diff = max_abs_diff(&want.1, &got.1);
            assert!(diff < 1e-5, "case {i}: {diff:e}");
        }
    }

    #[test]
    fn long_reductions_and_groups_stay_with_tract() {
        let mut seed = 1;
        // K = 9 * 64 = 576 > MAX_K.
        let mut m = model((64, 8, 6, 6), 1, [1, 1, 1, 1], &mut seed);
        m.declutter().unwrap();
        let done = substitute_decluttered(&mut m, Kernel::best()).unwrap();
        assert_eq!(done.conv_packed, 0);
    }
}
