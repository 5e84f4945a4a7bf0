//! `sonomask segment` on a multi-frame source (a cine DICOM, a directory, a raw frame stream):
//! cine mode with embedding reuse; one mask per frame, a JSON line per frame, an animated PNG
//! overlay and a contact strip a person can watch.

use anyhow::{Context, Result, bail};
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use super::common;
use crate::input::image_io::RgbFrame;
use crate::input::source::FrameSource;
use crate::output::overlay;
use crate::pipelines::cine::{Cine, CineOptions};
use crate::pipelines::segment::SamSession;
use crate::prompting::prompt::Prompt;
use crate::timing::Timings;

/// Frames kept for the animated overlay (downscaled); later frames still get masks.
const MAX_ANIMATION_FRAMES: usize = 150;
/// Longest side of an animation frame.
const ANIMATION_SIDE: u32 = 320;

pub struct CineRun<'a> {
    pub source: Box<dyn FrameSource>,
    pub prompt: Prompt,
    pub out: &'a Path,
    pub opts: CineOptions,
    pub max_frames: Option<u32>,
    pub json: bool,
}

pub fn run(session: &mut SamSession, r: CineRun<'_>) -> Result<()> {
    std::fs::create_dir_all(r.out).with_context(|| format!("cannot create {}", r.out.display()))?;
    let mut log = std::io::BufWriter::new(
        std::fs::File::create(r.out.join("frames.jsonl")).context("cannot create frames.jsonl")?,
    );
    let mut source = r.source;
    let mut cine = Cine::new(r.opts);
    let mut anim: Vec<RgbFrame> = Vec::new();
    let (mut frames, mut encodes, mut failed) = (0u32, 0u32, 0u32);
    let mut spacing = None;
    let started = Instant::now();
    while let Some(item) = source.next_frame() {
        if r.max_frames.is_some_and(|m| frames + failed >= m) {
            break;
        }
        let f = match item {
            Ok(f) => f,
            Err(e) => {
                log::error!("{e:#}");
                writeln!(log, "{}", serde_json::json!({"error": format!("{e:#}")}))?;
                failed += 1;
                continue;
            }
        };
        r.prompt
            .validate(f.image.width, f.image.height)
            .with_context(|| format!("prompt for {}", f.label))?;
        spacing = spacing.or(f.pixel_spacing_mm);
        let mut t = Timings::default();
        let step = cine.step(session, &f.image, &r.prompt, &mut t)?;
        let m = &step.segmentation.mask;
        let file = r.out.join(format!("mask_{:05}.png", f.index));
        t.stage("write_mask", || {
            common::save_gray(&file, m.width, m.height, &m.to_gray8())
        })?;
        if anim.len() < MAX_ANIMATION_FRAMES {
            anim.push(shrink(
                &overlay::render(&f.image, m, r.prompt.bbox.as_ref()),
                ANIMATION_SIDE,
            ));
        }
        frames += 1;
        encodes += step.encoder_ran as u32;
        writeln!(
            log,
            "{}",
            serde_json::json!({
                "frame": f.index,
                "source": f.label,
                "encoder_ran": step.encoder_ran,
                "change": step.change,
                "blended": step.blended,
                "predicted_iou": step.segmentation.iou,
                "area": m.area(),
                "mask": file,
                "timings_ms": common::timings_json(&t),
                "total_ms": t.total_ms(),
            })
        )?;
    }
    log.flush()?;
    if frames == 0 {
        bail!(
            "{}: no frame could be segmented ({failed} failed)",
            source.describe()
        );
    }
    let secs = started.elapsed().as_secs_f64();
    write_apng(&r.out.join("overlay.png"), &anim, 10)?;
    common::save_rgb(&r.out.join("strip.png"), &strip(&anim, 8))?;
    let s = &session.manifest.sam;
    let summary = serde_json::json!({
        "source": source.describe(),
        "frames": frames,
        "failed_frames": failed,
        "encoder_runs": encodes,
        "encoder_fraction": encodes as f64 / frames as f64,
        "seconds": secs,
        "fps": frames as f64 / secs,
        "pixel_spacing_mm": spacing.map(|(a, b)| [a, b]),
        "cine": {"threshold": tidy(r.opts.threshold), "max_reuse": r.opts.max_reuse, "smooth": tidy(r.opts.smooth), "gate_iou": tidy(r.opts.gate_iou)},
        "precision": session.precision.as_str(),
        "synthetic_weights": s.synthetic,
        "model": {"family": s.family.as_str(), "weights": s.weights_label()},
        "out": r.out,
    });
    if r.json {
        println!("{summary}");
    } else {
        println!(
            "{}: {frames} frames ({failed} unreadable), encoder ran on {encodes} ({:.0}%), {:.2} fps -> {}{}",
            source.describe(),
            100.0 * encodes as f64 / frames as f64,
            frames as f64 / secs,
            r.out.display(),
            if s.synthetic {
                "  [SYNTHETIC weights: not a real segmentation]"
            } else {
                ""
            }
        );
    }
    Ok(())
}

/// An f32 option as the decimal the user typed (0.01, not 0.009999999776).
fn tidy(v: f32) -> f64 {
    (v as f64 * 1e6).round() / 1e6
}

/// Nearest-neighbour downscale so the longest side is at most `side`.
fn shrink(f: &RgbFrame, side: u32) -> RgbFrame {
    let scale = (f.width.max(f.height) as f64 / side as f64).max(1.0);
    let (w, h) = (
        ((f.width as f64 / scale) as u32).max(1),
        ((f.height as f64 / scale) as u32).max(1),
    );
    let mut px = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        let sy = ((y as f64 * scale) as u32).min(f.height - 1);
        for x in 0..w {
            let sx = ((x as f64 * scale) as u32).min(f.width - 1);
            px.extend_from_slice(&f.pixel(sx, sy));
        }
    }
    RgbFrame {
        width: w,
        height: h,
        pixels: px,
    }
}

/// Up to `n` evenly spaced frames side by side.
fn strip(frames: &[RgbFrame], n: usize) -> RgbFrame {
    let picks: Vec<&RgbFrame> = if frames.len() <= n {
        frames.iter().collect()
    } else {
        (0..n)
            .map(|k| &frames[k * (frames.len() - 1) / (n - 1)])
            .collect()
    };
    let h = picks.iter().map(|f| f.height).max().unwrap_or(1);
    let w: u32 = picks.iter().map(|f| f.width).sum::<u32>().max(1);
    let mut px = vec![0u8; (w * h * 3) as usize];
    let mut x0 = 0;
    for f in picks {
        for y in 0..f.height {
            let dst = ((y * w + x0) * 3) as usize;
            let src = (y * f.width * 3) as usize;
            px[dst..dst + (f.width * 3) as usize]
                .copy_from_slice(&f.pixels[src..src + (f.width * 3) as usize]);
        }
        x0 += f.width;
    }
    RgbFrame {
        width: w,
        height: h,
        pixels: px,
    }
}

/// An animated PNG (plays in browsers and most viewers; others show the first frame).
fn write_apng(path: &Path, frames: &[RgbFrame], fps: u16) -> Result<()> {
    let Some(first) = frames.first() else {
        return Ok(());
    };
    // APNG frames share the canvas size: the animation stops at the first size change.
    let n = frames
        .iter()
        .take_while(|f| (f.width, f.height) == (first.width, first.height))
        .count();
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), first.width, first.height);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.set_animated(n as u32, 0)?;
    enc.set_frame_delay(1, fps)?;
    let mut w = enc.write_header()?;
    for f in &frames[..n] {
        w.write_image_data(&f.pixels)?;
    }
    w.finish()
        .with_context(|| format!("cannot finish {}", path.display()))?;
    Ok(())
}
