//! CLIP on tract: the image encoder (pooled embedding + dense patch embeddings in the joint
//! space, see quantize/export_clip.py) and the text encoder (token ids -> embedding), plus the
//! tokenizer bound to the manifest's vocabulary.

use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use tract_onnx::prelude::*;

use super::contract::{Contract, Dim, TensorContract};
use super::manifest::{ClipSection, Manifest, Precision, Role, sha256_hex};
use super::onnx::{self, State, ensure_finite, f32s, parse_role};
use crate::text::Tokenizer;

/// Overrides where the BPE vocabulary is read from (default: beside the models).
pub const VOCAB_ENV: &str = "SONOMASK_CLIP_VOCAB";

pub fn image_contract(c: &ClipSection) -> Contract {
    let (s, g, d) = (c.image_size as usize, c.grid as usize, c.embed_dim as usize);
    let f = Dim::Fixed;
    Contract {
        inputs: vec![TensorContract {
            name: "image",
            shape: vec![Dim::Any, f(3), f(s), f(s)],
        }],
        outputs: vec![
            TensorContract {
                name: "image_embedding",
                shape: vec![Dim::Any, f(d)],
            },
            TensorContract {
                name: "patch_embeddings",
                shape: vec![Dim::Any, f(g * g), f(d)],
            },
        ],
    }
}

pub fn text_contract(c: &ClipSection) -> Contract {
    Contract {
        inputs: vec![TensorContract::fixed(
            "tokens",
            &[1, c.context_length as usize],
        )],
        outputs: vec![TensorContract::fixed(
            "text_embedding",
            &[1, c.embed_dim as usize],
        )],
    }
}

/// The image encoder with one plan for single frames and, when asked, one for batches
/// (ScoreCAM-style saliency runs k masked copies of a frame).
pub struct ClipImageEncoder {
    file: PathBuf,
    single: State,
    batch: Option<(usize, State)>,
    /// The batch input, reused across calls.
    batch_buf: Vec<f32>,
    size: usize,
    pub grid: usize,
    pub dim: usize,
}

impl ClipImageEncoder {
    /// `batch > 1` also plans a `[batch,3,S,S]` variant for [`ClipImageEncoder::run_batch`].
    pub fn load(manifest: &Manifest, precision: Precision, batch: usize) -> Result<Self> {
        let c = manifest.clip()?;
        let parsed = parse_role(manifest, Role::ClipImage, precision, image_contract(c))?;
        let s = c.image_size as usize;
        let single = onnx::spawn(&parsed.plan(&[vec![1, 3, s, s]])?)?;
        let batch = if batch > 1 {
            Some((batch, onnx::spawn(&parsed.plan(&[vec![batch, 3, s, s]])?)?))
        } else {
            None
        };
        Ok(ClipImageEncoder {
            file: parsed.file.clone(),
            single,
            batch,
            batch_buf: Vec::new(),
            size: s,
            grid: c.grid as usize,
            dim: c.embed_dim as usize,
        })
    }

    pub fn batch_size(&self) -> usize {
        self.batch.as_ref().map_or(1, |b| b.0)
    }

    /// One preprocessed `[1,3,S,S]` frame -> pooled `[D]` and patches `[G*G, D]`, written into
    /// the caller's buffers.
    pub fn run_into(
        &mut self,
        input: &[f32],
        pooled: &mut [f32],
        patches: &mut [f32],
    ) -> Result<()> {
        let t = Tensor::from_shape(&[1, 3, self.size, self.size], input)
            .context("CLIP input buffer has the wrong size")?;
        let out = onnx::run(&mut self.single, tvec!(t.into_tvalue()), &self.file)?;
        let (p, d) = (f32s(&out[0])?, f32s(&out[1])?);
        ensure_finite(p, "image embedding", &self.file)?;
        ensure_finite(d, "patch embeddings", &self.file)?;
        pooled.copy_from_slice(p);
        patches.copy_from_slice(d);
        Ok(())
    }

    /// `n` preprocessed frames (`n*3*S*S` values) -> `n` pooled embeddings (`n*D`): full
    /// chunks through the batch plan, the remainder frame by frame (a zero-padded batch would
    /// cost a whole batch for one frame).
    pub fn run_batch(&mut self, inputs: &[f32], n: usize, pooled: &mut [f32]) -> Result<()> {
        let per = 3 * self.size * self.size;
        if inputs.len() != n * per || pooled.len() != n * self.dim {
            bail!("internal: CLIP batch buffers do not match {n} frames");
        }
        let (b, mut patches_scratch) = (self.batch_size(), Vec::new());
        let mut i = 0;
        while i < n {
            let take = if n - i >= b { b } else { 1 };
            if take == 1 {
                patches_scratch.resize(self.grid * self.grid * self.dim, 0.0);
                let (s, e) = (i * per, (i + 1) * per);
                let mut out = vec![0.0; self.dim];
                self.run_into(&inputs[s..e], &mut out, &mut patches_scratch)?;
                pooled[i * self.dim..(i + 1) * self.dim].copy_from_slice(&out);
            } else {
                self.batch_buf.resize(b * per, 0.0);
                self.batch_buf
                    .copy_from_slice(&inputs[i * per..(i + b) * per]);
                let t = Tensor::from_shape(&[b, 3, self.size, self.size], &self.batch_buf)?;
                let state = &mut self.batch.as_mut().expect("b > 1").1;
                let out = onnx::run(state, tvec!(t.into_tvalue()), &self.file)?;
                let p = f32s(&out[0])?;
                ensure_finite(&p[..take * self.dim], "image embedding", &self.file)?;
                pooled[i * self.dim..(i + take) * self.dim].copy_from_slice(&p[..take * self.dim]);
            }
            i += take;
        }
        Ok(())
    }
}

pub struct ClipTextEncoder {
    file: PathBuf,
    state: State,
    context: usize,
    pub dim: usize,
}

impl ClipTextEncoder {
    pub fn load(manifest: &Manifest, precision: Precision) -> Result<Self> {
        let c = manifest.clip()?;
        let parsed = parse_role(manifest, Role::ClipText, precision, text_contract(c))?;
        let ctx = c.context_length as usize;
        let plan = parsed.plan_typed(&[(i64::datum_type(), vec![1, ctx])])?;
        Ok(ClipTextEncoder {
            file: parsed.file.clone(),
            state: onnx::spawn(&plan)?,
            context: ctx,
            dim: c.embed_dim as usize,
        })
    }

    /// Token ids (`context` of them, zero padded) -> the text embedding (not normalised).
    pub fn run(&mut self, ids: &[i64]) -> Result<Vec<f32>> {
        let t = Tensor::from_shape(&[1, self.context], ids)
            .context("token buffer has the wrong size")?;
        let out = onnx::run(&mut self.state, tvec!(t.into_tvalue()), &self.file)?;
        let e = f32s(&out[0])?;
        ensure_finite(e, "text embedding", &self.file)?;
        Ok(e.to_vec())
    }
}

/// Where the vocabulary is: `$SONOMASK_CLIP_VOCAB`, else `<models>/<vocab>`; checked against
/// the manifest's sha256 so a different merges file cannot silently change every id.
/// Where the CLIP vocabulary is read from: `SONOMASK_CLIP_VOCAB`, else beside the models.
pub fn vocab_path(manifest: &Manifest) -> Result<PathBuf> {
    let c = manifest.clip()?;
    Ok(std::env::var_os(VOCAB_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.dir.join(&c.vocab)))
}

pub fn load_tokenizer(manifest: &Manifest) -> Result<Tokenizer> {
    let c = manifest.clip()?;
    let path = vocab_path(manifest)?;
    let raw = crate::bounded::read(&path, crate::bounded::TEXT_BYTES, "CLIP vocabulary").with_context(|| {
        format!(
            "cannot read the CLIP vocabulary {} (quantize/build_models.sh puts it beside the models; or set {VOCAB_ENV})",
            path.display()
        )
    })?;
    let digest = sha256_hex(&raw);
    if !digest.eq_ignore_ascii_case(&c.vocab_sha256) {
        bail!(
            "CLIP vocabulary {} has sha256 {digest}, the manifest says {} (a different merges file would change every token)",
            path.display(),
            c.vocab_sha256
        );
    }
    let tok = Tokenizer::from_gz(&raw, c.context_length as usize)
        .with_context(|| format!("CLIP vocabulary {}", path.display()))?;
    if tok.vocab_size() != c.vocab_size as usize {
        bail!(
            "CLIP vocabulary {} has {} tokens, the text model expects {}",
            path.display(),
            tok.vocab_size(),
            c.vocab_size
        );
    }
    Ok(tok)
}
