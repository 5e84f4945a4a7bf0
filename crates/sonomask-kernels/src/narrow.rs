//! The narrow product `C = alpha A.B + beta C` (then a softmax per row if asked) for C at most
//! [`NARROW`] columns wide (see `sonomask_ops::Gemm`): the decoder's attention of 4096 image
//! tokens over 7 prompt tokens.

use crate::softmax::exp_scalar;
use crate::{Kernel, dispatch, reduce8};

/// Widest C computed by [`narrow`]: one 8-lane vector per row.
pub const NARROW: usize = 8;
/// Longest reduction [`narrow`] takes (B's packed copy lives on the stack).
pub const NARROW_K: usize = 64;

/// How a [`narrow`] product is taken: dimensions `(m, k, n)`, alpha, beta, and whether each
/// row of C is then put through a softmax.
pub type NarrowSpec = ((usize, usize, usize), f32, f32, bool);

/// `C = alpha A.B + beta C` (then a softmax per row if asked) for C at most [`NARROW`] columns
/// wide: the decoder's attention of 4096 image tokens over 7 prompt tokens. B is copied once
/// into `k` zero-padded 8-lane rows, then each row of C is one vector accumulated over `k`, and
/// its softmax taken in registers. A packed sgemm ran these through its partial-tile path, and
/// the separate softmax paid a call per 7-long row. The softmax is [`softmax_rows`]'s scalar
/// path operation for operation (so equal to every path of it).
///
/// # Safety
/// The pointers and strides address valid matrices of these sizes; `n <= NARROW`,
/// `k <= NARROW_K`; `beta` is 0 (C not read) or 1.
pub unsafe fn narrow(
    kernel: Kernel,
    spec: NarrowSpec,
    a: (*const f32, isize, isize),
    b: (*const f32, isize, isize),
    c: (*mut f32, isize, isize),
) {
    let ((_, k, n), ..) = spec;
    let dims = spec.0;
    assert!(n <= NARROW && k <= NARROW_K, "narrow product {dims:?}");
    let mut bp = [[0f32; NARROW]; NARROW_K];
    for (p, row) in bp.iter_mut().enumerate().take(k) {
        for (j, v) in row.iter_mut().enumerate().take(n) {
            // SAFETY: element (p, j) of B (caller's contract).
            *v = unsafe { *b.0.offset(p as isize * b.1 + j as isize * b.2) };
        }
    }
    let bp = &bp[..k];
    // SAFETY (each path): the caller's contract.
    dispatch!(
        kernel,
        unsafe { narrow_rows(spec, a, bp, c) },
        narrow_avx2(spec, a, bp, c),
        narrow_neon(spec, a, bp, c)
    )
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn narrow_avx2(
    spec: NarrowSpec,
    a: (*const f32, isize, isize),
    bp: &[[f32; NARROW]],
    c: (*mut f32, isize, isize),
) {
    // SAFETY: the caller's contract.
    unsafe { narrow_rows(spec, a, bp, c) }
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn narrow_neon(
    spec: NarrowSpec,
    a: (*const f32, isize, isize),
    bp: &[[f32; NARROW]],
    c: (*mut f32, isize, isize),
) {
    // SAFETY: the caller's contract.
    unsafe { narrow_rows(spec, a, bp, c) }
}

/// The rows of [`narrow`]: no FMA (a multiply, then an add), so every path rounds alike.
#[inline(always)]
unsafe fn narrow_rows(
    ((m, _, n), alpha, beta, softmax): NarrowSpec,
    (a, rsa, csa): (*const f32, isize, isize),
    bp: &[[f32; NARROW]],
    (c, rsc, csc): (*mut f32, isize, isize),
) {
    for i in 0..m as isize {
        let mut acc = [0f32; NARROW];
        let mut ap = a.wrapping_offset(i * rsa);
        for row in bp {
            // SAFETY: element (i, p) of A, p < k.
            let av = unsafe { *ap };
            ap = ap.wrapping_offset(csa);
            for (s, &bv) in acc.iter_mut().zip(row) {
                *s += av * bv;
            }
        }
        let at = |j: usize| c.wrapping_offset(i * rsc + j as isize * csc);
        let mut v = [0f32; NARROW];
        for (j, (v, &s)) in v.iter_mut().zip(&acc).enumerate().take(n) {
            // SAFETY: element (i, j) of C, read only when beta is 1 (then it holds the bias).
            *v = if beta == 0.0 {
                alpha * s
            } else {
                alpha * s + unsafe { *at(j) }
            };
        }
        if softmax && n > 0 {
            // `softmax_rows`' scalar path on a row shorter than 8: max, exp, sum, scale.
            let mut mx = v[0];
            for &x in &v[..n] {
                mx = if x > mx { x } else { mx };
            }
            let mut e = [0f32; NARROW];
            for (e, &x) in e.iter_mut().zip(&v) {
                *e = exp_scalar(x - mx);
            }
            // Whole 8-lane chunks are summed lane-wise and reduced, the rest in order.
            let mut sum = if n == 8 { reduce8(&e) } else { 0.0 };
            for &x in &e[n / 8 * 8..n] {
                sum += x;
            }
            let inv = 1.0 / sum;
            for (v, &x) in v.iter_mut().zip(&e).take(n) {
                *v = x * inv;
            }
        }
        for (j, &x) in v.iter().enumerate().take(n) {
            // SAFETY: element (i, j) of C.
            unsafe { *at(j) = x };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_values;

    #[test]
    fn every_kernel_equals_scalar_bit_for_bit() {
        for (m, k, n) in [(1, 1, 1), (9, 16, 7), (33, 64, 8), (5, 3, 2)] {
            for (beta, softmax) in [(0.0, false), (1.0, false), (0.0, true), (1.0, true)] {
                let mut seed = (m * k * n) as u64;
                // A read transposed (column stride m), B row-major, C with a row stride of 8.
                let a = test_values(&mut seed, m * k);
                let b = test_values(&mut seed, k * n);
                let c0 = test_values(&mut seed, m * 8);
                let run = |kernel| {
                    let mut c = c0.clone();
                    // SAFETY: the strides address a (m x k), b (k x n) and c (m x 8).
                    unsafe {
                        narrow(
                            kernel,
                            ((m, k, n), 2.0, beta, softmax),
                            (a.as_ptr(), 1, m as isize),
                            (b.as_ptr(), n as isize, 1),
                            (c.as_mut_ptr(), 8, 1),
                        )
                    };
                    c
                };
                let want = run(Kernel::Scalar);
                for i in 0..m {
                    let row: Vec<f32> = (0..n)
                        .map(|j| {
                            let s: f32 = (0..k).map(|p| a[p * m + i] * b[p * n + j]).sum();
                            2.0 * s + beta * c0[i * 8 + j]
                        })
                        .collect();
                    for j in 0..n {
                        let def = if softmax {
                            let mx = row.iter().cloned().fold(f32::MIN, f32::max);
                            let sum: f32 = row.iter().map(|x| (x - mx).exp()).sum();
                            (row[j] - mx).exp() / sum
                        } else {
                            row[j]
                        };
                        assert!((want[i * 8 + j] - def).abs() < 1e-5, "({i}, {j})");
                    }
                    // Columns past n untouched.
                    assert_eq!(want[i * 8 + n..i * 8 + 8], c0[i * 8 + n..i * 8 + 8]);
                }
                for kernel in Kernel::available() {
                    assert_eq!(run(kernel), want, "{kernel:?} {m}x{k}x{n} {beta} {softmax}");
                }
            }
        }
    }
}
