//! SAM's automatic mask generation ("everything mode") on one image embedding: a grid of single
//! point prompts, each decoded with the three multimask tokens, filtered by predicted IoU and
//! stability score, de-duplicated by box NMS, bounded by area. Follows the official
//! `SamAutomaticMaskGenerator`, including its optional crop layers (off by default: layer `i`
//! adds `4^i` overlapping crops, each one more encoder pass and one more grid of decoder calls).
//!
//! Stability is computed on the low-resolution logits (the decoder's 256x256 grid cropped to the
//! image), not on logits upscaled to the original size as the official code does: the same
//! ratio of areas at a 16x smaller cost; only survivors are upscaled.

use anyhow::{Result, bail};

use crate::mask::{Mask, upscale_logits};
use crate::model::native_decoder::{self, FramePrep, NativeDecoder, Scratch};
use crate::pipelines::segment::{EncodedFrame, SamSession};
use crate::prompting::prompt::{BoxPrompt, PointPrompt, Prompt};
use crate::timing::Timings;

/// What each grid cell prompts with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GridPrompts {
    /// One foreground point per cell, decoded with the three multimask tokens (official).
    #[default]
    Points,
    /// Boxes centred on the cells at [`BOX_GRID_SCALES`] of the frame, single-mask output:
    /// for box-trained models (LiteMedSAM), whose point masks are weak.
    Boxes,
}

/// Which decoder runs the grid.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GridDecoder {
    /// The native decoder (src/model/native_decoder.rs): per-frame work shared by every
    /// prompt, masks upscaled only for prompts whose predicted IoU passes. fp32 sessions; an
    /// int8 session falls back to `Tract`.
    #[default]
    Native,
    /// One tract run of the decoder graph per prompt: the reference the native one is tested
    /// against (`--grid-decoder tract`).
    Tract,
}

/// Box sides of the box grid, as fractions of the frame's width and height.
pub const BOX_GRID_SCALES: [f32; 2] = [0.15, 0.3];

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EverythingOptions {
    /// Points per side of the prompt grid (points_per_side^2 prompts).
    pub points_per_side: usize,
    pub grid: GridPrompts,
    pub decoder: GridDecoder,
    /// Keep masks whose predicted IoU is at least this.
    pub pred_iou_thresh: f32,
    /// Keep masks whose stability score is at least this.
    pub stability_thresh: f32,
    /// Logit offset of the stability score (official default 1.0).
    pub stability_offset: f32,
    /// Box IoU above which the lower-scored of two masks is dropped.
    pub box_nms_thresh: f64,
    /// Area bounds as fractions of the frame (drop specks and the whole-frame mask).
    pub min_area_frac: f64,
    pub max_area_frac: f64,
    /// Crop layers (official `crop_n_layers`, at most 2): 0 = the whole frame only.
    pub crop_n_layers: usize,
    /// Overlap of neighbouring crops as a fraction of the short side (official 512/1500).
    pub crop_overlap_ratio: f32,
    /// Box IoU for NMS across crops (official 0.7).
    pub crop_nms_thresh: f64,
    /// Coarse to fine (approximate, off by default): the `(N/2)^2` grid first, then the `N x N`
    /// grid's prompts only in this fraction of the coarse cells, those whose prompts had the
    /// highest predicted IoU (docs/ACCURACY.md measures what it loses).
    pub refine: Option<f32>,
}

impl Default for EverythingOptions {
    fn default() -> Self {
        EverythingOptions {
            points_per_side: 16,
            grid: GridPrompts::Points,
            decoder: GridDecoder::Native,
            pred_iou_thresh: 0.88,
            stability_thresh: 0.95,
            stability_offset: 1.0,
            box_nms_thresh: 0.7,
            min_area_frac: 0.001,
            max_area_frac: 0.95,
            crop_n_layers: 0,
            crop_overlap_ratio: 512.0 / 1500.0,
            crop_nms_thresh: 0.7,
            refine: None,
        }
    }
}

impl EverythingOptions {
    pub fn validate(&self) -> Result<()> {
        if !(1..=64).contains(&self.points_per_side) {
            bail!(
                "points per side must be 1..=64, got {}",
                self.points_per_side
            );
        }
        if self.crop_n_layers > 2 {
            bail!(
                "crop layers must be 0..=2, got {} (layer 2 already costs 20 encoder passes)",
                self.crop_n_layers
            );
        }
        if let Some(f) = self.refine {
            if !(f > 0.0 && f <= 1.0) {
                bail!("the refined fraction of coarse cells must be in (0, 1], got {f}");
            }
            if self.points_per_side < 2 || !self.points_per_side.is_multiple_of(2) {
                bail!(
                    "coarse to fine needs an even number of points per side (each coarse cell \
                     holds 2 x 2 fine points), got {}",
                    self.points_per_side
                );
            }
        }
        if !(0.0..1.0).contains(&self.crop_overlap_ratio) {
            bail!("crop overlap ratio must be in [0, 1)");
        }
        if !(0.0..=1.0).contains(&self.min_area_frac)
            || !(0.0..=1.0).contains(&self.max_area_frac)
            || self.min_area_frac > self.max_area_frac
        {
            bail!("area bounds must satisfy 0 <= min <= max <= 1");
        }
        Ok(())
    }
}

/// The official point grid: `n x n` points at the centres of an even partition of [0, 1]^2,
/// row-major (x fastest), as `build_point_grid`.
pub fn point_grid(n: usize) -> Vec<(f32, f32)> {
    let off = 1.0 / (2 * n) as f32;
    let step = |i: usize| off + i as f32 * (1.0 - 2.0 * off) / (n.max(2) - 1) as f32;
    let coord = |i: usize| if n == 1 { 0.5 } else { step(i) };
    (0..n)
        .flat_map(|y| (0..n).map(move |x| (coord(x), coord(y))))
        .collect()
}

/// Stability score: IoU of the masks thresholded at `threshold + offset` and at
/// `threshold - offset` (the first is inside the second). An empty loose mask scores 0.
pub fn stability_score(logits: &[f32], threshold: f32, offset: f32) -> f32 {
    let (mut inter, mut union) = (0usize, 0usize);
    for &v in logits {
        inter += (v > threshold + offset) as usize;
        union += (v > threshold - offset) as usize;
    }
    if union == 0 {
        0.0
    } else {
        inter as f32 / union as f32
    }
}

pub use crate::mask::Bbox;

/// A mask that passed the predicted-IoU and stability filters, before upscaling.
struct Survivor {
    low_res: Vec<f32>,
    iou: f32,
    stability: f32,
    point: (f32, f32),
}

pub fn box_iou(a: Bbox, b: Bbox) -> f64 {
    let area = |b: Bbox| ((b.2 - b.0 + 1) as f64) * ((b.3 - b.1 + 1) as f64);
    let (x0, y0, x1, y1) = (a.0.max(b.0), a.1.max(b.1), a.2.min(b.2), a.3.min(b.3));
    if x1 < x0 || y1 < y0 {
        return 0.0;
    }
    let inter = ((x1 - x0 + 1) as f64) * ((y1 - y0 + 1) as f64);
    inter / (area(a) + area(b) - inter)
}

/// Greedy NMS: indices kept, best score first; a box overlapping a kept one by more than
/// `thresh` is dropped. Ties keep the earlier index (deterministic).
pub fn nms(boxes: &[Bbox], scores: &[f32], thresh: f64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..boxes.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut keep: Vec<usize> = Vec::new();
    for i in order {
        if keep.iter().all(|&k| box_iou(boxes[i], boxes[k]) <= thresh) {
            keep.push(i);
        }
    }
    keep
}

/// One surviving mask of everything mode.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub mask: Mask,
    pub bbox: Bbox,
    pub pred_iou: f32,
    pub stability: f32,
    /// The grid point that produced it (original-image pixels).
    pub point: (f32, f32),
}

/// Counts at each filter, for the report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Funnel {
    pub prompts: usize,
    pub masks: usize,
    pub after_iou: usize,
    pub after_stability: usize,
    pub after_area: usize,
    pub after_nms: usize,
}

/// The official `generate_crop_boxes`: the whole frame (layer 0), then for each layer `i`
/// `2^i x 2^i` crops overlapping by `ratio` of the short side. Boxes are `(x0, y0, x1, y1)`
/// with exclusive ends, in the official order (x outer, y inner).
pub fn crop_boxes(
    w: u32,
    h: u32,
    n_layers: usize,
    ratio: f32,
) -> Vec<((u32, u32, u32, u32), usize)> {
    let mut out = vec![((0, 0, w, h), 0)];
    let short = w.min(h) as f32;
    let crop_len = |len: u32, n: u32, overlap: u32| {
        ((overlap * (n - 1) + len) as f32 / n as f32).ceil() as u32
    };
    for layer in 0..n_layers {
        let n = 1u32 << (layer + 1);
        let overlap = (ratio * short * (2.0 / n as f32)) as u32;
        let (cw, ch) = (crop_len(w, n, overlap), crop_len(h, n, overlap));
        for i in 0..n {
            for j in 0..n {
                let (x0, y0) = ((cw - overlap) * i, (ch - overlap) * j);
                out.push(((x0, y0, (x0 + cw).min(w), (y0 + ch).min(h)), layer + 1));
            }
        }
    }
    out
}

/// A box touching the crop's edge (within `tol` px) where the crop edge is not the frame's:
/// the object was cut by the crop, and the whole-frame pass (or another crop) sees it whole.
pub fn near_crop_edge(b: Bbox, crop: (u32, u32, u32, u32), frame: (u32, u32), tol: u32) -> bool {
    let close = |a: u32, c: u32| a.abs_diff(c) <= tol;
    let (cx0, cy0, cx1, cy1) = (crop.0, crop.1, crop.2 - 1, crop.3 - 1);
    (close(b.0, cx0) && cx0 != 0)
        || (close(b.1, cy0) && cy0 != 0)
        || (close(b.2, cx1) && crop.2 != frame.0)
        || (close(b.3, cy1) && crop.3 != frame.1)
}

/// Everything mode with crop layers: `full` is the whole frame's encoding (reused); each crop
/// is encoded, gridded and decoded on its own, its masks moved back into the frame, masks cut
/// by a crop edge dropped, and NMS run across crops preferring masks from smaller crops (as
/// the official generator does).
pub fn generate_layers(
    sam: &mut SamSession,
    frame: &crate::input::image_io::RgbFrame,
    full: &EncodedFrame,
    o: &EverythingOptions,
    t: &mut Timings,
) -> Result<(Vec<Candidate>, Funnel)> {
    o.validate()?;
    let (w, h) = (frame.width, frame.height);
    let boxes = crop_boxes(w, h, o.crop_n_layers, o.crop_overlap_ratio);
    let (mut all, mut funnel) = generate(sam, full, o, t)?;
    if boxes.len() == 1 {
        return Ok((all, funnel));
    }
    let mut crop_area: Vec<f64> = vec![(w as f64) * (h as f64); all.len()];
    for &(cb, _) in &boxes[1..] {
        let (cw, ch) = (cb.2 - cb.0, cb.3 - cb.1);
        let crop = frame.crop(cb.0, cb.1, cw, ch);
        let enc = sam.encode(&crop, t)?;
        let (cands, f) = generate(sam, &enc, o, t)?;
        funnel.prompts += f.prompts;
        funnel.masks += f.masks;
        funnel.after_iou += f.after_iou;
        funnel.after_stability += f.after_stability;
        for c in cands {
            let b = (
                c.bbox.0 + cb.0,
                c.bbox.1 + cb.1,
                c.bbox.2 + cb.0,
                c.bbox.3 + cb.1,
            );
            if near_crop_edge(b, cb, (w, h), 20) {
                continue;
            }
            let mut mask = Mask::empty(w, h);
            for y in 0..ch as usize {
                let src = &c.mask.data[y * cw as usize..(y + 1) * cw as usize];
                let d = (y + cb.1 as usize) * w as usize + cb.0 as usize;
                mask.data[d..d + cw as usize].copy_from_slice(src);
            }
            crop_area.push((cw as f64) * (ch as f64));
            all.push(Candidate {
                mask,
                bbox: b,
                point: (c.point.0 + cb.0 as f32, c.point.1 + cb.1 as f32),
                ..c
            });
        }
    }
    funnel.after_area = all.len();
    let keep = t.stage("everything_nms", || {
        let bb: Vec<Bbox> = all.iter().map(|c| c.bbox).collect();
        let scores: Vec<f32> = crop_area.iter().map(|a| (1.0 / a) as f32).collect();
        nms(&bb, &scores, o.crop_nms_thresh)
    });
    let mut slots: Vec<Option<Candidate>> = all.into_iter().map(Some).collect();
    let out: Vec<Candidate> = keep.into_iter().filter_map(|i| slots[i].take()).collect();
    funnel.after_nms = out.len();
    Ok((out, funnel))
}

/// Everything mode on an encoded frame: every grid prompt decoded (the native decoder, or one
/// tract run per prompt: the exported decoder has batch 1), filtered, upscaled and NMS'd.
pub fn generate(
    sam: &mut SamSession,
    frame: &EncodedFrame,
    o: &EverythingOptions,
    t: &mut Timings,
) -> Result<(Vec<Candidate>, Funnel)> {
    o.validate()?;
    let g = frame.geometry;
    let (w, h) = (g.orig_w as f32, g.orig_h as f32);
    let thr = sam.mask_threshold();
    let low = sam.manifest.sam.low_res_size as usize;
    let s = sam.manifest.sam.image_size as f32;
    // the part of the low-res grid covering the image (the rest is padding)
    let (lw, lh) = (
        ((g.resized_w as f32 * low as f32 / s).ceil() as usize).clamp(1, low),
        ((g.resized_h as f32 * low as f32 / s).ceil() as usize).clamp(1, low),
    );
    let mut f = Funnel::default();
    let mut kept: Vec<Survivor> = Vec::new();
    let scaled = |grid: Vec<(f32, f32)>| -> Vec<(f32, f32)> {
        grid.into_iter()
            .map(|(px, py)| ((px * w).min(w - 1.0), (py * h).min(h - 1.0)))
            .collect()
    };
    let tokens = match o.grid {
        GridPrompts::Points => 1..4,
        GridPrompts::Boxes => 0..1,
    };
    let judge = Judge {
        tokens: tokens.clone(),
        pred_iou: o.pred_iou_thresh,
        stability: o.stability_thresh,
        offset: o.stability_offset,
        thr,
        low,
        crop: (lw, lh),
    };
    let mut run = GridRun {
        sam,
        frame,
        o,
        judge: &judge,
        prep: None,
    };
    let n = o.points_per_side;
    let fine = scaled(point_grid(n));
    let (prompts, per_prompt) = match o.refine {
        None => {
            let prompts = grid_prompts(o.grid, &fine, (w, h));
            let judged = run.decode(&prompts, t)?;
            (prompts, judged)
        }
        Some(frac) => {
            // Coarse cell (cx, cy) holds the fine points (2cx + {0, 1}, 2cy + {0, 1}); a cell's
            // score is the best predicted IoU of its prompts (both box scales).
            let nc = n / 2;
            let mut prompts = grid_prompts(o.grid, &scaled(point_grid(nc)), (w, h));
            let mut judged = run.decode(&prompts, t)?;
            let mut score = vec![f32::NEG_INFINITY; nc * nc];
            for (i, j) in judged.iter().enumerate() {
                score[i % (nc * nc)] = score[i % (nc * nc)].max(j.1);
            }
            let refined: Vec<(f32, f32)> = refined_points(n, &score, frac)
                .into_iter()
                .map(|i| fine[i])
                .collect();
            let more = grid_prompts(o.grid, &refined, (w, h));
            judged.extend(run.decode(&more, t)?);
            prompts.extend(more);
            (prompts, judged)
        }
    };
    for ((point, _), (passed_iou, _, survivors)) in prompts.iter().zip(per_prompt) {
        f.prompts += 1;
        f.masks += tokens.len();
        f.after_iou += passed_iou;
        f.after_stability += survivors.len();
        kept.extend(
            survivors
                .into_iter()
                .map(|(iou, stability, low_res)| Survivor {
                    low_res,
                    iou,
                    stability,
                    point: *point,
                }),
        );
    }
    let area = (g.orig_w as f64) * (g.orig_h as f64);
    let mut cands: Vec<Candidate> = t.stage("postprocess", || {
        kept.into_iter()
            .filter_map(|s| {
                let logits = upscale_logits(&s.low_res, low, &g);
                let mask = Mask::from_logits(g.orig_w, g.orig_h, &logits, thr);
                let a = mask.area() as f64;
                let bbox = mask.bbox()?;
                (a >= o.min_area_frac * area && a <= o.max_area_frac * area).then_some(Candidate {
                    mask,
                    bbox,
                    pred_iou: s.iou,
                    stability: s.stability,
                    point: s.point,
                })
            })
            .collect()
    });
    f.after_area = cands.len();
    let keep = t.stage("everything_nms", || {
        let boxes: Vec<Bbox> = cands.iter().map(|c| c.bbox).collect();
        let scores: Vec<f32> = cands.iter().map(|c| c.pred_iou).collect();
        nms(&boxes, &scores, o.box_nms_thresh)
    });
    let mut slots: Vec<Option<Candidate>> = cands.drain(..).map(Some).collect();
    let out: Vec<Candidate> = keep.into_iter().filter_map(|i| slots[i].take()).collect();
    f.after_nms = out.len();
    Ok((out, f))
}

/// The `n x n` grid's points (row-major indices) inside the `ceil(frac * cells)` best-scored
/// cells of the `n/2 x n/2` coarse grid (`score` per coarse cell, row-major; ties keep the
/// earlier cell): coarse cell `(cx, cy)` holds the fine points `(2cx + {0,1}, 2cy + {0,1})`.
pub fn refined_points(n: usize, score: &[f32], frac: f32) -> Vec<usize> {
    let nc = n / 2;
    let cells = nc * nc;
    let mut order: Vec<usize> = (0..cells).collect();
    order.sort_by(|&a, &b| score[b].total_cmp(&score[a]).then(a.cmp(&b)));
    let take = ((frac * cells as f32).ceil() as usize).clamp(1, cells.max(1));
    let mut chosen = vec![false; cells];
    order.iter().take(take).for_each(|&c| chosen[c] = true);
    (0..n * n)
        .filter(|&i| chosen[(i / n / 2) * nc + (i % n) / 2])
        .collect()
}

/// (grid point, prompt) pairs: one foreground point per centre, or a box per scale and
/// centre (scales outer, so prompt `i` belongs to centre `i % centres`).
type Cells = Vec<((f32, f32), Prompt)>;

fn grid_prompts(grid: GridPrompts, centres: &[(f32, f32)], (w, h): (f32, f32)) -> Cells {
    match grid {
        GridPrompts::Points => centres
            .iter()
            .map(|&(x, y)| {
                let points = vec![PointPrompt {
                    x,
                    y,
                    foreground: true,
                }];
                ((x, y), Prompt { bbox: None, points })
            })
            .collect(),
        GridPrompts::Boxes => BOX_GRID_SCALES
            .iter()
            .flat_map(|&s| centres.iter().map(move |&c| (s, c)))
            .map(|(s, (x, y))| {
                let (hw, hh) = (s * w / 2.0, s * h / 2.0);
                let b = BoxPrompt {
                    x0: (x - hw).max(0.0),
                    y0: (y - hh).max(0.0),
                    x1: (x + hw).min(w - 1.0),
                    y1: (y + hh).min(h - 1.0),
                };
                (
                    (x, y),
                    Prompt {
                        bbox: Some(b),
                        points: vec![],
                    },
                )
            })
            .collect(),
    }
}

/// The grid's decoder for one frame: the native decoder's per-frame part is prepared on the
/// first batch of prompts and shared by the next (coarse to fine decodes two).
struct GridRun<'a> {
    sam: &'a mut SamSession,
    frame: &'a EncodedFrame,
    o: &'a EverythingOptions,
    judge: &'a Judge,
    prep: Option<FramePrep>,
}

impl GridRun<'_> {
    fn decode(&mut self, prompts: &Cells, t: &mut Timings) -> Result<Vec<Judged>> {
        let g = self.frame.geometry;
        let (mut coords, mut labels) = (Vec::with_capacity(4), Vec::with_capacity(2));
        let encoded: Vec<(Vec<f32>, Vec<f32>)> = prompts
            .iter()
            .map(|(_, p)| {
                p.encode(&g, &mut coords, &mut labels);
                (coords.clone(), labels.clone())
            })
            .collect();
        let judge = self.judge;
        if let (GridDecoder::Native, Some(nd)) = (self.o.decoder, sam_native(self.sam, self.o, t)) {
            if self.prep.is_none() {
                let emb = self.frame.embedding.as_slice()?;
                self.prep = Some(t.stage("decoder_frame", || nd.prepare(emb))?);
            }
            let prep = self.prep.as_ref().expect("prepared above");
            return t.stage("decoder_grid", || run_native(nd, prep, &encoded, judge));
        }
        let (lw, lh) = judge.crop;
        let mut crop = vec![0f32; lw * lh];
        let mut all = Vec::with_capacity(encoded.len());
        for (coords, labels) in &encoded {
            let out = t.stage("decoder", || {
                self.sam
                    .decoder_mut()
                    .run(&self.frame.embedding, coords, labels)
            })?;
            let planes = (0..out.iou.len())
                .map(|k| out.plane(k))
                .collect::<Result<Vec<_>>>()?;
            all.push(judge.judge(&out.iou, || Ok(planes.clone()), &mut crop)?);
        }
        Ok(all)
    }
}

/// The native decoder when the options ask for it and the session has one.
fn sam_native<'a>(
    sam: &'a mut SamSession,
    o: &EverythingOptions,
    t: &mut Timings,
) -> Option<&'a NativeDecoder> {
    match o.decoder {
        GridDecoder::Native => sam.native_decoder(t),
        GridDecoder::Tract => None,
    }
}

/// A prompt's outcome: its masks past the IoU filter, its best predicted IoU (of the tokens
/// read), and its survivors as (predicted IoU, stability, low-res logits).
type Judged = (usize, f32, Vec<(f32, f32, Vec<f32>)>);

/// The filters of one prompt's masks, the same for both decoders.
struct Judge {
    tokens: std::ops::Range<usize>,
    pred_iou: f32,
    stability: f32,
    offset: f32,
    thr: f32,
    low: usize,
    /// The part of the low-res grid covering the image.
    crop: (usize, usize),
}

impl Judge {
    /// Predicted IoU first; `planes` (all the prompt's low-res planes) is asked for only when a
    /// token passed it, so a native prompt that fails pays no upscaling.
    fn judge<'p>(
        &self,
        iou: &[f32],
        planes: impl FnOnce() -> Result<Vec<&'p [f32]>>,
        crop: &mut [f32],
    ) -> Result<Judged> {
        let best = self
            .tokens
            .clone()
            .map(|k| iou[k])
            .fold(f32::NEG_INFINITY, f32::max);
        let passed: Vec<usize> = self
            .tokens
            .clone()
            .filter(|&k| iou[k] >= self.pred_iou)
            .collect();
        if passed.is_empty() {
            return Ok((0, best, Vec::new()));
        }
        let planes = planes()?;
        let (lw, lh) = self.crop;
        let mut out = Vec::new();
        for &k in &passed {
            let plane = planes[k];
            for y in 0..lh {
                crop[y * lw..(y + 1) * lw].copy_from_slice(&plane[y * self.low..y * self.low + lw]);
            }
            let st = stability_score(crop, self.thr, self.offset);
            if st >= self.stability {
                out.push((iou[k], st, plane.to_vec()));
            }
        }
        Ok((passed.len(), best, out))
    }
}

/// Prompts a worker takes at a time, whose first-layer token side runs as one batch (12 x 7
/// tokens: 84 rows, whole 6-row register blocks, each MLP weight read once for 12 prompts);
/// chosen by measurement against 1 and 6 (docs/BENCHMARKS.md).
const GRID_BATCH: usize = 12;

/// Every prompt through the native decoder on `native_decoder::worker_threads()` workers
/// (`--threads`), each with its own buffers; results in prompt order.
fn run_native(
    nd: &NativeDecoder,
    prep: &FramePrep,
    prompts: &[(Vec<f32>, Vec<f32>)],
    judge: &Judge,
) -> Result<Vec<Judged>> {
    let workers = native_decoder::worker_threads().clamp(1, prompts.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let plane = judge.low * judge.low;
    let work = || -> Result<Vec<(usize, Judged)>> {
        let mut scratch = Scratch::default();
        let mut masks = Vec::new();
        let mut crop = vec![0f32; judge.crop.0 * judge.crop.1];
        let mut done = Vec::new();
        loop {
            let i0 = next.fetch_add(GRID_BATCH, std::sync::atomic::Ordering::Relaxed);
            if i0 >= prompts.len() {
                return Ok(done);
            }
            let chunk = &prompts[i0..(i0 + GRID_BATCH).min(prompts.len())];
            // runs of prompts with the same number of points share the first layer's batch
            let mut b0 = 0;
            while b0 < chunk.len() {
                let len = chunk[b0].1.len();
                let b1 = b0 + chunk[b0..].iter().take_while(|p| p.1.len() == len).count();
                let batch: Vec<(&[f32], &[f32])> = chunk[b0..b1]
                    .iter()
                    .map(|(c, l)| (c.as_slice(), l.as_slice()))
                    .collect();
                let first = nd.first_layer(prep, &batch, &mut scratch)?;
                for b in b0..b1 {
                    let tp = nd.tokens_from(prep, &first, b - b0, &mut scratch)?;
                    crate::model::onnx::ensure_finite(&tp.iou, "iou_predictions", nd.file())?;
                    let j = judge.judge(
                        &tp.iou,
                        || {
                            nd.masks(&tp, &mut scratch, &mut masks);
                            crate::model::onnx::ensure_finite(&masks, "low_res_masks", nd.file())?;
                            Ok(masks.chunks_exact(plane).collect())
                        },
                        &mut crop,
                    )?;
                    done.push((i0 + b, j));
                }
                b0 = b1;
            }
        }
    };
    let mut all: Vec<(usize, Judged)> = if workers == 1 {
        work()?
    } else {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..workers).map(|_| s.spawn(work)).collect();
            let mut all = Vec::with_capacity(prompts.len());
            for h in handles {
                all.extend(
                    h.join()
                        .map_err(|_| anyhow::anyhow!("a native decoder worker panicked"))??,
                );
            }
            Ok::<_, anyhow::Error>(all)
        })?
    };
    all.sort_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, j)| j).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_matches_build_point_grid() {
        // numpy: offset = 1/(2n); linspace(offset, 1-offset, n)
        let g = point_grid(4);
        assert_eq!(g.len(), 16);
        let xs: Vec<f32> = g[..4].iter().map(|p| p.0).collect();
        for (a, b) in xs.iter().zip([0.125, 0.375, 0.625, 0.875]) {
            assert!((a - b).abs() < 1e-6, "{xs:?}");
        }
        assert_eq!(g[4], (0.125, 0.375), "row-major, x fastest");
        assert_eq!(point_grid(1), vec![(0.5, 0.5)]);
        assert_eq!(point_grid(16).len(), 256);
    }

    #[test]
    fn refinement_takes_the_fine_points_of_the_best_cells() {
        // 4 x 4 fine grid, 2 x 2 coarse cells scored 0.1, 0.9, 0.5, 0.9
        let score = [0.1, 0.9, 0.5, 0.9];
        // a quarter: the best cell, the earlier of the tie (cell 1: x 2..4, y 0..2)
        assert_eq!(refined_points(4, &score, 0.25), vec![2, 3, 6, 7]);
        // half: cells 1 and 3 (x 2..4, y 2..4)
        assert_eq!(
            refined_points(4, &score, 0.5),
            vec![2, 3, 6, 7, 10, 11, 14, 15]
        );
        // everything, and at least one cell however small the fraction
        assert_eq!(refined_points(4, &score, 1.0), (0..16).collect::<Vec<_>>());
        assert_eq!(refined_points(4, &score, 1e-6).len(), 4);
        // a 16 x 16 grid, a quarter of its 64 cells: 16 cells of 4 points
        let s64: Vec<f32> = (0..64).map(|i| i as f32).collect();
        let r = refined_points(16, &s64, 0.25);
        assert_eq!(r.len(), 64);
        assert!(r.iter().all(|&i| (i / 16 / 2) * 8 + (i % 16) / 2 >= 48));
    }

    #[test]
    fn stability_known_answers() {
        // logits: 2 above +1, 2 more above -1, 1 below
        let l = [3.0, 1.5, 0.5, -0.5, -2.0];
        assert_eq!(stability_score(&l, 0.0, 1.0), 0.5);
        assert_eq!(stability_score(&[-5.0; 4], 0.0, 1.0), 0.0);
        assert_eq!(stability_score(&[5.0; 4], 0.0, 1.0), 1.0);
    }

    #[test]
    fn nms_known_answers() {
        let boxes = [(0, 0, 9, 9), (1, 1, 10, 10), (20, 20, 29, 29), (0, 0, 9, 9)];
        let scores = [0.9, 0.95, 0.5, 0.9];
        // box 1 wins; box 0 overlaps it (81/119 = 0.68 > 0.5) and box 3 is box 0
        assert_eq!(nms(&boxes, &scores, 0.5), vec![1, 2]);
        // a looser threshold keeps box 0 (0.68 <= 0.7) but never its duplicate 3
        assert_eq!(nms(&boxes, &scores, 0.7), vec![1, 0, 2]);
        assert!((box_iou((0, 0, 9, 9), (1, 1, 10, 10)) - 81.0 / 119.0).abs() < 1e-12);
        assert_eq!(box_iou((0, 0, 1, 1), (5, 5, 6, 6)), 0.0);
    }

    #[test]
    fn crop_boxes_match_generate_crop_boxes() {
        // official generate_crop_boxes((600, 800), 1, 512/1500): short 600, overlap
        // int(0.3413*600*1) = 204, crop_w = ceil((204+800)/2) = 502, crop_h = ceil((204+600)/2) = 402
        let b = crop_boxes(800, 600, 1, 512.0 / 1500.0);
        assert_eq!(b.len(), 5);
        assert_eq!(b[0], ((0, 0, 800, 600), 0));
        assert_eq!(b[1], ((0, 0, 502, 402), 1));
        assert_eq!(b[2], ((0, 198, 502, 600), 1), "y varies fastest");
        assert_eq!(b[3], ((298, 0, 800, 402), 1));
        assert_eq!(b[4], ((298, 198, 800, 600), 1));
        assert_eq!(crop_boxes(800, 600, 2, 512.0 / 1500.0).len(), 1 + 4 + 16);
        // a box touching the crop's inner edge is cut; touching the frame's edge is not
        let crop = (0, 0, 502, 402);
        assert!(near_crop_edge((100, 100, 500, 200), crop, (800, 600), 20));
        assert!(!near_crop_edge((0, 0, 200, 200), crop, (800, 600), 20));
        assert!(!near_crop_edge((100, 100, 300, 300), crop, (800, 600), 20));
    }

    #[test]
    fn options_are_checked() {
        assert!(EverythingOptions::default().validate().is_ok());
        assert!(
            EverythingOptions {
                crop_n_layers: 3,
                ..Default::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            EverythingOptions {
                crop_n_layers: 1,
                ..Default::default()
            }
            .validate()
            .is_ok()
        );
        assert!(
            EverythingOptions {
                points_per_side: 0,
                ..Default::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            EverythingOptions {
                min_area_frac: 0.5,
                max_area_frac: 0.1,
                ..Default::default()
            }
            .validate()
            .is_err()
        );
    }
}
