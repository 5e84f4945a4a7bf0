//! `sonomask listen`: the host side. Reads a device's stream (live or recorded), writes every
//! verified mask as a PNG and one JSON line per message or event, and can send a Prompt.

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::args;
use super::common;
use super::flags::ListenArgs;
use crate::link::{Endpoint, Received, Receiver, is_idle};
use crate::wire::frame::{MAX_PAYLOAD, VERSION};
use crate::wire::message::{
    ErrorCode, Hello, MaskHeader, Message, Pipeline, Point, PromptMsg, Rect, bounded_str,
    prompt_flags,
};
use crate::wire::send::Sender;

pub fn run(a: ListenArgs) -> Result<()> {
    let [endpoint] = a.endpoint.as_slice() else {
        bail!(
            "listen needs exactly one ENDPOINT\n\n{}",
            super::usage::<ListenArgs>()
        );
    };
    let endpoint = Endpoint::parse(endpoint, true)?;
    let out = PathBuf::from(a.out.as_deref().context("listen needs --out DIR")?);
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let count: Option<u64> = a
        .count
        .as_deref()
        .map(|_| args::parse_or("count", a.count.as_deref(), 0u64))
        .transpose()?;
    let timeout: Option<f64> = a
        .timeout
        .as_deref()
        .map(|_| args::parse_or("timeout", a.timeout.as_deref(), 0.0))
        .transpose()?;
    let idle: Option<Duration> = a
        .idle
        .as_deref()
        .map(|_| {
            args::parse_or("idle", a.idle.as_deref(), 0.0)
                .map(|s: f64| Duration::from_secs_f64(s.max(0.0)))
        })
        .transpose()?;
    let mut last_byte: Option<Instant> = None;
    let prompt = prompt_from_args(&a)?;
    let deadline = timeout.map(|s| Instant::now() + Duration::from_secs_f64(s.max(0.0)));

    let mut transport = endpoint.host_transport()?;
    let name = transport.describe();
    let jsonl = File::create(out.join("messages.jsonl")).context("cannot create messages.jsonl")?;
    let mut log = JsonLog {
        file: std::io::BufWriter::new(jsonl),
        quiet: a.quiet,
    };
    let mut rx = Receiver::new();
    let mut tx = Sender::new();
    let mut masks = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    let mut opened_once = false;
    let mut warned = false;
    'outer: loop {
        if deadline.is_some_and(|d| Instant::now() >= d) || count.is_some_and(|c| masks >= c) {
            break;
        }
        let conn = match transport.open() {
            Ok(c) => c,
            Err(e) => {
                if !transport.reconnects() {
                    if opened_once {
                        break;
                    }
                    return Err(e).with_context(|| format!("cannot open {name}"));
                }
                if !warned {
                    log::warn!("{name}: {e}; retrying");
                    warned = true;
                }
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        opened_once = true;
        warned = false;
        rx.link_reset();
        log.line(json!({"type": "link", "state": "open", "endpoint": name}))?;
        let Some(mut reader) = conn.reader else {
            bail!("{name} cannot be read")
        };
        let mut writer = conn.writer;
        if let Some(w) = writer.as_mut() {
            let mut r = w.write_all(&[0]).map_err(|e| e.to_string());
            let mut msgs = vec![Message::Hello(host_hello())];
            msgs.extend(prompt.clone().map(Message::Prompt));
            for m in &msgs {
                r = r.and_then(|_| {
                    tx.message(m, |b| w.write_all(b))
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                });
            }
            if let Err(e) = r.and_then(|_| w.flush().map_err(|e| e.to_string())) {
                log::warn!("{name}: cannot send to the device: {e}");
            }
        }
        loop {
            if deadline.is_some_and(|d| Instant::now() >= d) || count.is_some_and(|c| masks >= c) {
                break 'outer;
            }
            if let (Some(idle), Some(t)) = (idle, last_byte)
                && t.elapsed() >= idle
            {
                break 'outer;
            }
            match reader.read(&mut buf) {
                Ok(0) => {
                    log.line(json!({"type": "link", "state": "closed", "endpoint": name}))?;
                    if !transport.reconnects() {
                        break 'outer;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                    break;
                }
                Ok(n) => {
                    last_byte = Some(Instant::now());
                    let mut err = Ok(());
                    rx.push(&buf[..n], |ev| {
                        if err.is_ok() {
                            err = handle(ev, &out, &mut log, &mut masks);
                        }
                    });
                    err?;
                }
                Err(e) if is_idle(&e) => {}
                Err(e) => {
                    log.line(json!({"type": "link", "state": "error", "endpoint": name, "error": e.to_string()}))?;
                    if !transport.reconnects() {
                        break 'outer;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                    break;
                }
            }
        }
    }
    let s = rx.stats;
    log.line(json!({
        "type": "summary",
        "masks": s.masks,
        "masks_dropped": s.masks_dropped,
        "frames": s.frames,
        "frame_errors": s.frame_errors,
        "parse_errors": s.parse_errors,
        "version_errors": s.version_errors,
        "lost_frames": s.lost_frames,
        "bytes": s.bytes,
    }))?;
    log.file.flush()?;
    if let Some(c) = count
        && masks < c
    {
        bail!("received {masks} of {c} masks from {name} before the stream ended or timed out");
    }
    Ok(())
}

struct JsonLog {
    file: std::io::BufWriter<File>,
    quiet: bool,
}

impl JsonLog {
    /// One message per line, flushed: a tail -f, a supervisor or a killed listener sees every
    /// line it wrote (and a test can wait for `link open` instead of sleeping).
    fn line(&mut self, v: Value) -> Result<()> {
        writeln!(self.file, "{v}")?;
        self.file.flush()?;
        if !self.quiet {
            println!("{v}");
        }
        Ok(())
    }
}

fn handle(ev: Received<'_>, out: &Path, log: &mut JsonLog, masks: &mut u64) -> Result<()> {
    let v = match ev {
        Received::Mask { header, pixels } => {
            let file = out.join(format!("mask_{:06}_{}.png", header.frame_id, header.object));
            let gray: Vec<u8> = pixels.iter().map(|&p| p * 255).collect();
            common::save_gray(&file, header.width as u32, header.height as u32, &gray)?;
            *masks += 1;
            mask_json(&header, &file)
        }
        Received::Message { seq, msg } => message_json(seq, &msg),
        Received::FrameError(e) => json!({"type": "frame_error", "error": e.to_string()}),
        Received::ParseError {
            seq,
            msg_type,
            error,
        } => {
            json!({"type": "parse_error", "seq": seq, "msg_type": msg_type, "error": error.to_string()})
        }
        Received::Version { seq, version } => {
            json!({"type": "version_error", "seq": seq, "version": version})
        }
        Received::Lost { frames } => json!({"type": "lost", "frames": frames}),
        Received::MaskDropped(r) => json!({"type": "mask_dropped", "reason": r.to_string()}),
    };
    log.line(v)
}

fn mask_json(h: &MaskHeader, file: &Path) -> Value {
    json!({
        "type": "mask",
        "frame_id": h.frame_id,
        "timestamp_us": h.timestamp_us,
        "prompt_id": h.prompt_id,
        "object": h.object,
        "width": h.width,
        "height": h.height,
        "encoding": h.encoding.name(),
        "bbox": [h.bbox.x0, h.bbox.y0, h.bbox.x1, h.bbox.y1],
        "area": h.area,
        "score": if h.score.is_finite() { json!(h.score) } else { Value::Null },
        "data_bytes": h.data_len,
        "chunks": h.chunk_count,
        "file": file,
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn message_json(seq: u16, m: &Message<'_>) -> Value {
    match m {
        Message::Hello(h) => json!({
            "type": "hello", "seq": seq, "versions": [h.min_version, h.max_version],
            "session_id": h.session_id, "capabilities": h.capabilities, "max_payload": h.max_payload,
            "device": h.device.as_str(), "board": h.board.as_str(),
            "models": h.models.iter().map(|m| json!({"role": m.role, "precision": m.precision, "sha256": hex(&m.sha256)})).collect::<Vec<_>>(),
        }),
        Message::Status(s) => json!({
            "type": "status", "seq": seq, "frames_in": s.frames_in, "masks_sent": s.masks_sent,
            "queue_drops": s.queue_drops, "errors": s.errors, "reconnects": s.reconnects,
            "fps": s.fps_centi as f64 / 100.0, "last_error": ErrorCode::name(s.last_error),
            "stages_us": s.stages.iter().map(|st| (st.name.to_string(), json!(st.micros))).collect::<serde_json::Map<_, _>>(),
        }),
        Message::Ack(a) => {
            json!({"type": "ack", "seq": seq, "acked_seq": a.seq, "acked_type": a.msg_type, "ref_id": a.ref_id})
        }
        Message::Error(e) => json!({
            "type": "error", "seq": seq, "code": e.code, "name": ErrorCode::name(e.code),
            "ref_seq": e.ref_seq, "ref_type": e.ref_type, "message": e.message.as_str(),
        }),
        Message::Prompt(p) => {
            json!({"type": "prompt", "seq": seq, "prompt_id": p.prompt_id, "pipeline": p.pipeline.name()})
        }
        Message::Measure(m) => measure_json(seq, m),
        Message::Mask(h, _) => json!({"type": "mask_frame", "seq": seq, "frame_id": h.frame_id}),
        Message::MaskData(h, _) => json!({"type": "mask_data", "seq": seq, "frame_id": h.frame_id}),
    }
}

/// A Measure as a JSON line; NaN (absent) values are null.
fn measure_json(seq: u16, m: &crate::wire::message::MeasureMsg) -> Value {
    use crate::wire::message::measure_flags;
    let v = |x: f32| if x.is_finite() { json!(x) } else { Value::Null };
    let caliper = |c: &crate::wire::message::WireCaliper| json!({"length": v(c.length), "from_px": [v(c.x0), v(c.y0)], "to_px": [v(c.x1), v(c.y1)]});
    json!({
        "type": "measure", "seq": seq, "frame_id": m.frame_id, "object": m.object,
        "target": match m.target { 1 => "hc", _ => "lesion" },
        "unit": if m.unit == 1 { "mm" } else { "px" },
        "area": v(m.area), "perimeter": v(m.perimeter), "hc": v(m.hc),
        "hc_source": m.hc.is_finite().then_some(if m.flags & measure_flags::HC_ON_SKULL != 0 { "skull outer border" } else { "mask ellipse" }),
        "ellipse": (m.flags & measure_flags::ELLIPSE != 0).then(|| json!({
            "cx_px": v(m.ellipse[0]), "cy_px": v(m.ellipse[1]), "semi_major": v(m.ellipse[2]),
            "semi_minor": v(m.ellipse[3]), "angle_deg": v(m.ellipse[4]),
        })),
        "long_axis": caliper(&m.long_axis),
        "short_axis": caliper(&m.short_axis),
        "pixel_spacing_mm": if m.spacing_mm[0].is_finite() { json!([m.spacing_mm[0], m.spacing_mm[1]]) } else { Value::Null },
    })
}

fn host_hello() -> Hello {
    let device = bounded_str("sonomask-listen");
    Hello {
        min_version: VERSION,
        max_version: VERSION,
        session_id: std::process::id() | 1,
        capabilities: 0,
        max_payload: MAX_PAYLOAD as u16,
        device,
        board: heapless::String::new(),
        models: heapless::Vec::new(),
    }
}

fn prompt_from_args(a: &ListenArgs) -> Result<Option<PromptMsg>> {
    let pipeline = match a.pipeline.as_deref().unwrap_or("interactive") {
        "interactive" => Pipeline::Interactive,
        "medclip-sam" => Pipeline::MedClipSam,
        "salip" => Pipeline::Salip,
        p => bail!("unknown pipeline '{p}' (interactive, medclip-sam or salip)"),
    };
    let mut p = PromptMsg {
        prompt_id: 1,
        pipeline,
        flags: 0,
        bbox: Rect::default(),
        points: heapless::Vec::new(),
        text: heapless::String::new(),
    };
    if a.clear {
        p.flags |= prompt_flags::CLEAR;
        return Ok(Some(p));
    }
    let u16_of = |v: f32, what: &str| -> Result<u16> {
        if !(0.0..=65535.0).contains(&v) {
            bail!("{what} coordinate {v} is outside 0..65535");
        }
        Ok(v.round() as u16)
    };
    if let Some(b) = a.boxes.as_deref() {
        let b = crate::prompting::prompt::BoxPrompt::parse(b)?;
        p.flags |= prompt_flags::HAS_BOX;
        p.bbox = Rect {
            x0: u16_of(b.x0, "box")?,
            y0: u16_of(b.y0, "box")?,
            x1: u16_of(b.x1, "box")?,
            y1: u16_of(b.y1, "box")?,
        };
    }
    for s in a.point.as_slice() {
        let q = crate::prompting::prompt::PointPrompt::parse(s)?;
        let pt = Point {
            x: u16_of(q.x, "point")?,
            y: u16_of(q.y, "point")?,
            foreground: q.foreground,
        };
        p.points
            .push(pt)
            .map_err(|_| anyhow::anyhow!("at most 16 --point"))?;
    }
    if let Some(t) = a.text.as_deref() {
        p.text
            .push_str(t)
            .map_err(|_| anyhow::anyhow!("--text is longer than 512 bytes"))?;
    }
    let any = p.has_box() || !p.points.is_empty() || !p.text.is_empty();
    if !any && a.pipeline.as_deref().is_some() {
        bail!("--pipeline needs --box, --point or --text");
    }
    Ok(any.then_some(p))
}
