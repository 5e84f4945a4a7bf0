//! Transposed 2x2 convolutions of stride 2 (SAM's mask upscaling), channels-first, as one
//! 1x1 product per input row into a cached block, then interleaved into two output rows.
//!
//! Why: with a 2x2 kernel and stride 2 every output pixel takes exactly one tap, so the layer
//! is a 1x1 convolution to `4 C_out` channels followed by a pixel shuffle. tract computes it as
//! a product over the whole map (packing the activations each call), then a `DeconvSum` pass
//! that scatters and adds the bias: in the decoder the two layers with their packing passes
//! took a fifth of a decoder pass. Here each input row
//! is multiplied by the weights (packed at load, bias in the accumulators) with the
//! [`pointwise`] kernel into a block that stays in cache, and its four `(a, b)` tap planes are
//! interleaved into output rows `2y` and `2y + 1`.
//!
//! Measured in the decoder against tract's op, interleaved in one process: docs/BENCHMARKS.md,
//! appendix, sixth step.
//!
//! The sums are taken in another order than tract's (bias first, then input channel by input
//! channel): tested to 1e-5 against tract. Every kernel path gives the same bits (the
//! [`pointwise`] paths are equal by their own tests; the interleave only moves values).

use std::cell::RefCell;

use tract_core::internal::*;
use tract_core::ops::cnn::{Deconv, KernelFormat};
use tract_core::ops::nn::DataFormat;

use crate::exec::{eval_by_rows, planned_facts};
use crate::pointwise::{self, PackedWeights, Rows};
use sonomask_kernels::Kernel;

thread_local! {
    /// Each thread's product block (`4 C_out` rows of one input row), reused across calls.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// A 2x2 stride-2 transposed convolution with constant weights and bias over a `[1, C_in, H,
/// W]` f32 map. Inputs stay those of tract's op (image, kernel, bias); only the image is read.
#[derive(Debug, Clone, PartialEq)]
pub struct Deconv2x2 {
    kernel: Kernel,
    /// Weights as `[C_out, 2, 2]` rows over `C_in`: row `4 co + 2 a + b` is tap `(a, b)` of
    /// output channel `co`.
    weights: PackedWeights,
    /// The bias per product row (output channel `row / 4`'s).
    bias: Vec<f32>,
    in_shape: TVec<usize>,
    out_shape: TVec<usize>,
}

// Plan equality only (tract compares ops to merge duplicates).
impl Eq for Deconv2x2 {}

impl Deconv2x2 {
    /// The replacement for `op` (decluttered model) reading an input of `x` with constant
    /// `weights` and `bias`, if it is a 2x2, stride-2 transposed convolution without padding,
    /// dilation, adjustment or groups over `[1, C_in, H, W]` f32.
    pub fn replacing(
        op: &Deconv,
        x: &TypedFact,
        weights: &TypedFact,
        bias: &TypedFact,
        kernel: Kernel,
    ) -> Option<Self> {
        let ps = &op.pool_spec;
        let shape = x.shape.as_concrete()?;
        let (ci, co) = (ps.input_channels, ps.output_channels);
        let geometry = ps.data_format == DataFormat::NCHW
            && op.kernel_format == KernelFormat::OIHW
            && op.group == 1
            && ps.kernel_shape.as_slice() == [2, 2]
            && ps.strides().as_ref() == [2, 2]
            && ps.dilations().iter().all(|&d| d == 1)
            && op.adjustments.iter().all(|&a| a == 0)
            && (0..2).all(|ax| ps.padding.valid_dim(ax, false))
            && x.datum_type == DatumType::F32
            && shape.len() == 4
            && shape[0] == 1
            && shape[1] == ci
            && shape[2] > 0
            && shape[3] > 0;
        if !geometry {
            return None;
        }
        let wk = weights.konst.as_ref()?;
        let bk = bias.konst.as_ref()?;
        if wk.datum_type() != DatumType::F32
            || wk.shape() != [co, ci, 2, 2]
            || bk.datum_type() != DatumType::F32
        {
            return None;
        }
        let w = wk.try_as_plain_ram().ok()?;
        let w = w.as_slice::<f32>().ok()?;
        let b = bk.try_as_plain_ram().ok()?;
        let b = b.as_slice::<f32>().ok()?;
        let bias_of = |c: usize| match b.len() {
            0 => Some(0.0),
            1 => Some(b[0]),
            n if n == co => Some(b[c]),
            _ => None,
        };
        let bias = (0..4 * co)
            .map(|r| bias_of(r / 4))
            .collect::<Option<Vec<f32>>>()?;
        // OIHW [co][ci][a][b]: row (co, a, b) = 4 co + 2 a + b, column ci at stride 4.
        let mut rows = vec![0f32; 4 * co * ci];
        for c in 0..co {
            for i in 0..ci {
                for t in 0..4 {
                    rows[(4 * c + t) * ci + i] = w[(c * ci + i) * 4 + t];
                }
            }
        }
        let (h, wd) = (shape[2], shape[3]);
        Some(Deconv2x2 {
            kernel,
            weights: PackedWeights::pack(&rows, 4 * co, ci, (ci, 1)),
            bias,
            in_shape: shape.into(),
            out_shape: tvec![1, co, 2 * h, 2 * wd],
        })
    }

    /// Output rows `2y` and `2y + 1` for the input rows `ys`.
    ///
    /// # Safety
    /// `x` is the `[1, C_in, H, W]` input; `out` addresses the output, of which no one else
    /// writes these rows.
    unsafe fn rows(&self, x: &[f32], out: *mut f32, ys: std::ops::Range<usize>) {
        let [_, _, h, w] = self.in_shape[..] else {
            unreachable!("rank checked at construction")
        };
        let m = self.weights.m;
        SCRATCH.with_borrow_mut(|block| {
            if block.len() < m * w {
                block.resize(m * w, 0.0);
            }
            let block = &mut block[..m * w];
            for y in ys {
                let xs = Rows {
                    x: x[y * w..].as_ptr(),
                    rs: h * w,
                };
                // SAFETY: x holds C_in planes of h x w (rows of w from row y); block is m x w.
                unsafe {
                    pointwise::multiply(
                        self.kernel,
                        &self.weights,
                        &xs,
                        (block.as_mut_ptr(), w),
                        0..w,
                        Some(&self.bias),
                        false,
                    )
                };
                // Output row 2y + a of channel co interleaves taps (a, 0) and (a, 1).
                for (r, pair) in block.chunks_exact(2 * w).enumerate() {
                    let (co, a) = (r / 2, r % 2);
                    let at = (co * 2 * h + 2 * y + a) * 2 * w;
                    // SAFETY: this output row is ours (caller's contract).
                    let dst = unsafe { std::slice::from_raw_parts_mut(out.add(at), 2 * w) };
                    let (b0, b1) = pair.split_at(w);
                    for ((d, &v0), &v1) in dst.chunks_exact_mut(2).zip(b0).zip(b1) {
                        d[0] = v0;
                        d[1] = v1;
                    }
                }
            }
        });
    }
}

impl Deconv2x2 {
    fn fma(&self) -> usize {
        self.weights.m * self.weights.k * self.in_shape[2] * self.in_shape[3]
    }
}

impl Op for Deconv2x2 {
    fn name(&self) -> StaticName {
        "Deconv2x2".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{:?} -> {:?}, kernel {:?}",
            self.in_shape, self.out_shape, self.kernel
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for Deconv2x2 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(inputs.len() == 3, "Deconv2x2: {} inputs", inputs.len());
        let shapes = (&self.in_shape[..], &self.out_shape[..]);
        let work = (self.in_shape[2], self.fma());
        eval_by_rows("Deconv2x2", &inputs[0], shapes, work, |xs, out, ys| {
            // SAFETY: shapes checked; the input row runs (two output rows each) are disjoint
            // and cover every row.
            unsafe { self.rows(xs, out.get(), ys) };
            Ok(())
        })
    }
}

impl TypedOp for Deconv2x2 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        planned_facts("Deconv2x2", inputs[0], (&self.in_shape, &self.out_shape))
    }

    fn cost(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        Ok(tvec!((Cost::FMA(DatumType::F32), self.fma().into())))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use tract_core::ops::cnn::{PaddingSpec, PoolSpec};

    use super::*;
    use crate::{max_abs_diff, run_one, substitute_decluttered, test_values};

    /// A one-node model: tract's 2x2 stride-2 transposed convolution from `ci` to `co`
    /// channels over `h x w` (`bias`: 0 for a scalar bias, as tract-onnx wires a missing one,
    /// else that many values: one, or one per channel).
    fn deconv(ci: usize, co: usize, (h, w): (usize, usize), bias: usize) -> TypedModel {
        let mut seed = (ci * 31 + co * 7 + h + w + bias) as u64;
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact([1, ci, h, w])).unwrap();
        let k = test_values(&mut seed, co * ci * 4);
        let k = m
            .add_const("k", Tensor::from_shape(&[co, ci, 2, 2], &k).unwrap())
            .unwrap();
        let b = match bias {
            0 => tensor0(0.25f32),
            n => Tensor::from_shape(&[n], &test_values(&mut seed, n)).unwrap(),
        };
        let b = m.add_const("b", b).unwrap();
        let ps = PoolSpec::new(
            DataFormat::NCHW,
            tvec![2, 2],
            PaddingSpec::Valid,
            None,
            Some(tvec![2, 2]),
            ci,
            co,
        );
        let op = Deconv::new(ps, KernelFormat::OIHW, tvec![0, 0], 1);
        let y = m.wire_node("deconv", op, &[x, k, b]).unwrap();
        m.select_output_outlets(&y).unwrap();
        m
    }

    /// (tract's output, ours, whether ours was put in) for kernel `k`.
    fn both(m: &TypedModel, x: &Tensor, k: Kernel) -> (Vec<f32>, Vec<f32>, bool) {
        let want = run_one(m.clone().into_optimized().unwrap(), x);
        let mut ours = m.clone();
        ours.declutter().unwrap();
        let done = substitute_decluttered(&mut ours, k).unwrap();
        ours.optimize().unwrap();
        let replaced = ours.nodes.iter().any(|n| n.op.name() == "Deconv2x2");
        assert_eq!(done.deconv, replaced as usize);
        (want, run_one(ours, x), replaced)
    }

    #[test]
    fn matches_tract_and_every_kernel_equals_scalar() {
        // SAM's two upscalings in small; widths with a partial 16-pixel tile, 1 and 7 rows.
        for (ci, co, hw, bias) in [
            (16, 8, (5, 20), 8),
            (8, 4, (7, 33), 1),
            (12, 6, (1, 16), 0),
            (4, 3, (6, 7), 3),
        ] {
            let m = deconv(ci, co, hw, bias);
            let mut seed = 5;
            let x = test_values(&mut seed, ci * hw.0 * hw.1);
            let x = Tensor::from_shape(&[1, ci, hw.0, hw.1], &x).unwrap();
            let (want, scalar, replaced) = both(&m, &x, Kernel::Scalar);
            assert!(replaced, "{ci} {co} {hw:?}");
            let diff = max_abs_diff(&want, &scalar);
            assert!(diff < 1e-5, "{ci} {co} {hw:?}: {diff:e}");
            for k in Kernel::available() {
                let (_, got, _) = both(&m, &x, k);
                assert!(
                    got == scalar,
                    "{k:?} {ci} {co} {hw:?} differs from the scalar path"
                );
            }
        }
    }

    #[test]
    fn other_transposed_convolutions_are_left_to_tract() {
        // Stride 1 (taps overlap): not this op.
        let mut m = deconv(4, 3, (6, 7), 3);
        let node = m.nodes.iter().position(|n| n.op_is::<Deconv>()).unwrap();
        let mut op = m.nodes[node].op_as::<Deconv>().unwrap().clone();
        op.pool_spec.strides = Some(tvec![1, 1]);
        m.nodes[node].op = Box::new(op);
        m.nodes[node].outputs[0].fact = f32::fact([1, 3, 7, 8]);
        let x = Tensor::from_shape(&[1, 4, 6, 7], &vec![0.5f32; 4 * 42]).unwrap();
        let (want, got, replaced) = both(&m, &x, Kernel::best());
        assert!(!replaced);
        assert!(max_abs_diff(&want, &got) < 1e-5);
    }
}
