//! SAM prompts from a saliency map, by the MedCLIP-SAM post-processing rules (configurable):
//!
//! * **v1** (MedCLIP-SAM): binarise (fixed threshold, or Otsu), keep the largest connected
//!   component, one box around it.
//! * **v2** (MedCLIP-SAMv2): k-means (k = 2) on the saliency values splits foreground from
//!   background, the top-K components by area are kept, and the prompt is one box around their
//!   union, one box per component (paired organs: lungs), or N positive points sampled from
//!   the kept components.
//!
//! When nothing is salient (a flat map, or no pixel above the threshold) the documented
//! fallback is one box around the whole frame, and [`AutoPrompt::fallback`] says so.

use anyhow::{Result, bail};

use crate::prompting::components::{Component, label};
use crate::prompting::prompt::{BoxPrompt, PointPrompt, Prompt};
use crate::prompting::saliency::SaliencyMap;
use crate::prompting::saliency::kernels;
use crate::simd::Kernel;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Binarize {
    Fixed(f32),
    Otsu,
    KMeans,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// One box around the union of the kept components.
    UnionBox,
    /// One box per kept component (segmented one by one, masks ORed).
    BoxPerComponent,
    /// N positive points sampled from the kept components.
    Points(usize),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rule {
    pub binarize: Binarize,
    /// Components kept, largest first.
    pub top_k: usize,
    pub output: Output,
    /// Components smaller than this fraction of the frame are noise.
    pub min_area_frac: f32,
    /// Seed of the point sampler (points are reproducible).
    pub seed: u64,
}

impl Rule {
    pub const V1: Rule = Rule {
        binarize: Binarize::Fixed(0.5),
        top_k: 1,
        output: Output::UnionBox,
        min_area_frac: 0.0,
        seed: 0,
    };
    pub const V2: Rule = Rule {
        binarize: Binarize::KMeans,
        top_k: 1,
        output: Output::UnionBox,
        min_area_frac: 0.001,
        seed: 0,
    };

    /// `v1`, `v2`, `v2-boxes` (one box per component, top 2: lungs), `v2-points` (5 points).
    pub fn parse(s: &str) -> Result<Rule> {
        Ok(match s {
            "v1" => Rule::V1,
            "v2" => Rule::V2,
            "v2-boxes" => Rule {
                top_k: 2,
                output: Output::BoxPerComponent,
                ..Rule::V2
            },
            "v2-points" => Rule {
                output: Output::Points(5),
                ..Rule::V2
            },
            _ => bail!("unknown prompt rule '{s}' (expected v1, v2, v2-boxes or v2-points)"),
        })
    }

    pub fn with_threshold(mut self, s: &str) -> Result<Rule> {
        self.binarize = match s {
            "otsu" => Binarize::Otsu,
            "kmeans" => Binarize::KMeans,
            v => match v.parse::<f32>() {
                Ok(t) if (0.0..=1.0).contains(&t) => Binarize::Fixed(t),
                _ => bail!("--threshold '{s}': expected otsu, kmeans or a number in [0, 1]"),
            },
        };
        Ok(self)
    }
}

/// What the rules produced for one map.
#[derive(Clone, Debug)]
pub struct AutoPrompt {
    /// SAM queries: one per box (ORed), or one with the points.
    pub prompts: Vec<Prompt>,
    /// The threshold the map was binarised at.
    pub threshold: f32,
    /// Components found above the threshold (before top-K).
    pub components: usize,
    /// Set when the fallback was used, with the reason.
    pub fallback: Option<String>,
}

/// Otsu's threshold over 256 bins of [0, 1].
pub fn otsu(values: &[f32]) -> f32 {
    let mut hist = [0u64; 256];
    for &v in values {
        hist[(v.clamp(0.0, 1.0) * 255.0).round() as usize] += 1;
    }
    let total = values.len() as f64;
    let sum_all: f64 = hist
        .iter()
        .enumerate()
        .map(|(i, &c)| i as f64 * c as f64)
        .sum();
    let (mut w0, mut sum0, mut best, mut best_t) = (0f64, 0f64, -1f64, 0usize);
    for (t, &c) in hist.iter().enumerate() {
        w0 += c as f64;
        sum0 += t as f64 * c as f64;
        let w1 = total - w0;
        if w0 == 0.0 || w1 == 0.0 {
            continue;
        }
        let (m0, m1) = (sum0 / w0, (sum_all - sum0) / w1);
        let between = w0 * w1 * (m0 - m1) * (m0 - m1);
        if between > best {
            best = between;
            best_t = t;
        }
    }
    // pixels in bins above best_t are foreground: threshold between bins
    (best_t as f32 + 0.5) / 255.0
}

/// 1-D k-means with k = 2 (centres start at min and max), returned as the midpoint of the
/// converged centres: values at or above it belong to the brighter cluster.
pub fn kmeans2(values: &[f32]) -> f32 {
    let (mut lo, mut hi) = values
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) {
        return f32::INFINITY;
    }
    for _ in 0..100 {
        let mid = 0.5 * (lo + hi);
        let (mut s0, mut n0, mut s1, mut n1) = (0f64, 0usize, 0f64, 0usize);
        for &v in values {
            if v >= mid {
                s1 += v as f64;
                n1 += 1;
            } else {
                s0 += v as f64;
                n0 += 1;
            }
        }
        let (nlo, nhi) = (
            (s0 / n0.max(1) as f64) as f32,
            (s1 / n1.max(1) as f64) as f32,
        );
        if nlo == lo && nhi == hi {
            break;
        }
        (lo, hi) = (nlo, nhi);
    }
    0.5 * (lo + hi)
}

/// xorshift64*: a tiny reproducible sampler for points.
fn next(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// Apply `rule` to `map`. `mask_buf` and `labels` are scratch reused across frames.
pub fn prompts_from(
    map: &SaliencyMap,
    rule: &Rule,
    mask_buf: &mut Vec<u8>,
    labels: &mut Vec<u32>,
) -> AutoPrompt {
    let (w, h) = (map.width as usize, map.height as usize);
    let whole = || {
        vec![Prompt {
            bbox: Some(BoxPrompt {
                x0: 0.0,
                y0: 0.0,
                x1: (w - 1) as f32,
                y1: (h - 1) as f32,
            }),
            points: vec![],
        }]
    };
    if map.is_flat() {
        return AutoPrompt {
            prompts: whole(),
            threshold: f32::NAN,
            components: 0,
            fallback: Some(
                "flat saliency map (the text matches nowhere in particular): whole-frame box"
                    .into(),
            ),
        };
    }
    let threshold = match rule.binarize {
        Binarize::Fixed(t) => t,
        Binarize::Otsu => otsu(&map.values),
        Binarize::KMeans => kmeans2(&map.values),
    };
    mask_buf.resize(w * h, 0);
    kernels::threshold(Kernel::best(), &map.values, threshold, mask_buf);
    let mut comps = label(mask_buf, w, h, labels);
    let found = comps.len();
    let min_area = (rule.min_area_frac * (w * h) as f32).ceil() as usize;
    comps.retain(|c| c.area >= min_area.max(1));
    comps.sort_by(|a, b| b.area.cmp(&a.area).then(a.label.cmp(&b.label)));
    comps.truncate(rule.top_k.max(1));
    if comps.is_empty() {
        return AutoPrompt {
            prompts: whole(),
            threshold,
            components: found,
            fallback: Some(format!(
                "no salient region above threshold {threshold:.3}: whole-frame box"
            )),
        };
    }
    let boxed = |c: &Component| BoxPrompt {
        x0: c.x0 as f32,
        y0: c.y0 as f32,
        x1: c.x1 as f32,
        y1: c.y1 as f32,
    };
    let prompts = match rule.output {
        Output::UnionBox => {
            let u = comps.iter().skip(1).fold(comps[0], |a, c| Component {
                x0: a.x0.min(c.x0),
                y0: a.y0.min(c.y0),
                x1: a.x1.max(c.x1),
                y1: a.y1.max(c.y1),
                ..a
            });
            vec![Prompt {
                bbox: Some(boxed(&u)),
                points: vec![],
            }]
        }
        Output::BoxPerComponent => comps
            .iter()
            .map(|c| Prompt {
                bbox: Some(boxed(c)),
                points: vec![],
            })
            .collect(),
        Output::Points(n) => {
            let kept: Vec<u32> = comps.iter().map(|c| c.label).collect();
            let total: usize = comps.iter().map(|c| c.area).sum();
            let mut state = rule.seed ^ 0x9e37_79b9_7f4a_7c15;
            let mut picks: Vec<usize> = (0..n.max(1))
                .map(|_| (next(&mut state) % total as u64) as usize)
                .collect();
            picks.sort_unstable();
            // walk the kept pixels in raster order, taking the picked ranks
            let (mut rank, mut pi, mut points) = (0usize, 0usize, Vec::new());
            for (i, &l) in labels.iter().enumerate() {
                if l == 0 || !kept.contains(&l) {
                    continue;
                }
                while pi < picks.len() && picks[pi] == rank {
                    points.push(PointPrompt {
                        x: (i % w) as f32,
                        y: (i / w) as f32,
                        foreground: true,
                    });
                    pi += 1;
                }
                rank += 1;
            }
            vec![Prompt { bbox: None, points }]
        }
    };
    AutoPrompt {
        prompts,
        threshold,
        components: found,
        fallback: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(w: usize, h: usize, f: impl Fn(usize, usize) -> f32) -> SaliencyMap {
        let values: Vec<f32> = (0..w * h).map(|i| f(i % w, i / w)).collect();
        SaliencyMap {
            width: w as u32,
            height: h as u32,
            grid: vec![1.0],
            frame_score: 0.0,
            values,
        }
    }

    /// Two blobs: a big one (20x10 at 5,5) and a small one (4x4 at 40,30), on a faint ramp.
    fn two_blobs() -> SaliencyMap {
        map(60, 40, |x, y| {
            if (5..25).contains(&x) && (5..15).contains(&y) {
                0.9
            } else if (40..44).contains(&x) && (30..34).contains(&y) {
                0.8
            } else {
                0.1 * x as f32 / 60.0
            }
        })
    }

    #[test]
    fn v1_boxes_the_largest_component() {
        let (mut m, mut l) = (Vec::new(), Vec::new());
        let a = prompts_from(&two_blobs(), &Rule::V1, &mut m, &mut l);
        assert_eq!(a.components, 2);
        assert!(a.fallback.is_none());
        assert_eq!(a.prompts.len(), 1);
        assert_eq!(
            a.prompts[0].bbox,
            Some(BoxPrompt {
                x0: 5.0,
                y0: 5.0,
                x1: 24.0,
                y1: 14.0
            })
        );
    }

    #[test]
    fn v2_variants() {
        let (mut m, mut l) = (Vec::new(), Vec::new());
        let union = Rule {
            top_k: 2,
            ..Rule::V2
        };
        let a = prompts_from(&two_blobs(), &union, &mut m, &mut l);
        assert_eq!(
            a.prompts[0].bbox,
            Some(BoxPrompt {
                x0: 5.0,
                y0: 5.0,
                x1: 43.0,
                y1: 33.0
            })
        );
        assert!(a.threshold > 0.1 && a.threshold < 0.8, "{}", a.threshold);
        let each = prompts_from(
            &two_blobs(),
            &Rule::parse("v2-boxes").unwrap(),
            &mut m,
            &mut l,
        );
        assert_eq!(each.prompts.len(), 2);
        assert_eq!(
            each.prompts[1].bbox,
            Some(BoxPrompt {
                x0: 40.0,
                y0: 30.0,
                x1: 43.0,
                y1: 33.0
            })
        );
        let pts = prompts_from(
            &two_blobs(),
            &Rule::parse("v2-points").unwrap(),
            &mut m,
            &mut l,
        );
        let p = &pts.prompts[0].points;
        assert_eq!(p.len(), 5);
        assert!(
            p.iter()
                .all(|p| p.foreground && (5.0..25.0).contains(&p.x) && (5.0..15.0).contains(&p.y))
        );
        // reproducible
        let again = prompts_from(
            &two_blobs(),
            &Rule::parse("v2-points").unwrap(),
            &mut m,
            &mut l,
        );
        assert_eq!(again.prompts, pts.prompts);
    }

    #[test]
    fn fallback_when_nothing_is_salient() {
        let (mut m, mut l) = (Vec::new(), Vec::new());
        let mut flat = map(10, 8, |_, _| 0.0);
        flat.grid = vec![0.0; 4];
        let a = prompts_from(&flat, &Rule::V1, &mut m, &mut l);
        assert!(a.fallback.as_deref().unwrap().contains("flat"));
        assert_eq!(
            a.prompts[0].bbox,
            Some(BoxPrompt {
                x0: 0.0,
                y0: 0.0,
                x1: 9.0,
                y1: 7.0
            })
        );
        let low = map(10, 8, |x, _| x as f32 * 0.01);
        let a = prompts_from(&low, &Rule::V1, &mut m, &mut l);
        assert!(a.fallback.as_deref().unwrap().contains("above threshold"));
    }

    #[test]
    fn thresholds_known_answers() {
        // two clusters at 0.2 and 0.8: both methods split between them
        let v: Vec<f32> = (0..100).map(|i| if i < 70 { 0.2 } else { 0.8 }).collect();
        let k = kmeans2(&v);
        assert!((k - 0.5).abs() < 1e-6, "{k}");
        let o = otsu(&v);
        assert!(o > 0.2 && o <= 0.8, "{o}");
        assert_eq!(v.iter().filter(|&&x| x >= o).count(), 30);
        assert!(Rule::V1.with_threshold("1.5").is_err());
        assert_eq!(
            Rule::V1.with_threshold("otsu").unwrap().binarize,
            Binarize::Otsu
        );
    }
}
