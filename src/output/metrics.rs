//! Segmentation metrics: Dice, IoU and normalised surface distance (NSD) at a pixel tolerance,
//! and their summary (mean, std). Masks are one byte per pixel, non-zero = foreground.

/// Dice, IoU and NSD of one prediction against one ground truth.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scores {
    pub dice: f64,
    pub iou: f64,
    pub nsd: f64,
}

/// Dice and IoU; both masks empty counts as a perfect match (1.0).
pub fn overlap(pred: &[u8], gt: &[u8]) -> (f64, f64) {
    assert_eq!(pred.len(), gt.len(), "mask sizes differ");
    let (mut inter, mut p, mut g) = (0usize, 0usize, 0usize);
    for (&a, &b) in pred.iter().zip(gt) {
        let (a, b) = (a != 0, b != 0);
        inter += (a && b) as usize;
        p += a as usize;
        g += b as usize;
    }
    if p + g == 0 {
        return (1.0, 1.0);
    }
    let dice = 2.0 * inter as f64 / (p + g) as f64;
    let iou = inter as f64 / (p + g - inter) as f64;
    (dice, iou)
}

/// Boundary pixels: foreground with a 4-neighbour outside the mask or on the image edge.
pub fn boundary(m: &[u8], w: usize, h: usize) -> Vec<(i32, i32)> {
    let at = |x: isize, y: isize| {
        x >= 0
            && y >= 0
            && (x as usize) < w
            && (y as usize) < h
            && m[y as usize * w + x as usize] != 0
    };
    let mut out = Vec::new();
    for y in 0..h as isize {
        for x in 0..w as isize {
            if at(x, y) && !(at(x - 1, y) && at(x + 1, y) && at(x, y - 1) && at(x, y + 1)) {
                out.push((x as i32, y as i32));
            }
        }
    }
    out
}

/// NSD at `tol` pixels (Euclidean): the fraction of both boundaries lying within `tol` of the
/// other. Both empty: 1.0; exactly one empty: 0.0.
pub fn nsd(pred: &[u8], gt: &[u8], w: usize, h: usize, tol: f64) -> f64 {
    let (bp, bg) = (boundary(pred, w, h), boundary(gt, w, h));
    if bp.is_empty() && bg.is_empty() {
        return 1.0;
    }
    if bp.is_empty() || bg.is_empty() {
        return 0.0;
    }
    let r = tol.floor() as i32;
    let offsets: Vec<(i32, i32)> = (-r..=r)
        .flat_map(|dy| (-r..=r).map(move |dx| (dx, dy)))
        .filter(|&(dx, dy)| ((dx * dx + dy * dy) as f64) <= tol * tol)
        .collect();
    let mark = |b: &[(i32, i32)]| {
        let mut grid = vec![false; w * h];
        for &(x, y) in b {
            grid[y as usize * w + x as usize] = true;
        }
        grid
    };
    let (gp, gg) = (mark(&bp), mark(&bg));
    let near = |pts: &[(i32, i32)], other: &[bool]| {
        pts.iter()
            .filter(|&&(x, y)| {
                offsets.iter().any(|&(dx, dy)| {
                    let (nx, ny) = (x + dx, y + dy);
                    nx >= 0
                        && ny >= 0
                        && (nx as usize) < w
                        && (ny as usize) < h
                        && other[ny as usize * w + nx as usize]
                })
            })
            .count()
    };
    (near(&bp, &gg) + near(&bg, &gp)) as f64 / (bp.len() + bg.len()) as f64
}

pub fn score(pred: &[u8], gt: &[u8], w: usize, h: usize, tol: f64) -> Scores {
    let (dice, iou) = overlap(pred, gt);
    Scores {
        dice,
        iou,
        nsd: nsd(pred, gt, w, h, tol),
    }
}

/// Mean and (population) standard deviation; `(NaN, NaN)` for no values.
pub fn mean_std(v: &[f64]) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let m = v.iter().sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / v.len() as f64;
    (m, var.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rect(w: usize, h: usize, x0: usize, y0: usize, x1: usize, y1: usize) -> Vec<u8> {
        (0..w * h)
            .map(|i| ((x0..x1).contains(&(i % w)) && (y0..y1).contains(&(i / w))) as u8)
            .collect()
    }

    #[test]
    fn overlap_known_answers() {
        // 4x4 square vs the same square shifted right by 2: inter 8, union 24
        let a = rect(10, 10, 0, 0, 4, 4);
        let b = rect(10, 10, 2, 0, 6, 4);
        let (d, i) = overlap(&a, &b);
        assert!(
            (d - 0.5).abs() < 1e-12 && (i - 8.0 / 24.0).abs() < 1e-12,
            "{d} {i}"
        );
        assert_eq!(overlap(&a, &a), (1.0, 1.0));
        assert_eq!(overlap(&[0; 9], &[0; 9]), (1.0, 1.0));
        assert_eq!(overlap(&a, &[0; 100]), (0.0, 0.0));
    }

    #[test]
    fn nsd_known_answers() {
        let a = rect(20, 20, 5, 5, 10, 10);
        assert_eq!(nsd(&a, &a, 20, 20, 2.0), 1.0);
        // shifted by 2 px: every boundary pixel is within 2 px of the other boundary
        let b = rect(20, 20, 7, 5, 12, 10);
        assert_eq!(nsd(&a, &b, 20, 20, 2.0), 1.0);
        // shifted by 3: the 5x5 boundary has 16 pixels; per mask, the 5 on the far side column
        // plus... count by hand: left column of a (x=5) is 5..7 away from b's boundary x in {7,11}
        // -> x=5 is 2 from x=7: within. Shift 4 instead: a's x=5 column is 4 from 9 (b's left)
        let c = rect(20, 20, 9, 5, 14, 10);
        // a boundary: x=5 col (5 px), x=9 col (5), top/bottom rows x=6..8 (3+3) = 16
        // within 2 px of c's boundary (x in {9, 13}, rows 5 and 9 for x 9..13):
        //   x=9 col: 5 (on it); rows at x=7,8: |dx| to x=9 <= 2: x=7,8 -> 4; x=6: 3 away -> no;
        //   x=5 col: 4 away -> no. Total 9 of 16. c is the mirror image: 9 of 16.
        assert!(
            (nsd(&a, &c, 20, 20, 2.0) - 18.0 / 32.0).abs() < 1e-12,
            "{}",
            nsd(&a, &c, 20, 20, 2.0)
        );
        assert_eq!(nsd(&a, &[0; 400], 20, 20, 2.0), 0.0);
        assert_eq!(nsd(&[0; 400], &[0; 400], 20, 20, 2.0), 1.0);
    }

    #[test]
    fn boundary_of_a_square_and_the_edge() {
        assert_eq!(boundary(&rect(5, 5, 1, 1, 4, 4), 5, 5).len(), 8);
        assert_eq!(
            boundary(&[1; 9], 3, 3).len(),
            8,
            "image edge counts as outside"
        );
        let (m, s) = mean_std(&[1.0, 3.0]);
        assert_eq!((m, s), (2.0, 1.0));
        assert!(mean_std(&[]).0.is_nan());
    }
}
