//! Attention `softmax(alpha Q.K^T + bias) . V` for every (window, head) in one op: the two
//! [`Gemm`]s of an attention (scores with the scale, bias and softmax folded in, then the
//! product with V) fused, the scores of one window and head kept in a per-thread scratch block
//! instead of a tensor.
//!
//! Why: TinyViT's windowed attention is many tiny products (49 x 32 x 49 per window and head in
//! stages 1 and 3, 196 x 32 x 196 in stage 2). Through a packed sgemm per window and head they
//! ran at a fraction of the machine's product rate in the encoder (figures: docs/BENCHMARKS.md, appendix, "What each own operator replaced") (the packing and partial-tile paths of a BLIS kernel
//! dominate at k = 32), and the scores made a round trip through memory (the stage-1 attention
//! tensor is 14 MiB) between the two products, with a softmax pass per row in between. Here each
//! window and head is: K^T copied into a zero-padded block (k rows of whole 8-lane vectors);
//! the scores computed in 6 x 16 register blocks straight from the strided Q, scaled and biased
//! in the registers (the padding columns get a `-inf` bias) with each row's running maximum
//! kept; one pass per row for `exp(x - max)` and the sum; then the product with V read in place
//! from its strided rows by the same register blocks, each row scaled by `1 / sum` as it is
//! stored into the output.
//!
//! Every path (AVX2+FMA, NEON, scalar) does the same IEEE operations in the same order (fused
//! multiply-adds along the reduced axis, then a multiply and an add; `exp` as in
//! [`softmax`](crate::softmax); the sums in eight lanes reduced in one fixed order), so they
//! agree bit for bit (tested with `==`); against the unfused products and softmax the sums run
//! in another order (tested to 1e-5).

use std::cell::RefCell;

use tract_core::internal::*;

use crate::exec::{SharedMut, par_tasks};
use crate::gemm::Gemm;
use sonomask_kernels::Kernel;
use sonomask_kernels::attention::{Epilogue, exponentials, pack_kt, prefetch_rows, product};

/// Most keys (columns of the scores) fused: a longer row of scores leaves L1, and K^T packed per
/// head leaves L2 (the decoder's token-to-image attention, 7 queries over 4096 keys, ran slower
/// fused than as two products).
const MAX_KEYS: usize = 1024;
/// Largest per-thread scratch (scores, packed K, row maxima and sums) an op may use, in floats:
/// 4 MiB.
const MAX_SCRATCH: usize = 1 << 20;

thread_local! {
    /// Each thread's scratch, grown to the largest attention once and kept.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// A fused attention: `scores` (a [`Gemm`] with a softmax folded in) and `values` (a [`Gemm`]
/// whose A operand is exactly the scores' output).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attention {
    kernel: Kernel,
    /// The scores' product (its bias moved into `bias`).
    scores: Gemm,
    values: Gemm,
    /// The scores' bias per distinct bias block, `m` rows of `npad` values, `-inf` in the
    /// padding columns (all zeros but those without a bias).
    bias: Vec<F32s>,
    /// Which block of `bias` each batch adds.
    bias_of: Vec<usize>,
    /// Shapes of the inputs: the scores' two operands, then the tensor V is read from.
    input_shapes: [TVec<usize>; 3],
}

/// f32 values compared by their bits (ops are compared for equality).
#[derive(Debug, Clone)]
struct F32s(Vec<f32>);

impl PartialEq for F32s {
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len()
            && self
                .0
                .iter()
                .zip(&other.0)
                .all(|(a, b)| a.to_bits() == b.to_bits())
    }
}

impl Eq for F32s {}

impl Attention {
    /// The fusion of `scores` and `values` (whose A side reads the whole output of `scores`),
    /// if this op computes it: batches walked alike, V's and the output's columns contiguous
    /// in whole 8-lane vectors, at most [`MAX_KEYS`] keys and the scratch within
    /// [`MAX_SCRATCH`].
    pub fn fusing(scores: &Gemm, values: &Gemm, kernel: Kernel) -> Option<Self> {
        let a = values.swap as usize;
        let [.., (rsc, csc)] = scores.layout();
        let [(rsa2, csa2), (_, csb2), (_, csc2)] = values.layout();
        let same_batches = scores.batch.len() == values.batch.len()
            && scores
                .batch
                .iter()
                .zip(&values.batch)
                .all(|(s, v)| s.len == v.len && s.stride[2] == v.stride[a]);
        let (m, n) = (scores.m.len, scores.n.len);
        let npad = n.next_multiple_of(8);
        let ok = scores.softmax.is_some()
            && scores.direct.is_none()
            && values.softmax.is_none()
            && values.direct.is_none()
            && values.bias.is_none()
            && f32::from_bits(values.alpha.0) == 1.0
            && same_batches
            && values.offsets[a] == 0
            && values.input_shapes[a] == scores.output_shape
            && values.m.len == m
            && values.k.len == n
            && (rsa2, csa2) == (rsc, csc)
            && csb2 == 1
            && csc2 == 1
            && values.n.len.is_multiple_of(8)
            && m > 0
            && scores.k.len > 0
            && n > 0
            && n <= MAX_KEYS
            && values.n.len > 0
            && scratch_len(m, scores.k.len, n) <= MAX_SCRATCH;
        if !ok {
            return None;
        }
        // The bias blocks, padded: one per distinct offset of a batch's bias.
        let batches: usize = scores.batch.iter().map(|d| d.len).product();
        let (mut bias, mut bias_of, mut seen) = (Vec::new(), Vec::with_capacity(batches), vec![]);
        for bi in 0..batches {
            let at = scores.batch_offsets(bi)[3];
            let block = match seen.iter().position(|&o| o == at) {
                Some(b) => b,
                None => {
                    let mut block = vec![f32::NEG_INFINITY; m * npad];
                    for (i, row) in block.chunks_exact_mut(npad).enumerate() {
                        for (j, x) in row[..n].iter_mut().enumerate() {
                            *x = match &scores.bias {
                                None => 0.0,
                                Some(b) => {
                                    b.values
                                        [(at + i as isize * b.rows + j as isize * b.cols) as usize]
                                }
                            };
                        }
                    }
                    seen.push(at);
                    bias.push(F32s(block));
                    seen.len() - 1
                }
            };
            bias_of.push(block);
        }
        let mut scores = scores.clone();
        scores.bias = None;
        Some(Attention {
            kernel,
            input_shapes: [
                scores.input_shapes[0].clone(),
                scores.input_shapes[1].clone(),
                values.input_shapes[1 - a].clone(),
            ],
            scores,
            values: values.clone(),
            bias,
            bias_of,
        })
    }

    fn batches(&self) -> usize {
        self.bias_of.len()
    }

    fn fma(&self) -> usize {
        let (s, v) = (&self.scores, &self.values);
        self.batches() * s.m.len * (s.k.len * s.n.len + v.k.len * v.n.len)
    }

    /// Window-and-head `bi`: scores, softmax, product with V, into the output.
    ///
    /// # Safety
    /// `ins` address tensors of `input_shapes`, `out` one of the output shape; no other thread
    /// writes batch `bi` of the output; `scratch` holds at least [`scratch_len`] floats.
    unsafe fn batch(&self, ins: [*const f32; 3], out: *mut f32, bi: usize, scratch: &mut [f32]) {
        let (s, v) = (&self.scores, &self.values);
        let (m, k, n) = (s.m.len, s.k.len, s.n.len);
        let npad = n.next_multiple_of(8);
        let (sc, rest) = scratch.split_at_mut(m * npad);
        let (kt, rest) = rest.split_at_mut(k * npad);
        let (max, rest) = rest.split_at_mut(m * 8);
        let inv = &mut rest[..m];
        let [(rsa, csa), (rsb, csb), _] = s.layout();
        let [qa, kb, vb] = self.operands(ins, bi);
        if bi + 1 < self.batches() {
            self.prefetch(ins, bi + 1);
        }
        // SAFETY (whole body): the offsets and strides come from the two products' geometry
        // over the checked input and output shapes.
        unsafe {
            pack_kt(self.kernel, kb, (rsb, csb), (k, n), kt);
            max.fill(f32::NEG_INFINITY);
            let epilogue = Epilogue::Scores {
                alpha: f32::from_bits(s.alpha.0),
                bias: self.bias[self.bias_of[bi]].0.as_ptr(),
                max: max.as_mut_ptr(),
            };
            product(
                self.kernel,
                (qa, rsa, csa),
                m,
                (kt.as_ptr(), npad as isize),
                k,
                (sc.as_mut_ptr(), npad as isize),
                npad / 8,
                epilogue,
            );
            exponentials(self.kernel, sc, npad, max, inv);
            let [.., oc, _] = v.batch_offsets(bi);
            let [_, (rsv, _), (rsc, _)] = v.layout();
            product(
                self.kernel,
                (sc.as_ptr(), npad as isize, 1),
                m,
                (vb, rsv),
                n,
                (out.offset(oc), rsc),
                v.n.len / 8,
                Epilogue::Scale(inv.as_ptr()),
            );
        }
    }
}

impl Attention {
    /// Asks for the q, k and v rows of batch `bi` (the next one) while this one computes: they
    /// are strided rows of a tensor just written by the qkv product and mostly out of cache,
    /// and K^T's gather otherwise waited on each of its lines.
    fn prefetch(&self, ins: [*const f32; 3], bi: usize) {
        let (s, v) = (&self.scores, &self.values);
        let [(rsa, csa), (rsb, csb), _] = s.layout();
        let [_, (rsv, _), _] = v.layout();
        let [q, k, vb] = self.operands(ins, bi);
        if csa == 1 {
            prefetch_rows(q, s.m.len, rsa, s.k.len);
        }
        if rsb == 1 {
            prefetch_rows(k, s.n.len, csb, s.k.len);
        }
        prefetch_rows(vb, v.k.len, rsv, v.n.len);
    }

    /// Where batch `bi`'s Q, K and V start in the inputs (computed, not read: the addresses
    /// are valid for batches of the op).
    fn operands(&self, ins: [*const f32; 3], bi: usize) -> [*const f32; 3] {
        let (s, v) = (&self.scores, &self.values);
        let [oa, ob, ..] = s.batch_offsets(bi);
        let (qa, kb) = if s.swap {
            (ins[1], ins[0])
        } else {
            (ins[0], ins[1])
        };
        let [_, ov, ..] = v.batch_offsets(bi);
        [
            qa.wrapping_offset(oa),
            kb.wrapping_offset(ob),
            ins[2].wrapping_offset(ov),
        ]
    }
}

/// Floats of scratch one window and head needs: the scores (columns rounded up to 8), K^T
/// packed as wide, 8 lanes of running maximum and one `1 / sum` per row.
fn scratch_len(m: usize, k: usize, n: usize) -> usize {
    (m + k) * n.next_multiple_of(8) + 9 * m
}

/// The three input pointers, shared by the threads (read only).
#[derive(Clone, Copy)]
struct Inputs([*const f32; 3]);
// SAFETY: the inputs are only read.
unsafe impl Send for Inputs {}
unsafe impl Sync for Inputs {}

impl Inputs {
    /// The pointers (a method, so that closures capture the whole `Sync` wrapper).
    fn get(self) -> [*const f32; 3] {
        self.0
    }
}

impl Op for Attention {
    fn name(&self) -> StaticName {
        "Attention".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let (s, v) = (&self.scores, &self.values);
        Ok(vec![format!(
            "batch {} m {} k {} n {} then n {} alpha {} bias blocks {}",
            self.batches(),
            s.m.len,
            s.k.len,
            s.n.len,
            v.n.len,
            f32::from_bits(s.alpha.0),
            self.bias.len()
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for Attention {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(inputs.len() == 3, "Attention: {} inputs", inputs.len());
        let mut ptrs = [std::ptr::null::<f32>(); 3];
        for (i, x) in inputs.iter().enumerate() {
            ensure!(
                x.datum_type() == DatumType::F32 && x.shape() == &*self.input_shapes[i],
                "Attention: input {i} is {:?} {:?}, planned for f32 {:?}",
                x.datum_type(),
                x.shape(),
                self.input_shapes[i]
            );
            ptrs[i] = x.try_as_plain_ram()?.as_slice::<f32>()?.as_ptr();
        }
        // SAFETY: every element is written by the batches below.
        let mut output = unsafe { Tensor::uninitialized::<f32>(&self.values.output_shape)? };
        let out = SharedMut(
            output
                .try_as_plain_ram_mut()?
                .as_slice_mut::<f32>()?
                .as_mut_ptr(),
        );
        let ins = Inputs(ptrs);
        let s = &self.scores;
        let need = scratch_len(s.m.len, s.k.len, s.n.len);
        par_tasks(self.batches(), self.fma(), |bi| {
            SCRATCH.with_borrow_mut(|scratch| {
                if scratch.len() < need {
                    scratch.resize(need, 0.0);
                }
                // SAFETY: shapes checked above; each batch writes its own part of the output.
                unsafe { self.batch(ins.get(), out.get(), bi, scratch) };
            })
        })?;
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for Attention {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == 3, "Attention: {} input facts", inputs.len());
        for (i, f) in inputs.iter().enumerate() {
            ensure!(
                f.shape.as_concrete() == Some(&*self.input_shapes[i]),
                "Attention: input {i} fact {:?}, planned for {:?}",
                f.shape,
                self.input_shapes[i]
            );
        }
        Ok(tvec!(f32::fact(&*self.values.output_shape)))
    }

    fn cost(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        Ok(tvec!((Cost::FMA(DatumType::F32), self.fma().into())))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use tract_core::ops::array::Slice;
    use tract_core::ops::einsum::EinSum;
    use tract_core::ops::nn::{Softmax, SoftmaxKind};

    use super::*;
    use crate::{Replaced, max_abs_diff, run_one, substitute_decluttered, test_values};

    /// TinyViT's attention on one `[windows, tokens, heads, 3 d]` qkv tensor: q, k, v sliced
    /// out of it, `softmax(q.k^T * scale (+ bias[heads, tokens, tokens]))`, then `. v` into
    /// `[windows, tokens, heads, d]`.
    fn attention_model(qkv: &[usize], bias: Option<&Tensor>) -> TypedModel {
        let d = qkv[3] / 3;
        let mut m = TypedModel::default();
        let x = m.add_source("qkv", f32::fact(qkv)).unwrap();
        let slice = |m: &mut TypedModel, name: &str, i: usize| {
            m.wire_node(name, Slice::new(3, i * d, (i + 1) * d), &[x])
                .unwrap()[0]
        };
        let (q, k, v) = (
            slice(&mut m, "q", 0),
            slice(&mut m, "k", 1),
            slice(&mut m, "v", 2),
        );
        let einsum = |e: &str| EinSum::new(e.parse().unwrap(), DatumType::F32);
        let s = m
            .wire_node("scores", einsum("ambk,anbk->abmn"), &[q, k])
            .unwrap();
        let scale = m
            .add_const("scale", tensor0(0.3f32).broadcast_into_rank(4).unwrap())
            .unwrap();
        let mut s = m
            .wire_node("scaled", tract_core::ops::math::mul(), &[s[0], scale])
            .unwrap();
        if let Some(b) = bias {
            let b = m.add_const("bias.value", b.clone()).unwrap();
            s = m
                .wire_node("biased", tract_core::ops::math::add(), &[s[0], b])
                .unwrap();
        }
        let sm = Softmax {
            axes: tvec![3],
            quant_output_dt: None,
            kind: SoftmaxKind::Softmax,
        };
        let p = m.wire_node("softmax", sm, &s).unwrap();
        let out = m
            .wire_node("out", einsum("abmn,anbk->ambk"), &[p[0], v])
            .unwrap();
        m.select_output_outlets(&out).unwrap();
        m
    }

    /// The model through tract alone, and through our substitution with `kernel`: (stock
    /// output, ours, what was replaced).
    fn both(qkv: &[usize], with_bias: bool, kernel: Kernel) -> (Vec<f32>, Vec<f32>, Replaced) {
        let mut seed = qkv.iter().sum::<usize>() as u64;
        // Values up to +-2: scores spread over several units, a softmax far from uniform.
        let values: Vec<f32> = test_values(&mut seed, qkv.iter().product())
            .iter()
            .map(|v| v * 4.0)
            .collect();
        let x = Tensor::from_shape(qkv, &values).unwrap();
        let (t, h) = (qkv[1], qkv[2]);
        let bias = with_bias.then(|| {
            Tensor::from_shape(&[1, h, t, t], &test_values(&mut seed, h * t * t)).unwrap()
        });
        let stock = attention_model(qkv, bias.as_ref());
        let want = run_one(stock.clone().into_optimized().unwrap(), &x);
        let mut ours = stock;
        ours.declutter().unwrap();
        let done = substitute_decluttered(&mut ours, kernel).unwrap();
        ours.optimize().unwrap();
        (want, run_one(ours, &x), done)
    }

    #[test]
    fn fused_attention_matches_tract() {
        // (qkv shape, bias): TinyViT's 7x7 windows (49 tokens: row blocks of 6 and 1, 7 vectors
        // of scores: blocks of 2 and 1), odd token counts, head dims of 8 and 32.
        for (qkv, with_bias) in [
            ([3, 49, 2, 96], true),
            ([2, 13, 3, 24], true),
            ([4, 9, 1, 48], false),
            ([1, 70, 2, 24], true),
        ] {
            let (want, got, done) = both(&qkv, with_bias, Kernel::best());
            assert_eq!((done.gemm, done.attention), (2, 1), "{qkv:?} not fused");
            let diff = max_abs_diff(&want, &got);
            assert!(diff < 1e-5, "{qkv:?}: {diff:e}");
        }
    }

    #[test]
    fn every_kernel_equals_scalar_bit_for_bit() {
        for qkv in [[3, 49, 2, 96], [2, 13, 3, 24]] {
            let (_, want, _) = both(&qkv, true, Kernel::Scalar);
            for k in Kernel::available() {
                let (_, got, done) = both(&qkv, true, k);
                assert_eq!(done.attention, 1);
                assert!(got == want, "{k:?} {qkv:?} differs from the scalar path");
            }
        }
    }

    #[test]
    fn long_key_rows_stay_two_products() {
        // More keys than MAX_KEYS (the decoder's token-to-image attention has 4096): left to
        // the two products.
        let (want, got, done) = both(&[1, MAX_KEYS + 1, 1, 24], false, Kernel::best());
        assert_eq!((done.gemm, done.attention), (2, 0));
        assert!(max_abs_diff(&want, &got) < 1e-5);
    }

    #[test]
    fn head_dims_not_a_whole_vector_stay_two_products() {
        // d = 12: V's rows are not whole 8-lane vectors.
        let (want, got, done) = both(&[2, 13, 3, 36], true, Kernel::best());
        assert_eq!((done.gemm, done.attention, done.gemm_softmax), (2, 0, 1));
        assert!(max_abs_diff(&want, &got) < 1e-5);
    }
}
