//! A depthwise 3x3 convolution (stride 1, padding 1) over channels-last tokens `[H*W, C]`, in
//! place of the transpose -> channels-first depthwise convolution -> transpose that TinyViT's
//! `local_conv` exports as.
//!
//! Why: each TinyViT block turns its `[H*W, C]` tokens into a `[C, H, W]` map for the local
//! depthwise convolution and back; tract runs both transposes (`MoveAxis`, single-threaded and
//! memory-bound) around the convolution, several times the convolution's own time, and they do
//! not speed up with threads (figures: docs/BENCHMARKS.md, appendix, "What each own operator replaced").
//! Channels-last, the convolution is a vector sum over contiguous channels for each of the 9
//! taps, so no transpose is needed at all: each output pixel's channels are accumulated in
//! blocks of [`LANES`] (registers), bias first, then the taps row by row.
//!
//! The AVX2, NEON and scalar paths are the same body (no FMA: a multiply, then an add), so they
//! agree bit for bit (tested with `==`). Against tract's transposes and convolution the sums
//! are taken in another order: tested to 1e-5 relative.

use tract_core::internal::*;

use sonomask_kernels::Kernel;
pub use sonomask_kernels::conv::LANES;
use sonomask_kernels::conv::depthwise_rows;

/// Depthwise 3x3, stride 1, padding 1, over `[h * w, c]` f32 tokens, constant weights.
#[derive(Debug, Clone, PartialEq)]
pub struct DepthwiseNhwc3x3 {
    pub kernel: Kernel,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    /// `[9][c]`: tap `ky * 3 + kx`, then channel.
    taps: Vec<f32>,
    bias: Vec<f32>,
}

// Plan equality only (tract compares ops to merge duplicates).
impl Eq for DepthwiseNhwc3x3 {}

impl DepthwiseNhwc3x3 {
    /// From OIHW depthwise weights `[c, 1, 3, 3]` and a bias of `c` values, one value, or none.
    pub fn new(
        kernel: Kernel,
        (h, w, c): (usize, usize, usize),
        weights: &[f32],
        bias: &[f32],
    ) -> Option<Self> {
        if c == 0 || !c.is_multiple_of(LANES) || weights.len() != 9 * c || h == 0 || w == 0 {
            return None;
        }
        let bias = match bias.len() {
            0 => vec![0.0; c],
            1 => vec![bias[0]; c],
            n if n == c => bias.to_vec(),
            _ => return None,
        };
        let mut taps = vec![0f32; 9 * c];
        for ch in 0..c {
            for t in 0..9 {
                taps[t * c + ch] = weights[ch * 9 + t];
            }
        }
        Some(DepthwiseNhwc3x3 {
            kernel,
            h,
            w,
            c,
            taps,
            bias,
        })
    }

    /// Output rows `first..` (as many as `out` holds, `w * c` values each) from tokens `x`.
    fn rows(&self, x: &[f32], first: usize, out: &mut [f32]) {
        let dims = (self.h, self.w, self.c);
        depthwise_rows(self.kernel, dims, (&self.taps, &self.bias), x, first, out)
    }
}

impl Op for DepthwiseNhwc3x3 {
    fn name(&self) -> StaticName {
        "DepthwiseNhwc3x3".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "h {} w {} c {} kernel {:?}",
            self.h, self.w, self.c, self.kernel
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for DepthwiseNhwc3x3 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        let (h, w, c) = (self.h, self.w, self.c);
        ensure!(
            x.datum_type() == DatumType::F32 && x.shape() == [h * w, c],
            "DepthwiseNhwc3x3: input {:?} {:?}, planned for f32 [{}, {c}]",
            x.datum_type(),
            x.shape(),
            h * w
        );
        let xs = x.try_as_plain_ram()?;
        let xs = xs.as_slice::<f32>()?;
        // SAFETY: `rows` writes every element of every output row.
        let mut output = unsafe { Tensor::uninitialized::<f32>(&[h * w, c])? };
        let mut plain = output.try_as_plain_ram_mut()?;
        let data = plain.as_slice_mut::<f32>()?;
        tract_core::tract_linalg::multithread::par_chunks_mut(
            data,
            w * c,
            9 * h * w * c,
            |first, chunk: &mut [f32]| {
                self.rows(xs, first, chunk);
                Ok(())
            },
        )?;
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for DepthwiseNhwc3x3 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(
            inputs[0].shape.as_concrete() == Some(&[self.h * self.w, self.c][..]),
            "DepthwiseNhwc3x3: input fact {:?}",
            inputs[0].shape
        );
        Ok(tvec!(f32::fact([self.h * self.w, self.c])))
    }

    fn cost(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        Ok(tvec!((
            Cost::FMA(DatumType::F32),
            (9 * self.h * self.w * self.c).into()
        )))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_values as rand;
    use crate::{max_abs_diff, run_one, substitute_decluttered};
    use tract_core::ops::change_axes::AxisOp;
    use tract_core::ops::cnn::{Conv, KernelFormat, PaddingSpec, PoolSpec};
    use tract_core::ops::nn::DataFormat;

    /// TinyViT's local convolution as it stands after declutter: tokens `[h*w, c]` moved to
    /// `[c, h*w]`, reshaped to `[c, h, w]`, a depthwise 3x3 conv, and back.
    fn exported(h: usize, w: usize, c: usize, seed: &mut u64) -> TypedModel {
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact([h * w, c])).unwrap();
        let t = m.wire_node("t", AxisOp::Move(0, 1), &[x]).unwrap();
        let hw: TVec<TDim> = tvec![(h * w).into()];
        let hw2: TVec<TDim> = tvec![h.into(), w.into()];
        let r = AxisOp::Reshape(1, hw.clone(), hw2.clone());
        let r = m.wire_node("r", r, &t).unwrap();
        let k = Tensor::from_shape(&[c, 1, 3, 3], &rand(seed, 9 * c)).unwrap();
        let k = m.add_const("k", k).unwrap();
        let b = m
            .add_const("b", Tensor::from_shape(&[c], &rand(seed, c)).unwrap())
            .unwrap();
        let pool_spec = PoolSpec {
            data_format: DataFormat::CHW,
            kernel_shape: tvec![3, 3],
            padding: PaddingSpec::Explicit(tvec![1, 1], tvec![1, 1]),
            dilations: Some(tvec![1, 1]),
            strides: Some(tvec![1, 1]),
            input_channels: c,
            output_channels: c,
        };
        let conv = Conv {
            pool_spec,
            kernel_fmt: KernelFormat::OIHW,
            group: c,
            q_params: None,
        };
        let y = m.wire_node("conv", conv, &[r[0], k, b]).unwrap();
        let y = m.wire_node("r2", AxisOp::Reshape(1, hw2, hw), &y).unwrap();
        let y = m.wire_node("t2", AxisOp::Move(0, 1), &y).unwrap();
        m.select_output_outlets(&y).unwrap();
        m
    }

    #[test]
    fn replaces_the_transposed_convolution_and_matches_it() {
        // TinyViT's stage shapes (scaled down in h, w) and the edges: one row, one column.
        for (h, w, c) in [
            (16, 16, 128),
            (8, 8, 160),
            (5, 7, 320),
            (1, 4, 32),
            (4, 1, 64),
        ] {
            let mut seed = (h * 1000 + w * 10 + c) as u64;
            let m = exported(h, w, c, &mut seed);
            let x = Tensor::from_shape(&[h * w, c], &rand(&mut seed, h * w * c)).unwrap();
            let want = run_one(m.clone().into_optimized().unwrap(), &x);
            let mut ours = m;
            ours.declutter().unwrap();
            let done = substitute_decluttered(&mut ours, Kernel::best()).unwrap();
            assert_eq!(done.depthwise_nhwc, 1, "{h}x{w}x{c}");
            ours.optimize().unwrap();
            let names: Vec<_> = ours.nodes.iter().map(|n| n.op.name().to_string()).collect();
            assert!(!names.iter().any(|n| n == "MoveAxis"), "{names:?}");
            let got = run_one(ours, &x);
            let diff = max_abs_diff(&want, &got);
            assert!(diff < 1e-5, "{h}x{w}x{c}: {diff:e}");
        }
    }

    #[test]
    fn channels_not_a_multiple_of_the_block_stay_with_tract() {
        let mut seed = 3;
        let mut m = exported(4, 4, 24, &mut seed);
        m.declutter().unwrap();
        let done = substitute_decluttered(&mut m, Kernel::best()).unwrap();
        assert_eq!(done.depthwise_nhwc, 0);
    }

    #[test]
    fn every_kernel_equals_scalar_bit_for_bit() {
        let mut seed = 11;
        let (h, w, c) = (6, 5, 64);
        let op = |k| {
            DepthwiseNhwc3x3::new(k, (h, w, c), &rand(&mut 7, 9 * c), &rand(&mut 8, c)).unwrap()
        };
        let x = rand(&mut seed, h * w * c);
        let mut want = vec![0f32; h * w * c];
        op(Kernel::Scalar).rows(&x, 0, &mut want);
        for k in Kernel::available() {
            let mut got = vec![0f32; h * w * c];
            // In two row bands, as threads would.
            let (a, b) = got.split_at_mut(2 * w * c);
            op(k).rows(&x, 0, a);
            op(k).rows(&x, 2, b);
            assert_eq!(got, want, "{k:?}");
        }
    }
}
