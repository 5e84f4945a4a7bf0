//! Binary masks and SAM mask post-processing.
//!
//! [`upscale_logits`] reproduces the official `Sam.postprocess_masks` exactly: bilinear
//! (align_corners=False) from the low-res grid to the square model input, crop to the resized
//! image, bilinear again to the original size. Each bilinear step is separable and evaluates the
//! same products in the same order as torch's CPU kernel, so the logits agree to float rounding.

use crate::preprocess::Geometry;

/// An inclusive pixel box `(x0, y0, x1, y1)`.
pub type Bbox = (u32, u32, u32, u32);

/// A binary mask, one byte per pixel (0 or 1), row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mask {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

impl Mask {
    pub fn empty(width: u32, height: u32) -> Self {
        Mask {
            width,
            height,
            data: vec![0; width as usize * height as usize],
        }
    }

    pub fn from_logits(width: u32, height: u32, logits: &[f32], threshold: f32) -> Self {
        Mask {
            width,
            height,
            data: logits.iter().map(|&v| (v > threshold) as u8).collect(),
        }
    }

    pub fn get(&self, x: u32, y: u32) -> bool {
        self.data[y as usize * self.width as usize + x as usize] != 0
    }

    pub fn area(&self) -> usize {
        self.data.iter().filter(|&&v| v != 0).count()
    }

    /// Tight bounding box `(x0, y0, x1, y1)`, inclusive, or None for an empty mask.
    pub fn bbox(&self) -> Option<(u32, u32, u32, u32)> {
        let w = self.width as usize;
        let mut b: Option<(u32, u32, u32, u32)> = None;
        for (y, row) in self.data.chunks_exact(w).enumerate() {
            let Some(first) = row.iter().position(|&v| v != 0) else {
                continue;
            };
            let last = row.iter().rposition(|&v| v != 0).unwrap_or(first);
            let (y, first, last) = (y as u32, first as u32, last as u32);
            b = Some(match b {
                None => (first, y, last, y),
                Some((x0, y0, x1, _)) => (x0.min(first), y0, x1.max(last), y),
            });
        }
        b
    }

    /// Pixel-wise OR (for prompts that produce several masks, e.g. one per box).
    pub fn union_with(&mut self, other: &Mask) {
        assert_eq!((self.width, self.height), (other.width, other.height));
        self.data
            .iter_mut()
            .zip(&other.data)
            .for_each(|(a, &b)| *a |= b);
    }

    /// Intersection over union with another mask of the same size (1.0 when both are empty).
    pub fn iou(&self, other: &Mask) -> f64 {
        let (mut i, mut u) = (0usize, 0usize);
        for (&a, &b) in self.data.iter().zip(&other.data) {
            i += (a & b) as usize;
            u += (a | b) as usize;
        }
        if u == 0 { 1.0 } else { i as f64 / u as f64 }
    }

    /// 8-bit grayscale PNG-ready buffer (0 / 255).
    pub fn to_gray8(&self) -> Vec<u8> {
        self.data.iter().map(|&v| v * 255).collect()
    }
}

/// torch `upsample_bilinear2d` source index and weight (align_corners=False), in f32 like torch.
fn taps(in_size: usize, out_size: usize, n: usize) -> Vec<(usize, usize, f32, f32)> {
    let scale = in_size as f32 / out_size as f32;
    (0..n)
        .map(|d| {
            let src = (scale * (d as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (src as usize).min(in_size - 1);
            let i1 = if i0 < in_size - 1 { i0 + 1 } else { i0 };
            let l1 = src - i0 as f32;
            (i0, i1, 1.0 - l1, l1)
        })
        .collect()
}

/// Bilinear resize of a `sw x sh` plane onto an `ow x oh` grid, computing only the top-left
/// `cw x ch` window of that grid (the crop SAM keeps).
fn bilinear(
    src: &[f32],
    sw: usize,
    sh: usize,
    ow: usize,
    oh: usize,
    cw: usize,
    ch: usize,
) -> Vec<f32> {
    let tx = taps(sw, ow, cw);
    let ty = taps(sh, oh, ch);
    let mut out = vec![0f32; cw * ch];
    for (y, &(y0, y1, h0, h1)) in ty.iter().enumerate() {
        let r0 = &src[y0 * sw..(y0 + 1) * sw];
        let r1 = &src[y1 * sw..(y1 + 1) * sw];
        let o = &mut out[y * cw..(y + 1) * cw];
        for (v, &(x0, x1, w0, w1)) in o.iter_mut().zip(&tx) {
            *v = h0 * (w0 * r0[x0] + w1 * r0[x1]) + h1 * (w0 * r1[x0] + w1 * r1[x1]);
        }
    }
    out
}

/// Low-res mask logits (`low x low`, covering the padded square input) -> logits at the original
/// image size, as `Sam.postprocess_masks`.
pub fn upscale_logits(low_res: &[f32], low: usize, g: &Geometry) -> Vec<f32> {
    assert_eq!(low_res.len(), low * low, "low-res mask size");
    let s = g.input_size as usize;
    let (rw, rh) = (g.resized_w as usize, g.resized_h as usize);
    let cropped = bilinear(low_res, low, low, s, s, rw, rh);
    let (w, h) = (g.orig_w as usize, g.orig_h as usize);
    bilinear(&cropped, rw, rh, w, h, w, h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bbox_area_union_iou() {
        let mut m = Mask::empty(5, 4);
        assert_eq!(m.bbox(), None);
        m.data[5 + 1] = 1; // (1,1)
        m.data[3 * 5 + 3] = 1; // (3,3)
        assert_eq!(m.bbox(), Some((1, 1, 3, 3)));
        assert_eq!(m.area(), 2);
        let mut n = Mask::empty(5, 4);
        n.data[5 + 1] = 1;
        assert_eq!(m.iou(&n), 0.5);
        n.union_with(&m);
        assert_eq!(n, m);
        assert_eq!(Mask::empty(2, 2).iou(&Mask::empty(2, 2)), 1.0);
    }

    #[test]
    fn bilinear_matches_hand_values() {
        // 2x1 -> 4x1, align_corners=False: src = (d+0.5)/2-0.5 -> [0(clamped), 0.25, 0.75, 1.25->i0=1]
        let out = bilinear(&[0.0, 4.0], 2, 1, 4, 1, 4, 1);
        assert_eq!(out, vec![0.0, 1.0, 3.0, 4.0]);
        // constant planes stay constant through the full post-processing
        let g = Geometry::new(300, 200, 64);
        let up = upscale_logits(&vec![2.5; 16 * 16], 16, &g);
        assert_eq!(up.len(), 300 * 200);
        assert!(up.iter().all(|&v| (v - 2.5).abs() < 1e-6));
    }

    #[test]
    fn threshold_is_strict() {
        let m = Mask::from_logits(3, 1, &[-1.0, 0.0, 0.5], 0.0);
        assert_eq!(m.data, vec![0, 0, 1]);
        assert_eq!(m.to_gray8(), vec![0, 0, 255]);
    }
}
