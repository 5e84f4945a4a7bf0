//! `sonomask segment IMAGE --text ...`: the MedCLIP-SAM path (CLIP saliency -> prompt rules ->
//! SAM), writing mask.png, overlay.png and saliency.png; and `sonomask prompt-bank`.

use anyhow::{Result, bail};
use std::path::{Path, PathBuf};

use super::args::{self, Args};
use super::common::{self, ModelOptions};
use crate::input::image_io::RgbFrame;
use crate::model::{Precision, Role};
use crate::output::overlay;
use crate::pipelines::everything::{EverythingOptions, GridDecoder, GridPrompts};
use crate::pipelines::salip::{self, CropMode, SalipOptions};
use crate::pipelines::textseg::TextPipeline;
use crate::prompting::autoprompt::{Output, Rule};
use crate::prompting::bank::{PromptBank, PromptFile};
use crate::prompting::saliency::Method;
use crate::timing::Timings;

pub const TEXT_USAGE: &str = "\
sonomask segment IMAGE --text \"breast tumor\" [--text ...] | --prompt-file F [--class NAME]
                 | --bank BANK.json [--class NAME]
                 [--saliency similarity|scorecam] [--scorecam-k K] [--prompt-rule v1|v2|v2-boxes|v2-points]
                 [--threshold otsu|kmeans|F] [--top-k N] [--points N] [--clip-precision fp32|int8|auto]
                 [-o mask.png] [--overlay overlay.png] [--saliency-out saliency.png] [--json]

  Text-prompted segmentation (MedCLIP-SAM, gradient-free): CLIP saliency of the text over the
  frame, a box (or points) from it by the prompt rule, then SAM.
  --text          a description; several --text are a prompt ensemble (averaged, normalised)
  --prompt-file   descriptions: one per line, a SaLIP JSON {\"class\": [..]} (--class picks one),
                  or a MedCLIP-SAMv2 per-image JSON {\"image.png\": \"..\"}
  --bank          precomputed embeddings from `sonomask prompt-bank` (bound to the text model)
  --saliency      similarity (one CLIP pass, default) or scorecam (K masked CLIP passes)
  --prompt-rule   v1: threshold 0.5, largest component, one box; v2 (default): k-means split,
                  top-K components, one box around them; v2-boxes: one box per component
                  (top 2: lungs); v2-points: N positive points
  --threshold     override the binarisation: otsu, kmeans or a fixed value in [0, 1]
  Nothing salient: one whole-frame box is used and reported (\"prompt_fallback\").";

pub const SALIP_USAGE: &str = "\
sonomask segment IMAGE --pipeline salip --text T | --prompt-file F [--class C] | --bank B
                 [--points-per-side N] [--pred-iou F] [--stability F] [--nms F] [--crop masked|box]
                 [--top-k K] [--score-floor F] [--crop-layers 0|1|2] [--grid points|boxes]
                 [--grid-decoder native|tract]
                 [-o mask.png] [--overlay overlay.png]
                 [--candidates-out candidates.png] [--json]

  SaLIP: SAM everything mode (an N x N point grid, default 16, on one encoder pass; masks kept
  with predicted IoU >= --pred-iou (0.88), stability >= --stability (0.95), box NMS --nms (0.7)),
  each mask's crop (--crop masked: outside the mask blacked out; box: the plain box) scored by
  CLIP against the text, the top --top-k (1; 2 for lungs) retrieved and SAM re-prompted with
  their boxes. candidates.png shows every candidate with its CLIP score (* = retrieved). No
  candidate, or a best score below --score-floor: an empty mask and a status saying why.
  --crop-layers L adds SAM's crop layers (off by default): layer 1 runs 4 overlapping crops, each
  one more encoder pass and one more grid of decoder calls (layer 2: 16 more).
  --grid boxes    prompt each grid cell with boxes (15% and 30% of the frame, single-mask output)
                  instead of a point: for box-trained models such as LiteMedSAM, whose point
                  masks rarely pass the predicted-IoU filter (docs/ACCURACY.md).
  --grid-decoder  native (default): the grid's prompts share the frame's decoder work and only
                  prompts passing --pred-iou pay for their masks (fp32; an int8 decoder runs on
                  tract); tract: one decoder graph run per prompt, the reference.";

pub const BANK_USAGE: &str = "\
sonomask prompt-bank (--prompt-file F | --text T [--name N]) [-o bank.json] [--models DIR]
                     [--clip-precision fp32|int8|auto]

  Precompute text embeddings on a host: each class of a SaLIP-style JSON file (or the lines of
  a text file, or the --text descriptions) becomes one ensemble embedding, written to a small
  JSON file bound to the text model's sha256. `segment --bank` refuses a bank from another
  text model.";

/// The flags the text path adds to `segment`.
pub const TEXT_VALUES: &[&str] = &[
    "text",
    "prompt-file",
    "class",
    "bank",
    "saliency",
    "scorecam-k",
    "prompt-rule",
    "threshold",
    "top-k",
    "points",
    "clip-precision",
    "saliency-out",
    "pipeline",
    "points-per-side",
    "pred-iou",
    "stability",
    "nms",
    "crop",
    "score-floor",
    "candidates-out",
    "crop-layers",
    "grid",
    "grid-decoder",
];

/// `--pipeline`: medclip-sam (default) or salip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pipeline {
    MedClipSam,
    Salip,
}

pub fn pipeline_from(a: &Args) -> Result<Pipeline> {
    match a.get("pipeline").unwrap_or("medclip-sam") {
        "medclip-sam" => Ok(Pipeline::MedClipSam),
        "salip" => Ok(Pipeline::Salip),
        p => bail!("--pipeline '{p}': expected medclip-sam or salip"),
    }
}

pub fn salip_from(a: &Args) -> Result<SalipOptions> {
    let d = SalipOptions::default();
    let e = d.everything;
    let o = SalipOptions {
        everything: EverythingOptions {
            points_per_side: a.parse_or("points-per-side", e.points_per_side)?,
            pred_iou_thresh: a.parse_or("pred-iou", e.pred_iou_thresh)?,
            stability_thresh: a.parse_or("stability", e.stability_thresh)?,
            box_nms_thresh: a.parse_or("nms", e.box_nms_thresh)?,
            crop_n_layers: a.parse_or("crop-layers", e.crop_n_layers)?,
            grid: match a.get("grid").unwrap_or("points") {
                "points" => GridPrompts::Points,
                "boxes" => GridPrompts::Boxes,
                g => bail!("--grid '{g}': expected points or boxes"),
            },
            decoder: match a.get("grid-decoder").unwrap_or("native") {
                "native" => GridDecoder::Native,
                "tract" => GridDecoder::Tract,
                d => bail!("--grid-decoder '{d}': expected native or tract"),
            },
            ..e
        },
        crop: match a.get("crop").unwrap_or("masked") {
            "masked" => CropMode::Masked,
            "box" => CropMode::Box,
            c => bail!("--crop '{c}': expected masked or box"),
        },
        top_k: a.parse_or("top-k", 1usize)?,
        score_floor: a
            .get("score-floor")
            .map(|_| a.parse_or("score-floor", 0f32))
            .transpose()?,
    };
    o.everything.validate()?;
    if !(1..=8).contains(&o.top_k) {
        bail!("--top-k must be 1..=8");
    }
    Ok(o)
}

pub fn wants_text(a: &Args) -> bool {
    ["text", "prompt-file", "bank"]
        .iter()
        .any(|f| a.get(f).is_some())
}

fn clip_precision(a: &Args, opts: &ModelOptions) -> Result<Precision> {
    match a.get("clip-precision") {
        None => Ok(opts.precision),
        Some("auto") => Ok(common::auto_precision()),
        Some(p) => Precision::parse(p),
    }
}

/// The rule from --prompt-rule, --threshold, --top-k, --points.
pub fn rule_from(a: &Args) -> Result<Rule> {
    let mut rule = Rule::parse(a.get("prompt-rule").unwrap_or("v2"))?;
    if let Some(t) = a.get("threshold") {
        rule = rule.with_threshold(t)?;
    }
    if a.get("top-k").is_some() {
        rule.top_k = a.parse_or("top-k", 1usize)?;
        if rule.top_k == 0 {
            bail!("--top-k must be at least 1");
        }
    }
    if a.get("points").is_some() {
        let n: usize = a.parse_or("points", 5)?;
        if !(1..=16).contains(&n) {
            bail!("--points must be 1..=16 (the wire protocol's prompt limit)");
        }
        rule.output = Output::Points(n);
    }
    Ok(rule)
}

pub fn method_from(a: &Args) -> Result<Method> {
    Method::parse(
        a.get("saliency").unwrap_or("similarity"),
        a.parse_or("scorecam-k", 16usize)?,
    )
}

pub fn load_pipeline(a: &Args, opts: &ModelOptions, method: Method) -> Result<TextPipeline> {
    let batch = match (pipeline_from(a)?, method) {
        (Pipeline::Salip, _) => 8,
        (_, Method::ScoreCam { k }) => k.min(8),
        (_, Method::Similarity) => 1,
    };
    TextPipeline::load(
        &opts.models,
        opts.precision,
        opts.decoder(),
        clip_precision(a, opts)?,
        batch,
    )
}

/// The text embedding for `image_name` from --text / --prompt-file / --bank.
pub fn text_embedding(
    a: &Args,
    p: &mut TextPipeline,
    image_name: &str,
    t: &mut Timings,
) -> Result<(Vec<f32>, String)> {
    if let Some(bank) = a.get("bank") {
        let sha = p.text.model_sha256.clone();
        let b = PromptBank::load(Path::new(bank), &sha, p.text.dim())?;
        let e = match a.get("class") {
            Some(c) => b.get(c)?,
            None if b.entries.len() == 1 => &b.entries[0],
            None => bail!(
                "the bank has several entries ({}): pick one with --class",
                b.entries
                    .iter()
                    .map(|e| e.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        return Ok((e.embedding.clone(), format!("bank:{}", e.name)));
    }
    let texts: Vec<String> = if let Some(f) = a.get("prompt-file") {
        PromptFile::load(Path::new(f))?.texts_for(image_name, a.get("class"))?
    } else {
        a.all("text").to_vec()
    };
    for s in &texts {
        if s.trim().is_empty() {
            bail!("empty text prompt: give a description such as --text \"breast tumor\"");
        }
    }
    // a short label for logs and JSON: the text, or the size and start of an ensemble
    let label = match texts.as_slice() {
        [one] => one.clone(),
        [first, ..] => {
            let head: String = first.chars().take(60).collect();
            format!("ensemble of {} descriptions: {head}...", texts.len())
        }
        [] => String::new(),
    };
    Ok((p.embed_text(&texts, t)?, label))
}

pub fn run_segment(a: &Args, image: &str, frame: RgbFrame, t: Timings) -> Result<()> {
    if !a.all("box").is_empty() || !a.all("point").is_empty() {
        bail!("give either a text prompt or --box/--point, not both");
    }
    match pipeline_from(a)? {
        Pipeline::MedClipSam => run_medclip(a, image, frame, t),
        Pipeline::Salip => run_salip(a, image, frame, t),
    }
}

fn image_name(image: &str) -> String {
    Path::new(image)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn run_salip(a: &Args, image: &str, frame: RgbFrame, mut t: Timings) -> Result<()> {
    let opts = ModelOptions::from_args(a)?;
    let so = salip_from(a)?;
    let mut p = load_pipeline(a, &opts, Method::Similarity)?;
    let (text, label) = text_embedding(a, &mut p, &image_name(image), &mut t)?;
    let r = salip::segment(&mut p, &frame, &text, &so, &mut t)?;
    let out = PathBuf::from(a.get("out").unwrap_or("mask.png"));
    let overlay_path = PathBuf::from(a.get("overlay").unwrap_or("overlay.png"));
    let cand_path = PathBuf::from(a.get("candidates-out").unwrap_or("candidates.png"));
    t.stage("write_outputs", || -> Result<()> {
        common::save_gray(&out, r.mask.width, r.mask.height, &r.mask.to_gray8())?;
        common::save_rgb(
            &overlay_path,
            &overlay::render(&frame, &r.mask, r.boxes.first()),
        )?;
        let masks: Vec<_> = r.candidates.iter().map(|c| (&c.mask, c.bbox)).collect();
        common::save_rgb(
            &cand_path,
            &overlay::candidates(&frame, &masks, &r.scores, &r.chosen),
        )
    })?;
    let synthetic = p.synthetic();
    let f = r.funnel;
    if a.has("json") {
        let j = serde_json::json!({
            "image": image,
            "width": frame.width,
            "height": frame.height,
            "pipeline": "salip",
            "text": label,
            "status": r.status.describe(),
            "funnel": {"prompts": f.prompts, "masks": f.masks, "after_pred_iou": f.after_iou,
                       "after_stability": f.after_stability, "after_area": f.after_area, "after_nms": f.after_nms},
            "candidates": r.candidates.iter().zip(&r.scores).enumerate().map(|(i, (c, s))| serde_json::json!({
                "index": i, "bbox": [c.bbox.0, c.bbox.1, c.bbox.2, c.bbox.3], "area": c.mask.area(),
                "pred_iou": c.pred_iou, "stability": c.stability, "clip_score": s,
                "chosen": r.chosen.contains(&i),
            })).collect::<Vec<_>>(),
            "boxes": r.boxes.iter().map(|b| [b.x0, b.y0, b.x1, b.y1]).collect::<Vec<_>>(),
            "precision": p.sam.precision.as_str(),
            "clip_precision": p.clip_precision.as_str(),
            "synthetic_weights": synthetic,
            "models": p.models_json(),
            "mask": out,
            "overlay": overlay_path,
            "candidates_picture": cand_path,
            "area": r.mask.area(),
            "bbox": r.mask.bbox(),
            "timings_ms": common::timings_json(&t),
        });
        println!("{j}");
    } else {
        println!(
            "{image}: \"{label}\" -> SaLIP: {} grid prompts, {} candidates, chosen {:?} ({}), {} px foreground -> {}, {}, {}{}",
            f.prompts,
            r.candidates.len(),
            r.chosen,
            r.status.describe(),
            r.mask.area(),
            out.display(),
            overlay_path.display(),
            cand_path.display(),
            p.weights_note()
        );
    }
    Ok(())
}

fn run_medclip(a: &Args, image: &str, frame: RgbFrame, mut t: Timings) -> Result<()> {
    let opts = ModelOptions::from_args(a)?;
    let method = method_from(a)?;
    let rule = rule_from(a)?;
    let mut p = load_pipeline(a, &opts, method)?;
    let (text, label) = text_embedding(a, &mut p, &image_name(image), &mut t)?;
    let r = p.segment(&frame, &text, method, &rule, &mut t)?;
    let out = PathBuf::from(a.get("out").unwrap_or("mask.png"));
    let overlay_path = PathBuf::from(a.get("overlay").unwrap_or("overlay.png"));
    let sal_path = PathBuf::from(a.get("saliency-out").unwrap_or("saliency.png"));
    let boxes: Vec<_> = r.auto.prompts.iter().filter_map(|q| q.bbox).collect();
    t.stage("write_outputs", || -> Result<()> {
        common::save_gray(&out, r.mask.width, r.mask.height, &r.mask.to_gray8())?;
        common::save_rgb(
            &overlay_path,
            &overlay::render(&frame, &r.mask, boxes.first()),
        )?;
        common::save_rgb(
            &sal_path,
            &overlay::heatmap(&frame, &r.saliency.values, &boxes),
        )
    })?;
    let synthetic = p.synthetic();
    if a.has("json") {
        let j = serde_json::json!({
            "image": image,
            "width": frame.width,
            "height": frame.height,
            "pipeline": "medclip-sam",
            "text": label,
            "saliency_method": method.name(),
            "prompt_rule": a.get("prompt-rule").unwrap_or("v2"),
            "threshold": if r.auto.threshold.is_finite() { serde_json::json!(r.auto.threshold) } else { serde_json::Value::Null },
            "components": r.auto.components,
            "prompt_fallback": r.auto.fallback,
            "frame_text_score": r.saliency.frame_score,
            "precision": p.sam.precision.as_str(),
            "clip_precision": p.clip_precision.as_str(),
            "synthetic_weights": synthetic,
            "models": p.models_json(),
            "mask": out,
            "overlay": overlay_path,
            "saliency": sal_path,
            "area": r.mask.area(),
            "bbox": r.mask.bbox(),
            "prompts": r.auto.prompts.iter().zip(&r.segments).map(|(q, s)| serde_json::json!({
                "box": q.bbox.map(|b| [b.x0, b.y0, b.x1, b.y1]),
                "points": q.points.iter().map(|q| [q.x, q.y]).collect::<Vec<_>>(),
                "predicted_iou": s.iou,
                "area": s.mask.area(),
            })).collect::<Vec<_>>(),
            "timings_ms": common::timings_json(&t),
        });
        println!("{j}");
    } else {
        println!(
            "{image}: \"{label}\" -> {} saliency, {} prompt(s){}, {} px foreground -> {}, {}, {}{}",
            method.name(),
            r.auto.prompts.len(),
            r.auto
                .fallback
                .as_ref()
                .map(|f| format!(" (fallback: {f})"))
                .unwrap_or_default(),
            r.mask.area(),
            out.display(),
            overlay_path.display(),
            sal_path.display(),
            p.weights_note()
        );
    }
    Ok(())
}

pub fn run_bank(argv: &[String]) -> Result<()> {
    let a = args::parse(
        argv,
        &[
            "prompt-file",
            "text",
            "name",
            "out",
            "models",
            "clip-precision",
            "precision",
        ],
        &["help"],
    )?;
    if a.has("help") {
        println!("{BANK_USAGE}");
        return Ok(());
    }
    let classes: Vec<(String, Vec<String>)> = if let Some(f) = a.get("prompt-file") {
        match PromptFile::load(Path::new(f))? {
            PromptFile::Classes(c) => c,
            PromptFile::Lines(l) => vec![(a.get("name").unwrap_or("prompt").to_string(), l)],
            PromptFile::PerImage(m) => {
                let mut v: Vec<(String, Vec<String>)> =
                    m.into_iter().map(|(k, t)| (k, vec![t])).collect();
                v.sort();
                v
            }
        }
    } else if !a.all("text").is_empty() {
        vec![(
            a.get("name").unwrap_or("prompt").to_string(),
            a.all("text").to_vec(),
        )]
    } else {
        bail!("prompt-bank needs --prompt-file or --text\n\n{BANK_USAGE}");
    };
    let models = common::models_dir(&a);
    let prec = match a
        .get("clip-precision")
        .or(a.get("precision"))
        .unwrap_or("auto")
    {
        "auto" => common::auto_precision(),
        p => Precision::parse(p)?,
    };
    let m = crate::model::Manifest::load(&models)?;
    let tokenizer = crate::model::clip::load_tokenizer(&m)?;
    let model = crate::model::ClipTextEncoder::load(&m, prec)?;
    let sha = m.entry(Role::ClipText, prec)?.sha256.clone();
    let mut enc = crate::prompting::bank::TextEncoder::new(tokenizer, model, sha);
    let bank = PromptBank::build(&mut enc, &classes)?;
    let out = PathBuf::from(a.get("out").unwrap_or("prompt_bank.json"));
    bank.save(&out)?;
    println!(
        "{} entries ({} descriptions) -> {} [text model {}]{}",
        bank.entries.len(),
        classes.iter().map(|c| c.1.len()).sum::<usize>(),
        out.display(),
        &bank.text_model_sha256[..12],
        if m.clip.as_ref().is_some_and(|c| c.synthetic) {
            "  [SYNTHETIC CLIP weights]"
        } else {
            ""
        }
    );
    Ok(())
}
