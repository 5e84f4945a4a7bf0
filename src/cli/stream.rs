//! `sonomask stream`: the device side. Frames from a source go through the pipeline (or are
//! replayed masks), masks go out over a link, prompts come back from the host.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::args;
use super::common::ModelOptions;
use crate::autoprompt::Rule;
use crate::cine::{Cine, CineOptions};
use crate::link::Endpoint;
use crate::model::manifest::{Precision, Role};
use crate::prompt::{BoxPrompt, PointPrompt, Prompt};
use crate::saliency::Method;
use crate::salip::SalipOptions;
use crate::segment::SamSession;
use crate::source;
use crate::stream::{DeviceInfo, DeviceLink, LinkOptions, MaskJob};
use crate::textseg::TextPipeline;
use crate::timing::Timings;
use crate::wire::message::{ErrorCode, ModelHash, Pipeline, PromptMsg};
use crate::wire::send::MaskMeta;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

pub const USAGE: &str = "\
sonomask stream --source IMAGE|DIR|CINE.dcm|raw:SRC --sink ENDPOINT [--box x0,y0,x1,y1]
                [--point x,y[,label]]... [--masks] [--fps F] [--loop] [--count N] [--queue K]
                [--text T [--pipeline medclip-sam|salip]] [--no-text] [--no-reuse] [--board NAME]
                [--models DIR] [--precision fp32|int8|auto] [--threads N]

  Device side of the link (protocol: docs/PROTOCOL.md). Each frame of the source (an image, a
  directory of PNG/JPEG/DICOM in natural order, a DICOM cine, or a raw frame stream raw:-,
  raw:FILE, raw:tcp:HOST:PORT, raw:serial:PATH[@BAUD]) is segmented with MobileSAM in cine mode
  (the encoder re-runs only when the picture changed; --no-reuse runs it on every frame) and its
  mask sent to the sink; the host can replace the prompt at any time with a Prompt message.
  ENDPOINT      serial:PATH[@BAUD] (UART, USB CDC-ACM; default 921600 baud), tcp:HOST:PORT
                (connects to `sonomask listen tcp:...`), stdout, or file:PATH
  --box/--point the prompt until the host sends one; without either, frames wait for a host
                prompt (needs a two-way link)
  --text T      a text prompt instead (MedCLIP-SAM, or SaLIP with --pipeline salip); host Prompts
                may also carry text. MedCLIP-SAM runs in cine mode: CLIP saliency and its box are
                recomputed only with a new embedding; SaLIP runs whole on every frame. Available
                when the models include CLIP; --no-text skips loading CLIP (less memory)
  --masks       the source holds masks (nonzero = foreground): send them as they are, no models
  --fps F       pace the source at F frames per second (default: as fast as it runs)
  --loop        repeat the source until --count frames
  --count N     stop after N frames
  --queue K     masks waiting for the link before the oldest is dropped (default 2)
  --cine-threshold F, --reencode-every N  cine settings (see segment --help)
  --decoder-precision P                   the decoder's precision when it differs
  --measure hc|lesion|none  send each mask's biometry as a Measure message after it
                (docs/BIOMETRY.md, docs/PROTOCOL.md 5.8); default: from the text prompt (a head
                gets hc, a lesion/tumour/mass/nodule/cyst lesion), else none
  --pixel-size MM  pixel size in mm for the measurements; overrides a DICOM's spacing
  Serial and TCP links that fail are reopened every 250 ms; masks produced meanwhile are
  dropped and counted in Status. A summary goes to stderr.";

pub fn run(argv: &[String]) -> Result<()> {
    let a = args::parse(
        argv,
        &[
            "source",
            "sink",
            "box",
            "point",
            "fps",
            "count",
            "queue",
            "board",
            "models",
            "precision",
            "threads",
            "measure",
            "pixel-size",
            "decoder-precision",
            "cine-threshold",
            "reencode-every",
            "text",
            "pipeline",
        ],
        &["masks", "loop", "help", "no-reuse", "no-text"],
    )?;
    if a.has("help") {
        println!("{USAGE}");
        return Ok(());
    }
    if !a.positional.is_empty() {
        bail!("unexpected argument '{}'\n\n{USAGE}", a.positional[0]);
    }
    a.get("source")
        .context("stream needs --source IMAGE|DIR|CINE.dcm|raw:SRC")?;
    let sink = Endpoint::parse(
        a.get("sink").context("stream needs --sink ENDPOINT")?,
        false,
    )?;
    let source_spec = a.get("source").unwrap_or_default().to_string();
    // Open now so a bad source fails before the link and the models are set up; a live feed
    // that is not up yet is waited for.
    let mut frames = open_source(&source_spec)?;
    let fps: f64 = a.parse_or("fps", 0.0)?;
    if !(fps >= 0.0 && fps.is_finite()) {
        bail!("--fps must be a positive number");
    }
    let count: Option<u64> = a
        .get("count")
        .map(|_| a.parse_or("count", 0u64))
        .transpose()?;
    let looping = a.has("loop");
    let queue: usize = a.parse_or("queue", 2)?;
    if queue == 0 {
        bail!("--queue must be at least 1");
    }
    let replay = a.has("masks");
    let cli_prompt = cli_prompt(a.all("box"), a.all("point"))?;
    if replay && (cli_prompt.is_some() || a.get("text").is_some()) {
        bail!("--masks streams masks as they are: --box/--point/--text do not apply");
    }
    let cli_text: Option<(Pipeline, String)> = match a.get("text") {
        None => None,
        Some(_) if cli_prompt.is_some() => bail!("give --text or --box/--point, not both"),
        Some(t) if t.trim().is_empty() => bail!("empty text prompt"),
        Some(t) => Some((
            match a.get("pipeline").unwrap_or("medclip-sam") {
                "medclip-sam" => Pipeline::MedClipSam,
                "salip" => Pipeline::Salip,
                p => bail!("--pipeline '{p}': expected medclip-sam or salip"),
            },
            t.to_string(),
        )),
    };
    if cli_text.is_some() && a.has("no-text") {
        bail!("--text needs the CLIP models: drop --no-text");
    }
    let cli_prompt: Option<FramePrompt> = match (cli_prompt, cli_text) {
        (Some(p), _) => Some(FramePrompt::Sam(p)),
        (None, Some((pipeline, text))) => Some(FramePrompt::Text { pipeline, text }),
        (None, None) => None,
    };
    let two_way = matches!(sink, Endpoint::Serial { .. } | Endpoint::Tcp(_));
    if !replay && cli_prompt.is_none() && !two_way {
        bail!(
            "no prompt: give --box/--point, or use a two-way sink (serial, tcp) so the host can send one"
        );
    }

    // CLIP is loaded with the models only for a text prompt on the command line; otherwise on
    // the first text Prompt from the host (`lazy_clip`), so a box-prompted device never holds it.
    let mut lazy_clip: Option<(PathBuf, Precision)> = None;
    let mut session = if replay {
        None
    } else {
        let opts = ModelOptions::from_args(&a)?;
        let manifest = crate::model::Manifest::load(&opts.models)?;
        let has_clip = manifest.clip.is_some();
        let wants_text = matches!(cli_prompt, Some(FramePrompt::Text { .. }));
        if wants_text && (!has_clip || a.has("no-text")) {
            bail!(
                "--text needs CLIP models, and {} has none{}",
                opts.models.display(),
                if a.has("no-text") {
                    " loaded (--no-text)"
                } else {
                    ""
                }
            );
        }
        Some(if wants_text {
            let p = TextPipeline::load(
                &opts.models,
                opts.precision,
                opts.decoder(),
                opts.precision,
                8,
            )
            .context("--text needs the CLIP models")?;
            Engine::Text(Box::new(p))
        } else {
            if has_clip && !a.has("no-text") {
                // The vocabulary is the one CLIP file not checked with the models at load.
                match crate::model::clip::vocab_path(&manifest) {
                    Ok(v) if v.is_file() => lazy_clip = Some((opts.models.clone(), opts.precision)),
                    Ok(v) => log::warn!(
                        "text pipelines unavailable (no CLIP vocabulary at {}; quantize/build_models.sh puts it beside the models, or set SONOMASK_CLIP_VOCAB); box/point prompts only",
                        v.display()
                    ),
                    Err(e) => {
                        log::warn!("text pipelines unavailable ({e:#}); box/point prompts only")
                    }
                }
            }
            Engine::Sam(Box::new(opts.load_session()?))
        })
    };
    // An explicit --measure (or the board's) wins; otherwise each frame's text prompt (the
    // command line's or the host's) chooses: a head gets HC, a lesion calipers.
    let explicit_target = a
        .get("measure")
        .map(crate::measure::Target::parse)
        .transpose()?;
    let fixed_spacing = match a.get("pixel-size") {
        Some(v) => Some(crate::measure::Spacing::isotropic(
            crate::measure::parse_pixel_size(v)?,
        )),
        None => None,
    };
    let mut measure_scratch = crate::measure::Scratch::default();
    if let Some(t) = explicit_target {
        log::info!("measuring each mask: {}", t.as_str());
    }
    let text_capable = matches!(session, Some(Engine::Text(_))) || lazy_clip.is_some();
    let info = DeviceInfo {
        measures: match explicit_target {
            Some(t) => t != crate::measure::Target::None,
            None => text_capable,
        },
        device: format!("sonomask {}", env!("CARGO_PKG_VERSION")),
        board: a.get("board").map(str::to_string).unwrap_or_else(|| {
            crate::cpu::board_model().unwrap_or_else(|| std::env::consts::ARCH.to_string())
        }),
        models: session
            .as_ref()
            .map(|e| model_hashes(e, lazy_clip.as_ref().map(|c| c.1)))
            .unwrap_or_default(),
        pipelines: match &session {
            None => vec![],
            Some(Engine::Sam(_)) if lazy_clip.is_none() => vec![Pipeline::Interactive],
            Some(_) => {
                vec![Pipeline::Interactive, Pipeline::MedClipSam, Pipeline::Salip]
            }
        },
    };
    let transport = sink.device_transport()?;
    let link_name = transport.describe();
    let link = DeviceLink::start(
        transport,
        info,
        LinkOptions {
            queue,
            ..LinkOptions::default()
        },
    )
    .with_context(|| format!("cannot open {link_name}"))?;

    let started = Instant::now();
    let mut frame_id: u32 = 0;
    let mut skipped = 0u64;
    let mut last_frame = Instant::now();
    let mut rejected_prompt: Option<u16> = None;
    let mut cine = Cine::new(if a.has("no-reuse") {
        CineOptions {
            threshold: 0.0,
            max_reuse: 0,
            ..CineOptions::default()
        }
    } else {
        let threshold: f32 = a.parse_or("cine-threshold", CineOptions::default().threshold)?;
        if !(0.0..=1.0).contains(&threshold) {
            bail!("--cine-threshold must be between 0 and 1");
        }
        CineOptions {
            threshold,
            max_reuse: a.parse_or("reencode-every", CineOptions::default().max_reuse)?,
            ..CineOptions::default()
        }
    });
    let mut last_prompt_id: Option<u16> = None;
    let mut last_health = 0u32;
    let mut text_box: TextBox = None;
    // SIGTERM (systemd's stop) and SIGINT end the loop between frames; the queue and a final
    // Status are flushed below on every way out.
    let signal = Arc::new(AtomicUsize::new(0));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register_usize(sig, signal.clone(), sig as usize)
            .context("cannot install the SIGTERM/SIGINT handler")?;
    }
    let outcome: Result<()> = (|| {
        'frames: loop {
            loop {
                if frame_id > 0 && frame_id.is_multiple_of(HEALTH_EVERY) && frame_id != last_health
                {
                    last_health = frame_id;
                    log_health(frame_id, &link.totals());
                }
                if count.is_some_and(|c| frame_id as u64 >= c)
                    || signal.load(Ordering::Relaxed) != 0
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
                        fixed_spacing.or(f
                            .pixel_spacing_mm
                            .map(crate::measure::Spacing::from_row_col)),
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
                    attach_clip(&mut session, &models, precision, &mut t);
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
                        FramePrompt::Text { text, .. } => crate::measure::Target::for_text(text),
                        FramePrompt::Sam(_) => crate::measure::Target::None,
                    });
                    match run_prompt(session, &mut cine, &mut text_box, &frame, &prompt, &mut t) {
                        Ok((mask, score)) => {
                            let mut pixels = link.buffer(mask.data.len());
                            pixels.copy_from_slice(&mask.data);
                            let measure = t.stage("measure", || {
                                crate::measure::measure_for(
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
                    let mut mask = crate::mask::Mask {
                        width: frame.width,
                        height: frame.height,
                        data: link.buffer(frame.pixels.len() / 3),
                    };
                    for (p, rgb) in mask.data.iter_mut().zip(frame.pixels.chunks_exact(3)) {
                        *p = (rgb.iter().copied().max().unwrap_or(0) > 127) as u8;
                    }
                    let target = explicit_target.unwrap_or(crate::measure::Target::None);
                    // The frame is the mask here: no echo to refine on.
                    let measure = crate::measure::measure_for(
                        target,
                        &mask,
                        &[],
                        spacing,
                        &mut measure_scratch,
                    )
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
            if !looping || signal.load(Ordering::Relaxed) != 0 {
                break;
            }
            frames = open_source(&source_spec)?;
        }
        Ok(())
    })();
    if let Err(e) = &outcome {
        log::error!("stopping: {e:#}");
    }
    // Every way out flushes: end of source, a signal, a fatal error.
    let summary = link
        .finish(Duration::from_secs(5))
        .with_context(|| format!("link {link_name}"))?;
    let j = serde_json::json!({
        "type": "summary",
        "frames": frame_id,
        "frames_waiting_for_prompt": skipped,
        "masks_queued": summary.masks_queued,
        "masks_sent": summary.masks_sent,
        "queue_drops": summary.queue_drops,
        "reconnects": summary.reconnects,
        "errors": summary.errors,
        "rss_kb": crate::heap::resident_kb(),
        "prompts_received": summary.prompts_received,
        "wire_bytes": summary.wire_bytes,
        "seconds": started.elapsed().as_secs_f64(),
        "stopped_by": match signal.load(Ordering::Relaxed) {
            0 if outcome.is_err() => "error",
            0 => "end of source",
            s if s == signal_hook::consts::SIGTERM as usize => "SIGTERM",
            _ => "SIGINT",
        },
    });
    eprintln!("{j}");
    outcome?;
    if !summary.ever_connected {
        bail!(
            "{link_name} never opened ({}); {} mask(s) dropped",
            summary
                .last_open_error
                .as_deref()
                .unwrap_or("no attempt finished"),
            summary.queue_drops
        );
    }
    match signal.load(Ordering::Relaxed) {
        0 => Ok(()),
        sig => Err(super::Exit {
            code: 128 + sig as i32,
            message: format!(
                "stopped by {} after flushing {} mask(s)",
                if sig == signal_hook::consts::SIGTERM as usize {
                    "SIGTERM"
                } else {
                    "SIGINT"
                },
                summary.masks_sent
            ),
        }
        .into()),
    }
}

/// Opens the frame source. A live feed (`raw:tcp:`, `raw:serial:`) that is not there yet, or
/// went away, is retried every second with one log line, as a serial sink is: a cart boots
/// before its capture service, and the service must not exit (and be restarted) in a loop.
fn open_source(spec: &str) -> Result<Box<dyn source::FrameSource>> {
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

fn cli_prompt(boxes: &[String], points: &[String]) -> Result<Option<Prompt>> {
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
enum FramePrompt {
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
enum Engine {
    Sam(Box<SamSession>),
    Text(Box<TextPipeline>),
}

impl Engine {
    fn sam(&self) -> &SamSession {
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
    frame: &crate::image_io::RgbFrame,
    prompt: &FramePrompt,
    t: &mut Timings,
) -> Result<(crate::mask::Mask, f32)> {
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
                let r = crate::salip::segment(tp, frame, &emb, &SalipOptions::default(), t)?;
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
        crate::textseg::ClipParts::load(&sam.manifest, models, precision, 8)
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
fn model_hashes(e: &Engine, lazy_clip: Option<Precision>) -> Vec<ModelHash> {
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
fn log_health(frames: u32, t: &crate::stream::LinkSummary) {
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
