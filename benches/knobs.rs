//! tract's scopable kernel-selection knobs on the MobileSAM encoder and decoder: each setting
//! is planned in the same process (a `KnobScope` around optimisation) and the settings run
//! interleaved, round after round, so that the slow and fast spells of a shared machine fall on
//! all of them alike. Prints medians, the ratio against tract's defaults, and the largest output
//! difference against the default plan (a knob must not change the function).
//!
//! Run (after quantize/build_models.sh): `cargo bench --bench knobs` (ROUNDS=N, default 5).

use std::path::Path;
use std::time::Instant;

use sonomask::input::image_io::load_rgb;
use sonomask::model::onnx::{self, f32s, parse_role};
use sonomask::model::sam::{decoder_contract, encoder_contract};
use sonomask::model::{Manifest, Precision, Role};
use sonomask::preprocess::sam_input_into;
use sonomask::prompting::prompt::{BoxPrompt, Prompt};
use tract_core::knobs::KnobScope;
use tract_onnx::prelude::*;

type Setting = (&'static str, Vec<(&'static str, &'static str)>);

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn bench(
    name: &str,
    settings: &[Setting],
    plans: Vec<onnx::Plan>,
    inputs: TVec<TValue>,
    rounds: usize,
) {
    let mut states: Vec<_> = plans.iter().map(|p| onnx::spawn(p).unwrap()).collect();
    let file = Path::new(name);
    let reference: Vec<f32> = f32s(&onnx::run(&mut states[0], inputs.clone(), file).unwrap()[0])
        .unwrap()
        .to_vec();
    let mut diffs = Vec::new();
    for s in states.iter_mut() {
        let out = onnx::run(s, inputs.clone(), file).unwrap(); // also the warm-up
        let o = f32s(&out[0]).unwrap();
        diffs.push(
            o.iter()
                .zip(&reference)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max),
        );
    }
    let mut times = vec![Vec::new(); states.len()];
    for _ in 0..rounds {
        for (i, s) in states.iter_mut().enumerate() {
            let t = Instant::now();
            onnx::run(s, inputs.clone(), file).unwrap();
            times[i].push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    println!("\n{name}: {rounds} interleaved rounds, medians\n");
    println!(
        "| setting | median ms | vs tract default | max |out - default out| |\n|---|---|---|---|"
    );
    let base = median(times[0].clone());
    for ((label, _), (t, d)) in settings.iter().zip(times.into_iter().zip(diffs)) {
        let m = median(t);
        println!("| {label} | {m:.1} | {:.3}x | {d:.2e} |", base / m);
    }
}

fn plan_all(parsed: &onnx::Parsed, settings: &[Setting], shapes: &[Vec<usize>]) -> Vec<onnx::Plan> {
    settings
        .iter()
        .map(|(_, kv)| {
            let scope = KnobScope::new(kv.iter().copied()).unwrap();
            scope.enter(|| parsed.plan(shapes)).unwrap()
        })
        .collect()
}

fn main() {
    sonomask::heap::keep_freed_memory();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let m = Manifest::load(&root.join("models")).expect("models/ (quantize/build_models.sh)");
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let frame =
        load_rgb(&root.join("../shared/data/busi/images/benign (1).png")).expect("../shared");
    let s = &m.sam;
    let n = s.image_size as usize;
    let mut input = vec![0f32; 3 * n * n];
    let g = sam_input_into(&frame, &s.recipe(), &mut input);

    let enc_settings: Vec<Setting> = vec![
        ("tract defaults", vec![]),
        (
            "TRACT_DISABLE_DIRECT_SPATIAL=1",
            vec![("TRACT_DISABLE_DIRECT_SPATIAL", "1")],
        ),
        (
            "TRACT_ENABLE_BLOCKED_CONV=1",
            vec![("TRACT_ENABLE_BLOCKED_CONV", "1")],
        ),
        (
            "TRACT_LAZY_IM2COL_MIN_KERNEL=1000 (eager im2col)",
            vec![("TRACT_LAZY_IM2COL_MIN_KERNEL", "1000")],
        ),
        (
            "TRACT_LAZY_IM2COL_MAX_EAGER_BYTES=64M",
            vec![("TRACT_LAZY_IM2COL_MAX_EAGER_BYTES", "67108864")],
        ),
    ];
    let parsed = parse_role(&m, Role::SamEncoder, Precision::Fp32, encoder_contract(s)).unwrap();
    let plans = plan_all(&parsed, &enc_settings, &[vec![1, 3, n, n]]);
    let x = Tensor::from_shape(&[1, 3, n, n], &input)
        .unwrap()
        .into_tvalue();
    bench(
        "sam_encoder.fp32",
        &enc_settings,
        plans.clone(),
        tvec!(x.clone()),
        rounds,
    );

    // the decoder on the default plan's embedding, a box prompt
    let mut st = onnx::spawn(&plans[0]).unwrap();
    let emb = onnx::run(&mut st, tvec!(x), Path::new("enc"))
        .unwrap()
        .remove(0);
    let dec_settings: Vec<Setting> = vec![
        ("tract defaults", vec![]),
        (
            "TRACT_DISABLE_DEPTHWISE_DECONV=1",
            vec![("TRACT_DISABLE_DEPTHWISE_DECONV", "1")],
        ),
        (
            "TRACT_DISABLE_DIRECT_SPATIAL=1",
            vec![("TRACT_DISABLE_DIRECT_SPATIAL", "1")],
        ),
        (
            "TRACT_ENABLE_BLOCKED_CONV=1",
            vec![("TRACT_ENABLE_BLOCKED_CONV", "1")],
        ),
    ];
    let (c, e, l) = (
        s.embed_dim as usize,
        s.embedding_size as usize,
        s.low_res_size as usize,
    );
    let parsed = parse_role(&m, Role::SamDecoder, Precision::Fp32, decoder_contract(s)).unwrap();
    let plans = plan_all(
        &parsed,
        &dec_settings,
        &[
            vec![1, c, e, e],
            vec![1, 2, 2],
            vec![1, 2],
            vec![1, 1, l, l],
            vec![1],
        ],
    );
    let (w, h) = (frame.width as f32, frame.height as f32);
    let p = Prompt {
        bbox: Some(BoxPrompt {
            x0: 0.3 * w,
            y0: 0.3 * h,
            x1: 0.6 * w,
            y1: 0.6 * h,
        }),
        points: vec![],
    };
    let (mut co, mut la) = (Vec::new(), Vec::new());
    p.encode(&g, &mut co, &mut la);
    let inputs = tvec!(
        emb,
        Tensor::from_shape(&[1, 2, 2], &co).unwrap().into_tvalue(),
        Tensor::from_shape(&[1, 2], &la).unwrap().into_tvalue(),
        Tensor::zero::<f32>(&[1, 1, l, l]).unwrap().into_tvalue(),
        Tensor::zero::<f32>(&[1]).unwrap().into_tvalue()
    );
    bench("sam_decoder.fp32", &dec_settings, plans, inputs, rounds * 4);
}
