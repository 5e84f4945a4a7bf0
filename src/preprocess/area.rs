//! OpenCV's `cv::resize(..., INTER_AREA)` for 8-bit RGB, ported from `imgproc/src/resize.cpp`
//! (OpenCV 4.x) so that LiteMedSAM sees the tensor its official recipe feeds it
//! (`CVPR24_LiteMedSAM_infer.py` resizes with INTER_AREA).
//!
//! OpenCV takes one of three paths, and so does this port:
//! - both scale factors integers (`resizeAreaFast_`): the mean of each k x k cell; for k = 2
//!   its vector path `(a + b + c + d + 2) >> 2`, otherwise `round_half_even(sum * (1/k^2 as f32))`;
//! - otherwise, when neither axis is enlarged (`ResizeArea_Invoker`): per-cell area weights
//!   computed in f64 and stored as f32, each source row filtered horizontally into an f32 buffer,
//!   the buffers summed with the vertical weights in f32 in the same order, rounded half-even;
//! - an enlarged axis (a frame whose longest side is under the model size): OpenCV's bilinear
//!   path with "area" coefficients in 11-bit fixed point. Its SIMD vertical pass drops 4 low
//!   bits, the scalar pass here does not: within one grey level of OpenCV there (tested).
//!
//! `tests/preprocess_reference.rs` pins the first two bit for bit against cv2 on real frames.

/// One tap of a decimation table (OpenCV's `DecimateAlpha`): output index, input index, weight.
#[derive(Clone, Copy, Debug)]
struct Tap {
    di: usize,
    si: usize,
    alpha: f32,
}

/// OpenCV `computeResizeAreaTab` (indices in pixels; the channel stride is applied by callers).
fn area_taps(ssize: usize, dsize: usize, scale: f64) -> Vec<Tap> {
    let mut tab = Vec::with_capacity(ssize * 2);
    for dx in 0..dsize {
        let fsx1 = dx as f64 * scale;
        let fsx2 = fsx1 + scale;
        let cell = scale.min(ssize as f64 - fsx1);
        let mut sx1 = fsx1.ceil() as i64;
        let mut sx2 = fsx2.floor() as i64;
        sx2 = sx2.min(ssize as i64 - 1);
        sx1 = sx1.min(sx2);
        if sx1 as f64 - fsx1 > 1e-3 {
            tab.push(Tap {
                di: dx,
                si: (sx1 - 1) as usize,
                alpha: ((sx1 as f64 - fsx1) / cell) as f32,
            });
        }
        for sx in sx1..sx2 {
            tab.push(Tap {
                di: dx,
                si: sx as usize,
                alpha: (1.0 / cell) as f32,
            });
        }
        if fsx2 - sx2 as f64 > 1e-3 {
            tab.push(Tap {
                di: dx,
                si: sx2 as usize,
                alpha: ((fsx2 - sx2 as f64).min(1.0).min(cell) / cell) as f32,
            });
        }
    }
    tab
}

/// `saturate_cast<uchar>(float)`: round half to even (the default SSE rounding), then clamp.
#[inline]
fn sat_u8(v: f32) -> u8 {
    v.round_ties_even().clamp(0.0, 255.0) as u8
}

/// The general decimation (`ResizeArea_Invoker<uchar, float>`), 3 channels.
fn area_general(src: &[u8], w: usize, h: usize, ow: usize, oh: usize, out: &mut [u8]) {
    // OpenCV: inv_scale = dsize / ssize, scale = 1 / inv_scale (not ssize / dsize: the last
    // bit can differ, and the taps depend on it).
    let scale_x = 1.0 / (ow as f64 / w as f64);
    let scale_y = 1.0 / (oh as f64 / h as f64);
    let xtab = area_taps(w, ow, scale_x);
    let ytab = area_taps(h, oh, scale_y);
    let width = ow * 3;
    let mut buf = vec![0f32; width];
    let mut sum = vec![0f32; width];
    let mut j = 0;
    while j < ytab.len() {
        let dy = ytab[j].di;
        sum.fill(0.0);
        while j < ytab.len() && ytab[j].di == dy {
            let Tap {
                si: sy,
                alpha: beta,
                ..
            } = ytab[j];
            let row = &src[sy * w * 3..(sy + 1) * w * 3];
            buf.fill(0.0);
            for t in &xtab {
                let (s, d) = (t.si * 3, t.di * 3);
                buf[d] += row[s] as f32 * t.alpha;
                buf[d + 1] += row[s + 1] as f32 * t.alpha;
                buf[d + 2] += row[s + 2] as f32 * t.alpha;
            }
            for (s, &b) in sum.iter_mut().zip(&buf) {
                *s += beta * b;
            }
            j += 1;
        }
        for (o, &s) in out[dy * width..(dy + 1) * width].iter_mut().zip(&sum) {
            *o = sat_u8(s);
        }
    }
}

/// `resizeAreaFast_<uchar, int>` for integer factors `kx`, `ky` (the source is exactly
/// `k x` the destination on each axis), 3 channels.
fn area_fast(src: &[u8], w: usize, kx: usize, ky: usize, ow: usize, oh: usize, out: &mut [u8]) {
    let scale = 1.0f32 / (kx * ky) as f32;
    for dy in 0..oh {
        for dx in 0..ow {
            for c in 0..3 {
                let mut s = 0i32;
                for y in dy * ky..(dy + 1) * ky {
                    let row = &src[y * w * 3..];
                    for x in dx * kx..(dx + 1) * kx {
                        s += row[x * 3 + c] as i32;
                    }
                }
                out[(dy * ow + dx) * 3 + c] = if kx == 2 && ky == 2 {
                    // ResizeAreaFastVec's fast mode (the SIMD and its scalar tail alike).
                    ((s + 2) >> 2) as u8
                } else {
                    sat_u8(s as f32 * scale)
                };
            }
        }
    }
}

const COEF_BITS: u32 = 11;

/// OpenCV's linear-path source index and 11-bit weights in "area" mode, with its border clamps.
fn area_linear_taps(ssize: usize, dsize: usize) -> Vec<(usize, i32, i32)> {
    let inv_scale = dsize as f64 / ssize as f64;
    let scale = 1.0 / inv_scale;
    (0..dsize)
        .map(|d| {
            let mut sx = (d as f64 * scale).floor() as i64;
            let fx = ((d + 1) as f64 - (sx + 1) as f64 * inv_scale) as f32;
            let mut fx = if fx <= 0.0 { 0.0 } else { fx - fx.floor() };
            if sx < 0 {
                fx = 0.0;
                sx = 0;
            }
            if sx >= ssize as i64 - 1 {
                fx = 0.0;
                sx = ssize as i64 - 1;
            }
            let q = |v: f32| (v * (1 << COEF_BITS) as f32).round_ties_even() as i32;
            (sx as usize, q(1.0 - fx), q(fx))
        })
        .collect()
}

/// The enlarging case (scalar fixed point; OpenCV's SIMD pass may differ by one grey level).
fn area_enlarge(src: &[u8], w: usize, h: usize, ow: usize, oh: usize, out: &mut [u8]) {
    let xt = area_linear_taps(w, ow);
    let yt = area_linear_taps(h, oh);
    let hrow = |y: usize, dst: &mut Vec<i32>| {
        dst.clear();
        let row = &src[y * w * 3..(y + 1) * w * 3];
        for &(sx, a0, a1) in &xt {
            let sx1 = (sx + 1).min(w - 1);
            for c in 0..3 {
                dst.push(row[sx * 3 + c] as i32 * a0 + row[sx1 * 3 + c] as i32 * a1);
            }
        }
    };
    let (mut r0, mut r1) = (Vec::with_capacity(ow * 3), Vec::with_capacity(ow * 3));
    let half = 1i64 << (2 * COEF_BITS - 1);
    for (dy, &(sy, b0, b1)) in yt.iter().enumerate() {
        hrow(sy, &mut r0);
        hrow((sy + 1).min(h - 1), &mut r1);
        for (x, o) in out[dy * ow * 3..(dy + 1) * ow * 3].iter_mut().enumerate() {
            let v = r0[x] as i64 * b0 as i64 + r1[x] as i64 * b1 as i64;
            *o = ((v + half) >> (2 * COEF_BITS)).clamp(0, 255) as u8;
        }
    }
}

/// `cv2.resize(rgb, (out_w, out_h), interpolation=cv2.INTER_AREA)` for an interleaved RGB8 buffer.
pub fn resize_area_u8(src: &[u8], w: usize, h: usize, out_w: usize, out_h: usize) -> Vec<u8> {
    assert_eq!(src.len(), w * h * 3, "RGB buffer size");
    assert!(w > 0 && h > 0 && out_w > 0 && out_h > 0, "empty image");
    if (w, h) == (out_w, out_h) {
        return src.to_vec();
    }
    let mut out = vec![0u8; out_w * out_h * 3];
    // OpenCV's own tests: scale = 1 / (dsize / ssize), "fast" when within DBL_EPSILON of an integer.
    let (sx, sy) = (
        1.0 / (out_w as f64 / w as f64),
        1.0 / (out_h as f64 / h as f64),
    );
    if sx >= 1.0 && sy >= 1.0 {
        let (kx, ky) = (sx.round_ties_even(), sy.round_ties_even());
        let fast = (sx - kx).abs() < f64::EPSILON && (sy - ky).abs() < f64::EPSILON;
        let (kx, ky) = (kx as usize, ky as usize);
        if fast && w == kx * out_w && h == ky * out_h {
            area_fast(src, w, kx, ky, out_w, out_h, &mut out);
        } else {
            area_general(src, w, h, out_w, out_h, &mut out);
        }
    } else {
        area_enlarge(src, w, h, out_w, out_h, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_stays_constant() {
        let c = vec![77u8; 13 * 7 * 3];
        for (ow, oh) in [(6, 3), (5, 3), (1, 1), (13, 1), (26, 14), (4, 7)] {
            assert!(
                resize_area_u8(&c, 13, 7, ow, oh).iter().all(|&v| v == 77),
                "{ow}x{oh}"
            );
        }
    }

    #[test]
    fn halving_rounds_half_up_like_opencv_simd() {
        // 2x2 cells summing to 10 and 6: (10+2)>>2 = 3 where half-even would give 2.
        let mut src = vec![0u8; 4 * 2 * 3];
        for (i, v) in [2u8, 3, 1, 2, 2, 3, 1, 2].iter().enumerate() {
            let (x, y) = (i % 4, i / 4);
            src[(y * 4 + x) * 3] = *v;
        }
        let out = resize_area_u8(&src, 4, 2, 2, 1);
        assert_eq!((out[0], out[3]), (3, 2));
    }

    #[test]
    fn general_area_is_the_cell_mean() {
        // 3 -> 2 columns: cells [0,1.5) and [1.5,3): weights 2/3, 1/3 and 1/3, 2/3.
        let src: Vec<u8> = [30u8, 60, 90].iter().flat_map(|&v| [v, v, v]).collect();
        let out = resize_area_u8(&src, 3, 1, 2, 1);
        // (30 + 0.5*60) / 1.5 = 40, (0.5*60 + 90) / 1.5 = 80
        assert_eq!((out[0], out[3]), (40, 80));
    }
}
