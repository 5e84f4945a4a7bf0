//! `sonomask eval` on a hand-made labelled set (known geometry, an empty-GT image, a broken
//! image) and on the shared BUSI subset. The tiny models are synthetic: the scores are not
//! judged, only that every image is scored, reported and marked as synthetic.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

fn sonomask(args: &[&str]) -> Output {
    common::sonomask_cmd("error")
        .args(args)
        .output()
        .expect("spawn sonomask")
}

fn write_png(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> u8) {
    image::GrayImage::from_fn(w, h, |x, y| image::Luma([f(x, y)]))
        .save(path)
        .unwrap();
}

/// 3 good rows (one with two GT masks), one empty-GT row, one missing image.
fn handmade(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sonomask-eval-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("images")).unwrap();
    std::fs::create_dir_all(d.join("masks")).unwrap();
    for i in 0..4 {
        write_png(&d.join(format!("images/im{i}.png")), 120, 90, |x, y| {
            ((x * 3 + y * 5 + i * 40) % 256) as u8
        });
    }
    write_png(&d.join("masks/im0.png"), 120, 90, |x, y| {
        255 * ((20..60).contains(&x) && (10..50).contains(&y)) as u8
    });
    write_png(&d.join("masks/im1.png"), 120, 90, |x, y| {
        255 * ((70..100).contains(&x) && (40..80).contains(&y)) as u8
    });
    write_png(&d.join("masks/im1_b.png"), 120, 90, |x, y| {
        255 * ((5..15).contains(&x) && (5..15).contains(&y)) as u8
    });
    write_png(&d.join("masks/im2.png"), 120, 90, |x, y| {
        255 * ((30..90).contains(&x) && (20..70).contains(&y)) as u8
    });
    write_png(&d.join("masks/im3.png"), 120, 90, |_, _| 0);
    std::fs::write(
        d.join("pairs.csv"),
        "image,mask(s)\nimages/im0.png,masks/im0.png\nimages/im1.png,masks/im1.png;masks/im1_b.png\n\
         images/im2.png,masks/im2.png\nimages/im3.png,masks/im3.png\nimages/missing.png,masks/im0.png\n",
    )
    .unwrap();
    d
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn oracle_box_eval_reports_every_row() {
    let d = handmade("oracle");
    let out = d.join("out");
    let models = common::models_tiny();
    let o = sonomask(&[
        "eval",
        "--pairs",
        d.join("pairs.csv").to_str().unwrap(),
        "--prompt",
        "oracle-box",
        "--models",
        models.to_str().unwrap(),
        "--out-dir",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("SYNTHETIC"), "{stdout}");
    let j = read_json(&out.join("eval.json"));
    let s = &j["summary"];
    assert_eq!(s["images"], 5);
    assert_eq!(s["scored"], 3);
    assert_eq!(s["errors"], 1);
    assert_eq!(s["empty_gt"]["images"], 1);
    assert_eq!(
        s["empty_gt"]["predicted_empty"], 1,
        "oracle: no GT box, no prediction"
    );
    assert_eq!(s["synthetic_weights"], true);
    assert!(s["warning"].as_str().unwrap().contains("SYNTHETIC"));
    let imgs = j["images"].as_array().unwrap();
    // the union of im1's two masks is its ground truth: 30*40 + 10*10
    assert_eq!(imgs[1]["gt_area"], 1300);
    assert!(imgs[4]["error"].as_str().unwrap().contains("missing.png"));
    for r in &imgs[..3] {
        for k in ["dice", "iou", "nsd"] {
            let v = r[k].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&v), "{k} {v}");
        }
    }
    let csv = std::fs::read_to_string(out.join("eval.csv")).unwrap();
    assert_eq!(csv.lines().count(), 6);
    assert!(
        csv.lines().nth(4).unwrap().contains(",true,"),
        "empty-GT row flagged"
    );
}

#[test]
fn text_eval_on_shared_busi() {
    let Some(shared) = common::shared() else {
        return;
    };
    let d = std::env::temp_dir().join(format!("sonomask-eval-busi-{}", std::process::id()));
    let models = common::models_tiny();
    let o = sonomask(&[
        "eval",
        "--pairs",
        shared.join("data/busi/pairs.csv").to_str().unwrap(),
        "--text",
        "breast tumor",
        "--limit",
        "4",
        "--models",
        models.to_str().unwrap(),
        "--out-dir",
        d.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j = read_json(&d.join("eval.json"));
    assert_eq!(j["summary"]["images"], 4);
    assert_eq!(j["summary"]["scored"], 4);
    assert_eq!(j["summary"]["pipeline"], "medclip-sam");
    assert!(j["summary"]["dice"]["mean"].as_f64().is_some());
}

#[test]
fn eval_bad_arguments() {
    let d = handmade("bad");
    let p = d.join("pairs.csv");
    let models = common::models_tiny();
    let m = models.to_str().unwrap();
    for (args, needle) in [
        (vec!["eval", "--text", "x"], "--pairs"),
        (
            vec!["eval", "--pairs", p.to_str().unwrap(), "--models", m],
            "oracle-box",
        ),
        (
            vec![
                "eval",
                "--pairs",
                p.to_str().unwrap(),
                "--prompt",
                "gt-mask",
                "--models",
                m,
            ],
            "oracle-box",
        ),
        (
            vec!["eval", "--pairs", "/nonexistent/pairs.csv", "--text", "x"],
            "cannot read",
        ),
    ] {
        let o = sonomask(&args);
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && e.contains(needle) && !e.contains("panicked"),
            "{args:?}: {e}"
        );
    }
}

#[test]
fn salip_eval_on_shared_busi() {
    let Some(shared) = common::shared() else {
        return;
    };
    let d = std::env::temp_dir().join(format!("sonomask-eval-salip-{}", std::process::id()));
    let models = common::models_tiny();
    let o = sonomask(&[
        "eval",
        "--pairs",
        shared.join("data/busi/pairs.csv").to_str().unwrap(),
        "--pipeline",
        "salip",
        "--text",
        "breast tumor",
        "--points-per-side",
        "4",
        "--limit",
        "2",
        "--models",
        models.to_str().unwrap(),
        "--out-dir",
        d.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j = read_json(&d.join("eval.json"));
    assert_eq!(j["summary"]["pipeline"], "salip");
    assert_eq!(j["summary"]["scored"], 2);
    // with the default filters the synthetic decoder leaves no candidate: reported per image
    assert_eq!(j["summary"]["fallbacks"], 2);
    assert!(
        j["images"][0]["note"]
            .as_str()
            .unwrap()
            .contains("no mask survived")
    );
}

/// `eval --measure`: every image measured with its own pixel size from the CSV (known answers
/// on the hand-made ground truths), an image missing from the CSV recorded as that image's
/// error, the HC18-style summary written.
#[test]
fn eval_measures_with_per_image_pixel_sizes() {
    let d = handmade("measure");
    std::fs::write(
        d.join("px.csv"),
        "filename,pixel size(mm),head circumference (mm)\nim0.png,0.1,20\nim1.png,0.2,\nim3.png,0.1,\n",
    )
    .unwrap();
    let out_dir = d.join("out");
    let models = common::models_tiny();
    let out = sonomask(&[
        "eval",
        "--pairs",
        d.join("pairs.csv").to_str().unwrap(),
        "--prompt",
        "oracle-box",
        "--models",
        models.to_str().unwrap(),
        "--measure",
        "hc",
        "--pixel-size-csv",
        d.join("px.csv").to_str().unwrap(),
        "--out-dir",
        out_dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j = read_json(&out_dir.join("eval.json"));
    let img = |name: &str| {
        j["images"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["image"] == name)
            .unwrap()
            .clone()
    };
    // im0's ground truth: a 40x40 px square at 0.1 mm = 16 mm^2; its reference HC from the CSV.
    let m0 = img("im0.png");
    assert_eq!(m0["measure"]["pixel_mm"], 0.1);
    assert!(
        (m0["measure"]["gt_mask"]["area"].as_f64().unwrap() - 16.0).abs() < 1e-9,
        "{m0}"
    );
    assert_eq!(m0["measure"]["reference_hc"], 20.0);
    assert_eq!(m0["measure"]["gt_mask"]["unit"], "mm");
    // im1: 0.2 mm pixels; the largest GT component is the 30x40 block = 48 mm^2.
    let m1 = img("im1.png");
    assert!(
        (m1["measure"]["gt_mask"]["area"].as_f64().unwrap() - 48.0).abs() < 1e-9,
        "{m1}"
    );
    // im2 is not in the CSV: that image's error, the run goes on.
    let m2 = img("im2.png");
    assert!(
        m2["error"]
            .as_str()
            .unwrap()
            .contains("not in --pixel-size-csv"),
        "{m2}"
    );
    // segment with the same box (the GT's bbox, inclusive) measures the same mask the same way.
    let seg = sonomask(&[
        "segment",
        d.join("images/im0.png").to_str().unwrap(),
        "--box",
        "20,10,59,49",
        "--models",
        models.to_str().unwrap(),
        "--measure",
        "hc",
        "--pixel-size",
        "0.1",
        "-o",
        d.join("seg.png").to_str().unwrap(),
        "--json",
    ]);
    assert!(
        seg.status.success(),
        "{}",
        String::from_utf8_lossy(&seg.stderr)
    );
    let sj: serde_json::Value = serde_json::from_slice(&seg.stdout).unwrap();
    assert_eq!(sj["area"], m0["pred_area"], "the same mask");
    for k in [
        "area",
        "hc",
        "hc_mask",
        "long_axis",
        "short_axis",
        "ellipse",
    ] {
        let (a, b) = (&sj["measure"][k], &m0["measure"]["pred"][k]);
        assert_eq!(a, b, "{k}: segment {sj} vs eval {m0}");
    }
    let s = &j["summary"]["measure"];
    assert_eq!(s["kind"], "hc");
    assert_eq!(s["unit"], "mm");
    let csv = std::fs::read_to_string(out_dir.join("eval.csv")).unwrap();
    assert!(csv.lines().next().unwrap().contains("hc_reference"));
    // Bad flags.
    let bad = sonomask(&[
        "eval",
        "--pairs",
        d.join("pairs.csv").to_str().unwrap(),
        "--prompt",
        "oracle-box",
        "--models",
        models.to_str().unwrap(),
        "--pixel-size",
        "0.1",
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("go with --measure"));
}
