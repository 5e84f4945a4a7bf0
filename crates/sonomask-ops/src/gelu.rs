//! Exact GELU, `x / 2 * (1 + erf(x / sqrt 2))`, in one in-place pass over the tensor, threaded.
//!
//! Why: tract's `GeluExact` runs each 1024-value chunk in three passes (scale into a scratch
//! buffer, its erf kernel, combine) on one thread; it is compute-bound at well over the time the
//! memory traffic needs, and a large share of the encoder at 1 thread (figures: docs/BENCHMARKS.md, appendix, "What each own operator replaced"). Here each 8 values go through the whole
//! formula in registers.
//!
//! The erf is tract's own formula (Abramowitz-Stegun 7.1.28: `1 - (1 + a1 x + ... + a6
//! x^6)^-16`, the polynomial by fused multiply-adds as its AVX/FMA kernel does): the results
//! agree with tract's to 1e-6 relative (tested). Every path of this op (AVX2+FMA, NEON, scalar
//! `mul_add`) is the same operations in the same order (tested with `==`).

use tract_core::internal::*;
use tract_core::ops::element_wise::ElementWiseOp;
use tract_core::ops::nn::GeluExact;

use crate::exec::{SharedMut, par_tasks};
use sonomask_kernels::Kernel;
pub use sonomask_kernels::gelu::gelu_slice;

/// Exact GELU over an f32 tensor, in place.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Gelu {
    pub kernel: Kernel,
}

impl Gelu {
    /// The replacement for `op` on `dt` values, if it is tract's exact GELU over f32.
    pub fn replacing(op: &ElementWiseOp, dt: DatumType, kernel: Kernel) -> Option<Self> {
        (dt == DatumType::F32 && op.1.is_none() && op.0.downcast_ref::<GeluExact>().is_some())
            .then_some(Gelu { kernel })
    }
}

impl Op for Gelu {
    fn name(&self) -> StaticName {
        "Gelu".into()
    }

    op_as_typed_op!();
}

impl EvalOp for Gelu {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        ensure!(
            x.datum_type() == DatumType::F32,
            "Gelu: {:?} input",
            x.datum_type()
        );
        let mut t = x.into_tensor();
        let mut plain = t.try_as_plain_ram_mut()?;
        let data = plain.as_slice_mut::<f32>()?;
        let total = data.len();
        if total == 0 {
            return Ok(tvec!(t.into_tvalue()));
        }
        // Tasks of 16 Ki values: big enough to amortise a task, small enough to balance.
        const CHUNK: usize = 16 * 1024;
        let base = SharedMut(data.as_mut_ptr());
        par_tasks(total.div_ceil(CHUNK), total, |i| {
            let len = CHUNK.min(total - i * CHUNK);
            // SAFETY: task i owns values i * CHUNK .. + len of `data`, alone.
            let xs = unsafe { std::slice::from_raw_parts_mut(base.get().add(i * CHUNK), len) };
            gelu_slice(self.kernel, xs);
        })?;
        Ok(tvec!(t.into_tvalue()))
    }
}

impl TypedOp for Gelu {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(inputs[0].shape.clone())))
    }

    /// tract's cost for its `GeluExact` (so profiles count the same work).
    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let n = inputs[0].shape.volume();
        Ok(tvec!(
            (Cost::FMA(DatumType::F32), n.clone() * 14),
            (Cost::Div(DatumType::F32), n)
        ))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::substitute;

    /// Values over GELU's whole interesting range, and its extremes.
    fn values() -> Vec<f32> {
        let mut v: Vec<f32> = (0..4001).map(|i| (i as f32 - 2000.0) / 200.0).collect();
        v.extend([
            0.0,
            -0.0,
            1e-30,
            -1e-30,
            30.0,
            -30.0,
            1e4,
            -1e4,
            f32::MIN_POSITIVE,
        ]);
        v
    }

    #[test]
    fn matches_tracts_gelu_and_every_kernel_equals_scalar() {
        let x = values();
        let n = x.len();
        let mut m = TypedModel::default();
        let s = m.add_source("x", f32::fact([n])).unwrap();
        let g = ElementWiseOp(Box::new(GeluExact {}), None);
        let y = m.wire_node("gelu", g, &[s]).unwrap();
        m.select_output_outlets(&y).unwrap();
        let input = || tvec!(Tensor::from_shape(&[n], &x).unwrap().into_tvalue());
        let stock = m.clone().into_optimized().unwrap();
        let want = stock.into_runnable().unwrap().run(input()).unwrap();
        let want = crate::f32s(&want[0]).unwrap().to_vec();
        let mut ours = m.into_optimized().unwrap();
        let done = substitute(&mut ours, Kernel::best()).unwrap();
        assert_eq!(done.gelu, 1);
        let got = ours.into_runnable().unwrap().run(input()).unwrap();
        let got = crate::f32s(&got[0]).unwrap().to_vec();
        for (i, (a, b)) in want.iter().zip(&got).enumerate() {
            assert!(
                (a - b).abs() <= 1e-6 * a.abs().max(1.0),
                "x {} : {a} vs {b}",
                x[i]
            );
        }
        let mut scalar = x.clone();
        gelu_slice(Kernel::Scalar, &mut scalar);
        for k in Kernel::available() {
            let mut v = x.clone();
            gelu_slice(k, &mut v);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&v), bits(&scalar), "{k:?}");
        }
    }
}
