//! SAM image preprocessing, bit-exact with the official `ResizeLongestSide` + `Sam.preprocess`.
//!
//! The official predictor resizes with torchvision on a PIL image, i.e. Pillow's bilinear
//! resampler (a triangle filter widened by the scale factor when shrinking, 22-bit fixed-point
//! coefficients, horizontal pass first, each pass rounded and clamped to u8). [`resize_bilinear_u8`]
//! is a port of that resampler (Pillow `libImaging/Resample.c`), so the tensor the encoder sees is
//! the one the official code would feed it; `tests/preprocess_reference.rs` pins this on real images.

use crate::image_io::RgbFrame;

/// Where the original image lands in the square model input, and how coordinates map there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub orig_w: u32,
    pub orig_h: u32,
    /// Size of the image after the longest-side resize (before padding).
    pub resized_w: u32,
    pub resized_h: u32,
    /// Side of the square model input (1024 for MobileSAM).
    pub input_size: u32,
}

impl Geometry {
    /// SAM's `get_preprocess_shape`: scale the longest side to `input_size`, round with
    /// `int(x + 0.5)`.
    pub fn new(orig_w: u32, orig_h: u32, input_size: u32) -> Self {
        let scale = input_size as f64 / orig_w.max(orig_h) as f64;
        let r = |d: u32| ((d as f64 * scale + 0.5) as u32).max(1);
        Geometry {
            orig_w,
            orig_h,
            resized_w: r(orig_w),
            resized_h: r(orig_h),
            input_size,
        }
    }

    /// SAM's `apply_coords`: original pixel coordinates -> model input frame.
    pub fn to_model(&self, x: f32, y: f32) -> (f32, f32) {
        (
            (x as f64 * (self.resized_w as f64 / self.orig_w as f64)) as f32,
            (y as f64 * (self.resized_h as f64 / self.orig_h as f64)) as f32,
        )
    }
}

/// Pillow's fixed-point precision for 8-bit images (`PRECISION_BITS = 32 - 8 - 2`).
const PRECISION_BITS: u32 = 22;

/// Per-output-pixel filter window: first input index, tap count, and `ksize` fixed-point taps.
struct Coeffs {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    taps: Vec<i32>,
}

fn bilinear_filter(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 { 1.0 - x } else { 0.0 }
}

/// Pillow `precompute_coeffs` + `normalize_coeffs_8bpc` for the bilinear filter (support 1).
fn precompute(in_size: usize, out_size: usize) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // bilinear support (1.0) * filterscale
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut taps = vec![0i32; out_size * ksize];
    let mut w = vec![0f64; ksize];
    let ss = 1.0 / filterscale;
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin);
        let mut ww = 0.0;
        for (x, wx) in w.iter_mut().enumerate().take(n) {
            *wx = bilinear_filter((x as f64 + xmin as f64 - center + 0.5) * ss);
            ww += *wx;
        }
        let k = &mut taps[xx * ksize..(xx + 1) * ksize];
        for x in 0..n {
            let v = if ww != 0.0 { w[x] / ww } else { w[x] };
            let fixed = v * (1u32 << PRECISION_BITS) as f64;
            k[x] = if v < 0.0 {
                (-0.5 + fixed) as i32
            } else {
                (0.5 + fixed) as i32
            };
        }
        bounds.push((xmin, n));
    }
    Coeffs {
        ksize,
        bounds,
        taps,
    }
}

#[inline]
fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Bilinear resize of an interleaved RGB8 buffer, identical to Pillow's `Image.resize(BILINEAR)`.
pub fn resize_bilinear_u8(src: &[u8], w: usize, h: usize, out_w: usize, out_h: usize) -> Vec<u8> {
    assert_eq!(src.len(), w * h * 3, "RGB buffer size");
    if (w, h) == (out_w, out_h) {
        return src.to_vec();
    }
    let half = 1i64 << (PRECISION_BITS - 1);
    let vert = precompute(h, out_h);
    // Horizontal pass first, only over the rows the vertical pass reads (as Pillow does).
    let (y_first, y_last) = if h == out_h {
        (0, h)
    } else {
        let last = vert.bounds[out_h - 1];
        (vert.bounds[0].0, last.0 + last.1)
    };
    let tmp_h = y_last - y_first;
    let tmp: Vec<u8> = if w != out_w {
        let hor = precompute(w, out_w);
        let mut tmp = vec![0u8; out_w * tmp_h * 3];
        for y in 0..tmp_h {
            let row = &src[(y + y_first) * w * 3..(y + y_first + 1) * w * 3];
            let out = &mut tmp[y * out_w * 3..(y + 1) * out_w * 3];
            for (xx, &(xmin, n)) in hor.bounds.iter().enumerate() {
                let k = &hor.taps[xx * hor.ksize..xx * hor.ksize + n];
                let (mut s0, mut s1, mut s2) = (half, half, half);
                for (i, &kv) in k.iter().enumerate() {
                    let p = &row[(xmin + i) * 3..(xmin + i) * 3 + 3];
                    s0 += p[0] as i64 * kv as i64;
                    s1 += p[1] as i64 * kv as i64;
                    s2 += p[2] as i64 * kv as i64;
                }
                out[xx * 3] = clip8(s0);
                out[xx * 3 + 1] = clip8(s1);
                out[xx * 3 + 2] = clip8(s2);
            }
        }
        tmp
    } else {
        src[y_first * w * 3..y_last * w * 3].to_vec()
    };
    if h == out_h {
        return tmp;
    }
    let mut out = vec![0u8; out_w * out_h * 3];
    let stride = out_w * 3;
    for (yy, &(ymin, n)) in vert.bounds.iter().enumerate() {
        let k = &vert.taps[yy * vert.ksize..yy * vert.ksize + n];
        let ymin = ymin - y_first;
        let orow = &mut out[yy * stride..(yy + 1) * stride];
        for (c, o) in orow.iter_mut().enumerate() {
            let mut s = half;
            for (i, &kv) in k.iter().enumerate() {
                s += tmp[(ymin + i) * stride + c] as i64 * kv as i64;
            }
            *o = clip8(s);
        }
    }
    out
}

/// Normalisation constants (per RGB channel) from the model manifest.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Normalize {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Normalize {
    pub const SAM: Normalize = Normalize {
        mean: [123.675, 116.28, 103.53],
        std: [58.395, 57.12, 57.375],
    };
}

/// Resize longest side, normalise, zero-pad bottom/right into `out` (NCHW, `3*S*S` floats,
/// reused across frames so the steady state does not allocate a new input tensor).
pub fn sam_input_into(
    frame: &RgbFrame,
    input_size: u32,
    norm: &Normalize,
    out: &mut [f32],
) -> Geometry {
    let g = Geometry::new(frame.width, frame.height, input_size);
    let s = input_size as usize;
    assert_eq!(out.len(), 3 * s * s, "input tensor buffer size");
    let (rw, rh) = (g.resized_w as usize, g.resized_h as usize);
    let resized = resize_bilinear_u8(
        &frame.pixels,
        frame.width as usize,
        frame.height as usize,
        rw,
        rh,
    );
    out.fill(0.0);
    for c in 0..3 {
        // (x - mean) / std in f32, as torch does on the float image.
        let (m, sd) = (norm.mean[c], norm.std[c]);
        let plane = &mut out[c * s * s..(c + 1) * s * s];
        for y in 0..rh {
            let src = &resized[y * rw * 3..(y + 1) * rw * 3];
            let dst = &mut plane[y * s..y * s + rw];
            for (x, d) in dst.iter_mut().enumerate() {
                *d = (src[x * 3 + c] as f32 - m) / sd;
            }
        }
    }
    g
}

/// CLIP input: the whole frame resized to `SxS` (Pillow bilinear, no crop, so saliency covers
/// the whole frame), `(v/255 - mean)/std` with the manifest's 0..255-scale constants. Written
/// into `out` (NCHW, `3*S*S`), reused across frames. quantize/clip_prep.py is the reference.
pub fn clip_input_into(frame: &RgbFrame, size: u32, norm: &Normalize, out: &mut [f32]) {
    let s = size as usize;
    assert_eq!(out.len(), 3 * s * s, "CLIP input buffer size");
    let resized = resize_bilinear_u8(
        &frame.pixels,
        frame.width as usize,
        frame.height as usize,
        s,
        s,
    );
    for c in 0..3 {
        let (m, sd) = (norm.mean[c] / 255.0, norm.std[c] / 255.0);
        let plane = &mut out[c * s * s..(c + 1) * s * s];
        for (d, px) in plane.iter_mut().zip(resized.chunks_exact(3)) {
            *d = (px[c] as f32 / 255.0 - m) / sd;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_rounds_like_sam() {
        // 800x540 (HC18): scale 1.28 -> 1024 x 691.2 -> 691
        let g = Geometry::new(800, 540, 1024);
        assert_eq!((g.resized_w, g.resized_h), (1024, 691));
        // 0.5 rounds up: 3 x 2 at 5 -> scale 5/3, 2*5/3 = 3.33 -> 3
        let g = Geometry::new(3, 2, 5);
        assert_eq!((g.resized_w, g.resized_h), (5, 3));
        let (x, y) = Geometry::new(800, 540, 1024).to_model(400.0, 270.0);
        assert!((x - 512.0).abs() < 1e-4 && (y - 345.5).abs() < 1e-3);
    }

    #[test]
    fn resize_identity_and_constant() {
        let src: Vec<u8> = (0..4 * 3 * 3).map(|i| i as u8).collect();
        assert_eq!(resize_bilinear_u8(&src, 4, 3, 4, 3), src);
        // A constant image stays constant at any size (taps sum to one).
        let c = vec![77u8; 13 * 7 * 3];
        for (ow, oh) in [(26, 14), (5, 3), (1, 1), (40, 2)] {
            assert!(
                resize_bilinear_u8(&c, 13, 7, ow, oh)
                    .iter()
                    .all(|&v| v == 77),
                "{ow}x{oh}"
            );
        }
    }

    #[test]
    fn normalise_and_pad() {
        let frame = RgbFrame {
            width: 2,
            height: 1,
            pixels: vec![255, 0, 10, 0, 255, 20],
        };
        let mut out = vec![1.0f32; 3 * 4 * 4];
        let g = sam_input_into(&frame, 4, &Normalize::SAM, &mut out);
        assert_eq!((g.resized_w, g.resized_h), (4, 2));
        // padding rows are exactly zero
        assert!(out[8..16].iter().all(|&v| v == 0.0));
        assert!(out[0] > 0.0 && out[16 + 16 + 8] == 0.0);
    }
}
