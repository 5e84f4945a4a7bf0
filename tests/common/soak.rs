//! The soak: `sonomask stream` on a looped source, through the real pipeline, to a pty link
//! that is unplugged and replugged, read part of the time by a slow host and part of the time
//! over a noisy line, with `sonomask listen` on the host side. Shared by the short CI test
//! (tests/soak.rs) and the long benchmark (benches/soak.rs, docs/RELIABILITY.md).
//!
//! Events follow the device's own heartbeat (`sonomask::health`, every 100 frames), so they
//! land on the same frames whatever the machine's speed. What the device wrote is audited
//! against what the host kept: the device logs the CRC-32 of every mask's pixels it finished
//! writing (`sonomask::sent`), the host writes every mask that passed the wire's CRC as a PNG,
//! and the driver compares the two by frame.

use super::pty::{Bridge, Line, Pty, pty};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Frames between two heartbeats: the granularity of events and RSS samples.
pub const HEARTBEAT: u32 = 100;

pub struct Config {
    pub bin: PathBuf,
    pub models: PathBuf,
    /// An image, a folder or a cine; looped until `frames`.
    pub source: PathBuf,
    pub prompt_box: String,
    pub frames: u32,
    pub threads: u32,
    /// Pace the source (None: as fast as the pipeline runs).
    pub fps: Option<u32>,
    /// The event schedule repeats every `period` frames (offsets are multiples of HEARTBEAT).
    pub period: u32,
    pub unplug_at: Vec<u32>,
    pub unplug_for: Duration,
    /// [start, end) offsets of the slow-host phase and its rate.
    pub slow: (u32, u32),
    pub slow_bytes_per_s: u64,
    /// [start, end) offsets of the noisy-line phase and its damage rate.
    pub noisy: (u32, u32),
    pub flip_one_in: u64,
    pub work: PathBuf,
}

#[derive(Debug, Default)]
pub struct Report {
    pub seconds: f64,
    pub device_exit: Option<ExitStatus>,
    pub device_summary: serde_json::Value,
    pub host_summary: serde_json::Value,
    /// (frames, resident KiB) from every heartbeat.
    pub rss: Vec<(u32, u64)>,
    /// Masks the device finished writing, by (frame, object): CRC-32 of the pixels.
    pub sent: HashMap<(u64, u64), u32>,
    /// Masks the host kept.
    pub received: usize,
    /// Received masks whose pixels differ from what the device sent, or that it never sent.
    pub corrupted: Vec<u64>,
    pub duplicates: usize,
    pub unplugs: u32,
    pub slow_phases: u32,
    pub noisy_phases: u32,
    pub damaged_bytes: u64,
    pub device_stderr_tail: Vec<String>,
}

impl Report {
    pub fn dev(&self, k: &str) -> u64 {
        self.device_summary[k].as_u64().unwrap_or(0)
    }
    pub fn host(&self, k: &str) -> u64 {
        self.host_summary[k].as_u64().unwrap_or(0)
    }
    /// Resident memory at the first heartbeat at or after `warmup` frames and at the last one.
    pub fn rss_after(&self, warmup: u32) -> Option<((u32, u64), (u32, u64))> {
        let first = *self.rss.iter().find(|(f, _)| *f >= warmup)?;
        Some((first, *self.rss.last()?))
    }
    /// Every problem with the counts; empty when they add up.
    pub fn inconsistencies(&self) -> Vec<String> {
        let mut bad = Vec::new();
        let (queued, sent, drops) = (
            self.dev("masks_queued"),
            self.dev("masks_sent"),
            self.dev("queue_drops"),
        );
        if queued != sent + drops {
            bad.push(format!(
                "device: queued {queued} != sent {sent} + dropped {drops}"
            ));
        }
        if self.sent.len() as u64 != sent {
            bad.push(format!(
                "device: {} masks in the sent log, {sent} counted sent",
                self.sent.len()
            ));
        }
        if self.received as u64 > sent {
            bad.push(format!(
                "host received {} masks, more than the {sent} sent",
                self.received
            ));
        }
        if self.host("masks") != self.received as u64 {
            bad.push(format!(
                "host summary counts {} masks, {} mask lines",
                self.host("masks"),
                self.received
            ));
        }
        if !self.corrupted.is_empty() {
            bad.push(format!(
                "{} corrupted masks accepted (frames {:?})",
                self.corrupted.len(),
                &self.corrupted[..self.corrupted.len().min(10)]
            ));
        }
        if self.duplicates > 0 {
            bad.push(format!("{} masks received twice", self.duplicates));
        }
        bad
    }

    /// The figures as a Markdown table row set (for the benchmark's output and the docs).
    pub fn table(&self, warmup: u32) -> String {
        let sent = self.dev("masks_sent");
        let lost = sent.saturating_sub(self.received as u64);
        let rss = match self.rss_after(warmup) {
            Some(((f0, k0), (f1, k1))) => format!(
                "{:.1} MiB at frame {f0}, {:.1} MiB at frame {f1}: {:+.2} MiB",
                k0 as f64 / 1024.0,
                k1 as f64 / 1024.0,
                (k1 as f64 - k0 as f64) / 1024.0
            ),
            None => "not sampled".into(),
        };
        let rows = [
            ("frames", self.dev("frames").to_string()),
            (
                "seconds (frames/s)",
                format!(
                    "{:.0} ({:.1})",
                    self.seconds,
                    self.dev("frames") as f64 / self.seconds.max(1e-9)
                ),
            ),
            (
                "masks made (queued for the link)",
                self.dev("masks_queued").to_string(),
            ),
            ("masks sent (written whole to the link)", sent.to_string()),
            (
                "masks dropped on the device (link down or busy; counted in Status)",
                self.dev("queue_drops").to_string(),
            ),
            (
                "masks received intact by the host",
                self.received.to_string(),
            ),
            (
                "masks sent but not received (lost in the unplugged or damaged line)",
                lost.to_string(),
            ),
            (
                "host: frames rejected (CRC/framing) / partial masks dropped",
                format!(
                    "{} / {}",
                    self.host("frame_errors") + self.host("parse_errors"),
                    self.host("masks_dropped")
                ),
            ),
            ("corrupted masks accepted", self.corrupted.len().to_string()),
            (
                "unplugs / reconnects",
                format!("{} / {}", self.unplugs, self.dev("reconnects")),
            ),
            (
                "slow-host phases / noisy-line phases (bytes damaged)",
                format!(
                    "{} / {} ({})",
                    self.slow_phases, self.noisy_phases, self.damaged_bytes
                ),
            ),
            (
                "device errors (Error messages)",
                self.dev("errors").to_string(),
            ),
        ];
        let mut s = String::from("| soak | value |\n|---|---|\n");
        let warm = format!("RSS after warm-up ({warmup} frames)");
        for (k, v) in rows.into_iter().chain([(warm.as_str(), rss)]) {
            s += &format!("| {k} | {v} |\n");
        }
        s
    }
}

fn spawn(cmd: &mut Command) -> Child {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sonomask")
}

/// Points `link` at `target` atomically (a udev by-id name that follows the replugged port).
fn relink(link: &Path, target: &str) {
    let tmp = link.with_extension("new");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).unwrap();
    std::fs::rename(&tmp, link).unwrap();
}

fn field(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

pub fn run(cfg: &Config) -> Report {
    let _ = std::fs::remove_dir_all(&cfg.work);
    let out = cfg.work.join("host");
    std::fs::create_dir_all(&out).unwrap();
    let link = cfg.work.join("ttyACM-sonomask");
    let host = pty();
    let mut dev: Option<Pty> = Some(pty());
    relink(&link, &dev.as_ref().unwrap().path);
    let line = Arc::new(Line::default());
    let mut bridge = Some(Bridge::on(dev.as_ref().unwrap(), &host, line.clone()));

    let mut listener = Command::new(&cfg.bin);
    listener
        .stderr(std::fs::File::create(cfg.work.join("listen.log")).unwrap())
        .env("SONOMASK_LOG", "warn")
        .args(["listen", &format!("serial:{}", host.path), "--quiet"])
        .arg("--out")
        .arg(&out)
        .args(["--idle", "15"]);
    let mut listener = listener
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn sonomask listen");
    super::wait_listener_open(&out);

    let mut device = Command::new(&cfg.bin);
    device
        .env(
            "SONOMASK_LOG",
            std::env::var("SOAK_DEVICE_LOG")
                .unwrap_or("warn,sonomask::health=info,sonomask::sent=debug".into()),
        )
        .arg("stream")
        .arg("--source")
        .arg(&cfg.source)
        .args(["--loop", "--count", &cfg.frames.to_string()])
        .args(["--box", &cfg.prompt_box, "--no-text"])
        .arg("--models")
        .arg(&cfg.models)
        .args(["--threads", &cfg.threads.to_string()])
        .arg("--sink")
        .arg(format!("serial:{}", link.display()));
    if let Some(f) = cfg.fps {
        device.args(["--fps", &f.to_string()]);
    }
    let started = Instant::now();
    let mut device = spawn(&mut device);
    // The device's stderr drains into a channel so the device never blocks on it while the
    // driver sleeps through an unplug.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stderr = device.stderr.take().unwrap();
    // Everything the device said is kept in WORK/device.log (the heartbeats, the sent log).
    let mut log =
        std::io::BufWriter::new(std::fs::File::create(cfg.work.join("device.log")).unwrap());
    let reader = std::thread::spawn(move || {
        use std::io::Write;
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = writeln!(log, "{l}");
            if tx.send(l).is_err() {
                break;
            }
        }
    });

    let mut r = Report::default();
    let mut tail = std::collections::VecDeque::new();
    for l in rx {
        if l.contains("health frames=") {
            let (Some(f), Some(kb)) = (field(&l, "frames"), field(&l, "rss_kb")) else {
                continue;
            };
            let f = f as u32;
            r.rss.push((f, kb));
            let off = f % cfg.period;
            if cfg.unplug_at.contains(&off) {
                // Unplug: the device's tty hangs up (both ends of its pair close) ...
                if let Some(b) = bridge.take() {
                    b.stop();
                }
                drop(dev.take());
                std::thread::sleep(cfg.unplug_for);
                // ... and replug: a new tty under the same by-id style name.
                let d = pty();
                relink(&link, &d.path);
                bridge = Some(Bridge::on(&d, &host, line.clone()));
                dev = Some(d);
                r.unplugs += 1;
            }
            if off == cfg.slow.0 {
                line.bytes_per_s
                    .store(cfg.slow_bytes_per_s, Ordering::Relaxed);
                r.slow_phases += 1;
            }
            if off == cfg.slow.1 {
                line.bytes_per_s.store(0, Ordering::Relaxed);
            }
            if off == cfg.noisy.0 {
                line.flip_one_in.store(cfg.flip_one_in, Ordering::Relaxed);
                r.noisy_phases += 1;
            }
            if off == cfg.noisy.1 {
                line.flip_one_in.store(0, Ordering::Relaxed);
            }
        } else if l.contains("sent frame=") {
            if let (Some(f), Some(o), Some(c)) = (
                field(&l, "frame"),
                field(&l, "object"),
                l.split("crc32=")
                    .nth(1)
                    .and_then(|v| u32::from_str_radix(v.trim(), 16).ok()),
            ) {
                r.sent.insert((f, o), c);
            }
        } else if l.contains("\"type\":\"summary\"") {
            r.device_summary = serde_json::from_str(&l).unwrap_or_default();
        } else {
            tail.push_back(l);
            if tail.len() > 400 {
                tail.pop_front();
            }
        }
    }
    let _ = reader.join();
    r.device_exit = device.wait().ok();
    r.seconds = started.elapsed().as_secs_f64();
    r.device_stderr_tail = tail.into();
    // The host stops 15 s after the last byte; bounded in case it does not.
    let deadline = Instant::now() + Duration::from_secs(60);
    while listener.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = listener.kill();
    let _ = listener.wait();
    if let Some(b) = bridge.take() {
        b.stop();
    }
    drop(dev);
    r.damaged_bytes = line.damaged.load(Ordering::Relaxed);

    let mut seen = std::collections::HashSet::new();
    let jsonl = std::fs::read_to_string(out.join("messages.jsonl")).unwrap_or_default();
    for l in jsonl.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else {
            continue;
        };
        match v["type"].as_str() {
            Some("mask") => {
                let key = (
                    v["frame_id"].as_u64().unwrap_or(u64::MAX),
                    v["object"].as_u64().unwrap_or(0),
                );
                r.received += 1;
                if !seen.insert(key) {
                    r.duplicates += 1;
                }
                let file = PathBuf::from(v["file"].as_str().unwrap_or_default());
                let crc = mask_crc(&file);
                if crc.is_none() || r.sent.get(&key) != crc.as_ref() {
                    r.corrupted.push(key.0);
                }
            }
            Some("summary") => r.host_summary = v,
            _ => {}
        }
    }
    r
}

/// CRC-32 of a mask PNG's pixels as 0/1 bytes (what the device hashed).
fn mask_crc(path: &Path) -> Option<u32> {
    let img = image::open(path).ok()?.into_luma8();
    let bits: Vec<u8> = img.as_raw().iter().map(|&p| (p > 127) as u8).collect();
    Some(sonomask::wire::crc::crc32(&bits))
}
