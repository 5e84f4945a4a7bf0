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
//! rounding only (a different `exp` polynomial): tested to 2e-7 absolute.

use tract_core::internal::*;
use tract_core::ops::nn::{Softmax, SoftmaxKind};

use sonomask_kernels::{Kernel, dispatch, reduce8};

pub(super) const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split in two (Cody-Waite) so that `x - n ln2` stays exact for the `n` used here.
pub(super) const LN2_HI: f32 = 0.693_359_4;
pub(super) const LN2_LO: f32 = -2.121_944_4e-4;
/// Cephes `expf` minimax polynomial for `exp(r)` on `|r| <= ln2/2`, highest power first.
pub(super) const P: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];
/// Inputs are clamped to where `2^n` stays a normal number: `exp(-87.33)` is the smallest
/// normal f32 (an underflowing softmax term is ~1e-38 instead of 0, far below rounding of a
/// sum that is at least 1), `exp(88)` is finite.
pub(super) const X_LO: f32 = -87.33;
pub(super) const X_HI: f32 = 88.0;

/// `exp(x)` to ~2 ulp for `x` in `[X_LO, X_HI]`, clamped outside. The reference for every path.
#[inline]
pub fn exp_scalar(x: f32) -> f32 {
    // The comparisons mirror `_mm256_max_ps(x, lo)` / `_mm256_min_ps(x, hi)` exactly.
    let x = if x > X_LO { x } else { X_LO };
    let x = if x < X_HI { x } else { X_HI };
    let n = (x * LOG2E + 0.5).floor();
    let r = x - n * LN2_HI;
    let r = r - n * LN2_LO;
    let mut p = P[0];
    for c in &P[1..] {
        p = p * r + c;
    }
    let y = (p * (r * r) + r) + 1.0;
    y * f32::from_bits(((n as i32 + 127) << 23) as u32)
}

/// Softmax of every `row_len`-long row of `data` in place.
pub fn softmax_rows(k: Kernel, data: &mut [f32], row_len: usize) {
    assert!(
        row_len > 0 && data.len().is_multiple_of(row_len),
        "softmax rows must tile the data"
    );
    for row in data.chunks_exact_mut(row_len) {
        dispatch!(k, row_scalar(row), row_avx2(row), row_neon(row))
    }
}

/// `exp` of every value of `xs`, in place: [`exp_scalar`]'s function on every path, equal to
/// it bit for bit (for softmaxes whose rows are too short for a vector, e.g. over 7 tokens,
/// vectorised across rows by the caller).
pub fn exp_in_place(k: Kernel, xs: &mut [f32]) {
    dispatch!(
        k,
        exp_slice_scalar(xs),
        exp_slice_avx2(xs),
        exp_slice_neon(xs)
    )
}

fn exp_slice_scalar(xs: &mut [f32]) {
    xs.iter_mut().for_each(|x| *x = exp_scalar(*x));
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn exp_slice_avx2(xs: &mut [f32]) {
    use std::arch::x86_64::*;
    let mut chunks = xs.chunks_exact_mut(8);
    for c in &mut chunks {
        // SAFETY: c holds 8 values.
        unsafe { _mm256_storeu_ps(c.as_mut_ptr(), exp_avx2(_mm256_loadu_ps(c.as_ptr()))) };
    }
    let tail = chunks.into_remainder();
    let mut t = [0f32; 8];
    t[..tail.len()].copy_from_slice(tail);
    // SAFETY: t holds 8 values.
    unsafe { _mm256_storeu_ps(t.as_mut_ptr(), exp_avx2(_mm256_loadu_ps(t.as_ptr()))) };
    let n = tail.len();
    tail.copy_from_slice(&t[..n]);
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn exp_slice_neon(xs: &mut [f32]) {
    use std::arch::aarch64::*;
    let mut chunks = xs.chunks_exact_mut(4);
    for c in &mut chunks {
        // SAFETY: c holds 4 values.
        unsafe { vst1q_f32(c.as_mut_ptr(), exp_neon(vld1q_f32(c.as_ptr()))) };
    }
    let tail = chunks.into_remainder();
    let mut t = [0f32; 4];
    t[..tail.len()].copy_from_slice(tail);
    // SAFETY: t holds 4 values.
    unsafe { vst1q_f32(t.as_mut_ptr(), exp_neon(vld1q_f32(t.as_ptr()))) };
    let n = tail.len();
    tail.copy_from_slice(&t[..n]);
}

fn row_scalar(row: &mut [f32]) {
    let mut m = row[0];
    for &x in row.iter() {
        m = if x > m { x } else { m };
    }
    let n = row.len() / 8 * 8;
    let mut acc = [0f32; 8];
    for c in row[..n].chunks_exact_mut(8) {
        for l in 0..8 {
            c[l] = exp_scalar(c[l] - m);
            acc[l] += c[l];
        }
    }
    let mut sum = reduce8(&acc);
    for x in &mut row[n..] {
        *x = exp_scalar(*x - m);
        sum += *x;
    }
    let inv = 1.0 / sum;
    for x in row.iter_mut() {
        *x *= inv;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn exp_avx2(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let x = _mm256_max_ps(x, _mm256_set1_ps(X_LO));
    let x = _mm256_min_ps(x, _mm256_set1_ps(X_HI));
    let n = _mm256_floor_ps(_mm256_add_ps(
        _mm256_mul_ps(x, _mm256_set1_ps(LOG2E)),
        _mm256_set1_ps(0.5),
    ));
    let r = _mm256_sub_ps(x, _mm256_mul_ps(n, _mm256_set1_ps(LN2_HI)));
    let r = _mm256_sub_ps(r, _mm256_mul_ps(n, _mm256_set1_ps(LN2_LO)));
    let mut p = _mm256_set1_ps(P[0]);
    for c in &P[1..] {
        p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(*c));
    }
    let y = _mm256_add_ps(
        _mm256_add_ps(_mm256_mul_ps(p, _mm256_mul_ps(r, r)), r),
        _mm256_set1_ps(1.0),
    );
    let e = _mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)),
        23,
    );
    _mm256_mul_ps(y, _mm256_castsi256_ps(e))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn row_avx2(row: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = row.len() / 8 * 8;
    let p = row.as_mut_ptr();
    let mut m = row[0];
    if n > 0 {
        // SAFETY (all loads/stores below): indices stay below n <= row.len().
        let mut vm = unsafe { _mm256_loadu_ps(p) };
        let mut i = 8;
        while i < n {
            vm = _mm256_max_ps(unsafe { _mm256_loadu_ps(p.add(i)) }, vm);
            i += 8;
        }
        let mut l = [0f32; 8];
        unsafe { _mm256_storeu_ps(l.as_mut_ptr(), vm) };
        for x in l {
            m = if x > m { x } else { m };
        }
    }
    for &x in &row[n..] {
        m = if x > m { x } else { m };
    }
    let vmax = _mm256_set1_ps(m);
    let mut acc = _mm256_setzero_ps();
    let mut i = 0;
    while i < n {
        unsafe {
            let e = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), vmax));
            _mm256_storeu_ps(p.add(i), e);
            acc = _mm256_add_ps(acc, e);
        }
        i += 8;
    }
    let mut l = [0f32; 8];
    unsafe { _mm256_storeu_ps(l.as_mut_ptr(), acc) };
    let mut sum = reduce8(&l);
    // The tail's exponentials in one vector (padded with the max: exp(0), dropped), summed in
    // the scalar order: short rows (the decoder's 7 tokens) are all tail.
    if n < row.len() {
        let mut t = [m; 8];
        t[..row.len() - n].copy_from_slice(&row[n..]);
        // SAFETY: t holds 8 values.
        unsafe {
            let e = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(t.as_ptr()), vmax));
            _mm256_storeu_ps(t.as_mut_ptr(), e);
        }
        for (x, &e) in row[n..].iter_mut().zip(&t) {
            *x = e;
            sum += e;
        }
    }
    let inv = 1.0 / sum;
    let vinv = _mm256_set1_ps(inv);
    let mut i = 0;
    while i < n {
        unsafe { _mm256_storeu_ps(p.add(i), _mm256_mul_ps(_mm256_loadu_ps(p.add(i)), vinv)) };
        i += 8;
    }
    for x in &mut row[n..] {
        *x *= inv;
    }
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn exp_neon(x: std::arch::aarch64::float32x4_t) -> std::arch::aarch64::float32x4_t {
    use std::arch::aarch64::*;
    // vmaxq/vminq equal the scalar comparisons for the finite values softmax sees.
    let x = vmaxq_f32(x, vdupq_n_f32(X_LO));
    let x = vminq_f32(x, vdupq_n_f32(X_HI));
    let n = vrndmq_f32(vaddq_f32(
        vmulq_f32(x, vdupq_n_f32(LOG2E)),
        vdupq_n_f32(0.5),
    ));
    let r = vsubq_f32(x, vmulq_f32(n, vdupq_n_f32(LN2_HI)));
    let r = vsubq_f32(r, vmulq_f32(n, vdupq_n_f32(LN2_LO)));
    let mut p = vdupq_n_f32(P[0]);
    for c in &P[1..] {
        p = vaddq_f32(vmulq_f32(p, r), vdupq_n_f32(*c));
    }
    let y = vaddq_f32(
        vaddq_f32(vmulq_f32(p, vmulq_f32(r, r)), r),
        vdupq_n_f32(1.0),
    );
    let e = vshlq_n_s32::<23>(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)));
    vmulq_f32(y, vreinterpretq_f32_s32(e))
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn row_neon(row: &mut [f32]) {
    use std::arch::aarch64::*;
    let mut m = row[0];
    for &x in row.iter() {
        m = if x > m { x } else { m };
    }
    let n = row.len() / 8 * 8;
    let p = row.as_mut_ptr();
    let vmax = vdupq_n_f32(m);
    // Lanes 0-3 and 4-7 of the AVX2 order.
    let (mut a, mut b) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
    let mut i = 0;
    while i < n {
        // SAFETY (all loads/stores below): i + 8 <= n <= row.len().
        unsafe {
            let ea = exp_neon(vsubq_f32(vld1q_f32(p.add(i)), vmax));
            let eb = exp_neon(vsubq_f32(vld1q_f32(p.add(i + 4)), vmax));
            vst1q_f32(p.add(i), ea);
            vst1q_f32(p.add(i + 4), eb);
            a = vaddq_f32(a, ea);
            b = vaddq_f32(b, eb);
        }
        i += 8;
    }
    let mut l = [0f32; 8];
    unsafe {
        vst1q_f32(l.as_mut_ptr(), a);
        vst1q_f32(l.as_mut_ptr().add(4), b);
    }
    let mut sum = reduce8(&l);
    // The tail's exponentials in two vectors, as in `row_avx2`.
    if n < row.len() {
        let mut t = [m; 8];
        t[..row.len() - n].copy_from_slice(&row[n..]);
        // SAFETY: t holds 8 values.
        unsafe {
            let tp = t.as_mut_ptr();
            let ea = exp_neon(vsubq_f32(vld1q_f32(tp), vmax));
            let eb = exp_neon(vsubq_f32(vld1q_f32(tp.add(4)), vmax));
            vst1q_f32(tp, ea);
            vst1q_f32(tp.add(4), eb);
        }
        for (x, &e) in row[n..].iter_mut().zip(&t) {
            *x = e;
            sum += e;
        }
    }
    let inv = 1.0 / sum;
    let vinv = vdupq_n_f32(inv);
    let mut i = 0;
    while i + 4 <= row.len() {
        unsafe { vst1q_f32(p.add(i), vmulq_f32(vld1q_f32(p.add(i)), vinv)) };
        i += 4;
    }
    for x in &mut row[i..] {
        *x *= inv;
    }
}

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
    fn exp_is_accurate_over_the_softmax_range() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x <= 10.0 {
            let want = (x as f64).exp();
            let got = exp_scalar(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 3.0e-7, "exp relative error {worst:e}");
        assert_eq!(exp_scalar(0.0), 1.0);
        // Far below the clamp: tiny, finite, non-negative.
        let t = exp_scalar(-1.0e30);
        assert!((0.0..1.0e-37).contains(&t));
    }

    #[test]
    fn every_kernel_equals_scalar_bit_for_bit() {
        let mut seed = 7;
        for len in 1..=70 {
            for scale in [0.1f32, 8.0, 200.0] {
                let row = rand_row(&mut seed, len * 3, scale);
                let mut want = row.clone();
                softmax_rows(Kernel::Scalar, &mut want, len);
                for k in Kernel::available() {
                    let mut got = row.clone();
                    softmax_rows(k, &mut got, len);
                    assert_eq!(got, want, "{k:?} len {len} scale {scale}");
                }
            }
        }
    }

    #[test]
    fn exp_in_place_equals_scalar_bit_for_bit_on_every_kernel() {
        let mut seed = 5;
        for len in 0..=37 {
            for scale in [0.5f32, 30.0, 120.0] {
                let xs = rand_row(&mut seed, len, scale);
                let want: Vec<f32> = xs.iter().map(|&x| exp_scalar(x)).collect();
                for k in Kernel::available() {
                    let mut got = xs.clone();
                    exp_in_place(k, &mut got);
                    let (g, w): (Vec<u32>, Vec<u32>) = (
                        got.iter().map(|v| v.to_bits()).collect(),
                        want.iter().map(|v| v.to_bits()).collect(),
                    );
                    assert_eq!(g, w, "{k:?} len {len} scale {scale}");
                }
            }
        }
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
