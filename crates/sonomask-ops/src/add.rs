//! The sum of two f32 tensors of one shape (a residual connection), threaded, into whichever
//! input no other node still reads, else into a new tensor.
//!
//! Why: tract's unicast `Add` writes into its first input, and when that input is still read
//! elsewhere (the decoder's `keys + attn_out`, `keys` feeding the next projections too) it
//! first copies it whole on one thread, no faster at 2 threads (figures: docs/BENCHMARKS.md, appendix, "What each own operator replaced"). Here the copy is never made: the sum goes into the
//! input held only here (either one: f32 addition is commutative bit for bit), or into a new
//! tensor written by the same threaded pass that reads both.

use tract_core::internal::*;
use tract_core::ops::binary::OptBinUnicast;
use tract_core::ops::math::Add;

use crate::exec::{SharedMut, par_tasks};

/// `a + b` for f32 tensors of one (concrete) shape.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AddSame {
    pub shape: TVec<usize>,
}

impl AddSame {
    /// The replacement for `op` on inputs `a` and `b`, if it is an f32 sum of two tensors of the
    /// same concrete shape (no broadcast).
    pub fn replacing(op: &OptBinUnicast, a: &TypedFact, b: &TypedFact) -> Option<Self> {
        let shape = a.shape.as_concrete()?;
        (op.binop.is::<Add>()
            && a.datum_type == DatumType::F32
            && b.datum_type == DatumType::F32
            && b.shape.as_concrete() == Some(shape))
        .then(|| AddSame {
            shape: shape.into(),
        })
    }
}

/// Values per task: big enough to amortise a task, small enough to balance two threads.
const CHUNK: usize = 16 * 1024;

/// `dst[i] = x[i] + y[i]`, threaded; `dst` may be `x` or `y`.
///
/// # Safety
/// The three pointers address `len` floats each; no one else touches `dst` meanwhile.
unsafe fn sum(dst: *mut f32, x: *const f32, y: *const f32, len: usize) -> TractResult<()> {
    let (d, x, y) = (SharedMut(dst), x as usize, y as usize);
    par_tasks(len.div_ceil(CHUNK), len, |t| {
        let (start, n) = (t * CHUNK, CHUNK.min(len - t * CHUNK));
        // SAFETY: task t alone writes values start..start + n of dst; reading x and y there
        // while writing dst (when they are the same buffer) reads each value before its write.
        unsafe {
            let d = d.get().add(start);
            let x = (x as *const f32).add(start);
            let y = (y as *const f32).add(start);
            for i in 0..n {
                *d.add(i) = *x.add(i) + *y.add(i);
            }
        }
    })
}

impl Op for AddSame {
    fn name(&self) -> StaticName {
        "AddSame".into()
    }

    op_as_typed_op!();
}

impl EvalOp for AddSame {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (a, b) = args_2!(inputs);
        for x in [&a, &b] {
            ensure!(
                x.datum_type() == DatumType::F32 && x.shape() == &*self.shape,
                "AddSame: input is {:?} {:?}, planned for f32 {:?}",
                x.datum_type(),
                x.shape(),
                self.shape
            );
        }
        let len = a.len();
        // Into an input held only here (no copy), else a new tensor.
        let (mut out, other) = if a.is_exclusive() {
            (a.into_tensor(), b)
        } else if b.is_exclusive() {
            (b.into_tensor(), a)
        } else {
            // SAFETY: every value is written by `sum` below.
            let out = unsafe { Tensor::uninitialized::<f32>(&self.shape)? };
            let o = other_sum(out, &a, &b, len)?;
            return Ok(tvec!(o.into_tvalue()));
        };
        let y = other.try_as_plain_ram()?.as_slice::<f32>()?.as_ptr();
        let mut plain = out.try_as_plain_ram_mut()?;
        let d = plain.as_slice_mut::<f32>()?.as_mut_ptr();
        // SAFETY: both hold `len` floats; `out` is ours alone.
        unsafe { sum(d, d, y, len)? };
        Ok(tvec!(out.into_tvalue()))
    }
}

/// `out = a + b` into the new tensor `out`.
fn other_sum(mut out: Tensor, a: &Tensor, b: &Tensor, len: usize) -> TractResult<Tensor> {
    let x = a.try_as_plain_ram()?.as_slice::<f32>()?.as_ptr();
    let y = b.try_as_plain_ram()?.as_slice::<f32>()?.as_ptr();
    let mut plain = out.try_as_plain_ram_mut()?;
    let d = plain.as_slice_mut::<f32>()?.as_mut_ptr();
    // SAFETY: all three hold `len` floats; `out` is new.
    unsafe { sum(d, x, y, len)? };
    Ok(out)
}

impl TypedOp for AddSame {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        for f in inputs {
            ensure!(
                f.shape.as_concrete() == Some(&*self.shape),
                "AddSame: input fact {:?}, planned for {:?}",
                f.shape,
                self.shape
            );
        }
        Ok(tvec!(f32::fact(&*self.shape)))
    }

    fn cost(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let n: usize = self.shape.iter().product();
        Ok(tvec!((Cost::FMA(DatumType::F32), n.into())))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{substitute, test_values};

    /// `x + y` where `x` is also an output of the model (so still read elsewhere: the sum
    /// cannot go into it), against tract, bit for bit.
    #[test]
    fn sums_equal_tracts_whichever_input_is_shared() {
        let shape = [3, 40_000];
        let mut seed = 9;
        let (x, y) = (
            test_values(&mut seed, 120_000),
            test_values(&mut seed, 120_000),
        );
        for shared in [None, Some(0), Some(1)] {
            let mut m = TypedModel::default();
            let a = m.add_source("a", f32::fact(shape)).unwrap();
            let b = m.add_source("b", f32::fact(shape)).unwrap();
            let s = m
                .wire_node("sum", tract_core::ops::math::add(), &[a, b])
                .unwrap();
            let mut outs = vec![s[0]];
            // A second reader of one input: the sum must not overwrite it.
            if let Some(i) = shared {
                let other = m
                    .wire_node(
                        "again",
                        tract_core::ops::math::mul(),
                        &[[a, b][i], [a, b][i]],
                    )
                    .unwrap();
                outs.push(other[0]);
            }
            m.select_output_outlets(&outs).unwrap();
            let input = || {
                tvec!(
                    Tensor::from_shape(&shape, &x).unwrap().into_tvalue(),
                    Tensor::from_shape(&shape, &y).unwrap().into_tvalue()
                )
            };
            let stock = m.clone().into_optimized().unwrap();
            let want = stock.into_runnable().unwrap().run(input()).unwrap();
            let mut ours = m.into_optimized().unwrap();
            let done = substitute(&mut ours, sonomask_kernels::Kernel::best()).unwrap();
            assert_eq!(done.add, 1, "{shared:?}");
            let got = ours.into_runnable().unwrap().run(input()).unwrap();
            for (w, g) in want.iter().zip(&got) {
                let (w, g) = (crate::f32s(w).unwrap(), crate::f32s(g).unwrap());
                assert_eq!(w, g, "{shared:?}");
            }
        }
    }
}
