//! The interactive box/point pipeline: frame -> SAM preprocessing -> encoder -> decoder ->
//! mask post-processing. One encoder pass per frame; any number of prompts per embedding.

use anyhow::Result;
use std::path::Path;

use crate::input::image_io::RgbFrame;
use crate::mask::{Mask, upscale_logits};
use crate::model::native_decoder::{self, NativeDecoder};
use crate::model::{Embedding, Manifest, Precision, SamDecoder, SamEncoder};
use crate::preprocess::{Geometry, Recipe, sam_input_into};
use crate::prompting::prompt::Prompt;
use crate::timing::Timings;

/// Both SAM models plus the buffers reused across frames.
pub struct SamSession {
    pub manifest: Manifest,
    pub precision: Precision,
    pub decoder_precision: Precision,
    /// The decoder's precision was `auto`'s pick, not asked for: everything mode may then run
    /// its prompts on the native fp32 decoder (far faster for a grid than any per-prompt decoder)
    /// whatever `auto` picked for single prompts.
    pub decoder_auto: bool,
    encoder: SamEncoder,
    decoder: SamDecoder,
    recipe: Recipe,
    input: Vec<f32>,
    coords: Vec<f32>,
    labels: Vec<f32>,
    native: NativeState,
}

/// Everything mode's native decoder, loaded on its first use.
enum NativeState {
    Unloaded,
    Ready(Box<NativeDecoder>),
    /// Not usable here (an int8 decoder session, or a decoder file it cannot read): everything
    /// mode runs the tract decoder; said once in the log.
    Unavailable,
}

/// A frame's embedding with the geometry needed to map prompts in and masks out.
pub struct EncodedFrame {
    pub embedding: Embedding,
    pub geometry: Geometry,
}

#[derive(Clone, Debug)]
pub struct Segmentation {
    pub mask: Mask,
    /// Index of the decoder's mask token that was kept (0..4).
    pub token: usize,
    /// The decoder's predicted IoU for that token.
    pub iou: f32,
    /// Mask logits at the original image size (thresholded into `mask`); cine mode blends them
    /// across frames.
    pub logits: Vec<f32>,
}

impl SamSession {
    pub fn load(models_dir: &Path, precision: Precision) -> Result<Self> {
        Self::load_mixed(models_dir, precision, precision)
    }

    /// Encoder and decoder in their own precisions (a board may want an int8 encoder and an
    /// fp32 decoder). `precision` reports the encoder's.
    pub fn load_mixed(
        models_dir: &Path,
        precision: Precision,
        decoder_precision: Precision,
    ) -> Result<Self> {
        let mut t = Timings::default();
        let manifest = Manifest::load(models_dir)?;
        log::info!(
            "SAM: {} ({} weights, {} px input; {})",
            manifest.sam.family.as_str(),
            manifest.sam.weights_label(),
            manifest.sam.image_size,
            manifest.sam.source
        );
        if manifest.sam.synthetic {
            log::warn!(
                "models in {} have SYNTHETIC weights (seeded random, untrained, seed {}): masks show the pipeline runs, not anatomy",
                models_dir.display(),
                manifest.sam.seed
            );
        }
        let encoder = t.stage("load_encoder", || SamEncoder::load(&manifest, precision))?;
        let decoder = t.stage("load_decoder", || {
            SamDecoder::load(&manifest, decoder_precision)
        })?;
        let s = manifest.sam.image_size as usize;
        let recipe = manifest.sam.recipe();
        Ok(SamSession {
            manifest,
            precision,
            decoder_precision,
            decoder_auto: false,
            encoder,
            decoder,
            recipe,
            input: vec![0.0; 3 * s * s],
            coords: Vec::with_capacity(64),
            labels: Vec::with_capacity(32),
            native: NativeState::Unloaded,
        })
    }

    pub fn encode(&mut self, frame: &RgbFrame, t: &mut Timings) -> Result<EncodedFrame> {
        let geometry = t.stage("preprocess", || {
            sam_input_into(frame, &self.recipe, &mut self.input)
        });
        let embedding = t.stage("encoder", || self.encoder.run(&self.input))?;
        // A NaN or Inf embedding (a damaged model, a numerical fault) would decode to a mask
        // that means nothing: refuse the frame instead.
        if !embedding.as_slice()?.iter().all(|v| v.is_finite()) {
            anyhow::bail!("the image encoder produced non-finite values (NaN/Inf)");
        }
        Ok(EncodedFrame {
            embedding,
            geometry,
        })
    }

    /// Decode one prompt against an encoded frame. The prompt must already be validated.
    pub fn decode(
        &mut self,
        f: &EncodedFrame,
        prompt: &Prompt,
        t: &mut Timings,
    ) -> Result<Segmentation> {
        prompt.encode(&f.geometry, &mut self.coords, &mut self.labels);
        let out = t.stage("decoder", || {
            self.decoder.run(&f.embedding, &self.coords, &self.labels)
        })?;
        let token = prompt.pick_token(&out.iou);
        if !out.iou[token].is_finite() || !out.plane(token)?.iter().all(|v| v.is_finite()) {
            anyhow::bail!("the mask decoder produced non-finite values (NaN/Inf)");
        }
        let thr = self.manifest.sam.mask_threshold;
        let g = f.geometry;
        let (mask, logits) = t.stage("postprocess", || -> Result<(Mask, Vec<f32>)> {
            let logits = upscale_logits(out.plane(token)?, out.low_res_size, &g);
            Ok((Mask::from_logits(g.orig_w, g.orig_h, &logits, thr), logits))
        })?;
        Ok(Segmentation {
            mask,
            token,
            iou: out.iou[token],
            logits,
        })
    }

    /// The threshold that turns logits into a mask.
    pub fn mask_threshold(&self) -> f32 {
        self.manifest.sam.mask_threshold
    }

    /// Everything mode's native decoder (src/model/native_decoder.rs), read from the manifest's
    /// fp32 decoder file on first use. `None` (and the tract decoder, said once in the log)
    /// when the session was asked to decode in int8 (the native decoder is fp32; an int8 that
    /// `auto` picked does not count, see [`Self::decoder_auto`]) or the file cannot be read by
    /// SAM's module names: everything mode degrades to the slower path, it does not fail.
    pub fn native_decoder(&mut self, t: &mut Timings) -> Option<&NativeDecoder> {
        if let NativeState::Unloaded = self.native {
            self.native = if self.decoder_precision != Precision::Fp32 && !self.decoder_auto {
                log::info!(
                    "everything mode: the native decoder is fp32 only; the {} decoder runs each prompt on tract",
                    self.decoder_precision.as_str()
                );
                NativeState::Unavailable
            } else {
                match t.stage("load_native_decoder", || {
                    native_decoder::load(&self.manifest, crate::simd::Kernel::best())
                }) {
                    Ok(d) => NativeState::Ready(Box::new(d)),
                    Err(e) => {
                        log::warn!(
                            "everything mode: native decoder unavailable ({e:#}); running each prompt on tract"
                        );
                        NativeState::Unavailable
                    }
                }
            };
        }
        match &self.native {
            NativeState::Ready(d) => Some(d),
            _ => None,
        }
    }

    /// Low-level access for parity tests and benchmarks.
    pub fn decoder_mut(&mut self) -> &mut SamDecoder {
        &mut self.decoder
    }
}
