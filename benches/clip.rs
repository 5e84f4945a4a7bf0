//! CLIP and saliency latencies with divan: the CLIP image and text encoders per precision, the
//! tokenizer, the saliency kernels per SIMD path (scalar is the reference measured in the same
//! run), both saliency methods and the prompt rules on a real-size map.
//!
//! Uses the full-size models in `models/` (built by `quantize/build_models.sh`) when present,
//! else the tiny fixtures (harness check only). SONOMASK_BENCH_MODELS=DIR chooses. The
//! vocabulary comes from the models dir or SONOMASK_CLIP_VOCAB, else ../shared.
//! Run: `cargo bench --bench clip`.

use std::path::{Path, PathBuf};

use sonomask::input::image_io::{RgbFrame, load_rgb};
use sonomask::model::clip::{VOCAB_ENV, load_tokenizer};
use sonomask::model::{ClipImageEncoder, ClipTextEncoder, Manifest, Precision};
use sonomask::prompting::autoprompt::{Rule, prompts_from};
use sonomask::prompting::saliency::{Method, SaliencyEngine, kernels};
use sonomask::simd::Kernel;
use sonomask::timing::Timings;

fn main() {
    sonomask::heap::keep_freed_memory();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os(VOCAB_ENV).is_none() {
        let m = Manifest::load(&models_dir()).expect("manifest");
        let c = m.clip().expect("[clip]");
        if !m.dir.join(&c.vocab).exists() {
            // SAFETY: set before any benchmark thread starts.
            unsafe {
                std::env::set_var(
                    VOCAB_ENV,
                    root.join("../shared/models/clip_bpe").join(&c.vocab),
                );
            }
        }
    }
    divan::main();
}

fn models_dir() -> PathBuf {
    if let Ok(d) = std::env::var("SONOMASK_BENCH_MODELS") {
        return PathBuf::from(d);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    if root.join("models/manifest.toml").exists()
        && Manifest::load(&root.join("models")).is_ok_and(|m| m.clip.is_some())
    {
        root.join("models")
    } else {
        eprintln!("models/ has no CLIP: benchmarking the tiny fixtures (harness check only)");
        root.join("tests/fixtures/models_tiny")
    }
}

fn frame() -> RgbFrame {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    load_rgb(&root.join("../shared/data/busi/images/benign (1).png"))
        .or_else(|_| load_rgb(&root.join("tests/fixtures/models_tiny/input.png")))
        .expect("bench frame")
}

fn kernel(name: &str) -> Kernel {
    match name {
        "scalar" => Kernel::Scalar,
        _ => Kernel::best(),
    }
}

#[divan::bench(args = ["fp32", "int8"], sample_count = 10, sample_size = 1)]
fn clip_image(bencher: divan::Bencher, precision: &str) {
    let m = Manifest::load(&models_dir()).unwrap();
    let mut enc = ClipImageEncoder::load(&m, Precision::parse(precision).unwrap(), 1).unwrap();
    let s = m.clip().unwrap().image_size as usize;
    let input = vec![0.1f32; 3 * s * s];
    let (mut p, mut d) = (vec![0.0; enc.dim], vec![0.0; enc.grid * enc.grid * enc.dim]);
    bencher.bench_local(|| enc.run_into(&input, &mut p, &mut d).unwrap());
}

#[divan::bench(args = ["fp32", "int8"], sample_count = 20, sample_size = 1)]
fn clip_text(bencher: divan::Bencher, precision: &str) {
    let m = Manifest::load(&models_dir()).unwrap();
    let tok = load_tokenizer(&m).unwrap();
    let mut enc = ClipTextEncoder::load(&m, Precision::parse(precision).unwrap()).unwrap();
    bencher.bench_local(|| {
        let t = tok.tokenize(divan::black_box(
            "A medical breast ultrasound showing a hypoechoic tumor.",
        ));
        enc.run(&t.ids).unwrap()
    });
}

#[divan::bench]
fn tokenize(bencher: divan::Bencher) {
    let m = Manifest::load(&models_dir()).unwrap();
    let tok = load_tokenizer(&m).unwrap();
    bencher.bench_local(|| {
        tok.tokenize(divan::black_box(
            "A medical breast ultrasound showing a hypoechoic tumor.",
        ))
    });
}

#[divan::bench(args = ["scalar", "simd"])]
fn kernel_patch_similarity(bencher: divan::Bencher, k: &str) {
    let (n, d) = (196, 512);
    let rows: Vec<f32> = (0..n * d)
        .map(|i| ((i * 7919) % 1000) as f32 * 1e-3)
        .collect();
    let v: Vec<f32> = (0..d).map(|i| (i % 13) as f32 * 0.1).collect();
    let mut out = vec![0.0; n];
    bencher.bench_local(|| kernels::dot_rows(kernel(k), divan::black_box(&rows), &v, &mut out));
}

#[divan::bench(args = ["scalar", "simd"])]
fn kernel_upsample_14_to_busi(bencher: divan::Bencher, k: &str) {
    let src: Vec<f32> = (0..196).map(|i| (i % 17) as f32 / 17.0).collect();
    let (mut dst, mut tmp) = (vec![0.0; 562 * 471], Vec::new());
    bencher.bench_local(|| {
        kernels::upsample_bilinear(
            kernel(k),
            divan::black_box(&src),
            14,
            14,
            &mut dst,
            562,
            471,
            &mut tmp,
        )
    });
}

fn busi_sized_map() -> Vec<f32> {
    (0..562 * 471).map(|i| ((i * 31) % 997) as f32).collect()
}

#[divan::bench(args = ["scalar", "simd"])]
fn kernel_normalize(bencher: divan::Bencher, k: &str) {
    let base = busi_sized_map();
    let mut x = base.clone();
    bencher.bench_local(|| {
        x.copy_from_slice(&base);
        kernels::normalize_01(kernel(k), &mut x);
    });
}

#[divan::bench(args = ["scalar", "simd"])]
fn kernel_threshold(bencher: divan::Bencher, k: &str) {
    let x = busi_sized_map();
    let mut m = vec![0u8; x.len()];
    bencher.bench_local(|| kernels::threshold(kernel(k), divan::black_box(&x), 500.0, &mut m));
}

#[divan::bench(args = ["similarity", "scorecam16"], sample_count = 5, sample_size = 1)]
fn saliency(bencher: divan::Bencher, method: &str) {
    let m = Manifest::load(&models_dir()).unwrap();
    let method = if method == "similarity" {
        Method::Similarity
    } else {
        Method::ScoreCam { k: 16 }
    };
    let mut eng = SaliencyEngine::load(&m, Precision::Fp32, 8).unwrap();
    let d = m.clip().unwrap().embed_dim as usize;
    let text: Vec<f32> = (0..d)
        .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 } / (d as f32).sqrt())
        .collect();
    let f = frame();
    bencher.bench_local(|| {
        eng.compute(&f, &text, method, &mut Timings::default())
            .unwrap()
    });
}

#[divan::bench(args = ["v1", "v2", "v2-points"])]
fn prompt_rules(bencher: divan::Bencher, rule: &str) {
    let m = Manifest::load(&models_dir()).unwrap();
    let mut eng = SaliencyEngine::load(&m, Precision::Fp32, 1).unwrap();
    let d = m.clip().unwrap().embed_dim as usize;
    let text: Vec<f32> = (0..d)
        .map(|i| if i % 3 == 0 { 1.0 } else { -0.5 })
        .collect();
    let map = eng
        .compute(&frame(), &text, Method::Similarity, &mut Timings::default())
        .unwrap();
    let rule = Rule::parse(rule).unwrap();
    let (mut mb, mut lb) = (Vec::new(), Vec::new());
    bencher.bench_local(|| prompts_from(divan::black_box(&map), &rule, &mut mb, &mut lb));
}
