//! Softmax rows and a vectorised `exp` (the kernels of sonomask-ops' `RowSoftmax`, the
//! attention operators and the native mask decoder): one pass per step (max, exp-and-sum,
//! scale) over each row.
//!
//! The AVX2, AVX-512, NEON and scalar paths are bit-identical (no FMA; the sum keeps eight
//! lanes in the AVX2 order and reduces them in one fixed order; `exp` is the same sequence of
//! IEEE operations in every path), proven by tests with `==`.

use crate::{Kernel, dispatch, reduce8};

pub const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split in two (Cody-Waite) so that `x - n ln2` stays exact for the `n` used here.
pub const LN2_HI: f32 = 0.693_359_4;
pub const LN2_LO: f32 = -2.121_944_4e-4;
/// Cephes `expf` minimax polynomial for `exp(r)` on `|r| <= ln2/2`, highest power first.
pub const P: [f32; 6] = [
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
pub const X_LO: f32 = -87.33;
pub const X_HI: f32 = 88.0;

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
    #[cfg(target_arch = "x86_64")]
    if k == Kernel::Avx512 && k.usable() {
        // SAFETY: AVX-512F (with AVX2 and FMA) checked just above.
        return unsafe { exp_slice_avx512(xs) };
    }
    dispatch!(
        k,
        exp_slice_scalar(xs),
        exp_slice_avx2(xs),
        exp_slice_neon(xs)
    )
}

/// Softmax over the tokens of each of `g` interleaved groups, in place: every row of `x` is
/// `[t, g]` (the native decoder's image-to-token scores, token-major: a pixel's `T` scores of
/// each head `g` apart), and lane `h` of a row is softmaxed over its `t` tokens. Token-major
/// makes every step a vertical operation on `g` contiguous lanes (one AVX2 register for SAM's
/// 8 heads) instead of a short chain per group; each group gets the max, the sum in token
/// order and the scale of a softmax of that group alone.
pub fn softmax_interleaved(k: Kernel, x: &mut [f32], t: usize, g: usize) {
    assert!(
        t > 0 && g > 0 && x.len().is_multiple_of(t * g),
        "groups must tile the data"
    );
    #[cfg(target_arch = "x86_64")]
    if k == Kernel::Avx512 && k.usable() {
        // SAFETY: AVX-512F (with AVX2 and FMA) checked just above.
        return unsafe { interleaved_avx512(x, t, g) };
    }
    dispatch!(
        k,
        interleaved_generic::<LANES>(x, t, g, exp_slice_scalar),
        interleaved_avx2(x, t, g),
        interleaved_neon(x, t, g)
    )
}

/// Lanes of [`softmax_interleaved`] reduced together: fixed-size arrays, so that each step is
/// one AVX2 (two NEON) vector operation; a remainder of fewer lanes takes the same steps on a
/// shorter slice.
const LANES: usize = 8;

/// The steps of [`softmax_interleaved`] on lanes `l0..l0 + w` of one row, before and after the
/// row's `exp`: max and subtract, or sum and scale.
#[inline(always)]
fn interleaved_lanes<const W: usize>(row: &mut [f32], t: usize, g: usize, l0: usize, after: bool) {
    let at = |j: usize| j * g + l0..j * g + l0 + W;
    if !after {
        let mut m = [f32::NEG_INFINITY; W];
        for j in 0..t {
            let r: &[f32; W] = row[at(j)].try_into().expect("W lanes");
            for l in 0..W {
                m[l] = m[l].max(r[l]);
            }
        }
        for j in 0..t {
            let r: &mut [f32; W] = (&mut row[at(j)]).try_into().expect("W lanes");
            for l in 0..W {
                r[l] -= m[l];
            }
        }
    } else {
        let mut s = [0f32; W];
        for j in 0..t {
            let r: &[f32; W] = row[at(j)].try_into().expect("W lanes");
            for l in 0..W {
                s[l] += r[l];
            }
        }
        let inv = s.map(|s| 1.0 / s);
        for j in 0..t {
            let r: &mut [f32; W] = (&mut row[at(j)]).try_into().expect("W lanes");
            for l in 0..W {
                r[l] *= inv[l];
            }
        }
    }
}

/// [`softmax_interleaved`] with `WIDE` lanes a step first (16 on AVX-512: one register),
/// then [`LANES`], then one: every lane's operations are its own, so the grouping changes no
/// value.
#[inline(always)]
fn interleaved_generic<const WIDE: usize>(
    x: &mut [f32],
    t: usize,
    g: usize,
    exp: impl Fn(&mut [f32]),
) {
    for row in x.chunks_exact_mut(t * g) {
        for after in [false, true] {
            if after {
                exp(row);
            }
            let mut l0 = 0;
            while WIDE > LANES && l0 + WIDE <= g {
                interleaved_lanes::<WIDE>(row, t, g, l0, after);
                l0 += WIDE;
            }
            while l0 + LANES <= g {
                interleaved_lanes::<LANES>(row, t, g, l0, after);
                l0 += LANES;
            }
            while l0 < g {
                interleaved_lanes::<1>(row, t, g, l0, after);
                l0 += 1;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn interleaved_avx2(x: &mut [f32], t: usize, g: usize) {
    // SAFETY: AVX2 is this function's feature.
    interleaved_generic::<LANES>(x, t, g, |c| unsafe { exp_slice_avx2(c) })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn interleaved_avx512(x: &mut [f32], t: usize, g: usize) {
    // SAFETY: AVX-512F is this function's feature.
    interleaved_generic::<16>(x, t, g, |c| unsafe { exp_slice_avx512(c) })
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn interleaved_neon(x: &mut [f32], t: usize, g: usize) {
    // SAFETY: NEON is this function's feature.
    interleaved_generic::<LANES>(x, t, g, |c| unsafe { exp_slice_neon(c) })
}

/// The maxima of the columns of `x` (`[rows, cols]`) into `max` (a softmax down the columns:
/// the native decoder's token-to-image attention, one column per head and token).
pub fn column_max(k: Kernel, x: &[f32], cols: usize, max: &mut [f32]) {
    assert!(
        cols > 0 && x.len().is_multiple_of(cols) && max.len() == cols,
        "columns must tile the data"
    );
    max.fill(f32::NEG_INFINITY);
    dispatch!(
        k,
        column_max_generic(x, max),
        column_max_avx2(x, max),
        column_max_neon(x, max)
    )
}

#[inline(always)]
fn column_max_generic(x: &[f32], max: &mut [f32]) {
    for row in x.chunks_exact(max.len()) {
        max.iter_mut().zip(row).for_each(|(m, &v)| *m = m.max(v));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn column_max_avx2(x: &[f32], max: &mut [f32]) {
    column_max_generic(x, max)
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn column_max_neon(x: &[f32], max: &mut [f32]) {
    column_max_generic(x, max)
}

/// `x = exp(x - max[column])` in place, and the columns' sums of those into `sum` (added row
/// by row, in row order): the rest of [`column_max`]'s softmax but the scale, which the
/// decoder applies to the product of the exponentials instead.
pub fn column_exp_sums(k: Kernel, x: &mut [f32], max: &[f32], sum: &mut [f32]) {
    let cols = max.len();
    assert!(
        cols > 0 && x.len().is_multiple_of(cols) && sum.len() == cols,
        "columns must tile the data"
    );
    sum.fill(0.0);
    #[cfg(target_arch = "x86_64")]
    if k == Kernel::Avx512 && k.usable() {
        // SAFETY: AVX-512F (with AVX2 and FMA) checked just above.
        return unsafe { column_exp_sums_avx512(x, max, sum) };
    }
    dispatch!(
        k,
        column_exp_sums_generic(x, max, sum, exp_slice_scalar),
        column_exp_sums_avx2(x, max, sum),
        column_exp_sums_neon(x, max, sum)
    )
}

#[inline(always)]
fn column_exp_sums_generic(x: &mut [f32], max: &[f32], sum: &mut [f32], exp: impl Fn(&mut [f32])) {
    for row in x.chunks_exact_mut(max.len()) {
        row.iter_mut().zip(max).for_each(|(v, m)| *v -= m);
        exp(row);
        sum.iter_mut().zip(row.iter()).for_each(|(s, &v)| *s += v);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn column_exp_sums_avx2(x: &mut [f32], max: &[f32], sum: &mut [f32]) {
    // SAFETY: AVX2 is this function's feature.
    column_exp_sums_generic(x, max, sum, |r| unsafe { exp_slice_avx2(r) })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn column_exp_sums_avx512(x: &mut [f32], max: &[f32], sum: &mut [f32]) {
    // SAFETY: AVX-512F is this function's feature.
    column_exp_sums_generic(x, max, sum, |r| unsafe { exp_slice_avx512(r) })
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn column_exp_sums_neon(x: &mut [f32], max: &[f32], sum: &mut [f32]) {
    // SAFETY: NEON is this function's feature.
    column_exp_sums_generic(x, max, sum, |r| unsafe { exp_slice_neon(r) })
}

/// The maxima of the `len`-long rows of `x` into `max` (the native decoder's online softmax
/// along rows: one row per head and token, one column per pixel of a block). Eight lanes per
/// row, so no row is a chain of dependent comparisons; NaNs are skipped, as `f32::max` does.
pub fn row_maxima(k: Kernel, x: &[f32], len: usize, max: &mut [f32]) {
    assert!(
        len > 0 && x.len() == len * max.len(),
        "rows must tile the data"
    );
    dispatch!(
        k,
        row_maxima_generic(x, len, max),
        row_maxima_avx2(x, len, max),
        row_maxima_neon(x, len, max)
    )
}

#[inline(always)]
fn row_maxima_generic(x: &[f32], len: usize, max: &mut [f32]) {
    let pick = |a: f32, b: f32| if b > a { b } else { a };
    for (m, row) in max.iter_mut().zip(x.chunks_exact(len)) {
        let mut l = [f32::NEG_INFINITY; 8];
        let mut chunks = row.chunks_exact(8);
        for c in &mut chunks {
            for j in 0..8 {
                l[j] = pick(l[j], c[j]);
            }
        }
        for (j, &v) in chunks.remainder().iter().enumerate() {
            l[j] = pick(l[j], v);
        }
        *m = l.into_iter().fold(f32::NEG_INFINITY, pick);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn row_maxima_avx2(x: &[f32], len: usize, max: &mut [f32]) {
    row_maxima_generic(x, len, max)
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn row_maxima_neon(x: &[f32], len: usize, max: &mut [f32]) {
    row_maxima_generic(x, len, max)
}

/// `x = exp(x - max[row])` in place for every `len`-long row of `x`, each row's sum of those
/// into `sum` (eight lanes, element `i` into lane `i % 8`, reduced in [`reduce8`]'s order: the
/// same value on every path). [`row_maxima`]'s softmax but the scale.
pub fn row_exp_sums(k: Kernel, x: &mut [f32], len: usize, max: &[f32], sum: &mut [f32]) {
    assert!(
        len > 0 && x.len() == len * max.len() && sum.len() == max.len(),
        "rows must tile the data"
    );
    #[cfg(target_arch = "x86_64")]
    if k == Kernel::Avx512 && k.usable() {
        // SAFETY: AVX-512F (with AVX2 and FMA) checked just above.
        return unsafe { row_exp_sums_avx512(x, len, max, sum) };
    }
    dispatch!(
        k,
        row_exp_sums_generic(x, len, max, sum, exp_slice_scalar),
        row_exp_sums_avx2(x, len, max, sum),
        row_exp_sums_neon(x, len, max, sum)
    )
}

#[inline(always)]
fn row_exp_sums_generic(
    x: &mut [f32],
    len: usize,
    max: &[f32],
    sum: &mut [f32],
    exp: impl Fn(&mut [f32]),
) {
    for ((row, &m), s) in x.chunks_exact_mut(len).zip(max).zip(sum.iter_mut()) {
        row.iter_mut().for_each(|v| *v -= m);
        exp(row);
        let mut l = [0f32; 8];
        let mut chunks = row.chunks_exact(8);
        for c in &mut chunks {
            for j in 0..8 {
                l[j] += c[j];
            }
        }
        for (j, &v) in chunks.remainder().iter().enumerate() {
            l[j] += v;
        }
        *s = reduce8(&l);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn row_exp_sums_avx2(x: &mut [f32], len: usize, max: &[f32], sum: &mut [f32]) {
    // SAFETY: AVX2 is this function's feature.
    row_exp_sums_generic(x, len, max, sum, |r| unsafe { exp_slice_avx2(r) })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn row_exp_sums_avx512(x: &mut [f32], len: usize, max: &[f32], sum: &mut [f32]) {
    // SAFETY: AVX-512F is this function's feature.
    row_exp_sums_generic(x, len, max, sum, |r| unsafe { exp_slice_avx512(r) })
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn row_exp_sums_neon(x: &mut [f32], len: usize, max: &[f32], sum: &mut [f32]) {
    // SAFETY: NEON is this function's feature.
    row_exp_sums_generic(x, len, max, sum, |r| unsafe { exp_slice_neon(r) })
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
    if tail.is_empty() {
        return;
    }
    let mut t = [0f32; 8];
    t[..tail.len()].copy_from_slice(tail);
    // SAFETY: t holds 8 values.
    unsafe { _mm256_storeu_ps(t.as_mut_ptr(), exp_avx2(_mm256_loadu_ps(t.as_ptr()))) };
    let n = tail.len();
    tail.copy_from_slice(&t[..n]);
}

/// [`exp_slice_avx2`] sixteen lanes at a time: [`exp_avx512`] is the same sequence of
/// operations per lane, so the values are the same; a rest of eight or more, and the tail,
/// take the AVX2 steps.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn exp_slice_avx512(xs: &mut [f32]) {
    use std::arch::x86_64::*;
    let mut chunks = xs.chunks_exact_mut(16);
    for c in &mut chunks {
        // SAFETY: c holds 16 values.
        unsafe { _mm512_storeu_ps(c.as_mut_ptr(), exp_avx512(_mm512_loadu_ps(c.as_ptr()))) };
    }
    // SAFETY: AVX2 is among this function's features.
    unsafe { exp_slice_avx2(chunks.into_remainder()) }
}

/// [`exp_avx2`] on sixteen lanes: the same IEEE operations in the same order (no FMA; `floor`
/// as a round toward negative infinity).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn exp_avx512(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let x = _mm512_max_ps(x, _mm512_set1_ps(X_LO));
    let x = _mm512_min_ps(x, _mm512_set1_ps(X_HI));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(_mm512_add_ps(
        _mm512_mul_ps(x, _mm512_set1_ps(LOG2E)),
        _mm512_set1_ps(0.5),
    ));
    let r = _mm512_sub_ps(x, _mm512_mul_ps(n, _mm512_set1_ps(LN2_HI)));
    let r = _mm512_sub_ps(r, _mm512_mul_ps(n, _mm512_set1_ps(LN2_LO)));
    let mut p = _mm512_set1_ps(P[0]);
    for c in &P[1..] {
        p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(*c));
    }
    let y = _mm512_add_ps(
        _mm512_add_ps(_mm512_mul_ps(p, _mm512_mul_ps(r, r)), r),
        _mm512_set1_ps(1.0),
    );
    let e = _mm512_slli_epi32::<23>(_mm512_add_epi32(
        _mm512_cvtps_epi32(n),
        _mm512_set1_epi32(127),
    ));
    _mm512_mul_ps(y, _mm512_castsi512_ps(e))
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
    if tail.is_empty() {
        return;
    }
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
    // The scalar comparisons exactly, NaN included (it becomes X_LO, as with x86's
    // `max_ps(x, lo)`; `vmaxq` would keep it).
    let (lo, hi) = (vdupq_n_f32(X_LO), vdupq_n_f32(X_HI));
    let x = vbslq_f32(vcgtq_f32(x, lo), x, lo);
    let x = vbslq_f32(vcltq_f32(x, hi), x, hi);
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn interleaved_groups_equal_one_group_at_a_time_on_every_kernel() {
        let mut seed = 11;
        // Tokens of a point (7) and a box (6), one token; lanes around the 16 reduced
        // together; several rows.
        for t in [1, 6, 7] {
            for g in [1, 8, 15, 16, 17, 40] {
                let x = rand_row(&mut seed, 3 * t * g, 40.0);
                // The definition: each (row, lane) group gathered, softmaxed alone.
                let mut want = x.clone();
                for row in want.chunks_exact_mut(t * g) {
                    for h in 0..g {
                        let m = (0..t).fold(f32::NEG_INFINITY, |m, j| m.max(row[j * g + h]));
                        (0..t).for_each(|j| row[j * g + h] = exp_scalar(row[j * g + h] - m));
                        let inv = 1.0 / (0..t).map(|j| row[j * g + h]).sum::<f32>();
                        (0..t).for_each(|j| row[j * g + h] *= inv);
                    }
                }
                for k in Kernel::available() {
                    let mut got = x.clone();
                    softmax_interleaved(k, &mut got, t, g);
                    assert_eq!(got, want, "{k:?} t {t} lanes {g}");
                }
            }
        }
    }

    #[test]
    fn row_softmax_parts_equal_the_definition_on_every_kernel() {
        let mut seed = 17;
        for (rows, len) in [(1, 1), (3, 7), (56, 48), (5, 8), (4, 37), (2, 70)] {
            let mut x = rand_row(&mut seed, rows * len, 60.0);
            if rows * len > 4 {
                // NaNs are skipped by the maxima, as f32::max does
                x[3] = f32::NAN;
            }
            let want_max: Vec<f32> = x
                .chunks_exact(len)
                .map(|r| r.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)))
                .collect();
            let mut want = x.clone();
            let mut want_sum = vec![0f32; rows];
            for (r, row) in want.chunks_exact_mut(len).enumerate() {
                let mut l = [0f32; 8];
                for (i, v) in row.iter_mut().enumerate() {
                    *v = exp_scalar(*v - want_max[r]);
                    l[i % 8] += *v;
                }
                want_sum[r] = reduce8(&l);
            }
            let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
            for k in Kernel::available() {
                let (mut max, mut sum, mut got) = (vec![0f32; rows], vec![1f32; rows], x.clone());
                row_maxima(k, &got, len, &mut max);
                assert_eq!(max, want_max, "{k:?} {rows}x{len}");
                row_exp_sums(k, &mut got, len, &max, &mut sum);
                assert_eq!(bits(&got), bits(&want), "{k:?} {rows}x{len}");
                assert_eq!(bits(&sum), bits(&want_sum), "{k:?} {rows}x{len}");
            }
        }
    }

    #[test]
    fn column_softmax_parts_equal_the_definition_on_every_kernel() {
        let mut seed = 13;
        for (rows, cols) in [(1, 1), (5, 8), (33, 56), (70, 13)] {
            let x = rand_row(&mut seed, rows * cols, 60.0);
            let mut want_max = vec![f32::NEG_INFINITY; cols];
            for (i, &v) in x.iter().enumerate() {
                want_max[i % cols] = want_max[i % cols].max(v);
            }
            let mut want = x.clone();
            let mut want_sum = vec![0f32; cols];
            for (i, v) in want.iter_mut().enumerate() {
                *v = exp_scalar(*v - want_max[i % cols]);
                want_sum[i % cols] += *v;
            }
            for k in Kernel::available() {
                let (mut max, mut sum, mut got) = (vec![0f32; cols], vec![1f32; cols], x.clone());
                column_max(k, &got, cols, &mut max);
                assert_eq!(max, want_max, "{k:?} {rows}x{cols}");
                column_exp_sums(k, &mut got, &max, &mut sum);
                assert_eq!(got, want, "{k:?} {rows}x{cols}");
                assert_eq!(sum, want_sum, "{k:?} {rows}x{cols}");
            }
        }
    }
}
