//! CLIP on tract against onnxruntime on the committed tiny fixture (synthetic weights: numerics,
//! not accuracy). The Rust preprocessing (src/preprocess.rs `clip_input_into`) feeds tract; the
//! references were computed by onnxruntime on quantize/clip_prep.py's preprocessing of the same
//! image, so this checks both. Tolerances as in sam_parity.rs: fp32 max |diff| <= 1e-3 x max |ref|
//! (the preprocessing rounds 0..255 constants differently by ~1e-6) and cosine >= 0.99999; int8
//! within cosine 0.999 of onnxruntime's int8.

mod common;

use common::{compare, models_tiny, read_f32};
use sonomask::input::image_io::load_rgb;
use sonomask::model::{ClipImageEncoder, ClipTextEncoder, Manifest, Precision};
use sonomask::preprocess::{Normalize, clip_input_into};

fn tol(p: Precision) -> (f32, f64) {
    match p {
        Precision::Fp32 => (1e-3, 0.99999),
        Precision::Int8 => (0.05, 0.999),
    }
}

fn check(what: &str, got: &[f32], want: &[f32], p: Precision) {
    let (d, m, cos) = compare(got, want);
    let (rel, min_cos) = tol(p);
    println!("{what} {p:?}: max |diff| {d:.2e} (max |ref| {m:.3}), cosine {cos:.7}");
    assert!(d <= rel * m, "{what} {p:?}: max |diff| {d} > {rel} x {m}");
    assert!(cos >= min_cos, "{what} {p:?}: cosine {cos} < {min_cos}");
}

#[test]
fn image_encoder_matches_onnxruntime() {
    let m = Manifest::load(&models_tiny()).unwrap();
    let c = m.clip().unwrap().clone();
    let frame = load_rgb(&models_tiny().join("input.png")).unwrap();
    let s = c.image_size as usize;
    let mut input = vec![0.0; 3 * s * s];
    clip_input_into(
        &frame,
        c.image_size,
        &Normalize {
            mean: c.pixel_mean,
            std: c.pixel_std,
        },
        &mut input,
    );
    for p in [Precision::Fp32, Precision::Int8] {
        let mut enc = ClipImageEncoder::load(&m, p, 3).unwrap();
        let (d, g) = (enc.dim, enc.grid);
        let (mut pooled, mut patches) = (vec![0.0; d], vec![0.0; g * g * d]);
        enc.run_into(&input, &mut pooled, &mut patches).unwrap();
        check(
            "pooled",
            &pooled,
            &read_f32(&models_tiny().join(format!("clip_ref_{}_pooled.f32", p.as_str()))),
            p,
        );
        check(
            "patches",
            &patches,
            &read_f32(&models_tiny().join(format!("clip_ref_{}_patches.f32", p.as_str()))),
            p,
        );
        // 5 frames: one batch of 3, then 2 single frames; all give the single-frame result
        let batch: Vec<f32> = (0..5).flat_map(|_| input.iter().copied()).collect();
        let mut out = vec![0.0; 5 * d];
        enc.run_batch(&batch, 5, &mut out).unwrap();
        for i in 0..5 {
            let (diff, _, cos) = compare(&out[i * d..(i + 1) * d], &pooled);
            assert!(diff < 1e-4 && cos > 0.99999, "batch item {i}: {diff} {cos}");
        }
    }
}

#[test]
fn text_encoder_matches_onnxruntime() {
    let m = Manifest::load(&models_tiny()).unwrap();
    let cases: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(models_tiny().join("clip_cases.json")).unwrap(),
    )
    .unwrap();
    let tokens = cases["tokens"].as_array().unwrap();
    for p in [Precision::Fp32, Precision::Int8] {
        let mut enc = ClipTextEncoder::load(&m, p).unwrap();
        let want = read_f32(&models_tiny().join(format!("clip_ref_{}_text.f32", p.as_str())));
        let d = enc.dim;
        for (i, row) in tokens.iter().enumerate() {
            let ids: Vec<i64> = row
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap())
                .collect();
            let got = enc.run(&ids).unwrap();
            check(&format!("text {i}"), &got, &want[i * d..(i + 1) * d], p);
        }
    }
}

#[test]
fn tokens_from_the_rust_tokenizer_are_the_fixture_tokens() {
    let Some(vocab) = common::clip_vocab() else {
        return;
    };
    let tok = sonomask::text::Tokenizer::from_gz_file(&vocab, 77).unwrap();
    let cases: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(models_tiny().join("clip_cases.json")).unwrap(),
    )
    .unwrap();
    for (t, row) in cases["texts"]
        .as_array()
        .unwrap()
        .iter()
        .zip(cases["tokens"].as_array().unwrap())
    {
        let want: Vec<i64> = row
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        assert_eq!(tok.tokenize(t.as_str().unwrap()).ids, want, "{t}");
    }
}

#[test]
fn wrong_model_for_the_role_names_file_and_tensor() {
    // the SAM decoder file where the CLIP text model should be
    let dir = common::scratch_models("clip-contract");
    std::fs::copy(
        models_tiny().join("sam_decoder.fp32.onnx"),
        dir.join("clip_text.fp32.onnx"),
    )
    .unwrap();
    let text = std::fs::read_to_string(dir.join("manifest.toml")).unwrap();
    let m0 = Manifest::load(&dir).unwrap();
    let e = m0
        .entry(sonomask::model::Role::ClipText, Precision::Fp32)
        .unwrap()
        .clone();
    let bytes = std::fs::read(dir.join("clip_text.fp32.onnx")).unwrap();
    let text = text
        .replace(&e.sha256, &sonomask::model::manifest::sha256_hex(&bytes))
        .replace(
            &format!("bytes = {}", e.bytes),
            &format!("bytes = {}", bytes.len()),
        );
    std::fs::write(dir.join("manifest.toml"), text).unwrap();
    let m = Manifest::load(&dir).unwrap();
    let err = format!(
        "{:#}",
        ClipTextEncoder::load(&m, Precision::Fp32).err().unwrap()
    );
    assert!(
        err.contains("clip_text.fp32.onnx") && err.contains("tokens"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
