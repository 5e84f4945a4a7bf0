//! `sonomask eval`: run a pipeline over a labelled set (pairs.csv) and score it: Dice, IoU and
//! NSD per image and summarised; images with an empty ground truth are reported apart; CSV and
//! JSON out. With synthetic models the scores are meaningless and the output says so.

use anyhow::{Context, Result, bail};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::args;
use super::common::ModelOptions;
use super::textseg::{self, Pipeline};
use crate::dataset::{Pair, load_gt, read_pairs};
use crate::image_io::RgbFrame;
use crate::mask::Mask;
use crate::metrics::{mean_std, score};
use crate::prompt::Prompt;
use crate::salip::SalipOptions;
use crate::segment::SamSession;
use crate::textseg::TextPipeline;
use crate::timing::Timings;

pub const USAGE: &str = "\
sonomask eval --pairs DATA/pairs.csv (--text T | --prompt-file F [--class C] | --bank B [--class C]
              | --prompt oracle-box|jittered-box|oracle-point) [--pipeline medclip-sam|salip]
              [--limit N] [--out-dir DIR] [--nsd-tol PX] [--loose F] [--jitter F] [--seed N]
              [segment's text options: --saliency, --prompt-rule, --threshold, ...]
              [--models DIR] [--precision ...]

  Segments every image of a labelled set and scores it against the union of its ground-truth
  masks: Dice, IoU and NSD (normalised surface distance, tolerance --nsd-tol px, default 2) per
  image, mean and std over the images with a non-empty ground truth; images with an empty
  ground truth are reported apart (correct when the prediction is empty too).
  --prompt oracle-box  prompt SAM with the ground truth's bounding box: the SAM stage alone
  --loose F            ... grown by the fraction F of its size (0.1 = +10%), clamped to the image
  --prompt jittered-box  the box as a person draws it: each side moved by up to --jitter F of
                       the box size (default 0.1), seeded by --seed N (default 0) and the
                       image's row, so runs repeat (quantize/oracle_prompts.py draws the same)
  --prompt oracle-point  one foreground click at the ground truth's deepest pixel
  --prompt everything-bound  SAM everything mode (SaLIP's first stage, 16x16 grid, its filters)
                       scored by its best candidate: the Dice a perfect CLIP retrieval would
                       reach; the note gives the candidate count. --grid points|boxes picks
                       point prompts (official) or a grid of boxes (for box-trained models)
  --pipeline salip     SaLIP (segment's SaLIP options apply: --points-per-side, --top-k, ...)
  Writes DIR/eval.csv and DIR/eval.json (default DIR eval_out). A failing image is recorded
  with its error and the run goes on.";

/// Which prompt the ground truth gives the SAM stage.
#[derive(Clone, Copy, Debug)]
enum Oracle {
    Box(crate::oracle::BoxNoise),
    Point,
    Bound(crate::everything::EverythingOptions),
}

impl Oracle {
    fn name(&self) -> &'static str {
        match self {
            Oracle::Box(n) if n.jitter > 0.0 => "jittered-box",
            Oracle::Box(_) => "oracle-box",
            Oracle::Point => "oracle-point",
            Oracle::Bound(o) if o.grid == crate::everything::GridPrompts::Boxes => {
                "everything-bound (box grid)"
            }
            Oracle::Bound(_) => "everything-bound (point grid)",
        }
    }
}

enum Predictor {
    OracleBox(Box<SamSession>, Oracle),
    MedClipSam(Box<TextPipeline>),
    Salip(Box<TextPipeline>, SalipOptions),
}

struct Row {
    image: String,
    width: u32,
    height: u32,
    gt_area: usize,
    pred_area: usize,
    scores: Option<crate::metrics::Scores>,
    ms: f64,
    note: Option<String>,
    error: Option<String>,
}

fn progress(i: usize, n: usize, name: &str, per: f64, tty: bool) {
    let width = 30;
    let done = width * i / n.max(1);
    let bar = format!(
        "[{}{}] {i}/{n} {:.2} s/img {name}",
        "#".repeat(done),
        ".".repeat(width - done),
        per
    );
    if tty {
        eprint!("\r{bar:<100.100}");
        if i == n {
            eprintln!();
        }
    } else if i == n || i.is_multiple_of((n / 10).max(1)) {
        eprintln!("{bar}");
    }
    let _ = std::io::stderr().flush();
}

pub fn run(argv: &[String]) -> Result<()> {
    let mut values = vec![
        "pairs",
        "prompt",
        "loose",
        "jitter",
        "seed",
        "pipeline",
        "limit",
        "out-dir",
        "nsd-tol",
        "models",
        "precision",
        "decoder-precision",
        "threads",
    ];
    values.extend_from_slice(textseg::TEXT_VALUES);
    let a = args::parse(argv, &values, &["help"])?;
    if a.has("help") {
        println!("{USAGE}");
        return Ok(());
    }
    let csv = PathBuf::from(
        a.get("pairs")
            .context("eval needs --pairs DATA/pairs.csv")?,
    );
    let mut pairs = read_pairs(&csv)?;
    if let Some(n) = a.get("limit") {
        let n: usize = n
            .parse()
            .map_err(|_| anyhow::anyhow!("--limit '{n}' is not a count"))?;
        pairs.truncate(n);
    }
    let tol: f64 = a.parse_or("nsd-tol", 2.0)?;
    if !(0.0..=50.0).contains(&tol) {
        bail!("--nsd-tol must be 0..=50 px");
    }
    let opts = ModelOptions::from_args(&a)?;
    let loose: f64 = a.parse_or("loose", 0.0)?;
    if !(0.0..=2.0).contains(&loose) {
        bail!("--loose must be between 0 and 2 (a fraction of the box size)");
    }
    let mode = match a.get("prompt") {
        None => None,
        Some("oracle-box") => Some(Oracle::Box(crate::oracle::BoxNoise {
            loose,
            ..Default::default()
        })),
        Some("jittered-box") => {
            let jitter: f64 = a.parse_or("jitter", 0.1)?;
            if !(jitter > 0.0 && jitter <= 1.0) {
                bail!("--jitter must be in (0, 1] (a fraction of the box size)");
            }
            Some(Oracle::Box(crate::oracle::BoxNoise {
                loose,
                jitter,
                seed: a.parse_or("seed", 0u64)?,
            }))
        }
        Some("oracle-point") => Some(Oracle::Point),
        Some("everything-bound") => Some(Oracle::Bound(textseg::salip_from(&a)?.everything)),
        Some(p) => bail!(
            "--prompt '{p}': the prompt modes are oracle-box, jittered-box, oracle-point and everything-bound"
        ),
    };
    if mode.is_none() && (a.get("loose").is_some() || a.get("jitter").is_some()) {
        bail!("--loose and --jitter shape oracle boxes: give --prompt oracle-box or jittered-box");
    }
    let oracle = mode.is_some();
    let pipeline = textseg::pipeline_from(&a)?;
    if !oracle && !textseg::wants_text(&a) {
        bail!(
            "eval needs a text prompt (--text, --prompt-file, --bank) or --prompt oracle-box\n\n{USAGE}"
        );
    }
    let method = textseg::method_from(&a)?;
    let rule = textseg::rule_from(&a)?;
    let mut predictor = match (oracle, pipeline) {
        (true, _) => {
            Predictor::OracleBox(Box::new(opts.load_session()?), mode.expect("oracle mode"))
        }
        (false, Pipeline::MedClipSam) => {
            Predictor::MedClipSam(Box::new(textseg::load_pipeline(&a, &opts, method)?))
        }
        (false, Pipeline::Salip) => {
            let so = textseg::salip_from(&a)?;
            Predictor::Salip(Box::new(textseg::load_pipeline(&a, &opts, method)?), so)
        }
    };
    let synthetic = match &predictor {
        Predictor::OracleBox(s, _) => s.manifest.sam.synthetic,
        Predictor::MedClipSam(p) | Predictor::Salip(p, _) => p.synthetic(),
    };
    let pipeline_name = match (&predictor, pipeline) {
        (Predictor::OracleBox(..), _) => "sam",
        (_, Pipeline::MedClipSam) => "medclip-sam",
        (_, Pipeline::Salip) => "salip",
    };
    if synthetic {
        eprintln!(
            "NOTE: the models are SYNTHETIC (seeded random, untrained): these scores measure nothing about segmentation quality"
        );
    }
    // a single text embedding is computed once; per-image prompt files per image
    let mut shared_text: Option<(Vec<f32>, String)> = None;

    let tty = std::io::stderr().is_terminal();
    let (n, start) = (pairs.len(), Instant::now());
    let mut rows = Vec::with_capacity(n);
    for (i, pair) in pairs.iter().enumerate() {
        let name = pair
            .image
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let t0 = Instant::now();
        let row = match eval_one(
            &a,
            &mut predictor,
            pair,
            i as u64,
            &name,
            method,
            &rule,
            tol,
            &mut shared_text,
        ) {
            Ok(mut r) => {
                r.ms = t0.elapsed().as_secs_f64() * 1e3;
                r
            }
            Err(e) => Row {
                image: name.clone(),
                width: 0,
                height: 0,
                gt_area: 0,
                pred_area: 0,
                scores: None,
                ms: t0.elapsed().as_secs_f64() * 1e3,
                note: None,
                error: Some(format!("{e:#}")),
            },
        };
        if let Some(e) = &row.error {
            log::warn!("{name}: {e}");
        }
        rows.push(row);
        progress(
            i + 1,
            n,
            &name,
            start.elapsed().as_secs_f64() / (i + 1) as f64,
            tty,
        );
    }
    let out_dir = PathBuf::from(a.get("out-dir").unwrap_or("eval_out"));
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    let labels = match &predictor {
        Predictor::OracleBox(s, m) => ModelLabels {
            prompt: m.name(),
            loose: matches!(m, Oracle::Box(_)).then_some(loose),
            jitter: match m {
                Oracle::Box(n) if n.jitter > 0.0 => Some((n.jitter, n.seed)),
                _ => None,
            },
            sam: sam_label(&s.manifest.sam),
            clip: None,
            precision: s.precision.as_str(),
        },
        Predictor::MedClipSam(p) | Predictor::Salip(p, _) => ModelLabels {
            prompt: "text",
            loose: None,
            jitter: None,
            sam: sam_label(&p.sam.manifest.sam),
            clip: p.sam.manifest.clip.as_ref().map(|c| c.synthetic),
            precision: p.sam.precision.as_str(),
        },
    };
    let summary = write_reports(
        &out_dir,
        &csv,
        &rows,
        &a,
        pipeline_name,
        synthetic,
        tol,
        method.name(),
        &labels,
    )?;
    println!("{summary}");
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn eval_one(
    a: &args::Args,
    predictor: &mut Predictor,
    pair: &Pair,
    index: u64,
    name: &str,
    method: crate::saliency::Method,
    rule: &crate::autoprompt::Rule,
    tol: f64,
    shared_text: &mut Option<(Vec<f32>, String)>,
) -> Result<Row> {
    let frame: RgbFrame = crate::image_io::load_rgb(&pair.image)?;
    let gt = load_gt(pair, frame.width, frame.height)?;
    let gt_area = gt.iter().filter(|&&v| v != 0).count();
    let mut t = Timings::default();
    let (mask, note): (Mask, Option<String>) = match predictor {
        Predictor::OracleBox(session, mode) => {
            let gm = Mask {
                width: frame.width,
                height: frame.height,
                data: gt.clone(),
            };
            let prompt = match mode {
                Oracle::Box(noise) => {
                    crate::oracle::oracle_box(&gm, noise, index).map(|b| Prompt {
                        bbox: Some(b),
                        points: vec![],
                    })
                }
                Oracle::Point => crate::oracle::interior_point(&gm).map(|p| Prompt {
                    bbox: None,
                    points: vec![p],
                }),
                Oracle::Bound(o) => {
                    let enc = session.encode(&frame, &mut t)?;
                    let (cands, _) = crate::everything::generate(session, &enc, o, &mut t)?;
                    let best = cands
                        .iter()
                        .map(|c| (crate::metrics::overlap(&c.mask.data, &gt).0, &c.mask))
                        .max_by(|a, b| a.0.total_cmp(&b.0));
                    let mask = best
                        .map(|(_, m)| m.clone())
                        .unwrap_or_else(|| Mask::empty(frame.width, frame.height));
                    let note = format!("{} candidates", cands.len());
                    return finish(frame, gt, gt_area, mask, Some(note), name, tol);
                }
            };
            match prompt {
                None => (
                    Mask::empty(frame.width, frame.height),
                    Some(format!("empty ground truth: no {} prompt", mode.name())),
                ),
                Some(p) => {
                    let (m, _) = super::segment::segment_frame(session, &frame, &[p], &mut t)?;
                    (m, None)
                }
            }
        }
        Predictor::MedClipSam(p) => {
            let text = text_for(a, p, name, shared_text, &mut t)?;
            let r = p.segment(&frame, &text, method, rule, &mut t)?;
            (r.mask, r.auto.fallback)
        }
        Predictor::Salip(p, so) => {
            let text = text_for(a, p, name, shared_text, &mut t)?;
            let r = crate::salip::segment(p, &frame, &text, so, &mut t)?;
            let note = (r.status != crate::salip::Status::Ok).then(|| r.status.describe());
            (r.mask, note)
        }
    };
    finish(frame, gt, gt_area, mask, note, name, tol)
}

fn finish(
    frame: RgbFrame,
    gt: Vec<u8>,
    gt_area: usize,
    mask: Mask,
    note: Option<String>,
    name: &str,
    tol: f64,
) -> Result<Row> {
    let pred_area = mask.area();
    let scores = (gt_area > 0).then(|| {
        score(
            &mask.data,
            &gt,
            frame.width as usize,
            frame.height as usize,
            tol,
        )
    });
    Ok(Row {
        image: name.to_string(),
        width: frame.width,
        height: frame.height,
        gt_area,
        pred_area,
        scores,
        ms: 0.0,
        note,
        error: None,
    })
}

/// The text embedding: computed once for a fixed text, per image for per-image prompt files.
fn text_for(
    a: &args::Args,
    p: &mut TextPipeline,
    name: &str,
    shared_text: &mut Option<(Vec<f32>, String)>,
    t: &mut Timings,
) -> Result<Vec<f32>> {
    let per_image = a.get("prompt-file").is_some();
    match shared_text {
        Some(s) if !per_image => Ok(s.0.clone()),
        _ => {
            let e = textseg::text_embedding(a, p, name, t)?;
            let v = e.0.clone();
            if !per_image {
                *shared_text = Some(e);
            }
            Ok(v)
        }
    }
}

/// What the reports say about the prompt and the models (real or synthetic, which family).
struct ModelLabels {
    prompt: &'static str,
    loose: Option<f64>,
    jitter: Option<(f64, u64)>,
    sam: serde_json::Value,
    /// Some(synthetic) when a CLIP took part.
    clip: Option<bool>,
    precision: &'static str,
}

fn sam_label(s: &crate::model::manifest::SamSection) -> serde_json::Value {
    serde_json::json!({
        "family": s.family.as_str(),
        "weights": s.weights_label(),
        "source": s.source,
        "package": (!s.package.is_empty()).then_some(&s.package),
    })
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[allow(clippy::too_many_arguments)]
fn write_reports(
    dir: &Path,
    pairs: &Path,
    rows: &[Row],
    a: &args::Args,
    pipeline: &str,
    synthetic: bool,
    tol: f64,
    method: &str,
    labels: &ModelLabels,
) -> Result<String> {
    let mut csv =
        String::from("image,width,height,gt_area,pred_area,dice,iou,nsd,empty_gt,ms,note,error\n");
    for r in rows {
        let f = |v: Option<f64>| v.map(|x| format!("{x:.6}")).unwrap_or_default();
        csv += &format!(
            "{},{},{},{},{},{},{},{},{},{:.1},{},{}\n",
            csv_field(&r.image),
            r.width,
            r.height,
            r.gt_area,
            r.pred_area,
            f(r.scores.map(|s| s.dice)),
            f(r.scores.map(|s| s.iou)),
            f(r.scores.map(|s| s.nsd)),
            r.error.is_none() && r.gt_area == 0,
            r.ms,
            csv_field(r.note.as_deref().unwrap_or("")),
            csv_field(r.error.as_deref().unwrap_or("")),
        );
    }
    std::fs::write(dir.join("eval.csv"), csv)
        .with_context(|| format!("cannot write {}", dir.display()))?;
    let scored: Vec<&Row> = rows.iter().filter(|r| r.scores.is_some()).collect();
    let stat = |f: fn(&crate::metrics::Scores) -> f64| {
        let v: Vec<f64> = scored
            .iter()
            .filter_map(|r| r.scores.as_ref().map(f))
            .collect();
        let (m, s) = mean_std(&v);
        serde_json::json!({"mean": if m.is_finite() { serde_json::json!(m) } else { serde_json::Value::Null },
                           "std": if s.is_finite() { serde_json::json!(s) } else { serde_json::Value::Null }})
    };
    let empty: Vec<&Row> = rows
        .iter()
        .filter(|r| r.error.is_none() && r.gt_area == 0)
        .collect();
    let errors = rows.iter().filter(|r| r.error.is_some()).count();
    let fallbacks = rows
        .iter()
        .filter(|r| r.note.is_some() && r.gt_area > 0)
        .count();
    let ms: Vec<f64> = rows
        .iter()
        .filter(|r| r.error.is_none())
        .map(|r| r.ms)
        .collect();
    let summary = serde_json::json!({
        "pairs": pairs,
        "images": rows.len(),
        "scored": scored.len(),
        "errors": errors,
        "prompt": labels.prompt,
        "loose": labels.loose,
        "jitter": labels.jitter.map(|j| j.0),
        "seed": labels.jitter.map(|j| j.1),
        "sam": labels.sam,
        "clip_weights": labels.clip.map(|syn| if syn { "SYNTHETIC" } else { "real" }),
        "precision": labels.precision,
        "pipeline": pipeline,
        "text": a.all("text"),
        "prompt_file": a.get("prompt-file"),
        "saliency_method": (pipeline == "medclip-sam").then_some(method),
        "prompt_rule": (pipeline == "medclip-sam").then(|| a.get("prompt-rule").unwrap_or("v2")),
        "nsd_tolerance_px": tol,
        "dice": stat(|s| s.dice),
        "iou": stat(|s| s.iou),
        "nsd": stat(|s| s.nsd),
        "fallbacks": fallbacks,
        "empty_gt": {
            "images": empty.len(),
            "predicted_empty": empty.iter().filter(|r| r.pred_area == 0).count(),
            "mean_false_positive_px": mean_std(&empty.iter().map(|r| r.pred_area as f64).collect::<Vec<_>>()).0,
        },
        "ms_per_image": mean_std(&ms).0,
        "synthetic_weights": synthetic,
        "warning": synthetic.then_some("SYNTHETIC (untrained) weights: these scores measure nothing about segmentation quality"),
    });
    let per_image: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "image": r.image, "gt_area": r.gt_area, "pred_area": r.pred_area,
                "dice": r.scores.map(|s| s.dice), "iou": r.scores.map(|s| s.iou), "nsd": r.scores.map(|s| s.nsd),
                "ms": r.ms, "note": r.note, "error": r.error,
            })
        })
        .collect();
    let full = serde_json::json!({"summary": summary, "images": per_image});
    std::fs::write(dir.join("eval.json"), serde_json::to_string_pretty(&full)?)
        .with_context(|| format!("cannot write {}", dir.display()))?;
    let fmt = |k: &str| {
        let v = &summary[k];
        format!(
            "{k} {:.4} ± {:.4}",
            v["mean"].as_f64().unwrap_or(f64::NAN),
            v["std"].as_f64().unwrap_or(f64::NAN)
        )
    };
    Ok(format!(
        "{} {} ({} SAM, {}, prompt {}): {} images ({} scored, {} empty GT, {} errors): {}, {}, {} -> {}/eval.csv, eval.json{}",
        summary["sam"]["family"].as_str().unwrap_or("?"),
        labels.precision,
        summary["sam"]["weights"].as_str().unwrap_or("?"),
        match labels.clip {
            None => "no CLIP",
            Some(true) => "SYNTHETIC CLIP",
            Some(false) => "real CLIP",
        },
        labels.prompt,
        rows.len(),
        scored.len(),
        empty.len(),
        errors,
        fmt("dice"),
        fmt("iou"),
        fmt("nsd"),
        dir.display(),
        if synthetic {
            "  [SYNTHETIC weights: scores meaningless]"
        } else {
            ""
        }
    ))
}
