//! SAM image preprocessing, bit-exact with each model family's official recipe. The manifest's
//! family picks the [`Recipe`]; nothing else in the runtime knows which model it runs.
//!
//! - MobileSAM (`ResizeLongestSide` + `Sam.preprocess`): Pillow bilinear, `(x - mean) / std`,
//!   box corners mapped per axis (`apply_coords`).
//! - LiteMedSAM (`CVPR24_LiteMedSAM_infer.py`): OpenCV INTER_AREA ([`area`]), min-max to [0, 1]
//!   over the resized image, box corners `int(v * S / max(H, W))`.
//!
//! The official MobileSAM predictor resizes with torchvision on a PIL image, i.e. Pillow's bilinear
//! resampler (a triangle filter widened by the scale factor when shrinking, 22-bit fixed-point
//! coefficients, horizontal pass first, each pass rounded and clamped to u8). [`resize_bilinear_u8`]
//! is a port of that resampler (Pillow `libImaging/Resample.c`), so the tensor the encoder sees is
//! the one the official code would feed it; `tests/preprocess_reference.rs` pins this on real images.

mod area;

pub use area::resize_area_u8;

use crate::input::image_io::RgbFrame;

/// How prompt coordinates in original pixels reach the model input frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CoordRule {
    /// SAM's `apply_coords`: each axis by its own resize ratio.
    #[default]
    PerAxis,
    /// LiteMedSAM's `resize_box_to_256`: `int(v * S / max(H, W))` for box corners (points are
    /// scaled by the same ratio without truncation: the official recipe has no points).
    LongestSideFloor,
}

/// Where the original image lands in the square model input, and how coordinates map there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub orig_w: u32,
    pub orig_h: u32,
    /// Size of the image after the longest-side resize (before padding).
    pub resized_w: u32,
    pub resized_h: u32,
    /// Side of the square model input (1024 for MobileSAM, 256 for LiteMedSAM).
    pub input_size: u32,
    pub coords: CoordRule,
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
            coords: CoordRule::PerAxis,
        }
    }

    /// The same geometry with another coordinate rule.
    pub fn with_coords(self, coords: CoordRule) -> Self {
        Geometry { coords, ..self }
    }

    /// A point: original pixel coordinates -> model input frame.
    pub fn to_model(&self, x: f32, y: f32) -> (f32, f32) {
        match self.coords {
            CoordRule::PerAxis => (
                (x as f64 * (self.resized_w as f64 / self.orig_w as f64)) as f32,
                (y as f64 * (self.resized_h as f64 / self.orig_h as f64)) as f32,
            ),
            CoordRule::LongestSideFloor => {
                let r = self.longest_ratio();
                ((x as f64 * r) as f32, (y as f64 * r) as f32)
            }
        }
    }

    /// A box corner: as a point, truncated where the family's recipe truncates.
    pub fn box_corner_to_model(&self, x: f32, y: f32) -> (f32, f32) {
        match self.coords {
            CoordRule::PerAxis => self.to_model(x, y),
            CoordRule::LongestSideFloor => {
                let r = self.longest_ratio();
                ((x as f64 * r).floor() as f32, (y as f64 * r).floor() as f32)
            }
        }
    }

    fn longest_ratio(&self) -> f64 {
        self.input_size as f64 / self.orig_w.max(self.orig_h) as f64
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

/// The longest-side resampler of a family's recipe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resampler {
    /// Pillow `Image.resize(BILINEAR)` (torchvision on a PIL image).
    PillowBilinear,
    /// OpenCV `cv2.resize(..., INTER_AREA)`.
    OpencvArea,
}

/// How the resized pixels become model input.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scaling {
    /// `(x - mean) / std` per channel, in f32 as torch computes it.
    MeanStd(Normalize),
    /// `(x - min) / max(max - min, 1e-8)` over the whole resized image (all channels), in f64
    /// as numpy computes it, then f32. A flat image becomes all zeros (the official result).
    MinMax,
}

/// A model family's input recipe: everything that differs between families before the encoder.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Recipe {
    pub input_size: u32,
    pub resampler: Resampler,
    pub scaling: Scaling,
    pub coords: CoordRule,
}

impl Recipe {
    /// MobileSAM's recipe at a given input size (used by tests and older manifests).
    pub fn mobilesam(input_size: u32, norm: Normalize) -> Self {
        Recipe {
            input_size,
            resampler: Resampler::PillowBilinear,
            scaling: Scaling::MeanStd(norm),
            coords: CoordRule::PerAxis,
        }
    }

    /// LiteMedSAM's recipe (`CVPR24_LiteMedSAM_infer.py`) at a given input size.
    pub fn lite_medsam(input_size: u32) -> Self {
        Recipe {
            input_size,
            resampler: Resampler::OpencvArea,
            scaling: Scaling::MinMax,
            coords: CoordRule::LongestSideFloor,
        }
    }

    /// The geometry this recipe gives a `w x h` frame.
    pub fn geometry(&self, w: u32, h: u32) -> Geometry {
        Geometry::new(w, h, self.input_size).with_coords(self.coords)
    }

    /// The resized (unpadded) RGB8 image the family's encoder sees.
    pub fn resize(&self, frame: &RgbFrame, g: &Geometry) -> Vec<u8> {
        let (w, h) = (frame.width as usize, frame.height as usize);
        let (rw, rh) = (g.resized_w as usize, g.resized_h as usize);
        match self.resampler {
            Resampler::PillowBilinear => resize_bilinear_u8(&frame.pixels, w, h, rw, rh),
            Resampler::OpencvArea => resize_area_u8(&frame.pixels, w, h, rw, rh),
        }
    }
}

/// Resize longest side, normalise, zero-pad bottom/right into `out` (NCHW, `3*S*S` floats,
/// reused across frames so the steady state does not allocate a new input tensor).
pub fn sam_input_into(frame: &RgbFrame, recipe: &Recipe, out: &mut [f32]) -> Geometry {
    let g = recipe.geometry(frame.width, frame.height);
    let s = recipe.input_size as usize;
    assert_eq!(out.len(), 3 * s * s, "input tensor buffer size");
    let (rw, rh) = (g.resized_w as usize, g.resized_h as usize);
    let resized = recipe.resize(frame, &g);
    out.fill(0.0);
    // The scaling resolved once per frame, in the precision each reference uses.
    enum Resolved {
        MeanStd(Normalize),
        MinMax { lo: u8, range: f64 },
    }
    let scale = match recipe.scaling {
        Scaling::MeanStd(norm) => Resolved::MeanStd(norm),
        Scaling::MinMax => {
            let (lo, hi) = resized
                .iter()
                .fold((u8::MAX, u8::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            if lo == hi {
                log::warn!("flat image (every pixel {lo}): the model input is all zeros");
            }
            Resolved::MinMax {
                lo,
                range: ((hi - lo) as f64).max(1e-8),
            }
        }
    };
    for c in 0..3 {
        let plane = &mut out[c * s * s..(c + 1) * s * s];
        for y in 0..rh {
            let src = resized[y * rw * 3..(y + 1) * rw * 3]
                .iter()
                .skip(c)
                .step_by(3);
            let dst = &mut plane[y * s..y * s + rw];
            match scale {
                Resolved::MeanStd(norm) => {
                    let (m, sd) = (norm.mean[c], norm.std[c]);
                    dst.iter_mut()
                        .zip(src)
                        .for_each(|(d, &v)| *d = (v as f32 - m) / sd);
                }
                Resolved::MinMax { lo, range } => {
                    dst.iter_mut()
                        .zip(src)
                        .for_each(|(d, &v)| *d = ((v - lo) as f64 / range) as f32);
                }
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
        let g = sam_input_into(&frame, &Recipe::mobilesam(4, Normalize::SAM), &mut out);
        assert_eq!((g.resized_w, g.resized_h), (4, 2));
        // padding rows are exactly zero
        assert!(out[8..16].iter().all(|&v| v == 0.0));
        assert!(out[0] > 0.0 && out[16 + 16 + 8] == 0.0);
    }

    #[test]
    fn min_max_scales_the_whole_image_and_pads_with_zero() {
        let frame = RgbFrame {
            width: 2,
            height: 1,
            pixels: vec![10, 20, 30, 40, 50, 110],
        };
        let mut out = vec![9.0f32; 3 * 2 * 2];
        let g = sam_input_into(&frame, &Recipe::lite_medsam(2), &mut out);
        assert_eq!((g.resized_w, g.resized_h), (2, 1));
        // min 10, max 110 over all channels: (v - 10) / 100
        assert_eq!(&out[0..2], &[0.0, 0.3]);
        assert_eq!(&out[4..6], &[0.1, 0.4]);
        assert_eq!(&out[8..10], &[0.2, 1.0]);
        assert!([2, 3, 6, 7, 10, 11].iter().all(|&i| out[i] == 0.0));
        // a flat image: all zeros, no division by zero
        let flat = RgbFrame {
            width: 2,
            height: 2,
            pixels: vec![7; 12],
        };
        sam_input_into(&flat, &Recipe::lite_medsam(2), &mut out);
        assert!(out.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn lite_medsam_boxes_truncate_on_the_longest_side() {
        // 800x540 at 256: ratio 0.32; 101 * 0.32 = 32.32 -> 32, 399 * 0.32 = 127.68 -> 127
        let g = Recipe::lite_medsam(256).geometry(800, 540);
        assert_eq!((g.resized_w, g.resized_h), (256, 173));
        assert_eq!(g.box_corner_to_model(101.0, 399.0), (32.0, 127.0));
        let (x, y) = g.to_model(101.0, 399.0);
        assert!((x - 32.32).abs() < 1e-4 && (y - 127.68).abs() < 1e-4);
        // MobileSAM's rule keeps the fraction for both
        let m = Recipe::mobilesam(1024, Normalize::SAM).geometry(800, 540);
        assert_eq!(
            m.box_corner_to_model(400.0, 270.0),
            m.to_model(400.0, 270.0)
        );
    }
}
