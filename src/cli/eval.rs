//! `sonomask eval`: run a pipeline over a labelled set (pairs.csv) and score it: Dice, IoU and
//! NSD per image and summarised; images with an empty ground truth are reported apart; CSV and
//! JSON out. With synthetic models the scores are meaningless and the output says so.

use anyhow::{Context, Result, bail};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::args;
use super::common::ModelOptions;
use super::flags::EvalArgs;
use super::textseg::{self, Pipeline};
use crate::input::dataset::{Pair, load_gt, read_pairs};
use crate::input::image_io::RgbFrame;
use crate::mask::Mask;
use crate::output::metrics::{mean_std, score};
use crate::pipelines::salip::SalipOptions;
use crate::pipelines::segment::SamSession;
use crate::pipelines::textseg::TextPipeline;
use crate::prompting::prompt::Prompt;
use crate::timing::Timings;

/// Which prompt the ground truth gives the SAM stage.
#[derive(Clone, Copy, Debug)]
enum Oracle {
    Box(crate::prompting::oracle::BoxNoise),
    Point,
    Bound(crate::pipelines::everything::EverythingOptions),
}

impl Oracle {
    fn name(&self) -> &'static str {
        match self {
            Oracle::Box(n) if n.jitter > 0.0 => "jittered-box",
            Oracle::Box(_) => "oracle-box",
            Oracle::Point => "oracle-point",
            Oracle::Bound(o) if o.grid == crate::pipelines::everything::GridPrompts::Boxes => {
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
    scores: Option<crate::output::metrics::Scores>,
    ms: f64,
    note: Option<String>,
    error: Option<String>,
    measured: Option<Measured>,
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

pub fn run(a: EvalArgs) -> Result<()> {
    let csv = PathBuf::from(
        a.pairs
            .as_deref()
            .context("eval needs --pairs DATA/pairs.csv")?,
    );
    let mut pairs = read_pairs(&csv)?;
    if let Some(n) = a.limit.as_deref() {
        let n: usize = n
            .parse()
            .map_err(|_| anyhow::anyhow!("--limit '{n}' is not a count"))?;
        pairs.truncate(n);
    }
    let tol: f64 = args::parse_or("nsd-tol", a.nsd_tol.as_deref(), 2.0)?;
    if !(0.0..=50.0).contains(&tol) {
        bail!("--nsd-tol must be 0..=50 px");
    }
    let opts = ModelOptions::from_args(&a.model)?;
    let measure = MeasureCfg::from_args(&a)?;
    let loose: f64 = args::parse_or("loose", a.loose.as_deref(), 0.0)?;
    if !(0.0..=2.0).contains(&loose) {
        bail!("--loose must be between 0 and 2 (a fraction of the box size)");
    }
    let mode = match a.prompt.as_deref() {
        None => None,
        Some("oracle-box") => Some(Oracle::Box(crate::prompting::oracle::BoxNoise {
            loose,
            ..Default::default()
        })),
        Some("jittered-box") => {
            let jitter: f64 = args::parse_or("jitter", a.jitter.as_deref(), 0.1)?;
            if !(jitter > 0.0 && jitter <= 1.0) {
                bail!("--jitter must be in (0, 1] (a fraction of the box size)");
            }
            Some(Oracle::Box(crate::prompting::oracle::BoxNoise {
                loose,
                jitter,
                seed: args::parse_or("seed", a.seed.as_deref(), 0u64)?,
            }))
        }
        Some("oracle-point") => Some(Oracle::Point),
        Some("everything-bound") => Some(Oracle::Bound(textseg::salip_from(&a.text)?.everything)),
        Some(p) => bail!(
            "--prompt '{p}': the prompt modes are oracle-box, jittered-box, oracle-point and everything-bound"
        ),
    };
    if mode.is_none() && (a.loose.as_deref().is_some() || a.jitter.as_deref().is_some()) {
        bail!("--loose and --jitter shape oracle boxes: give --prompt oracle-box or jittered-box");
    }
    let oracle = mode.is_some();
    let pipeline = textseg::pipeline_from(&a.text)?;
    if !oracle && !textseg::wants_text(&a.text) {
        bail!(
            "eval needs a text prompt (--text, --prompt-file, --bank) or --prompt oracle-box\n\n{}",
            super::usage::<EvalArgs>()
        );
    }
    let method = textseg::method_from(&a.text)?;
    let rule = textseg::rule_from(&a.text)?;
    let mut predictor = match (oracle, pipeline) {
        (true, _) => {
            Predictor::OracleBox(Box::new(opts.load_session()?), mode.expect("oracle mode"))
        }
        (false, Pipeline::MedClipSam) => {
            Predictor::MedClipSam(Box::new(textseg::load_pipeline(&a.text, &opts, method)?))
        }
        (false, Pipeline::Salip) => {
            let so = textseg::salip_from(&a.text)?;
            Predictor::Salip(
                Box::new(textseg::load_pipeline(&a.text, &opts, method)?),
                so,
            )
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
            measure.as_ref(),
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
                measured: None,
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
    let out_dir = PathBuf::from(a.out_dir.as_deref().unwrap_or("eval_out"));
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
    a: &EvalArgs,
    predictor: &mut Predictor,
    pair: &Pair,
    index: u64,
    name: &str,
    method: crate::prompting::saliency::Method,
    rule: &crate::prompting::autoprompt::Rule,
    tol: f64,
    shared_text: &mut Option<(Vec<f32>, String)>,
    measure: Option<&MeasureCfg>,
) -> Result<Row> {
    let frame: RgbFrame = crate::input::image_io::load_rgb(&pair.image)?;
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
                    crate::prompting::oracle::oracle_box(&gm, noise, index).map(|b| Prompt {
                        bbox: Some(b),
                        points: vec![],
                    })
                }
                Oracle::Point => crate::prompting::oracle::interior_point(&gm).map(|p| Prompt {
                    bbox: None,
                    points: vec![p],
                }),
                Oracle::Bound(o) => {
                    let enc = session.encode(&frame, &mut t)?;
                    let (cands, _) =
                        crate::pipelines::everything::generate(session, &enc, o, &mut t)?;
                    let best = cands
                        .iter()
                        .map(|c| {
                            (
                                crate::output::metrics::overlap(&c.mask.data, &gt).0,
                                &c.mask,
                            )
                        })
                        .max_by(|a, b| a.0.total_cmp(&b.0));
                    let mask = best
                        .map(|(_, m)| m.clone())
                        .unwrap_or_else(|| Mask::empty(frame.width, frame.height));
                    let note = format!("{} candidates", cands.len());
                    return finish(frame, gt, gt_area, mask, Some(note), name, tol, measure);
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
            let r = crate::pipelines::salip::segment(p, &frame, &text, so, &mut t)?;
            let note =
                (r.status != crate::pipelines::salip::Status::Ok).then(|| r.status.describe());
            (r.mask, note)
        }
    };
    finish(frame, gt, gt_area, mask, note, name, tol, measure)
}

#[allow(clippy::too_many_arguments)]
fn finish(
    frame: RgbFrame,
    gt: Vec<u8>,
    gt_area: usize,
    mask: Mask,
    note: Option<String>,
    name: &str,
    tol: f64,
    measure: Option<&MeasureCfg>,
) -> Result<Row> {
    let measured = match measure {
        Some(m) => Some(m.measure(name, &frame, &mask, &gt)?),
        None => None,
    };
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
        measured,
    })
}

/// `--measure`: which biometry, and where each image's pixel size comes from.
struct MeasureCfg {
    kind: crate::output::measure::Target,
    sizes: Option<crate::input::dataset::PixelSizes>,
    fixed_mm: Option<f64>,
}

/// One image's measurements: the predicted mask's, the ground truth mask's, the reference.
struct Measured {
    kind: crate::output::measure::Target,
    pixel_mm: Option<f64>,
    pred: Option<crate::output::measure::Measurements>,
    gt: Option<crate::output::measure::Measurements>,
    /// The CSV's reference HC (mm), when it has one.
    reference_hc: Option<f64>,
    /// HC of the predicted mask's ellipse moved onto the skull echo's ridge (diagnostic).
    hc_echo_ridge: Option<f64>,
}

impl MeasureCfg {
    fn from_args(a: &EvalArgs) -> Result<Option<Self>> {
        let kind = match a.measure.as_deref() {
            None => {
                if a.pixel_size_csv.as_deref().is_some() || a.pixel_size.as_deref().is_some() {
                    bail!("--pixel-size and --pixel-size-csv go with --measure hc|lesion");
                }
                return Ok(None);
            }
            Some(k) => crate::output::measure::Target::parse(k)?,
        };
        if kind == crate::output::measure::Target::None {
            return Ok(None);
        }
        let sizes = match a.pixel_size_csv.as_deref() {
            Some(p) => Some(crate::input::dataset::PixelSizes::read(Path::new(p))?),
            None => None,
        };
        let fixed_mm = match a.pixel_size.as_deref() {
            Some(v) => Some(crate::output::measure::parse_pixel_size(v)?),
            None => None,
        };
        if sizes.is_some() && fixed_mm.is_some() {
            bail!("give --pixel-size or --pixel-size-csv, not both");
        }
        Ok(Some(MeasureCfg {
            kind,
            sizes,
            fixed_mm,
        }))
    }

    fn measure(&self, name: &str, frame: &RgbFrame, mask: &Mask, gt: &[u8]) -> Result<Measured> {
        let (pixel_mm, reference_hc) = match (&self.sizes, self.fixed_mm) {
            (Some(t), _) => {
                let (mm, hc) = t
                    .get(name)
                    .with_context(|| format!("{name} is not in --pixel-size-csv"))?;
                (Some(mm), hc)
            }
            (None, mm) => (mm, None),
        };
        let spacing = pixel_mm.map(crate::output::measure::Spacing::isotropic);
        let mut scratch = crate::output::measure::Scratch::default();
        let pred = crate::output::measure::measure_for(
            self.kind,
            mask,
            &frame.pixels,
            spacing,
            &mut scratch,
        );
        let gm = Mask {
            width: mask.width,
            height: mask.height,
            data: gt.to_vec(),
        };
        let gt = crate::output::measure::measure(&gm, spacing, &mut scratch);
        // Diagnostic: the skull's middle (the echo's ridge) instead of its outer border.
        // (from the mask's own ellipse, which the measurement above already fitted)
        let hc_echo_ridge = (self.kind == crate::output::measure::Target::Hc)
            .then(|| {
                let e = pred.as_ref()?.mask_ellipse?;
                let (w, h) = (frame.width as usize, frame.height as usize);
                let ridge = crate::output::measure::EchoEdge::Ridge;
                crate::output::measure::refine_on_echo(&e, spacing, &frame.pixels, w, h, ridge)
            })
            .flatten()
            .map(|r| r.circumference());
        Ok(Measured {
            hc_echo_ridge,
            kind: self.kind,
            pixel_mm,
            pred,
            gt,
            reference_hc,
        })
    }
}

/// The text embedding: computed once for a fixed text, per image for per-image prompt files.
fn text_for(
    a: &EvalArgs,
    p: &mut TextPipeline,
    name: &str,
    shared_text: &mut Option<(Vec<f32>, String)>,
    t: &mut Timings,
) -> Result<Vec<f32>> {
    let per_image = a.text.prompt_file.as_deref().is_some();
    match shared_text {
        Some(s) if !per_image => Ok(s.0.clone()),
        _ => {
            let e = textseg::text_embedding(&a.text, p, name, t)?;
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
    a: &EvalArgs,
    pipeline: &str,
    synthetic: bool,
    tol: f64,
    method: &str,
    labels: &ModelLabels,
) -> Result<String> {
    let measuring = rows.iter().any(|r| r.measured.is_some());
    let mut csv =
        String::from("image,width,height,gt_area,pred_area,dice,iou,nsd,empty_gt,ms,note,error");
    if measuring {
        csv += MEASURE_COLUMNS;
    }
    csv.push('\n');
    for r in rows {
        let f = |v: Option<f64>| v.map(|x| format!("{x:.6}")).unwrap_or_default();
        csv += &format!(
            "{},{},{},{},{},{},{},{},{},{:.1},{},{}",
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
        if measuring {
            csv += &measure_fields(r.measured.as_ref());
        }
        csv.push('\n');
    }
    std::fs::write(dir.join("eval.csv"), csv)
        .with_context(|| format!("cannot write {}", dir.display()))?;
    let scored: Vec<&Row> = rows.iter().filter(|r| r.scores.is_some()).collect();
    let stat = |f: fn(&crate::output::metrics::Scores) -> f64| {
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
        "text": a.text.text.as_slice(),
        "prompt_file": a.text.prompt_file.as_deref(),
        "saliency_method": (pipeline == "medclip-sam").then_some(method),
        "prompt_rule": (pipeline == "medclip-sam").then(|| a.text.prompt_rule.as_deref().unwrap_or("v2")),
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
        "measure": measure_summary(rows),
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
                "measure": r.measured.as_ref().map(measured_json),
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
    let measure_line = measure_line(&summary["measure"]);
    Ok(format!(
        "{} {} ({} SAM, {}, prompt {}): {} images ({} scored, {} empty GT, {} errors): {}, {}, {}{measure_line} -> {}/eval.csv, eval.json{}",
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

const MEASURE_COLUMNS: &str = ",pixel_mm,unit,hc,hc_gt_mask,hc_reference,hc_minus_reference,long_axis,short_axis,area,long_axis_gt_mask,short_axis_gt_mask,area_gt_mask,hc_source,hc_mask,hc_echo_ridge";

fn measure_fields(m: Option<&Measured>) -> String {
    let f = |v: Option<f64>| v.map(|x| format!("{x:.4}")).unwrap_or_default();
    let Some(m) = m else {
        return ",".repeat(MEASURE_COLUMNS.matches(',').count());
    };
    let unit = if m.pixel_mm.is_some() { "mm" } else { "px" };
    let p = m.pred.as_ref();
    let g = m.gt.as_ref();
    format!(
        ",{},{unit},{},{},{},{},{},{},{},{},{},{},{},{},{}",
        f(m.pixel_mm),
        f(p.and_then(|p| p.hc)),
        f(g.and_then(|g| g.hc)),
        f(m.reference_hc),
        f(p.and_then(|p| p.hc).zip(m.reference_hc).map(|(a, b)| a - b)),
        f(p.map(|p| p.long_axis.length)),
        f(p.map(|p| p.short_axis.length)),
        f(p.map(|p| p.area)),
        f(g.map(|g| g.long_axis.length)),
        f(g.map(|g| g.short_axis.length)),
        f(g.map(|g| g.area)),
        p.filter(|p| p.hc.is_some())
            .map(|p| p.hc_source.as_str())
            .unwrap_or(""),
        f(p.and_then(|p| p.hc_mask())),
        f(m.hc_echo_ridge),
    )
}

fn measured_json(m: &Measured) -> serde_json::Value {
    let spacing = m.pixel_mm.map(crate::output::measure::Spacing::isotropic);
    serde_json::json!({
        "pixel_mm": m.pixel_mm,
        // The same fields `segment --json` and `listen` write.
        "pred": m.pred.as_ref().map(|p| super::segment::measurement_json(p, m.kind, spacing)),
        "gt_mask": m.gt.as_ref().map(|g| super::segment::measurement_json(g, m.kind, spacing)),
        "reference_hc": m.reference_hc,
        "hc_echo_ridge": m.hc_echo_ridge,
    })
}

/// Differences as HC18 reports them: mean absolute, mean signed, SD of the signed difference.
fn diff_stats(d: &[f64]) -> serde_json::Value {
    if d.is_empty() {
        return serde_json::Value::Null;
    }
    let abs: Vec<f64> = d.iter().map(|v| v.abs()).collect();
    let (signed, sd) = mean_std(d);
    serde_json::json!({"images": d.len(), "mean_abs": mean_std(&abs).0, "mean_signed": signed, "sd": sd})
}

fn measure_summary(rows: &[Row]) -> serde_json::Value {
    let m: Vec<&Measured> = rows.iter().filter_map(|r| r.measured.as_ref()).collect();
    if m.is_empty() {
        return serde_json::Value::Null;
    }
    let unit = if m.iter().all(|m| m.pixel_mm.is_some()) {
        "mm"
    } else {
        "px"
    };
    let pairs = |a: &dyn Fn(&Measured) -> Option<f64>, b: &dyn Fn(&Measured) -> Option<f64>| {
        diff_stats(
            &m.iter()
                .filter_map(|x| Some(a(x)? - b(x)?))
                .collect::<Vec<_>>(),
        )
    };
    let hc = |x: &Measured| x.pred.as_ref().and_then(|p| p.hc);
    let hc_gt = |x: &Measured| x.gt.as_ref().and_then(|p| p.hc);
    let reference = |x: &Measured| x.reference_hc;
    let hc_mask = |x: &Measured| x.pred.as_ref().and_then(|p| p.hc_mask());
    let ridge = |x: &Measured| x.hc_echo_ridge;
    let long = |x: &Measured| x.pred.as_ref().map(|p| p.long_axis.length);
    let long_gt = |x: &Measured| x.gt.as_ref().map(|p| p.long_axis.length);
    let short = |x: &Measured| x.pred.as_ref().map(|p| p.short_axis.length);
    let short_gt = |x: &Measured| x.gt.as_ref().map(|p| p.short_axis.length);
    serde_json::json!({
        "kind": m[0].kind.as_str(),
        "unit": unit,
        "images": m.len(),
        "hc_vs_reference": pairs(&hc, &reference),
        "gt_mask_hc_vs_reference": pairs(&hc_gt, &reference),
        "hc_vs_gt_mask": pairs(&hc, &hc_gt),
        "hc_mask_ellipse_vs_reference": pairs(&hc_mask, &reference),
        "hc_echo_ridge_vs_reference": pairs(&ridge, &reference),
        "long_axis_vs_gt_mask": pairs(&long, &long_gt),
        "short_axis_vs_gt_mask": pairs(&short, &short_gt),
    })
}

fn measure_line(m: &serde_json::Value) -> String {
    if m.is_null() {
        return String::new();
    }
    let unit = m["unit"].as_str().unwrap_or("px");
    let one = |k: &str, label: &str| {
        let v = &m[k];
        v.get("mean_abs").map(|_| {
            format!(
                "; {label}: mean |diff| {:.2} {unit}, mean diff {:+.2}, SD {:.2} ({} images)",
                v["mean_abs"].as_f64().unwrap_or(f64::NAN),
                v["mean_signed"].as_f64().unwrap_or(f64::NAN),
                v["sd"].as_f64().unwrap_or(f64::NAN),
                v["images"]
            )
        })
    };
    let lines = if m["kind"] == "hc" {
        [
            one("hc_vs_reference", "HC (skull outer border) vs reference"),
            one("gt_mask_hc_vs_reference", "GT-mask HC vs reference"),
            one(
                "hc_mask_ellipse_vs_reference",
                "HC of the mask's own ellipse vs reference",
            ),
            one(
                "hc_echo_ridge_vs_reference",
                "HC on the skull ridge vs reference",
            ),
        ]
    } else {
        [
            None,
            one("long_axis_vs_gt_mask", "long axis vs GT mask"),
            one("short_axis_vs_gt_mask", "short axis vs GT mask"),
            None,
        ]
    };
    lines.into_iter().flatten().collect()
}
