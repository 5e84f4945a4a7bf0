//! MobileSAM on tract: the image encoder (one pass per frame) and the prompt decoder (one pass
//! per prompt, reusing the frame's embedding).

use anyhow::{Context, Result, bail};
use std::collections::HashMap;
use std::path::PathBuf;
use tract_onnx::prelude::*;

use super::contract::{Contract, Dim, TensorContract};
use super::manifest::{Manifest, Precision, Role, SamSection};
use super::onnx::{self, Parsed, Plan, State, ensure_finite, f32s, parse_role};

pub fn encoder_contract(s: &SamSection) -> Contract {
    let (i, c, e) = (
        s.image_size as usize,
        s.embed_dim as usize,
        s.embedding_size as usize,
    );
    Contract {
        inputs: vec![TensorContract::fixed("image", &[1, 3, i, i])],
        outputs: vec![TensorContract::fixed("image_embeddings", &[1, c, e, e])],
    }
}

pub fn decoder_contract(s: &SamSection) -> Contract {
    let (c, e, l) = (
        s.embed_dim as usize,
        s.embedding_size as usize,
        s.low_res_size as usize,
    );
    let f = Dim::Fixed;
    Contract {
        inputs: vec![
            TensorContract::fixed("image_embeddings", &[1, c, e, e]),
            TensorContract {
                name: "point_coords",
                shape: vec![f(1), Dim::Any, f(2)],
            },
            TensorContract {
                name: "point_labels",
                shape: vec![f(1), Dim::Any],
            },
            TensorContract::fixed("mask_input", &[1, 1, l, l]),
            TensorContract::fixed("has_mask_input", &[1]),
        ],
        outputs: vec![
            TensorContract::fixed("low_res_masks", &[1, 4, l, l]),
            TensorContract::fixed("iou_predictions", &[1, 4]),
        ],
    }
}

/// One image embedding `[1, C, E, E]`, kept as a tract value so decoder calls share it without copies.
#[derive(Clone)]
pub struct Embedding(pub TValue);

impl Embedding {
    pub fn as_slice(&self) -> Result<&[f32]> {
        f32s(&self.0)
    }
}

/// tract knobs for the encoder, measured per architecture (`cargo bench --bench knobs`: the
/// settings planned in one process and run interleaved). On x86-64 the im2col + matrix-product
/// path for the two 3x3 stride-2 patch-embedding convolutions beats tract's direct spatial
/// convolution (figures: docs/BENCHMARKS.md, appendix, first step). Not measured on ARM:
/// tract's defaults there.
pub const ENCODER_KNOBS: &[(&str, &str)] = if cfg!(target_arch = "x86_64") {
    &[("TRACT_DISABLE_DIRECT_SPATIAL", "1")]
} else {
    &[]
};

pub struct SamEncoder {
    file: PathBuf,
    state: State,
    input_shape: [usize; 4],
}

impl SamEncoder {
    pub fn load(manifest: &Manifest, precision: Precision) -> Result<Self> {
        let s = &manifest.sam;
        let parsed = parse_role(manifest, Role::SamEncoder, precision, encoder_contract(s))?;
        let n = s.image_size as usize;
        let plan = parsed.plan_with_knobs(&[vec![1, 3, n, n]], ENCODER_KNOBS)?;
        Ok(SamEncoder {
            file: parsed.file.clone(),
            state: onnx::spawn(&plan)?,
            input_shape: [1, 3, n, n],
        })
    }

    /// Run on a preprocessed `[1,3,S,S]` input (see `preprocess::sam_input_into`).
    /// One run with the time of every node (see [`onnx::run_profiled`]).
    pub fn run_profiled(&mut self, input: &[f32]) -> Result<Vec<onnx::NodeTime>> {
        let t = Tensor::from_shape(&self.input_shape, input)
            .context("encoder input buffer has the wrong size")?;
        Ok(onnx::run_profiled(&mut self.state, tvec!(t.into_tvalue()), &self.file)?.1)
    }

    pub fn run(&mut self, input: &[f32]) -> Result<Embedding> {
        let t = Tensor::from_shape(&self.input_shape, input)
            .context("encoder input buffer has the wrong size")?;
        let mut out = onnx::run(&mut self.state, tvec!(t.into_tvalue()), &self.file)?;
        let emb = out.remove(0);
        ensure_finite(f32s(&emb)?, "image embedding", &self.file)?;
        Ok(Embedding(emb))
    }
}

/// The decoder's answer for one prompt: 4 low-res mask logit planes and their predicted IoUs.
pub struct DecoderOutput {
    pub low_res: Tensor,
    pub iou: [f32; 4],
    pub low_res_size: usize,
}

impl DecoderOutput {
    pub fn plane(&self, token: usize) -> Result<&[f32]> {
        let n = self.low_res_size * self.low_res_size;
        Ok(&f32s(&self.low_res)?[token * n..(token + 1) * n])
    }
}

pub struct SamDecoder {
    parsed: Parsed,
    embed: [usize; 4],
    low_res: usize,
    /// One optimized plan and state per prompt-token count (the model's symbolic N), built on
    /// first use; a box (N=2) is planned at load. The mask prompt (`mask_input`,
    /// `has_mask_input`) is pinned to "none" in every plan: sonomask prompts with points and
    /// boxes only, and tract then folds the mask branch (`mask_downscaling`: three convolutions
    /// over a 256x256 plane, two layer norms, the blend) into a constant at load.
    states: HashMap<usize, (Plan, State)>,
}

impl SamDecoder {
    pub fn load(manifest: &Manifest, precision: Precision) -> Result<Self> {
        let s = &manifest.sam;
        let parsed = parse_role(manifest, Role::SamDecoder, precision, decoder_contract(s))?;
        let (c, e, l) = (
            s.embed_dim as usize,
            s.embedding_size as usize,
            s.low_res_size as usize,
        );
        let mut d = SamDecoder {
            parsed,
            embed: [1, c, e, e],
            low_res: l,
            states: HashMap::new(),
        };
        d.state_for(2)?;
        Ok(d)
    }

    fn state_for(&mut self, n: usize) -> Result<&mut State> {
        if !self.states.contains_key(&n) {
            let l = self.low_res;
            let no_mask = vec![
                (3, Tensor::zero::<f32>(&[1, 1, l, l])?),
                (4, Tensor::zero::<f32>(&[1])?),
            ];
            let shapes = [
                self.embed.to_vec(),
                vec![1, n, 2],
                vec![1, n],
                vec![1, 1, l, l],
                vec![1],
            ];
            let plan = self.parsed.plan_with_constants(&shapes, no_mask)?;
            let state = onnx::spawn(&plan)?;
            self.states.insert(n, (plan, state));
        }
        Ok(&mut self.states.get_mut(&n).expect("inserted above").1)
    }

    fn inputs(&self, emb: &Embedding, coords: &[f32], labels: &[f32]) -> Result<TVec<TValue>> {
        let n = labels.len();
        if n == 0 || coords.len() != 2 * n {
            bail!(
                "decoder needs N>0 labels and 2N coordinates (got {} and {})",
                labels.len(),
                coords.len()
            );
        }
        Ok(tvec!(
            emb.0.clone(),
            Tensor::from_shape(&[1, n, 2], coords)?.into_tvalue(),
            Tensor::from_shape(&[1, n], labels)?.into_tvalue(),
        ))
    }

    /// One run with the time of every node (see [`onnx::run_profiled`]).
    pub fn run_profiled(
        &mut self,
        emb: &Embedding,
        coords: &[f32],
        labels: &[f32],
    ) -> Result<Vec<onnx::NodeTime>> {
        let inputs = self.inputs(emb, coords, labels)?;
        let file = self.parsed.file.clone();
        let state = self.state_for(labels.len())?;
        Ok(onnx::run_profiled(state, inputs, &file)?.1)
    }

    /// `coords` is `[N*2]` in the model input frame, `labels` `[N]` (see `Prompt::encode`).
    pub fn run(
        &mut self,
        emb: &Embedding,
        coords: &[f32],
        labels: &[f32],
    ) -> Result<DecoderOutput> {
        let inputs = self.inputs(emb, coords, labels)?;
        let file = self.parsed.file.clone();
        let state = self.state_for(labels.len())?;
        let mut out = onnx::run(state, inputs, &file)?;
        let iou_t = out.remove(1);
        let masks = out.remove(0).into_tensor();
        let iou_s = f32s(&iou_t)?;
        ensure_finite(iou_s, "iou_predictions", &file)?;
        ensure_finite(f32s(&masks)?, "low_res_masks", &file)?;
        let iou = [iou_s[0], iou_s[1], iou_s[2], iou_s[3]];
        Ok(DecoderOutput {
            low_res: masks,
            iou,
            low_res_size: self.low_res,
        })
    }
}
