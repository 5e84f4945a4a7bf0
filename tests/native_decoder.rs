//! The native mask decoder (everything mode's, src/model/native_decoder.rs) against the tract
//! decoder it replaces there, on the same fp32 ONNX file and embedding, for point, padded
//! point, box and box+point prompts, on every kernel path this CPU has.
//!
//! Tolerance. Both compute the same fp32 function; the native one in another order (prompt-shared
//! work hoisted, image-token products reassociated through `C x (heads * T)` matrices, another
//! sgemm), so outputs differ at rounding level: low-res logits within 1e-5 x max |logit| (measured: 1.2e-6 on the real LiteMedSAM) with
//! cosine >= 0.99999 (the fp32 bar of tests/sam_parity.rs), predicted IoUs within 1e-5 (measured 5e-7).
//! Runs on the committed tiny fixtures (synthetic weights: numerics only) and, when
//! `quantize/build_models.sh` has built it, the real LiteMedSAM in `models/`.

mod common;

use common::{compare, models_tiny, read_f32};
use sonomask::model::native_decoder::{self, Scratch};
use sonomask::model::{Embedding, Manifest, Precision, SamDecoder, SamEncoder};
use sonomask::pipelines::everything::{EverythingOptions, GridDecoder, GridPrompts, generate};
use sonomask::pipelines::segment::SamSession;
use sonomask::simd::Kernel;
use sonomask::timing::Timings;
use std::path::{Path, PathBuf};
use tract_onnx::prelude::*;

/// `(coords, labels)` in the model input frame of side `s`, as `Prompt::encode` writes them.
fn prompts(s: f32) -> Vec<(&'static str, Vec<f32>, Vec<f32>)> {
    let p = |x: f32, y: f32| (x * s, y * s);
    let (a, b, c, d) = (p(0.3, 0.4), p(0.7, 0.8), p(0.5, 0.5), p(0.06, 0.94));
    vec![
        ("point+pad", vec![c.0, c.1, 0.0, 0.0], vec![1.0, -1.0]),
        (
            "corner point+pad",
            vec![d.0, d.1, 0.0, 0.0],
            vec![1.0, -1.0],
        ),
        (
            "background point+pad",
            vec![a.0, a.1, 0.0, 0.0],
            vec![0.0, -1.0],
        ),
        ("box", vec![a.0, a.1, b.0, b.1], vec![2.0, 3.0]),
        (
            "box+points",
            vec![a.0, a.1, b.0, b.1, c.0, c.1, d.0, d.1],
            vec![2.0, 3.0, 1.0, 0.0],
        ),
    ]
}

fn check_dir(dir: &Path, embedding: Option<Vec<f32>>, kernels: &[Kernel]) {
    let manifest = Manifest::load(dir).unwrap();
    let s = &manifest.sam;
    let (c, e, l) = (
        s.embed_dim as usize,
        s.embedding_size as usize,
        s.low_res_size as usize,
    );
    let emb = embedding.unwrap_or_else(|| read_f32(&dir.join("ref_fp32_embedding.f32")));
    let mut tract = SamDecoder::load(&manifest, Precision::Fp32).unwrap();
    let tv = Embedding(
        Tensor::from_shape(&[1, c, e, e], &emb)
            .unwrap()
            .into_tvalue(),
    );
    let mut ran = Vec::new();
    // every kernel path with the factored attentions, and the best one without them (every
    // attention dense: the path of a decoder that is not SAM's two layers)
    let runs = kernels.iter().map(|&k| (k, false));
    for (k, dense) in runs.chain([(Kernel::best(), true)]) {
        let mut native = native_decoder::load(&manifest, k).unwrap();
        if dense {
            native = native.unfactored();
        }
        assert_eq!(native.mask_count(), 4);
        let frame = native.prepare(&emb).unwrap();
        let mut scratch = Scratch::default();
        let mut masks = Vec::new();
        for (name, coords, labels) in prompts(s.image_size as f32) {
            let want = tract.run(&tv, &coords, &labels).unwrap();
            let tp = native
                .tokens(&frame, &coords, &labels, &mut scratch)
                .unwrap();
            let iou_diff = tp
                .iou
                .iter()
                .zip(want.iou)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            native.masks(&tp, &mut scratch, &mut masks);
            let want_masks = &sonomask::model::onnx::f32s(&want.low_res).unwrap()[..4 * l * l];
            let (maxd, maxref, cos) = compare(&masks, want_masks);
            eprintln!(
                "{} {k:?}{} {name}: iou max|diff| {iou_diff:.2e}; logits max|diff| {maxd:.3e} (max|ref| {maxref:.3e}), cosine {cos:.8}",
                dir.display(),
                if dense { " (dense)" } else { "" }
            );
            assert!(iou_diff <= 1e-5, "{name}: iou differs by {iou_diff}");
            assert!(
                maxd <= 1e-5 * maxref && cos >= 0.99999,
                "{name} ({k:?}): logits differ by {maxd} (max {maxref}), cosine {cos}"
            );
        }
        // A batch of prompts with the same number of points (the first layer's token side
        // stacked) gives each the values it gets alone, bit for bit.
        let all = prompts(s.image_size as f32);
        let same: Vec<&(&str, Vec<f32>, Vec<f32>)> =
            all.iter().filter(|p| p.2.len() == 2).collect();
        assert_eq!(same.len(), 4, "three points and a box");
        let batch: Vec<(&[f32], &[f32])> = same
            .iter()
            .map(|p| (p.1.as_slice(), p.2.as_slice()))
            .collect();
        let first = native.first_layer(&frame, &batch, &mut scratch).unwrap();
        for (i, (name, coords, labels)) in same.iter().enumerate() {
            let alone = native.tokens(&frame, coords, labels, &mut scratch).unwrap();
            let mut alone_masks = Vec::new();
            native.masks(&alone, &mut scratch, &mut alone_masks);
            let batched = native.tokens_from(&frame, &first, i, &mut scratch).unwrap();
            native.masks(&batched, &mut scratch, &mut masks);
            assert_eq!(batched.iou, alone.iou, "{name} ({k:?}): batched IoUs");
            assert_eq!(masks, alone_masks, "{name} ({k:?}): batched masks");
        }
        // a prompt outside the batch and a batch mixing point counts are refused
        assert!(native.tokens_from(&frame, &first, 4, &mut scratch).is_err());
        let mixed = [batch[0], (all[4].1.as_slice(), all[4].2.as_slice())];
        assert!(native.first_layer(&frame, &mixed, &mut scratch).is_err());
        ran.push(format!("{k:?}{}", if dense { " (dense)" } else { "" }));
    }
    eprintln!("kernel paths checked: {}", ran.join(", "));
}

#[test]
fn matches_tract_on_the_mobilesam_shaped_fixture() {
    check_dir(&models_tiny(), None, &Kernel::available());
}

#[test]
fn matches_tract_on_the_litemedsam_shaped_fixture() {
    check_dir(
        &common::fixtures().join("models_tiny_lite"),
        None,
        &Kernel::available(),
    );
}

#[test]
fn matches_tract_on_the_real_litemedsam() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models");
    let Ok(manifest) = Manifest::load(&dir) else {
        eprintln!("SKIPPED: no models/ (run quantize/build_models.sh for the real LiteMedSAM)");
        return;
    };
    let Some(shared) = common::shared() else {
        eprintln!("SKIPPED: ../shared/data is missing (needed for a real frame)");
        return;
    };
    let frame =
        sonomask::input::image_io::load_rgb(&shared.join("data/busi/images/benign (10).png"))
            .unwrap();
    let mut enc = SamEncoder::load(&manifest, Precision::Fp32).unwrap();
    let recipe = manifest.sam.recipe();
    let n = manifest.sam.image_size as usize;
    let mut input = vec![0f32; 3 * n * n];
    sonomask::preprocess::sam_input_into(&frame, &recipe, &mut input);
    let emb = enc.run(&input).unwrap();
    // the fastest path only: every path equals scalar bit for bit in the kernels' own tests,
    // and the scalar products on real sizes take minutes
    check_dir(
        &dir,
        Some(emb.as_slice().unwrap().to_vec()),
        &[Kernel::best()],
    );
}

#[test]
fn a_decoder_without_sam_module_names_is_refused_naming_the_file() {
    // the encoder file is a valid ONNX model but not a mask decoder
    let dir = models_tiny();
    let manifest = Manifest::load(&dir).unwrap();
    let file = dir.join("sam_encoder.fp32.onnx");
    let bytes = std::fs::read(&file).unwrap();
    let err =
        native_decoder::NativeDecoder::from_onnx(&file, &bytes, &manifest.sam, Kernel::Scalar)
            .unwrap_err()
            .to_string();
    assert!(err.contains("sam_encoder.fp32.onnx"), "{err}");
    assert!(err.contains("no "), "{err}");
    // and garbage bytes are an error, not a panic
    let err =
        native_decoder::NativeDecoder::from_onnx(&file, b"not onnx", &manifest.sam, Kernel::Scalar)
            .unwrap_err()
            .to_string();
    assert!(err.contains("sam_encoder.fp32.onnx"), "{err}");
}

/// Everything mode keeps the same candidates with either decoder: same funnel, same prompts,
/// boxes within a pixel per side, predicted IoUs within 1e-5, stabilities within 1e-3 and masks (after upscaling to the
/// frame) agreeing on at least 99.9% of their union.
fn same_candidates(models: &Path, image: &Path, o: EverythingOptions) -> usize {
    let mut sam = SamSession::load(models, Precision::Fp32).unwrap();
    let frame = sonomask::input::image_io::load_rgb(image).unwrap();
    let mut t = Timings::default();
    let enc = sam.encode(&frame, &mut t).unwrap();
    let run = |sam: &mut SamSession, d: GridDecoder, t: &mut Timings| {
        generate(sam, &enc, &EverythingOptions { decoder: d, ..o }, t).unwrap()
    };
    let (want, wf) = run(&mut sam, GridDecoder::Tract, &mut t);
    let (got, gf) = run(&mut sam, GridDecoder::Native, &mut t);
    assert!(
        sam.native_decoder(&mut t).is_some(),
        "the native decoder must have run"
    );
    eprintln!("{}: funnel tract {wf:?} / native {gf:?}", image.display());
    assert_eq!(gf, wf, "funnels differ");
    // the prompts spread over two workers (`--threads 2`) give the same candidates in order
    #[cfg(feature = "multithread-mm")]
    {
        use tract_linalg::multithread::{Executor, multithread_tract_scope};
        let (two, tf) = multithread_tract_scope(Executor::multithread(2), || {
            assert_eq!(sonomask::model::native_decoder::worker_threads(), 2);
            run(&mut sam, GridDecoder::Native, &mut t)
        });
        assert_eq!(tf, gf, "funnels differ with two workers");
        assert_eq!(two.len(), got.len());
        for (a, b) in two.iter().zip(&got) {
            assert_eq!((a.bbox, a.point, a.pred_iou), (b.bbox, b.point, b.pred_iou));
            assert_eq!(a.mask.data, b.mask.data, "two workers changed a mask");
        }
    }
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        // a box is the thresholded mask's extent: a boundary pixel flipped by rounding (which
        // the mask agreement below allows) may move a side by one pixel
        let (gb, wb) = (g.bbox, w.bbox);
        let sides = [(gb.0, wb.0), (gb.1, wb.1), (gb.2, wb.2), (gb.3, wb.3)];
        assert!(
            sides.iter().all(|&(a, b)| a.abs_diff(b) <= 1),
            "boxes {gb:?} vs {wb:?}"
        );
        assert_eq!(g.point, w.point);
        assert!(
            (g.pred_iou - w.pred_iou).abs() <= 1e-5,
            "{} vs {}",
            g.pred_iou,
            w.pred_iou
        );
        assert!((g.stability - w.stability).abs() <= 1e-3);
        let (mut inter, mut union) = (0usize, 0usize);
        for (a, b) in g.mask.data.iter().zip(&w.mask.data) {
            inter += (*a > 0 && *b > 0) as usize;
            union += (*a > 0 || *b > 0) as usize;
        }
        assert!(
            inter as f64 >= 0.999 * union as f64,
            "mask IoU {inter}/{union}"
        );
    }
    want.len()
}

#[test]
fn everything_mode_keeps_the_same_candidates_on_the_fixtures() {
    for dir in [models_tiny(), common::fixtures().join("models_tiny_lite")] {
        // synthetic weights: permissive filters (and no NMS, the synthetic masks overlap) so
        // that every candidate is compared
        let o = EverythingOptions {
            points_per_side: 6,
            pred_iou_thresh: -10.0,
            stability_thresh: 0.0,
            box_nms_thresh: 1.0,
            ..Default::default()
        };
        let n = same_candidates(&dir, &dir.join("input.png"), o);
        assert!(n >= 50, "{}: {n} candidates to compare", dir.display());
    }
}

#[test]
fn everything_mode_keeps_the_same_candidates_on_the_real_litemedsam() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models");
    if Manifest::load(&dir).is_err() {
        eprintln!("SKIPPED: no models/ (run quantize/build_models.sh for the real LiteMedSAM)");
        return;
    }
    let Some(shared) = common::shared() else {
        eprintln!("SKIPPED: ../shared/data is missing (needed for a real frame)");
        return;
    };
    // the box grid with the filters the CLI suggests for LiteMedSAM: real survivors
    let o = EverythingOptions {
        points_per_side: 8,
        grid: GridPrompts::Boxes,
        pred_iou_thresh: 0.8,
        stability_thresh: 0.7,
        ..Default::default()
    };
    let n = same_candidates(&dir, &shared.join("data/hc18/images/000_HC.png"), o);
    assert!(n > 0, "no candidate to compare");
}

#[test]
fn an_int8_decoder_session_runs_the_grid_on_tract() {
    // the native decoder is fp32 only: everything mode must degrade, not fail
    let dir = common::fixtures().join("models_tiny_lite");
    let mut sam = SamSession::load_mixed(&dir, Precision::Fp32, Precision::Int8).unwrap();
    let mut t = Timings::default();
    assert!(sam.native_decoder(&mut t).is_none());
    let frame = sonomask::input::image_io::load_rgb(&dir.join("input.png")).unwrap();
    let enc = sam.encode(&frame, &mut t).unwrap();
    let o = EverythingOptions {
        points_per_side: 4,
        ..Default::default()
    };
    let (_, f) = generate(&mut sam, &enc, &o, &mut t).unwrap();
    assert_eq!(f.prompts, 16);
    assert!(t.stages.iter().any(|(s, _)| *s == "decoder"));
    assert!(!t.stages.iter().any(|(s, _)| *s == "decoder_grid"));
}
