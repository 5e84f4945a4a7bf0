//! The device's link runtime: one thread owns the link and sends masks from a newest-wins
//! queue, Status every second and Hello every few seconds (a serial host can attach at any
//! time); a reader thread per connection takes Prompts and Hellos from the host. When the link
//! fails (cable pulled, host restarted) masks are dropped and counted, the producer never
//! blocks, and the link is reopened until it comes back.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::queue::{LatestWins, Pop};
use crate::link::{Received, Receiver, Transport, is_idle};
use crate::wire::frame::{MAX_PAYLOAD, VERSION};
use crate::wire::message::{
    Ack, ErrorCode, ErrorMsg, Hello, Message, ModelHash, MsgType, Pipeline, PromptMsg,
    StageLatency, Status, bounded_str, caps, prompt_flags,
};
use crate::wire::send::{MaskMeta, SendError, Sender};

/// One mask to send; `pixels` is one byte per pixel and comes back through
/// [`DeviceLink::buffer`] once sent, so the steady state allocates nothing.
pub struct MaskJob {
    pub meta: MaskMeta,
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
    /// The mask's biometry, sent as a Measure right after it.
    pub measure: Option<crate::wire::message::MeasureMsg>,
}

/// What the device says about itself in Hello.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    pub device: String,
    pub board: String,
    pub models: Vec<ModelHash>,
    /// Pipelines this device runs (Prompt requests for others get an Error).
    pub pipelines: Vec<Pipeline>,
    /// Sends a Measure with each mask (Hello capability bit 8).
    pub measures: bool,
}

#[derive(Clone, Copy, Debug)]
pub struct LinkOptions {
    pub queue: usize,
    pub status_every: Duration,
    pub hello_every: Duration,
    pub retry_every: Duration,
}

impl Default for LinkOptions {
    fn default() -> Self {
        LinkOptions {
            queue: 2,
            status_every: Duration::from_secs(1),
            hello_every: Duration::from_secs(5),
            retry_every: Duration::from_millis(250),
        }
    }
}

/// `log` target of the per-mask sent record (`SONOMASK_LOG=...,sonomask::sent=debug`).
pub const SENT_LOG: &str = "sonomask::sent";

/// Totals at the end of a run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkSummary {
    /// Masks handed to the link; each is either sent or counted in `queue_drops`.
    pub masks_queued: u32,
    pub masks_sent: u32,
    pub queue_drops: u64,
    pub reconnects: u32,
    /// Faults reported to the host (Error messages), as Status counts them.
    pub errors: u32,
    pub wire_bytes: u64,
    pub prompts_received: u32,
    /// Whether the link opened at least once; if not, why the last attempt failed.
    pub ever_connected: bool,
    pub last_open_error: Option<String>,
}

#[allow(clippy::large_enum_variant)]
enum Control {
    Hello,
    Ack(Ack),
    Error(ErrorMsg),
}

struct Shared {
    stop: AtomicBool,
    /// Connection generation; a reader thread exits when it no longer matches.
    generation: AtomicU64,
    /// The generation whose reader saw the link close.
    dead_generation: AtomicU64,
    frames_in: AtomicU32,
    masks_queued: AtomicU32,
    masks_sent: AtomicU32,
    errors: AtomicU32,
    reconnects: AtomicU32,
    prompts: AtomicU32,
    last_error: AtomicU32,
    fps_centi: AtomicU32,
    wire_bytes: AtomicU64,
    stages: Mutex<Vec<(String, u32)>>,
    control: Mutex<VecDeque<Control>>,
    prompt: Mutex<Option<PromptMsg>>,
    recycle: Mutex<Vec<Vec<u8>>>,
    ever_connected: AtomicBool,
    last_open_error: Mutex<Option<String>>,
    session_id: u32,
    started: Instant,
    info: DeviceInfo,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct DeviceLink {
    queue: Arc<LatestWins<MaskJob>>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl DeviceLink {
    /// Starts the link thread. A link that cannot be reopened (stdout, a file) must open now;
    /// a serial port or TCP host that is not there yet is retried in the background.
    pub fn start(
        mut transport: Box<dyn Transport>,
        info: DeviceInfo,
        opts: LinkOptions,
    ) -> io::Result<Self> {
        let first = if transport.reconnects() {
            None
        } else {
            Some(transport.open()?)
        };
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            dead_generation: AtomicU64::new(u64::MAX),
            frames_in: AtomicU32::new(0),
            masks_queued: AtomicU32::new(0),
            masks_sent: AtomicU32::new(0),
            errors: AtomicU32::new(0),
            reconnects: AtomicU32::new(0),
            prompts: AtomicU32::new(0),
            last_error: AtomicU32::new(0),
            fps_centi: AtomicU32::new(0),
            wire_bytes: AtomicU64::new(0),
            stages: Mutex::new(Vec::new()),
            control: Mutex::new(VecDeque::new()),
            prompt: Mutex::new(None),
            recycle: Mutex::new(Vec::new()),
            ever_connected: AtomicBool::new(false),
            last_open_error: Mutex::new(None),
            session_id: session_id(),
            started: Instant::now(),
            info,
        });
        let queue = Arc::new(LatestWins::new(opts.queue));
        let (q, s) = (queue.clone(), shared.clone());
        let thread = std::thread::Builder::new()
            .name("sonomask-link".into())
            .spawn(move || link_thread(transport, first, q, s, opts))?;
        Ok(DeviceLink {
            queue,
            shared,
            thread: Some(thread),
        })
    }

    /// Microseconds since this session started (the Mask timestamp clock).
    pub fn now_us(&self) -> u64 {
        self.shared.started.elapsed().as_micros() as u64
    }

    /// A pixel buffer of `n` bytes, reused from a sent mask when one is available.
    pub fn buffer(&self, n: usize) -> Vec<u8> {
        let mut b = lock(&self.shared.recycle).pop().unwrap_or_default();
        b.clear();
        b.resize(n, 0);
        b
    }

    /// Queues a mask; never blocks. A mask evicted by a newer one is counted as a drop.
    pub fn submit(&self, job: MaskJob) {
        self.shared.masks_queued.fetch_add(1, Ordering::Relaxed);
        if let Some(old) = self.queue.push(job) {
            lock(&self.shared.recycle).push(old.pixels);
        }
    }

    /// The host's current prompt, if it sent one.
    pub fn host_prompt(&self) -> Option<PromptMsg> {
        lock(&self.shared.prompt).clone()
    }

    /// Drops the host prompt (it does not fit the frames) and tells the host why.
    pub fn reject_host_prompt(&self, prompt: &PromptMsg, why: &str) {
        let mut p = lock(&self.shared.prompt);
        if p.as_ref().is_some_and(|q| q.prompt_id == prompt.prompt_id) {
            *p = None;
        }
        drop(p);
        self.error(ErrorCode::BadPrompt, 0, MsgType::Prompt as u8, why);
    }

    /// Records a failure for Status and sends an Error message.
    pub fn error(&self, code: ErrorCode, ref_seq: u16, ref_type: u8, message: &str) {
        record_error(&self.shared, code);
        lock(&self.shared.control).push_back(Control::Error(ErrorMsg::new(
            code, ref_seq, ref_type, message,
        )));
    }

    /// One frame was taken from the source; `stages` are its per-stage latencies (ms).
    pub fn frame_done(&self, stages: &[(&str, f64)], fps: f64) {
        self.shared.frames_in.fetch_add(1, Ordering::Relaxed);
        self.shared.fps_centi.store(
            (fps * 100.0).round().clamp(0.0, 65535.0) as u32,
            Ordering::Relaxed,
        );
        let mut s = lock(&self.shared.stages);
        s.clear();
        s.extend(stages.iter().map(|(n, ms)| {
            (
                n.to_string(),
                (ms * 1e3).round().clamp(0.0, u32::MAX as f64) as u32,
            )
        }));
    }

    /// The totals so far (the device's heartbeat reads them; `finish` returns the last ones).
    pub fn totals(&self) -> LinkSummary {
        let s = &self.shared;
        LinkSummary {
            masks_queued: s.masks_queued.load(Ordering::Relaxed),
            masks_sent: s.masks_sent.load(Ordering::Relaxed),
            queue_drops: self.queue.drops(),
            reconnects: s.reconnects.load(Ordering::Relaxed),
            errors: s.errors.load(Ordering::Relaxed),
            wire_bytes: s.wire_bytes.load(Ordering::Relaxed),
            prompts_received: s.prompts.load(Ordering::Relaxed),
            ever_connected: s.ever_connected.load(Ordering::Relaxed),
            last_open_error: lock(&s.last_open_error).clone(),
        }
    }

    /// Masks waiting to be sent.
    pub fn pending(&self) -> usize {
        self.queue.len()
    }

    /// Sends what is queued (waiting at most `drain` for a link that is down), stops the
    /// threads and returns the totals.
    pub fn finish(mut self, drain: Duration) -> io::Result<LinkSummary> {
        self.queue.close();
        let deadline = Instant::now() + drain;
        // Wait for the queue to drain and, for a source that ended at once, for the link's first
        // open attempt to finish, so Hello and the final Status go out (bounded by `drain`).
        let opening = |s: &Shared| {
            !s.ever_connected.load(Ordering::Relaxed) && lock(&s.last_open_error).is_none()
        };
        while (!self.queue.is_empty() || opening(&self.shared)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.shared.stop.store(true, Ordering::Relaxed);
        let r = self.thread.take().map(|t| t.join());
        let summary = self.totals();
        match r {
            Some(Ok(Err(e))) => Err(e),
            Some(Err(_)) => Err(io::Error::other("link thread panicked")),
            _ => Ok(summary),
        }
    }
}

impl Drop for DeviceLink {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.queue.close();
    }
}

fn record_error(s: &Shared, code: ErrorCode) {
    s.errors.fetch_add(1, Ordering::Relaxed);
    s.last_error.store(code as u32, Ordering::Relaxed);
}

/// Per-process random id: time and pid mixed (a restart must change it, nothing more).
fn session_id() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let x = t ^ ((std::process::id() as u64) << 32);
    (x ^ (x >> 29)).wrapping_mul(0xBF58_476D_1CE4_E5B9) as u32 | 1
}

fn hello(s: &Shared) -> Hello {
    let device = bounded_str(&s.info.device);
    let board = bounded_str(&s.info.board);
    let mut capabilities = caps::MASK_RLE | caps::MASK_RAW | caps::STATUS;
    if s.info.measures {
        capabilities |= caps::MEASURE;
    }
    for p in &s.info.pipelines {
        capabilities |= match p {
            Pipeline::Interactive => caps::PROMPT_BOX | caps::PROMPT_POINTS,
            Pipeline::MedClipSam => caps::PIPELINE_MEDCLIP_SAM | caps::PROMPT_TEXT,
            Pipeline::Salip => caps::PIPELINE_SALIP | caps::PROMPT_TEXT,
        };
    }
    let mut models = heapless::Vec::new();
    for m in s.info.models.iter().take(4) {
        let _ = models.push(m.clone());
    }
    Hello {
        min_version: VERSION,
        max_version: VERSION,
        session_id: s.session_id,
        capabilities,
        max_payload: MAX_PAYLOAD as u16,
        device,
        board,
        models,
    }
}

fn status(s: &Shared, drops: u64) -> Status {
    let mut st = Status {
        frames_in: s.frames_in.load(Ordering::Relaxed),
        masks_sent: s.masks_sent.load(Ordering::Relaxed),
        queue_drops: drops.min(u32::MAX as u64) as u32,
        errors: s.errors.load(Ordering::Relaxed),
        reconnects: s.reconnects.load(Ordering::Relaxed),
        fps_centi: s.fps_centi.load(Ordering::Relaxed) as u16,
        last_error: s.last_error.load(Ordering::Relaxed) as u16,
        stages: heapless::Vec::new(),
    };
    for (name, us) in lock(&s.stages).iter() {
        let n = bounded_str(name);
        if st
            .stages
            .push(StageLatency {
                name: n,
                micros: *us,
            })
            .is_err()
        {
            break;
        }
    }
    st
}

struct Conn {
    writer: Box<dyn Write + Send>,
    generation: u64,
}

fn link_thread(
    mut transport: Box<dyn Transport>,
    mut first: Option<crate::link::Connection>,
    queue: Arc<LatestWins<MaskJob>>,
    s: Arc<Shared>,
    opts: LinkOptions,
) -> io::Result<()> {
    let mut tx = Sender::new();
    let mut conn: Option<Conn> = None;
    let mut ever_connected = false;
    let mut next_retry = Instant::now();
    let mut outage_logged = false;
    let mut last_status = Instant::now();
    let mut last_hello = Instant::now();
    let name = transport.describe();
    loop {
        let now = Instant::now();
        if conn
            .as_ref()
            .is_some_and(|c| s.dead_generation.load(Ordering::Relaxed) == c.generation)
        {
            log::warn!("link {name}: peer closed the connection");
            conn = None;
            next_retry = now + opts.retry_every;
        }
        if conn.is_none() && now >= next_retry && !s.stop.load(Ordering::Relaxed) {
            let opened = match first.take() {
                Some(c) => Ok(c),
                None if ever_connected && !transport.reconnects() => {
                    return Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        format!("{name} closed"),
                    ));
                }
                None => transport.open(),
            };
            match opened {
                Ok(c) => {
                    let generation = s.generation.fetch_add(1, Ordering::Relaxed) + 1;
                    if let Some(r) = c.reader {
                        let s2 = s.clone();
                        std::thread::Builder::new()
                            .name("sonomask-link-rx".into())
                            .spawn(move || reader_thread(r, generation, s2))?;
                    }
                    if let Some(w) = c.writer {
                        if ever_connected {
                            s.reconnects.fetch_add(1, Ordering::Relaxed);
                        }
                        log::info!("link {name}: up");
                        ever_connected = true;
                        s.ever_connected.store(true, Ordering::Relaxed);
                        outage_logged = false;
                        let mut cc = Conn {
                            writer: w,
                            generation,
                        };
                        // A leading delimiter ends whatever noise the line carried before.
                        let r = cc.writer.write_all(&[0]).and_then(|_| {
                            send_msg(&mut tx, &mut cc, &Message::Hello(hello(&s)), &s)
                        });
                        last_hello = now;
                        conn = Some(cc);
                        if let Err(e) = r {
                            // Opened but unwritable (a host that accepts and resets, a stalled
                            // line): retry later.
                            link_down(&name, &e, &mut conn, &mut next_retry, &opts, &s);
                        }
                    }
                }
                Err(e) => {
                    if !transport.reconnects() {
                        return Err(e);
                    }
                    *lock(&s.last_open_error) = Some(e.to_string());
                    if !outage_logged {
                        log::warn!(
                            "link {name}: cannot open ({e}); retrying every {:?}",
                            opts.retry_every
                        );
                        outage_logged = true;
                    }
                    next_retry = now + opts.retry_every;
                }
            }
        }

        send_controls(&mut tx, &mut conn, &s, &name, &mut next_retry, &opts);
        if let Some(cc) = conn.as_mut() {
            let mut r = Ok(());
            if now.duration_since(last_status) >= opts.status_every {
                last_status = now;
                r = send_msg(&mut tx, cc, &Message::Status(status(&s, queue.drops())), &s);
            }
            if r.is_ok() && now.duration_since(last_hello) >= opts.hello_every {
                last_hello = now;
                r = send_msg(&mut tx, cc, &Message::Hello(hello(&s)), &s);
            }
            if let Err(e) = r {
                link_down(&name, &e, &mut conn, &mut next_retry, &opts, &s);
            }
        }

        match queue.pop_timeout(Duration::from_millis(20)) {
            Pop::Item(job) => {
                match conn.as_mut() {
                    None => queue.count_drop(),
                    Some(cc) => match send_mask(&mut tx, cc, &job, &s) {
                        Ok(()) => {}
                        Err(SendError::Link(e)) => {
                            queue.count_drop();
                            link_down(&name, &e, &mut conn, &mut next_retry, &opts, &s);
                        }
                        Err(e) => {
                            queue.count_drop();
                            log::error!("mask of frame {} not sent: {e}", job.meta.frame_id);
                            record_error(&s, ErrorCode::Model);
                        }
                    },
                }
                lock(&s.recycle).push(job.pixels);
            }
            Pop::Empty => {}
            // Drained after close: `finish` sets `stop` next; wait for it without spinning.
            Pop::Closed => std::thread::sleep(Duration::from_millis(5)),
        }
        if s.stop.load(Ordering::Relaxed) && queue.is_empty() {
            break;
        }
    }
    // Errors and Acks queued while the loop waited for its stop (the source's last frames)
    // go out before the final Status: losing them would hide why those frames had no mask.
    send_controls(&mut tx, &mut conn, &s, &name, &mut next_retry, &opts);
    if let Some(cc) = conn.as_mut() {
        let _ = send_msg(&mut tx, cc, &Message::Status(status(&s, queue.drops())), &s);
        let _ = cc.writer.flush();
    }
    s.generation.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Sends the queued Hello/Ack/Error messages (dropped while the link is down).
fn send_controls(
    tx: &mut Sender,
    conn: &mut Option<Conn>,
    s: &Shared,
    name: &str,
    next_retry: &mut Instant,
    opts: &LinkOptions,
) {
    let controls: Vec<Control> = lock(&s.control).drain(..).collect();
    for c in controls {
        let msg = match c {
            Control::Hello => Message::Hello(hello(s)),
            Control::Ack(a) => Message::Ack(a),
            Control::Error(e) => Message::Error(e),
        };
        if let Some(cc) = conn.as_mut()
            && let Err(e) = send_msg(tx, cc, &msg, s)
        {
            link_down(name, &e, conn, next_retry, opts, s);
        }
    }
}

/// Gives a failed connection up. Its reader thread is told to exit too (a new generation): it
/// holds the port open, and a serial port is opened exclusively (TIOCEXCL and flock), so until
/// it lets go every reopen fails. Found by the soak: a host that stopped reading made one write
/// time out, and the device never reconnected to the same port.
fn link_down(
    name: &str,
    e: &io::Error,
    conn: &mut Option<Conn>,
    next_retry: &mut Instant,
    opts: &LinkOptions,
    s: &Shared,
) {
    log::warn!("link {name}: down ({e}); masks are dropped until it is back");
    if conn.take().is_some() {
        s.generation.fetch_add(1, Ordering::Relaxed);
    }
    *next_retry = Instant::now() + opts.retry_every;
}

fn send_msg(tx: &mut Sender, c: &mut Conn, msg: &Message<'_>, s: &Shared) -> io::Result<()> {
    let n = tx
        .message(msg, |b| c.writer.write_all(b))
        .map_err(|e| match e {
            SendError::Link(e) => e,
            other => io::Error::other(other.to_string()),
        })?;
    c.writer.flush()?;
    s.wire_bytes.fetch_add(n as u64, Ordering::Relaxed);
    Ok(())
}

fn send_mask(
    tx: &mut Sender,
    c: &mut Conn,
    job: &MaskJob,
    s: &Shared,
) -> Result<(), SendError<io::Error>> {
    let sent = tx.mask(job.meta, job.width, job.height, &job.pixels, |b| {
        c.writer.write_all(b)
    })?;
    c.writer.flush().map_err(SendError::Link)?;
    s.masks_sent.fetch_add(1, Ordering::Relaxed);
    // What left the device, for an audit of the host's copy (the soak benchmark compares them).
    if log::log_enabled!(target: SENT_LOG, log::Level::Debug) {
        log::debug!(
            target: SENT_LOG,
            "sent frame={} object={} crc32={:08x}",
            job.meta.frame_id,
            job.meta.object,
            crate::wire::crc::crc32(&job.pixels)
        );
    }
    if let Some(m) = job.measure {
        // After the mask's last frame, so no receiver's reassembly is interrupted.
        send_msg(tx, c, &Message::Measure(m), s).map_err(SendError::Link)?;
    }
    s.wire_bytes
        .fetch_add(sent.wire_bytes as u64, Ordering::Relaxed);
    log::debug!(
        "mask frame {} sent: {} B {} in {} frame(s)",
        job.meta.frame_id,
        sent.header.data_len,
        sent.header.encoding.name(),
        sent.header.chunk_count
    );
    Ok(())
}

fn reader_thread(mut r: Box<dyn Read + Send>, generation: u64, s: Arc<Shared>) {
    let mut rx = Receiver::new();
    let mut buf = [0u8; 4096];
    while s.generation.load(Ordering::Relaxed) == generation && !s.stop.load(Ordering::Relaxed) {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => rx.push(&buf[..n], |ev| handle_host(ev, &s)),
            Err(e) if is_idle(&e) => continue,
            Err(e) => {
                log::debug!("link reader: {e}");
                break;
            }
        }
    }
    s.dead_generation.store(generation, Ordering::Relaxed);
}

/// Checks a host Prompt against what this device runs; `Err` is the reason to refuse it.
pub fn check_prompt(p: &PromptMsg, pipelines: &[Pipeline]) -> Result<(), (ErrorCode, String)> {
    if p.flags & prompt_flags::CLEAR != 0 {
        return Ok(());
    }
    if !pipelines.contains(&p.pipeline) {
        return Err((
            ErrorCode::UnsupportedPipeline,
            format!(
                "pipeline {} is not available on this device",
                p.pipeline.name()
            ),
        ));
    }
    match p.pipeline {
        Pipeline::Interactive => {
            if !p.has_box() && p.points.is_empty() {
                return Err((
                    ErrorCode::BadPrompt,
                    "interactive prompt without a box or points".into(),
                ));
            }
            if p.has_box() && (p.bbox.x0 >= p.bbox.x1 || p.bbox.y0 >= p.bbox.y1) {
                return Err((
                    ErrorCode::BadPrompt,
                    "box must have x0 < x1 and y0 < y1".into(),
                ));
            }
        }
        Pipeline::MedClipSam | Pipeline::Salip => {
            if p.text.trim().is_empty() {
                return Err((ErrorCode::BadPrompt, "text pipeline without text".into()));
            }
        }
    }
    Ok(())
}

fn handle_host(ev: Received<'_>, s: &Shared) {
    let reply = |c: Control| lock(&s.control).push_back(c);
    match ev {
        Received::Message {
            seq,
            msg: Message::Prompt(p),
        } => match check_prompt(&p, &s.info.pipelines) {
            Ok(()) => {
                log::info!("host prompt {} ({})", p.prompt_id, p.pipeline.name());
                s.prompts.fetch_add(1, Ordering::Relaxed);
                let ack = Ack {
                    seq,
                    msg_type: MsgType::Prompt as u8,
                    ref_id: p.prompt_id,
                };
                *lock(&s.prompt) = if p.flags & prompt_flags::CLEAR != 0 {
                    None
                } else {
                    Some(p)
                };
                reply(Control::Ack(ack));
            }
            Err((code, why)) => {
                record_error(s, code);
                reply(Control::Error(ErrorMsg::new(
                    code,
                    seq,
                    MsgType::Prompt as u8,
                    &why,
                )));
            }
        },
        Received::Message {
            seq,
            msg: Message::Hello(h),
        } => {
            if (h.min_version..=h.max_version).contains(&VERSION) {
                reply(Control::Hello);
            } else {
                let why = format!(
                    "device speaks protocol version {VERSION}; host offers {}..{}",
                    h.min_version, h.max_version
                );
                reply(Control::Error(ErrorMsg::new(
                    ErrorCode::Version,
                    seq,
                    MsgType::Hello as u8,
                    &why,
                )));
            }
        }
        Received::Message { seq, msg } => {
            let t = msg.msg_type() as u8;
            if !matches!(
                msg,
                Message::Ack(_) | Message::Error(_) | Message::Status(_)
            ) {
                reply(Control::Error(ErrorMsg::new(
                    ErrorCode::UnsupportedMessage,
                    seq,
                    t,
                    "the device does not accept this message",
                )));
            }
        }
        Received::ParseError {
            seq,
            msg_type,
            error,
        } => {
            let code = if matches!(error, crate::wire::message::ParseError::UnknownType(_)) {
                ErrorCode::UnsupportedMessage
            } else {
                ErrorCode::Malformed
            };
            reply(Control::Error(ErrorMsg::new(
                code,
                seq,
                msg_type,
                &error.to_string(),
            )));
        }
        Received::Version { seq, version } => {
            let why = format!("frame of protocol version {version}; this device speaks {VERSION}");
            reply(Control::Error(ErrorMsg::new(
                ErrorCode::Version,
                seq,
                0,
                &why,
            )));
        }
        Received::FrameError(e) => log::debug!("link: damaged frame from host: {e}"),
        Received::Lost { frames } => log::debug!("link: {frames} frame(s) from host lost"),
        Received::Mask { .. } | Received::MaskDropped(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::Connection;
    use std::sync::atomic::AtomicUsize;

    /// A port that, like a serial port, cannot be opened while any earlier connection's reader
    /// still holds it; the first connection's writes time out (a host that stopped reading).
    struct ExclusivePort {
        /// Writes the first connection takes before it stalls.
        first_ok: usize,
        holders: Arc<AtomicUsize>,
        opens: Arc<AtomicUsize>,
        written: Arc<Mutex<Vec<u8>>>,
    }

    struct Holder(Arc<AtomicUsize>);
    impl Read for Holder {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            std::thread::sleep(Duration::from_millis(20));
            Err(io::ErrorKind::TimedOut.into())
        }
    }
    impl Drop for Holder {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Takes `ok` writes, then times out on every one.
    struct Stalled {
        ok: usize,
    }
    impl Write for Stalled {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            if self.ok == 0 {
                return Err(io::ErrorKind::TimedOut.into());
            }
            self.ok -= 1;
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            lock(&self.0).extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Transport for ExclusivePort {
        fn open(&mut self) -> io::Result<Connection> {
            if self.holders.load(Ordering::SeqCst) > 0 {
                return Err(io::Error::other("Unable to acquire exclusive lock"));
            }
            self.holders.fetch_add(1, Ordering::SeqCst);
            let first = self.opens.fetch_add(1, Ordering::SeqCst) == 0;
            let writer: Box<dyn Write + Send> = if first {
                Box::new(Stalled { ok: self.first_ok })
            } else {
                Box::new(Sink(self.written.clone()))
            };
            Ok(Connection {
                reader: Some(Box::new(Holder(self.holders.clone()))),
                writer: Some(writer),
            })
        }
        fn describe(&self) -> String {
            "exclusive test port".into()
        }
    }

    #[test]
    fn a_write_timeout_releases_the_port_so_it_can_be_reopened() {
        // 0: the first write (the delimiter) stalls; 2: the delimiter and Hello go, the first
        // Status stalls.
        for first_ok in [0, 2] {
            reopens_after_a_stall(first_ok);
        }
    }

    fn reopens_after_a_stall(first_ok: usize) {
        let (holders, opens) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let written = Arc::new(Mutex::new(Vec::new()));
        let port = ExclusivePort {
            first_ok,
            holders: holders.clone(),
            opens: opens.clone(),
            written: written.clone(),
        };
        let info = DeviceInfo {
            device: "test".into(),
            board: "test".into(),
            models: vec![],
            pipelines: vec![Pipeline::Interactive],
            measures: false,
        };
        let opts = LinkOptions {
            retry_every: Duration::from_millis(20),
            status_every: Duration::from_millis(30),
            ..LinkOptions::default()
        };
        let link = DeviceLink::start(Box::new(port), info, opts).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while opens.load(Ordering::SeqCst) < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            opens.load(Ordering::SeqCst),
            2,
            "the port was never reopened after the stalled write ({first_ok} writes went)"
        );
        let mut pixels = link.buffer(64);
        pixels[..8].fill(1);
        link.submit(MaskJob {
            meta: MaskMeta {
                frame_id: 7,
                timestamp_us: 0,
                prompt_id: 0,
                object: 0,
                score: 0.5,
            },
            width: 8,
            height: 8,
            pixels,
            measure: None,
        });
        let summary = link.finish(Duration::from_secs(2)).unwrap();
        assert_eq!(summary.reconnects, 1, "{summary:?}");
        assert_eq!(summary.masks_sent, 1, "{summary:?}");
        assert_eq!(summary.masks_queued, 1);
        // The reopened connection carried the mask: the host decodes it.
        let mut rx = Receiver::new();
        let mut frames = vec![];
        rx.push(&lock(&written), |ev| {
            if let Received::Mask { header, .. } = ev {
                frames.push(header.frame_id);
            }
        });
        assert_eq!(frames, [7]);
    }
}
