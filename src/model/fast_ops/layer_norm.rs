//! Layer normalisation over the last axis (`(x - mean) / sqrt(var + eps) * gamma + beta`) in one
//! pass per row, in place of the six nodes tract's ONNX front end expands it into.
//!
//! Why: tract runs the expansion (`Reduce<Sum>`, scale, `Sub`, `RmsNorm`, `Mul`, `Add`) as
//! separate passes over the activations, each allocating its output, and the reduction and
//! broadcast ops run on one thread: ~75 ms of the encoder's 22 layer norms on one core. A
//! TinyViT row (128-320 values) stays in L1, so one read and one write of the tensor suffice.
//!
//! The row kernel is written once over eight-lane arrays (partial sums reduced in one fixed
//! order by [`reduce8`]) and compiled for AVX2, NEON and the baseline: the paths are the same
//! operations in the same order, so they agree bit for bit (tested with `==`). Against tract's
//! expansion the sums are taken in another order: tested to 1e-5.

use tract_core::internal::*;

use crate::simd::{Kernel, dispatch, reduce8};

/// Layer norm over the last axis of an f32 tensor, with constant per-channel scale and shift.
#[derive(Debug, Clone, PartialEq)]
pub struct RowLayerNorm {
    pub kernel: Kernel,
    pub eps: f32,
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
}

// Plan equality only (tract compares ops to merge duplicates): a NaN parameter just makes two
// equal ops look different.
impl Eq for RowLayerNorm {}

impl RowLayerNorm {
    /// The op for rows of `len` with `gamma` and `beta` broadcast along the last axis (a tensor of
    /// ones but the last axis, or a scalar), if they are.
    pub fn new(
        kernel: Kernel,
        eps: f32,
        len: usize,
        gamma: &Tensor,
        beta: &Tensor,
    ) -> Option<Self> {
        let along_last = |t: &Tensor| -> Option<Vec<f32>> {
            let s = t.shape();
            if t.datum_type() != DatumType::F32 || s.iter().rev().skip(1).any(|&d| d != 1) {
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
        Some(RowLayerNorm {
            kernel,
            eps,
            gamma: along_last(gamma)?,
            beta: along_last(beta)?,
        })
    }
}

/// One row, in place.
fn norm_row(k: Kernel, x: &mut [f32], eps: f32, gamma: &[f32], beta: &[f32]) {
    assert!(
        gamma.len() == x.len() && beta.len() == x.len(),
        "row parameters"
    );
    dispatch!(
        k,
        norm_generic(x, eps, gamma, beta),
        norm_avx2(x, eps, gamma, beta),
        norm_neon(x, eps, gamma, beta)
    )
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn norm_avx2(x: &mut [f32], eps: f32, gamma: &[f32], beta: &[f32]) {
    norm_generic(x, eps, gamma, beta)
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn norm_neon(x: &mut [f32], eps: f32, gamma: &[f32], beta: &[f32]) {
    norm_generic(x, eps, gamma, beta)
}

/// Sum of `f(v)` over `x` in eight lanes (element `i` into lane `i % 8`), reduced in one order.
#[inline(always)]
fn lanes_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut l = [0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for j in 0..8 {
            l[j] += f(c[j]);
        }
    }
    for (j, &v) in chunks.remainder().iter().enumerate() {
        l[j] += f(v);
    }
    reduce8(&l)
}

#[inline(always)]
fn norm_generic(x: &mut [f32], eps: f32, gamma: &[f32], beta: &[f32]) {
    if x.is_empty() {
        return;
    }
    let n = x.len() as f32;
    let mean = lanes_sum(x, |v| v) / n;
    let var = lanes_sum(x, |v| (v - mean) * (v - mean)) / n;
    let inv = 1.0 / (var + eps).sqrt();
    for ((v, g), b) in x.iter_mut().zip(gamma).zip(beta) {
        *v = (*v - mean) * inv * g + b;
    }
}

impl Op for RowLayerNorm {
    fn name(&self) -> StaticName {
        "RowLayerNorm".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "eps {} len {} kernel {:?}",
            self.eps,
            self.gamma.len(),
            self.kernel
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for RowLayerNorm {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        let len = self.gamma.len();
        ensure!(
            x.datum_type() == DatumType::F32 && x.shape().last() == Some(&len),
            "RowLayerNorm: input {:?} {:?}, rows of {len} f32 expected",
            x.datum_type(),
            x.shape()
        );
        let mut t = x.into_tensor();
        if len > 0 {
            let mut plain = t.try_as_plain_ram_mut()?;
            let data = plain.as_slice_mut::<f32>()?;
            let total = data.len();
            tract_core::tract_linalg::multithread::par_chunks_mut(data, len, total, |_, rows| {
                for row in rows.chunks_exact_mut(len) {
                    norm_row(self.kernel, row, self.eps, &self.gamma, &self.beta);
                }
                Ok(())
            })?;
        }
        Ok(tvec!(t.into_tvalue()))
    }
}

impl TypedOp for RowLayerNorm {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(inputs[0].shape.clone())))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fast_ops::substitute_decluttered;
    use crate::model::onnx::f32s;
    use tract_core::ops::math;
    use tract_core::ops::nn::{Reduce, Reducer, RmsNorm};

    /// Values in [-1, 3): a mean away from zero, as activations have.
    fn rand(seed: &mut u64, n: usize) -> Vec<f32> {
        let v = crate::model::fast_ops::test_values(seed, n);
        v.into_iter().map(|x| x * 4.0 + 1.0).collect()
    }

    /// tract's expansion of an ONNX LayerNormalization over the last axis of `[rows, len]`, as
    /// it stands after declutter; `recip` is the constant the sum is scaled by.
    fn expanded(rows: usize, len: usize, recip: f32, seed: &mut u64) -> TypedModel {
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact([rows, len])).unwrap();
        let sum = Reduce::new(tvec![1], Reducer::Sum);
        let s = m.wire_node("sum", sum, &[x]).unwrap()[0];
        let r = m.add_const("recip", tensor2(&[[recip]])).unwrap();
        let mean = m.wire_node("mean", math::mul(), &[s, r]).unwrap()[0];
        let d = m.wire_node("d", math::sub(), &[x, mean]).unwrap()[0];
        let rms = RmsNorm {
            axis: 1,
            eps: Arc::new(tensor0(1e-5f32)),
        };
        let n = m.wire_node("rms", rms, &[d]).unwrap()[0];
        let g = Tensor::from_shape(&[1, len], &rand(seed, len)).unwrap();
        let g = m.add_const("gamma", g).unwrap();
        let scaled = m.wire_node("scale", math::mul(), &[n, g]).unwrap()[0];
        let b = Tensor::from_shape(&[1, len], &rand(seed, len)).unwrap();
        let b = m.add_const("beta", b).unwrap();
        let y = m.wire_node("shift", math::add(), &[scaled, b]).unwrap();
        m.select_output_outlets(&y).unwrap();
        m
    }

    fn run(m: TypedModel, x: &Tensor) -> Vec<f32> {
        let out = m
            .into_runnable()
            .unwrap()
            .run(tvec!(x.clone().into_tvalue()))
            .unwrap();
        f32s(&out[0]).unwrap().to_vec()
    }

    #[test]
    fn replaces_the_expansion_and_matches_it() {
        for (rows, len) in [(7, 128), (3, 13), (1, 320), (5, 2)] {
            let mut seed = (rows * 100 + len) as u64;
            let m = expanded(rows, len, 1.0 / len as f32, &mut seed);
            let x = Tensor::from_shape(&[rows, len], &rand(&mut seed, rows * len)).unwrap();
            let want = run(m.clone().into_optimized().unwrap(), &x);
            let mut ours = m;
            ours.declutter().unwrap();
            let done = substitute_decluttered(&mut ours, Kernel::best()).unwrap();
            assert_eq!(done.layer_norm, 1, "{rows}x{len}");
            ours.optimize().unwrap();
            let names: Vec<_> = ours.nodes.iter().map(|n| n.op.name().to_string()).collect();
            assert!(!names.iter().any(|n| n.contains("RmsNorm")), "{names:?}");
            let got = run(ours, &x);
            let diff = want
                .iter()
                .zip(&got)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(diff < 1e-5, "{rows}x{len}: {diff:e}");
        }
    }

    #[test]
    fn a_scale_that_is_not_the_mean_stays_with_tract() {
        let mut seed = 5;
        let mut m = expanded(4, 16, 1.0 / 15.0, &mut seed);
        m.declutter().unwrap();
        let done = substitute_decluttered(&mut m, Kernel::best()).unwrap();
        assert_eq!(done.layer_norm, 0);
    }

    #[test]
    fn every_kernel_equals_scalar_bit_for_bit() {
        let mut seed = 9;
        for n in [1, 7, 8, 9, 31, 128, 320] {
            let x = rand(&mut seed, n);
            let (g, b) = (rand(&mut seed, n), rand(&mut seed, n));
            let mut want = x.clone();
            norm_row(Kernel::Scalar, &mut want, 1e-5, &g, &b);
            for k in Kernel::available() {
                let mut got = x.clone();
                norm_row(k, &mut got, 1e-5, &g, &b);
                assert_eq!(got, want, "{k:?} n {n}");
            }
        }
    }
}
