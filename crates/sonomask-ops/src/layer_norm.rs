//! Layer normalisation over one axis (`(x - mean) / sqrt(var + eps) * gamma + beta`), in place
//! of the six nodes tract's ONNX front end expands it into.
//!
//! Why: tract runs the expansion (`Reduce<Sum>`, scale, `Sub`, `RmsNorm`, `Mul`, `Add`) as
//! separate passes over the activations, each allocating its output, and the reduction and
//! broadcast ops run on one thread, in the encoder's 22 layer norms and the decoder's (its
//! channel-axis `LayerNorm2d` and the transformer's norms over a non-last axis) (figures: docs/BENCHMARKS.md, appendix, "What each own operator replaced"). One read and one write of the tensor suffice:
//! - over the last axis (a TinyViT row of 128-320 values stays in L1) one row at a time;
//! - over an inner axis (`[outer, len, inner]`, e.g. channels of an NCHW map) a block of
//!   [`COLS`] columns at a time, its running sums in eight-lane arrays the compiler vectorises
//!   across columns (each column's sum taken over the axis in order).
//!
//! The kernels are written once and compiled for AVX2, NEON and the baseline: the paths are the
//! same operations in the same order, so they agree bit for bit (tested with `==`). Against
//! tract's expansion the sums are taken in another order: tested to 1e-5.

use tract_core::internal::*;

use crate::exec::{SharedMut, par_tasks};
use sonomask_kernels::Kernel;
pub use sonomask_kernels::layer_norm::layer_norm_row;
use sonomask_kernels::layer_norm::{COLS, norm_cols};

/// Layer norm over one axis of an f32 tensor seen as `[outer, len, inner]`, with constant
/// per-channel scale and shift.
#[derive(Debug, Clone, PartialEq)]
pub struct AxisLayerNorm {
    pub kernel: Kernel,
    pub eps: f32,
    /// The input shape planned for.
    pub shape: Vec<usize>,
    /// Elements after the normalised axis (1: it is the last).
    pub inner: usize,
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
}

// Plan equality only (tract compares ops to merge duplicates): a NaN parameter just makes two
// equal ops look different.
impl Eq for AxisLayerNorm {}

impl AxisLayerNorm {
    /// The op normalising axis `axis` of `shape`, with `gamma` and `beta` broadcast along that
    /// axis (ones elsewhere, numpy-aligned from the right, or a scalar), if they are.
    pub fn new(
        kernel: Kernel,
        eps: f32,
        shape: &[usize],
        axis: usize,
        gamma: &Tensor,
        beta: &Tensor,
    ) -> Option<Self> {
        let len = *shape.get(axis)?;
        let along_axis = |t: &Tensor| -> Option<Vec<f32>> {
            let s = t.shape();
            let lead = shape.len().checked_sub(s.len())?;
            let others_one = s
                .iter()
                .enumerate()
                .all(|(i, &d)| d == 1 || i + lead == axis);
            if t.datum_type() != DatumType::F32 || !others_one {
                return None;
            }
            let plain = t.try_as_plain_ram().ok()?;
            let v = plain.as_slice::<f32>().ok()?;
            match v.len() {
                1 => Some(vec![v[0]; len]),
                n if n == len => Some(v.to_vec()),
                _ => None,
            }
        };
        Some(AxisLayerNorm {
            kernel,
            eps,
            shape: shape.to_vec(),
            inner: shape[axis + 1..].iter().product(),
            gamma: along_axis(gamma)?,
            beta: along_axis(beta)?,
        })
    }

    /// Normalises `data` (`[outer, len, inner]`) in place, on tract's threads.
    fn apply(&self, data: &mut [f32]) -> TractResult<()> {
        let (len, inner) = (self.gamma.len(), self.inner);
        let total = data.len();
        if len == 0 || total == 0 {
            return Ok(());
        }
        use tract_core::tract_linalg::multithread::par_chunks_mut as par;
        if inner == 1 {
            return par(data, len, total, |_, rows: &mut [f32]| {
                for row in rows.chunks_exact_mut(len) {
                    layer_norm_row(self.kernel, row, self.eps, &self.gamma, &self.beta);
                }
                Ok(())
            });
        }
        let blocks = inner.div_ceil(COLS);
        let base = SharedMut(data.as_mut_ptr());
        par_tasks(total / (len * inner) * blocks, total, |t| {
            let (o, c0) = (t / blocks, t % blocks * COLS);
            let w = COLS.min(inner - c0);
            // SAFETY: block (o, c0) lies inside `data` (ids cover `outer x blocks`) and no two
            // tasks share a column.
            let x = unsafe { base.get().add(o * len * inner + c0) };
            unsafe { norm_cols(self.kernel, x, inner, w, self.eps, &self.gamma, &self.beta) };
        })
    }
}

impl Op for AxisLayerNorm {
    fn name(&self) -> StaticName {
        "AxisLayerNorm".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "eps {} len {} inner {} kernel {:?}",
            self.eps,
            self.gamma.len(),
            self.inner,
            self.kernel
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for AxisLayerNorm {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        ensure!(
            x.datum_type() == DatumType::F32 && x.shape() == &*self.shape,
            "AxisLayerNorm: input {:?} {:?}, planned for f32 {:?}",
            x.datum_type(),
            x.shape(),
            self.shape
        );
        let mut t = x.into_tensor();
        self.apply(t.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?)?;
        Ok(tvec!(t.into_tvalue()))
    }
}

impl TypedOp for AxisLayerNorm {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(inputs[0].shape.clone())))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{max_abs_diff, run_one, substitute_decluttered};
    use tract_core::ops::math;
    use tract_core::ops::nn::{Reduce, Reducer, RmsNorm};

    /// Values in [-1, 3): a mean away from zero, as activations have.
    fn rand(seed: &mut u64, n: usize) -> Vec<f32> {
        let v = crate::test_values(seed, n);
        v.into_iter().map(|x| x * 4.0 + 1.0).collect()
    }

    /// tract's expansion of an ONNX LayerNormalization over axis 1 of `[outer, len, inner]`, as
    /// it stands after declutter; `recip` is the constant the sum is scaled by.
    fn expanded(shape: [usize; 3], recip: f32, seed: &mut u64) -> TypedModel {
        let [_, len, _] = shape;
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact(shape)).unwrap();
        let sum = Reduce::new(tvec![1], Reducer::Sum);
        let s = m.wire_node("sum", sum, &[x]).unwrap()[0];
        let r = m.add_const("recip", tensor3(&[[[recip]]])).unwrap();
        let mean = m.wire_node("mean", math::mul(), &[s, r]).unwrap()[0];
        let d = m.wire_node("d", math::sub(), &[x, mean]).unwrap()[0];
        let rms = RmsNorm {
            axis: 1,
            eps: Arc::new(tensor0(1e-5f32)),
        };
        let n = m.wire_node("rms", rms, &[d]).unwrap()[0];
        let g = Tensor::from_shape(&[1, len, 1], &rand(seed, len)).unwrap();
        let g = m.add_const("gamma", g).unwrap();
        let scaled = m.wire_node("scale", math::mul(), &[n, g]).unwrap()[0];
        let b = Tensor::from_shape(&[1, len, 1], &rand(seed, len)).unwrap();
        let b = m.add_const("beta", b).unwrap();
        let y = m.wire_node("shift", math::add(), &[scaled, b]).unwrap();
        m.select_output_outlets(&y).unwrap();
        m
    }

    #[test]
    fn replaces_the_expansion_and_matches_it() {
        // Last axis (inner 1) and inner axes: an NCHW map's channels, partial column blocks.
        let shapes = [
            [7, 128, 1],
            [3, 13, 1],
            [1, 320, 1],
            [5, 2, 1],
            [1, 64, 300],
            [2, 16, 64],
            [1, 256, 70],
            [3, 5, 1],
            [1, 3, 7],
        ];
        for shape in shapes {
            let [outer, len, inner] = shape;
            let mut seed = (outer * 1000 + len * 10 + inner) as u64;
            let m = expanded(shape, 1.0 / len as f32, &mut seed);
            let x = Tensor::from_shape(&shape, &rand(&mut seed, outer * len * inner)).unwrap();
            let want = run_one(m.clone().into_optimized().unwrap(), &x);
            let mut ours = m;
            ours.declutter().unwrap();
            let done = substitute_decluttered(&mut ours, Kernel::best()).unwrap();
            assert_eq!(done.layer_norm, 1, "{shape:?}");
            ours.optimize().unwrap();
            let names: Vec<_> = ours.nodes.iter().map(|n| n.op.name().to_string()).collect();
            assert!(!names.iter().any(|n| n.contains("RmsNorm")), "{names:?}");
            assert!(names.iter().any(|n| n == "AxisLayerNorm"), "{names:?}");
            let got = run_one(ours, &x);
            let diff = max_abs_diff(&want, &got);
            assert!(diff < 1e-5, "{shape:?}: {diff:e}");
        }
    }

    #[test]
    fn a_scale_that_is_not_the_mean_stays_with_tract() {
        let mut seed = 5;
        let mut m = expanded([4, 16, 3], 1.0 / 15.0, &mut seed);
        m.declutter().unwrap();
        let done = substitute_decluttered(&mut m, Kernel::best()).unwrap();
        assert_eq!(done.layer_norm, 0);
    }

    #[test]
    fn parameters_that_vary_off_the_axis_are_refused() {
        let g = Tensor::from_shape(&[1, 4, 2], &[1f32; 8]).unwrap();
        let b = Tensor::from_shape(&[4, 1], &[0f32; 4]).unwrap();
        assert!(AxisLayerNorm::new(Kernel::Scalar, 1e-5, &[2, 4, 2], 1, &g, &b).is_none());
        let g = Tensor::from_shape(&[4, 1], &[1f32; 4]).unwrap();
        let op = AxisLayerNorm::new(Kernel::Scalar, 1e-5, &[2, 4, 2], 1, &g, &b).unwrap();
        assert_eq!((op.inner, op.gamma.len()), (2, 4));
        assert!(AxisLayerNorm::new(Kernel::Scalar, 1e-5, &[2, 4, 2], 2, &g, &b).is_none());
    }

    #[test]
    fn every_kernel_equals_scalar_bit_for_bit() {
        let mut seed = 9;
        for n in [1, 7, 8, 9, 31, 128, 320] {
            let x = rand(&mut seed, n);
            let (g, b) = (rand(&mut seed, n), rand(&mut seed, n));
            let mut want = x.clone();
            layer_norm_row(Kernel::Scalar, &mut want, 1e-5, &g, &b);
            for k in Kernel::available() {
                let mut got = x.clone();
                layer_norm_row(k, &mut got, 1e-5, &g, &b);
                assert_eq!(got, want, "{k:?} n {n}");
            }
        }
        // Column blocks: full, partial, single; rows longer than the block.
        for (len, stride, w) in [(64, 64, 64), (5, 100, 37), (256, 70, 6), (3, 9, 1)] {
            let x = rand(&mut seed, len * stride);
            let (g, b) = (rand(&mut seed, len), rand(&mut seed, len));
            let mut want = x.clone();
            unsafe { norm_cols(Kernel::Scalar, want.as_mut_ptr(), stride, w, 1e-5, &g, &b) };
            assert_eq!(want[w..stride], x[w..stride], "columns past w untouched");
            for k in Kernel::available() {
                let mut got = x.clone();
                unsafe { norm_cols(k, got.as_mut_ptr(), stride, w, 1e-5, &g, &b) };
                assert_eq!(got, want, "{k:?} len {len} w {w}");
            }
        }
    }
}
