//! The overlay a clinician reads: the frame, the mask tinted, its outline drawn solid, and the
//! prompt box (if any) outlined in a second colour so the input is visible next to the answer.

use crate::input::image_io::RgbFrame;
use crate::mask::{Bbox, Mask};
use crate::prompting::prompt::BoxPrompt;

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
    let mut out = RgbFrame {
        width: frame.width,
        height: frame.height,
        pixels: out,
    };
    if let Some(b) = bbox {
        draw_box(&mut out, b);
    }
    out
}

/// The prompt box outlined in its colour, as thick as the mask outline.
fn draw_box(f: &mut RgbFrame, b: &BoxPrompt) {
    let (w, h) = (f.width as usize, f.height as usize);
    let t = thickness(f.width, f.height) as usize;
    let clampx = |v: f32| (v.round().max(0.0) as usize).min(w - 1);
    let clampy = |v: f32| (v.round().max(0.0) as usize).min(h - 1);
    let (x0, x1, y0, y1) = (clampx(b.x0), clampx(b.x1), clampy(b.y0), clampy(b.y1));
    let mut put =
        |x: usize, y: usize| f.pixels[(y * w + x) * 3..(y * w + x) * 3 + 3].copy_from_slice(&BOX);
    for d in 0..t {
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
    for b in boxes {
        draw_box(&mut out, b);
    }
    out
}

/// 3x5 glyphs for the labels of the candidate picture (no font files on a device).
fn glyph(c: char) -> [u8; 5] {
    match c {
        '0' => [0b111, 0b101, 0b101, 0b101, 0b111],
        '1' => [0b010, 0b110, 0b010, 0b010, 0b111],
        '2' => [0b111, 0b001, 0b111, 0b100, 0b111],
        '3' => [0b111, 0b001, 0b111, 0b001, 0b111],
        '4' => [0b101, 0b101, 0b111, 0b001, 0b001],
        '5' => [0b111, 0b100, 0b111, 0b001, 0b111],
        '6' => [0b111, 0b100, 0b111, 0b101, 0b111],
        '7' => [0b111, 0b001, 0b010, 0b010, 0b010],
        '8' => [0b111, 0b101, 0b111, 0b101, 0b111],
        '9' => [0b111, 0b101, 0b111, 0b001, 0b111],
        '.' => [0, 0, 0, 0, 0b010],
        '-' => [0, 0, 0b111, 0, 0],
        '#' => [0b101, 0b111, 0b101, 0b111, 0b101],
        '*' => [0, 0b101, 0b010, 0b101, 0],
        'H' => [0b101, 0b101, 0b111, 0b101, 0b101],
        'C' => [0b111, 0b100, 0b100, 0b100, 0b111],
        'M' => [0b101, 0b111, 0b111, 0b101, 0b101],
        'P' => [0b111, 0b101, 0b111, 0b100, 0b100],
        'X' => [0b101, 0b101, 0b010, 0b101, 0b101],
        _ => [0; 5],
    }
}

/// Draw `text` with its top-left at (x, y), each glyph pixel `scale` px, on a dark plate.
pub fn label(f: &mut RgbFrame, x: u32, y: u32, text: &str, color: [u8; 3], scale: u32) {
    let (w, h) = (f.width as i64, f.height as i64);
    let mut put = |px: i64, py: i64, c: [u8; 3]| {
        if px >= 0 && py >= 0 && px < w && py < h {
            let i = ((py * w + px) * 3) as usize;
            f.pixels[i..i + 3].copy_from_slice(&c);
        }
    };
    let n = text.chars().count() as i64;
    for py in 0..(7 * scale) as i64 {
        for px in 0..(n * 4 * scale as i64 + scale as i64) {
            put(x as i64 + px, y as i64 + py, [0, 0, 0]);
        }
    }
    for (k, ch) in text.chars().enumerate() {
        for (row, bits) in glyph(ch).iter().enumerate() {
            for col in 0..3 {
                if bits >> (2 - col) & 1 == 1 {
                    for dy in 0..scale as i64 {
                        for dx in 0..scale as i64 {
                            let gx = x as i64 + (k as i64 * 4 + col + 1) * scale as i64 + dx;
                            let gy = y as i64 + (row as i64 + 1) * scale as i64 + dy;
                            put(gx, gy, color);
                        }
                    }
                }
            }
        }
    }
}

/// A 2-px line from `a` to `b` (pixel coordinates, clipped to the frame).
pub fn line(f: &mut RgbFrame, a: (f64, f64), b: (f64, f64), color: [u8; 3]) {
    let steps = ((b.0 - a.0).abs().max((b.1 - a.1).abs()).ceil() as usize).clamp(1, 1 << 16);
    for i in 0..=steps {
        let t = i as f64 / steps as f64;
        let (x, y) = (a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t);
        for (dx, dy) in [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0)] {
            let (px, py) = ((x + dx).round(), (y + dy).round());
            if px >= 0.0 && py >= 0.0 && px < f.width as f64 && py < f.height as f64 {
                let i = (py as usize * f.width as usize + px as usize) * 3;
                f.pixels[i..i + 3].copy_from_slice(&color);
            }
        }
    }
}

/// The measurement drawn on the overlay: the head's ellipse, or the lesion's two calipers, and
/// the figure beside them (`HC 183.2MM`, `54.1X32.0MM`; `PX` without a pixel spacing).
pub fn measurements(
    f: &mut RgbFrame,
    m: &crate::output::measure::Measurements,
    target: crate::output::measure::Target,
    spacing: Option<crate::output::measure::Spacing>,
) {
    const COLOR: [u8; 3] = [255, 225, 25];
    let unit = if m.unit == crate::output::measure::Unit::Mm {
        "MM"
    } else {
        "PX"
    };
    let (text, anchor) = match (target, m.ellipse, m.hc) {
        (crate::output::measure::Target::Hc, Some(e), Some(hc)) => {
            let pts = e.outline_px(spacing, 180);
            for (k, &p) in pts.iter().enumerate() {
                line(f, p, pts[(k + 1) % pts.len()], COLOR);
            }
            let top = pts.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
            (format!("HC {hc:.1}{unit}"), (e.cx, top))
        }
        _ => {
            for c in [m.long_axis, m.short_axis] {
                line(f, c.from, c.to, COLOR);
            }
            let top = m.long_axis.from.1.min(m.long_axis.to.1);
            let x = 0.5 * (m.long_axis.from.0 + m.long_axis.to.0);
            (
                format!("{:.1}X{:.1}{unit}", m.long_axis.length, m.short_axis.length),
                (x, top),
            )
        }
    };
    let scale = (f.width / 320).clamp(1, 4);
    let width = text.chars().count() as f64 * 4.0 * scale as f64;
    let x = (anchor.0 - width / 2.0).clamp(0.0, (f.width as f64 - width).max(0.0));
    let y = (anchor.1 - 9.0 * scale as f64).max(0.0);
    label(f, x as u32, y as u32, &text, COLOR, scale);
}

const PALETTE: [[u8; 3]; 8] = [
    [230, 25, 75],
    [60, 180, 75],
    [255, 225, 25],
    [0, 130, 200],
    [245, 130, 48],
    [145, 30, 180],
    [70, 240, 240],
    [240, 50, 230],
];

/// SaLIP's candidates: every everything-mode mask outlined in its own colour and labelled
/// `#index score` (the CLIP score of its crop); the retrieved ones tinted and starred. The
/// picture a person opens to see why a mask was chosen.
pub fn candidates(
    frame: &RgbFrame,
    masks: &[(&Mask, Bbox)],
    scores: &[f32],
    chosen: &[usize],
) -> RgbFrame {
    let mut out = frame.clone();
    let (w, h) = (frame.width as usize, frame.height as usize);
    for (i, (m, _)) in masks.iter().enumerate() {
        let c = PALETTE[i % PALETTE.len()];
        let picked = chosen.contains(&i);
        for y in 0..h {
            for x in 0..w {
                if m.data[y * w + x] == 0 {
                    continue;
                }
                let edge = x == 0
                    || y == 0
                    || x + 1 == w
                    || y + 1 == h
                    || m.data[y * w + x - 1] == 0
                    || m.data[y * w + x + 1] == 0
                    || m.data[(y - 1) * w + x] == 0
                    || m.data[(y + 1) * w + x] == 0;
                let p = &mut out.pixels[(y * w + x) * 3..(y * w + x) * 3 + 3];
                if edge {
                    p.copy_from_slice(&c);
                } else if picked {
                    for k in 0..3 {
                        p[k] = ((p[k] as u16 * 160 + c[k] as u16 * 96) >> 8) as u8;
                    }
                }
            }
        }
    }
    let scale = thickness(frame.width, frame.height) + 1;
    for (i, (_, b)) in masks.iter().enumerate() {
        let star = if chosen.contains(&i) { "*" } else { "" };
        let s = scores.get(i).map(|s| format!("{s:.2}")).unwrap_or_default();
        label(
            &mut out,
            b.0,
            b.1,
            &format!("{star}#{i} {s}"),
            PALETTE[i % PALETTE.len()],
            scale,
        );
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
    fn labels_and_candidates_draw() {
        let mut f = RgbFrame::new(40, 20, vec![128; 40 * 20 * 3]).unwrap();
        label(&mut f, 0, 0, "1", [255, 0, 0], 1);
        // '1' = 010/110/010/010/111 at (1..4, 1..6): its top row's middle pixel is set
        assert_eq!(f.pixel(2, 1), [255, 0, 0]);
        assert_eq!(f.pixel(1, 1), [0, 0, 0], "plate behind the glyph");
        let frame = RgbFrame::new(60, 60, vec![100; 60 * 60 * 3]).unwrap();
        let mut m = Mask::empty(60, 60);
        for y in 30..55 {
            for x in 30..55 {
                m.data[y * 60 + x] = 1;
            }
        }
        let o = candidates(&frame, &[(&m, (30, 30, 54, 54))], &[0.5], &[0]);
        assert_eq!(o.pixel(5, 5), [100, 100, 100], "outside: untouched");
        // below the label plate (7 glyph rows of 2 px from y=30), inside the mask
        assert_ne!(
            o.pixel(40, 50),
            [100, 100, 100],
            "the chosen mask is tinted"
        );
        assert_eq!(o.pixel(30, 50), PALETTE[0], "its outline in its colour");
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
