//! The overlay a clinician reads: the frame, the mask tinted, its outline drawn solid, and the
//! prompt box (if any) outlined in a second colour so the input is visible next to the answer.

use crate::image_io::RgbFrame;
use crate::mask::Mask;
use crate::prompt::BoxPrompt;

const TINT: [u8; 3] = [0, 220, 90];
const OUTLINE: [u8; 3] = [255, 230, 0];
const BOX: [u8; 3] = [0, 170, 255];
const ALPHA: u16 = 90; // of 256: the anatomy under the tint stays readable

/// Line thickness that stays visible at any image size (1 px per ~400 px of the short side).
fn thickness(w: u32, h: u32) -> u32 {
    (w.min(h) / 400).max(1)
}

pub fn render(frame: &RgbFrame, mask: &Mask, bbox: Option<&BoxPrompt>) -> RgbFrame {
    assert_eq!((frame.width, frame.height), (mask.width, mask.height));
    let (w, h) = (frame.width as usize, frame.height as usize);
    let mut out = frame.pixels.clone();
    let t = thickness(frame.width, frame.height) as isize;
    let inside = |x: isize, y: isize| {
        x >= 0
            && y >= 0
            && (x as usize) < w
            && (y as usize) < h
            && mask.data[y as usize * w + x as usize] != 0
    };
    for y in 0..h {
        for x in 0..w {
            if mask.data[y * w + x] == 0 {
                continue;
            }
            let (xi, yi) = (x as isize, y as isize);
            // Outline: a mask pixel with a non-mask pixel within `t` (4-neighbourhood).
            let edge = (1..=t).any(|d| {
                !inside(xi - d, yi)
                    || !inside(xi + d, yi)
                    || !inside(xi, yi - d)
                    || !inside(xi, yi + d)
            });
            let p = &mut out[(y * w + x) * 3..(y * w + x) * 3 + 3];
            if edge {
                p.copy_from_slice(&OUTLINE);
            } else {
                for c in 0..3 {
                    p[c] = ((p[c] as u16 * (256 - ALPHA) + TINT[c] as u16 * ALPHA) >> 8) as u8;
                }
            }
        }
    }
    if let Some(b) = bbox {
        let clampx = |v: f32| (v.round().max(0.0) as usize).min(w - 1);
        let clampy = |v: f32| (v.round().max(0.0) as usize).min(h - 1);
        let (x0, x1, y0, y1) = (clampx(b.x0), clampx(b.x1), clampy(b.y0), clampy(b.y1));
        let mut put =
            |x: usize, y: usize| out[(y * w + x) * 3..(y * w + x) * 3 + 3].copy_from_slice(&BOX);
        for d in 0..t as usize {
            for x in x0..=x1 {
                put(x, (y0 + d).min(h - 1));
                put(x, y1.saturating_sub(d));
            }
            for y in y0..=y1 {
                put((x0 + d).min(w - 1), y);
                put(x1.saturating_sub(d), y);
            }
        }
    }
    RgbFrame {
        width: frame.width,
        height: frame.height,
        pixels: out,
    }
}

/// A blue-cyan-yellow-red ramp (jet-like) for saliency in [0, 1].
fn heat(v: f32) -> [u8; 3] {
    let v = v.clamp(0.0, 1.0);
    let ch = |c: f32| ((1.5 - (4.0 * v - c).abs()).clamp(0.0, 1.0) * 255.0) as u8;
    [ch(3.0), ch(2.0), ch(1.0)]
}

/// The saliency map as a heat map over the frame (half and half), with the boxes the prompt
/// rules derived from it drawn on top: the picture that shows *why* SAM was prompted there.
pub fn heatmap(frame: &RgbFrame, values: &[f32], boxes: &[BoxPrompt]) -> RgbFrame {
    assert_eq!(values.len(), (frame.width * frame.height) as usize);
    let mut out = frame.clone();
    for (p, &v) in out.pixels.chunks_exact_mut(3).zip(values) {
        let h = heat(v);
        for c in 0..3 {
            p[c] = ((p[c] as u16 + h[c] as u16) / 2) as u8;
        }
    }
    let empty = Mask::empty(frame.width, frame.height);
    for b in boxes {
        out = render(&out, &empty, Some(b));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tints_inside_outlines_edge_leaves_outside() {
        let frame = RgbFrame::new(5, 5, vec![100; 75]).unwrap();
        let mut m = Mask::empty(5, 5);
        for y in 1..4 {
            for x in 1..4 {
                m.data[y * 5 + x] = 1;
            }
        }
        let o = render(&frame, &m, None);
        assert_eq!(o.pixel(0, 0), [100, 100, 100]);
        assert_eq!(o.pixel(1, 1), OUTLINE);
        let c = o.pixel(2, 2);
        assert!(c[1] > 100 && c[0] < 100, "tinted centre {c:?}");
        let b = BoxPrompt {
            x0: 0.0,
            y0: 0.0,
            x1: 4.0,
            y1: 4.0,
        };
        assert_eq!(render(&frame, &m, Some(&b)).pixel(0, 2), BOX);
    }

    #[test]
    fn heat_ramp_ends() {
        assert_eq!(heat(0.0), [0, 0, 127]);
        assert_eq!(heat(1.0), [127, 0, 0]);
        let f = RgbFrame::new(2, 1, vec![0; 6]).unwrap();
        let h = heatmap(&f, &[0.0, 1.0], &[]);
        assert!(h.pixel(0, 0)[2] > h.pixel(0, 0)[0] && h.pixel(1, 0)[0] > h.pixel(1, 0)[2]);
    }
}
