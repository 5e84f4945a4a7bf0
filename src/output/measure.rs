//! Biometry from a mask: the numbers a sonographer writes into the report (head circumference,
//! a lesion's diameters and area), in millimetres when the pixel spacing is known.
//!
//! The measured structure is the mask's largest 8-connected component with its holes filled
//! (the head, the lesion). Its outer boundary is the set of pixel edges between it and the
//! outside; the ellipse and the calipers are fitted to the midpoints of those edges, so a
//! rasterised ellipse gives back its own axes (centre-of-pixel points would sit half a pixel
//! inside). Coordinates are scaled by the spacing before any fit, so anisotropic pixels measure
//! right. Pure: no I/O, buffers reusable through [`Scratch`].

use crate::mask::Mask;

/// Which measurement a target gets. Chosen by `--measure`, by the board profile, or from the
/// text prompt ([`Target::for_text`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// No measurement.
    None,
    /// Fetal head: the fitted ellipse and its circumference (HC), plus area.
    Hc,
    /// A lesion or organ: the longest diameter, the perpendicular one, and the area.
    Lesion,
}

impl Target {
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        match s {
            "none" => Ok(Target::None),
            "hc" => Ok(Target::Hc),
            "lesion" => Ok(Target::Lesion),
            _ => anyhow::bail!("--measure '{s}': the measurements are hc, lesion and none"),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Target::None => "none",
            Target::Hc => "hc",
            Target::Lesion => "lesion",
        }
    }

    /// The measurement a text prompt implies: a head gets HC; a lesion, tumour, mass, nodule
    /// or cyst gets calipers and area; anything else nothing (a gland, a lung: say --measure).
    pub fn for_text(text: &str) -> Self {
        let t = text.to_ascii_lowercase();
        let has = |words: &[&str]| words.iter().any(|w| t.contains(w));
        if has(&["head", "skull", "cranium"]) {
            Target::Hc
        } else if has(&[
            "lesion", "tumor", "tumour", "mass", "nodule", "cyst", "polyp",
        ]) {
            Target::Lesion
        } else {
            Target::None
        }
    }
}

/// A pixel size given on the command line, in mm.
pub fn parse_pixel_size(v: &str) -> anyhow::Result<f64> {
    match v.parse::<f64>() {
        Ok(mm) if mm.is_finite() && mm > 0.0 && mm < 100.0 => Ok(mm),
        _ => anyhow::bail!("--pixel-size '{v}' is not a pixel size in mm (e.g. 0.07)"),
    }
}

/// Physical size of one pixel: `x` across columns, `y` down rows (DICOM Pixel Spacing is
/// (row, column): `y` first there).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spacing {
    pub x_mm: f64,
    pub y_mm: f64,
}

impl Spacing {
    pub fn isotropic(mm: f64) -> Self {
        Spacing { x_mm: mm, y_mm: mm }
    }

    /// From DICOM's (row spacing, column spacing).
    pub fn from_row_col(row_col: (f64, f64)) -> Self {
        Spacing {
            x_mm: row_col.1,
            y_mm: row_col.0,
        }
    }

    pub fn is_valid(&self) -> bool {
        self.x_mm.is_finite() && self.y_mm.is_finite() && self.x_mm > 0.0 && self.y_mm > 0.0
    }
}

/// The unit lengths are in: millimetres with a spacing, pixels without one (and said so).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Mm,
    Px,
}

impl Unit {
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Mm => "mm",
            Unit::Px => "px",
        }
    }
}

/// A fitted ellipse. The centre is in pixel coordinates (for drawing); the semi-axes in the
/// measurement unit; `angle_deg` is the major axis's angle from the image x axis (y down), in
/// the physical frame.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ellipse {
    pub cx: f64,
    pub cy: f64,
    pub semi_major: f64,
    pub semi_minor: f64,
    pub angle_deg: f64,
}

impl Ellipse {
    /// Ramanujan's first approximation of the ellipse's perimeter (HC18's formula): relative
    /// error under 1e-4 for axis ratios down to 0.3.
    pub fn circumference(&self) -> f64 {
        let (a, b) = (self.semi_major, self.semi_minor);
        std::f64::consts::PI * (3.0 * (a + b) - ((3.0 * a + b) * (a + 3.0 * b)).sqrt())
    }

    /// `n` points on the ellipse in pixel coordinates, for overlays.
    pub fn outline_px(&self, spacing: Option<Spacing>, n: usize) -> Vec<(f64, f64)> {
        let s = spacing.unwrap_or(Spacing::isotropic(1.0));
        let (sin, cos) = self.angle_deg.to_radians().sin_cos();
        (0..n)
            .map(|i| {
                let t = i as f64 / n as f64 * std::f64::consts::TAU;
                let (u, v) = (self.semi_major * t.cos(), self.semi_minor * t.sin());
                (
                    self.cx + (u * cos - v * sin) / s.x_mm,
                    self.cy + (u * sin + v * cos) / s.y_mm,
                )
            })
            .collect()
    }
}

/// One caliper: its two ends in pixel coordinates and its length in the measurement unit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Caliper {
    pub from: (f64, f64),
    pub to: (f64, f64),
    pub length: f64,
}

/// Everything measured on one mask.
#[derive(Clone, Debug, PartialEq)]
pub struct Measurements {
    pub unit: Unit,
    /// Area of the structure (largest component, holes filled), unit².
    pub area: f64,
    /// Length of its outer contour (8-connected chain through boundary pixel centres, as
    /// OpenCV's `arcLength` of a `findContours` contour).
    pub perimeter: f64,
    /// Least-squares ellipse of the outer boundary (None below 6 boundary points or when the
    /// boundary is not elliptic, e.g. a straight line).
    pub ellipse: Option<Ellipse>,
    /// Head circumference: the ellipse's perimeter (Ramanujan), as HC18 defines HC. From
    /// [`measure_for`] with [`Target::Hc`]: on the skull's outer border when the echo is found.
    pub hc: Option<f64>,
    /// Where `hc` and `ellipse` come from.
    pub hc_source: HcSource,
    /// The ellipse fitted to the mask itself (the same as `ellipse` unless the skull echo
    /// moved it).
    pub mask_ellipse: Option<Ellipse>,
    /// Longest diameter (maximum Feret), and the widest extent perpendicular to it.
    pub long_axis: Caliper,
    pub short_axis: Caliper,
}

impl Measurements {
    /// HC of the mask's own ellipse (the same as `hc` unless the skull echo moved it).
    pub fn hc_mask(&self) -> Option<f64> {
        self.mask_ellipse.map(|e| e.circumference())
    }
}

/// Where a head circumference was measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HcSource {
    /// The ellipse fitted to the mask's boundary.
    MaskEllipse,
    /// That ellipse moved onto the outer border of the skull echo ([`refine_on_echo`]).
    SkullOuterBorder,
}

impl HcSource {
    pub fn as_str(self) -> &'static str {
        match self {
            HcSource::MaskEllipse => "mask ellipse",
            HcSource::SkullOuterBorder => "skull outer border",
        }
    }
}

/// The measurement a target gets, the same in `segment`, `stream` and `eval`: for a head, the
/// mask's ellipse moved onto the skull's outer border in the frame `rgb` (HC18 and sonographers
/// measure on the skull's outer edge; LiteMedSAM's boundary sits on the skull's middle, 5 mm
/// short on HC18, docs/BIOMETRY.md); for a lesion, the mask as it is. None for an empty mask or
/// [`Target::None`].
pub fn measure_for(
    target: Target,
    mask: &Mask,
    rgb: &[u8],
    spacing: Option<Spacing>,
    s: &mut Scratch,
) -> Option<Measurements> {
    if target == Target::None {
        return None;
    }
    let mut m = measure(mask, spacing, s)?;
    if target == Target::Hc
        && rgb.len() == mask.width as usize * mask.height as usize * 3
        && let Some(e) = m.ellipse
        && let Some(r) = refine_on_echo(
            &e,
            spacing,
            rgb,
            mask.width as usize,
            mask.height as usize,
            EchoEdge::Outer,
        )
    {
        m.ellipse = Some(r);
        m.hc = Some(r.circumference());
        m.hc_source = HcSource::SkullOuterBorder;
    }
    Some(m)
}

/// Reusable buffers: one measurement allocates nothing once they have grown to the frame.
#[derive(Default)]
pub struct Scratch {
    labels: Vec<u32>,
    solid: Vec<u8>,
    stack: Vec<u32>,
    points: Vec<(f64, f64)>,
    hull: Vec<(f64, f64)>,
}

/// Measure the largest structure in `mask`. None when the mask is empty.
pub fn measure(mask: &Mask, spacing: Option<Spacing>, s: &mut Scratch) -> Option<Measurements> {
    let (w, h) = (mask.width as usize, mask.height as usize);
    let comps = crate::prompting::components::label(&mask.data, w, h, &mut s.labels);
    let best = comps.iter().max_by_key(|c| c.area)?;
    let unit = if spacing.is_some() {
        Unit::Mm
    } else {
        Unit::Px
    };
    let sp = spacing.unwrap_or(Spacing::isotropic(1.0));
    fill_solid(&s.labels, best.label, w, h, &mut s.solid, &mut s.stack);
    let area_px = s.solid.iter().filter(|&&v| v != 0).count();
    // Edge midpoints of the outer boundary, in physical coordinates.
    s.points.clear();
    for y in best.y0 as usize..=best.y1 as usize {
        for x in best.x0 as usize..=best.x1 as usize {
            if s.solid[y * w + x] == 0 {
                continue;
            }
            let inside = |dx: isize, dy: isize| {
                let (nx, ny) = (x as isize + dx, y as isize + dy);
                nx >= 0
                    && ny >= 0
                    && (nx as usize) < w
                    && (ny as usize) < h
                    && s.solid[ny as usize * w + nx as usize] != 0
            };
            for (dx, dy) in [(1isize, 0isize), (-1, 0), (0, 1), (0, -1)] {
                if !inside(dx, dy) {
                    let px = x as f64 + 0.5 * dx as f64;
                    let py = y as f64 + 0.5 * dy as f64;
                    s.points.push((px * sp.x_mm, py * sp.y_mm));
                }
            }
        }
    }
    let perimeter = contour_length(&s.solid, w, h, best, sp);
    let ellipse = fit_ellipse(&s.points).map(|mut e| {
        e.cx /= sp.x_mm;
        e.cy /= sp.y_mm;
        e
    });
    convex_hull(&s.points, &mut s.hull);
    let (long_axis, short_axis) = calipers(&s.hull, sp);
    Some(Measurements {
        unit,
        area: area_px as f64 * sp.x_mm * sp.y_mm,
        perimeter,
        hc: ellipse.map(|e| e.circumference()),
        hc_source: HcSource::MaskEllipse,
        mask_ellipse: ellipse,
        ellipse,
        long_axis,
        short_axis,
    })
}

/// `solid` = 1 on component `label` and on every pixel it encloses (holes), 0 elsewhere: flood
/// the outside from the frame border through everything that is not the component.
fn fill_solid(
    labels: &[u32],
    label: u32,
    w: usize,
    h: usize,
    solid: &mut Vec<u8>,
    stack: &mut Vec<u32>,
) {
    solid.clear();
    solid.resize(w * h, 1);
    stack.clear();
    let seed = |i: usize, solid: &mut Vec<u8>, stack: &mut Vec<u32>| {
        if solid[i] == 1 && labels[i] != label {
            solid[i] = 0;
            stack.push(i as u32);
        }
    };
    for x in 0..w {
        seed(x, solid, stack);
        seed((h - 1) * w + x, solid, stack);
    }
    for y in 0..h {
        seed(y * w, solid, stack);
        seed(y * w + w - 1, solid, stack);
    }
    // 4-connected outside: an 8-connected component encloses what it surrounds diagonally.
    while let Some(i) = stack.pop() {
        let i = i as usize;
        let (x, y) = (i % w, i / w);
        if x > 0 {
            seed(i - 1, solid, stack);
        }
        if x + 1 < w {
            seed(i + 1, solid, stack);
        }
        if y > 0 {
            seed(i - w, solid, stack);
        }
        if y + 1 < h {
            seed(i + w, solid, stack);
        }
    }
}

/// Clockwise Moore-neighbour directions with y down: E, SE, S, SW, W, NW, N, NE.
const DIRS: [(isize, isize); 8] = [
    (1, 0),
    (1, 1),
    (0, 1),
    (-1, 1),
    (-1, 0),
    (-1, -1),
    (0, -1),
    (1, -1),
];

fn dir_index(d: (isize, isize)) -> usize {
    DIRS.iter().position(|&v| v == d).expect("a unit step")
}

/// Length of the outer contour of `solid` traced by Moore-neighbour tracing (stopping when the
/// start pixel repeats its first move), steps weighted by the spacing (1 or sqrt(2) pixels when isotropic).
fn contour_length(
    solid: &[u8],
    w: usize,
    h: usize,
    c: &crate::prompting::components::Component,
    sp: Spacing,
) -> f64 {
    let inside = |x: isize, y: isize| {
        x >= 0
            && y >= 0
            && (x as usize) < w
            && (y as usize) < h
            && solid[y as usize * w + x as usize] != 0
    };
    // First pixel in raster order: its west neighbour is outside.
    let Some(start) = (c.y0 as usize..=c.y1 as usize)
        .flat_map(|y| (c.x0 as usize..=c.x1 as usize).map(move |x| (x, y)))
        .find(|&(x, y)| solid[y * w + x] != 0)
        .map(|(x, y)| (x as isize, y as isize))
    else {
        return 0.0;
    };
    let (mut p, mut back) = (start, dir_index((-1, 0)));
    let mut first = None;
    let mut length = 0.0;
    // A contour visits a pixel at most 4 times: a bound that ends any tracing bug.
    for _ in 0..4 * (w * h) + 8 {
        let mut next = None;
        for i in 1..=8 {
            let d = (back + i) % 8;
            let q = (p.0 + DIRS[d].0, p.1 + DIRS[d].1);
            if inside(q.0, q.1) {
                let prev = DIRS[(back + i - 1) % 8];
                let b = (p.0 + prev.0 - q.0, p.1 + prev.1 - q.1);
                next = Some((q, dir_index(b), d));
                break;
            }
        }
        let Some((q, b, d)) = next else {
            return 0.0; // a single pixel
        };
        // Done when the start pixel is about to repeat its first move.
        match first {
            None => first = Some(q),
            Some(f) if p == start && q == f => break,
            Some(_) => {}
        }
        length += (DIRS[d].0 as f64 * sp.x_mm).hypot(DIRS[d].1 as f64 * sp.y_mm);
        p = q;
        back = b;
    }
    length
}

/// Direct least-squares ellipse fit (Fitzgibbon, Pilu & Fisher 1999, in Halir & Flusser's
/// numerically stable form), on centred and scaled points.
pub fn fit_ellipse(points: &[(f64, f64)]) -> Option<Ellipse> {
    if points.len() < 6 {
        return None;
    }
    let n = points.len() as f64;
    let (mx, my) = points
        .iter()
        .fold((0.0, 0.0), |a, p| (a.0 + p.0, a.1 + p.1));
    let (mx, my) = (mx / n, my / n);
    let scale = (points
        .iter()
        .map(|p| (p.0 - mx).powi(2) + (p.1 - my).powi(2))
        .sum::<f64>()
        / n)
        .sqrt();
    if !(scale > 0.0 && scale.is_finite()) {
        return None;
    }
    let (mut s1, mut s2, mut s3) = ([[0.0f64; 3]; 3], [[0.0f64; 3]; 3], [[0.0f64; 3]; 3]);
    for p in points {
        let (x, y) = ((p.0 - mx) / scale, (p.1 - my) / scale);
        let d1 = [x * x, x * y, y * y];
        let d2 = [x, y, 1.0];
        for i in 0..3 {
            for j in 0..3 {
                s1[i][j] += d1[i] * d1[j];
                s2[i][j] += d1[i] * d2[j];
                s3[i][j] += d2[i] * d2[j];
            }
        }
    }
    let s3i = inv3(&s3)?;
    // T = -S3^-1 S2^T
    let mut t = [[0.0f64; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            t[i][j] = -(0..3).map(|k| s3i[i][k] * s2[j][k]).sum::<f64>();
        }
    }
    // M = S1 + S2 T, then C1^-1 M
    let mut m = [[0.0f64; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            m[i][j] = s1[i][j] + (0..3).map(|k| s2[i][k] * t[k][j]).sum::<f64>();
        }
    }
    let m = [
        [m[2][0] / 2.0, m[2][1] / 2.0, m[2][2] / 2.0],
        [-m[1][0], -m[1][1], -m[1][2]],
        [m[0][0] / 2.0, m[0][1] / 2.0, m[0][2] / 2.0],
    ];
    let a1 = eigvecs3(&m)
        .into_iter()
        .filter(|v| 4.0 * v[0] * v[2] - v[1] * v[1] > 0.0)
        .max_by(|a, b| {
            let ca = 4.0 * a[0] * a[2] - a[1] * a[1];
            let cb = 4.0 * b[0] * b[2] - b[1] * b[1];
            ca.total_cmp(&cb)
        })?;
    let a2: Vec<f64> = (0..3)
        .map(|i| (0..3).map(|k| t[i][k] * a1[k]).sum())
        .collect();
    let (a, b, c, d, e, f) = (a1[0], a1[1], a1[2], a2[0], a2[1], a2[2]);
    let den = b * b - 4.0 * a * c;
    if den >= 0.0 {
        return None;
    }
    let x0 = (2.0 * c * d - b * e) / den;
    let y0 = (2.0 * a * e - b * d) / den;
    let root = ((a - c).powi(2) + b * b).sqrt();
    let num = 2.0 * (a * e * e + c * d * d - b * d * e + den * f);
    let major = -(num * (a + c + root)).sqrt() / den;
    let minor = -(num * (a + c - root)).sqrt() / den;
    if !(major.is_finite() && minor.is_finite() && major > 0.0 && minor > 0.0) {
        return None;
    }
    let (major, minor, angle) = {
        let theta = if b.abs() > 1e-12 {
            ((c - a - root) / b).atan()
        } else if a <= c {
            0.0
        } else {
            std::f64::consts::FRAC_PI_2
        };
        (major.max(minor), major.min(minor), theta)
    };
    let mut deg = angle.to_degrees();
    if deg < 0.0 {
        deg += 180.0;
    }
    Some(Ellipse {
        cx: mx + x0 * scale,
        cy: my + y0 * scale,
        semi_major: major * scale,
        semi_minor: minor * scale,
        angle_deg: deg % 180.0,
    })
}

fn det3(m: &[[f64; 3]; 3]) -> f64 {
    m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
        - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
}

fn inv3(m: &[[f64; 3]; 3]) -> Option<[[f64; 3]; 3]> {
    let det = det3(m);
    if det.abs() < 1e-300 || !det.is_finite() {
        return None;
    }
    // The inverse is the transposed cofactor matrix over the determinant.
    Some(std::array::from_fn(|i| {
        std::array::from_fn(|j| {
            let (r0, r1) = ((j + 1) % 3, (j + 2) % 3);
            let (c0, c1) = ((i + 1) % 3, (i + 2) % 3);
            (m[r0][c0] * m[r1][c1] - m[r0][c1] * m[r1][c0]) / det
        })
    }))
}

/// Eigenvectors of a real 3x3 matrix for its real eigenvalues (roots of the characteristic
/// cubic; each vector from the largest cross product of two rows of M - lambda I).
fn eigvecs3(m: &[[f64; 3]; 3]) -> Vec<[f64; 3]> {
    let tr = m[0][0] + m[1][1] + m[2][2];
    let c1 = m[0][0] * m[1][1] - m[0][1] * m[1][0] + m[0][0] * m[2][2] - m[0][2] * m[2][0]
        + m[1][1] * m[2][2]
        - m[1][2] * m[2][1];
    let det = det3(m);
    // lambda^3 - tr lambda^2 + c1 lambda - det = 0
    let roots = cubic_roots(-tr, c1, -det);
    let mut out = Vec::with_capacity(3);
    for l in roots {
        let a = [
            [m[0][0] - l, m[0][1], m[0][2]],
            [m[1][0], m[1][1] - l, m[1][2]],
            [m[2][0], m[2][1], m[2][2] - l],
        ];
        let cross = |u: &[f64; 3], v: &[f64; 3]| {
            [
                u[1] * v[2] - u[2] * v[1],
                u[2] * v[0] - u[0] * v[2],
                u[0] * v[1] - u[1] * v[0],
            ]
        };
        let cands = [
            cross(&a[0], &a[1]),
            cross(&a[0], &a[2]),
            cross(&a[1], &a[2]),
        ];
        let best = cands
            .into_iter()
            .max_by(|x, y| {
                let nx: f64 = x.iter().map(|v| v * v).sum();
                let ny: f64 = y.iter().map(|v| v * v).sum();
                nx.total_cmp(&ny)
            })
            .expect("three candidates");
        let norm = best.iter().map(|v| v * v).sum::<f64>().sqrt();
        if norm > 0.0 && norm.is_finite() {
            out.push([best[0] / norm, best[1] / norm, best[2] / norm]);
        }
    }
    out
}

/// Real roots of x^3 + a x^2 + b x + c.
fn cubic_roots(a: f64, b: f64, c: f64) -> Vec<f64> {
    let q = (a * a - 3.0 * b) / 9.0;
    let r = (2.0 * a * a * a - 9.0 * a * b + 27.0 * c) / 54.0;
    if r * r < q * q * q {
        let theta = (r / q.powf(1.5)).clamp(-1.0, 1.0).acos();
        let s = -2.0 * q.sqrt();
        (0..3)
            .map(|k| s * ((theta + std::f64::consts::TAU * k as f64) / 3.0).cos() - a / 3.0)
            .collect()
    } else {
        let big = -r.signum() * (r.abs() + (r * r - q * q * q).sqrt()).cbrt();
        let small = if big != 0.0 { q / big } else { 0.0 };
        vec![big + small - a / 3.0]
    }
}

/// Convex hull (Andrew's monotone chain), counter-clockwise, no collinear points.
fn convex_hull(points: &[(f64, f64)], hull: &mut Vec<(f64, f64)>) {
    hull.clear();
    if points.len() < 3 {
        hull.extend_from_slice(points);
        return;
    }
    let mut p: Vec<(f64, f64)> = points.to_vec();
    p.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    p.dedup();
    let cross = |o: (f64, f64), a: (f64, f64), b: (f64, f64)| {
        (a.0 - o.0) * (b.1 - o.1) - (a.1 - o.1) * (b.0 - o.0)
    };
    for &q in &p {
        while hull.len() >= 2 && cross(hull[hull.len() - 2], hull[hull.len() - 1], q) <= 0.0 {
            hull.pop();
        }
        hull.push(q);
    }
    let lower = hull.len() + 1;
    for &q in p.iter().rev().skip(1) {
        while hull.len() >= lower && cross(hull[hull.len() - 2], hull[hull.len() - 1], q) <= 0.0 {
            hull.pop();
        }
        hull.push(q);
    }
    hull.pop();
}

/// The longest chord between hull points (maximum Feret diameter) and the widest extent
/// perpendicular to it, placed where the two extreme points are (caliper style). Hull points
/// are physical; the ends come back in pixels.
fn calipers(hull: &[(f64, f64)], sp: Spacing) -> (Caliper, Caliper) {
    let to_px = |p: (f64, f64)| (p.0 / sp.x_mm, p.1 / sp.y_mm);
    let Some(&first) = hull.first() else {
        let zero = Caliper {
            from: (0.0, 0.0),
            to: (0.0, 0.0),
            length: 0.0,
        };
        return (zero, zero);
    };
    let (mut a, mut b, mut best) = (first, first, 0.0f64);
    for (i, &p) in hull.iter().enumerate() {
        for &q in &hull[i + 1..] {
            let d = (p.0 - q.0).hypot(p.1 - q.1);
            if d > best {
                (a, b, best) = (p, q, d);
            }
        }
    }
    let long = Caliper {
        from: to_px(a),
        to: to_px(b),
        length: best,
    };
    if best == 0.0 {
        return (
            long,
            Caliper {
                from: long.from,
                to: long.to,
                length: 0.0,
            },
        );
    }
    let u = ((b.0 - a.0) / best, (b.1 - a.1) / best);
    let n = (-u.1, u.0);
    let proj = |p: (f64, f64)| (p.0 - a.0) * n.0 + (p.1 - a.1) * n.1;
    let along = |p: (f64, f64)| (p.0 - a.0) * u.0 + (p.1 - a.1) * u.1;
    let lo = hull
        .iter()
        .copied()
        .min_by(|p, q| proj(*p).total_cmp(&proj(*q)))
        .expect("non-empty");
    let hi = hull
        .iter()
        .copied()
        .max_by(|p, q| proj(*p).total_cmp(&proj(*q)))
        .expect("non-empty");
    let t = 0.5 * (along(lo) + along(hi));
    let at = |s: f64| (a.0 + u.0 * t + n.0 * s, a.1 + u.1 * t + n.1 * s);
    let short = Caliper {
        from: to_px(at(proj(lo))),
        to: to_px(at(proj(hi))),
        length: proj(hi) - proj(lo),
    };
    (long, short)
}

/// Where a head's boundary is put on the skull echo by [`refine_on_echo`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EchoEdge {
    /// The brightest point of the echo along each normal (the skull's middle).
    Ridge,
    /// Where the echo falls to half its height on the far side (the skull's outer border).
    Outer,
}

/// Move a fitted head ellipse onto the skull: a segmentation model outlines the brain inside the
/// bright skull echo, while HC is measured on the skull itself. Along `rays` normals of the
/// ellipse, from 5% of the minor semi-axis inside to 30% outside, find the echo (the brightest
/// sample) and the chosen edge of it; refit the ellipse to those points after dropping the rays
/// whose offset is far from the median (shadows, the other side of a ring). `rgb` is the frame
/// (mean of the channels is the echo intensity). None when too few rays find an echo.
pub fn refine_on_echo(
    e: &Ellipse,
    spacing: Option<Spacing>,
    rgb: &[u8],
    w: usize,
    h: usize,
    edge: EchoEdge,
) -> Option<Ellipse> {
    const RAYS: usize = 180;
    const STEP: f64 = 0.5; // px
    let sp = spacing.unwrap_or(Spacing::isotropic(1.0));
    let gray = |x: f64, y: f64| -> Option<f64> {
        if !(x >= 0.0 && y >= 0.0 && x <= (w - 1) as f64 && y <= (h - 1) as f64) {
            return None;
        }
        let (x0, y0) = (x.floor() as usize, y.floor() as usize);
        let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
        let (fx, fy) = (x - x0 as f64, y - y0 as f64);
        let g = |xx: usize, yy: usize| {
            let i = (yy * w + xx) * 3;
            (rgb[i] as f64 + rgb[i + 1] as f64 + rgb[i + 2] as f64) / 3.0
        };
        let top = g(x0, y0) * (1.0 - fx) + g(x1, y0) * fx;
        let bottom = g(x0, y1) * (1.0 - fx) + g(x1, y1) * fx;
        Some(top * (1.0 - fy) + bottom * fy)
    };
    let (sin, cos) = e.angle_deg.to_radians().sin_cos();
    let minor_px = e.semi_minor / (0.5 * (sp.x_mm + sp.y_mm));
    let (lo, hi) = (-0.05 * minor_px, 0.30 * minor_px);
    let n = ((hi - lo) / STEP) as usize + 1;
    let mut profile = Vec::with_capacity(n);
    let mut found: Vec<(f64, (f64, f64))> = Vec::with_capacity(RAYS);
    for k in 0..RAYS {
        let t = k as f64 / RAYS as f64 * std::f64::consts::TAU;
        // Point and outward normal in the physical frame, then in pixels.
        let (u, v) = (e.semi_major * t.cos(), e.semi_minor * t.sin());
        let (px, py) = (
            e.cx + (u * cos - v * sin) / sp.x_mm,
            e.cy + (u * sin + v * cos) / sp.y_mm,
        );
        let (nu, nv) = (e.semi_minor * t.cos(), e.semi_major * t.sin());
        let (nx, ny) = (
            (nu * cos - nv * sin) / sp.x_mm,
            (nu * sin + nv * cos) / sp.y_mm,
        );
        let norm = nx.hypot(ny);
        if norm == 0.0 {
            continue;
        }
        let (nx, ny) = (nx / norm, ny / norm);
        profile.clear();
        for i in 0..n {
            let s = lo + i as f64 * STEP;
            match gray(px + nx * s, py + ny * s) {
                Some(g) => profile.push(g),
                None => break,
            }
        }
        if profile.len() < n / 2 {
            continue; // the ray leaves the frame early: no skull to see
        }
        // Light smoothing (3 taps) so a speckle sample is not the ridge.
        let sm = |i: usize| {
            let a = profile[i.saturating_sub(1)];
            let c = profile[(i + 1).min(profile.len() - 1)];
            (a + 2.0 * profile[i] + c) / 4.0
        };
        let (peak_i, peak) = (0..profile.len())
            .map(|i| (i, sm(i)))
            .max_by(|a, b| a.1.total_cmp(&b.1))?;
        let floor = (peak_i..profile.len())
            .map(sm)
            .fold(f64::INFINITY, f64::min);
        if peak - floor < 20.0 {
            continue; // no echo worth the name on this ray
        }
        let at = match edge {
            EchoEdge::Ridge => peak_i,
            EchoEdge::Outer => {
                let half = 0.5 * (peak + floor);
                (peak_i..profile.len())
                    .find(|&i| sm(i) < half)
                    .unwrap_or(peak_i)
            }
        };
        let s = lo + at as f64 * STEP;
        found.push((s, ((px + nx * s) * sp.x_mm, (py + ny * s) * sp.y_mm)));
    }
    if found.len() < RAYS / 3 {
        return None;
    }
    let mut offsets: Vec<f64> = found.iter().map(|f| f.0).collect();
    offsets.sort_by(f64::total_cmp);
    let median = offsets[offsets.len() / 2];
    let mut dev: Vec<f64> = offsets.iter().map(|o| (o - median).abs()).collect();
    dev.sort_by(f64::total_cmp);
    let mad = dev[dev.len() / 2];
    let keep: Vec<(f64, f64)> = found
        .iter()
        .filter(|f| (f.0 - median).abs() <= 3.0 * mad + 1.0)
        .map(|f| f.1)
        .collect();
    if keep.len() < RAYS / 3 {
        return None;
    }
    fit_ellipse(&keep).map(|mut r| {
        r.cx /= sp.x_mm;
        r.cy /= sp.y_mm;
        r
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A filled ellipse rasterised by pixel-centre inclusion.
    fn ellipse_mask(w: u32, h: u32, cx: f64, cy: f64, a: f64, b: f64, deg: f64) -> Mask {
        let (s, c) = deg.to_radians().sin_cos();
        let mut m = Mask::empty(w, h);
        for y in 0..h {
            for x in 0..w {
                let (dx, dy) = (x as f64 - cx, y as f64 - cy);
                let (u, v) = (dx * c + dy * s, -dx * s + dy * c);
                if (u / a).powi(2) + (v / b).powi(2) <= 1.0 {
                    m.data[(y * w + x) as usize] = 1;
                }
            }
        }
        m
    }

    fn ramanujan(a: f64, b: f64) -> f64 {
        Ellipse {
            cx: 0.0,
            cy: 0.0,
            semi_major: a,
            semi_minor: b,
            angle_deg: 0.0,
        }
        .circumference()
    }

    #[test]
    fn echo_refinement_finds_a_drawn_skull_ring() {
        // A dark head (grey 40) inside a bright ring (grey 200) 10 px thick, from radius 60 to 70
        // (pixel centres), on a grey-60 background; the "mask" ellipse is the inner radius.
        let (w, h) = (200usize, 180usize);
        let (cx, cy) = (101.0, 89.0);
        let mut rgb = vec![0u8; w * h * 3];
        for y in 0..h {
            for x in 0..w {
                let r = (x as f64 - cx).hypot(y as f64 - cy);
                let g = if r < 60.0 {
                    40
                } else if r < 70.0 {
                    200
                } else {
                    60
                };
                rgb[(y * w + x) * 3..(y * w + x) * 3 + 3].fill(g);
            }
        }
        let inner = Ellipse {
            cx,
            cy,
            semi_major: 59.5,
            semi_minor: 59.5,
            angle_deg: 0.0,
        };
        let outer = refine_on_echo(&inner, None, &rgb, w, h, EchoEdge::Outer).unwrap();
        assert!(
            (outer.semi_major - 70.0).abs() < 1.0 && (outer.semi_minor - 70.0).abs() < 1.0,
            "{outer:?}"
        );
        assert!((outer.cx - cx).abs() < 0.5 && (outer.cy - cy).abs() < 0.5);
        let ridge = refine_on_echo(&inner, None, &rgb, w, h, EchoEdge::Ridge).unwrap();
        assert!(
            ridge.semi_major > 60.0 && ridge.semi_major < 70.0,
            "{ridge:?}"
        );
        // No echo at all: no refinement.
        let flat = vec![90u8; w * h * 3];
        assert!(refine_on_echo(&inner, None, &flat, w, h, EchoEdge::Outer).is_none());
    }

    #[test]
    fn target_from_prompt_and_flag() {
        assert_eq!(Target::for_text("fetal head"), Target::Hc);
        assert_eq!(Target::for_text("Breast Tumor"), Target::Lesion);
        assert_eq!(Target::for_text("thyroid"), Target::None);
        assert_eq!(Target::parse("hc").unwrap(), Target::Hc);
        assert!(
            Target::parse("bpd")
                .unwrap_err()
                .to_string()
                .contains("hc, lesion")
        );
        assert!(parse_pixel_size("0.07").is_ok());
        for bad in ["0", "-1", "nan", "inf", "abc", "1000"] {
            assert!(parse_pixel_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ramanujan_matches_known_perimeters() {
        assert!((ramanujan(1.0, 1.0) - std::f64::consts::TAU).abs() < 1e-12);
        // Exact perimeter of a=2, b=1 (complete elliptic integral): 9.688448220547675.
        assert!((ramanujan(2.0, 1.0) - 9.688448220547675).abs() < 1e-4);
    }

    #[test]
    fn fits_exact_ellipse_points() {
        let e = Ellipse {
            cx: 40.0,
            cy: -7.0,
            semi_major: 30.0,
            semi_minor: 12.0,
            angle_deg: 35.0,
        };
        let pts = e.outline_px(None, 50);
        let f = fit_ellipse(&pts).unwrap();
        assert!(
            (f.cx - 40.0).abs() < 1e-9 && (f.cy + 7.0).abs() < 1e-9,
            "{f:?}"
        );
        assert!(
            (f.semi_major - 30.0).abs() < 1e-9 && (f.semi_minor - 12.0).abs() < 1e-9,
            "{f:?}"
        );
        assert!((f.angle_deg - 35.0).abs() < 1e-7, "{f:?}");
        assert!(fit_ellipse(&pts[..5]).is_none());
        let line: Vec<(f64, f64)> = (0..20).map(|i| (i as f64, 2.0 * i as f64)).collect();
        assert!(fit_ellipse(&line).is_none(), "a line is no ellipse");
    }

    #[test]
    fn rasterised_ellipse_gives_back_its_axes_and_hc() {
        let m = ellipse_mask(400, 300, 190.3, 150.7, 120.0, 80.0, 25.0);
        let r = measure(&m, None, &mut Scratch::default()).unwrap();
        let e = r.ellipse.unwrap();
        assert_eq!(r.unit, Unit::Px);
        assert!(
            (e.cx - 190.3).abs() < 0.1 && (e.cy - 150.7).abs() < 0.1,
            "{e:?}"
        );
        assert!(
            (e.semi_major - 120.0).abs() < 0.3 && (e.semi_minor - 80.0).abs() < 0.3,
            "{e:?}"
        );
        assert!((e.angle_deg - 25.0).abs() < 0.5, "{e:?}");
        let hc = ramanujan(120.0, 80.0);
        assert!(
            (r.hc.unwrap() - hc).abs() / hc < 0.003,
            "{} vs {hc}",
            r.hc.unwrap()
        );
        let area = std::f64::consts::PI * 120.0 * 80.0;
        assert!((r.area - area).abs() / area < 0.005);
        assert!(
            (r.long_axis.length - 240.0).abs() < 1.5,
            "{:?}",
            r.long_axis
        );
        assert!(
            (r.short_axis.length - 160.0).abs() < 1.5,
            "{:?}",
            r.short_axis
        );
        // The chain-code perimeter overestimates a smooth curve by a few percent, never less.
        assert!(
            r.perimeter > hc * 0.98 && r.perimeter < hc * 1.10,
            "{} vs {hc}",
            r.perimeter
        );
    }

    #[test]
    fn spacing_scales_to_millimetres_and_handles_anisotropy() {
        // A circle of radius 50 px on square pixels of 0.1 mm: HC = 2 pi 5 mm.
        let m = ellipse_mask(120, 120, 60.0, 60.0, 50.0, 50.0, 0.0);
        let r = measure(&m, Some(Spacing::isotropic(0.1)), &mut Scratch::default()).unwrap();
        assert_eq!(r.unit, Unit::Mm);
        assert!(
            (r.hc.unwrap() - std::f64::consts::TAU * 5.0).abs() < 0.05,
            "{:?}",
            r.hc
        );
        assert!((r.area - std::f64::consts::PI * 25.0).abs() < 0.3);
        // Pixels twice as tall as wide: an ellipse 100x50 px is a 10 mm circle of 0.1x0.2 mm px.
        let m = ellipse_mask(140, 80, 70.0, 40.0, 50.0, 25.0, 0.0);
        let sp = Spacing::from_row_col((0.2, 0.1));
        let r = measure(&m, Some(sp), &mut Scratch::default()).unwrap();
        let e = r.ellipse.unwrap();
        assert!(
            (e.semi_major - 5.0).abs() < 0.08 && (e.semi_minor - 5.0).abs() < 0.08,
            "{e:?}"
        );
        assert!(
            (e.cx - 70.0).abs() < 0.1 && (e.cy - 40.0).abs() < 0.1,
            "centre in pixels: {e:?}"
        );
        assert!(
            (r.long_axis.length - 10.0).abs() < 0.25 && (r.short_axis.length - 10.0).abs() < 0.25
        );
    }

    #[test]
    fn largest_component_with_holes_filled_and_rectangle_calipers() {
        let mut m = Mask::empty(100, 60);
        // a 40x20 rectangle with a hole, and a small speck elsewhere
        for y in 10..30 {
            for x in 10..50 {
                m.data[y * 100 + x] = 1;
            }
        }
        for y in 15..20 {
            for x in 20..30 {
                m.data[y * 100 + x] = 0;
            }
        }
        m.data[55 * 100 + 90] = 1;
        let r = measure(&m, None, &mut Scratch::default()).unwrap();
        assert_eq!(
            r.area, 800.0,
            "holes count as the structure's area; the speck does not"
        );
        // The boundary edge midpoints of a 40x20 block span 40 x 20 at their extremes.
        assert!(
            (r.long_axis.length - (39.5f64.hypot(19.5))).abs() < 0.6,
            "{:?}",
            r.long_axis
        );
        // Perpendicular to a rectangle's diagonal its extent is 2wh/diag (35.8 for 40x20).
        let want = 2.0 * 39.5 * 19.5 / 39.5f64.hypot(19.5);
        assert!(
            (r.short_axis.length - want).abs() < 1.0,
            "{:?} vs {want}",
            r.short_axis
        );
        // contour through pixel centres: 2 * (39 + 19)
        assert!((r.perimeter - 116.0).abs() < 1e-9, "{}", r.perimeter);
        assert!(measure(&Mask::empty(10, 10), None, &mut Scratch::default()).is_none());
        let mut one = Mask::empty(5, 5);
        one.data[12] = 1;
        let r = measure(&one, None, &mut Scratch::default()).unwrap();
        assert_eq!((r.area, r.perimeter), (1.0, 0.0));
        assert!(r.ellipse.is_none() || r.ellipse.unwrap().semi_major < 1.0);
    }

    #[test]
    fn diagonal_and_border_touching_shapes_trace() {
        // A diagonal line of pixels (8-connected): contour goes out and back.
        let mut m = Mask::empty(20, 20);
        for i in 0..10 {
            m.data[(i + 2) * 20 + i + 2] = 1;
        }
        let r = measure(&m, None, &mut Scratch::default()).unwrap();
        assert!(
            (r.perimeter - 2.0 * 9.0 * 2f64.sqrt()).abs() < 1e-9,
            "{}",
            r.perimeter
        );
        // A full-frame mask touches every border.
        let mut full = Mask::empty(8, 6);
        full.data.iter_mut().for_each(|v| *v = 1);
        let r = measure(&full, None, &mut Scratch::default()).unwrap();
        assert_eq!(r.area, 48.0);
        assert!((r.perimeter - 2.0 * (7.0 + 5.0)).abs() < 1e-9);
    }
}
