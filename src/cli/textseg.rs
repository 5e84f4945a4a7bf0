//! `sonomask segment IMAGE --text ...`: the MedCLIP-SAM path (CLIP saliency -> prompt rules ->
//! SAM), writing mask.png, overlay.png and saliency.png; and `sonomask prompt-bank`.

use anyhow::{Result, bail};
use std::path::{Path, PathBuf};

use super::args;
use super::common::{self, ModelOptions};
use super::flags::{BankArgs, SegmentArgs, TextArgs};
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

/// The flags the text path adds to `segment`.
/// `--pipeline`: medclip-sam (default) or salip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pipeline {
    MedClipSam,
    Salip,
}

pub fn pipeline_from(a: &TextArgs) -> Result<Pipeline> {
    match a.pipeline.as_deref().unwrap_or("medclip-sam") {
        "medclip-sam" => Ok(Pipeline::MedClipSam),
        "salip" => Ok(Pipeline::Salip),
        p => bail!("--pipeline '{p}': expected medclip-sam or salip"),
    }
}

pub fn salip_from(a: &TextArgs) -> Result<SalipOptions> {
    let d = SalipOptions::default();
    let e = d.everything;
    let o = SalipOptions {
        everything: EverythingOptions {
            points_per_side: args::parse_or(
                "points-per-side",
                a.points_per_side.as_deref(),
                e.points_per_side,
            )?,
            pred_iou_thresh: args::parse_or("pred-iou", a.pred_iou.as_deref(), e.pred_iou_thresh)?,
            stability_thresh: args::parse_or(
                "stability",
                a.stability.as_deref(),
                e.stability_thresh,
            )?,
            box_nms_thresh: args::parse_or("nms", a.nms.as_deref(), e.box_nms_thresh)?,
            crop_n_layers: args::parse_or(
                "crop-layers",
                a.crop_layers.as_deref(),
                e.crop_n_layers,
            )?,
            grid: match a.grid.as_deref().unwrap_or("points") {
                "points" => GridPrompts::Points,
                "boxes" => GridPrompts::Boxes,
                g => bail!("--grid '{g}': expected points or boxes"),
            },
            refine: args::parse_opt("refine", a.refine.as_deref())?,
            decoder: match a.grid_decoder.as_deref().unwrap_or("native") {
                "native" => GridDecoder::Native,
                "tract" => GridDecoder::Tract,
                d => bail!("--grid-decoder '{d}': expected native or tract"),
            },
            ..e
        },
        crop: match a.crop.as_deref().unwrap_or("masked") {
            "masked" => CropMode::Masked,
            "box" => CropMode::Box,
            c => bail!("--crop '{c}': expected masked or box"),
        },
        top_k: args::parse_or("top-k", a.top_k.as_deref(), 1usize)?,
        score_floor: args::parse_opt("score-floor", a.score_floor.as_deref())?,
    };
    o.everything.validate()?;
    if !(1..=8).contains(&o.top_k) {
        bail!("--top-k must be 1..=8");
    }
    Ok(o)
}

pub fn wants_text(a: &TextArgs) -> bool {
    !a.text.is_empty() || a.prompt_file.is_some() || a.bank.is_some()
}

fn clip_precision(a: &TextArgs, opts: &ModelOptions) -> Result<Precision> {
    match a.clip_precision.as_deref() {
        None if opts.precision_auto => Ok(opts.auto.precision(Role::ClipImage)),
        None => Ok(opts.precision),
        Some("auto") => Ok(opts.auto.precision(Role::ClipImage)),
        Some(p) => Precision::parse(p),
    }
}

/// The rule from --prompt-rule, --threshold, --top-k, --points.
pub fn rule_from(a: &TextArgs) -> Result<Rule> {
    let mut rule = Rule::parse(a.prompt_rule.as_deref().unwrap_or("v2"))?;
    if let Some(t) = a.threshold.as_deref() {
        rule = rule.with_threshold(t)?;
    }
    if a.top_k.as_deref().is_some() {
        rule.top_k = args::parse_or("top-k", a.top_k.as_deref(), 1usize)?;
        if rule.top_k == 0 {
            bail!("--top-k must be at least 1");
        }
    }
    if a.points.as_deref().is_some() {
        let n: usize = args::parse_or("points", a.points.as_deref(), 5)?;
        if !(1..=16).contains(&n) {
            bail!("--points must be 1..=16 (the wire protocol's prompt limit)");
        }
        rule.output = Output::Points(n);
    }
    Ok(rule)
}

pub fn method_from(a: &TextArgs) -> Result<Method> {
    Method::parse(
        a.saliency.as_deref().unwrap_or("similarity"),
        args::parse_or("scorecam-k", a.scorecam_k.as_deref(), 16usize)?,
    )
}

pub fn load_pipeline(a: &TextArgs, opts: &ModelOptions, method: Method) -> Result<TextPipeline> {
    let batch = match (pipeline_from(a)?, method) {
        (Pipeline::Salip, _) => 8,
        (_, Method::ScoreCam { k }) => k.min(8),
        (_, Method::Similarity) => 1,
    };
    opts.load_text_pipeline(clip_precision(a, opts)?, batch)
}

/// The text embedding for `image_name` from --text / --prompt-file / --bank.
pub fn text_embedding(
    a: &TextArgs,
    p: &mut TextPipeline,
    image_name: &str,
    t: &mut Timings,
) -> Result<(Vec<f32>, String)> {
    if let Some(bank) = a.bank.as_deref() {
        let sha = p.text.model_sha256.clone();
        let b = PromptBank::load(Path::new(bank), &sha, p.text.dim())?;
        let e = match a.class.as_deref() {
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
    let texts: Vec<String> = if let Some(f) = a.prompt_file.as_deref() {
        PromptFile::load(Path::new(f))?.texts_for(image_name, a.class.as_deref())?
    } else {
        a.text.as_slice().to_vec()
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

pub fn run_segment(a: &SegmentArgs, image: &str, frame: RgbFrame, t: Timings) -> Result<()> {
    if !a.boxes.as_slice().is_empty() || !a.point.as_slice().is_empty() {
        bail!("give either a text prompt or --box/--point, not both");
    }
    match pipeline_from(&a.text)? {
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

fn run_salip(a: &SegmentArgs, image: &str, frame: RgbFrame, mut t: Timings) -> Result<()> {
    let opts = ModelOptions::from_args(&a.model)?;
    let so = salip_from(&a.text)?;
    let mut p = load_pipeline(&a.text, &opts, Method::Similarity)?;
    let (text, label) = text_embedding(&a.text, &mut p, &image_name(image), &mut t)?;
    let r = salip::segment(&mut p, &frame, &text, &so, &mut t)?;
    let out = PathBuf::from(a.out.as_deref().unwrap_or("mask.png"));
    let overlay_path = PathBuf::from(a.overlay.as_deref().unwrap_or("overlay.png"));
    let cand_path = PathBuf::from(a.text.candidates_out.as_deref().unwrap_or("candidates.png"));
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
    if a.json {
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

fn run_medclip(a: &SegmentArgs, image: &str, frame: RgbFrame, mut t: Timings) -> Result<()> {
    let opts = ModelOptions::from_args(&a.model)?;
    let method = method_from(&a.text)?;
    let rule = rule_from(&a.text)?;
    let mut p = load_pipeline(&a.text, &opts, method)?;
    let (text, label) = text_embedding(&a.text, &mut p, &image_name(image), &mut t)?;
    let r = p.segment(&frame, &text, method, &rule, &mut t)?;
    let out = PathBuf::from(a.out.as_deref().unwrap_or("mask.png"));
    let overlay_path = PathBuf::from(a.overlay.as_deref().unwrap_or("overlay.png"));
    let sal_path = PathBuf::from(a.text.saliency_out.as_deref().unwrap_or("saliency.png"));
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
    if a.json {
        let j = serde_json::json!({
            "image": image,
            "width": frame.width,
            "height": frame.height,
            "pipeline": "medclip-sam",
            "text": label,
            "saliency_method": method.name(),
            "prompt_rule": a.text.prompt_rule.as_deref().unwrap_or("v2"),
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

pub fn run_bank(a: BankArgs) -> Result<()> {
    let classes: Vec<(String, Vec<String>)> = if let Some(f) = a.prompt_file.as_deref() {
        match PromptFile::load(Path::new(f))? {
            PromptFile::Classes(c) => c,
            PromptFile::Lines(l) => vec![(a.name.as_deref().unwrap_or("prompt").to_string(), l)],
            PromptFile::PerImage(m) => {
                let mut v: Vec<(String, Vec<String>)> =
                    m.into_iter().map(|(k, t)| (k, vec![t])).collect();
                v.sort();
                v
            }
        }
    } else if !a.text.as_slice().is_empty() {
        vec![(
            a.name.as_deref().unwrap_or("prompt").to_string(),
            a.text.as_slice().to_vec(),
        )]
    } else {
        bail!(
            "prompt-bank needs --prompt-file or --text\n\n{}",
            super::usage::<BankArgs>()
        );
    };
    let models = common::models_dir(a.models.as_deref());
    let prec = match a
        .clip_precision
        .as_deref()
        .or(a.precision.as_deref())
        .unwrap_or("auto")
    {
        "auto" => crate::model::precision_table::Auto::load(&models, common::default_threads())
            .precision(Role::ClipText),
        p => Precision::parse(p)?,
    };
    let m = crate::model::Manifest::load(&models)?;
    let tokenizer = crate::model::clip::load_tokenizer(&m)?;
    let model = crate::model::ClipTextEncoder::load(&m, prec)?;
    let sha = m.entry(Role::ClipText, prec)?.sha256.clone();
    let mut enc = crate::prompting::bank::TextEncoder::new(tokenizer, model, sha);
    let bank = PromptBank::build(&mut enc, &classes)?;
    let out = PathBuf::from(a.out.as_deref().unwrap_or("prompt_bank.json"));
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
