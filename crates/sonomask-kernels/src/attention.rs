//! The fused attention's kernels (see `sonomask_ops::Attention`): K^T packed into whole
//! 8-lane rows, the register-block product `C = epilogue(A . B)` whose epilogues fold the
//! scores' scale, bias and running maximum, or the softmax's `1 / sum`, into the stores, and the
//! per-row `exp(x - max)` pass between the two products. Pointer kernels (A is read strided in
//! place), chosen by [`Kernel`]; nothing here knows of tensors.
//!
//! Every path (AVX-512F, AVX2+FMA, NEON, scalar) does the same IEEE operations in the same order (fused
//! multiply-adds along the reduced axis, then a multiply and an add; `exp` as
//! [`softmax`](crate::softmax)'s constants by fused multiply-adds; the sums in eight lanes
//! reduced in one fixed order), so they agree bit for bit (tested with `==`).

use crate::pointwise::kernel_has_fma;
use crate::softmax::{LN2_HI, LN2_LO, LOG2E, P, X_HI, X_LO};
use crate::{Kernel, dispatch, reduce8};

/// Most rows per register block.
pub const MR: usize = 6;
/// Most 8-lane column vectors per register block (6 x 2 accumulators, 2 loads and a broadcast:
/// 15 of AVX2's 16 registers; a 4 x 3 block spilled an accumulator).
pub const NV: usize = 2;

/// Prefetches `rows` runs of `len` contiguous floats, `stride` apart, from `p` on (a hint: the
/// addresses are not read).
pub fn prefetch_rows(p: *const f32, rows: usize, stride: isize, len: usize) {
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
pub unsafe fn pack_kt(
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
                    crate::transpose::transpose8_avx2(
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

/// Each of the `npad`-wide rows of `sc` replaced by `exp(x - max)`, where `max` is the
/// greatest of its row's 8 lanes in `maxima`, and `1 / sum` of the row into `inv`.
pub fn exponentials(kernel: Kernel, sc: &mut [f32], npad: usize, maxima: &[f32], inv: &mut [f32]) {
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
pub(crate) fn exp_fma(x: f32) -> f32 {
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
pub(crate) fn exp8_avx2(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
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
pub(crate) fn exp4_neon(x: std::arch::aarch64::float32x4_t) -> std::arch::aarch64::float32x4_t {
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
pub enum Epilogue {
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
pub unsafe fn product(
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
    // Sixteen-lane blocks where the CPU has them: pairs of 8-lane vectors, the same fused
    // multiply-adds per value (a leftover vector by the 8-lane block).
    let wide = cfg!(target_arch = "x86_64") && kernel == Kernel::Avx512 && kernel.usable();
    for i0 in (0..m).step_by(MR) {
        let rows = MR.min(m - i0);
        let a_rows = std::array::from_fn(|r| a.wrapping_offset((i0 + r) as isize * rsa));
        let mut v0 = 0;
        while v0 < vectors {
            let pairs = if wide { NZ.min((vectors - v0) / 2) } else { 0 };
            let nv = if pairs > 0 {
                2 * pairs
            } else {
                NV.min(vectors - v0)
            };
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
            // SAFETY: caller's contract; the block lies inside A, B and C; the sixteen-lane
            // blocks only where AVX-512F was detected.
            unsafe {
                match (pairs, nv) {
                    #[cfg(target_arch = "x86_64")]
                    (1, _) => block512_of::<1>(&t),
                    #[cfg(target_arch = "x86_64")]
                    (2, _) => block512_of::<2>(&t),
                    #[cfg(target_arch = "x86_64")]
                    (3.., _) => block512_of::<NZ>(&t),
                    (_, 1) => block_of::<1>(fma, &t),
                    _ => block_of::<NV>(fma, &t),
                }
            }
            v0 += nv;
        }
    }
}

/// Most 16-lane column vectors per AVX-512 register block (6 x 3 accumulators, 3 loads and a
/// broadcast: 22 of its 32 registers).
const NZ: usize = 3;

/// [`block_avx512`] for `t.rows` rows.
///
/// # Safety
/// AVX-512F present; see [`block`] (with `2 Z` 8-lane vectors).
#[cfg(target_arch = "x86_64")]
unsafe fn block512_of<const Z: usize>(t: &Block) {
    // SAFETY: caller's contract.
    unsafe {
        match t.rows {
            6 => block_avx512::<6, Z>(t),
            5 => block_avx512::<5, Z>(t),
            4 => block_avx512::<4, Z>(t),
            3 => block_avx512::<3, Z>(t),
            2 => block_avx512::<2, Z>(t),
            _ => block_avx512::<1, Z>(t),
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

/// [`block_avx2`] with `Z` sixteen-lane vectors (`2 Z` of its eight-lane ones): the same
/// operations per value; each row's 8-lane running maximum takes a vector's low then high half,
/// the order of the 8-lane block's vectors.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn block_avx512<const R: usize, const Z: usize>(t: &Block) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); Z]; R];
    for p in 0..t.k as isize {
        // SAFETY: caller's contract.
        unsafe {
            let bp = t.b.offset(p * t.rsb);
            let bv: [__m512; Z] = std::array::from_fn(|z| _mm512_loadu_ps(bp.add(16 * z)));
            for (r, acc) in acc.iter_mut().enumerate() {
                let w = _mm512_set1_ps(*t.a[r].offset(p * t.csa));
                for (x, &b) in acc.iter_mut().zip(&bv) {
                    *x = _mm512_fmadd_ps(w, b, *x);
                }
            }
        }
    }
    for (r, acc) in acc.iter_mut().enumerate() {
        // SAFETY (whole loop): caller's contract.
        unsafe {
            match t.epilogue {
                Epilogue::Scores { alpha, bias, max } => {
                    let alpha = _mm512_set1_ps(alpha);
                    let mp = max.add(8 * r);
                    let mut mx = _mm256_loadu_ps(mp);
                    for (z, x) in acc.iter_mut().enumerate() {
                        let b = _mm512_loadu_ps(bias.offset(r as isize * t.rsc).add(16 * z));
                        *x = _mm512_add_ps(_mm512_mul_ps(*x, alpha), b);
                        let hi =
                            _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(*x)));
                        mx = _mm256_max_ps(mx, _mm512_castps512_ps256(*x));
                        mx = _mm256_max_ps(mx, hi);
                    }
                    _mm256_storeu_ps(mp, mx);
                }
                Epilogue::Scale(s) => {
                    let s = _mm512_set1_ps(*s.add(r));
                    acc.iter_mut().for_each(|x| *x = _mm512_mul_ps(*x, s));
                }
            }
            for (z, x) in acc.iter().enumerate() {
                _mm512_storeu_ps(t.c.offset(r as isize * t.rsc).add(16 * z), *x);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_values;

    /// One window and head through every kernel: K^T packed, the scores with scale, bias and
    /// running maxima, the exponentials, the product with V scaled by `1 / sum`. Q is read with
    /// a column stride (as the attention reads it from the qkv product), K row- or
    /// column-contiguous (the AVX2 transpose or the gather), V in place.
    fn attend(
        kernel: Kernel,
        (m, k, n, dv): (usize, usize, usize, usize),
        k_rows: bool,
    ) -> Vec<f32> {
        let mut seed = (m * 31 + k * 7 + n * 3 + dv) as u64;
        let q: Vec<f32> = test_values(&mut seed, m * k * 2)
            .iter()
            .map(|x| x * 6.0)
            .collect();
        let kk = test_values(&mut seed, k * n);
        let v = test_values(&mut seed, n * dv);
        let npad = n.next_multiple_of(8);
        let mut bias = test_values(&mut seed, m * npad);
        for row in bias.chunks_exact_mut(npad) {
            row[n..].fill(f32::NEG_INFINITY);
        }
        // K as k x n with element (p, j) at p rsb + j csb.
        let (rsb, csb) = if k_rows {
            (1, k as isize)
        } else {
            (n as isize, 1)
        };
        let kmat: Vec<f32> = (0..k * n)
            .map(|i| {
                let (p, j) = if k_rows {
                    (i % k, i / k)
                } else {
                    (i / n, i % n)
                };
                kk[p * n + j]
            })
            .collect();
        let mut kt = vec![f32::NAN; k * npad];
        let mut sc = vec![0f32; m * npad];
        let mut max = vec![f32::NEG_INFINITY; m * 8];
        let mut inv = vec![0f32; m];
        let mut out = vec![0f32; m * dv];
        // SAFETY: every pointer addresses a vector of the sizes given.
        unsafe {
            pack_kt(kernel, kmat.as_ptr(), (rsb, csb), (k, n), &mut kt);
            let epilogue = Epilogue::Scores {
                alpha: 0.3,
                bias: bias.as_ptr(),
                max: max.as_mut_ptr(),
            };
            product(
                kernel,
                (q.as_ptr(), 2 * k as isize, 2),
                m,
                (kt.as_ptr(), npad as isize),
                k,
                (sc.as_mut_ptr(), npad as isize),
                npad / 8,
                epilogue,
            );
            exponentials(kernel, &mut sc, npad, &max, &mut inv);
            product(
                kernel,
                (sc.as_ptr(), npad as isize, 1),
                m,
                (v.as_ptr(), dv as isize),
                n,
                (out.as_mut_ptr(), dv as isize),
                dv / 8,
                Epilogue::Scale(inv.as_ptr()),
            );
        }
        // Against the definition in f64 (another summation order: to 1e-5).
        for i in 0..m {
            let s: Vec<f64> = (0..n)
                .map(|j| {
                    let dot: f64 = (0..k)
                        .map(|p| q[i * 2 * k + 2 * p] as f64 * kk[p * n + j] as f64)
                        .sum();
                    dot * 0.3 + bias[i * npad + j] as f64
                })
                .collect();
            let mx = s.iter().cloned().fold(f64::MIN, f64::max);
            let e: Vec<f64> = s.iter().map(|x| (x - mx).exp()).collect();
            let sum: f64 = e.iter().sum();
            for c in 0..dv {
                let want: f64 = (0..n).map(|j| e[j] * v[j * dv + c] as f64).sum::<f64>() / sum;
                let got = out[i * dv + c] as f64;
                assert!(
                    (got - want).abs() < 1e-5,
                    "{kernel:?} ({i}, {c}): {got} vs {want}"
                );
            }
        }
        out
    }

    #[test]
    fn every_kernel_equals_scalar_bit_for_bit() {
        // Short row blocks, single and paired vectors, key counts off the vector width, K both
        // ways (the AVX2 transpose needs k a multiple of 8), TinyViT's 49 x 32 x 49.
        for dims in [
            (1, 8, 1, 8),
            (5, 16, 13, 16),
            (7, 12, 20, 24),
            (13, 32, 49, 32),
            (6, 8, 64, 8),
            // Wide rows: three-pair AVX-512 blocks, then two, then a leftover 8-lane vector.
            (9, 16, 196, 64),
            (4, 8, 100, 40),
        ] {
            for k_rows in [false, true] {
                let want = attend(Kernel::Scalar, dims, k_rows);
                for kernel in Kernel::available() {
                    assert_eq!(
                        attend(kernel, dims, k_rows),
                        want,
                        "{kernel:?} {dims:?} {k_rows}"
                    );
                }
            }
        }
    }

    #[test]
    fn exp_fma_is_accurate() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x <= 10.0 {
            let want = (x as f64).exp();
            worst = worst.max(((exp_fma(x) as f64 - want) / want).abs());
            x += 0.0113;
        }
        assert!(worst < 3.0e-7, "exp relative error {worst:e}");
    }
}
