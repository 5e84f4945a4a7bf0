//! The soak benchmark (docs/RELIABILITY.md): at least 10,000 frames through the real pipeline
//! and the real LiteMedSAM to a pty link unplugged and replugged every 500 frames, read by a
//! slow host and over a noisy line for 100 frames of every 1000, resident memory sampled every
//! 100 frames. Not a timed test: it prints the counts and the memory growth.
//!
//! ```sh
//! cargo bench --bench soak                      # 10,000 frames, models/, 1 thread
//! SOAK_FRAMES=2000 SOAK_MODELS=models cargo bench --bench soak
//! SOAK_BIN=/tmp/sonomask-copy cargo bench --bench soak   # run that binary instead
//! ```
//!
//! Source: the 30-frame JPEG ultrasound cine in ../shared/data/dicom_us, looped, in cine mode
//! (the encoder re-runs when the picture changes or every 10 frames, as on a cart).

#[path = "../tests/common/mod.rs"]
mod common;

use common::soak::{Config, run};
use std::time::Duration;

fn env_or<T: std::str::FromStr>(k: &str, d: T) -> T {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs this too: do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let models = root.join(std::env::var("SOAK_MODELS").unwrap_or("models".into()));
    if !models.join("manifest.toml").is_file() {
        eprintln!(
            "{}: no models (run quantize/build_models.sh, or set SOAK_MODELS)",
            models.display()
        );
        std::process::exit(2);
    }
    let Some(shared) = common::shared() else {
        std::process::exit(2);
    };
    let frames = env_or("SOAK_FRAMES", 10_000u32);
    let cfg = Config {
        // SOAK_BIN: a copy of the binary, so rebuilding during a long soak changes nothing.
        bin: std::env::var("SOAK_BIN").map_or(env!("CARGO_BIN_EXE_sonomask").into(), Into::into),
        models: models.clone(),
        source: shared.join("data/dicom_us/examples_ybr_color.dcm"),
        prompt_box: "60,40,260,200".into(),
        frames,
        threads: env_or("SOAK_THREADS", 1u32),
        fps: std::env::var("SOAK_FPS").ok().and_then(|v| v.parse().ok()),
        period: 1000,
        unplug_at: vec![100, 600],
        unplug_for: Duration::from_millis(1500),
        slow: (300, 400),
        slow_bytes_per_s: 300,
        noisy: (700, 800),
        flip_one_in: 2000,
        work: root.join("target/soak"),
    };
    let warmup = env_or("SOAK_WARMUP", 1000u32).min(frames);
    eprintln!(
        "soak: {frames} frames, models {}, {} thread(s)",
        models.display(),
        cfg.threads
    );
    let r = run(&cfg);
    let table = r.table(warmup);
    println!("{table}");
    let csv: String = std::iter::once("frames,rss_kb\n".to_string())
        .chain(r.rss.iter().map(|(f, k)| format!("{f},{k}\n")))
        .collect();
    let _ = std::fs::write(cfg.work.join("rss.csv"), csv);
    let _ = std::fs::write(cfg.work.join("report.md"), &table);
    println!("device summary: {}", r.device_summary);
    println!("host summary: {}", r.host_summary);
    let bad = r.inconsistencies();
    if !r.device_exit.is_some_and(|s| s.success()) {
        eprintln!(
            "device failed: {:?}\n{}",
            r.device_exit,
            r.device_stderr_tail.join("\n")
        );
        std::process::exit(1);
    }
    if !bad.is_empty() {
        eprintln!("counts do not add up: {bad:?}");
        std::process::exit(1);
    }
    println!("rss samples: {} (target/soak/rss.csv)", r.rss.len());
}
