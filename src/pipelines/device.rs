//! The device loop that `stream` and `run` share: frames from a source through the prompt's
//! pipeline (or replayed masks) into the link's queue, the host's prompts taken between frames.
//! The CLI parses flags, loads the models, opens the link and calls [`run`]; tests drive [`run`]
//! directly. Per-frame faults (an unreadable frame, a prompt that does not fit, a model error)
//! become Error messages on the link and the stream goes on.

use anyhow::{Result, bail};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::input::image_io::RgbFrame;
use crate::input::source;
use crate::mask::Mask;
use crate::model::manifest::{Precision, Role};
use crate::output::measure::{self, Spacing, Target};
use crate::pipelines::cine::{Cine, CineOptions};
use crate::pipelines::salip::SalipOptions;
use crate::pipelines::segment::SamSession;
use crate::pipelines::textseg::TextPipeline;
use crate::prompting::autoprompt::Rule;
use crate::prompting::prompt::{BoxPrompt, PointPrompt, Prompt};
use crate::prompting::saliency::Method;
use crate::stream::{DeviceInfo, DeviceLink, LinkSummary, MaskJob};
use crate::timing::Timings;
use crate::wire::message::{ErrorCode, ModelHash, Pipeline, PromptMsg};
use crate::wire::send::MaskMeta;

/// What the loop does, fixed for the run (the CLI's flags or a board profile).
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// The source's spec, reopened for `looping` (`input::source::open` syntax).
    pub source: String,
    /// Frames per second to pace the source at; 0 runs as fast as it can.
    pub fps: f64,
    /// Stop after this many frames.
    pub count: Option<u64>,
    /// Reopen the source at its end until `count`.
    pub looping: bool,
    /// The prompt until the host sends one; `None` waits for the host.
    pub prompt: Option<FramePrompt>,
    /// Measurements for every mask; `None` chooses per frame from the text prompt.
    pub target: Option<Target>,
    /// Pixel spacing overriding the source's (a DICOM's).
    pub spacing: Option<Spacing>,
    pub cine: CineOptions,
}

/// The models the loop runs: `engine` is `None` when the source holds masks (replayed as they
/// are); `lazy_clip` names CLIP's folder and precision when CLIP is loadable but not loaded
/// (a box-prompted device never holds it until the host sends a text prompt).
#[derive(Default)]
pub struct Models {
    pub engine: Option<Engine>,
    pub lazy_clip: Option<(PathBuf, Precision)>,
}

impl Models {
    /// Whether the loop can answer text prompts (CLIP loaded or loadable).
    pub fn text_capable(&self) -> bool {
        matches!(self.engine, Some(Engine::Text(_))) || self.lazy_clip.is_some()
    }

    /// What Hello advertises: the pipelines this device runs and its models' hashes.
    pub fn device_info(&self, board: String, target: Option<Target>) -> DeviceInfo {
        DeviceInfo {
            measures: match target {
                Some(t) => t != Target::None,
                None => self.text_capable(),
            },
            device: format!("sonomask {}", env!("CARGO_PKG_VERSION")),
            board,
            models: self
                .engine
                .as_ref()
                .map(|e| model_hashes(e, self.lazy_clip.as_ref().map(|c| c.1)))
                .unwrap_or_default(),
            pipelines: match &self.engine {
                None => vec![],
                Some(Engine::Sam(_)) if self.lazy_clip.is_none() => vec![Pipeline::Interactive],
                Some(_) => vec![Pipeline::Interactive, Pipeline::MedClipSam, Pipeline::Salip],
            },
        }
    }
}

/// How the loop ended.
#[derive(Debug)]
pub struct Report {
    /// Frames read (including skipped and failed ones).
    pub frames: u32,
    /// Frames skipped while no prompt was known.
    pub waiting_for_prompt: u64,
    /// Set when the loop stopped on a fatal error (the source could not be reopened).
    pub error: Option<anyhow::Error>,
}

/// Runs frames from `frames` (opened from `settings.source`) until the source ends, `count`
/// frames, or `stop` is set (the CLI's SIGTERM/SIGINT flag); masks go to `link`, which the
/// caller starts and finishes (so every way out flushes it).
pub fn run(
    settings: &Settings,
    models: &mut Models,
    frames: &mut Box<dyn source::FrameSource>,
    link: &DeviceLink,
    stop: &AtomicUsize,
) -> Report {
    let &Settings {
        ref source,
        fps,
        count,
        looping,
        prompt: ref cli_prompt,
        target: explicit_target,
        spacing: fixed_spacing,
        cine: cine_options,
    } = settings;
    let session = &mut models.engine;
    let lazy_clip = &mut models.lazy_clip;
    let mut measure_scratch = measure::Scratch::default();
    let started = Instant::now();
    let mut frame_id: u32 = 0;
    let mut skipped = 0u64;
    let mut last_frame = Instant::now();
    let mut rejected_prompt: Option<u16> = None;
    let mut cine = Cine::new(cine_options);
    let mut last_prompt_id: Option<u16> = None;
    let mut last_health = 0u32;
    let mut text_box: TextBox = None;
    let outcome: Result<()> = (|| {
        'frames: loop {
            loop {
                if frame_id > 0 && frame_id.is_multiple_of(HEALTH_EVERY) && frame_id != last_health
                {
                    last_health = frame_id;
                    log_health(frame_id, &link.totals());
                }
                if count.is_some_and(|c| frame_id as u64 >= c) || stop.load(Ordering::Relaxed) != 0
                {
                    break 'frames;
                }
                let read_started = Instant::now();
                let Some(item) = frames.next_frame() else {
                    break;
                };
                let read_ms = read_started.elapsed().as_secs_f64() * 1e3;
                if fps > 0.0 {
                    let due = started + Duration::from_secs_f64(frame_id as f64 / fps);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
                let mut t = Timings::default();
                t.record("read_frame", read_ms);
                let timestamp_us = link.now_us();
                let (frame, label, spacing) = match item {
                    Ok(f) => (
                        f.image,
                        f.label,
                        fixed_spacing.or(f.pixel_spacing_mm.map(measure::Spacing::from_row_col)),
                    ),
                    Err(e) => {
                        log::error!("{e:#}");
                        link.error(ErrorCode::Source, 0, 0, &format!("{e:#}"));
                        frame_id += 1;
                        continue;
                    }
                };
                let meta = |prompt_id, score| MaskMeta {
                    frame_id,
                    timestamp_us,
                    prompt_id,
                    object: 0,
                    score,
                };
                if lazy_clip.is_some()
                    && link.host_prompt().is_some_and(|p| {
                        p.pipeline != Pipeline::Interactive && Some(p.prompt_id) != rejected_prompt
                    })
                    && let Some((models, precision)) = lazy_clip.take()
                {
                    attach_clip(session, &models, precision, &mut t);
                }
                let job = if let Some(session) = session.as_mut() {
                    let host = link
                        .host_prompt()
                        .filter(|p| Some(p.prompt_id) != rejected_prompt);
                    let (prompt_id, prompt) = match (&host, &cli_prompt) {
                        (Some(p), _) => (p.prompt_id, host_to_frame_prompt(p)),
                        (None, Some(p)) => (0, p.clone()),
                        (None, None) => {
                            skipped += 1;
                            if skipped == 1 {
                                log::info!("waiting for a prompt from the host");
                            }
                            frame_id += 1;
                            continue;
                        }
                    };
                    if let Err(e) = prompt.validate(frame.width, frame.height) {
                        let why = format!("{e:#} (frame {}x{})", frame.width, frame.height);
                        match &host {
                            Some(p) => {
                                rejected_prompt = Some(p.prompt_id);
                                link.reject_host_prompt(p, &why);
                            }
                            // The command line's prompt: this frame is skipped and reported,
                            // the stream goes on (a frame of another size may follow).
                            None => {
                                log::error!(
                                    "{label}: the prompt does not fit: {why}; frame skipped"
                                );
                                link.error(
                                    ErrorCode::BadPrompt,
                                    0,
                                    0,
                                    &format!("frame {frame_id} ({label}): {why}"),
                                );
                            }
                        }
                        frame_id += 1;
                        continue;
                    }
                    if last_prompt_id != Some(prompt_id) {
                        // A new prompt: its masks must not be blended with the old prompt's.
                        cine.reset_smoothing();
                        last_prompt_id = Some(prompt_id);
                    }
                    let target = explicit_target.unwrap_or_else(|| match &prompt {
                        FramePrompt::Text { text, .. } => measure::Target::for_text(text),
                        FramePrompt::Sam(_) => measure::Target::None,
                    });
                    match run_prompt(session, &mut cine, &mut text_box, &frame, &prompt, &mut t) {
                        Ok((mask, score)) => {
                            let mut pixels = link.buffer(mask.data.len());
                            pixels.copy_from_slice(&mask.data);
                            let measure = t.stage("measure", || {
                                measure::measure_for(
                                    target,
                                    &mask,
                                    &frame.pixels,
                                    spacing,
                                    &mut measure_scratch,
                                )
                                .map(|m| {
                                    crate::stream::measure_msg(frame_id, 0, target, &m, spacing)
                                })
                            });
                            MaskJob {
                                meta: meta(prompt_id, score),
                                width: mask.width,
                                height: mask.height,
                                pixels,
                                measure,
                            }
                        }
                        Err(e) => {
                            log::error!("frame {frame_id}: {e:#}");
                            link.error(ErrorCode::Model, 0, 0, &format!("{e:#}"));
                            frame_id += 1;
                            continue;
                        }
                    }
                } else {
                    let mut mask = Mask {
                        width: frame.width,
                        height: frame.height,
                        data: link.buffer(frame.pixels.len() / 3),
                    };
                    for (p, rgb) in mask.data.iter_mut().zip(frame.pixels.chunks_exact(3)) {
                        *p = (rgb.iter().copied().max().unwrap_or(0) > 127) as u8;
                    }
                    let target = explicit_target.unwrap_or(measure::Target::None);
                    // The frame is the mask here: no echo to refine on.
                    let measure =
                        measure::measure_for(target, &mask, &[], spacing, &mut measure_scratch)
                            .map(|m| crate::stream::measure_msg(frame_id, 0, target, &m, spacing));
                    let pixels = mask.data;
                    MaskJob {
                        meta: meta(0, f32::NAN),
                        width: frame.width,
                        height: frame.height,
                        pixels,
                        measure,
                    }
                };
                let stages: Vec<(&str, f64)> = t.stages.iter().map(|(n, ms)| (*n, *ms)).collect();
                let dt = last_frame.elapsed().as_secs_f64();
                last_frame = Instant::now();
                link.frame_done(&stages, if dt > 0.0 { 1.0 / dt } else { 0.0 });
                link.submit(job);
                frame_id += 1;
            }
            if !looping || stop.load(Ordering::Relaxed) != 0 {
                break;
            }
            *frames = open_source(source)?;
        }
        Ok(())
    })();
    Report {
        frames: frame_id,
        waiting_for_prompt: skipped,
        error: outcome.err(),
    }
}

/// Opens the frame source. A live feed (`raw:tcp:`, `raw:serial:`) that is not there yet, or
/// went away, is retried every second with one log line, as a serial sink is: a cart boots
/// before its capture service, and the service must not exit (and be restarted) in a loop.
pub fn open_source(spec: &str) -> Result<Box<dyn source::FrameSource>> {
    let live = spec.starts_with("raw:tcp:") || spec.starts_with("raw:serial:");
    let mut logged = false;
    loop {
        match source::open(spec) {
            Ok(s) => {
                if logged {
                    log::info!("source {spec}: up");
                }
                return Ok(s);
            }
            Err(e) if live => {
                if !logged {
                    log::warn!("source {spec}: {e:#}; retrying every second");
                    logged = true;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(e) => return Err(e),
        }
    }
}

pub fn cli_prompt(boxes: &[String], points: &[String]) -> Result<Option<Prompt>> {
    if boxes.len() > 1 {
        bail!("stream takes one --box (one object per frame)");
    }
    let bbox = boxes.first().map(|b| BoxPrompt::parse(b)).transpose()?;
    let points = points
        .iter()
        .map(|p| PointPrompt::parse(p))
        .collect::<Result<Vec<_>>>()?;
    Ok((bbox.is_some() || !points.is_empty()).then_some(Prompt { bbox, points }))
}

/// What the device runs for a frame: SAM with a box/points, or a text pipeline.
#[derive(Clone, Debug)]
pub enum FramePrompt {
    Sam(Prompt),
    Text { pipeline: Pipeline, text: String },
}

impl FramePrompt {
    fn validate(&self, w: u32, h: u32) -> Result<()> {
        match self {
            FramePrompt::Sam(p) => p.validate(w, h),
            FramePrompt::Text { .. } => Ok(()),
        }
    }
}

/// The models: SAM alone, or SAM with CLIP (text pipelines available).
pub enum Engine {
    Sam(Box<SamSession>),
    Text(Box<TextPipeline>),
}

impl Engine {
    pub fn sam(&self) -> &SamSession {
        match self {
            Engine::Sam(s) => s,
            Engine::Text(p) => &p.sam,
        }
    }
}

/// The box MedCLIP-SAM derived for a text, kept while cine mode reuses the embedding.
type TextBox = Option<(String, Prompt)>;

/// One frame through the prompt's pipeline -> (mask, score): SAM's predicted IoU for box/point
/// prompts (cine mode), the box's predicted IoU for MedCLIP-SAM, the retrieved crop's CLIP score
/// for SaLIP. MedCLIP-SAM runs in cine mode too: CLIP saliency and the box are recomputed only
/// for frames that get a new embedding; unchanged frames reuse both (decoder only).
fn run_prompt(
    engine: &mut Engine,
    cine: &mut Cine,
    text_box: &mut TextBox,
    frame: &RgbFrame,
    prompt: &FramePrompt,
    t: &mut Timings,
) -> Result<(Mask, f32)> {
    match (engine, prompt) {
        (Engine::Sam(s), FramePrompt::Sam(p)) => {
            let step = cine.step(s, frame, p, t)?;
            Ok((step.segmentation.mask, step.segmentation.iou))
        }
        (Engine::Text(tp), FramePrompt::Sam(p)) => {
            let step = cine.step(&mut tp.sam, frame, p, t)?;
            Ok((step.segmentation.mask, step.segmentation.iou))
        }
        (Engine::Text(tp), FramePrompt::Text { pipeline, text }) => {
            let emb = t.stage("clip_text", || tp.text.embed(text))?;
            if *pipeline == Pipeline::Salip {
                let r =
                    crate::pipelines::salip::segment(tp, frame, &emb, &SalipOptions::default(), t)?;
                let score = r.chosen.first().map_or(f32::NAN, |&i| r.scores[i]);
                return Ok((r.mask, score));
            }
            let fresh = cine.will_encode(frame, t);
            if fresh || text_box.as_ref().is_none_or(|(s, _)| s != text) {
                // the default rule (v2) gives one union box
                let (_, auto) = tp.auto_prompts(frame, &emb, Method::Similarity, &Rule::V2, t)?;
                let p = auto.prompts.into_iter().next().unwrap_or_default();
                *text_box = Some((text.clone(), p));
            }
            let p = &text_box.as_ref().expect("set above").1;
            let step = cine.step(&mut tp.sam, frame, p, t)?;
            Ok((step.segmentation.mask, step.segmentation.iou))
        }
        (Engine::Sam(_), FramePrompt::Text { .. }) => {
            bail!("text prompts need the CLIP models (not loaded)")
        }
    }
}

/// Loads CLIP into a running SAM-only engine (the first text prompt asked for it), logging how
/// long it took. On failure the engine stays SAM-only and the text frames report the error.
fn attach_clip(slot: &mut Option<Engine>, models: &Path, precision: Precision, t: &mut Timings) {
    let Some(Engine::Sam(sam)) = slot.as_ref() else {
        return;
    };
    let started = Instant::now();
    let clip = t.stage("load_clip", || {
        crate::pipelines::textseg::ClipParts::load(&sam.manifest, models, precision, 8)
    });
    match clip {
        Ok(parts) => {
            // The running SAM session joins the text pipeline: nothing is reloaded.
            if let Some(Engine::Sam(sam)) = slot.take() {
                *slot = Some(Engine::Text(Box::new(TextPipeline::with_clip(*sam, parts))));
            }
            log::info!(
                "CLIP loaded for the first text prompt in {:.0} ms",
                started.elapsed().as_secs_f64() * 1e3
            );
        }
        Err(e) => log::error!("text prompt: cannot load CLIP: {e:#}"),
    }
}

/// A host Prompt (checked by the link against the advertised pipelines).
fn host_to_frame_prompt(p: &PromptMsg) -> FramePrompt {
    match p.pipeline {
        Pipeline::Interactive => FramePrompt::Sam(host_to_prompt(p)),
        pipeline => FramePrompt::Text {
            pipeline,
            text: p.text.to_string(),
        },
    }
}

/// A host Prompt (interactive, with a box or points) as a SAM prompt.
fn host_to_prompt(p: &PromptMsg) -> Prompt {
    Prompt {
        bbox: p.has_box().then_some(BoxPrompt {
            x0: p.bbox.x0 as f32,
            y0: p.bbox.y0 as f32,
            x1: p.bbox.x1 as f32,
            y1: p.bbox.y1 as f32,
        }),
        points: p
            .points
            .iter()
            .map(|q| PointPrompt {
                x: q.x as f32,
                y: q.y as f32,
                foreground: q.foreground,
            })
            .collect(),
    }
}

/// The models Hello names: SAM's, and CLIP's when loaded or loadable on demand (`lazy_clip`).
pub fn model_hashes(e: &Engine, lazy_clip: Option<Precision>) -> Vec<ModelHash> {
    let mut out = Vec::new();
    let s = e.sam();
    let mut roles = vec![
        (Role::SamEncoder, 0u8, s.precision),
        (Role::SamDecoder, 1u8, s.decoder_precision),
    ];
    let clip = match e {
        Engine::Text(tp) => Some(tp.clip_precision),
        Engine::Sam(_) => lazy_clip,
    };
    if let Some(p) = clip {
        roles.push((Role::ClipImage, 2, p));
        roles.push((Role::ClipText, 3, p));
    }
    for (role, code, precision) in roles {
        if let Ok(e) = s.manifest.entry(role, precision) {
            let mut sha256 = [0u8; 32];
            if hex_to_bytes(&e.sha256, &mut sha256) {
                out.push(ModelHash {
                    role: code,
                    precision: (precision == Precision::Int8) as u8,
                    sha256,
                });
            }
        }
    }
    out
}

fn hex_to_bytes(hex: &str, out: &mut [u8; 32]) -> bool {
    if hex.len() != 64 {
        return false;
    }
    for (i, o) in out.iter_mut().enumerate() {
        match u8::from_str_radix(&hex[2 * i..2 * i + 2], 16) {
            Ok(v) => *o = v,
            Err(_) => return false,
        }
    }
    true
}

/// Frames between two heartbeats (`sonomask::health` at info).
const HEALTH_EVERY: u32 = 100;

/// The device's heartbeat: one `key=value` line a service log (journald) keeps and a soak
/// test parses. Resident memory shows a leak long before the board runs out; `pool_kb` is the
/// part of it the tensors' pool holds (src/heap.rs).
fn log_health(frames: u32, t: &LinkSummary) {
    let rss = crate::heap::resident_kb().map_or_else(|| "unknown".into(), |k| k.to_string());
    log::info!(
        target: "sonomask::health",
        "health frames={frames} rss_kb={rss} pool_kb={} queued={} sent={} queue_drops={} reconnects={} errors={}",
        crate::heap::pool_stats().mapped >> 10,
        t.masks_queued,
        t.masks_sent,
        t.queue_drops,
        t.reconnects,
        t.errors
    );
}
