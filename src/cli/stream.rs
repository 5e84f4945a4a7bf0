//! `sonomask stream`: the device side. Frames from a source go through the pipeline (or are
//! replayed masks), masks go out over a link, prompts come back from the host.

use anyhow::{Context, Result, bail};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::args;
use super::common::ModelOptions;
use super::flags::StreamArgs;
use crate::link::Endpoint;
use crate::output::measure::{Spacing, Target, parse_pixel_size};
use crate::pipelines::cine::CineOptions;
use crate::pipelines::device::{self, Engine, FramePrompt, cli_prompt, open_source};
use crate::stream::{DeviceLink, LinkOptions};
use crate::wire::message::Pipeline;

pub fn run(a: StreamArgs) -> Result<()> {
    if !a.positional.is_empty() {
        bail!(
            "unexpected argument '{}'\n\n{}",
            a.positional[0],
            super::usage::<StreamArgs>()
        );
    }
    a.source
        .as_deref()
        .context("stream needs --source IMAGE|DIR|CINE.dcm|raw:SRC")?;
    let sink = Endpoint::parse(
        a.sink.as_deref().context("stream needs --sink ENDPOINT")?,
        false,
    )?;
    let source_spec = a.source.as_deref().unwrap_or_default().to_string();
    // Open now so a bad source fails before the link and the models are set up; a live feed
    // that is not up yet is waited for.
    let mut frames = open_source(&source_spec)?;
    let fps: f64 = args::parse_or("fps", a.fps.as_deref(), 0.0)?;
    if !(fps >= 0.0 && fps.is_finite()) {
        bail!("--fps must be a positive number");
    }
    let count: Option<u64> = a
        .count
        .as_deref()
        .map(|_| args::parse_or("count", a.count.as_deref(), 0u64))
        .transpose()?;
    let looping = a.looping;
    let queue: usize = args::parse_or("queue", a.queue.as_deref(), 2)?;
    if queue == 0 {
        bail!("--queue must be at least 1");
    }
    let replay = a.masks;
    let cli_prompt = cli_prompt(a.boxes.as_slice(), a.point.as_slice())?;
    if replay && (cli_prompt.is_some() || a.text.as_deref().is_some()) {
        bail!("--masks streams masks as they are: --box/--point/--text do not apply");
    }
    let cli_text: Option<(Pipeline, String)> = match a.text.as_deref() {
        None => None,
        Some(_) if cli_prompt.is_some() => bail!("give --text or --box/--point, not both"),
        Some(t) if t.trim().is_empty() => bail!("empty text prompt"),
        Some(t) => Some((
            match a.pipeline.as_deref().unwrap_or("medclip-sam") {
                "medclip-sam" => Pipeline::MedClipSam,
                "salip" => Pipeline::Salip,
                p => bail!("--pipeline '{p}': expected medclip-sam or salip"),
            },
            t.to_string(),
        )),
    };
    if cli_text.is_some() && a.no_text {
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
    let mut models = device::Models::default();
    if !replay {
        let opts = ModelOptions::from_args(&a.model)?;
        let manifest = crate::model::Manifest::load(&opts.models)?;
        let has_clip = manifest.clip.is_some();
        let wants_text = matches!(cli_prompt, Some(FramePrompt::Text { .. }));
        if wants_text && (!has_clip || a.no_text) {
            bail!(
                "--text needs CLIP models, and {} has none{}",
                opts.models.display(),
                if a.no_text { " loaded (--no-text)" } else { "" }
            );
        }
        models.engine = Some(if wants_text {
            let p = opts
                .load_text_pipeline(opts.precision, 8)
                .context("--text needs the CLIP models")?;
            Engine::Text(Box::new(p))
        } else {
            if has_clip && !a.no_text {
                // The vocabulary is the one CLIP file not checked with the models at load.
                match crate::model::clip::vocab_path(&manifest) {
                    Ok(v) if v.is_file() => {
                        models.lazy_clip = Some((opts.models.clone(), opts.precision))
                    }
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
        });
    }
    // An explicit --measure (or the board's) wins; otherwise each frame's text prompt (the
    // command line's or the host's) chooses: a head gets HC, a lesion calipers.
    let explicit_target = a.measure.as_deref().map(Target::parse).transpose()?;
    let fixed_spacing = match a.pixel_size.as_deref() {
        Some(v) => Some(Spacing::isotropic(parse_pixel_size(v)?)),
        None => None,
    };
    if let Some(t) = explicit_target {
        log::info!("measuring each mask: {}", t.as_str());
    }
    let cine = if a.cine.no_reuse {
        CineOptions {
            threshold: 0.0,
            max_reuse: 0,
            ..CineOptions::default()
        }
    } else {
        let threshold: f32 = args::parse_or(
            "cine-threshold",
            a.cine.cine_threshold.as_deref(),
            CineOptions::default().threshold,
        )?;
        if !(0.0..=1.0).contains(&threshold) {
            bail!("--cine-threshold must be between 0 and 1");
        }
        CineOptions {
            threshold,
            max_reuse: args::parse_or(
                "reencode-every",
                a.cine.reencode_every.as_deref(),
                CineOptions::default().max_reuse,
            )?,
            ..CineOptions::default()
        }
    };
    let settings = device::Settings {
        source: source_spec,
        fps,
        count,
        looping,
        prompt: cli_prompt,
        target: explicit_target,
        spacing: fixed_spacing,
        cine,
    };
    let board = a.board.as_deref().map(str::to_string).unwrap_or_else(|| {
        crate::cpu::board_model().unwrap_or_else(|| std::env::consts::ARCH.to_string())
    });
    let info = models.device_info(board, explicit_target);
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

    // SIGTERM (systemd's stop) and SIGINT end the loop between frames; the queue and a final
    // Status are flushed below on every way out.
    let signal = Arc::new(AtomicUsize::new(0));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register_usize(sig, signal.clone(), sig as usize)
            .context("cannot install the SIGTERM/SIGINT handler")?;
    }
    let started = Instant::now();
    let report = device::run(&settings, &mut models, &mut frames, &link, &signal);
    if let Some(e) = &report.error {
        log::error!("stopping: {e:#}");
    }
    // Every way out flushes: end of source, a signal, a fatal error.
    let summary = link
        .finish(Duration::from_secs(5))
        .with_context(|| format!("link {link_name}"))?;
    let j = serde_json::json!({
        "type": "summary",
        "frames": report.frames,
        "frames_waiting_for_prompt": report.waiting_for_prompt,
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
            0 if report.error.is_some() => "error",
            0 => "end of source",
            s if s == signal_hook::consts::SIGTERM as usize => "SIGTERM",
            _ => "SIGINT",
        },
    });
    eprintln!("{j}");
    if let Some(e) = report.error {
        return Err(e);
    }
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
