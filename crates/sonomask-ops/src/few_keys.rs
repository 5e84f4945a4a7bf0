//! Attention of many channels-first queries over a few keys, `softmax(scale q.k^T) . v` per
//! head, vectorised over the queries: SAM's image-to-token attention (4096 image tokens over 7
//! prompt tokens), its queries and output kept channels-first (see
//! [`heads_first`](crate::heads_first), which puts it in).
//!
//! Why: with 7 keys each query's scores are 7 values: taken row by row (the fused
//! [`Attention`](crate::Attention)) the register blocks are mostly padding, and the softmax a
//! pass per 7-long row; it ran at 12-14 GFLOP/s, and its token-major output made the output
//! projection after it read a transposed operand through the sgemm (60 GFLOP/s). Here a lane is
//! a query: for 8 queries (4 on NEON) of one head the scores are `keys` vectors accumulated over
//! the head's channels (each a contiguous row of the channels-first queries), the softmax is
//! taken across those vectors (elementwise max, `exp`, sum), and each output channel is one
//! vector accumulated over the keys and stored into its contiguous row. The keys and values of
//! the head are copied first into small blocks (`keys x dim`).
//!
//! Every path (AVX2+FMA, NEON, scalar) does the same IEEE operations in the same order (fused
//! multiply-adds over the channels, the scale, the maximum in key order, `exp` as
//! [`attention`](crate::attention)'s, the sum in key order, `1 / sum`, fused multiply-adds over
//! the keys, then the multiply by `1 / sum`), so they agree bit for bit (tested with `==`);
//! against tract (normalised before the product with v) they agree to 1e-5.

use tract_core::internal::*;

use crate::attention::exp_fma;
use crate::exec::{SharedMut, par_tasks};
use crate::pointwise::kernel_has_fma;
use sonomask_kernels::Kernel;

/// Most keys: the scores of 8 queries live in `MAX_KEYS` vectors.
pub const MAX_KEYS: usize = 16;
/// Most channels per head (of q and of v): a head's keys and values are copied to the stack.
pub const MAX_DIM: usize = 64;
/// Queries per task.
const CHUNK: usize = 512;

/// `$f::<keys>($args)` for `keys` in `1..=MAX_KEYS` (one monomorphised block per key count).
macro_rules! by_keys {
    ($keys:expr, $f:ident($($a:expr),*)) => {
        match $keys {
            1 => $f::<1>($($a),*),
            2 => $f::<2>($($a),*),
            3 => $f::<3>($($a),*),
            4 => $f::<4>($($a),*),
            5 => $f::<5>($($a),*),
            6 => $f::<6>($($a),*),
            7 => $f::<7>($($a),*),
            8 => $f::<8>($($a),*),
            9 => $f::<9>($($a),*),
            10 => $f::<10>($($a),*),
            11 => $f::<11>($($a),*),
            12 => $f::<12>($($a),*),
            13 => $f::<13>($($a),*),
            14 => $f::<14>($($a),*),
            15 => $f::<15>($($a),*),
            _ => $f::<16>($($a),*),
        }
    };
}

/// How a `[keys, heads, dim]`-like operand is read: its shape and the element strides of the
/// key, head and channel axes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Operand {
    pub shape: TVec<usize>,
    pub strides: [isize; 3],
}

/// The attention over `keys` keys of `tokens` queries per head, the queries and output
/// channels-first (tokens contiguous).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FewKeysAttention {
    pub kernel: Kernel,
    pub heads: usize,
    pub keys: usize,
    pub tokens: usize,
    /// Channels per head of q and k, and of v.
    pub dim: usize,
    pub dim_v: usize,
    /// The scale on the scores, as bits (ops are compared for equality).
    pub scale: u32,
    /// q: its shape and the strides of its head and channel axes (tokens stride 1).
    pub q_shape: TVec<usize>,
    pub q_strides: [isize; 2],
    pub k: Operand,
    pub v: Operand,
    /// The output: its shape and the strides of its head and channel axes (tokens stride 1).
    pub out_shape: TVec<usize>,
    pub out_strides: [isize; 2],
}

/// One head's keys and values, copied out (`keys x dim` and `keys x dim_v`, row-major).
struct Head<'a> {
    k: &'a [f32],
    v: &'a [f32],
    keys: usize,
    dim: usize,
    dim_v: usize,
    scale: f32,
}

impl FewKeysAttention {
    /// Whether sizes are within the op's limits.
    pub fn fits(keys: usize, dim: usize, dim_v: usize) -> bool {
        (1..=MAX_KEYS).contains(&keys)
            && (1..=MAX_DIM).contains(&dim)
            && (1..=MAX_DIM).contains(&dim_v)
    }

    /// Queries `range` of head `h`.
    ///
    /// # Safety
    /// `q` and `out` address tensors of the op's shapes; no one else writes this range of `out`.
    unsafe fn run(
        &self,
        (q, out): (*const f32, *mut f32),
        head: &Head,
        h: usize,
        range: std::ops::Range<usize>,
    ) {
        let q = q.wrapping_offset(h as isize * self.q_strides[0]);
        let out = out.wrapping_offset(h as isize * self.out_strides[0]);
        let (qs, os) = (self.q_strides[1], self.out_strides[1]);
        let mut j = range.start;
        // SAFETY: caller's contract; every block stays inside `range`.
        unsafe {
            match kernel_has_fma(self.kernel) {
                #[cfg(target_arch = "x86_64")]
                Some(Kernel::Avx2) => {
                    while j + 8 <= range.end {
                        by_keys!(head.keys, block_avx2(q.add(j), qs, head, out.add(j), os));
                        j += 8;
                    }
                }
                #[cfg(target_arch = "aarch64")]
                Some(Kernel::Neon) => {
                    while j + 4 <= range.end {
                        by_keys!(head.keys, block_neon(q.add(j), qs, head, out.add(j), os));
                        j += 4;
                    }
                }
                _ => {}
            }
            while j < range.end {
                query_scalar(q.add(j), qs, head, out.add(j), os);
                j += 1;
            }
        }
    }
}

/// One query (scalar): the same operations as a lane of the vector blocks.
///
/// # Safety
/// `q` addresses the query's `dim` channels `qs` apart, `out` its `dim_v` outputs `os` apart.
unsafe fn query_scalar(q: *const f32, qs: isize, hd: &Head, out: *mut f32, os: isize) {
    let mut s = [0f32; MAX_KEYS];
    let s = &mut s[..hd.keys];
    for d in 0..hd.dim {
        // SAFETY: caller's contract.
        let x = unsafe { *q.offset(d as isize * qs) };
        for (t, st) in s.iter_mut().enumerate() {
            *st = x.mul_add(hd.k[t * hd.dim + d], *st);
        }
    }
    let mut mx = s[0] * hd.scale;
    for st in s.iter_mut() {
        *st *= hd.scale;
        mx = if *st > mx { *st } else { mx };
    }
    let mut sum = 0f32;
    for st in s.iter_mut() {
        *st = exp_fma(*st - mx);
        sum += *st;
    }
    let inv = 1.0 / sum;
    for e in 0..hd.dim_v {
        let mut acc = 0f32;
        for (t, st) in s.iter().enumerate() {
            acc = st.mul_add(hd.v[t * hd.dim_v + e], acc);
        }
        // SAFETY: caller's contract.
        unsafe { *out.offset(e as isize * os) = acc * inv };
    }
}

/// 8 queries (lanes), AVX2+FMA, over `T` keys (the scores stay in registers).
///
/// # Safety
/// As [`query_scalar`], for 8 consecutive queries; `hd.keys == T`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_avx2<const T: usize>(
    q: *const f32,
    qs: isize,
    hd: &Head,
    out: *mut f32,
    os: isize,
) {
    use crate::attention::exp8_avx2;
    use std::arch::x86_64::*;
    let (k, v) = (hd.k.as_ptr(), hd.v.as_ptr());
    let mut s = [_mm256_setzero_ps(); T];
    // SAFETY (all blocks below): caller's contract; k and v hold T rows of dim and dim_v.
    for d in 0..hd.dim {
        let x = unsafe { _mm256_loadu_ps(q.offset(d as isize * qs)) };
        for (t, st) in s.iter_mut().enumerate() {
            let w = unsafe { *k.add(t * hd.dim + d) };
            *st = _mm256_fmadd_ps(x, _mm256_set1_ps(w), *st);
        }
    }
    let scale = _mm256_set1_ps(hd.scale);
    let mut mx = _mm256_mul_ps(s[0], scale);
    for st in s.iter_mut() {
        *st = _mm256_mul_ps(*st, scale);
        // max_ps(a, b) is `a > b ? a : b`, the scalar path's comparison.
        mx = _mm256_max_ps(*st, mx);
    }
    let mut sum = _mm256_setzero_ps();
    for st in s.iter_mut() {
        *st = exp8_avx2(_mm256_sub_ps(*st, mx));
        sum = _mm256_add_ps(sum, *st);
    }
    let inv = _mm256_div_ps(_mm256_set1_ps(1.0), sum);
    for e in 0..hd.dim_v {
        let mut acc = _mm256_setzero_ps();
        for (t, st) in s.iter().enumerate() {
            let w = unsafe { *v.add(t * hd.dim_v + e) };
            acc = _mm256_fmadd_ps(*st, _mm256_set1_ps(w), acc);
        }
        unsafe { _mm256_storeu_ps(out.offset(e as isize * os), _mm256_mul_ps(acc, inv)) };
    }
}

/// 4 queries (lanes), NEON, over `T` keys.
///
/// # Safety
/// As [`query_scalar`], for 4 consecutive queries; `hd.keys == T`.
#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn block_neon<const T: usize>(
    q: *const f32,
    qs: isize,
    hd: &Head,
    out: *mut f32,
    os: isize,
) {
    use crate::attention::exp4_neon;
    use std::arch::aarch64::*;
    let (k, v) = (hd.k.as_ptr(), hd.v.as_ptr());
    let mut s = [vdupq_n_f32(0.0); T];
    // SAFETY (all blocks below): caller's contract; k and v hold T rows of dim and dim_v.
    for d in 0..hd.dim {
        let x = unsafe { vld1q_f32(q.offset(d as isize * qs)) };
        for (t, st) in s.iter_mut().enumerate() {
            let w = unsafe { *k.add(t * hd.dim + d) };
            *st = vfmaq_f32(*st, x, vdupq_n_f32(w));
        }
    }
    let scale = vdupq_n_f32(hd.scale);
    let mut mx = vmulq_f32(s[0], scale);
    for st in s.iter_mut() {
        *st = vmulq_f32(*st, scale);
        // `x > m ? x : m`, the scalar path's comparison (vmaxq differs only on NaN).
        mx = vbslq_f32(vcgtq_f32(*st, mx), *st, mx);
    }
    let mut sum = vdupq_n_f32(0.0);
    for st in s.iter_mut() {
        *st = exp4_neon(vsubq_f32(*st, mx));
        sum = vaddq_f32(sum, *st);
    }
    let inv = vdivq_f32(vdupq_n_f32(1.0), sum);
    for e in 0..hd.dim_v {
        let mut acc = vdupq_n_f32(0.0);
        for (t, st) in s.iter().enumerate() {
            let w = unsafe { *v.add(t * hd.dim_v + e) };
            acc = vfmaq_f32(acc, *st, vdupq_n_f32(w));
        }
        unsafe { vst1q_f32(out.offset(e as isize * os), vmulq_f32(acc, inv)) };
    }
}

/// Copies head `h` of a `[keys, heads, dim]`-like operand into `dst` (`keys x dim`).
fn gather(src: &[f32], op: &Operand, h: usize, (keys, dim): (usize, usize), dst: &mut [f32]) {
    let [st, sh, sd] = op.strides;
    for t in 0..keys {
        for d in 0..dim {
            dst[t * dim + d] = src[(t as isize * st + h as isize * sh + d as isize * sd) as usize];
        }
    }
}

impl Op for FewKeysAttention {
    fn name(&self) -> StaticName {
        "FewKeysAttention".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{} heads, {} queries over {} keys, dim {}/{}, {:?}",
            self.heads, self.tokens, self.keys, self.dim, self.dim_v, self.kernel
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for FewKeysAttention {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (q, k, v) = args_3!(inputs);
        for (x, shape, what) in [
            (&q, &self.q_shape, "q"),
            (&k, &self.k.shape, "k"),
            (&v, &self.v.shape, "v"),
        ] {
            ensure!(
                x.datum_type() == DatumType::F32 && x.shape() == &**shape,
                "FewKeysAttention: {what} is {:?} {:?}, planned for f32 {:?}",
                x.datum_type(),
                x.shape(),
                shape
            );
        }
        let (qv, kv, vv) = (
            q.try_as_plain_ram()?.as_slice::<f32>()?,
            k.try_as_plain_ram()?.as_slice::<f32>()?,
            v.try_as_plain_ram()?.as_slice::<f32>()?,
        );
        // SAFETY: every value is written below (every head, every query).
        let mut out = unsafe { Tensor::uninitialized::<f32>(&self.out_shape)? };
        let o = SharedMut(
            out.try_as_plain_ram_mut()?
                .as_slice_mut::<f32>()?
                .as_mut_ptr(),
        );
        let qp = qv.as_ptr() as usize;
        let chunks = self.tokens.div_ceil(CHUNK);
        let cost = self.heads * self.tokens * self.keys * (self.dim + self.dim_v);
        par_tasks(self.heads * chunks, cost, |task| {
            let (h, c) = (task / chunks, task % chunks);
            let mut kh = [0f32; MAX_KEYS * MAX_DIM];
            let mut vh = [0f32; MAX_KEYS * MAX_DIM];
            gather(kv, &self.k, h, (self.keys, self.dim), &mut kh);
            gather(vv, &self.v, h, (self.keys, self.dim_v), &mut vh);
            let head = Head {
                k: &kh,
                v: &vh,
                keys: self.keys,
                dim: self.dim,
                dim_v: self.dim_v,
                scale: f32::from_bits(self.scale),
            };
            let range = c * CHUNK..((c + 1) * CHUNK).min(self.tokens);
            // SAFETY: shapes checked above; task (h, c) alone writes these queries of head h.
            unsafe { self.run((qp as *const f32, o.get()), &head, h, range) };
        })?;
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for FewKeysAttention {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        for (f, shape) in inputs
            .iter()
            .zip([&self.q_shape, &self.k.shape, &self.v.shape])
        {
            ensure!(
                f.datum_type == DatumType::F32 && f.shape.as_concrete() == Some(&**shape),
                "FewKeysAttention: input fact {:?}, planned for f32 {:?}",
                f,
                shape
            );
        }
        Ok(tvec!(f32::fact(&*self.out_shape)))
    }

    fn cost(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let n = self.heads * self.tokens * self.keys * (self.dim + self.dim_v);
        Ok(tvec!((Cost::FMA(DatumType::F32), n.into())))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::f32s;
    use crate::test_values;

    /// The op on q `[heads, dim, tokens]`, k and v `[keys, heads, dim]`, out `[heads, dim_v,
    /// tokens]`, with `kernel`.
    fn run(
        kernel: Kernel,
        (heads, keys, tokens, dim, dim_v): (usize, usize, usize, usize, usize),
    ) -> Vec<f32> {
        let mut seed = (heads * 7 + keys * 5 + tokens + dim) as u64;
        let q = test_values(&mut seed, heads * dim * tokens);
        let k = test_values(&mut seed, keys * heads * dim);
        let v = test_values(&mut seed, keys * heads * dim_v);
        // Scores of a few units: a softmax far from uniform.
        let q: Vec<f32> = q.iter().map(|x| x * 8.0).collect();
        let op = FewKeysAttention {
            kernel,
            heads,
            keys,
            tokens,
            dim,
            dim_v,
            scale: 0.25f32.to_bits(),
            q_shape: tvec![heads, dim, tokens],
            q_strides: [(dim * tokens) as isize, tokens as isize],
            k: Operand {
                shape: tvec![keys, heads, dim],
                strides: [(heads * dim) as isize, dim as isize, 1],
            },
            v: Operand {
                shape: tvec![keys, heads, dim_v],
                strides: [(heads * dim_v) as isize, dim_v as isize, 1],
            },
            out_shape: tvec![heads, dim_v, tokens],
            out_strides: [(dim_v * tokens) as isize, tokens as isize],
        };
        let t = |shape: &[usize], v: &[f32]| Tensor::from_shape(shape, v).unwrap().into_tvalue();
        let inputs = tvec![
            t(&[heads, dim, tokens], &q),
            t(&[keys, heads, dim], &k),
            t(&[keys, heads, dim_v], &v)
        ];
        let mut m = TypedModel::default();
        let src: TVec<OutletId> = ["q", "k", "v"]
            .iter()
            .zip(&inputs)
            .map(|(n, x)| m.add_source(*n, f32::fact(x.shape())).unwrap())
            .collect();
        let out = m.wire_node("attention", op, &src).unwrap();
        m.select_output_outlets(&out).unwrap();
        let out = m.into_runnable().unwrap().run(inputs).unwrap();
        f32s(&out[0]).unwrap().to_vec()
    }

    #[test]
    fn every_kernel_equals_scalar_bit_for_bit() {
        // Query counts off the vector widths, 1 key, the decoder's 7, the most.
        for dims in [
            (2, 7, 45, 16, 16),
            (3, 1, 13, 8, 5),
            (1, MAX_KEYS, 21, 32, 12),
            (8, 7, 4096, 16, 16),
        ] {
            let scalar = run(Kernel::Scalar, dims);
            assert!(scalar.iter().all(|x| x.is_finite()), "{dims:?}");
            assert_eq!(run(Kernel::best(), dims), scalar, "{dims:?}");
        }
    }
}
