//! `sonomask bench`: time the SAM encoder and decoder with tract on one real frame, for the
//! runtime comparison script (quantize/compare_runtimes.py) and for users measuring their board.

use anyhow::{Result, bail};
use std::path::Path;
use std::time::Instant;

use super::args;
use super::common::ModelOptions;
use super::flags::BenchArgs;
use crate::input::image_io;
use crate::prompting::prompt::{BoxPrompt, Prompt};
use crate::timing::Timings;

/// Mean, median, extremes and count of run times in milliseconds, with the times themselves in
/// run order (`quantize/compare_runtimes.py --rounds` pools them over rounds).
fn stats(times: Vec<f64>) -> serde_json::Value {
    let mut v = times.clone();
    v.sort_by(f64::total_cmp);
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let median = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    serde_json::json!({"mean": mean, "median": median, "min": v[0], "max": v[v.len() - 1], "runs": v.len(), "times": times})
}

pub fn run(a: BenchArgs) -> Result<()> {
    let [image] = a.image.as_slice() else {
        bail!("bench needs one IMAGE\n\n{}", super::usage::<BenchArgs>())
    };
    if a.table {
        return table(&a, Path::new(image));
    }
    let Some(b) = a.boxes.as_deref() else {
        bail!("bench needs --box\n\n{}", super::usage::<BenchArgs>())
    };
    let runs: usize = args::parse_or("runs", a.runs.as_deref(), 5)?;
    let warmup: usize = args::parse_or("warmup", a.warmup.as_deref(), 1)?;
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let threads: usize = args::parse_or(
        "threads",
        a.model.threads.as_deref(),
        super::common::default_threads(),
    )?;
    let opts = ModelOptions::from_args(&a.model)?;
    let frame = image_io::load_rgb(Path::new(image))?;
    let prompt = Prompt {
        bbox: Some(BoxPrompt::parse(b)?),
        points: vec![],
    };
    prompt.validate(frame.width, frame.height)?;
    let t0 = Instant::now();
    let mut s = opts.load_session()?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let (mut pre, mut enc, mut dec) = (vec![], vec![], vec![]);
    for i in 0..warmup + runs {
        let mut t = Timings::default();
        let f = s.encode(&frame, &mut t)?;
        s.decode(&f, &prompt, &mut t)?;
        if i >= warmup {
            let get = |n: &str| {
                t.stages
                    .iter()
                    .find(|s| s.0 == n)
                    .map(|s| s.1)
                    .unwrap_or(0.0)
            };
            pre.push(get("preprocess"));
            enc.push(get("encoder"));
            dec.push(get("decoder"));
        }
    }
    let j = serde_json::json!({
        "runtime": "tract",
        "multithread_mm": cfg!(feature = "multithread-mm"),
        "threads": threads,
        "precision": s.precision.as_str(),
        "decoder_precision": opts.decoder().as_str(),
        "synthetic_weights": s.manifest.sam.synthetic,
        "model": {"family": s.manifest.sam.family.as_str(), "weights": s.manifest.sam.weights_label(),
                  "input_size": s.manifest.sam.image_size},
        "load_ms": load_ms,
        "preprocess_ms": stats(pre),
        "encoder_ms": stats(enc),
        "decoder_ms": stats(dec),
    });
    println!("{j}");
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// int8 is "faster here" (and `--precision auto` picks it from a saved table) when its median is
/// under this fraction of fp32's.
pub const INT8_MARGIN: f64 = 0.95;

/// Every model in every precision the manifest has, timed on this CPU in one run.
fn table(a: &BenchArgs, image: &Path) -> Result<()> {
    use crate::model::clip::load_tokenizer;
    use crate::model::{ClipImageEncoder, ClipTextEncoder, Manifest, Precision, Role, SamDecoder};
    use crate::preprocess::{Normalize, clip_input_into, sam_input_into};

    let runs: usize = args::parse_or("runs", a.runs.as_deref(), 3)?;
    let warmup: usize = args::parse_or("warmup", a.warmup.as_deref(), 1)?;
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let threads: usize = args::parse_or(
        "threads",
        a.model.threads.as_deref(),
        super::common::default_threads(),
    )?;
    super::common::set_threads(threads)?;
    let models = super::common::models_dir(a.model.models.as_deref());
    let m = Manifest::load(&models)?;
    let frame = image_io::load_rgb(image)?;
    let time = |f: &mut dyn FnMut() -> Result<()>| -> Result<f64> {
        let mut v = Vec::with_capacity(runs);
        for i in 0..warmup + runs {
            let t = Instant::now();
            f()?;
            if i >= warmup {
                v.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        Ok(median(v))
    };
    let s = &m.sam;
    let n = s.image_size as usize;
    let mut sam_in = vec![0f32; 3 * n * n];
    let g = sam_input_into(&frame, &s.recipe(), &mut sam_in);
    let has = |role: Role, p: Precision| m.entry(role, p).is_ok();
    // Inputs prepared once for both precisions: the decoder runs on the fp32 encoder's
    // embedding with a box around the frame's centre; CLIP gets the frame and one prompt.
    let emb = if has(Role::SamDecoder, Precision::Fp32) || has(Role::SamDecoder, Precision::Int8) {
        Some(crate::model::SamEncoder::load(&m, Precision::Fp32)?.run(&sam_in)?)
    } else {
        None
    };
    let (w, h) = (frame.width as f32, frame.height as f32);
    let prompt = Prompt {
        bbox: Some(BoxPrompt {
            x0: 0.3 * w,
            y0: 0.3 * h,
            x1: 0.6 * w,
            y1: 0.6 * h,
        }),
        points: vec![],
    };
    let (mut coords, mut labels) = (Vec::new(), Vec::new());
    prompt.encode(&g, &mut coords, &mut labels);
    let clip_in: Option<(Vec<f32>, Vec<i64>)> = match &m.clip {
        None => None,
        Some(c) => {
            let k = c.image_size as usize;
            let mut input = vec![0f32; 3 * k * k];
            let norm = Normalize {
                mean: c.pixel_mean,
                std: c.pixel_std,
            };
            clip_input_into(&frame, c.image_size, &norm, &mut input);
            let ids = match load_tokenizer(&m) {
                Ok(t) => {
                    t.tokenize("A medical breast ultrasound showing a hypoechoic tumor.")
                        .ids
                }
                // the vocabulary only changes the ids, not the cost: a fixed row times the model
                Err(_) => {
                    let mut v = vec![0i64; c.context_length as usize];
                    v[0] = 49406;
                    v[1] = 49407;
                    v
                }
            };
            Some((input, ids))
        }
    };
    let mut rows: Vec<(Role, Precision, f64)> = Vec::new();
    for p in [Precision::Fp32, Precision::Int8] {
        if has(Role::SamEncoder, p) {
            let mut enc = crate::model::SamEncoder::load(&m, p)?;
            rows.push((
                Role::SamEncoder,
                p,
                time(&mut || enc.run(&sam_in).map(|_| ()))?,
            ));
        }
        if let Some(emb) = emb.as_ref().filter(|_| has(Role::SamDecoder, p)) {
            let mut dec = SamDecoder::load(&m, p)?;
            rows.push((
                Role::SamDecoder,
                p,
                time(&mut || dec.run(emb, &coords, &labels).map(|_| ()))?,
            ));
        }
        if let Some((input, ids)) = &clip_in {
            if has(Role::ClipImage, p) {
                let mut enc = ClipImageEncoder::load(&m, p, 1)?;
                let (mut po, mut pa) =
                    (vec![0.0; enc.dim], vec![0.0; enc.grid * enc.grid * enc.dim]);
                rows.push((
                    Role::ClipImage,
                    p,
                    time(&mut || enc.run_into(input, &mut po, &mut pa))?,
                ));
            }
            if has(Role::ClipText, p) {
                let mut enc = ClipTextEncoder::load(&m, p)?;
                rows.push((Role::ClipText, p, time(&mut || enc.run(ids).map(|_| ()))?));
            }
        }
    }
    let cpu = crate::cpu::CpuFeatures::detect();
    println!(
        "CPU: {} ({}), {} thread(s), tract 0.23.9{}; {} run(s) after {} warm-up, medians; weights {}\n",
        crate::cpu::board_model().unwrap_or_else(|| std::env::consts::ARCH.to_string()),
        std::env::consts::ARCH,
        threads,
        if cfg!(feature = "multithread-mm") {
            " multithread-mm"
        } else {
            ""
        },
        runs,
        warmup,
        if m.sam.synthetic {
            "SYNTHETIC (speed does not depend on them)".to_string()
        } else {
            format!("SAM {} real", m.sam.family.as_str())
        }
    );
    println!(
        "| model | fp32 ms | int8 ms | int8 / fp32 | faster here (int8 under {INT8_MARGIN}x) |\n|---|---|---|---|---|"
    );
    let mut best = serde_json::Map::new();
    for role in Role::ALL {
        let get = |p| rows.iter().find(|r| r.0 == role && r.1 == p).map(|r| r.2);
        let (f, i) = (get(Precision::Fp32), get(Precision::Int8));
        if f.is_none() && i.is_none() {
            continue;
        }
        // int8 only where it is measurably faster: it costs some accuracy, and a tie within
        // a few runs' noise is no reason to pay that
        let pick = match (f, i) {
            (Some(f), Some(i)) if i < INT8_MARGIN * f => Precision::Int8,
            (None, Some(_)) => Precision::Int8,
            _ => Precision::Fp32,
        };
        best.insert(role.as_str().into(), pick.as_str().into());
        let fmt = |v: Option<f64>| v.map(|x| format!("{x:.1}")).unwrap_or("-".into());
        let ratio = match (f, i) {
            (Some(f), Some(i)) => format!("{:.2}x", i / f),
            _ => "-".into(),
        };
        println!(
            "| {} | {} | {} | {ratio} | {} |",
            role.as_str(),
            fmt(f),
            fmt(i),
            pick.as_str()
        );
    }
    println!(
        "\n{}",
        serde_json::json!({
            "arch": std::env::consts::ARCH,
            "dotprod": cpu.fast_int8(),
            "rule_precision_8bit_weights": crate::model::precision_table::rule(false).as_str(),
            "cpu_class": crate::model::precision_table::cpu_class(),
            "threads": threads,
            "ms": rows.iter().map(|(r, p, ms)| serde_json::json!({"model": r.as_str(), "precision": p.as_str(), "ms": ms})).collect::<Vec<_>>(),
            "faster_here": best,
        })
    );
    if a.save {
        use crate::model::precision_table::{Entry, cpu_class, save};
        let mut ms: std::collections::BTreeMap<String, std::collections::BTreeMap<String, f64>> =
            Default::default();
        for (r, p, v) in &rows {
            ms.entry(r.as_str().into())
                .or_default()
                .insert(p.as_str().into(), *v);
        }
        let entry = Entry {
            cpu_class: cpu_class(),
            threads,
            measured_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            faster: best
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect(),
            ms,
        };
        let p = save(&models, entry)?;
        println!(
            "saved to {} ({}, {threads} thread(s)): --precision auto follows it on this CPU class",
            p.display(),
            cpu_class()
        );
    }
    Ok(())
}
