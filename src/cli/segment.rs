//! `sonomask segment`: one image, box/point prompts, mask + overlay (+ JSON) out.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

use super::args;
use super::common::{self, ModelOptions};
use crate::image_io::{self, RgbFrame};
use crate::mask::Mask;
use crate::overlay;
use crate::prompt::{BoxPrompt, PointPrompt, Prompt};
use crate::segment::{SamSession, Segmentation};
use crate::timing::Timings;

pub const USAGE: &str = "\
sonomask segment IMAGE [--box x0,y0,x1,y1]... [--point x,y[,label]]... [-o mask.png]
                 [--overlay overlay.png] [--json] [--models DIR] [--precision fp32|int8|auto]
                 [--threads N]

  Segments IMAGE (PNG/JPEG) with MobileSAM. Each --box is one object (the masks of several boxes
  are ORed); --point adds foreground (label 1, default) or background (label 0) clicks to every
  box, or prompts on its own. Coordinates are pixels of the original image.
  -o/--out      mask PNG (0/255), default mask.png
  --overlay     image with the mask tinted and outlined, and the box drawn
  --json        print a JSON summary (areas, IoU predictions, per-stage timings) on stdout";

pub fn run(argv: &[String]) -> Result<()> {
    let a = args::parse(
        argv,
        &[
            "box",
            "point",
            "out",
            "overlay",
            "models",
            "precision",
            "threads",
        ],
        &["json", "help"],
    )?;
    if a.has("help") {
        println!("{USAGE}");
        return Ok(());
    }
    let [image] = a.positional.as_slice() else {
        bail!("segment needs exactly one IMAGE\n\n{USAGE}");
    };
    let boxes = a
        .all("box")
        .iter()
        .map(|s| BoxPrompt::parse(s))
        .collect::<Result<Vec<_>>>()?;
    let points = a
        .all("point")
        .iter()
        .map(|s| PointPrompt::parse(s))
        .collect::<Result<Vec<_>>>()?;
    if boxes.is_empty() && points.is_empty() {
        bail!("no prompt: give --box and/or --point\n\n{USAGE}");
    }
    let opts = ModelOptions::from_args(&a)?;
    let out = PathBuf::from(a.get("out").unwrap_or("mask.png"));

    let mut t = Timings::default();
    let frame = t.stage("load_image", || image_io::load_rgb(Path::new(image)))?;
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

    let mut session = opts.load_session()?;
    let (mask, results) = segment_frame(&mut session, &frame, &prompts, &mut t)?;
    t.stage("write_outputs", || {
        write_outputs(&frame, &mask, &boxes, &out, a.get("overlay").map(Path::new))
    })?;

    let s = &session.manifest.sam;
    if a.has("json") {
        let j = serde_json::json!({
            "image": image,
            "width": frame.width,
            "height": frame.height,
            "precision": session.precision.as_str(),
            "synthetic_weights": s.synthetic,
            "mask": out,
            "area": mask.area(),
            "bbox": mask.bbox(),
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
            "{}: {} px foreground of {}x{} ({} prompt(s), predicted IoU {}) -> {}{}",
            image,
            mask.area(),
            frame.width,
            frame.height,
            prompts.len(),
            ious.join(", "),
            out.display(),
            if s.synthetic {
                "  [SYNTHETIC weights: not a real segmentation]"
            } else {
                ""
            }
        );
    }
    Ok(())
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
