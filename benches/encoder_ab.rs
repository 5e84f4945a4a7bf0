//! Two MobileSAM encoder files in tract, planned in one process and run interleaved round after
//! round (the shared machine's slow spells hit both alike): the check for an export-time rewrite
//! (quantize/graph_rewrites.py) that must keep the function and should save time.
//!
//! Run: `A=models/sam_encoder.fp32.onnx B=/tmp/rewritten.onnx ROUNDS=9 cargo bench --bench encoder_ab`
//!
//! Without `B`, file A is planned twice, with tract's stock operators (A) and with sonomask's
//! own operators (B, `crates/sonomask-ops`): the check for an operator replacement.
//! `OFF=kind[,kind]` (without `B`) plans A with own operators too, but without those kinds
//! (`SONOMASK_OWN_OPS_OFF`, see `fast_ops`): the check for one replacement on its own.
//! `THREADS=N` runs both under tract's N-thread executor (default 1).
//! `DECODER=1` (without `B`) compares two decoder plans the same way instead (stock against own
//! operators, or own less `OFF`), on a box prompt over the frame's embedding, `ROUNDS x 10` calls
//! each.

use std::path::{Path, PathBuf};
use std::time::Instant;

use sonomask::input::image_io::load_rgb;
use sonomask::model::Manifest;
use sonomask::model::fast_ops::STOCK_OPS_ENV;
use sonomask::model::fast_ops::{Fusions, OWN_OPS_OFF_ENV};
use sonomask::model::onnx::{self, f32s};
use sonomask::model::sam::{ENCODER_KNOBS, encoder_contract};
use sonomask::model::{Embedding, Precision, SamDecoder};
use sonomask::preprocess::sam_input_into;
use tract_onnx::prelude::*;

/// Largest `|a - b|` of two outputs.
fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    sonomask::heap::keep_freed_memory();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let m = Manifest::load(&root.join("models")).expect("models/ (quantize/build_models.sh)");
    let s = &m.sam;
    let a = PathBuf::from(std::env::var("A").expect("A=... [B=...] encoder files"));
    let own_ops = std::env::var("B").is_err();
    let files: Vec<PathBuf> = vec![
        a.clone(),
        std::env::var("B").map(PathBuf::from).unwrap_or(a),
    ];
    let labels = if own_ops && std::env::var("OFF").is_ok() {
        ["own ops less OFF", "own ops"]
    } else if own_ops {
        ["stock ops", "own ops"]
    } else {
        ["", ""]
    };
    let threads: usize = std::env::var("THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    sonomask::cli::common::set_threads(threads).unwrap();
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    let frame =
        load_rgb(&root.join("../shared/data/busi/images/benign (1).png")).expect("../shared");
    let n = s.image_size as usize;
    let mut input = vec![0f32; 3 * n * n];
    sam_input_into(&frame, &s.recipe(), &mut input);
    let x = Tensor::from_shape(&[1, 3, n, n], &input)
        .unwrap()
        .into_tvalue();
    let off = std::env::var("OFF").ok().filter(|_| own_ops);
    let mut states = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let bytes = std::fs::read(f).unwrap();
        let fusions = match (&off, i) {
            (Some(kinds), 0) => {
                Fusions::without(&kinds.split(',').collect::<Vec<_>>()).expect("OFF")
            }
            _ => Fusions::all(),
        };
        let parsed = onnx::parse(f, &bytes, encoder_contract(s))
            .unwrap()
            .with_fusions(fusions)
            .with_stock_ops(own_ops && i == 0 && off.is_none());
        states.push(
            onnx::spawn(
                &parsed
                    .plan_with_knobs(&[vec![1, 3, n, n]], ENCODER_KNOBS)
                    .unwrap(),
            )
            .unwrap(),
        );
    }
    let outs: Vec<Vec<f32>> = states
        .iter_mut()
        .zip(&files)
        .map(|(st, f)| {
            f32s(&onnx::run(st, tvec!(x.clone()), f).unwrap()[0])
                .unwrap()
                .to_vec()
        })
        .collect();
    let diff = max_abs_diff(&outs[0], &outs[1]);
    if own_ops && std::env::var("DECODER").as_deref() == Ok("1") {
        let e = s.embedding_size as usize;
        let emb = Embedding(
            Tensor::from_shape(&[1, s.embed_dim as usize, e, e], &outs[1])
                .unwrap()
                .into_tvalue(),
        );
        decoder_ab(&m, &emb, off.as_deref(), rounds * 10, labels);
        return;
    }
    let mut times = [Vec::new(), Vec::new()];
    for _ in 0..rounds {
        for (i, st) in states.iter_mut().enumerate() {
            let t = Instant::now();
            onnx::run(st, tvec!(x.clone()), &files[i]).unwrap();
            times[i].push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let (a, b) = (median(times[0].clone()), median(times[1].clone()));
    println!("| file | median ms ({rounds} interleaved rounds, {threads} thread(s)) |\n|---|---|");
    println!(
        "| A {} {} | {a:.1} |\n| B {} {} | {b:.1} |",
        files[0].display(),
        labels[0],
        files[1].display(),
        labels[1]
    );
    println!(
        "\nB is {:.3}x the speed of A; max |B - A| on the embedding {diff:.2e}",
        a / b
    );
}

/// Two fp32 decoders (A: stock operators, or own less `off`; B: own operators) on one
/// embedding and box prompt, `calls` interleaved calls each.
fn decoder_ab(m: &Manifest, emb: &Embedding, off: Option<&str>, calls: usize, labels: [&str; 2]) {
    let mut decs = Vec::new();
    for i in 0..2 {
        // SAFETY (set_var): single-threaded here; the variables are read while planning only.
        unsafe {
            std::env::remove_var(OWN_OPS_OFF_ENV);
            std::env::remove_var(STOCK_OPS_ENV);
            match (off, i) {
                (Some(kinds), 0) => std::env::set_var(OWN_OPS_OFF_ENV, kinds),
                (None, 0) => std::env::set_var(STOCK_OPS_ENV, "1"),
                _ => {}
            }
        }
        decs.push(SamDecoder::load(m, Precision::Fp32).unwrap());
    }
    unsafe {
        std::env::remove_var(OWN_OPS_OFF_ENV);
        std::env::remove_var(STOCK_OPS_ENV);
    }
    let (coords, labels_in) = ([300f32, 300., 600., 600.], [2f32, 3.]);
    let outs: Vec<Vec<f32>> = decs
        .iter_mut()
        .map(|d| {
            let o = d.run(emb, &coords, &labels_in).unwrap();
            f32s(&o.low_res).unwrap().to_vec()
        })
        .collect();
    let diff = max_abs_diff(&outs[0], &outs[1]);
    let mut times = [Vec::new(), Vec::new()];
    for _ in 0..calls {
        for (i, d) in decs.iter_mut().enumerate() {
            let t = Instant::now();
            d.run(emb, &coords, &labels_in).unwrap();
            times[i].push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let (a, b) = (median(times[0].clone()), median(times[1].clone()));
    println!("| decoder | median ms ({calls} interleaved calls) |\n|---|---|");
    println!("| A {} | {a:.2} |\n| B {} | {b:.2} |", labels[0], labels[1]);
    println!(
        "\nB is {:.3}x the speed of A; max |B - A| on the low-res masks {diff:.2e}",
        a / b
    );
}
