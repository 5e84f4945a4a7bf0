//! Attention `softmax(alpha Q.K^T + bias) . V` for every (window, head) in one op: the two
//! [`Gemm`]s of an attention (scores with the scale, bias and softmax folded in, then the
//! product with V) fused, the scores of one window and head kept in a per-thread scratch block
//! instead of a tensor.
//!
//! Why: TinyViT's windowed attention is many tiny products (49 x 32 x 49 per window and head in
//! stages 1 and 3, 196 x 32 x 196 in stage 2). Through a packed sgemm per window and head they
//! ran at 12-40 GFLOP/s in the encoder (the packing and partial-tile paths of a BLIS kernel
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
use crate::pointwise::kernel_has_fma;
use crate::softmax::{LN2_HI, LN2_LO, LOG2E, P, X_HI, X_LO};
use sonomask_kernels::{Kernel, dispatch, reduce8};

/// Most rows per register block.
const MR: usize = 6;
/// Most 8-lane column vectors per register block (6 x 2 accumulators, 2 loads and a broadcast:
/// 15 of AVX2's 16 registers; a 4 x 3 block spilled an accumulator).
const NV: usize = 2;
/// Most keys (columns of the scores) fused: a longer row of scores leaves L1, and K^T packed per
/// head leaves L2 (the decoder's token-to-image attention, 7 queries over 4096 keys, ran 1.6 ms
/// fused against 1.2 ms as two products).
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

/// Prefetches `rows` runs of `len` contiguous floats, `stride` apart, from `p` on (a hint: the
/// addresses are not read).
fn prefetch_rows(p: *const f32, rows: usize, stride: isize, len: usize) {
    #[cfg(target_arch = "x86_64")]
    for i in 0..rows as isize {
        let row = p.wrapping_offset(i * stride);
        for j in (0..len).step_by(16).chain(std::iter::once(len - 1)) {
            // SAFETY: a prefetch does not fault; the address is only computed.
            unsafe {
                use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
                _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(j) as *const i8);
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, rows, stride, len);
}

/// K^T (`k` rows of the scores' `n` columns, `kt`'s rows whole vectors wide) from K at `kb`,
/// its element `(p, j)` at `p rsb + j csb`, zero-padded; 8 columns at a time, so that the 8
/// rows of K read stay in L1 (one column of K^T at a time made a pass over all of K per row of
/// K^T). Where K's rows are contiguous, AVX2 transposes 8 x 8 tiles in registers. A copy: every
/// path gives the same values.
///
/// # Safety
/// `kb` addresses K of `k x n` elements with these strides; `kt` holds `k` rows.
unsafe fn pack_kt(
    kernel: Kernel,
    kb: *const f32,
    (rsb, csb): (isize, isize),
    (k, n): (usize, usize),
    kt: &mut [f32],
) {
    let npad = n.next_multiple_of(8);
    #[allow(unused_mut)]
    let mut j0 = 0;
    #[cfg(target_arch = "x86_64")]
    if kernel.x86().is_some() && kernel.usable() && rsb == 1 && k.is_multiple_of(8) {
        while j0 + 8 <= n {
            for p0 in (0..k).step_by(8) {
                // SAFETY: rows j0..j0 + 8 of K hold columns p0..p0 + 8; kt rows p0..p0 + 8
                // hold columns j0..j0 + 8.
                unsafe {
                    transpose8_avx2(
                        kb.offset(j0 as isize * csb + p0 as isize),
                        csb,
                        kt.as_mut_ptr().add(p0 * npad + j0),
                        npad,
                    )
                };
            }
            j0 += 8;
        }
    }
    let _ = kernel;
    for j0 in (j0..npad).step_by(8) {
        let cols = 8.min(n.saturating_sub(j0));
        for (p, row) in kt.chunks_exact_mut(npad).take(k).enumerate() {
            let src = kb.wrapping_offset(p as isize * rsb + j0 as isize * csb);
            let dst = &mut row[j0..j0 + 8];
            for (j, x) in dst[..cols].iter_mut().enumerate() {
                // SAFETY: element (p, j0 + j) of K, j0 + j < n.
                *x = unsafe { *src.offset(j as isize * csb) };
            }
            dst[cols..].fill(0.0);
        }
    }
}

/// The 8 x 8 tile at `src` (rows `rs` apart) transposed into `dst` (rows `rd` apart).
///
/// # Safety
/// Both address 8 rows of 8 floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn transpose8_avx2(src: *const f32, rs: isize, dst: *mut f32, rd: usize) {
    use std::arch::x86_64::*;
    // SAFETY: caller's contract.
    unsafe {
        let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(src.offset(i as isize * rs)));
        let t = [
            _mm256_unpacklo_ps(r[0], r[1]),
            _mm256_unpackhi_ps(r[0], r[1]),
            _mm256_unpacklo_ps(r[2], r[3]),
            _mm256_unpackhi_ps(r[2], r[3]),
            _mm256_unpacklo_ps(r[4], r[5]),
            _mm256_unpackhi_ps(r[4], r[5]),
            _mm256_unpacklo_ps(r[6], r[7]),
            _mm256_unpackhi_ps(r[6], r[7]),
        ];
        let u = [
            _mm256_shuffle_ps::<0x44>(t[0], t[2]),
            _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
            _mm256_shuffle_ps::<0x44>(t[1], t[3]),
            _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
            _mm256_shuffle_ps::<0x44>(t[4], t[6]),
            _mm256_shuffle_ps::<0xEE>(t[4], t[6]),
            _mm256_shuffle_ps::<0x44>(t[5], t[7]),
            _mm256_shuffle_ps::<0xEE>(t[5], t[7]),
        ];
        for i in 0..4 {
            _mm256_storeu_ps(
                dst.add(i * rd),
                _mm256_permute2f128_ps::<0x20>(u[i], u[i + 4]),
            );
            _mm256_storeu_ps(
                dst.add((i + 4) * rd),
                _mm256_permute2f128_ps::<0x31>(u[i], u[i + 4]),
            );
        }
    }
}

/// Floats of scratch one window and head needs: the scores (columns rounded up to 8), K^T
/// packed as wide, 8 lanes of running maximum and one `1 / sum` per row.
fn scratch_len(m: usize, k: usize, n: usize) -> usize {
    (m + k) * n.next_multiple_of(8) + 9 * m
}

/// Each of the `npad`-wide rows of `sc` replaced by `exp(x - max)`, where `max` is the
/// greatest of its row's 8 lanes in `maxima`, and `1 / sum` of the row into `inv`.
fn exponentials(kernel: Kernel, sc: &mut [f32], npad: usize, maxima: &[f32], inv: &mut [f32]) {
    dispatch!(
        kernel,
        exponentials_scalar(sc, npad, maxima, inv),
        exponentials_avx2(sc, npad, maxima, inv),
        exponentials_neon(sc, npad, maxima, inv)
    )
}

/// The greatest of 8 lanes, taken in lane order (every path alike).
fn lanes_max(l: &[f32]) -> f32 {
    l[1..8].iter().fold(l[0], |m, &x| if x > m { x } else { m })
}

/// `exp(x)` as [`softmax`](crate::softmax)'s (same range reduction and polynomial, ~2 ulp), by
/// fused multiply-adds: a shorter dependency chain than its multiply-then-add, the same
/// operations as [`exp8_avx2`] and [`exp4_neon`].
#[inline]
pub(super) fn exp_fma(x: f32) -> f32 {
    let x = if x > X_LO { x } else { X_LO };
    let x = if x < X_HI { x } else { X_HI };
    let n = x.mul_add(LOG2E, 0.5).floor();
    let r = n.mul_add(-LN2_HI, x);
    let r = n.mul_add(-LN2_LO, r);
    let mut p = P[0];
    for c in &P[1..] {
        p = p.mul_add(r, *c);
    }
    let y = p.mul_add(r * r, r) + 1.0;
    y * f32::from_bits(((n as i32 + 127) << 23) as u32)
}

fn exponentials_scalar(sc: &mut [f32], npad: usize, maxima: &[f32], inv: &mut [f32]) {
    for ((row, mx), inv) in sc
        .chunks_exact_mut(npad)
        .zip(maxima.chunks_exact(8))
        .zip(inv)
    {
        let mx = lanes_max(mx);
        let mut acc = [0f32; 8];
        for c in row.chunks_exact_mut(8) {
            for (x, a) in c.iter_mut().zip(&mut acc) {
                *x = exp_fma(*x - mx);
                *a += *x;
            }
        }
        *inv = 1.0 / reduce8(&acc);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(super) fn exp8_avx2(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let x = _mm256_max_ps(x, _mm256_set1_ps(X_LO));
    let x = _mm256_min_ps(x, _mm256_set1_ps(X_HI));
    let n = _mm256_floor_ps(_mm256_fmadd_ps(
        x,
        _mm256_set1_ps(LOG2E),
        _mm256_set1_ps(0.5),
    ));
    let r = _mm256_fmadd_ps(n, _mm256_set1_ps(-LN2_HI), x);
    let r = _mm256_fmadd_ps(n, _mm256_set1_ps(-LN2_LO), r);
    let mut p = _mm256_set1_ps(P[0]);
    for c in &P[1..] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(*c));
    }
    let y = _mm256_add_ps(
        _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r),
        _mm256_set1_ps(1.0),
    );
    let e = _mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)),
        23,
    );
    _mm256_mul_ps(y, _mm256_castsi256_ps(e))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exponentials_avx2(sc: &mut [f32], npad: usize, maxima: &[f32], inv: &mut [f32]) {
    use std::arch::x86_64::*;
    for ((row, mx), inv) in sc
        .chunks_exact_mut(npad)
        .zip(maxima.chunks_exact(8))
        .zip(inv)
    {
        let mx = _mm256_set1_ps(lanes_max(mx));
        let mut acc = _mm256_setzero_ps();
        for c in row.chunks_exact_mut(8) {
            // SAFETY: c holds 8 values.
            unsafe {
                let e = exp8_avx2(_mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), mx));
                _mm256_storeu_ps(c.as_mut_ptr(), e);
                acc = _mm256_add_ps(acc, e);
            }
        }
        let mut l = [0f32; 8];
        // SAFETY: l holds 8 values.
        unsafe { _mm256_storeu_ps(l.as_mut_ptr(), acc) };
        *inv = 1.0 / reduce8(&l);
    }
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
pub(super) fn exp4_neon(x: std::arch::aarch64::float32x4_t) -> std::arch::aarch64::float32x4_t {
    use std::arch::aarch64::*;
    // vmaxq/vminq equal the scalar comparisons for the finite values softmax sees.
    let x = vmaxq_f32(x, vdupq_n_f32(X_LO));
    let x = vminq_f32(x, vdupq_n_f32(X_HI));
    let n = vrndmq_f32(vfmaq_f32(vdupq_n_f32(0.5), x, vdupq_n_f32(LOG2E)));
    let r = vfmaq_f32(x, n, vdupq_n_f32(-LN2_HI));
    let r = vfmaq_f32(r, n, vdupq_n_f32(-LN2_LO));
    let mut p = vdupq_n_f32(P[0]);
    for c in &P[1..] {
        p = vfmaq_f32(vdupq_n_f32(*c), p, r);
    }
    let y = vaddq_f32(vfmaq_f32(r, p, vmulq_f32(r, r)), vdupq_n_f32(1.0));
    let e = vshlq_n_s32::<23>(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)));
    vmulq_f32(y, vreinterpretq_f32_s32(e))
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn exponentials_neon(sc: &mut [f32], npad: usize, maxima: &[f32], inv: &mut [f32]) {
    use std::arch::aarch64::*;
    for ((row, mx), inv) in sc
        .chunks_exact_mut(npad)
        .zip(maxima.chunks_exact(8))
        .zip(inv)
    {
        let mx = vdupq_n_f32(lanes_max(mx));
        let mut acc = [vdupq_n_f32(0.0); 2];
        for c in row.chunks_exact_mut(8) {
            // SAFETY: c holds 8 values.
            unsafe {
                for (h, acc) in acc.iter_mut().enumerate() {
                    let p = c.as_mut_ptr().add(4 * h);
                    let e = exp4_neon(vsubq_f32(vld1q_f32(p), mx));
                    vst1q_f32(p, e);
                    *acc = vaddq_f32(*acc, e);
                }
            }
        }
        let mut l = [0f32; 8];
        // SAFETY: l holds 8 values.
        unsafe {
            vst1q_f32(l.as_mut_ptr(), acc[0]);
            vst1q_f32(l.as_mut_ptr().add(4), acc[1]);
        }
        *inv = 1.0 / reduce8(&l);
    }
}

/// What a register block does with its sums before storing them.
#[derive(Clone, Copy)]
enum Epilogue {
    /// The attention's scores: `sum * alpha + bias` (the bias laid out like C), and each row's
    /// 8-lane running maximum updated in `max` (8 values per row).
    Scores {
        alpha: f32,
        bias: *const f32,
        max: *mut f32,
    },
    /// Each row multiplied by its `scale` (the softmax's `1 / sum`).
    Scale(*const f32),
}

impl Epilogue {
    /// The epilogue of the block whose first row is `i0`, first column `j0` (C's row stride
    /// `rsc`).
    fn at(self, i0: usize, j0: usize, rsc: isize) -> Self {
        match self {
            Epilogue::Scores { alpha, bias, max } => Epilogue::Scores {
                alpha,
                bias: bias.wrapping_offset(i0 as isize * rsc).wrapping_add(j0),
                max: max.wrapping_add(8 * i0),
            },
            Epilogue::Scale(s) => Epilogue::Scale(s.wrapping_add(i0)),
        }
    }
}

/// `C = epilogue(A . B)` for `m` rows of `vectors` 8-lane column vectors: A read element by
/// element (`(pointer, row stride, column stride)`), B's `k` rows and C's `m` rows contiguous
/// over those columns (`(pointer, row stride)`).
///
/// # Safety
/// The pointers and strides address valid matrices of these sizes, and the epilogue's
/// pointers `m` rows of its values.
#[allow(clippy::too_many_arguments)]
unsafe fn product(
    kernel: Kernel,
    (a, rsa, csa): (*const f32, isize, isize),
    m: usize,
    (b, rsb): (*const f32, isize),
    k: usize,
    (c, rsc): (*mut f32, isize),
    vectors: usize,
    epilogue: Epilogue,
) {
    let fma = kernel_has_fma(kernel);
    for i0 in (0..m).step_by(MR) {
        let rows = MR.min(m - i0);
        let a_rows = std::array::from_fn(|r| a.wrapping_offset((i0 + r) as isize * rsa));
        let mut v0 = 0;
        while v0 < vectors {
            let nv = NV.min(vectors - v0);
            let t = Block {
                a: a_rows,
                csa,
                b: b.wrapping_add(8 * v0),
                rsb,
                k,
                c: c.wrapping_offset(i0 as isize * rsc).wrapping_add(8 * v0),
                rsc,
                rows,
                epilogue: epilogue.at(i0, 8 * v0, rsc),
            };
            // SAFETY: caller's contract; the block lies inside A, B and C.
            unsafe {
                match nv {
                    1 => block_of::<1>(fma, &t),
                    _ => block_of::<NV>(fma, &t),
                }
            }
            v0 += nv;
        }
    }
}

/// One register block: `rows` (at most [`MR`]) rows of A and C, `V` column vectors of B and C.
struct Block {
    a: [*const f32; MR],
    csa: isize,
    b: *const f32,
    rsb: isize,
    k: usize,
    c: *mut f32,
    rsc: isize,
    rows: usize,
    epilogue: Epilogue,
}

/// [`block`] for `t.rows` rows (the last row block of a product may be short).
///
/// # Safety
/// See [`block`].
unsafe fn block_of<const V: usize>(fma: Option<Kernel>, t: &Block) {
    // SAFETY: caller's contract.
    unsafe {
        match t.rows {
            6 => block::<6, V>(fma, t),
            5 => block::<5, V>(fma, t),
            4 => block::<4, V>(fma, t),
            3 => block::<3, V>(fma, t),
            2 => block::<2, V>(fma, t),
            _ => block::<1, V>(fma, t),
        }
    }
}

/// # Safety
/// `t` addresses `k` elements of each of its `R` A rows, `k` rows of `8 V` values of B, `R`
/// rows of `8 V` values of C (and of the epilogue's bias), `R` rows of the epilogue's maxima
/// or scales.
unsafe fn block<const R: usize, const V: usize>(fma: Option<Kernel>, t: &Block) {
    // SAFETY: caller's contract; each path only runs where its features were detected.
    unsafe {
        match fma {
            #[cfg(target_arch = "x86_64")]
            Some(Kernel::Avx2) => block_avx2::<R, V>(t),
            #[cfg(target_arch = "aarch64")]
            Some(Kernel::Neon) => block_neon::<R, V>(t),
            _ => block_scalar::<R, V>(t),
        }
    }
}

/// # Safety
/// See [`block`].
unsafe fn block_scalar<const R: usize, const V: usize>(t: &Block) {
    let mut acc = [[[0f32; 8]; V]; R];
    for p in 0..t.k as isize {
        // SAFETY: caller's contract.
        unsafe {
            let bp = t.b.offset(p * t.rsb);
            for (r, acc) in acc.iter_mut().enumerate() {
                let w = *t.a[r].offset(p * t.csa);
                for (v, lanes) in acc.iter_mut().enumerate() {
                    for (l, x) in lanes.iter_mut().enumerate() {
                        *x = w.mul_add(*bp.add(8 * v + l), *x);
                    }
                }
            }
        }
    }
    for (r, acc) in acc.iter_mut().enumerate() {
        // SAFETY (whole loop): caller's contract.
        match t.epilogue {
            Epilogue::Scores { alpha, bias, max } => {
                let mx = unsafe { std::slice::from_raw_parts_mut(max.add(8 * r), 8) };
                for (v, lanes) in acc.iter_mut().enumerate() {
                    let b = unsafe { bias.offset(r as isize * t.rsc).add(8 * v) };
                    for (l, x) in lanes.iter_mut().enumerate() {
                        *x = *x * alpha + unsafe { *b.add(l) };
                        mx[l] = if *x > mx[l] { *x } else { mx[l] };
                    }
                }
            }
            Epilogue::Scale(s) => {
                let s = unsafe { *s.add(r) };
                acc.iter_mut().flatten().for_each(|x| *x *= s);
            }
        }
        for (v, lanes) in acc.iter().enumerate() {
            unsafe {
                std::slice::from_raw_parts_mut(t.c.offset(r as isize * t.rsc).add(8 * v), 8)
                    .copy_from_slice(lanes)
            };
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_avx2<const R: usize, const V: usize>(t: &Block) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm256_setzero_ps(); V]; R];
    for p in 0..t.k as isize {
        // SAFETY: caller's contract.
        unsafe {
            let bp = t.b.offset(p * t.rsb);
            let bv: [__m256; V] = std::array::from_fn(|v| _mm256_loadu_ps(bp.add(8 * v)));
            for (r, acc) in acc.iter_mut().enumerate() {
                let w = _mm256_broadcast_ss(&*t.a[r].offset(p * t.csa));
                for (x, &b) in acc.iter_mut().zip(&bv) {
                    *x = _mm256_fmadd_ps(w, b, *x);
                }
            }
        }
    }
    for (r, acc) in acc.iter_mut().enumerate() {
        // SAFETY (whole loop): caller's contract.
        unsafe {
            match t.epilogue {
                Epilogue::Scores { alpha, bias, max } => {
                    let alpha = _mm256_set1_ps(alpha);
                    let mp = max.add(8 * r);
                    let mut mx = _mm256_loadu_ps(mp);
                    for (v, x) in acc.iter_mut().enumerate() {
                        let b = _mm256_loadu_ps(bias.offset(r as isize * t.rsc).add(8 * v));
                        *x = _mm256_add_ps(_mm256_mul_ps(*x, alpha), b);
                        // Lane-wise `if x > m { x } else { m }`, as the scalar path.
                        mx = _mm256_max_ps(mx, *x);
                    }
                    _mm256_storeu_ps(mp, mx);
                }
                Epilogue::Scale(s) => {
                    let s = _mm256_set1_ps(*s.add(r));
                    acc.iter_mut().for_each(|x| *x = _mm256_mul_ps(*x, s));
                }
            }
            for (v, x) in acc.iter().enumerate() {
                _mm256_storeu_ps(t.c.offset(r as isize * t.rsc).add(8 * v), *x);
            }
        }
    }
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn block_neon<const R: usize, const V: usize>(t: &Block) {
    use std::arch::aarch64::*;
    let mut acc = [[[vdupq_n_f32(0.0); 2]; V]; R];
    for p in 0..t.k as isize {
        // SAFETY: caller's contract.
        unsafe {
            let bp = t.b.offset(p * t.rsb);
            let bv: [[float32x4_t; 2]; V] =
                std::array::from_fn(|v| [vld1q_f32(bp.add(8 * v)), vld1q_f32(bp.add(8 * v + 4))]);
            for (r, acc) in acc.iter_mut().enumerate() {
                let w = vdupq_n_f32(*t.a[r].offset(p * t.csa));
                for (x, b) in acc.iter_mut().zip(&bv) {
                    x[0] = vfmaq_f32(x[0], w, b[0]);
                    x[1] = vfmaq_f32(x[1], w, b[1]);
                }
            }
        }
    }
    for (r, acc) in acc.iter_mut().enumerate() {
        // SAFETY (whole loop): caller's contract.
        unsafe {
            match t.epilogue {
                Epilogue::Scores { alpha, bias, max } => {
                    let alpha = vdupq_n_f32(alpha);
                    let mp = max.add(8 * r);
                    let mut mx = [vld1q_f32(mp), vld1q_f32(mp.add(4))];
                    for (v, x) in acc.iter_mut().enumerate() {
                        let b = bias.offset(r as isize * t.rsc).add(8 * v);
                        for h in 0..2 {
                            x[h] = vaddq_f32(vmulq_f32(x[h], alpha), vld1q_f32(b.add(4 * h)));
                            // `if x > m { x } else { m }`, as the scalar path.
                            mx[h] = vbslq_f32(vcgtq_f32(x[h], mx[h]), x[h], mx[h]);
                        }
                    }
                    vst1q_f32(mp, mx[0]);
                    vst1q_f32(mp.add(4), mx[1]);
                }
                Epilogue::Scale(s) => {
                    let s = vdupq_n_f32(*s.add(r));
                    acc.iter_mut().flatten().for_each(|x| *x = vmulq_f32(*x, s));
                }
            }
            for (v, x) in acc.iter().enumerate() {
                let cp = t.c.offset(r as isize * t.rsc).add(8 * v);
                vst1q_f32(cp, x[0]);
                vst1q_f32(cp.add(4), x[1]);
            }
        }
    }
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
