//! Encoders of two model families (each with its own input recipe and size) planned in one
//! process and run interleaved, round after round: the check that LiteMedSAM's encoder (256 px,
//! 1x1 patch embedding) is not slower than MobileSAM's (1024 px, 3x3 stride-2 patch embedding)
//! on the same machine and threads, both on sonomask's own operators.
//!
//! Run: `A=models B=models_mobilesam ROUNDS=9 THREADS=1 cargo bench --bench family_encoders`
//! (`OUT=models_mobilesam quantize/build_models.sh --synthetic`, or just its fp32 export, makes
//! B; speed does not depend on weight values).

use std::path::{Path, PathBuf};
use std::time::Instant;

use sonomask::input::image_io::load_rgb;
use sonomask::model::{Manifest, Precision, SamEncoder};
use sonomask::preprocess::sam_input_into;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    sonomask::heap::keep_freed_memory();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = |k: &str, d: &str| root.join(std::env::var(k).unwrap_or_else(|_| d.into()));
    let dirs: [PathBuf; 2] = [dir("A", "models"), dir("B", "models_mobilesam")];
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    let threads: usize = std::env::var("THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    sonomask::cli::common::set_threads(threads).unwrap();
    let frame =
        load_rgb(&root.join("../shared/data/busi/images/benign (1).png")).expect("../shared");
    let mut runs = Vec::new();
    for d in &dirs {
        let m = Manifest::load(d).unwrap_or_else(|e| panic!("{}: {e:#}", d.display()));
        let n = m.sam.image_size as usize;
        let mut input = vec![0f32; 3 * n * n];
        sam_input_into(&frame, &m.sam.recipe(), &mut input);
        let enc = SamEncoder::load(&m, Precision::Fp32).unwrap();
        let label = format!(
            "{} ({} weights, {n} px)",
            m.sam.family.as_str(),
            m.sam.weights_label()
        );
        runs.push((label, enc, input, Vec::new()));
    }
    for (_, enc, input, _) in runs.iter_mut() {
        enc.run(input).unwrap(); // warm-up
    }
    for _ in 0..rounds {
        for (_, enc, input, times) in runs.iter_mut() {
            let t = Instant::now();
            enc.run(input).unwrap();
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let meds: Vec<f64> = runs.iter().map(|r| median(r.3.clone())).collect();
    for ((label, ..), med) in runs.iter().zip(&meds) {
        println!(
            "{label}: encoder median {med:.1} ms over {rounds} interleaved rounds, {threads} thread(s)"
        );
    }
    println!("{} / {}: {:.3}x", runs[0].0, runs[1].0, meds[0] / meds[1]);
}
