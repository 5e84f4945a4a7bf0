//! MobileSAM stage latencies with divan: preprocessing, encoder and decoder per precision.
//!
//! Uses the full-size models in `models/` (built by `quantize/build_models.sh`) when present,
//! else the tiny test fixtures (then the figures only show the harness works). Set
//! SONOMASK_BENCH_MODELS=DIR to choose. Run: `cargo bench --bench sam`.

use std::path::{Path, PathBuf};

use sonomask::input::image_io::{RgbFrame, load_rgb};
use sonomask::model::{Manifest, Precision};
use sonomask::pipelines::segment::SamSession;
use sonomask::preprocess::{Normalize, Recipe, sam_input_into};
use sonomask::prompting::prompt::{BoxPrompt, Prompt};
use sonomask::timing::Timings;

fn main() {
    sonomask::heap::keep_freed_memory();
    divan::main();
}

fn models_dir() -> PathBuf {
    if let Ok(d) = std::env::var("SONOMASK_BENCH_MODELS") {
        return PathBuf::from(d);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    if root.join("models/manifest.toml").exists() {
        root.join("models")
    } else {
        eprintln!("models/ not built: benchmarking the tiny fixtures (harness check only)");
        root.join("tests/fixtures/models_tiny")
    }
}

/// A real BUSI frame when ../shared is there, else the committed fixture frame.
fn frame() -> RgbFrame {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let busi = root.join("../shared/data/busi/images/benign (1).png");
    load_rgb(&busi)
        .or_else(|_| load_rgb(&root.join("tests/fixtures/models_tiny/input.png")))
        .expect("bench frame")
}

#[divan::bench(args = [1024, 256])]
fn preprocess(bencher: divan::Bencher, size: u32) {
    let f = frame();
    let mut buf = vec![0f32; 3 * (size * size) as usize];
    let recipe = Recipe::mobilesam(size, Normalize::SAM);
    bencher.bench_local(|| sam_input_into(divan::black_box(&f), &recipe, &mut buf));
}

fn session(p: Precision) -> Option<SamSession> {
    let dir = models_dir();
    let m = Manifest::load(&dir).ok()?;
    m.entry(sonomask::model::Role::SamEncoder, p).ok()?;
    SamSession::load(&dir, p).ok()
}

#[divan::bench(args = ["fp32", "int8"], sample_count = 3, sample_size = 1)]
fn encoder(bencher: divan::Bencher, precision: &str) {
    let Some(mut s) = session(Precision::parse(precision).unwrap()) else {
        return;
    };
    let f = frame();
    bencher.bench_local(|| s.encode(&f, &mut Timings::default()).unwrap());
}

#[divan::bench(args = ["fp32", "int8"], sample_count = 10, sample_size = 1)]
fn decoder_box(bencher: divan::Bencher, precision: &str) {
    let Some(mut s) = session(Precision::parse(precision).unwrap()) else {
        return;
    };
    let f = frame();
    let enc = s.encode(&f, &mut Timings::default()).unwrap();
    let b = BoxPrompt {
        x0: f.width as f32 * 0.3,
        y0: f.height as f32 * 0.3,
        x1: f.width as f32 * 0.6,
        y1: f.height as f32 * 0.6,
    };
    let p = Prompt {
        bbox: Some(b),
        points: vec![],
    };
    bencher.bench_local(|| s.decode(&enc, &p, &mut Timings::default()).unwrap());
}
