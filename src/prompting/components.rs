//! Connected components of a binary image (8-connectivity, as OpenCV's default), with area and
//! bounding box per component. Two passes with union-find over a reusable label buffer.

/// One component: pixel count and inclusive bounding box.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Component {
    pub label: u32,
    pub area: usize,
    pub x0: u32,
    pub y0: u32,
    pub x1: u32,
    pub y1: u32,
}

fn find(parent: &mut [u32], mut a: u32) -> u32 {
    while parent[a as usize] != a {
        parent[a as usize] = parent[parent[a as usize] as usize];
        a = parent[a as usize];
    }
    a
}

fn union(parent: &mut [u32], a: u32, b: u32) -> u32 {
    let (ra, rb) = (find(parent, a), find(parent, b));
    let (lo, hi) = (ra.min(rb), ra.max(rb));
    parent[hi as usize] = lo;
    lo
}

/// Label the non-zero pixels of `mask` (`w x h`, row-major). `labels` receives 0 for
/// background and 1..=n for the components, numbered in raster order of their first pixel;
/// the components come back in the same order.
pub fn label(mask: &[u8], w: usize, h: usize, labels: &mut Vec<u32>) -> Vec<Component> {
    assert_eq!(mask.len(), w * h, "mask size");
    labels.clear();
    labels.resize(w * h, 0);
    let mut parent: Vec<u32> = vec![0];
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            if mask[i] == 0 {
                continue;
            }
            // already-visited neighbours: W, NW, N, NE
            let mut l = 0u32;
            let mut consider = |n: u32, parent: &mut Vec<u32>| {
                if n != 0 {
                    l = if l == 0 {
                        find(parent, n)
                    } else {
                        union(parent, l, n)
                    };
                }
            };
            if x > 0 {
                consider(labels[i - 1], &mut parent);
            }
            if y > 0 {
                let up = i - w;
                if x > 0 {
                    consider(labels[up - 1], &mut parent);
                }
                consider(labels[up], &mut parent);
                if x + 1 < w {
                    consider(labels[up + 1], &mut parent);
                }
            }
            if l == 0 {
                l = parent.len() as u32;
                parent.push(l);
            }
            labels[i] = l;
        }
    }
    // resolve to dense labels in raster order of first appearance
    let mut dense = vec![0u32; parent.len()];
    let mut comps: Vec<Component> = Vec::new();
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            if labels[i] == 0 {
                continue;
            }
            let root = find(&mut parent, labels[i]) as usize;
            if dense[root] == 0 {
                comps.push(Component {
                    label: comps.len() as u32 + 1,
                    area: 0,
                    x0: x as u32,
                    y0: y as u32,
                    x1: x as u32,
                    y1: y as u32,
                });
                dense[root] = comps.len() as u32;
            }
            let l = dense[root];
            labels[i] = l;
            let c = &mut comps[l as usize - 1];
            c.area += 1;
            c.x0 = c.x0.min(x as u32);
            c.x1 = c.x1.max(x as u32);
            c.y1 = y as u32;
        }
    }
    comps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(rows: &[&str]) -> (Vec<u8>, usize, usize) {
        let w = rows[0].len();
        let m = rows
            .iter()
            .flat_map(|r| r.bytes().map(|b| (b == b'#') as u8))
            .collect();
        (m, w, rows.len())
    }

    #[test]
    fn known_components() {
        let (m, w, h) = parse(&[
            "##....#", //
            "#..#..#", //
            "..#...#", //
            ".#....#", //
            "....###", //
        ]);
        let mut labels = Vec::new();
        let c = label(&m, w, h, &mut labels);
        // {(0,0),(1,0),(0,1)} ; the diagonal (3,1),(2,2),(1,3) joined by 8-connectivity; the right L
        assert_eq!(c.len(), 3);
        assert_eq!(
            (c[0].area, c[0].x0, c[0].y0, c[0].x1, c[0].y1),
            (3, 0, 0, 1, 1)
        );
        assert_eq!(
            (c[1].area, c[1].x0, c[1].y0, c[1].x1, c[1].y1),
            (7, 4, 0, 6, 4)
        );
        assert_eq!(
            (c[2].area, c[2].x0, c[2].y0, c[2].x1, c[2].y1),
            (3, 1, 1, 3, 3)
        );
        assert_eq!(labels[0], 1);
        assert_eq!(labels[6], 2);
        assert_eq!(labels[w + 3], 3);
    }

    #[test]
    fn u_shape_merges_late() {
        // two arms that only meet at the bottom row: union-find must merge them
        let (m, w, h) = parse(&["#.#", "#.#", "###"]);
        let mut labels = Vec::new();
        let c = label(&m, w, h, &mut labels);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].area, 7);
        assert!(labels.iter().all(|&l| l <= 1));
    }

    #[test]
    fn empty_and_full() {
        let mut labels = Vec::new();
        assert!(label(&[0; 12], 4, 3, &mut labels).is_empty());
        let c = label(&[1; 12], 4, 3, &mut labels);
        assert_eq!((c.len(), c[0].area, c[0].x1, c[0].y1), (1, 12, 3, 2));
    }
}
