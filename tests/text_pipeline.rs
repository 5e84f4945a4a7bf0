//! The text-prompted (MedCLIP-SAM) path end to end on the tiny synthetic fixtures and a real
//! BUSI frame from ../shared: the CLI writes mask, overlay and saliency; the saliency methods
//! compute what they document; every bad input gets a clear error. Synthetic weights: these
//! tests prove the chain runs and computes what it says, never that it finds a tumour.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sonomask::input::image_io::load_rgb;
use sonomask::model::{Manifest, Precision};
use sonomask::prompting::saliency::{Method, SaliencyEngine};
use sonomask::timing::Timings;

fn busi() -> Option<PathBuf> {
    Some(common::shared()?.join("data/busi/images/benign (1).png"))
}

fn sonomask(args: &[&str]) -> Output {
    common::sonomask_cmd("warn")
        .args(args)
        .output()
        .expect("spawn sonomask")
}

fn tmp(tag: &str) -> PathBuf {
    common::tmp_dir(&format!("text-{tag}"))
}

fn fails_with(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure; stderr: {err}");
    assert!(!err.contains("panicked"), "panicked: {err}");
    assert!(err.contains(needle), "stderr lacks '{needle}': {err}");
}

fn segment_text(image: &Path, dir: &Path, extra: &[&str]) -> Output {
    let (m, o, s) = (
        dir.join("mask.png"),
        dir.join("overlay.png"),
        dir.join("saliency.png"),
    );
    let models = common::models_tiny();
    let mut args = vec![
        "segment",
        image.to_str().unwrap(),
        "--models",
        models.to_str().unwrap(),
        "-o",
        m.to_str().unwrap(),
        "--overlay",
        o.to_str().unwrap(),
        "--saliency-out",
        s.to_str().unwrap(),
        "--json",
    ];
    args.extend_from_slice(extra);
    sonomask(&args)
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn busi_frame_text_prompt_writes_three_pictures() {
    let Some(img) = busi() else { return };
    let dir = tmp("busi");
    for (method, rule) in [
        ("similarity", "v2"),
        ("scorecam", "v1"),
        ("similarity", "v2-points"),
    ] {
        let j = json(&segment_text(
            &img,
            &dir,
            &[
                "--text",
                "breast tumor",
                "--saliency",
                method,
                "--scorecam-k",
                "6",
                "--prompt-rule",
                rule,
            ],
        ));
        assert_eq!(j["pipeline"], "medclip-sam");
        assert_eq!(
            j["synthetic_weights"], true,
            "the fixture weights are synthetic and must say so"
        );
        assert_eq!(j["saliency_method"], method);
        assert!(!j["prompts"].as_array().unwrap().is_empty());
        for stage in [
            "clip_text",
            "clip_image",
            "saliency",
            "prompts",
            "encoder",
            "decoder",
        ] {
            assert!(
                j["timings_ms"][stage].as_f64().unwrap() >= 0.0,
                "stage {stage} timed"
            );
        }
        let frame = load_rgb(&img).unwrap();
        for f in ["mask.png", "overlay.png", "saliency.png"] {
            let p = image::open(dir.join(f)).unwrap();
            assert_eq!((p.width(), p.height()), (frame.width, frame.height), "{f}");
        }
        let mask = image::open(dir.join("mask.png")).unwrap().to_luma8();
        let area = mask.pixels().filter(|p| p.0[0] == 255).count();
        assert_eq!(area as u64, j["area"].as_u64().unwrap());
        if rule == "v2-points" {
            assert_eq!(j["prompts"][0]["points"].as_array().unwrap().len(), 5);
        }
    }
    let text = sonomask(&[
        "segment",
        img.to_str().unwrap(),
        "--models",
        common::models_tiny().to_str().unwrap(),
        "--text",
        "breast tumor",
        "-o",
        dir.join("m.png").to_str().unwrap(),
        "--overlay",
        dir.join("o.png").to_str().unwrap(),
        "--saliency-out",
        dir.join("s.png").to_str().unwrap(),
    ]);
    let s = String::from_utf8_lossy(&text.stdout);
    assert!(s.contains("SYNTHETIC"), "{s}");
}

/// The similarity map is exactly: cosine(patch, text) per patch, min-max normalised, then
/// bilinear to the frame (computed here from the engine's own embeddings with plain loops).
#[test]
fn similarity_map_is_what_it_says() {
    let m = Manifest::load(&common::models_tiny()).unwrap();
    let mut eng = SaliencyEngine::load(&m, Precision::Fp32, 1).unwrap();
    let frame = load_rgb(&common::models_tiny().join("input.png")).unwrap();
    let mut t = Timings::default();
    let (pooled, patches) = eng.embed(&frame, &mut t).unwrap();
    let d = pooled.len();
    // a text direction: the pooled embedding itself plus a skew (any unit vector works)
    let mut text: Vec<f32> = pooled
        .iter()
        .enumerate()
        .map(|(i, v)| v + 0.1 * (i % 3) as f32)
        .collect();
    let n = text.iter().map(|x| x * x).sum::<f32>().sqrt();
    text.iter_mut().for_each(|x| *x /= n);
    let mut want: Vec<f32> = patches
        .chunks(d)
        .map(|p| p.iter().zip(&text).map(|(a, b)| a * b).sum())
        .collect();
    let (lo, hi) = want
        .iter()
        .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    want.iter_mut().for_each(|v| *v = (*v - lo) / (hi - lo));
    let map = eng
        .compute(&frame, &text, Method::Similarity, &mut t)
        .unwrap();
    let (diff, _, _) = common::compare(&map.grid, &want);
    assert!(diff < 1e-5, "grid differs by {diff}");
    assert_eq!(map.values.len(), (frame.width * frame.height) as usize);
    assert!(map.values.iter().all(|v| (0.0..=1.0).contains(v)));
    // ~14 px per patch: the pixel nearest the best/worst patch centre is within half a pixel
    // of it, so it keeps at least 95% of that patch's weight
    assert!(map.values.iter().any(|&v| v > 0.95) && map.values.iter().any(|&v| v < 0.05));
    assert!(!map.is_flat());
    // ScoreCAM: same interface, k masked passes, a different but valid map
    let sc = eng
        .compute(&frame, &text, Method::ScoreCam { k: 4 }, &mut t)
        .unwrap();
    assert!(sc.values.iter().all(|v| (0.0..=1.0).contains(v)));
    assert!(t.stages.iter().any(|(s, _)| *s == "scorecam_clip"));
    // the wrong text size is an error, not a panic
    assert!(
        eng.compute(&frame, &text[1..], Method::Similarity, &mut t)
            .is_err()
    );
}

#[test]
fn prompt_bank_round_trip_and_model_binding() {
    let Some(img) = busi() else { return };
    let dir = tmp("bank");
    let prompts = dir.join("prompts.json");
    std::fs::write(
        &prompts,
        r#"{"tumor": ["breast tumor", "a hypoechoic mass"], "gland": ["thyroid"]}"#,
    )
    .unwrap();
    let bank = dir.join("bank.json");
    let models = common::models_tiny();
    let out = sonomask(&[
        "prompt-bank",
        "--prompt-file",
        prompts.to_str().unwrap(),
        "--models",
        models.to_str().unwrap(),
        "-o",
        bank.to_str().unwrap(),
        "--clip-precision",
        "fp32",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let from_bank = json(&segment_text(
        &img,
        &dir,
        &[
            "--bank",
            bank.to_str().unwrap(),
            "--class",
            "tumor",
            "--precision",
            "fp32",
        ],
    ));
    let from_text = json(&segment_text(
        &img,
        &dir,
        &[
            "--text",
            "breast tumor",
            "--text",
            "a hypoechoic mass",
            "--precision",
            "fp32",
        ],
    ));
    assert_eq!(
        from_bank["prompts"], from_text["prompts"],
        "bank and on-device ensemble agree"
    );
    assert_eq!(from_bank["area"], from_text["area"]);
    // several classes and no --class (fp32 as the bank: auto may pick the int8 text model,
    // whose bank binding is checked below)
    fails_with(
        &segment_text(
            &img,
            &dir,
            &["--bank", bank.to_str().unwrap(), "--precision", "fp32"],
        ),
        "--class",
    );
    // a bank from another text model is refused (int8 text model has another sha256)
    fails_with(
        &segment_text(
            &img,
            &dir,
            &[
                "--bank",
                bank.to_str().unwrap(),
                "--class",
                "tumor",
                "--precision",
                "int8",
            ],
        ),
        "rebuild it",
    );
}

#[test]
fn bad_text_inputs_get_clear_errors() {
    let img = common::models_tiny().join("input.png");
    let dir = tmp("bad");
    fails_with(
        &segment_text(&img, &dir, &["--text", ""]),
        "empty text prompt",
    );
    if common::clip_vocab().is_some() {
        // only punctuation-free whitespace / control characters: empty after clean-up
        fails_with(
            &segment_text(&img, &dir, &["--text", "\u{7}\u{1b}[0m"]),
            "empty after clean-up",
        );
        // over-long: truncated with a warning, still runs
        let long = "breast tumor ".repeat(60);
        let out = segment_text(&img, &dir, &["--text", &long]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("truncated"));
    }
    let bad = dir.join("bad.txt");
    std::fs::write(&bad, b"breast \xff tumor").unwrap();
    fails_with(
        &segment_text(&img, &dir, &["--prompt-file", bad.to_str().unwrap()]),
        "not UTF-8",
    );
    fails_with(
        &segment_text(&img, &dir, &["--text", "x", "--box", "1,1,5,5"]),
        "not both",
    );
    fails_with(
        &segment_text(&img, &dir, &["--text", "x", "--saliency", "gradcam"]),
        "unknown saliency",
    );
    fails_with(
        &segment_text(&img, &dir, &["--text", "x", "--prompt-rule", "v9"]),
        "unknown prompt rule",
    );
    // a vocabulary that is not the manifest's
    let out = Command::new(env!("CARGO_BIN_EXE_sonomask"))
        .args([
            "segment",
            img.to_str().unwrap(),
            "--models",
            common::models_tiny().to_str().unwrap(),
            "--text",
            "x",
        ])
        .env("SONOMASK_CLIP_VOCAB", &bad)
        .output()
        .unwrap();
    fails_with(&out, "sha256");
    // a SAM-only model set
    let sam_only = common::scratch_models("sam-only");
    let m = std::fs::read_to_string(sam_only.join("manifest.toml")).unwrap();
    let cut = m.find("[clip]").unwrap();
    let rest = &m[cut..];
    let next = rest.find("\n[[model]]").unwrap();
    std::fs::write(
        sam_only.join("manifest.toml"),
        format!("{}{}", &m[..cut], &rest[next + 1..]),
    )
    .unwrap();
    fails_with(
        &segment_text(
            &img,
            &dir,
            &["--text", "x", "--models", sam_only.to_str().unwrap()],
        ),
        "no CLIP models",
    );
}
