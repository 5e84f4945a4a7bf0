//! Prompts drawn from a ground-truth mask, for scoring the SAM stage alone (`sonomask eval
//! --prompt oracle-box|jittered-box|oracle-point`): the tight box, a loose box, a seeded jittered
//! box (each side moved by up to a fraction of the box size, as a person draws boxes) and one
//! interior click. `quantize/oracle_prompts.py` is the same code for the PyTorch reference, so
//! both score the same prompts.

use crate::mask::Mask;
use crate::prompting::prompt::{BoxPrompt, PointPrompt};

/// SplitMix64: a tiny, well-known generator both sides implement identically.
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// One stream per (seed, image index).
    pub fn new(seed: u64, index: u64) -> Self {
        SplitMix64((seed << 32) ^ index)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// How a box is drawn from the ground truth.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BoxNoise {
    /// Grow the box by this fraction of its width/height (half on each side): 0.1 = "+10%".
    pub loose: f64,
    /// Move each side by up to this fraction of the box's width/height, uniformly, seeded.
    pub jitter: f64,
    pub seed: u64,
}

/// The tight box of `gt`, loosened and jittered as `noise` says (image index `index` picks the
/// jitter stream), clamped to the image. None for an empty mask.
pub fn oracle_box(gt: &Mask, noise: &BoxNoise, index: u64) -> Option<BoxPrompt> {
    let (x0, y0, x1, y1) = gt.bbox()?;
    let tight = [x0 as f64, y0 as f64, x1 as f64, y1 as f64];
    let (bw, bh) = (tight[2] - tight[0], tight[3] - tight[1]);
    let (lx, ly) = (noise.loose * bw / 2.0, noise.loose * bh / 2.0);
    let grown = [tight[0] - lx, tight[1] - ly, tight[2] + lx, tight[3] + ly];
    let mut b = grown;
    if noise.jitter > 0.0 {
        let mut r = SplitMix64::new(noise.seed, index);
        let d: [f64; 4] = std::array::from_fn(|_| (2.0 * r.next_f64() - 1.0) * noise.jitter);
        b = [
            grown[0] + d[0] * bw,
            grown[1] + d[1] * bh,
            grown[2] + d[2] * bw,
            grown[3] + d[3] * bh,
        ];
        if !(b[0] < b[2] && b[1] < b[3]) {
            b = grown;
        }
    }
    let (w, h) = ((gt.width - 1) as f64, (gt.height - 1) as f64);
    let out = BoxPrompt {
        x0: b[0].clamp(0.0, w) as f32,
        y0: b[1].clamp(0.0, h) as f32,
        x1: b[2].clamp(0.0, w) as f32,
        y1: b[3].clamp(0.0, h) as f32,
    };
    if out.x0 < out.x1 && out.y0 < out.y1 {
        Some(out)
    } else {
        // a one-pixel-wide ground truth: its tight box as it is
        Some(BoxPrompt {
            x0: tight[0] as f32,
            y0: tight[1] as f32,
            x1: tight[2] as f32,
            y1: tight[3] as f32,
        })
    }
}

/// The ground-truth pixel farthest from the background (exact city-block distance; pixels
/// outside the image are not background), the first in raster order: a click well inside the
/// object. A mask that fills the image gets its box centre. None for an empty mask.
pub fn interior_point(gt: &Mask) -> Option<PointPrompt> {
    let (x0, y0, x1, y1) = gt.bbox()?;
    let (w, h) = (gt.width as usize, gt.height as usize);
    if gt.data.iter().all(|&v| v != 0) {
        return Some(PointPrompt {
            x: ((x0 + x1) / 2) as f32,
            y: ((y0 + y1) / 2) as f32,
            foreground: true,
        });
    }
    const INF: u32 = u32::MAX / 2;
    let mut d: Vec<u32> = gt
        .data
        .iter()
        .map(|&v| if v != 0 { INF } else { 0 })
        .collect();
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            if y > 0 {
                d[i] = d[i].min(d[i - w] + 1);
            }
            if x > 0 {
                d[i] = d[i].min(d[i - 1] + 1);
            }
        }
    }
    for y in (0..h).rev() {
        for x in (0..w).rev() {
            let i = y * w + x;
            if y + 1 < h {
                d[i] = d[i].min(d[i + w] + 1);
            }
            if x + 1 < w {
                d[i] = d[i].min(d[i + 1] + 1);
            }
        }
    }
    let (mut best, mut at) = (0u32, 0usize);
    for (i, &v) in d.iter().enumerate() {
        if v > best {
            (best, at) = (v, i);
        }
    }
    Some(PointPrompt {
        x: (at % w) as f32,
        y: (at / w) as f32,
        foreground: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rect(w: u32, h: u32, x0: u32, y0: u32, x1: u32, y1: u32) -> Mask {
        let mut m = Mask::empty(w, h);
        for y in y0..=y1 {
            for x in x0..=x1 {
                m.data[(y * w + x) as usize] = 1;
            }
        }
        m
    }

    #[test]
    fn splitmix_known_values() {
        // SplitMix64 from state 0 (the reference sequence of Vigna's splitmix64.c)
        let mut r = SplitMix64(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn tight_loose_and_jittered_boxes() {
        let m = rect(100, 80, 20, 10, 59, 49); // 40 x 40 px, box 20..59
        let tight = oracle_box(&m, &BoxNoise::default(), 0).unwrap();
        assert_eq!(
            (tight.x0, tight.y0, tight.x1, tight.y1),
            (20.0, 10.0, 59.0, 49.0)
        );
        let loose = BoxNoise {
            loose: 0.2,
            ..Default::default()
        };
        let b = oracle_box(&m, &loose, 0).unwrap();
        // size 39: +-3.9 on each side
        assert!(
            (b.x0 - 16.1).abs() < 1e-4 && (b.x1 - 62.9).abs() < 1e-4,
            "{b}"
        );
        let jit = BoxNoise {
            jitter: 0.1,
            seed: 7,
            ..Default::default()
        };
        let (a, b2) = (
            oracle_box(&m, &jit, 3).unwrap(),
            oracle_box(&m, &jit, 3).unwrap(),
        );
        assert_eq!(a, b2, "seeded: the same image gets the same box");
        assert_ne!(
            a,
            oracle_box(&m, &jit, 4).unwrap(),
            "another image, another box"
        );
        for (got, want) in [(a.x0, 20.0), (a.y0, 10.0), (a.x1, 59.0), (a.y1, 49.0)] {
            assert!((got - want).abs() <= 3.9 + 1e-4, "{a}");
        }
        // clamped to the image
        let edge = rect(50, 50, 0, 0, 49, 10);
        let b = oracle_box(&edge, &loose, 0).unwrap();
        assert_eq!((b.x0, b.y0, b.x1), (0.0, 0.0, 49.0));
        assert!(oracle_box(&Mask::empty(5, 5), &loose, 0).is_none());
    }

    #[test]
    fn interior_point_is_the_deepest_pixel() {
        // a 9x5 rectangle: the deepest pixels are on its middle row; the first is at x = 2 + 2
        let m = rect(20, 12, 2, 3, 10, 7);
        let p = interior_point(&m).unwrap();
        assert_eq!((p.x, p.y), (4.0, 5.0));
        assert!(m.get(p.x as u32, p.y as u32));
        // an L shape: the click lands inside it, not at the box centre
        let mut l = rect(30, 30, 0, 0, 29, 5);
        l.union_with(&rect(30, 30, 0, 0, 5, 29));
        let p = interior_point(&l).unwrap();
        assert!(l.get(p.x as u32, p.y as u32));
        assert!(interior_point(&Mask::empty(4, 4)).is_none());
        let full = rect(4, 4, 0, 0, 3, 3);
        assert_eq!(interior_point(&full).map(|p| (p.x, p.y)), Some((1.0, 1.0)));
    }
}
