//! Where the MobileSAM encoder's time goes in tract, per operator type, fp32 against int8, on
//! one real BUSI frame (measured in the same run). For the speed work: it names the operators
//! that make tract's int8 slow on a core without a dot-product instruction.
//!
//! Run (after quantize/build_models.sh): `cargo bench --bench op_profile` (prints markdown).
//! SONOMASK_BENCH_MODELS=DIR picks the models (default models/). FP32_ONLY=1 profiles the fp32
//! encoder alone (int8 takes over a minute per pass on x86), its share per operator.
//! NODES=N (with FP32_ONLY=1) also lists the N slowest nodes with their multiply-add rate
//! (tract's own cost model), which points at the products that run far below the machine's rate.
//! THREADS=N (with FP32_ONLY=1) profiles under tract's N-thread executor (default 1); WARMUP=N
//! sets the passes run before the profiled one (default 3: the heap needs a few to settle).
//! DECODER=1 profiles the fp32 decoder instead (a box prompt on the frame's embedding), per-node
//! times summed over RUNS=N passes (default 20) and divided by N.
//! PRECISION=int8 (with DECODER=1 or FP32_ONLY=1) profiles that precision's model instead of fp32
//! (the name FP32_ONLY kept: it means one precision, no comparison).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use sonomask::input::image_io::load_rgb;
use sonomask::model::onnx::{NodeTime, by_op};
use sonomask::model::{Manifest, Precision, SamDecoder, SamEncoder};
use sonomask::preprocess::sam_input_into;

/// Operator type -> (total ms, nodes).
type ByOp = HashMap<String, (f64, usize)>;

fn main() {
    sonomask::heap::keep_freed_memory();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::var("SONOMASK_BENCH_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("models"));
    let manifest =
        Manifest::load(&dir).unwrap_or_else(|e| panic!("{e:#} (run quantize/build_models.sh)"));
    let frame = load_rgb(&root.join("../shared/data/busi/images/benign (1).png"))
        .expect("../shared/data is needed");
    let s = &manifest.sam;
    let mut input = vec![0f32; 3 * (s.image_size * s.image_size) as usize];
    sam_input_into(&frame, &s.recipe(), &mut input);
    let env = |k: &str, d: usize| -> usize {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let one = match std::env::var("PRECISION").as_deref() {
        Ok("int8") => Precision::Int8,
        _ => Precision::Fp32,
    };
    if std::env::var("DECODER").as_deref() == Ok("1") {
        sonomask::cli::common::set_threads(env("THREADS", 1)).unwrap();
        let emb = SamEncoder::load(&manifest, Precision::Fp32)
            .and_then(|mut e| e.run(&input))
            .unwrap();
        let mut dec = SamDecoder::load(&manifest, one).unwrap();
        let (coords, labels) = ([300f32, 300., 600., 600.], [2f32, 3.]);
        for _ in 0..env("WARMUP", 5) {
            dec.run(&emb, &coords, &labels).unwrap();
        }
        let runs = env("RUNS", 20).max(1);
        let mut nodes = dec.run_profiled(&emb, &coords, &labels).unwrap();
        for _ in 1..runs {
            let more = dec.run_profiled(&emb, &coords, &labels).unwrap();
            for (a, b) in nodes.iter_mut().zip(more) {
                a.ms += b.ms;
            }
        }
        nodes.iter_mut().for_each(|n| n.ms /= runs as f64);
        let prof = by_op(&nodes);
        let total: f64 = prof.iter().map(|x| x.1).sum();
        println!(
            "{} decoder (box) mean of {runs}: {total:.1} ms, synthetic weights {}\n",
            one.as_str(),
            s.synthetic
        );
        println!("| op | ms | nodes | share |\n|---|---|---|---|");
        for (k, ms, n) in prof.iter().take(20) {
            println!("| {k} | {ms:.2} | {n} | {:.1}% |", 100.0 * ms / total);
        }
        print_nodes(&nodes, env("NODES", 25), total);
        return;
    }
    if std::env::var("FP32_ONLY").as_deref() == Ok("1") {
        let threads = env("THREADS", 1);
        sonomask::cli::common::set_threads(threads).unwrap();
        let mut enc = SamEncoder::load(&manifest, one).unwrap();
        // Warm-up passes: the heap settles (freed blocks reused) after a few frames. They are
        // profiled runs too, so that the measured pass allocates as they did (a plain run
        // leaves another heap layout, and the profiled pass then faults fresh pages in).
        for _ in 0..env("WARMUP", 3) {
            enc.run_profiled(&input).unwrap();
        }
        let nodes = enc.run_profiled(&input).unwrap();
        let prof = by_op(&nodes);
        let total: f64 = prof.iter().map(|x| x.1).sum();
        let fma: f64 = nodes.iter().map(|n| n.fma).sum();
        println!(
            "{} encoder total {total:.0} ms, {:.1} G multiply-adds, {:.1} GFLOP/s (synthetic weights {})\n",
            one.as_str(),
            fma / 1e9,
            2.0 * fma / total / 1e6,
            s.synthetic
        );
        println!("| op | ms | nodes | share |\n|---|---|---|---|");
        for (k, ms, n) in prof.iter().take(16) {
            println!("| {k} | {ms:.1} | {n} | {:.1}% |", 100.0 * ms / total);
        }
        if let Some(k) = std::env::var("NODES").ok().and_then(|v| v.parse().ok()) {
            print_nodes(&nodes, k, total);
        }
        return;
    }
    let mut profiles: Vec<(Precision, ByOp, f64)> = Vec::new();
    for p in [Precision::Fp32, Precision::Int8] {
        let mut enc = SamEncoder::load(&manifest, p).unwrap();
        enc.run(&input).unwrap(); // warm-up: first-run allocations out of the figures
        let prof = by_op(&enc.run_profiled(&input).unwrap());
        let total: f64 = prof.iter().map(|x| x.1).sum();
        profiles.push((
            p,
            prof.into_iter().map(|(k, ms, n)| (k, (ms, n))).collect(),
            total,
        ));
    }
    let (f, i) = (&profiles[0], &profiles[1]);
    println!(
        "Encoder total: fp32 {:.0} ms, int8 {:.0} ms ({:.1}x), synthetic weights {}",
        f.2,
        i.2,
        i.2 / f.2,
        s.synthetic
    );
    println!();
    println!("| op | fp32 ms | fp32 nodes | int8 ms | int8 nodes | int8 share |");
    println!("|---|---|---|---|---|---|");
    let mut names: Vec<&String> = f.1.keys().chain(i.1.keys()).collect();
    names.sort();
    names.dedup();
    names.sort_by(|a, b| {
        let t = |n: &String| {
            i.1.get(n).map(|x| x.0).unwrap_or(0.0) + f.1.get(n).map(|x| x.0).unwrap_or(0.0)
        };
        t(b).total_cmp(&t(a))
    });
    for n in names.iter().take(25) {
        let (fm, fc) = f.1.get(*n).copied().unwrap_or((0.0, 0));
        let (im, ic) = i.1.get(*n).copied().unwrap_or((0.0, 0));
        println!(
            "| {n} | {fm:.1} | {fc} | {im:.1} | {ic} | {:.1}% |",
            100.0 * im / i.2
        );
    }
}

/// The `k` slowest nodes, with their multiply-add rate where tract counts one.
fn print_nodes(nodes: &[NodeTime], k: usize, total: f64) {
    let mut v: Vec<&NodeTime> = nodes.iter().collect();
    v.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    println!("\n| node | op | output | ms | share | GFLOP/s |\n|---|---|---|---|---|---|");
    for n in v.into_iter().take(k) {
        let rate = if n.fma > 0.0 {
            format!("{:.1}", 2.0 * n.fma / n.ms / 1e6)
        } else {
            "-".into()
        };
        println!(
            "| {} | {} | {:?} | {:.1} | {:.1}% | {rate} |",
            n.name,
            n.op,
            n.out_shape,
            n.ms,
            100.0 * n.ms / total
        );
    }
}
