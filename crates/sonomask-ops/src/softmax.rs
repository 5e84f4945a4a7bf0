//! Softmax over the last axis of an f32 tensor, one row at a time, in one pass per step
//! (max, exp-and-sum, scale) with a vectorised `exp`.
//!
//! Why: tract's softmax runs each row through three separately dispatched linalg kernels and
//! falls back to a per-row scalar path when the row length is not a multiple of 4. TinyViT's
//! 7x7 window attention has 49-long rows: the encoder spent ~10% of its time in 10 softmax nodes
//! (14 ns per element on the 49-long rows, 4 ns on the 196-long ones).
//!
//! The AVX2, NEON and scalar paths are bit-identical (no FMA; the sum keeps eight lanes in the
//! AVX2 order and reduces them in one fixed order; `exp` is the same sequence of IEEE operations
//! in every path), proven by tests with `==`. Against tract's own softmax the result differs by
//! rounding only (a different `exp` polynomial): tested to 2e-7 absolute. The row kernels live
//! in `sonomask_kernels::softmax` (re-exported here).

use tract_core::internal::*;
use tract_core::ops::nn::{Softmax, SoftmaxKind};

use sonomask_kernels::Kernel;
pub use sonomask_kernels::softmax::*;

/// Drop-in for tract's f32 [`Softmax`] over the last axis; anything else (a tensor whose
/// layout is not plain rows) goes to the stock op it replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowSoftmax {
    pub kernel: Kernel,
    pub stock: Softmax,
}

impl RowSoftmax {
    /// The replacement for `op` on an input of type `dt` and rank `rank`, if it is one this op
    /// computes: plain softmax (not log, not quantized) of f32 over the last axis.
    pub fn replacing(op: &Softmax, dt: DatumType, rank: usize, kernel: Kernel) -> Option<Self> {
        (dt == DatumType::F32
            && rank > 0
            && op.kind == SoftmaxKind::Softmax
            && op.quant_output_dt.is_none()
            && op.axes.as_slice() == [rank - 1])
        .then(|| RowSoftmax {
            kernel,
            stock: op.clone(),
        })
    }
}

impl Op for RowSoftmax {
    fn name(&self) -> StaticName {
        "RowSoftmax".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("kernel {:?}", self.kernel)])
    }

    op_as_typed_op!();
}

impl EvalOp for RowSoftmax {
    op_out_of_plan!();

    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = &inputs[0];
        let row_len = input.shape().last().copied().unwrap_or(0);
        if input.datum_type() != DatumType::F32
            || row_len == 0
            || input.strides() != &*Tensor::natural_strides(input.shape())
        {
            return self.stock.eval(ctx, inputs);
        }
        let mut output = args_1!(inputs).into_tensor();
        let mut plain = output.try_as_plain_ram_mut()?;
        let data = plain.as_slice_mut::<f32>()?;
        let total = data.len();
        let k = self.kernel;
        // Split on row boundaries over tract's executor, as the stock op does.
        tract_core::tract_linalg::multithread::par_chunks_mut(data, row_len, total, |_, chunk| {
            softmax_rows(k, chunk, row_len);
            Ok(())
        })?;
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for RowSoftmax {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        self.stock.output_facts(inputs)
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::f32s;

    fn rand_row(seed: &mut u64, n: usize, scale: f32) -> Vec<f32> {
        let v = crate::test_values(seed, n);
        v.into_iter().map(|x| x * scale).collect()
    }

    #[test]
    fn rows_match_the_stock_softmax_and_sum_to_one() {
        let mut seed = 11;
        for (shape, scale) in [
            (vec![3usize, 4, 49, 49], 6.0f32),
            (vec![2, 5, 196], 30.0),
            (vec![7, 5], 1.0),
        ] {
            let n: usize = shape.iter().product();
            let x = Tensor::from_shape(&shape, &rand_row(&mut seed, n, scale)).unwrap();
            let stock = Softmax::new(tvec![shape.len() - 1], None, SoftmaxKind::Softmax);
            let want = stock
                .eval_out_of_plan(tvec!(x.clone().into_tvalue()))
                .unwrap();
            let ours =
                RowSoftmax::replacing(&stock, DatumType::F32, shape.len(), Kernel::best()).unwrap();
            let got = ours.eval_out_of_plan(tvec!(x.into_tvalue())).unwrap();
            let (w, g) = (
                f32s(&want.unwrap()[0]).unwrap().to_vec(),
                f32s(&got.unwrap()[0]).unwrap().to_vec(),
            );
            let diff = w
                .iter()
                .zip(&g)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(diff <= 2e-7, "{shape:?}: max |diff| {diff:e}");
            let row = *shape.last().unwrap();
            for r in g.chunks(row) {
                let s: f32 = r.iter().sum();
                assert!((s - 1.0).abs() < 1e-5, "row sums to {s}");
            }
        }
    }

    #[test]
    fn other_softmaxes_are_left_to_tract() {
        let log = Softmax::new(tvec![1], None, SoftmaxKind::LogSoftmax);
        assert!(RowSoftmax::replacing(&log, DatumType::F32, 2, Kernel::Scalar).is_none());
        let inner = Softmax::new(tvec![0], None, SoftmaxKind::Softmax);
        assert!(RowSoftmax::replacing(&inner, DatumType::F32, 2, Kernel::Scalar).is_none());
        let last = Softmax::new(tvec![1], None, SoftmaxKind::Softmax);
        assert!(RowSoftmax::replacing(&last, DatumType::F16, 2, Kernel::Scalar).is_none());
        assert!(RowSoftmax::replacing(&last, DatumType::F32, 2, Kernel::Scalar).is_some());
    }
}
