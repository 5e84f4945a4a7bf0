//! Direct-convolution row kernels: the dense 3x3 convolution's tap sums (see
//! `sonomask_ops::Conv3x3`) and the channels-last depthwise 3x3 (see
//! `sonomask_ops::DepthwiseNhwc3x3`). No FMA (a multiply, then an add), so the AVX2, NEON and
//! scalar paths round alike and agree bit for bit (tested with `==`).

use crate::{Kernel, dispatch};

/// Channels the depthwise kernel accumulates together; the channel count must be a multiple.
pub const LANES: usize = 32;

/// `out[i] = bias + sum over taps t (in order) of w[t] * src[t][i]`.
pub fn taps_rows<const N: usize>(
    k: Kernel,
    out: &mut [f32],
    bias: f32,
    src: &[&[f32]; N],
    w: &[f32; N],
) {
    assert!(
        src.iter().all(|s| s.len() >= out.len()),
        "tap rows too short"
    );
    dispatch!(
        k,
        taps_scalar(out, bias, src, w),
        taps_avx2(out, bias, src, w),
        taps_neon(out, bias, src, w)
    )
}

fn taps_scalar<const N: usize>(out: &mut [f32], bias: f32, src: &[&[f32]; N], w: &[f32; N]) {
    for (i, o) in out.iter_mut().enumerate() {
        let mut acc = bias;
        for t in 0..N {
            acc += w[t] * src[t][i];
        }
        *o = acc;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn taps_avx2<const N: usize>(out: &mut [f32], bias: f32, src: &[&[f32]; N], w: &[f32; N]) {
    use std::arch::x86_64::*;
    let n = out.len() / 8 * 8;
    let vw: [__m256; N] = std::array::from_fn(|t| _mm256_set1_ps(w[t]));
    let vb = _mm256_set1_ps(bias);
    let mut i = 0;
    while i < n {
        let mut acc = vb;
        for t in 0..N {
            // SAFETY: i + 8 <= n <= out.len() <= src[t].len() (asserted by the caller).
            let x = unsafe { _mm256_loadu_ps(src[t].as_ptr().add(i)) };
            acc = _mm256_add_ps(acc, _mm256_mul_ps(vw[t], x));
        }
        // SAFETY: as above.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(i), acc) };
        i += 8;
    }
    let tail: [&[f32]; N] = std::array::from_fn(|t| &src[t][n..]);
    taps_scalar(&mut out[n..], bias, &tail, w);
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn taps_neon<const N: usize>(out: &mut [f32], bias: f32, src: &[&[f32]; N], w: &[f32; N]) {
    use std::arch::aarch64::*;
    let n = out.len() / 4 * 4;
    let vw: [float32x4_t; N] = std::array::from_fn(|t| vdupq_n_f32(w[t]));
    let vb = vdupq_n_f32(bias);
    let mut i = 0;
    while i < n {
        let mut acc = vb;
        for t in 0..N {
            // SAFETY: i + 4 <= n <= out.len() <= src[t].len() (asserted by the caller).
            let x = unsafe { vld1q_f32(src[t].as_ptr().add(i)) };
            acc = vaddq_f32(acc, vmulq_f32(vw[t], x));
        }
        // SAFETY: as above.
        unsafe { vst1q_f32(out.as_mut_ptr().add(i), acc) };
        i += 4;
    }
    let tail: [&[f32]; N] = std::array::from_fn(|t| &src[t][n..]);
    taps_scalar(&mut out[n..], bias, &tail, w);
}

/// Output rows `first..` (as many as `out` holds, `w * c` values each) of a depthwise 3x3
/// convolution (stride 1, padding 1) over channels-last tokens `x` (`[h * w, c]`), with `taps`
/// `[9][c]` (tap `ky * 3 + kx`, then channel) and `bias` (`c` values); `c` a multiple of
/// [`LANES`]. Each output pixel's channels are accumulated in blocks of [`LANES`], bias first,
/// then the taps row by row.
pub fn depthwise_rows(
    kernel: Kernel,
    dims: (usize, usize, usize),
    (taps, bias): (&[f32], &[f32]),
    x: &[f32],
    first: usize,
    out: &mut [f32],
) {
    let (h, w, c) = dims;
    assert!(
        c.is_multiple_of(LANES) && taps.len() >= 9 * c && bias.len() >= c && x.len() >= h * w * c,
        "depthwise rows: {dims:?} with {} taps, {} biases, {} inputs",
        taps.len(),
        bias.len(),
        x.len()
    );
    assert!(
        first + out.len() / (w * c).max(1) <= h,
        "depthwise rows past the map"
    );
    dispatch!(
        kernel,
        rows_generic(dims, taps, bias, x, first, out),
        rows_avx2(dims, taps, bias, x, first, out),
        rows_neon(dims, taps, bias, x, first, out)
    )
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn rows_avx2(
    dims: (usize, usize, usize),
    taps: &[f32],
    bias: &[f32],
    x: &[f32],
    first: usize,
    out: &mut [f32],
) {
    rows_generic(dims, taps, bias, x, first, out)
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn rows_neon(
    dims: (usize, usize, usize),
    taps: &[f32],
    bias: &[f32],
    x: &[f32],
    first: usize,
    out: &mut [f32],
) {
    rows_generic(dims, taps, bias, x, first, out)
}

#[inline(always)]
fn rows_generic(
    (h, w, c): (usize, usize, usize),
    taps: &[f32],
    bias: &[f32],
    x: &[f32],
    first: usize,
    out: &mut [f32],
) {
    for (r, row) in out.chunks_exact_mut(w * c).enumerate() {
        let y = first + r;
        let ky = (y == 0) as usize..3 - (y + 1 == h) as usize;
        for ox in 0..w {
            let kx = (ox == 0) as usize..3 - (ox + 1 == w) as usize;
            let dst = &mut row[ox * c..(ox + 1) * c];
            for c0 in (0..c).step_by(LANES) {
                let mut acc: [f32; LANES] = bias[c0..c0 + LANES].try_into().expect("LANES");
                for ty in ky.clone() {
                    let iy = y + ty - 1;
                    for tx in kx.clone() {
                        let src = (iy * w + ox + tx - 1) * c + c0;
                        let xs: &[f32; LANES] = x[src..src + LANES].try_into().expect("LANES");
                        let t = (ty * 3 + tx) * c + c0;
                        let ws: &[f32; LANES] = taps[t..t + LANES].try_into().expect("LANES");
                        for l in 0..LANES {
                            acc[l] += xs[l] * ws[l];
                        }
                    }
                }
                dst[c0..c0 + LANES].copy_from_slice(&acc);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_values;

    #[test]
    fn taps_on_every_kernel_equal_scalar_bit_for_bit() {
        let mut seed = 11;
        for len in 0..=41 {
            let rows: Vec<Vec<f32>> = (0..9).map(|_| test_values(&mut seed, len + 3)).collect();
            let src: [&[f32]; 9] = std::array::from_fn(|t| &rows[t][..]);
            let w: [f32; 9] = test_values(&mut seed, 9).try_into().unwrap();
            let mut want = vec![0f32; len];
            taps_rows(Kernel::Scalar, &mut want, 0.25, &src, &w);
            for (i, x) in want.iter().enumerate() {
                let def = (0..9).fold(0.25f32, |a, t| a + w[t] * src[t][i]);
                assert_eq!(*x, def, "scalar is the definition");
            }
            for k in Kernel::available() {
                let mut got = vec![0f32; len];
                taps_rows(k, &mut got, 0.25, &src, &w);
                assert_eq!(got, want, "{k:?} len {len}");
            }
        }
    }

    #[test]
    fn depthwise_on_every_kernel_equals_scalar_bit_for_bit() {
        for (h, w, c) in [(1, 1, 32), (3, 5, 64), (7, 4, 32)] {
            let mut seed = (h * w + c) as u64;
            let x = test_values(&mut seed, h * w * c);
            let taps = test_values(&mut seed, 9 * c);
            let bias = test_values(&mut seed, c);
            let mut want = vec![0f32; h * w * c];
            depthwise_rows(Kernel::Scalar, (h, w, c), (&taps, &bias), &x, 0, &mut want);
            // Pixel (1, 1)'s channel 3 (when the map has one) by the definition.
            if h > 1 && w > 1 {
                let mut def = bias[3];
                for ty in 0..3usize {
                    for tx in 0..3usize {
                        let (iy, ix) = ((1 + ty).wrapping_sub(1), (1 + tx).wrapping_sub(1));
                        if iy < h && ix < w {
                            def += x[(iy * w + ix) * c + 3] * taps[(ty * 3 + tx) * c + 3];
                        }
                    }
                }
                assert!((want[(w + 1) * c + 3] - def).abs() < 1e-6);
            }
            for k in Kernel::available() {
                // All rows at once, then from the last row alone (the `first` offset).
                let mut got = vec![0f32; h * w * c];
                depthwise_rows(k, (h, w, c), (&taps, &bias), &x, 0, &mut got);
                assert_eq!(got, want, "{k:?} {h}x{w}x{c}");
                let mut last = vec![0f32; w * c];
                depthwise_rows(k, (h, w, c), (&taps, &bias), &x, h - 1, &mut last);
                assert_eq!(last[..], want[(h - 1) * w * c..], "{k:?} last row");
            }
        }
    }
}
