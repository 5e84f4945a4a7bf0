//! Per-stage latency of one text-prompted frame (MedCLIP-SAM path): CLIP text, CLIP image,
//! saliency, prompt rules, SAM preprocessing, encoder, decoder, post-processing. Prints a
//! markdown table of medians over real BUSI frames, each stage also as a share of the whole
//! frame measured in the same run. Full-size models from `models/` (else the tiny fixtures);
//! SONOMASK_BENCH_MODELS=DIR, FRAMES=N (default 8), SAM_PRECISION / CLIP_PRECISION (fp32).
//! Run: `cargo bench --bench text_frame`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use sonomask::input::dataset::read_pairs;
use sonomask::input::image_io::load_rgb;
use sonomask::model::clip::VOCAB_ENV;
use sonomask::model::{Manifest, Precision};
use sonomask::pipelines::textseg::TextPipeline;
use sonomask::prompting::autoprompt::Rule;
use sonomask::prompting::saliency::Method;
use sonomask::timing::Timings;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

/// One frame's stage times (a stage timed several times is summed) appended per stage.
fn collect_stages(t: &Timings, stages: &mut BTreeMap<&'static str, Vec<f64>>) {
    let mut per: BTreeMap<&'static str, f64> = BTreeMap::new();
    for (s, ms) in &t.stages {
        *per.entry(s).or_default() += ms;
    }
    for (s, ms) in per {
        stages.entry(s).or_default().push(ms);
    }
}

fn main() {
    sonomask::heap::keep_freed_memory();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::var("SONOMASK_BENCH_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            if Manifest::load(&root.join("models")).is_ok_and(|m| m.clip.is_some()) {
                root.join("models")
            } else {
                eprintln!("models/ has no CLIP: timing the tiny fixtures (harness check only)");
                root.join("tests/fixtures/models_tiny")
            }
        });
    let m = Manifest::load(&dir).expect("manifest");
    if std::env::var_os(VOCAB_ENV).is_none() && !dir.join(&m.clip().unwrap().vocab).exists() {
        // SAFETY: single-threaded at this point.
        unsafe {
            std::env::set_var(
                VOCAB_ENV,
                root.join("../shared/models/clip_bpe/bpe_simple_vocab_16e6.txt.gz"),
            )
        };
    }
    let env_prec =
        |k: &str| Precision::parse(&std::env::var(k).unwrap_or_else(|_| "fp32".into())).unwrap();
    let (sp, cp) = (env_prec("SAM_PRECISION"), env_prec("CLIP_PRECISION"));
    let frames: usize = std::env::var("FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let pairs = read_pairs(&root.join("../shared/data/busi/pairs.csv"))
        .expect("../shared/data/busi (real frames) is needed");
    let step = (pairs.len() / frames).max(1);
    let images: Vec<_> = pairs
        .iter()
        .step_by(step)
        .take(frames)
        .map(|p| load_rgb(&p.image).unwrap())
        .collect();
    for (label, method) in [
        ("similarity", Method::Similarity),
        ("scorecam k=16", Method::ScoreCam { k: 16 }),
    ] {
        let mut p = TextPipeline::load(&dir, sp, sp, cp, 8).expect("pipeline");
        let texts = vec!["A medical breast ultrasound showing a hypoechoic tumor.".to_string()];
        // warm-up (first runs allocate tract's scratch)
        let mut t = Timings::default();
        let e = p.embed_text(&texts, &mut t).unwrap();
        p.segment(&images[0], &e, method, &Rule::V2, &mut t)
            .unwrap();
        let mut stages: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
        let mut totals = Vec::new();
        for f in &images {
            let mut t = Timings::default();
            // a new text each frame would hit the cache: time the text encoder itself
            p.text = {
                let tok = sonomask::model::clip::load_tokenizer(&p.sam.manifest).unwrap();
                let model = sonomask::model::ClipTextEncoder::load(&p.sam.manifest, cp).unwrap();
                sonomask::prompting::bank::TextEncoder::new(tok, model, String::new())
            };
            let t1 = Instant::now();
            let e = p.embed_text(&texts, &mut t).unwrap();
            p.segment(f, &e, method, &Rule::V2, &mut t).unwrap();
            let total = t1.elapsed().as_secs_f64() * 1e3;
            totals.push(total);
            collect_stages(&t, &mut stages);
        }
        let total = median(&mut totals);
        println!(
            "\n### {label}: SAM {}, CLIP {}, {} BUSI frames, {} ({} models{})\n",
            sp.as_str(),
            cp.as_str(),
            images.len(),
            m.clip().unwrap().config,
            dir.display(),
            if m.sam.synthetic {
                ", SYNTHETIC weights"
            } else {
                ""
            }
        );
        println!("| stage | median ms | share of frame |\n|---|---|---|");
        let order = [
            "clip_text",
            "clip_preprocess",
            "clip_image",
            "scorecam_select",
            "scorecam_masks",
            "scorecam_clip",
            "saliency",
            "saliency_upsample",
            "prompts",
            "preprocess",
            "encoder",
            "decoder",
            "postprocess",
        ];
        for s in order {
            if let Some(v) = stages.get_mut(s) {
                let ms = median(v);
                println!("| {s} | {ms:.1} | {:.1}% |", 100.0 * ms / total);
            }
        }
        println!("| **whole frame** | **{total:.1}** | 100% |");
    }
    salip(&dir, sp, cp, &images);
}

/// SaLIP: the whole frame per stage, the grid decoder's prompts/s and CLIP's crops/s. The
/// filters are opened (predicted IoU and stability 0) because synthetic weights would leave
/// no candidate to score; NMS and area bounds as by default.
fn salip(dir: &Path, sp: Precision, cp: Precision, images: &[sonomask::input::image_io::RgbFrame]) {
    use sonomask::pipelines::everything::EverythingOptions;
    use sonomask::pipelines::salip::{self, SalipOptions};
    let n: usize = std::env::var("SALIP_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let pps: usize = std::env::var("POINTS_PER_SIDE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16);
    let o = SalipOptions {
        everything: EverythingOptions {
            points_per_side: pps,
            pred_iou_thresh: 0.0,
            stability_thresh: 0.0,
            ..Default::default()
        },
        ..Default::default()
    };
    let mut p = TextPipeline::load(dir, sp, sp, cp, 8).expect("pipeline");
    let texts = vec!["A medical breast ultrasound showing a hypoechoic tumor.".to_string()];
    let e = p.embed_text(&texts, &mut Timings::default()).unwrap();
    let mut stages: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    let (mut totals, mut cands) = (Vec::new(), Vec::new());
    for f in images.iter().take(n) {
        let mut t = Timings::default();
        let t0 = Instant::now();
        let r = salip::segment(&mut p, f, &e, &o, &mut t).unwrap();
        totals.push(t0.elapsed().as_secs_f64() * 1e3);
        cands.push(r.candidates.len() as f64);
        collect_stages(&t, &mut stages);
    }
    let total = median(&mut totals);
    println!(
        "\n### SaLIP: SAM {}, CLIP {}, {pps}x{pps} grid, {} BUSI frames (median {} candidates after NMS)\n",
        sp.as_str(),
        cp.as_str(),
        n.min(images.len()),
        median(&mut cands)
    );
    println!("| stage | median ms | share of frame |\n|---|---|---|");
    for s in [
        "preprocess",
        "encoder",
        "decoder_frame",
        "decoder_grid",
        "decoder",
        "postprocess",
        "everything_nms",
        "salip_crops",
        "clip_preprocess",
        "clip_image",
        "salip_scores",
    ] {
        if let Some(v) = stages.get_mut(s) {
            let ms = median(v);
            println!("| {s} | {ms:.1} | {:.1}% |", 100.0 * ms / total);
        }
    }
    println!("| **whole frame** | **{total:.1}** | 100% |");
    // an int8 session decodes the grid on tract, one call per prompt ("decoder")
    let (stage, how) = if stages.contains_key("decoder_grid") {
        ("decoder_grid", "native decoder")
    } else {
        ("decoder", "tract, one call per prompt")
    };
    let grid_ms = median(stages.get_mut(stage).unwrap());
    println!(
        "\nGrid decoder: {} prompts in {grid_ms:.0} ms = {:.1} prompts/s ({how}).",
        pps * pps,
        (pps * pps) as f64 * 1e3 / grid_ms
    );
    // CLIP crop throughput: 16 crops of the frame, batched by 8
    let f = &images[0];
    let crops: Vec<_> = (0..16)
        .map(|i| {
            let (x0, y0) = ((i % 4) * f.width / 8, (i / 4) * f.height / 8);
            f.crop(x0, y0, f.width / 2, f.height / 2)
        })
        .collect();
    p.saliency
        .embed_frames(&crops, &mut Timings::default())
        .unwrap();
    let mut runs = Vec::new();
    for _ in 0..3 {
        let t0 = Instant::now();
        p.saliency
            .embed_frames(&crops, &mut Timings::default())
            .unwrap();
        runs.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let ms = median(&mut runs);
    println!(
        "CLIP crops: 16 crops in {ms:.0} ms = {:.1} crops/s (batches of 8, preprocessing included).",
        16e3 / ms
    );
}
