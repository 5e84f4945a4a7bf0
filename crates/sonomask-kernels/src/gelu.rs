//! Exact GELU, `x / 2 * (1 + erf(x / sqrt 2))`, in place over a slice (the kernel of
//! sonomask-ops' `Gelu` operator, its fused MBConv and patch embedding, and the native mask
//! decoder). The erf is tract's own formula (Abramowitz-Stegun 7.1.28), the polynomial by
//! fused multiply-adds as tract's AVX/FMA kernel does. Every path (AVX2+FMA, NEON, scalar
//! `mul_add`) is the same operations in the same order (tested with `==` in sonomask-ops,
//! against tract's GELU as well).

use crate::Kernel;
use crate::pointwise::kernel_has_fma;

const A: [f32; 6] = [
    0.070_523_08,
    0.042_282_01,
    0.009_270_527,
    0.000_152_014_3,
    0.000_276_567_2,
    0.000_043_063_8,
];

/// GELU of every value of `xs`, in place.
pub fn gelu_slice(kernel: Kernel, xs: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if kernel == Kernel::Avx512 && kernel.usable() {
        // SAFETY: AVX-512F, AVX2 and FMA present (checked just above).
        return unsafe { gelu_avx512(xs) };
    }
    match kernel_has_fma(kernel) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 and FMA present (checked by kernel_has_fma).
        Some(Kernel::Avx2) => unsafe { gelu_avx2(xs) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: NEON present (checked by kernel_has_fma).
        Some(Kernel::Neon) => unsafe { gelu_neon(xs) },
        _ => gelu_generic(xs),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gelu_avx2(xs: &mut [f32]) {
    gelu_generic(xs)
}

/// The same formula on sixteen lanes (the same IEEE operations per lane, so equal to the
/// other paths bit for bit: tested in sonomask-ops). GELU is compute-bound (a 6-term
/// polynomial, four squarings and a division per value): twice the lanes pay.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn gelu_avx512(xs: &mut [f32]) {
    gelu_generic(xs)
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn gelu_neon(xs: &mut [f32]) {
    gelu_generic(xs)
}

/// The formula, written so that the compiler vectorises it (no branches; `mul_add` is one
/// fused instruction where the target has one).
#[inline(always)]
fn gelu_generic(xs: &mut [f32]) {
    let inv_sqrt2 = std::f32::consts::FRAC_1_SQRT_2;
    for x in xs.iter_mut() {
        let s = *x * inv_sqrt2;
        let abs = s.abs();
        let y = A[5].mul_add(abs, A[4]);
        let y = y.mul_add(abs, A[3]);
        let y = y.mul_add(abs, A[2]);
        let y = y.mul_add(abs, A[1]);
        let y = y.mul_add(abs, A[0]);
        let y = y.mul_add(abs, 1.0);
        let y = y * y;
        let y = y * y;
        let y = y * y;
        let y = y * y;
        let erf = (1.0 - 1.0 / y).copysign(s);
        *x = (*x * 0.5) * (erf + 1.0);
    }
}
