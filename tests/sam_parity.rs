//! Numerical parity of the Rust/tract pipeline with onnxruntime on the committed tiny fixtures
//! (synthetic weights: these tests prove numerics, not accuracy).
//!
//! Tolerances. fp32: tract and onnxruntime run the same graph with different kernels (summation
//! order, GELU/erf and exp approximations), so outputs differ at float rounding level, which a
//! 20-layer network amplifies a little: we require max |diff| <= 1e-4 x max |ref| and cosine
//! at least 0.99999. int8: both runtimes compute the same integer math, but requantization rounding
//! (ties, f32 scale products) may move a value by one quantization step, and 12 attention blocks
//! propagate such flips: the decoder stays within cosine 0.999 / 5% of max |ref|, the encoder
//! agrees with onnxruntime's int8 at cosine >= 0.995 (measured 0.998) and, the real criterion,
//! must be as faithful to the fp32 reference as onnxruntime's int8 is (cosine within 0.005; a
//! broken int8 kernel drops far below).

mod common;

use common::{compare, models_tiny, read_f32};
use sonomask::input::image_io::load_rgb;
use sonomask::mask::upscale_logits;
use sonomask::model::{Embedding, Family, Manifest, Precision, SamDecoder, SamEncoder};
use sonomask::preprocess::sam_input_into;
use sonomask::prompting::prompt::{BoxPrompt, PointPrompt, Prompt};
use std::path::{Path, PathBuf};
use tract_onnx::prelude::*;

/// The two committed fixture families: MobileSAM-shaped (`models_tiny`, 3x3 stride-2 patch
/// embedding, 256 px, Pillow bilinear, mean/std) and LiteMedSAM-shaped (`models_tiny_lite`, 1x1
/// patch embedding, 64 px, OpenCV INTER_AREA, min-max, truncated box corners).
fn fixtures() -> [PathBuf; 2] {
    [models_tiny(), common::fixtures().join("models_tiny_lite")]
}

fn cases(dir: &Path) -> Vec<(&'static str, Prompt)> {
    let text = std::fs::read_to_string(dir.join("cases.toml")).unwrap();
    let t: toml::Table = toml::from_str(&text).unwrap();
    ["box", "point", "box_points"]
        .into_iter()
        .map(|name| {
            let c = t[name].as_table().unwrap();
            let f = |v: &toml::Value| v.as_float().unwrap() as f32;
            let b = c["box"].as_array().unwrap();
            let bbox = (!b.is_empty()).then(|| BoxPrompt {
                x0: f(&b[0]),
                y0: f(&b[1]),
                x1: f(&b[2]),
                y1: f(&b[3]),
            });
            let points = c["points"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    let p = p.as_array().unwrap();
                    PointPrompt {
                        x: f(&p[0]),
                        y: f(&p[1]),
                        foreground: p[2].as_integer().unwrap() == 1,
                    }
                })
                .collect();
            (name, Prompt { bbox, points })
        })
        .collect()
}

fn tolerance(p: Precision) -> (f32, f64) {
    match p {
        Precision::Fp32 => (1e-4, 0.99999),
        Precision::Int8 => (0.05, 0.999),
    }
}

fn check(what: &str, p: Precision, got: &[f32], want: &[f32]) {
    let (maxd, maxref, cos) = compare(got, want);
    let (rel, min_cos) = tolerance(p);
    eprintln!(
        "{what} [{}]: max|diff| {maxd:.3e} (max|ref| {maxref:.3e}), cosine {cos:.7}",
        p.as_str()
    );
    assert!(
        maxd <= rel * maxref,
        "{what} [{}]: max|diff| {maxd} > {rel} x {maxref}",
        p.as_str()
    );
    assert!(
        cos >= min_cos,
        "{what} [{}]: cosine {cos} < {min_cos}",
        p.as_str()
    );
}

fn encoder_parity(dir: &Path, p: Precision) {
    let m = Manifest::load(dir).unwrap();
    let mut enc = SamEncoder::load(&m, p).unwrap();
    let frame = load_rgb(&dir.join("input.png")).unwrap();
    let s = m.sam.image_size as usize;
    let mut input = vec![0f32; 3 * s * s];
    sam_input_into(&frame, &m.sam.recipe(), &mut input);
    let emb = enc.run(&input).unwrap();
    let want = read_f32(&dir.join(format!("ref_{}_embedding.f32", p.as_str())));
    let f32_ref = read_f32(&dir.join("ref_fp32_embedding.f32"));
    let (_, _, cos_ref) = compare(&want, &f32_ref);
    let (_, _, cos_ours) = compare(emb.as_slice().unwrap(), &f32_ref);
    eprintln!(
        "embedding [{}] vs fp32: onnxruntime cosine {cos_ref:.5}, tract cosine {cos_ours:.5}",
        p.as_str()
    );
    match p {
        Precision::Fp32 => check("embedding", p, emb.as_slice().unwrap(), &want),
        Precision::Int8 => {
            let (_, _, cos) = compare(emb.as_slice().unwrap(), &want);
            eprintln!("embedding [int8] tract vs onnxruntime cosine {cos:.5}");
            assert!(
                cos >= 0.995,
                "int8 embedding cosine vs onnxruntime int8 {cos}"
            );
            assert!(
                (cos_ours - cos_ref).abs() <= 0.005,
                "tract int8 fidelity {cos_ours} vs onnxruntime's {cos_ref}"
            );
        }
    }
}

fn decoder_parity(dir: &Path, p: Precision) {
    let m = Manifest::load(dir).unwrap();
    let mut dec = SamDecoder::load(&m, p).unwrap();
    let (c, e) = (m.sam.embed_dim as usize, m.sam.embedding_size as usize);
    let emb_ref = read_f32(&dir.join(format!("ref_{}_embedding.f32", p.as_str())));
    let emb = Embedding(
        Tensor::from_shape(&[1, c, e, e], &emb_ref)
            .unwrap()
            .into_tvalue(),
    );
    let frame = load_rgb(&dir.join("input.png")).unwrap();
    let g = m.sam.recipe().geometry(frame.width, frame.height);
    for (name, prompt) in cases(dir) {
        let (mut coords, mut labels) = (vec![], vec![]);
        prompt.encode(&g, &mut coords, &mut labels);
        let out = dec.run(&emb, &coords, &labels).unwrap();
        let low = read_f32(&dir.join(format!("ref_{}_{name}_low_res.f32", p.as_str())));
        let iou = read_f32(&dir.join(format!("ref_{}_{name}_iou.f32", p.as_str())));
        check(
            &format!("{name} low_res_masks"),
            p,
            sonomask::model::onnx::f32s(&out.low_res).unwrap(),
            &low,
        );
        check(&format!("{name} iou_predictions"), p, &out.iou, &iou);
    }
}

#[test]
fn encoder_fp32_matches_onnxruntime() {
    for dir in fixtures() {
        encoder_parity(&dir, Precision::Fp32);
    }
}

#[test]
fn encoder_int8_matches_onnxruntime() {
    for dir in fixtures() {
        encoder_parity(&dir, Precision::Int8);
    }
}

#[test]
fn decoder_fp32_matches_onnxruntime() {
    for dir in fixtures() {
        decoder_parity(&dir, Precision::Fp32);
    }
}

#[test]
fn decoder_int8_matches_onnxruntime() {
    for dir in fixtures() {
        decoder_parity(&dir, Precision::Int8);
    }
}

#[test]
fn postprocess_matches_official_sam() {
    for dir in fixtures() {
        postprocess_matches(&dir);
    }
}

fn postprocess_matches(dir: &Path) {
    let m = Manifest::load(dir).unwrap();
    let frame = load_rgb(&dir.join("input.png")).unwrap();
    let g = m.sam.recipe().geometry(frame.width, frame.height);
    let low = read_f32(&dir.join("ref_fp32_box_low_res.f32"));
    let l = m.sam.low_res_size as usize;
    let up = upscale_logits(&low[..l * l], l, &g);
    let want = read_f32(&dir.join("ref_fp32_box_upscaled.f32"));
    let (maxd, maxref, _) = compare(&up, &want);
    eprintln!("postprocess: max|diff| {maxd:.3e} (max|ref| {maxref:.3e})");
    // Same arithmetic as torch's kernel: only float rounding may differ.
    assert!(
        maxd <= 1e-5 * maxref.max(1.0),
        "upscaled logits differ by {maxd}"
    );
}

#[test]
fn end_to_end_mask_matches_reference_mask() {
    for dir in fixtures() {
        end_to_end(&dir);
    }
}

fn end_to_end(dir: &Path) {
    let mut s = sonomask::pipelines::segment::SamSession::load(dir, Precision::Fp32).unwrap();
    let frame = load_rgb(&dir.join("input.png")).unwrap();
    let mut t = sonomask::timing::Timings::default();
    let f = s.encode(&frame, &mut t).unwrap();
    let (_, prompt) = cases(dir).into_iter().find(|c| c.0 == "box").unwrap();
    let seg = s.decode(&f, &prompt, &mut t).unwrap();
    assert_eq!(seg.token, 0, "a box alone returns mask token 0");
    let want = read_f32(&dir.join("ref_fp32_box_upscaled.f32"));
    let want = sonomask::mask::Mask::from_logits(frame.width, frame.height, &want, 0.0);
    let iou = seg.mask.iou(&want);
    eprintln!("end-to-end box mask IoU vs onnxruntime+torch reference: {iou:.5}");
    // Pixels whose logit is within float noise of 0 may flip; nothing else may.
    assert!(iou >= 0.995, "IoU {iou}");
    assert!(t.stages.iter().any(|s| s.0 == "encoder") && t.stages.iter().any(|s| s.0 == "decoder"));
}

/// sonomask's own operators (crates/sonomask-ops) do go into the encoder's plan, and the plan
/// with them and the one with tract's stock operators both meet the fp32 parity bar.
#[test]
fn own_operators_replace_stock_ones_within_parity() {
    for dir in fixtures() {
        own_operators(&dir);
    }
}

fn own_operators(dir: &Path) {
    use sonomask::model::onnx;
    use sonomask::model::sam::encoder_contract;
    let m = Manifest::load(dir).unwrap();
    let entry = m
        .entry(sonomask::model::Role::SamEncoder, Precision::Fp32)
        .unwrap();
    let file = m.path_of(entry);
    let bytes = m.read_verified(entry).unwrap();
    let s = m.sam.image_size as usize;
    let frame = load_rgb(&dir.join("input.png")).unwrap();
    let mut input = vec![0f32; 3 * s * s];
    sam_input_into(&frame, &m.sam.recipe(), &mut input);
    let want = read_f32(&dir.join("ref_fp32_embedding.f32"));
    let mut outs = Vec::new();
    for stock in [true, false] {
        let plan = onnx::parse(&file, &bytes, encoder_contract(&m.sam))
            .unwrap()
            .with_stock_ops(stock)
            .plan(&[vec![1, 3, s, s]])
            .unwrap();
        let ops: Vec<String> = plan
            .model()
            .nodes
            .iter()
            .map(|n| n.op.name().to_string())
            .collect();
        let count = |name: &str| ops.iter().filter(|o| *o == name).count();
        let ours = count("RowSoftmax")
            + count("RowPad")
            + count("Depthwise3x3")
            + count("Conv3x3")
            + count("Gemm")
            + count("AxisLayerNorm")
            + count("DepthwiseNhwc3x3")
            + count("Attention")
            + count("MoveRuns")
            + count("MbConv")
            + count("PatchEmbed");
        if stock {
            assert_eq!(ours, 0, "stock plan has own operators");
            assert!(
                count("Softmax") > 0 && count("DepthWiseConv") > 0,
                "{ops:?}"
            );
        } else {
            assert_eq!(count("Softmax"), 0, "{ops:?}");
            // On aarch64 (qemu) tract leaves a few depthwise convolutions in a form this op does
            // not take (5 of the tiny encoder's; not yet investigated), so they stay stock there.
            if cfg!(target_arch = "x86_64") {
                assert_eq!(count("DepthWiseConv"), 0, "{ops:?}");
            }
            // The attention softmaxes are folded into the products before them, and the
            // window attentions (scores, softmax, values) are fused into one op each.
            let folded_softmax = plan
                .model()
                .nodes
                .iter()
                .filter(|n| n.op.name() == "Gemm")
                .filter(|n| n.op.info().unwrap().concat().contains("softmax true"))
                .count();
            assert!(count("Attention") > 0, "{ops:?}");
            assert!(
                count("RowSoftmax") + folded_softmax + count("Attention") > 0
                    && count("Depthwise3x3") > 0,
                "{ops:?}"
            );
            // Every product is ours (none left as tract's packed matmul), and the patch
            // embedding (RGB convolution, GELU, convolution) is one fused op.
            match m.sam.family {
                Family::Mobilesam => {
                    assert!(count("Gemm") > 0 && count("PatchEmbed") == 1, "{ops:?}")
                }
                // The 1x1 patch embedding: two own 1x1 products around an own GELU (checked on
                // x86-64, where the plans above are pinned; aarch64 keeps its own layout choices).
                Family::LiteMedsam if cfg!(target_arch = "x86_64") => {
                    assert_eq!(count("PatchEmbed"), 0, "{ops:?}");
                    let first: Vec<&str> = ops
                        .iter()
                        .map(String::as_str)
                        .filter(|o| !matches!(*o, "Source" | "Const"))
                        .take(3)
                        .collect();
                    assert_eq!(first, ["Gemm", "Gelu", "Gemm"], "{ops:?}");
                }
                Family::LiteMedsam => assert_eq!(count("PatchEmbed"), 0, "{ops:?}"),
            }
            assert_eq!(count("Conv3x3"), 0, "{ops:?}");
            // Every layer norm is ours (the neck's channel-axis ones too).
            assert!(count("AxisLayerNorm") > 0, "{ops:?}");
            assert_eq!(count("RmsNorm"), 0, "{ops:?}");
            // TinyViT's local convolutions run channels-last, without the transposes around.
            assert!(count("DepthwiseNhwc3x3") > 0, "{ops:?}");
            assert_eq!(count("OptMatMulPack"), 0, "{ops:?}");
            // The window partitions and reverses (pads, transposes, crops, residual adds) are
            // copies of runs.
            assert!(count("MoveRuns") > 0 && count("Pad") == 0, "{ops:?}");
            // Stage 0's inverted-residual blocks run fused, row by row (on aarch64 tract turns
            // them channels-last, which the fusion does not take).
            if cfg!(target_arch = "x86_64") {
                assert!(count("MbConv") > 0, "{ops:?}");
            }
        }
        let mut state = onnx::spawn(&plan).unwrap();
        let x = Tensor::from_shape(&[1, 3, s, s], &input).unwrap();
        let out = onnx::run(&mut state, tvec!(x.into_tvalue()), &file).unwrap();
        let got = onnx::f32s(&out[0]).unwrap().to_vec();
        check(
            if stock {
                "embedding (stock ops)"
            } else {
                "embedding (own ops)"
            },
            Precision::Fp32,
            &got,
            &want,
        );
        outs.push(got);
    }
    let (d, _, cos) = compare(&outs[0], &outs[1]);
    eprintln!("own vs stock operators: max|diff| {d:.3e}, cosine {cos:.8}");
}
