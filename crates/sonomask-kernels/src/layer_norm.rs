//! Layer norm of one row, or of a block of up to [`COLS`] columns each over its rows (the
//! kernels of sonomask-ops' `AxisLayerNorm` and the native mask decoder). Every path (AVX-512
//! for rows of whole 32-lane steps, AVX2, NEON, scalar) computes the same sums in the same order
//! (tested with `==` here and in sonomask-ops).

use crate::{Kernel, dispatch, reduce8};

/// Columns normalised together on the strided path: 64 f32 sums (a few registers' worth per
/// pass), and a `len x COLS` block of at most 80 KiB for a 320-channel axis (L2-resident
/// across the three passes).
pub const COLS: usize = 64;

/// Layer norm of one row, in place (the operator's row kernel, also used by the native decoder).
pub fn layer_norm_row(k: Kernel, x: &mut [f32], eps: f32, gamma: &[f32], beta: &[f32]) {
    assert!(
        gamma.len() == x.len() && beta.len() == x.len(),
        "row parameters"
    );
    #[cfg(target_arch = "x86_64")]
    if k == Kernel::Avx512 && k.usable() && x.len().is_multiple_of(32) && !x.is_empty() {
        // SAFETY: AVX-512F (with AVX2 and FMA) checked just above; the row is whole 32-lane
        // steps and gamma, beta are as long (asserted).
        unsafe { x86::add_norm_pe(x, None, None, (eps, gamma, beta), None) };
        return;
    }
    dispatch!(
        k,
        norm_generic(x, eps, gamma, beta),
        norm_avx2(x, eps, gamma, beta),
        norm_neon(x, eps, gamma, beta)
    )
}

/// A residual row and its norm, in one pass over a row in L1 (the native decoder's image
/// tokens): `x = base + d` (`x += d` without `base`), [`layer_norm_row`] of `x`, and
/// `x_pe = x + pe` (the keys with their positional encoding, which the next attention reads)
/// where asked. Returns the norm's scale `1 / sqrt(var + eps)` (the decoder reads the first layer's keys
/// through it).
#[allow(clippy::too_many_arguments)]
pub fn add_norm_pe_row(
    k: Kernel,
    x: &mut [f32],
    base: Option<&[f32]>,
    d: &[f32],
    (eps, gamma, beta): (f32, &[f32], &[f32]),
    pe: &[f32],
    x_pe: Option<&mut [f32]>,
) -> f32 {
    let n = x.len();
    assert!(
        base.is_none_or(|b| b.len() == n)
            && d.len() == n
            && pe.len() == n
            && x_pe.as_ref().is_none_or(|x| x.len() == n)
            && gamma.len() == n
            && beta.len() == n,
        "row lengths"
    );
    #[cfg(target_arch = "x86_64")]
    if k == Kernel::Avx512 && k.usable() && n.is_multiple_of(32) && n > 0 {
        // SAFETY: AVX-512F (with AVX2 and FMA) checked just above; every slice is `n` long
        // (asserted), whole 32-lane steps.
        return unsafe {
            x86::add_norm_pe(x, base, Some(d), (eps, gamma, beta), x_pe.map(|o| (pe, o)))
        };
    }
    let o = AddNormPe {
        x,
        base,
        d,
        affine: (eps, gamma, beta),
        pe,
        x_pe,
    };
    dispatch!(
        k,
        add_norm_pe_generic(o),
        add_norm_pe_avx2(o),
        add_norm_pe_neon(o)
    )
}

/// The operands of [`add_norm_pe_row`], one value for the per-ISA wrappers to pass on.
struct AddNormPe<'a> {
    x: &'a mut [f32],
    base: Option<&'a [f32]>,
    d: &'a [f32],
    affine: (f32, &'a [f32], &'a [f32]),
    pe: &'a [f32],
    x_pe: Option<&'a mut [f32]>,
}

#[inline(always)]
fn add_norm_pe_generic(o: AddNormPe) -> f32 {
    let (eps, gamma, beta) = o.affine;
    match o.base {
        Some(b) => {
            o.x.iter_mut()
                .zip(b.iter().zip(o.d))
                .for_each(|(v, (b, d))| *v = b + d)
        }
        None => o.x.iter_mut().zip(o.d).for_each(|(v, d)| *v += d),
    }
    let inv = norm_scaled(o.x, eps, gamma, beta);
    if let Some(x_pe) = o.x_pe {
        x_pe.iter_mut()
            .zip(o.x.iter().zip(o.pe))
            .for_each(|(out, (v, p))| *out = v + p);
    }
    inv
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn add_norm_pe_avx2(o: AddNormPe) -> f32 {
    add_norm_pe_generic(o)
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn add_norm_pe_neon(o: AddNormPe) -> f32 {
    add_norm_pe_generic(o)
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

/// [`add_norm_pe_row`] and [`layer_norm_row`] on AVX-512 for rows of whole 32-lane steps: the
/// generic code's operations in its order (lanes `0..16` and `16..32` of [`lanes_sum`] in two
/// registers, reduced as it does; no FMA), sixteen lanes an instruction.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::reduce8;
    use std::arch::x86_64::*;

    /// [`lanes_sum`](super::lanes_sum)'s reduction of its 32 lanes held as `z0` (0..16), `z1`.
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma")]
    fn fold(z0: __m512, z1: __m512) -> f32 {
        let hi = |z: __m512| _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(z)));
        let l8 = _mm256_add_ps(
            _mm256_add_ps(_mm512_castps512_ps256(z0), hi(z0)),
            _mm256_add_ps(_mm512_castps512_ps256(z1), hi(z1)),
        );
        let mut a = [0f32; 8];
        // SAFETY: `a` holds 8 f32.
        unsafe { _mm256_storeu_ps(a.as_mut_ptr(), l8) };
        reduce8(&a)
    }

    /// `x = base + d` (or `x += d`, or `x` as it is without `d`), its norm in place, `x + pe`
    /// into the output where given; returns the scale.
    ///
    /// # Safety
    /// AVX-512F; `x.len()` a positive multiple of 32 and every slice as long.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn add_norm_pe(
        x: &mut [f32],
        base: Option<&[f32]>,
        d: Option<&[f32]>,
        (eps, gamma, beta): (f32, &[f32], &[f32]),
        pe: Option<(&[f32], &mut [f32])>,
    ) -> f32 {
        let n = x.len();
        let p = x.as_mut_ptr();
        let src = base.map_or(p as *const f32, |b| b.as_ptr());
        // SAFETY (every access below): 16-wide steps below `n`, every slice `n` long.
        unsafe {
            let (mut s0, mut s1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
            for i in (0..n).step_by(32) {
                let mut v = [
                    _mm512_loadu_ps(src.add(i)),
                    _mm512_loadu_ps(src.add(i + 16)),
                ];
                if let Some(d) = d {
                    for (h, v) in v.iter_mut().enumerate() {
                        *v = _mm512_add_ps(*v, _mm512_loadu_ps(d.as_ptr().add(i + 16 * h)));
                    }
                }
                _mm512_storeu_ps(p.add(i), v[0]);
                _mm512_storeu_ps(p.add(i + 16), v[1]);
                s0 = _mm512_add_ps(s0, v[0]);
                s1 = _mm512_add_ps(s1, v[1]);
            }
            let mean = fold(s0, s1) / n as f32;
            let m = _mm512_set1_ps(mean);
            let (mut s0, mut s1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
            for i in (0..n).step_by(32) {
                let c0 = _mm512_sub_ps(_mm512_loadu_ps(p.add(i)), m);
                let c1 = _mm512_sub_ps(_mm512_loadu_ps(p.add(i + 16)), m);
                s0 = _mm512_add_ps(s0, _mm512_mul_ps(c0, c0));
                s1 = _mm512_add_ps(s1, _mm512_mul_ps(c1, c1));
            }
            let var = fold(s0, s1) / n as f32;
            let inv = 1.0 / (var + eps).sqrt();
            let vi = _mm512_set1_ps(inv);
            let (g, b) = (gamma.as_ptr(), beta.as_ptr());
            let pe = pe.map(|(pe, out)| (pe.as_ptr(), out.as_mut_ptr()));
            for i in (0..n).step_by(16) {
                let c = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(p.add(i)), m), vi);
                let v = _mm512_add_ps(
                    _mm512_mul_ps(c, _mm512_loadu_ps(g.add(i))),
                    _mm512_loadu_ps(b.add(i)),
                );
                _mm512_storeu_ps(p.add(i), v);
                if let Some((pe, out)) = pe {
                    _mm512_storeu_ps(out.add(i), _mm512_add_ps(v, _mm512_loadu_ps(pe.add(i))));
                }
            }
            inv
        }
    }
}

/// Sum of `f(v)` over `x` in 32 lanes (element `i` into lane `i % 32`), reduced in one order:
/// four independent eight-lane chains, so that consecutive vector adds do not wait on each
/// other (one chain: 32 dependent adds per pass over a 256-wide row).
#[inline(always)]
fn lanes_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut l = [0f32; 32];
    let mut chunks = x.chunks_exact(32);
    for c in &mut chunks {
        for j in 0..32 {
            l[j] += f(c[j]);
        }
    }
    for (j, &v) in chunks.remainder().iter().enumerate() {
        l[j] += f(v);
    }
    let l8: [f32; 8] = std::array::from_fn(|j| (l[j] + l[j + 8]) + (l[j + 16] + l[j + 24]));
    reduce8(&l8)
}

#[inline(always)]
fn norm_generic(x: &mut [f32], eps: f32, gamma: &[f32], beta: &[f32]) {
    norm_scaled(x, eps, gamma, beta);
}

/// The norm of `x` in place; returns its scale `1 / sqrt(var + eps)` (0 for an empty row).
#[inline(always)]
fn norm_scaled(x: &mut [f32], eps: f32, gamma: &[f32], beta: &[f32]) -> f32 {
    if x.is_empty() {
        return 0.0;
    }
    let n = x.len() as f32;
    let mean = lanes_sum(x, |v| v) / n;
    let var = lanes_sum(x, |v| (v - mean) * (v - mean)) / n;
    let inv = 1.0 / (var + eps).sqrt();
    for ((v, g), b) in x.iter_mut().zip(gamma).zip(beta) {
        *v = (*v - mean) * inv * g + b;
    }
    inv
}

/// Columns `0..w` (`w <= COLS`) of `[len, stride]` at `x`, in place, each over the `len` rows.
///
/// # Safety
/// `x` must point at `len` rows of `stride >= w` f32 each, readable and writable.
pub unsafe fn norm_cols(
    k: Kernel,
    x: *mut f32,
    stride: usize,
    w: usize,
    eps: f32,
    gamma: &[f32],
    beta: &[f32],
) {
    assert!(w <= COLS && w <= stride && gamma.len() == beta.len());
    dispatch!(
        k,
        // SAFETY: the caller's contract.
        unsafe { cols_generic(x, stride, w, eps, gamma, beta) },
        cols_avx2(x, stride, w, eps, gamma, beta),
        cols_neon(x, stride, w, eps, gamma, beta)
    )
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn cols_avx2(x: *mut f32, stride: usize, w: usize, eps: f32, g: &[f32], b: &[f32]) {
    unsafe { cols_generic(x, stride, w, eps, g, b) }
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn cols_neon(x: *mut f32, stride: usize, w: usize, eps: f32, g: &[f32], b: &[f32]) {
    unsafe { cols_generic(x, stride, w, eps, g, b) }
}

#[inline(always)]
unsafe fn cols_generic(x: *mut f32, stride: usize, w: usize, eps: f32, g: &[f32], b: &[f32]) {
    let len = g.len();
    let n = len as f32;
    // SAFETY (all rows below): row `c < len` is `w` f32 at `x + c * stride`, per the contract.
    let row = |c: usize| unsafe { std::slice::from_raw_parts_mut(x.add(c * stride), w) };
    let mut mean = [0f32; COLS];
    let mut inv = [0f32; COLS];
    let (mean, inv) = (&mut mean[..w], &mut inv[..w]);
    for c in 0..len {
        for (m, v) in mean.iter_mut().zip(row(c).iter()) {
            *m += v;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n);
    for c in 0..len {
        for ((s, m), v) in inv.iter_mut().zip(mean.iter()).zip(row(c).iter()) {
            *s += (v - m) * (v - m);
        }
    }
    inv.iter_mut()
        .for_each(|s| *s = 1.0 / (*s / n + eps).sqrt());
    for c in 0..len {
        let (gc, bc) = (g[c], b[c]);
        for ((v, m), i) in row(c).iter_mut().zip(mean.iter()).zip(inv.iter()) {
            *v = (*v - m) * i * gc + bc;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_values as rand;

    #[test]
    fn add_norm_pe_equals_its_three_steps_on_every_kernel() {
        let mut s = 21;
        for n in [1, 7, 8, 13, 32, 96, 256] {
            let (x0, base, d, pe) = (
                rand(&mut s, n),
                rand(&mut s, n),
                rand(&mut s, n),
                rand(&mut s, n),
            );
            let (g, b) = (rand(&mut s, n), rand(&mut s, n));
            for with_base in [false, true] {
                let mut want: Vec<f32> = if with_base {
                    base.iter().zip(&d).map(|(b, d)| b + d).collect()
                } else {
                    x0.iter().zip(&d).map(|(x, d)| x + d).collect()
                };
                layer_norm_row(Kernel::Scalar, &mut want, 1e-6, &g, &b);
                let want_pe: Vec<f32> = want.iter().zip(&pe).map(|(x, p)| x + p).collect();
                // the scale it returns: the one of the row's norm, the same on every path
                let y: Vec<f32> = match with_base {
                    true => base.iter().zip(&d).map(|(b, d)| b + d).collect(),
                    false => x0.iter().zip(&d).map(|(x, d)| x + d).collect(),
                };
                let mean = y.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
                let var = y.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n as f64;
                let scale = 1.0 / (var + 1e-6).sqrt();
                let mut first = None;
                for k in Kernel::available() {
                    let (mut x, mut x_pe) = (x0.clone(), vec![f32::NAN; n]);
                    let bs = with_base.then_some(base.as_slice());
                    let xp = Some(x_pe.as_mut_slice());
                    let inv = add_norm_pe_row(k, &mut x, bs, &d, (1e-6, &g, &b), &pe, xp);
                    assert_eq!(x, want, "{k:?} n {n} base {with_base}");
                    assert_eq!(x_pe, want_pe, "{k:?} n {n} base {with_base}");
                    assert!(
                        (inv as f64 / scale - 1.0).abs() < 1e-4,
                        "{k:?}: {inv} vs {scale}"
                    );
                    assert_eq!(
                        *first.get_or_insert(inv),
                        inv,
                        "{k:?}: scale differs by path"
                    );
                    // without the positional output: the same row and scale
                    let mut x2 = x0.clone();
                    let inv2 = add_norm_pe_row(k, &mut x2, bs, &d, (1e-6, &g, &b), &pe, None);
                    assert_eq!((x2, inv2), (x, inv), "{k:?} without x_pe");
                }
            }
        }
    }
}
