//! The few-keys attention's kernel (see `sonomask_ops::FewKeysAttention`): for consecutive
//! channels-first queries of one head, `softmax(scale q.k^T) . v` over a few keys, a lane per
//! query (8 on AVX2, 4 on NEON), the scores of a block of queries kept in `keys` registers.
//!
//! Every path (AVX2+FMA, NEON, scalar) does the same IEEE operations in the same order (fused
//! multiply-adds over the channels, the scale, the maximum in key order, `exp` as
//! [`attention`](crate::attention)'s, the sum in key order, `1 / sum`, fused multiply-adds over
//! the keys, then the multiply by `1 / sum`), so they agree bit for bit (tested with `==`).

use crate::Kernel;
use crate::attention::exp_fma;
use crate::pointwise::kernel_has_fma;

/// Most keys: the scores of 8 queries live in `MAX_KEYS` vectors.
pub const MAX_KEYS: usize = 16;

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

/// One head's keys and values (`keys x dim` and `keys x dim_v`, row-major) and the scores'
/// scale.
pub struct Head<'a> {
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub keys: usize,
    pub dim: usize,
    pub dim_v: usize,
    pub scale: f32,
}

/// The attention of `count` consecutive queries of one head: query `j`'s channel `d` at
/// `q + j + d qs`, its output channel `e` written to `out + j + e os`.
///
/// # Safety
/// `q` and `out` address those elements; `head` holds `keys` (1 to [`MAX_KEYS`]) rows of `dim`
/// and `dim_v` values; no one else writes those outputs.
pub unsafe fn queries(
    kernel: Kernel,
    (q, qs): (*const f32, isize),
    head: &Head,
    (out, os): (*mut f32, isize),
    count: usize,
) {
    debug_assert!((1..=MAX_KEYS).contains(&head.keys));
    debug_assert!(head.k.len() >= head.keys * head.dim && head.v.len() >= head.keys * head.dim_v);
    let mut j = 0;
    // SAFETY: caller's contract; every block stays inside the `count` queries.
    unsafe {
        match kernel_has_fma(kernel) {
            #[cfg(target_arch = "x86_64")]
            Some(Kernel::Avx2) => {
                while j + 8 <= count {
                    by_keys!(head.keys, block_avx2(q.add(j), qs, head, out.add(j), os));
                    j += 8;
                }
            }
            #[cfg(target_arch = "aarch64")]
            Some(Kernel::Neon) => {
                while j + 4 <= count {
                    by_keys!(head.keys, block_neon(q.add(j), qs, head, out.add(j), os));
                    j += 4;
                }
            }
            _ => {}
        }
        while j < count {
            query_scalar(q.add(j), qs, head, out.add(j), os);
            j += 1;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_values;

    /// `count` queries (channels-first, `count` apart) of one head over `keys` keys.
    fn run(kernel: Kernel, (keys, count, dim, dim_v): (usize, usize, usize, usize)) -> Vec<f32> {
        let mut seed = (keys * 13 + count * 5 + dim) as u64;
        let q: Vec<f32> = test_values(&mut seed, dim * count)
            .iter()
            .map(|x| x * 8.0)
            .collect();
        let k = test_values(&mut seed, keys * dim);
        let v = test_values(&mut seed, keys * dim_v);
        let head = Head {
            k: &k,
            v: &v,
            keys,
            dim,
            dim_v,
            scale: 0.25,
        };
        let mut out = vec![f32::NAN; dim_v * count];
        let s = count as isize;
        // SAFETY: q holds dim rows and out dim_v rows of `count` queries.
        unsafe { queries(kernel, (q.as_ptr(), s), &head, (out.as_mut_ptr(), s), count) };
        for j in 0..count {
            let sc: Vec<f64> = (0..keys)
                .map(|t| {
                    (0..dim)
                        .map(|d| q[d * count + j] as f64 * k[t * dim + d] as f64)
                        .sum::<f64>()
                        * 0.25
                })
                .collect();
            let mx = sc.iter().cloned().fold(f64::MIN, f64::max);
            let e: Vec<f64> = sc.iter().map(|x| (x - mx).exp()).collect();
            let sum: f64 = e.iter().sum();
            for c in 0..dim_v {
                let want = (0..keys)
                    .map(|t| e[t] * v[t * dim_v + c] as f64)
                    .sum::<f64>()
                    / sum;
                let got = out[c * count + j] as f64;
                assert!(
                    (got - want).abs() < 1e-5,
                    "{kernel:?} query {j} channel {c}: {got} vs {want}"
                );
            }
        }
        out
    }

    #[test]
    fn every_kernel_equals_scalar_bit_for_bit() {
        // Query counts off the vector widths (8 on AVX2, 4 on NEON), 1 key, the decoder's 7,
        // the most.
        for dims in [
            (1, 13, 8, 5),
            (7, 45, 16, 16),
            (MAX_KEYS, 21, 32, 12),
            (3, 3, 4, 4),
        ] {
            let want = run(Kernel::Scalar, dims);
            for kernel in Kernel::available() {
                assert_eq!(run(kernel, dims), want, "{kernel:?} {dims:?}");
            }
        }
    }
}
