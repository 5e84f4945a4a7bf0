//! SaLIP end to end on a real BUSI frame with the tiny synthetic models: everything mode, CLIP
//! crop scoring, retrieval and the box re-prompt, and the documented empty results. Synthetic
//! weights: the tests check the chain computes what it reports (retrieval = best CLIP score,
//! final box = that candidate's box), never that it finds anatomy. The hand-made known-answer
//! tests of grid, stability, NMS and retrieval are unit tests in src/pipelines/everything.rs and
//! src/pipelines/salip.rs.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use sonomask::input::image_io::{RgbFrame, load_rgb};
use sonomask::model::Precision;
use sonomask::pipelines::everything::{EverythingOptions, generate, generate_layers};
use sonomask::pipelines::salip::{self, SalipOptions, Status};
use sonomask::pipelines::textseg::TextPipeline;
use sonomask::timing::Timings;

fn sonomask(args: &[&str]) -> Output {
    common::sonomask_cmd("warn")
        .args(args)
        .output()
        .expect("spawn sonomask")
}

fn tmp(tag: &str) -> PathBuf {
    common::tmp_dir(&format!("salip-{tag}"))
}

fn salip_cli(img: &Path, dir: &Path, extra: &[&str]) -> serde_json::Value {
    let models = common::models_tiny();
    let (m, o, c) = (
        dir.join("mask.png"),
        dir.join("overlay.png"),
        dir.join("candidates.png"),
    );
    let mut args = vec![
        "segment",
        img.to_str().unwrap(),
        "--pipeline",
        "salip",
        "--text",
        "breast tumor",
        "--models",
        models.to_str().unwrap(),
        "-o",
        m.to_str().unwrap(),
        "--overlay",
        o.to_str().unwrap(),
        "--candidates-out",
        c.to_str().unwrap(),
        "--json",
    ];
    args.extend_from_slice(extra);
    let out = sonomask(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn busi_frame_end_to_end() {
    let Some(shared) = common::shared() else {
        return;
    };
    let img = shared.join("data/busi/images/benign (1).png");
    let dir = tmp("busi");
    // the synthetic decoder's logits are small and alike: open the filters (NMS 1.0 keeps even
    // identical boxes) so several candidates survive
    let j = salip_cli(
        &img,
        &dir,
        &[
            "--pred-iou",
            "0",
            "--stability",
            "0",
            "--nms",
            "1.0",
            "--points-per-side",
            "6",
            "--top-k",
            "2",
        ],
    );
    assert_eq!(j["pipeline"], "salip");
    assert_eq!(j["synthetic_weights"], true);
    assert_eq!(j["funnel"]["prompts"], 36);
    assert_eq!(j["funnel"]["masks"], 108);
    let cands = j["candidates"].as_array().unwrap();
    assert!(cands.len() >= 2, "{}", j["funnel"]);
    // the retrieved ones are the two best CLIP scores, and the final boxes are theirs
    let mut by_score: Vec<(f64, usize)> = cands
        .iter()
        .map(|c| {
            (
                c["clip_score"].as_f64().unwrap(),
                c["index"].as_u64().unwrap() as usize,
            )
        })
        .collect();
    by_score.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let chosen: Vec<usize> = cands
        .iter()
        .filter(|c| c["chosen"] == true)
        .map(|c| c["index"].as_u64().unwrap() as usize)
        .collect();
    let mut want: Vec<usize> = by_score[..2].iter().map(|x| x.1).collect();
    want.sort();
    assert_eq!(chosen, want);
    let boxes = j["boxes"].as_array().unwrap();
    assert_eq!(boxes.len(), 2);
    let best = &cands[by_score[0].1]["bbox"];
    for k in 0..4 {
        assert_eq!(boxes[0][k].as_f64().unwrap(), best[k].as_f64().unwrap());
    }
    let frame = load_rgb(&img).unwrap();
    for f in ["mask.png", "overlay.png", "candidates.png"] {
        let p = image::open(dir.join(f)).unwrap();
        assert_eq!((p.width(), p.height()), (frame.width, frame.height), "{f}");
    }
    for stage in [
        "encoder",
        "decoder_frame",
        "decoder_grid",
        "decoder",
        "clip_image",
        "salip_scores",
    ] {
        assert!(j["timings_ms"][stage].as_f64().is_some(), "{stage} timed");
    }
    // a floor no cosine reaches: an empty mask and a status that says so
    let j = salip_cli(
        &img,
        &dir,
        &[
            "--pred-iou",
            "0",
            "--stability",
            "0",
            "--points-per-side",
            "4",
            "--score-floor",
            "1.01",
        ],
    );
    assert_eq!(j["area"], 0);
    assert!(
        j["status"]
            .as_str()
            .unwrap()
            .contains("matches no candidate"),
        "{}",
        j["status"]
    );
}

#[test]
fn nothing_survives_is_an_empty_mask_not_a_failure() {
    let img = common::models_tiny().join("input.png");
    let dir = tmp("none");
    // stability 1.0 with the synthetic decoder's soft logits: nothing passes
    let j = salip_cli(
        &img,
        &dir,
        &[
            "--points-per-side",
            "4",
            "--stability",
            "1.0",
            "--pred-iou",
            "0.99",
        ],
    );
    assert_eq!(j["area"], 0);
    assert!(j["status"].as_str().unwrap().contains("no mask survived"));
    assert!(j["candidates"].as_array().unwrap().is_empty());
}

#[test]
fn library_path_and_a_frame_smaller_than_the_clip_input() {
    let Some(shared) = common::shared() else {
        return;
    };
    // the fixture models plus the real vocabulary beside them
    let models = common::scratch_models("salip-lib");
    let vocab = "bpe_simple_vocab_16e6.txt.gz";
    std::os::unix::fs::symlink(
        shared.join("models/clip_bpe").join(vocab),
        models.join(vocab),
    )
    .unwrap();
    let mut p = TextPipeline::load(
        &models,
        Precision::Fp32,
        Precision::Fp32,
        Precision::Fp32,
        8,
    )
    .unwrap();
    // a 40x30 frame: every crop is smaller than CLIP's 224 input and is scaled up
    let small = RgbFrame::new(
        40,
        30,
        (0..40 * 30 * 3).map(|i| (i * 7 % 251) as u8).collect(),
    )
    .unwrap();
    let text = p
        .embed_text(&["breast tumor".to_string()], &mut Timings::default())
        .unwrap();
    let o = SalipOptions {
        everything: EverythingOptions {
            points_per_side: 3,
            pred_iou_thresh: 0.0,
            stability_thresh: 0.0,
            ..Default::default()
        },
        ..Default::default()
    };
    let r = salip::segment(&mut p, &small, &text, &o, &mut Timings::default()).unwrap();
    assert_eq!(r.scores.len(), r.candidates.len());
    if r.status == Status::Ok {
        assert_eq!(r.chosen.len(), 1);
        assert!(r.mask.area() <= 40 * 30);
    }
    // everything mode alone: funnel counts are consistent
    let enc = p.sam.encode(&small, &mut Timings::default()).unwrap();
    let (c, f) = generate(&mut p.sam, &enc, &o.everything, &mut Timings::default()).unwrap();
    assert_eq!((f.prompts, f.masks), (9, 27));
    assert!(
        f.after_iou >= f.after_stability
            && f.after_stability >= f.after_area
            && f.after_area >= f.after_nms
    );
    assert_eq!(c.len(), f.after_nms);
    // one crop layer: the frame plus 4 crops, each with its own 3x3 grid
    let layered = EverythingOptions {
        crop_n_layers: 1,
        ..o.everything
    };
    let (c, f) =
        generate_layers(&mut p.sam, &small, &enc, &layered, &mut Timings::default()).unwrap();
    assert_eq!((f.prompts, f.masks), (45, 135));
    assert_eq!(c.len(), f.after_nms);
    assert!(
        c.iter()
            .all(|c| c.bbox.2 < 40 && c.bbox.3 < 30 && c.mask.width == 40),
        "masks in frame coordinates"
    );
    // coarse to fine: the 2 x 2 coarse grid, then the fine points of one cell of it
    let c2f = EverythingOptions {
        points_per_side: 4,
        refine: Some(0.25),
        ..o.everything
    };
    let (c, f) = generate(&mut p.sam, &enc, &c2f, &mut Timings::default()).unwrap();
    assert_eq!((f.prompts, f.masks), (4 + 4, 24));
    assert_eq!(c.len(), f.after_nms);
    let all_cells = EverythingOptions {
        refine: Some(1.0),
        ..c2f
    };
    let (_, f) = generate(&mut p.sam, &enc, &all_cells, &mut Timings::default()).unwrap();
    assert_eq!(f.prompts, 4 + 16);
    for (refine, pps, why) in [
        (Some(0.0), 4, "(0, 1]"),
        (Some(1.5), 4, "(0, 1]"),
        (Some(0.5), 3, "even number of points per side"),
    ] {
        let bad = EverythingOptions {
            points_per_side: pps,
            refine,
            ..o.everything
        };
        let e = generate(&mut p.sam, &enc, &bad, &mut Timings::default()).unwrap_err();
        assert!(e.to_string().contains(why), "{e}");
    }
    // more than two layers is refused with a reason
    let bad = EverythingOptions {
        crop_n_layers: 3,
        ..Default::default()
    };
    assert!(
        generate(&mut p.sam, &enc, &bad, &mut Timings::default())
            .unwrap_err()
            .to_string()
            .contains("crop layers")
    );
}
