//! The saliency hot loops: dot products over patch embeddings, row blends for bilinear
//! upsampling, min/max normalisation, thresholding, and masking, each with AVX2, NEON and
//! scalar paths behind [`Kernel`].
//!
//! The paths are *bit-identical*, not merely close: no FMA (a fused multiply-add rounds once,
//! the scalar code twice), and the dot product keeps eight partial sums in the AVX2 lane order
//! in every path (NEON as two 4-lane halves), reduced in one fixed order. Tests compare with
//! `==` on random inputs.

use crate::{Kernel, dispatch, reduce8};

/// `sum(a[i] * b[i])`.
pub fn dot(k: Kernel, a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot needs equal lengths");
    dispatch!(k, dot_scalar(a, b), dot_avx2(a, b), dot_neon(a, b))
}

fn dot_scalar(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len() / 8 * 8;
    let mut acc = [0f32; 8];
    for (ca, cb) in a[..n].chunks_exact(8).zip(b[..n].chunks_exact(8)) {
        for l in 0..8 {
            acc[l] += ca[l] * cb[l];
        }
    }
    let mut s = reduce8(&acc);
    for i in n..a.len() {
        s += a[i] * b[i];
    }
    s
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len() / 8 * 8;
    let mut acc = _mm256_setzero_ps();
    let mut i = 0;
    while i < n {
        // SAFETY: i + 8 <= n <= len.
        let (va, vb) = unsafe {
            (
                _mm256_loadu_ps(a.as_ptr().add(i)),
                _mm256_loadu_ps(b.as_ptr().add(i)),
            )
        };
        acc = _mm256_add_ps(acc, _mm256_mul_ps(va, vb));
        i += 8;
    }
    let mut l = [0f32; 8];
    // SAFETY: 8-float store into an 8-float array.
    unsafe { _mm256_storeu_ps(l.as_mut_ptr(), acc) };
    let mut s = reduce8(&l);
    for j in n..a.len() {
        s += a[j] * b[j];
    }
    s
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn dot_neon(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::aarch64::*;
    let n = a.len() / 8 * 8;
    let (mut lo, mut hi) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
    let mut i = 0;
    while i < n {
        // SAFETY: i + 8 <= n <= len.
        unsafe {
            lo = vaddq_f32(
                lo,
                vmulq_f32(vld1q_f32(a.as_ptr().add(i)), vld1q_f32(b.as_ptr().add(i))),
            );
            hi = vaddq_f32(
                hi,
                vmulq_f32(
                    vld1q_f32(a.as_ptr().add(i + 4)),
                    vld1q_f32(b.as_ptr().add(i + 4)),
                ),
            );
        }
        i += 8;
    }
    let mut l = [0f32; 8];
    // SAFETY: two 4-float stores into an 8-float array.
    unsafe {
        vst1q_f32(l.as_mut_ptr(), lo);
        vst1q_f32(l.as_mut_ptr().add(4), hi);
    }
    let mut s = reduce8(&l);
    for j in n..a.len() {
        s += a[j] * b[j];
    }
    s
}

/// `out[r] = dot(rows[r*d..(r+1)*d], v)` for every row: patch-text similarity.
pub fn dot_rows(k: Kernel, rows: &[f32], v: &[f32], out: &mut [f32]) {
    let d = v.len();
    assert_eq!(rows.len(), d * out.len(), "dot_rows shape");
    for (o, r) in out.iter_mut().zip(rows.chunks_exact(d)) {
        *o = dot(k, r, v);
    }
}

/// Scale every `d`-row of `rows` to unit L2 norm (rows of zeros stay zero).
pub fn l2_normalize_rows(k: Kernel, rows: &mut [f32], d: usize) {
    for r in rows.chunks_exact_mut(d) {
        let n = dot(k, r, r).sqrt();
        if n > 0.0 {
            scale(k, r, 1.0 / n, 0.0);
        }
    }
}

/// `out[i] = a[i] * wa + b[i] * wb` (the vertical step of a separable bilinear resize).
pub fn lerp_rows(k: Kernel, a: &[f32], b: &[f32], wa: f32, wb: f32, out: &mut [f32]) {
    assert!(
        a.len() == out.len() && b.len() == out.len(),
        "lerp_rows lengths"
    );
    dispatch!(
        k,
        lerp_scalar(a, b, wa, wb, out),
        lerp_avx2(a, b, wa, wb, out),
        lerp_neon(a, b, wa, wb, out)
    )
}

fn lerp_scalar(a: &[f32], b: &[f32], wa: f32, wb: f32, out: &mut [f32]) {
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        *o = x * wa + y * wb;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn lerp_avx2(a: &[f32], b: &[f32], wa: f32, wb: f32, out: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = out.len() / 8 * 8;
    let (va, vb) = (_mm256_set1_ps(wa), _mm256_set1_ps(wb));
    let mut i = 0;
    while i < n {
        // SAFETY: i + 8 <= n <= every length.
        unsafe {
            let x = _mm256_mul_ps(_mm256_loadu_ps(a.as_ptr().add(i)), va);
            let y = _mm256_mul_ps(_mm256_loadu_ps(b.as_ptr().add(i)), vb);
            _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_add_ps(x, y));
        }
        i += 8;
    }
    lerp_scalar(&a[n..], &b[n..], wa, wb, &mut out[n..]);
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn lerp_neon(a: &[f32], b: &[f32], wa: f32, wb: f32, out: &mut [f32]) {
    use std::arch::aarch64::*;
    let n = out.len() / 4 * 4;
    let mut i = 0;
    while i < n {
        // SAFETY: i + 4 <= n <= every length.
        unsafe {
            let x = vmulq_n_f32(vld1q_f32(a.as_ptr().add(i)), wa);
            let y = vmulq_n_f32(vld1q_f32(b.as_ptr().add(i)), wb);
            vst1q_f32(out.as_mut_ptr().add(i), vaddq_f32(x, y));
        }
        i += 4;
    }
    lerp_scalar(&a[n..], &b[n..], wa, wb, &mut out[n..]);
}

/// Smallest and largest value (`(inf, -inf)` for an empty slice). Inputs are finite.
pub fn min_max(k: Kernel, x: &[f32]) -> (f32, f32) {
    dispatch!(k, min_max_scalar(x), min_max_avx2(x), min_max_neon(x))
}

fn min_max_scalar(x: &[f32]) -> (f32, f32) {
    x.iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn min_max_avx2(x: &[f32]) -> (f32, f32) {
    use std::arch::x86_64::*;
    let n = x.len() / 8 * 8;
    let (mut lo, mut hi) = (
        _mm256_set1_ps(f32::INFINITY),
        _mm256_set1_ps(f32::NEG_INFINITY),
    );
    let mut i = 0;
    while i < n {
        // SAFETY: i + 8 <= n <= len.
        let v = unsafe { _mm256_loadu_ps(x.as_ptr().add(i)) };
        lo = _mm256_min_ps(lo, v);
        hi = _mm256_max_ps(hi, v);
        i += 8;
    }
    let (mut l, mut h) = ([0f32; 8], [0f32; 8]);
    // SAFETY: 8-float stores into 8-float arrays.
    unsafe {
        _mm256_storeu_ps(l.as_mut_ptr(), lo);
        _mm256_storeu_ps(h.as_mut_ptr(), hi);
    }
    let (tl, th) = min_max_scalar(&x[n..]);
    (
        l.iter().fold(tl, |a, &b| a.min(b)),
        h.iter().fold(th, |a, &b| a.max(b)),
    )
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn min_max_neon(x: &[f32]) -> (f32, f32) {
    use std::arch::aarch64::*;
    let n = x.len() / 4 * 4;
    let (mut lo, mut hi) = (vdupq_n_f32(f32::INFINITY), vdupq_n_f32(f32::NEG_INFINITY));
    let mut i = 0;
    while i < n {
        // SAFETY: i + 4 <= n <= len.
        let v = unsafe { vld1q_f32(x.as_ptr().add(i)) };
        lo = vminq_f32(lo, v);
        hi = vmaxq_f32(hi, v);
        i += 4;
    }
    let (tl, th) = min_max_scalar(&x[n..]);
    (tl.min(vminvq_f32(lo)), th.max(vmaxvq_f32(hi)))
}

/// `x[i] = (x[i] - offset) * s` in place (normalisation to [0, 1] with `s = 1/(max-min)`).
pub fn scale(k: Kernel, x: &mut [f32], s: f32, offset: f32) {
    dispatch!(
        k,
        scale_scalar(x, s, offset),
        scale_avx2(x, s, offset),
        scale_neon(x, s, offset)
    )
}

fn scale_scalar(x: &mut [f32], s: f32, offset: f32) {
    for v in x {
        *v = (*v - offset) * s;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn scale_avx2(x: &mut [f32], s: f32, offset: f32) {
    use std::arch::x86_64::*;
    let n = x.len() / 8 * 8;
    let (vs, vo) = (_mm256_set1_ps(s), _mm256_set1_ps(offset));
    let mut i = 0;
    while i < n {
        // SAFETY: i + 8 <= n <= len.
        unsafe {
            let p = x.as_mut_ptr().add(i);
            _mm256_storeu_ps(p, _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(p), vo), vs));
        }
        i += 8;
    }
    scale_scalar(&mut x[n..], s, offset);
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn scale_neon(x: &mut [f32], s: f32, offset: f32) {
    use std::arch::aarch64::*;
    let n = x.len() / 4 * 4;
    let vo = vdupq_n_f32(offset);
    let mut i = 0;
    while i < n {
        // SAFETY: i + 4 <= n <= len.
        unsafe {
            let p = x.as_mut_ptr().add(i);
            vst1q_f32(p, vmulq_n_f32(vsubq_f32(vld1q_f32(p), vo), s));
        }
        i += 4;
    }
    scale_scalar(&mut x[n..], s, offset);
}

/// Min-max normalisation to [0, 1] in place; a constant map becomes all zeros (no foreground).
pub fn normalize_01(k: Kernel, x: &mut [f32]) {
    let (lo, hi) = min_max(k, x);
    if hi > lo {
        scale(k, x, 1.0 / (hi - lo), lo);
    } else {
        x.fill(0.0);
    }
}

/// `out[i] = (x[i] >= t) as u8`: a binary mask from a saliency map.
pub fn threshold(k: Kernel, x: &[f32], t: f32, out: &mut [u8]) {
    assert_eq!(x.len(), out.len(), "threshold lengths");
    dispatch!(
        k,
        threshold_scalar(x, t, out),
        threshold_avx2(x, t, out),
        threshold_neon(x, t, out)
    )
}

fn threshold_scalar(x: &[f32], t: f32, out: &mut [u8]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = (v >= t) as u8;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn threshold_avx2(x: &[f32], t: f32, out: &mut [u8]) {
    use std::arch::x86_64::*;
    let n = x.len() / 32 * 32;
    let vt = _mm256_set1_ps(t);
    let one = _mm256_set1_epi32(1);
    // packs interleave 128-bit lanes; this permutation restores element order
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    let mut i = 0;
    while i < n {
        // SAFETY: i + 32 <= n <= both lengths; unaligned loads and store.
        unsafe {
            let m = |o: usize| {
                let c = _mm256_cmp_ps::<_CMP_GE_OQ>(_mm256_loadu_ps(x.as_ptr().add(i + o)), vt);
                _mm256_and_si256(_mm256_castps_si256(c), one)
            };
            let ab = _mm256_packs_epi32(m(0), m(8));
            let cd = _mm256_packs_epi32(m(16), m(24));
            let bytes = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(ab, cd), order);
            _mm256_storeu_si256(out.as_mut_ptr().add(i) as *mut __m256i, bytes);
        }
        i += 32;
    }
    threshold_scalar(&x[n..], t, &mut out[n..]);
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn threshold_neon(x: &[f32], t: f32, out: &mut [u8]) {
    use std::arch::aarch64::*;
    let n = x.len() / 4 * 4;
    let vt = vdupq_n_f32(t);
    let mut i = 0;
    while i < n {
        // SAFETY: i + 4 <= n <= len.
        let m = unsafe { vcgeq_f32(vld1q_f32(x.as_ptr().add(i)), vt) };
        let mut l = [0u32; 4];
        // SAFETY: 4-lane store into a 4-element array.
        unsafe { vst1q_u32(l.as_mut_ptr(), vshrq_n_u32::<31>(m)) };
        for j in 0..4 {
            out[i + j] = l[j] as u8;
        }
        i += 4;
    }
    threshold_scalar(&x[n..], t, &mut out[n..]);
}

/// `x[i] *= m[i]` (masking an image plane with a saliency map).
pub fn mul(k: Kernel, x: &mut [f32], m: &[f32]) {
    assert_eq!(x.len(), m.len(), "mul lengths");
    dispatch!(k, mul_scalar(x, m), mul_avx2(x, m), mul_neon(x, m))
}

fn mul_scalar(x: &mut [f32], m: &[f32]) {
    for (v, &w) in x.iter_mut().zip(m) {
        *v *= w;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn mul_avx2(x: &mut [f32], m: &[f32]) {
    use std::arch::x86_64::*;
    let n = x.len() / 8 * 8;
    let mut i = 0;
    while i < n {
        // SAFETY: i + 8 <= n <= both lengths.
        unsafe {
            let p = x.as_mut_ptr().add(i);
            _mm256_storeu_ps(
                p,
                _mm256_mul_ps(_mm256_loadu_ps(p), _mm256_loadu_ps(m.as_ptr().add(i))),
            );
        }
        i += 8;
    }
    mul_scalar(&mut x[n..], &m[n..]);
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn mul_neon(x: &mut [f32], m: &[f32]) {
    use std::arch::aarch64::*;
    let n = x.len() / 4 * 4;
    let mut i = 0;
    while i < n {
        // SAFETY: i + 4 <= n <= both lengths.
        unsafe {
            let p = x.as_mut_ptr().add(i);
            vst1q_f32(p, vmulq_f32(vld1q_f32(p), vld1q_f32(m.as_ptr().add(i))));
        }
        i += 4;
    }
    mul_scalar(&mut x[n..], &m[n..]);
}

/// Bilinear resize of a `sw x sh` map to `dw x dh` with half-pixel centres
/// (`align_corners=False`, as torch's `F.interpolate`). Separable: the horizontal pass runs on
/// the small source rows, the vertical pass (the `dw*dh` part) is [`lerp_rows`].
/// `tmp` holds `sh * dw` floats and is reused by the caller across frames.
#[allow(clippy::too_many_arguments)]
pub fn upsample_bilinear(
    k: Kernel,
    src: &[f32],
    sw: usize,
    sh: usize,
    dst: &mut [f32],
    dw: usize,
    dh: usize,
    tmp: &mut Vec<f32>,
) {
    assert!(
        src.len() == sw * sh && dst.len() == dw * dh && sw > 0 && sh > 0,
        "upsample shapes"
    );
    tmp.resize(sh * dw, 0.0);
    let taps = |s: usize, d: usize, i: usize| -> (usize, usize, f32) {
        let x = ((i as f32 + 0.5) * (s as f32 / d as f32) - 0.5).max(0.0);
        let x0 = (x as usize).min(s - 1);
        let x1 = (x0 + 1).min(s - 1);
        (x0, x1, x - x0 as f32)
    };
    for y in 0..sh {
        let row = &src[y * sw..(y + 1) * sw];
        let out = &mut tmp[y * dw..(y + 1) * dw];
        for (x, o) in out.iter_mut().enumerate() {
            let (x0, x1, w) = taps(sw, dw, x);
            *o = row[x0] * (1.0 - w) + row[x1] * w;
        }
    }
    for y in 0..dh {
        let (y0, y1, w) = taps(sh, dh, y);
        let (a, b) = (&tmp[y0 * dw..(y0 + 1) * dw], &tmp[y1 * dw..(y1 + 1) * dw]);
        lerp_rows(k, a, b, 1.0 - w, w, &mut dst[y * dw..(y + 1) * dw]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng(seed: u64) -> impl FnMut() -> f32 {
        let mut s = seed;
        move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }
    }

    fn vec(n: usize, seed: u64) -> Vec<f32> {
        let mut r = rng(seed);
        (0..n).map(|_| r()).collect()
    }

    /// Every kernel this CPU has gives the scalar result bit for bit, over lengths that
    /// exercise the vector body and every tail length.
    #[test]
    fn every_path_is_bit_identical_to_scalar() {
        for k in Kernel::available() {
            for n in (0..40).chain([196, 512, 1023, 50_177]) {
                let (a, b) = (vec(n, n as u64 + 1), vec(n, n as u64 + 99));
                assert_eq!(
                    dot(k, &a, &b).to_bits(),
                    dot(Kernel::Scalar, &a, &b).to_bits(),
                    "{k:?} dot {n}"
                );
                let (mut o1, mut o2) = (vec![0.0; n], vec![0.0; n]);
                lerp_rows(k, &a, &b, 0.3, 0.7, &mut o1);
                lerp_rows(Kernel::Scalar, &a, &b, 0.3, 0.7, &mut o2);
                assert_eq!(o1, o2, "{k:?} lerp {n}");
                assert_eq!(
                    min_max(k, &a),
                    min_max(Kernel::Scalar, &a),
                    "{k:?} min_max {n}"
                );
                let (mut x1, mut x2) = (a.clone(), a.clone());
                normalize_01(k, &mut x1);
                normalize_01(Kernel::Scalar, &mut x2);
                assert_eq!(x1, x2, "{k:?} normalize {n}");
                let (mut t1, mut t2) = (vec![9u8; n], vec![9u8; n]);
                threshold(k, &a, 0.1, &mut t1);
                threshold(Kernel::Scalar, &a, 0.1, &mut t2);
                assert_eq!(t1, t2, "{k:?} threshold {n}");
                let (mut m1, mut m2) = (a.clone(), a.clone());
                mul(k, &mut m1, &b);
                mul(Kernel::Scalar, &mut m2, &b);
                assert_eq!(m1, m2, "{k:?} mul {n}");
            }
            let src = vec(14 * 14, 5);
            let (mut d1, mut d2, mut tmp) =
                (vec![0.0; 561 * 471], vec![0.0; 561 * 471], Vec::new());
            upsample_bilinear(k, &src, 14, 14, &mut d1, 561, 471, &mut tmp);
            upsample_bilinear(Kernel::Scalar, &src, 14, 14, &mut d2, 561, 471, &mut tmp);
            assert_eq!(d1, d2, "{k:?} upsample");
        }
    }

    #[test]
    fn known_answers() {
        let k = Kernel::best();
        assert_eq!(dot(k, &[1.0, 2.0, 3.0], &[4.0, 5.0, 6.0]), 32.0);
        let mut x = vec![2.0, 4.0, 6.0];
        normalize_01(k, &mut x);
        assert_eq!(x, vec![0.0, 0.5, 1.0]);
        let mut c = vec![3.0; 10];
        normalize_01(k, &mut c);
        assert!(
            c.iter().all(|&v| v == 0.0),
            "a constant map has no foreground"
        );
        let mut rows = vec![3.0, 4.0, 0.0, 0.0];
        l2_normalize_rows(k, &mut rows, 2);
        assert_eq!(rows, vec![0.6, 0.8, 0.0, 0.0]);
        // 2x1 -> 4x1 with half-pixel centres: torch gives [0, 0.25, 0.75, 1]
        let (mut d, mut tmp) = (vec![0.0; 4], Vec::new());
        upsample_bilinear(k, &[0.0, 1.0], 2, 1, &mut d, 4, 1, &mut tmp);
        assert_eq!(d, vec![0.0, 0.25, 0.75, 1.0]);
    }
}
