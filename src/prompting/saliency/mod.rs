//! Gradient-free CLIP saliency: where in the frame does the text prompt match?
//!
//! The MedCLIP-SAM papers use gScoreCAM / M2IB, which need gradients through CLIP and hundreds
//! of passes; tract has no autograd and a cart has no GPU. Two methods behind one interface:
//!
//! * [`Method::Similarity`]: one CLIP pass; the cosine between each dense patch embedding (the
//!   MaskCLIP value path, see quantize/export_clip.py) and the text embedding.
//! * [`Method::ScoreCam`]: a ScoreCAM-style map without gradients. One pass gives the dense
//!   patch embeddings; the `k` embedding channels that contribute most to the image-text score
//!   (`text[c] * mean over patches of patch[c]`, the quantity a gradient would rank them by for
//!   a linear score) each become an activation map; the frame is masked by each map (in
//!   normalised space, so masked-out pixels become the dataset mean) and the `k` masked frames
//!   run through CLIP in batches; each map is weighted by the softmax (CLIP's logit scale 100)
//!   of its masked frame's text score.
//!
//! Both give a map at image resolution in [0, 1]. The hot loops are in [`kernels`].

pub use sonomask_kernels::saliency as kernels;

use anyhow::{Result, bail};

use crate::input::image_io::RgbFrame;
use crate::model::manifest::ClipSection;
use crate::model::{ClipImageEncoder, Manifest, Precision};
use crate::preprocess::{Normalize, clip_input_into};
use crate::simd::Kernel;
use crate::timing::Timings;

/// CLIP's trained logit scale (exp of the learned temperature, clamped to 100 in training).
const LOGIT_SCALE: f32 = 100.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Similarity,
    ScoreCam { k: usize },
}

impl Method {
    pub fn parse(s: &str, k: usize) -> Result<Self> {
        match s {
            "similarity" => Ok(Method::Similarity),
            "scorecam" if (1..=512).contains(&k) => Ok(Method::ScoreCam { k }),
            "scorecam" => bail!("--scorecam-k must be 1..=512, got {k}"),
            _ => bail!("unknown saliency method '{s}' (expected similarity or scorecam)"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Method::Similarity => "similarity",
            Method::ScoreCam { .. } => "scorecam",
        }
    }
}

/// A saliency map at image resolution, values in [0, 1].
#[derive(Clone, Debug)]
pub struct SaliencyMap {
    pub width: u32,
    pub height: u32,
    pub values: Vec<f32>,
    /// Cosine between the whole frame's pooled embedding and the text (how well it matches).
    pub frame_score: f32,
    /// The patch grid map before upsampling ([0, 1]; all zeros when nothing stands out).
    pub grid: Vec<f32>,
}

impl SaliencyMap {
    /// True when the map has no structure (a constant map normalises to all zeros).
    pub fn is_flat(&self) -> bool {
        self.grid.iter().all(|&v| v == 0.0)
    }

    /// 8-bit grayscale, for pictures and tests.
    pub fn to_gray8(&self) -> Vec<u8> {
        self.values
            .iter()
            .map(|&v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
            .collect()
    }
}

/// The CLIP image encoder plus every buffer saliency needs, allocated once.
pub struct SaliencyEngine {
    pub kernel: Kernel,
    image: ClipImageEncoder,
    norm: Normalize,
    size: usize,
    grid: usize,
    dim: usize,
    input: Vec<f32>,
    pooled: Vec<f32>,
    patches: Vec<f32>,
    grid_map: Vec<f32>,
    tmp: Vec<f32>,
    /// ScoreCAM: the k channel maps (grid), the masked inputs (k frames), their embeddings.
    maps: Vec<f32>,
    masked: Vec<f32>,
    mask_full: Vec<f32>,
    masked_pooled: Vec<f32>,
}

impl SaliencyEngine {
    /// `batch`: the CLIP batch size planned for ScoreCAM's masked frames (1 = no batch plan).
    pub fn load(manifest: &Manifest, precision: Precision, batch: usize) -> Result<Self> {
        let c: &ClipSection = manifest.clip()?;
        let image = ClipImageEncoder::load(manifest, precision, batch)?;
        let (s, g, d) = (c.image_size as usize, c.grid as usize, c.embed_dim as usize);
        Ok(SaliencyEngine {
            kernel: Kernel::best(),
            image,
            norm: Normalize {
                mean: c.pixel_mean,
                std: c.pixel_std,
            },
            size: s,
            grid: g,
            dim: d,
            input: vec![0.0; 3 * s * s],
            pooled: vec![0.0; d],
            patches: vec![0.0; g * g * d],
            grid_map: vec![0.0; g * g],
            tmp: Vec::new(),
            maps: Vec::new(),
            masked: Vec::new(),
            mask_full: vec![0.0; s * s],
            masked_pooled: Vec::new(),
        })
    }

    pub fn grid(&self) -> usize {
        self.grid
    }

    /// The frame's CLIP embeddings (pooled and per patch), L2-normalised, for callers that
    /// score crops or regions themselves.
    pub fn embed(&mut self, frame: &RgbFrame, t: &mut Timings) -> Result<(&[f32], &[f32])> {
        t.stage("clip_preprocess", || {
            clip_input_into(frame, self.size as u32, &self.norm, &mut self.input)
        });
        t.stage("clip_image", || {
            self.image
                .run_into(&self.input, &mut self.pooled, &mut self.patches)
        })?;
        let k = self.kernel;
        kernels::l2_normalize_rows(k, &mut self.pooled, self.dim);
        kernels::l2_normalize_rows(k, &mut self.patches, self.dim);
        Ok((&self.pooled, &self.patches))
    }

    /// Pooled, L2-normalised CLIP embeddings of several frames (crops), `n * D` values, run in
    /// batches of the planned batch size.
    pub fn embed_frames(&mut self, frames: &[RgbFrame], t: &mut Timings) -> Result<Vec<f32>> {
        let (n, per, d) = (frames.len(), 3 * self.size * self.size, self.dim);
        self.masked.resize(n * per, 0.0);
        t.stage("clip_preprocess", || {
            for (f, buf) in frames.iter().zip(self.masked.chunks_exact_mut(per)) {
                clip_input_into(f, self.size as u32, &self.norm, buf);
            }
        });
        let mut out = vec![0.0; n * d];
        t.stage("clip_image", || {
            self.image.run_batch(&self.masked, n, &mut out)
        })?;
        kernels::l2_normalize_rows(self.kernel, &mut out, d);
        Ok(out)
    }

    /// Saliency of `text` (an L2-normalised text embedding) over `frame`.
    pub fn compute(
        &mut self,
        frame: &RgbFrame,
        text: &[f32],
        method: Method,
        t: &mut Timings,
    ) -> Result<SaliencyMap> {
        if text.len() != self.dim {
            bail!(
                "text embedding has {} values, the CLIP image model {}",
                text.len(),
                self.dim
            );
        }
        self.embed(frame, t)?;
        let k = self.kernel;
        let frame_score = kernels::dot(k, &self.pooled, text);
        match method {
            Method::Similarity => t.stage("saliency", || {
                kernels::dot_rows(k, &self.patches, text, &mut self.grid_map);
                kernels::normalize_01(k, &mut self.grid_map);
            }),
            Method::ScoreCam { k: channels } => self.scorecam(text, channels, t)?,
        }
        let (w, h) = (frame.width as usize, frame.height as usize);
        let mut values = vec![0.0; w * h];
        t.stage("saliency_upsample", || {
            kernels::upsample_bilinear(
                k,
                &self.grid_map,
                self.grid,
                self.grid,
                &mut values,
                w,
                h,
                &mut self.tmp,
            )
        });
        Ok(SaliencyMap {
            width: frame.width,
            height: frame.height,
            values,
            frame_score,
            grid: self.grid_map.clone(),
        })
    }

    fn scorecam(&mut self, text: &[f32], channels: usize, t: &mut Timings) -> Result<()> {
        let (kern, g2, d, s) = (self.kernel, self.grid * self.grid, self.dim, self.size);
        let channels = channels.min(d);
        // Rank channels by their contribution to the image-text score.
        let chosen = t.stage("scorecam_select", || {
            let mut contrib: Vec<(f32, usize)> = (0..d)
                .map(|c| {
                    let mean = (0..g2).map(|p| self.patches[p * d + c]).sum::<f32>() / g2 as f32;
                    (text[c] * mean, c)
                })
                .collect();
            contrib.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            contrib.truncate(channels);
            contrib.into_iter().map(|(_, c)| c).collect::<Vec<_>>()
        });
        let n = chosen.len();
        self.maps.resize(n * g2, 0.0);
        self.masked.resize(n * 3 * s * s, 0.0);
        self.masked_pooled.resize(n * d, 0.0);
        t.stage("scorecam_masks", || {
            for (i, &c) in chosen.iter().enumerate() {
                let map = &mut self.maps[i * g2..(i + 1) * g2];
                for (p, m) in map.iter_mut().enumerate() {
                    *m = self.patches[p * d + c];
                }
                kernels::normalize_01(kern, map);
                kernels::upsample_bilinear(
                    kern,
                    map,
                    self.grid,
                    self.grid,
                    &mut self.mask_full,
                    s,
                    s,
                    &mut self.tmp,
                );
                let frame = &mut self.masked[i * 3 * s * s..(i + 1) * 3 * s * s];
                frame.copy_from_slice(&self.input);
                for plane in frame.chunks_exact_mut(s * s) {
                    kernels::mul(kern, plane, &self.mask_full);
                }
            }
        });
        t.stage("scorecam_clip", || {
            self.image
                .run_batch(&self.masked, n, &mut self.masked_pooled)
        })?;
        t.stage("saliency", || {
            let mut scores: Vec<f32> = (0..n)
                .map(|i| {
                    let e = &mut self.masked_pooled[i * d..(i + 1) * d];
                    kernels::l2_normalize_rows(kern, e, d);
                    LOGIT_SCALE * kernels::dot(kern, e, text)
                })
                .collect();
            let max = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0;
            for v in &mut scores {
                *v = (*v - max).exp();
                sum += *v;
            }
            self.grid_map.fill(0.0);
            for (i, w) in scores.iter().enumerate() {
                let map = &self.maps[i * g2..(i + 1) * g2];
                let wa = w / sum;
                for (o, &m) in self.grid_map.iter_mut().zip(map) {
                    *o += wa * m;
                }
            }
            self.grid_map.iter_mut().for_each(|v| *v = v.max(0.0));
            kernels::normalize_01(kern, &mut self.grid_map);
        });
        Ok(())
    }
}
