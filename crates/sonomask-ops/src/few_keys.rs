//! Attention of many channels-first queries over a few keys, `softmax(scale q.k^T) . v` per
//! head, vectorised over the queries: SAM's image-to-token attention (4096 image tokens over 7
//! prompt tokens), its queries and output kept channels-first (see
//! [`heads_first`](crate::heads_first), which puts it in).
//!
//! Why: with 7 keys each query's scores are 7 values: taken row by row (the fused
//! [`Attention`](crate::Attention)) the register blocks are mostly padding, and the softmax a
//! pass per 7-long row (a fraction of the product rate), and its token-major output made the
//! output projection after it read a transposed operand through the sgemm (figures: docs/BENCHMARKS.md, appendix, "What each own operator replaced"). Here a lane is
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

use crate::exec::{SharedMut, par_tasks};
use sonomask_kernels::Kernel;
use sonomask_kernels::few_keys::{Head, queries};

/// Most keys: the scores of 8 queries live in `MAX_KEYS` vectors.
pub use sonomask_kernels::few_keys::MAX_KEYS;
/// Most channels per head (of q and of v): a head's keys and values are copied to the stack.
pub const MAX_DIM: usize = 64;
/// Queries per task.
const CHUNK: usize = 512;

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
        let (q, out) = (q.wrapping_add(range.start), out.wrapping_add(range.start));
        // SAFETY: caller's contract; the queries of `range` lie inside q and out.
        unsafe { queries(self.kernel, (q, qs), head, (out, os), range.len()) }
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
