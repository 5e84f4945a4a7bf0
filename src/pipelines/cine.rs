//! Cine mode: segment a frame sequence while running the image encoder only when the picture
//! has changed.
//!
//! Change measure: each frame is reduced to a 64x64 box-averaged luma thumbnail and compared
//! with the thumbnail of the last frame that was *encoded* (not the previous frame, so slow
//! drift accumulates until it triggers a re-encode): `change = SAD / (64 * 64 * 255)`, the mean
//! absolute luma difference as a fraction of full scale, computed with the SIMD kernel in
//! [`crate::simd`]. The encoder runs when `change > threshold`, when the frame size changed, or
//! when `max_reuse` frames in a row reused the embedding; otherwise only the decoder runs, with
//! the current prompt, on the previous embedding.
//!
//! Temporal smoothing (IoU-gated blending): when the new mask overlaps the previous one with
//! IoU >= `gate_iou`, the mask logits are blended `smooth * new + (1 - smooth) * previous`
//! before thresholding; a lower IoU means the anatomy really moved (or the prompt changed), and
//! the new mask is taken as is.

use anyhow::Result;

use crate::input::image_io::RgbFrame;
use crate::mask::Mask;
use crate::pipelines::segment::{EncodedFrame, SamSession, Segmentation};
use crate::prompting::prompt::Prompt;
use crate::simd;
use crate::timing::Timings;

/// Side of the change-measure thumbnail.
pub const THUMB: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CineOptions {
    /// Re-encode when the mean absolute luma change exceeds this fraction (0 = every frame).
    /// Default 0.01 (2.5 grey levels): consecutive frames of the 30-frame cine in
    /// ../shared/data/dicom_us differ by 0.4-0.7%, so drift re-encodes every few frames while
    /// frame-to-frame noise does not.
    pub threshold: f32,
    /// Re-encode at least every this many frames.
    pub max_reuse: u32,
    /// Weight of the new logits when blending (1 = no smoothing).
    pub smooth: f32,
    /// Blend only when the new mask overlaps the previous one at least this much.
    pub gate_iou: f32,
}

impl Default for CineOptions {
    fn default() -> Self {
        CineOptions {
            threshold: 0.01,
            max_reuse: 10,
            smooth: 0.6,
            gate_iou: 0.5,
        }
    }
}

/// What happened to one frame.
pub struct CineStep {
    pub segmentation: Segmentation,
    pub encoder_ran: bool,
    /// Change against the last encoded frame, 0..1 (1 before the first frame).
    pub change: f32,
    /// Whether the mask was blended with the previous one.
    pub blended: bool,
}

/// Cine state: the last embedding and thumbnail, the previous mask; buffers reused per frame.
pub struct Cine {
    pub opts: CineOptions,
    encoded: Option<(EncodedFrame, u32, u32)>,
    thumb_ref: Vec<u8>,
    thumb: Vec<u8>,
    sums: Vec<(u32, u32)>,
    reused: u32,
    prev: Option<(Mask, Vec<f32>)>,
    /// A decision taken ahead by [`Cine::will_encode`] for the next [`Cine::step`].
    pending: Option<(bool, f32)>,
}

impl Cine {
    pub fn new(opts: CineOptions) -> Self {
        Cine {
            opts,
            encoded: None,
            thumb_ref: vec![0; THUMB * THUMB],
            thumb: vec![0; THUMB * THUMB],
            sums: Vec::with_capacity(THUMB * THUMB),
            reused: 0,
            prev: None,
            pending: None,
        }
    }

    /// Whether the next [`Cine::step`] on `frame` will run the encoder (the decision is kept
    /// for that step). Text pipelines use it to recompute their CLIP saliency and box only for
    /// frames that get a new embedding, and reuse the box otherwise.
    pub fn will_encode(&mut self, frame: &RgbFrame, t: &mut Timings) -> bool {
        let d = self.decide(frame, t);
        self.pending = Some(d);
        d.0
    }

    /// (encode, change) for `frame` against the last encoded frame.
    fn decide(&mut self, frame: &RgbFrame, t: &mut Timings) -> (bool, f32) {
        let change = t.stage("change", || self.change(frame));
        let same_size = self
            .encoded
            .as_ref()
            .is_some_and(|e| (e.1, e.2) == (frame.width, frame.height));
        let change = if same_size { change } else { 1.0 };
        let encode =
            !same_size || change > self.opts.threshold || self.reused >= self.opts.max_reuse;
        (encode, change)
    }

    /// Forgets the previous mask (a new prompt must not be blended with the old one's masks).
    pub fn reset_smoothing(&mut self) {
        self.prev = None;
    }

    /// Mean absolute luma change between `frame` and the last encoded frame.
    fn change(&mut self, frame: &RgbFrame) -> f32 {
        simd::luma_thumbnail(
            frame.width,
            frame.height,
            &frame.pixels,
            THUMB,
            &mut self.sums,
            &mut self.thumb,
        );
        let sad = simd::sad_u8(&self.thumb, &self.thumb_ref);
        sad as f32 / (THUMB * THUMB * 255) as f32
    }

    pub fn step(
        &mut self,
        session: &mut SamSession,
        frame: &RgbFrame,
        prompt: &Prompt,
        t: &mut Timings,
    ) -> Result<CineStep> {
        let (encode, change) = match self.pending.take() {
            Some(d) => d,
            None => self.decide(frame, t),
        };
        if encode {
            let e = session.encode(frame, t)?;
            self.encoded = Some((e, frame.width, frame.height));
            std::mem::swap(&mut self.thumb_ref, &mut self.thumb);
            self.reused = 0;
        } else {
            self.reused += 1;
        }
        let (enc, _, _) = self.encoded.as_ref().expect("encoded above");
        let mut seg = session.decode(enc, prompt, t)?;
        let mut blended = false;
        if let Some((pm, pl)) = &self.prev {
            let gate = pm.width == seg.mask.width
                && pm.height == seg.mask.height
                && self.opts.smooth < 1.0
                && seg.mask.iou(pm) >= self.opts.gate_iou as f64;
            if gate {
                let (a, thr) = (self.opts.smooth, session.mask_threshold());
                t.stage("smooth", || {
                    for ((l, &p), m) in seg.logits.iter_mut().zip(pl).zip(seg.mask.data.iter_mut())
                    {
                        *l = a * *l + (1.0 - a) * p;
                        *m = (*l > thr) as u8;
                    }
                });
                blended = true;
            }
        }
        match &mut self.prev {
            Some((m, l)) => {
                m.clone_from(&seg.mask);
                l.clone_from(&seg.logits);
            }
            None => self.prev = Some((seg.mask.clone(), seg.logits.clone())),
        }
        Ok(CineStep {
            segmentation: seg,
            encoder_ran: encode,
            change,
            blended,
        })
    }
}
