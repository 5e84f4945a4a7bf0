//! A matrix transpose for the operators that produce channels-first outputs from row-major
//! products (the int8 decoder's projections back to `[channels, tokens]`). A copy: every path
//! gives the same values; AVX2 moves 8 x 8 tiles through registers.

use crate::Kernel;

/// `dst[j * ldd + i] = src[i * lds + j]` for `i < rows`, `j < cols`.
///
/// # Safety
/// `dst` addresses every one of those elements, and nothing else reads or writes them during
/// the call (the caller may run disjoint column ranges of one output on several threads, hence
/// a pointer and not a slice).
pub unsafe fn transpose(
    kernel: Kernel,
    src: &[f32],
    lds: usize,
    (rows, cols): (usize, usize),
    dst: *mut f32,
    ldd: usize,
) {
    if rows == 0 || cols == 0 {
        return;
    }
    assert!(
        src.len() >= (rows - 1) * lds + cols && lds >= cols,
        "transpose: src of {} values for {rows} x {cols} (stride {lds})",
        src.len()
    );
    #[allow(unused_mut)]
    let (mut i8_, mut j8) = (0, 0);
    #[cfg(target_arch = "x86_64")]
    if kernel.x86().is_some() && kernel.usable() {
        (i8_, j8) = (rows / 8 * 8, cols / 8 * 8);
        // Each 8 rows of dst written whole before the next (rows of dst far apart share cache
        // sets: revisiting them after the others would find their lines evicted).
        for j0 in (0..j8).step_by(8) {
            for i0 in (0..i8_).step_by(8) {
                // SAFETY: AVX2 checked; rows i0..i0 + 8 of src hold columns j0..j0 + 8 (asserted
                // above), rows j0..j0 + 8 of dst hold columns i0..i0 + 8 (the caller's contract).
                unsafe {
                    transpose8_avx2(
                        src.as_ptr().add(i0 * lds + j0),
                        lds as isize,
                        dst.add(j0 * ldd + i0),
                        ldd,
                    )
                };
            }
        }
    }
    let _ = kernel;
    // The rest: the columns past the tiles for every row, then the rows past them.
    for i in 0..rows {
        let from = if i < i8_ { j8 } else { 0 };
        for j in from..cols {
            // SAFETY: element (j, i) of dst (the caller's contract).
            unsafe { *dst.add(j * ldd + i) = src[i * lds + j] };
        }
    }
}

/// The 8 x 8 tile at `src` (rows `rs` apart) transposed into `dst` (rows `rd` apart).
///
/// # Safety
/// Both address 8 rows of 8 floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn transpose8_avx2(src: *const f32, rs: isize, dst: *mut f32, rd: usize) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_transposes() {
        for (rows, cols) in [(1, 1), (8, 8), (17, 40), (48, 256), (5, 13), (9, 7)] {
            let (lds, ldd) = (cols + 3, rows + 5);
            let src: Vec<f32> = (0..rows * lds).map(|v| v as f32).collect();
            for k in Kernel::available() {
                let mut dst = vec![f32::NAN; cols * ldd];
                // SAFETY: dst holds cols rows of ldd >= rows.
                unsafe { transpose(k, &src, lds, (rows, cols), dst.as_mut_ptr(), ldd) };
                for j in 0..cols {
                    for i in 0..ldd {
                        let want = if i < rows { src[i * lds + j] } else { f32::NAN };
                        let got = dst[j * ldd + i];
                        assert!(
                            got == want || (got.is_nan() && want.is_nan()),
                            "{k:?} {rows}x{cols} ({i}, {j}): {got}"
                        );
                    }
                }
            }
        }
    }
}
