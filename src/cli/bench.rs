//! `sonomask bench`: time the SAM encoder and decoder with tract on one real frame, for the
//! runtime comparison script (quantize/compare_runtimes.py) and for users measuring their board.

use anyhow::{Result, bail};
use std::path::Path;
use std::time::Instant;

use super::args;
use super::common::ModelOptions;
use crate::image_io;
use crate::prompt::{BoxPrompt, Prompt};
use crate::timing::Timings;

pub const USAGE: &str = "\
sonomask bench IMAGE --box x0,y0,x1,y1 [--models DIR] [--precision fp32|int8|auto] [--threads N]
               [--runs N] [--warmup N]

  Loads the models once, then times preprocessing, the encoder and the box-prompted decoder
  over --runs runs (after --warmup runs). Prints one JSON object (milliseconds).";

fn stats(mut v: Vec<f64>) -> serde_json::Value {
    v.sort_by(f64::total_cmp);
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let median = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    serde_json::json!({"mean": mean, "median": median, "min": v[0], "max": v[v.len() - 1], "runs": v.len()})
}

pub fn run(argv: &[String]) -> Result<()> {
    let a = args::parse(
        argv,
        &["box", "models", "precision", "threads", "runs", "warmup"],
        &["help"],
    )?;
    if a.has("help") {
        println!("{USAGE}");
        return Ok(());
    }
    let [image] = a.positional.as_slice() else {
        bail!("bench needs one IMAGE\n\n{USAGE}")
    };
    let Some(b) = a.get("box") else {
        bail!("bench needs --box\n\n{USAGE}")
    };
    let runs: usize = a.parse_or("runs", 5)?;
    let warmup: usize = a.parse_or("warmup", 1)?;
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let threads: usize = a.parse_or("threads", 1)?;
    let opts = ModelOptions::from_args(&a)?;
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
        "synthetic_weights": s.manifest.sam.synthetic,
        "load_ms": load_ms,
        "preprocess_ms": stats(pre),
        "encoder_ms": stats(enc),
        "decoder_ms": stats(dec),
    });
    println!("{j}");
    Ok(())
}
