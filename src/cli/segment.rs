//! `sonomask segment`: one image, box/point prompts, mask + overlay (+ JSON) out.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

use super::args;
use super::common::{self, ModelOptions};
use super::flags::SegmentArgs;
use super::textseg;
use crate::input::dicom::DicomFile;
use crate::input::image_io::{self, RgbFrame};
use crate::input::source::{self, FrameSource};
use crate::mask::Mask;
use crate::output::overlay;
use crate::pipelines::cine::CineOptions;
use crate::pipelines::segment::{SamSession, Segmentation};
use crate::prompting::prompt::{BoxPrompt, PointPrompt, Prompt};
use crate::timing::Timings;

pub fn run(a: SegmentArgs) -> Result<()> {
    let [image] = a.image.as_slice() else {
        bail!(
            "segment needs exactly one IMAGE\n\n{}",
            super::usage::<SegmentArgs>()
        );
    };
    if textseg::wants_text(&a.text) {
        let mut t = Timings::default();
        let (frame, _) = t.stage("load_image", || load_single(Path::new(image)))?;
        return textseg::run_segment(&a, image, frame, t);
    }
    let boxes = a
        .boxes
        .as_slice()
        .iter()
        .map(|s| BoxPrompt::parse(s))
        .collect::<Result<Vec<_>>>()?;
    let points = a
        .point
        .as_slice()
        .iter()
        .map(|s| PointPrompt::parse(s))
        .collect::<Result<Vec<_>>>()?;
    if boxes.is_empty() && points.is_empty() {
        bail!(
            "no prompt: give --box and/or --point, or --text\n\n{}",
            super::usage::<SegmentArgs>()
        );
    }
    let opts = ModelOptions::from_args(&a.model)?;
    if let Some(source) = multi_frame_source(image)? {
        if boxes.len() > 1 {
            bail!("cine mode takes one --box (one object followed through the frames)");
        }
        let prompt = Prompt {
            bbox: boxes.first().copied(),
            points: points.clone(),
        };
        let mut cine_opts = CineOptions {
            threshold: args::parse_or(
                "cine-threshold",
                a.cine.cine_threshold.as_deref(),
                CineOptions::default().threshold,
            )?,
            max_reuse: args::parse_or(
                "reencode-every",
                a.cine.reencode_every.as_deref(),
                CineOptions::default().max_reuse,
            )?,
            smooth: args::parse_or("smooth", a.smooth.as_deref(), CineOptions::default().smooth)?,
            ..CineOptions::default()
        };
        if !(0.0..=1.0).contains(&cine_opts.threshold) || !(0.0..=1.0).contains(&cine_opts.smooth) {
            bail!("--cine-threshold and --smooth must be between 0 and 1");
        }
        if a.cine.no_reuse {
            cine_opts.threshold = 0.0;
            cine_opts.max_reuse = 0;
        }
        let max_frames = a
            .max_frames
            .as_deref()
            .map(|_| args::parse_or("max-frames", a.max_frames.as_deref(), 0u32))
            .transpose()?;
        let out = PathBuf::from(a.out.as_deref().unwrap_or("cine_out"));
        let mut session = opts.load_session()?;
        return super::cine::run(
            &mut session,
            super::cine::CineRun {
                source,
                prompt,
                out: &out,
                opts: cine_opts,
                max_frames,
                json: a.json,
            },
        );
    }
    let out = PathBuf::from(a.out.as_deref().unwrap_or("mask.png"));

    let mut t = Timings::default();
    let (frame, file_spacing) = t.stage("load_image", || load_single(Path::new(image)))?;
    let prompts: Vec<Prompt> = if boxes.is_empty() {
        vec![Prompt {
            bbox: None,
            points: points.clone(),
        }]
    } else {
        boxes
            .iter()
            .map(|b| Prompt {
                bbox: Some(*b),
                points: points.clone(),
            })
            .collect()
    };
    for p in &prompts {
        p.validate(frame.width, frame.height)
            .with_context(|| format!("prompt for {image}"))?;
    }

    let target = match a.measure.measure.as_deref() {
        Some(m) => crate::output::measure::Target::parse(m)?,
        None => crate::output::measure::Target::None,
    };
    let spacing = match a.measure.pixel_size.as_deref() {
        Some(v) => Some(crate::output::measure::Spacing::isotropic(
            crate::output::measure::parse_pixel_size(v)?,
        )),
        None => file_spacing,
    };
    let mut session = opts.load_session()?;
    let (mask, results) = segment_frame(&mut session, &frame, &prompts, &mut t)?;
    let measured = t.stage("measure", || {
        let mut scratch = crate::output::measure::Scratch::default();
        crate::output::measure::measure_for(target, &mask, &frame.pixels, spacing, &mut scratch)
    });
    t.stage("write_outputs", || {
        write_outputs(
            &frame,
            &mask,
            &boxes,
            &out,
            a.overlay.as_deref().map(Path::new),
        )?;
        if let (Some(p), Some(m)) = (a.overlay.as_deref(), &measured) {
            let mut o = overlay::render(&frame, &mask, boxes.first());
            overlay::measurements(&mut o, m, target, spacing);
            common::save_rgb(Path::new(p), &o)?;
        }
        anyhow::Ok(())
    })?;

    let s = &session.manifest.sam;
    let gt_scores = a
        .gt
        .as_deref()
        .map(|gt| -> Result<crate::output::metrics::Scores> {
            let g =
                crate::input::dataset::load_masks(&[PathBuf::from(gt)], frame.width, frame.height)?;
            Ok(crate::output::metrics::score(
                &mask.data,
                &g,
                frame.width as usize,
                frame.height as usize,
                2.0,
            ))
        })
        .transpose()?;
    if a.json {
        let j = serde_json::json!({
            "image": image,
            "width": frame.width,
            "height": frame.height,
            "precision": session.precision.as_str(),
            "model": {"family": s.family.as_str(), "weights": s.weights_label(), "source": s.source},
            "synthetic_weights": s.synthetic,
            "gt": gt_scores.map(|g| serde_json::json!({"dice": g.dice, "iou": g.iou, "nsd_2px": g.nsd})),
            "mask": out,
            "area": mask.area(),
            "bbox": mask.bbox(),
            "measure": measured.as_ref().map(|m| measurement_json(m, target, spacing)),
            "prompts": prompts.iter().zip(&results).map(|(p, r)| serde_json::json!({
                "box": p.bbox.map(|b| [b.x0, b.y0, b.x1, b.y1]),
                "points": p.points.iter().map(|q| [q.x, q.y, q.foreground as u8 as f32]).collect::<Vec<_>>(),
                "token": r.token,
                "predicted_iou": r.iou,
                "area": r.mask.area(),
            })).collect::<Vec<_>>(),
            "timings_ms": common::timings_json(&t),
        });
        println!("{j}");
    } else {
        let ious: Vec<String> = results.iter().map(|r| format!("{:.3}", r.iou)).collect();
        println!(
            "{}: {} px foreground of {}x{} ({} prompt(s), predicted IoU {}) -> {}{}{}{}",
            image,
            mask.area(),
            frame.width,
            frame.height,
            prompts.len(),
            ious.join(", "),
            out.display(),
            measured
                .as_ref()
                .map(|m| format!("; {}", measurement_text(m, target)))
                .unwrap_or_default(),
            gt_scores
                .map(|g| format!(
                    "; against the ground truth: Dice {:.3}, IoU {:.3}",
                    g.dice, g.iou
                ))
                .unwrap_or_default(),
            if s.synthetic {
                "  [SYNTHETIC weights: not a real segmentation]".to_string()
            } else {
                format!(
                    "  [{} {}, real weights]",
                    s.family.as_str(),
                    session.precision.as_str()
                )
            }
        );
    }
    Ok(())
}

/// One line for people: `HC 183.2 mm (skull outer border)`, `lesion 21.4 x 13.0 mm, 215.3 mm²`.
pub fn measurement_text(
    m: &crate::output::measure::Measurements,
    target: crate::output::measure::Target,
) -> String {
    let u = m.unit.as_str();
    match (target, m.hc) {
        (crate::output::measure::Target::Hc, Some(hc)) => {
            format!(
                "HC {hc:.1} {u} ({}), area {:.1} {u}²",
                m.hc_source.as_str(),
                m.area
            )
        }
        _ => format!(
            "diameters {:.1} x {:.1} {u}, area {:.1} {u}²",
            m.long_axis.length, m.short_axis.length, m.area
        ),
    }
}

/// The measurement as JSON (the same fields `eval` writes per image).
pub fn measurement_json(
    m: &crate::output::measure::Measurements,
    target: crate::output::measure::Target,
    spacing: Option<crate::output::measure::Spacing>,
) -> serde_json::Value {
    serde_json::json!({
        "target": target.as_str(),
        "unit": m.unit.as_str(),
        "pixel_spacing_mm": spacing.map(|s| [s.x_mm, s.y_mm]),
        "hc": m.hc,
        "hc_source": m.hc.map(|_| m.hc_source.as_str()),
        "hc_mask": m.hc_mask(),
        "area": m.area,
        "perimeter": m.perimeter,
        "ellipse": m.ellipse.map(|e| serde_json::json!({
            "cx_px": e.cx, "cy_px": e.cy, "semi_major": e.semi_major, "semi_minor": e.semi_minor, "angle_deg": e.angle_deg,
        })),
        "long_axis": {"length": m.long_axis.length, "from_px": [m.long_axis.from.0, m.long_axis.from.1], "to_px": [m.long_axis.to.0, m.long_axis.to.1]},
        "short_axis": {"length": m.short_axis.length, "from_px": [m.short_axis.from.0, m.short_axis.from.1], "to_px": [m.short_axis.to.0, m.short_axis.to.1]},
    })
}

/// A source with more than one frame (cine mode), or None for a single image or 1-frame DICOM.
fn multi_frame_source(spec: &str) -> Result<Option<Box<dyn FrameSource>>> {
    let path = Path::new(spec);
    if spec.starts_with("raw:") || path.is_dir() {
        return source::open(spec).map(Some);
    }
    if path.is_file() && source::is_dicom(path) {
        // Parsed once here; a damaged file has no frame count and takes the single-image path,
        // which reports why it cannot be read.
        let src = source::open(spec)?;
        if src.len_hint().is_some_and(|n| n > 1) {
            return Ok(Some(src));
        }
    }
    Ok(None)
}

/// A still image, or the only frame of a DICOM file, with the DICOM's pixel spacing if it has one.
fn load_single(path: &Path) -> Result<(RgbFrame, Option<crate::output::measure::Spacing>)> {
    if path.is_file() && source::is_dicom(path) {
        let d = DicomFile::open(path)?;
        let spacing = d
            .info
            .pixel_spacing_mm
            .map(crate::output::measure::Spacing::from_row_col);
        return Ok((d.frame(0)?, spacing));
    }
    Ok((image_io::load_rgb(path)?, None))
}

/// One encoder pass, one decoder pass per prompt, masks ORed.
pub fn segment_frame(
    session: &mut SamSession,
    frame: &RgbFrame,
    prompts: &[Prompt],
    t: &mut Timings,
) -> Result<(Mask, Vec<Segmentation>)> {
    let encoded = session.encode(frame, t)?;
    let mut union = Mask::empty(frame.width, frame.height);
    let mut results = Vec::with_capacity(prompts.len());
    for p in prompts {
        let r = session.decode(&encoded, p, t)?;
        union.union_with(&r.mask);
        results.push(r);
    }
    Ok((union, results))
}

fn write_outputs(
    frame: &RgbFrame,
    mask: &Mask,
    boxes: &[BoxPrompt],
    out: &Path,
    overlay_path: Option<&Path>,
) -> Result<()> {
    common::save_gray(out, mask.width, mask.height, &mask.to_gray8())?;
    if let Some(p) = overlay_path {
        let o = overlay::render(frame, mask, boxes.first());
        common::save_rgb(p, &o)?;
    }
    Ok(())
}
