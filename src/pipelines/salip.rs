//! The SaLIP pipeline (Aleem et al., CVPR-W 2024), at one SAM encoder pass per frame:
//! everything mode on the frame's embedding -> each surviving mask's crop scored by CLIP against
//! the text (or a prompt ensemble) -> top-k retrieval -> SAM re-prompted with the retrieved
//! mask's box on the cached embedding. The reference code runs SAM ViT-H about six times per
//! frame and re-encodes the text each time; here the text is encoded once (and cached) and the
//! crops go through CLIP in batches.

use anyhow::Result;

use crate::input::image_io::RgbFrame;
use crate::mask::Mask;
use crate::pipelines::everything::{Candidate, EverythingOptions, Funnel, generate_layers};
use crate::pipelines::segment::Segmentation;
use crate::pipelines::textseg::TextPipeline;
use crate::prompting::prompt::{BoxPrompt, Prompt};
use crate::prompting::saliency::kernels;
use crate::timing::Timings;

/// What a candidate's crop shows CLIP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CropMode {
    /// The mask's bounding box with everything outside the mask blacked out (SaLIP).
    Masked,
    /// The plain bounding box.
    Box,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SalipOptions {
    pub everything: EverythingOptions,
    pub crop: CropMode,
    /// Masks retrieved (1; 2 for paired organs such as lungs, ORed).
    pub top_k: usize,
    /// A best CLIP score below this means the text matches nothing: empty mask, said so.
    pub score_floor: Option<f32>,
}

impl Default for SalipOptions {
    fn default() -> Self {
        SalipOptions {
            everything: EverythingOptions::default(),
            crop: CropMode::Masked,
            top_k: 1,
            score_floor: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Status {
    Ok,
    /// Everything mode left no mask (all filtered out): the result is an empty mask.
    NoCandidates,
    /// The best crop scored below the floor: the result is an empty mask.
    BelowFloor {
        best: f32,
        floor: f32,
    },
}

impl Status {
    pub fn describe(&self) -> String {
        match self {
            Status::Ok => "ok".into(),
            Status::NoCandidates => {
                "no mask survived everything-mode filtering: empty result".into()
            }
            Status::BelowFloor { best, floor } => {
                format!(
                    "the text matches no candidate (best CLIP score {best:.3} < floor {floor:.3}): empty result"
                )
            }
        }
    }
}

pub struct SalipResult {
    pub mask: Mask,
    pub candidates: Vec<Candidate>,
    /// CLIP cosine of each candidate's crop with the text.
    pub scores: Vec<f32>,
    /// Retrieved candidates, best first.
    pub chosen: Vec<usize>,
    pub funnel: Funnel,
    pub status: Status,
    /// The final box-prompted segmentations (one per retrieved candidate).
    pub segments: Vec<Segmentation>,
    pub boxes: Vec<BoxPrompt>,
}

/// Top-`k` indices by score (ties: lower index first), all at or above `floor`.
pub fn retrieve(scores: &[f32], k: usize, floor: Option<f32>) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    order.truncate(k);
    order.retain(|&i| floor.is_none_or(|f| scores[i] >= f));
    order
}

/// The crop CLIP sees for a candidate.
pub fn crop(frame: &RgbFrame, c: &Candidate, mode: CropMode) -> RgbFrame {
    let (x0, y0, x1, y1) = c.bbox;
    let (cw, ch) = (x1 - x0 + 1, y1 - y0 + 1);
    let mut out = frame.crop(x0, y0, cw, ch);
    if mode == CropMode::Masked {
        let fw = frame.width as usize;
        for (i, px) in out.pixels.chunks_exact_mut(3).enumerate() {
            let (x, y) = (x0 as usize + i % cw as usize, y0 as usize + i / cw as usize);
            if c.mask.data[y * fw + x] == 0 {
                px.fill(0);
            }
        }
    }
    out
}

/// SaLIP on one frame with an L2-normalised text embedding.
pub fn segment(
    p: &mut TextPipeline,
    frame: &RgbFrame,
    text: &[f32],
    o: &SalipOptions,
    t: &mut Timings,
) -> Result<SalipResult> {
    let encoded = p.sam.encode(frame, t)?;
    let (candidates, funnel) = generate_layers(&mut p.sam, frame, &encoded, &o.everything, t)?;
    let empty = |candidates, scores, funnel, status| SalipResult {
        mask: Mask::empty(frame.width, frame.height),
        candidates,
        scores,
        chosen: vec![],
        funnel,
        status,
        segments: vec![],
        boxes: vec![],
    };
    if candidates.is_empty() {
        log::warn!("SaLIP: {}", Status::NoCandidates.describe());
        if p.sam.manifest.sam.family == crate::model::Family::LiteMedsam
            && o.everything.stability_thresh > 0.9
        {
            // measured (docs/ACCURACY.md, SaLIP bound): LiteMedSAM's soft logits never reach
            // SAM's 0.95 stability, and its point masks are weak
            log::warn!(
                "SaLIP: LiteMedSAM's masks never pass SAM's stability filter (0.95); try --grid boxes --pred-iou 0.8 --stability 0.7"
            );
        }
        return Ok(empty(candidates, vec![], funnel, Status::NoCandidates));
    }
    let crops: Vec<RgbFrame> = t.stage("salip_crops", || {
        candidates.iter().map(|c| crop(frame, c, o.crop)).collect()
    });
    let embs = p.saliency.embed_frames(&crops, t)?;
    let mut scores = vec![0f32; candidates.len()];
    t.stage("salip_scores", || {
        kernels::dot_rows(p.saliency.kernel, &embs, text, &mut scores)
    });
    let chosen = retrieve(&scores, o.top_k.max(1), o.score_floor);
    if chosen.is_empty() {
        let best = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let status = Status::BelowFloor {
            best,
            floor: o.score_floor.unwrap_or(f32::NAN),
        };
        log::warn!("SaLIP: {}", status.describe());
        return Ok(empty(candidates, scores, funnel, status));
    }
    let mut mask = Mask::empty(frame.width, frame.height);
    let (mut segments, mut boxes) = (Vec::new(), Vec::new());
    for &i in &chosen {
        let (x0, y0, x1, y1) = candidates[i].bbox;
        let b = BoxPrompt {
            x0: x0 as f32,
            y0: y0 as f32,
            x1: x1 as f32,
            y1: y1 as f32,
        };
        let s = p.sam.decode(
            &encoded,
            &Prompt {
                bbox: Some(b),
                points: vec![],
            },
            t,
        )?;
        mask.union_with(&s.mask);
        segments.push(s);
        boxes.push(b);
    }
    Ok(SalipResult {
        mask,
        candidates,
        scores,
        chosen,
        funnel,
        status: Status::Ok,
        segments,
        boxes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retrieval_known_answers() {
        let s = [0.1, 0.7, 0.3, 0.7, -0.2];
        assert_eq!(retrieve(&s, 1, None), vec![1], "ties keep the lower index");
        assert_eq!(retrieve(&s, 2, None), vec![1, 3]);
        assert_eq!(
            retrieve(&s, 3, Some(0.5)),
            vec![1, 3],
            "the floor cuts the third"
        );
        assert!(retrieve(&s, 1, Some(0.8)).is_empty());
        assert!(retrieve(&[], 1, None).is_empty());
    }

    #[test]
    fn crops_black_out_the_outside() {
        let frame = RgbFrame::new(4, 3, (0..36).map(|i| i as u8 + 1).collect()).unwrap();
        let mut mask = Mask::empty(4, 3);
        mask.data[5] = 1; // (1,1)
        mask.data[6] = 1; // (2,1)
        mask.data[10] = 1; // (2,2)
        let c = Candidate {
            mask,
            bbox: (1, 1, 2, 2),
            pred_iou: 1.0,
            stability: 1.0,
            point: (0.0, 0.0),
        };
        let m = crop(&frame, &c, CropMode::Masked);
        assert_eq!((m.width, m.height), (2, 2));
        assert_eq!(m.pixel(0, 0), frame.pixel(1, 1));
        assert_eq!(m.pixel(0, 1), [0, 0, 0], "(1,2) is outside the mask");
        let b = crop(&frame, &c, CropMode::Box);
        assert_eq!(b.pixel(0, 1), frame.pixel(1, 2));
    }
}
