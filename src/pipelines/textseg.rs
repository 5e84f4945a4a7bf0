//! The MedCLIP-SAM pipeline, gradient-free: text -> CLIP text embedding; frame -> CLIP saliency
//! -> prompt rules -> SAM (one encoder pass, one decoder pass per box) -> mask.

use anyhow::Result;
use std::path::Path;

use crate::input::image_io::RgbFrame;
use crate::mask::Mask;
use crate::model::clip::load_tokenizer;
use crate::model::{ClipTextEncoder, Precision, Role};
use crate::pipelines::segment::{SamSession, Segmentation};
use crate::prompting::autoprompt::{AutoPrompt, Rule, prompts_from};
use crate::prompting::bank::TextEncoder;
use crate::prompting::saliency::{Method, SaliencyEngine, SaliencyMap};
use crate::timing::Timings;

/// SAM, the CLIP image side (saliency) and the CLIP text side, with reusable buffers.
pub struct TextPipeline {
    pub sam: SamSession,
    pub saliency: SaliencyEngine,
    pub text: TextEncoder,
    pub clip_precision: Precision,
    mask_buf: Vec<u8>,
    labels: Vec<u32>,
}

/// Everything one text-prompted frame produced (the mask and how it was reached).
pub struct TextSegmentation {
    pub mask: Mask,
    pub saliency: SaliencyMap,
    pub auto: AutoPrompt,
    pub segments: Vec<Segmentation>,
}

/// The CLIP half of a text pipeline: the image encoder (saliency) and the text encoder.
pub struct ClipParts {
    pub saliency: SaliencyEngine,
    pub text: TextEncoder,
    pub precision: Precision,
}

impl ClipParts {
    /// Loads CLIP from the manifest's models (its tokenizer vocabulary included).
    pub fn load(
        m: &crate::model::Manifest,
        models: &Path,
        clip_precision: Precision,
        scorecam_batch: usize,
    ) -> Result<Self> {
        let mut t = Timings::default();
        let clip = m.clip()?;
        if clip.synthetic {
            log::warn!(
                "CLIP models in {} have SYNTHETIC weights (seeded random, untrained, seed {}): saliency shows the pipeline runs, not where the anatomy is",
                models.display(),
                clip.seed
            );
        }
        let saliency = t.stage("load_clip_image", || {
            SaliencyEngine::load(m, clip_precision, scorecam_batch)
        })?;
        let text = t.stage("load_clip_text", || -> Result<TextEncoder> {
            let tokenizer = load_tokenizer(m)?;
            let model = ClipTextEncoder::load(m, clip_precision)?;
            let sha = m.entry(Role::ClipText, clip_precision)?.sha256.clone();
            Ok(TextEncoder::new(tokenizer, model, sha))
        })?;
        Ok(ClipParts {
            saliency,
            text,
            precision: clip_precision,
        })
    }
}

impl TextPipeline {
    /// `scorecam_batch`: CLIP batch planned for ScoreCAM's masked frames (1: none).
    pub fn load(
        models: &Path,
        sam_precision: Precision,
        decoder_precision: Precision,
        clip_precision: Precision,
        scorecam_batch: usize,
    ) -> Result<Self> {
        let sam = SamSession::load_mixed(models, sam_precision, decoder_precision)?;
        let clip = ClipParts::load(&sam.manifest, models, clip_precision, scorecam_batch)?;
        Ok(Self::with_clip(sam, clip))
    }

    /// A SAM session already running, joined by CLIP models loaded separately (a device that
    /// loads CLIP only when a text prompt first asks for it).
    pub fn with_clip(sam: SamSession, clip: ClipParts) -> Self {
        TextPipeline {
            sam,
            saliency: clip.saliency,
            text: clip.text,
            clip_precision: clip.precision,
            mask_buf: Vec::new(),
            labels: Vec::new(),
        }
    }

    /// Which models are real: `{"sam": {...}, "clip": {...}}` for `--json`.
    pub fn models_json(&self) -> serde_json::Value {
        let m = &self.sam.manifest;
        serde_json::json!({
            "sam": {"family": m.sam.family.as_str(), "weights": m.sam.weights_label(), "source": m.sam.source},
            "clip": m.clip.as_ref().map(|c| serde_json::json!({
                "config": c.config, "weights": if c.synthetic { "SYNTHETIC" } else { "real" }, "source": c.source,
            })),
        })
    }

    /// The warning a text-prompted result carries unless both models are real.
    pub fn weights_note(&self) -> String {
        let m = &self.sam.manifest;
        let clip_synthetic = m.clip.as_ref().is_some_and(|c| c.synthetic);
        match (m.sam.synthetic, clip_synthetic) {
            (false, false) => String::new(),
            (true, _) => "  [SYNTHETIC weights: not a real segmentation]".into(),
            (false, true) => format!(
                "  [SAM {} real, CLIP SYNTHETIC: the text did not choose this region; not a real text-prompted segmentation]",
                m.sam.family.as_str()
            ),
        }
    }

    /// True when SAM or CLIP weights are synthetic (outputs mean nothing).
    pub fn synthetic(&self) -> bool {
        self.sam.manifest.sam.synthetic
            || self.sam.manifest.clip.as_ref().is_some_and(|c| c.synthetic)
    }

    /// Text embedding of one description or an ensemble of several.
    pub fn embed_text(&mut self, texts: &[String], t: &mut Timings) -> Result<Vec<f32>> {
        t.stage("clip_text", || self.text.embed_ensemble(texts))
    }

    /// Saliency of the text over the frame and the SAM prompts the rule derives from it.
    pub fn auto_prompts(
        &mut self,
        frame: &RgbFrame,
        text: &[f32],
        method: Method,
        rule: &Rule,
        t: &mut Timings,
    ) -> Result<(SaliencyMap, AutoPrompt)> {
        let saliency = self.saliency.compute(frame, text, method, t)?;
        let auto = t.stage("prompts", || {
            prompts_from(&saliency, rule, &mut self.mask_buf, &mut self.labels)
        });
        if let Some(why) = &auto.fallback {
            log::warn!("saliency gave no prompt: {why}");
        }
        Ok((saliency, auto))
    }

    /// One frame, one (normalised) text embedding -> mask.
    pub fn segment(
        &mut self,
        frame: &RgbFrame,
        text: &[f32],
        method: Method,
        rule: &Rule,
        t: &mut Timings,
    ) -> Result<TextSegmentation> {
        let (saliency, auto) = self.auto_prompts(frame, text, method, rule, t)?;
        let encoded = self.sam.encode(frame, t)?;
        let mut mask = Mask::empty(frame.width, frame.height);
        let mut segments = Vec::with_capacity(auto.prompts.len());
        for p in &auto.prompts {
            let s = self.sam.decode(&encoded, p, t)?;
            mask.union_with(&s.mask);
            segments.push(s);
        }
        Ok(TextSegmentation {
            mask,
            saliency,
            auto,
            segments,
        })
    }
}
