//! Shared helpers for the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub mod pty;
pub mod soak;
pub mod wire;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn models_tiny() -> PathBuf {
    fixtures().join("models_tiny")
}

/// ../shared beside the project root. Tests that need it fail with a clear message when it is
/// missing, unless SONOMASK_SKIP_SHARED=1 says to skip them (returns None then).
pub fn shared() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared");
    if p.join("data").is_dir() {
        return Some(p);
    }
    if std::env::var("SONOMASK_SKIP_SHARED").as_deref() == Ok("1") {
        eprintln!(
            "SKIPPED: {} is missing (SONOMASK_SKIP_SHARED=1)",
            p.display()
        );
        return None;
    }
    panic!(
        "{} is missing: this test reads real images from ../shared/data (set SONOMASK_SKIP_SHARED=1 to skip)",
        p.display()
    );
}

pub fn read_f32(path: &Path) -> Vec<f32> {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// (max |a-b|, max |b|, cosine)
pub fn compare(a: &[f32], b: &[f32]) -> (f32, f32, f64) {
    assert_eq!(a.len(), b.len(), "length");
    let mut maxd = 0f32;
    let mut maxb = 0f32;
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        maxd = maxd.max((x - y).abs());
        maxb = maxb.max(y.abs());
        ab += x as f64 * y as f64;
        aa += x as f64 * x as f64;
        bb += y as f64 * y as f64;
    }
    (maxd, maxb, ab / (aa.sqrt() * bb.sqrt()).max(1e-30))
}

/// Copy the tiny fixture models into a fresh temp dir a test may damage.
pub fn scratch_models(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sonomask-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(models_tiny()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    dir
}

/// A binary mask (one byte per pixel, 0/1) for wire tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestMask {
    pub name: String,
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

/// Mask files of a ../shared dataset in pairs.csv order (every mask of a row), read as 0/1.
pub fn shared_masks(shared: &Path, dataset: &str, limit: usize) -> Vec<TestMask> {
    let dir = shared.join("data").join(dataset);
    let csv = std::fs::read_to_string(dir.join("pairs.csv"))
        .unwrap_or_else(|e| panic!("{}/pairs.csv: {e}", dir.display()));
    let mut out = Vec::new();
    for line in csv.lines().skip(1) {
        let Some((_, masks)) = line.split_once(',') else {
            continue;
        };
        for m in masks.split(';').filter(|m| !m.is_empty()) {
            if out.len() >= limit {
                return out;
            }
            let f = sonomask::input::image_io::load_rgb(&dir.join(m)).unwrap();
            let pixels = f
                .pixels
                .chunks_exact(3)
                .map(|p| (p.iter().max().unwrap() > &127) as u8)
                .collect();
            out.push(TestMask {
                name: format!("{dataset}/{m}"),
                width: f.width,
                height: f.height,
                pixels,
            });
        }
    }
    out
}

/// A small deterministic PRNG (xorshift64*): fault positions must be reproducible.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Runs `sonomask listen REC --out OUT --quiet` on a recorded stream and returns its JSON lines.
pub fn listen_recording(rec: &Path, out: &Path) -> Vec<serde_json::Value> {
    let l = std::process::Command::new(env!("CARGO_BIN_EXE_sonomask"))
        .env("SONOMASK_LOG", "warn")
        .arg("listen")
        .arg(rec)
        .arg("--out")
        .arg(out)
        .arg("--quiet")
        .output()
        .unwrap();
    assert!(
        l.status.success(),
        "listen failed: {}",
        String::from_utf8_lossy(&l.stderr)
    );
    std::fs::read_to_string(out.join("messages.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The lines of `lines` whose "type" is `t`.
pub fn of_type<'a>(lines: &'a [serde_json::Value], t: &str) -> Vec<&'a serde_json::Value> {
    lines.iter().filter(|v| v["type"] == t).collect()
}

/// The real CLIP vocabulary in ../shared (the fixture models ship without it).
pub fn clip_vocab() -> Option<PathBuf> {
    Some(shared()?.join("models/clip_bpe/bpe_simple_vocab_16e6.txt.gz"))
}

/// The `sonomask` binary at log level `log`, pointed at the CLIP vocabulary in ../shared.
pub fn sonomask_cmd(log: &str) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_sonomask"));
    c.env("SONOMASK_LOG", log);
    if let Some(v) = clip_vocab() {
        c.env("SONOMASK_CLIP_VOCAB", v);
    }
    c
}

/// A fresh, empty temp dir `sonomask-<tag>-<pid>` (removed first if a previous run left it).
pub fn tmp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sonomask-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Polls `ready` every 10 ms until it holds; panics naming `what` after `limit`. Tests wait for
/// the state they need (a port opened, a mask received) instead of sleeping a guessed time.
pub fn wait_until(what: &str, limit: std::time::Duration, mut ready: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Waits until `sonomask listen --out OUT` has opened its port (its first line, `link open`, is
/// in OUT/messages.jsonl; listen flushes every line).
pub fn wait_listener_open(out: &Path) {
    wait_until(
        "the listener to open its port",
        std::time::Duration::from_secs(20),
        || {
            std::fs::read_to_string(out.join("messages.jsonl"))
                .is_ok_and(|t| t.contains(r#""type":"link""#))
        },
    );
}

/// Whether process `pid` holds `path` open (Linux: its /proc/PID/fd links).
pub fn holds_open(pid: u32, path: &Path) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    let want = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    fds.flatten()
        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t == want))
}
