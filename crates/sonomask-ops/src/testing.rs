//! Helpers of the operators' tests: seeded values, differences, one-model runs, and the
//! comparison of a rewritten model with tract alone.

use sonomask_kernels::Kernel;
use tract_onnx::prelude::*;

/// Runs decluttered-level model `stock` through tract alone and through our substitution
/// (both passes) on `inputs`: what was replaced, and the largest difference of the first
/// output relative to its largest value (at least 1).
pub fn compare_with_tract(stock: TypedModel, inputs: TVec<TValue>) -> (crate::Replaced, f32) {
    let run = |m: TypedModel| {
        let out = m.into_runnable().unwrap().run(inputs.clone()).unwrap();
        crate::f32s(&out[0]).unwrap().to_vec()
    };
    let want = run(stock.clone().into_optimized().unwrap());
    let mut ours = stock;
    ours.declutter().unwrap();
    let done = crate::substitute_decluttered(&mut ours, Kernel::best()).unwrap();
    ours.optimize().unwrap();
    let got = run(ours);
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(1f32, |a, v| a.max(v.abs()));
    let diff = want
        .iter()
        .zip(&got)
        .map(|(a, b)| (a - b).abs() / scale)
        .fold(0f32, f32::max);
    (done, diff)
}

pub use sonomask_kernels::test_values;

/// Largest `|a - b|` over two equally long value lists (the operators' tests).
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "compared lists differ in length");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

/// Runs a one-input f32 model on `x` and returns its first output's values (the operators'
/// tests).
pub fn run_one(m: TypedModel, x: &Tensor) -> Vec<f32> {
    let out = m
        .into_runnable()
        .unwrap()
        .run(tvec!(x.clone().into_tvalue()))
        .unwrap();
    crate::f32s(&out[0]).unwrap().to_vec()
}
