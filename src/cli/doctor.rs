//! `sonomask doctor`: what this machine offers and what sonomask would do with it; a check to
//! run on a freshly installed board before connecting it to a scanner.

use anyhow::Result;
use std::path::Path;

use super::flags::DoctorArgs;
use crate::cpu::CpuFeatures;
use crate::model::{Manifest, Precision, Role, precision_table};

pub fn run(a: DoctorArgs) -> Result<()> {
    let models = super::common::models_dir(a.models.as_deref());
    let cpu = CpuFeatures::detect();
    // what --precision auto picks per model at the default threads, and from where
    let threads = super::common::default_threads();
    let auto = precision_table::Auto::load(&models, threads);
    let picks: Vec<(Role, Precision, precision_table::Source)> = Role::ALL
        .into_iter()
        .map(|r| {
            let (p, s) = auto.pick(r);
            (r, p, s)
        })
        .collect();
    let precision = picks[0].1;
    let mut warnings: Vec<String> = Vec::new();
    let models_json = model_status(&models, &mut warnings);
    let ports = serial_ports();
    if ports.is_empty() {
        warnings.push("no serial ports found (/dev/ttyACM*, ttyUSB*, ttyGS*, ttyAMA*, ttyTHS*, serial*): masks can still go to tcp/stdout/file".into());
    }
    let j = serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "arch": cpu.arch,
        "board": crate::cpu::board_model().unwrap_or_else(|| "unknown board (no device tree)".into()),
        "threads_available": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "cpu_features": cpu.flags.iter().map(|(n, p)| (n.to_string(), serde_json::json!(p))).collect::<serde_json::Map<_, _>>(),
        "simd_kernel": format!("{:?}", cpu.kernel()),
        "int8_kernel": crate::simd::int8::I8Kernel::best().name(),
        "auto_precision": precision.as_str(),
        "auto_precision_by_model": picks.iter().map(|(r, p, s)| (r.as_str().to_string(), serde_json::json!({"precision": p.as_str(), "from": s.describe()}))).collect::<serde_json::Map<_, _>>(),
        "cpu_class": precision_table::cpu_class(),
        "fast_int8": cpu.fast_int8(),
        "jpeg_decoder": crate::input::image_io::jpeg::DECODER,
        "models": models_json,
        "serial_ports": ports,
        "warnings": warnings,
    });
    if a.json {
        println!("{j}");
        return Ok(());
    }
    println!(
        "sonomask {} on {} ({})",
        env!("CARGO_PKG_VERSION"),
        j["board"].as_str().unwrap_or("?"),
        cpu.arch
    );
    let present: Vec<&str> = cpu.flags.iter().filter(|f| f.1).map(|f| f.0).collect();
    let absent: Vec<&str> = cpu.flags.iter().filter(|f| !f.1).map(|f| f.0).collect();
    println!(
        "cpu features: {} (absent: {})",
        present.join(" "),
        if absent.is_empty() {
            "none".into()
        } else {
            absent.join(" ")
        }
    );
    println!("threads: {}", j["threads_available"]);
    let k8 = crate::simd::int8::I8Kernel::best();
    println!(
        "simd kernels: {:?}; own int8 kernel: {} (int8 models' linear layers{}); int8 pays here by rule (dot-product int8 kernel): {}",
        cpu.kernel(),
        k8.name(),
        if k8.prefers_7bit_weights() {
            "; 7-bit weights in one pass: the 7-bit-weight int8 files are loaded where the manifest has them"
        } else {
            ""
        },
        cpu.fast_int8()
    );
    println!(
        "--precision auto ({} thread(s), cpu class {}): {}",
        threads,
        precision_table::cpu_class(),
        picks
            .iter()
            .map(|(r, p, s)| format!("{} {} ({})", r.as_str(), p.as_str(), s.describe()))
            .collect::<Vec<_>>()
            .join("; ")
    );
    println!("jpeg decoder: {}", crate::input::image_io::jpeg::DECODER);
    println!(
        "models ({}): {}",
        models.display(),
        j["models"]["summary"].as_str().unwrap_or("")
    );
    if let Some(t) = j["models"]["text_prompts"].as_str() {
        println!("text prompts: {t}");
    }
    for m in j["models"]["files"].as_array().into_iter().flatten() {
        let bits = m["weight_bits"]
            .as_u64()
            .map(|b| format!("{b}-bit weights, "))
            .unwrap_or_default();
        let here = if m["loaded_here"].as_bool() == Some(true) {
            "loaded here"
        } else {
            "not loaded here"
        };
        println!(
            "  {} {} {} ({bits}{here}): {}",
            m["role"].as_str().unwrap_or(""),
            m["precision"].as_str().unwrap_or(""),
            m["file"].as_str().unwrap_or(""),
            m["status"].as_str().unwrap_or("")
        );
    }
    println!(
        "serial ports: {}",
        if j["serial_ports"].as_array().is_some_and(|a| a.is_empty()) {
            "none".to_string()
        } else {
            j["serial_ports"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|p| p.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        }
    );
    for w in &warnings {
        println!("warning: {w}");
    }
    Ok(())
}

fn model_status(dir: &Path, warnings: &mut Vec<String>) -> serde_json::Value {
    let m = match Manifest::load(dir) {
        Ok(m) => m,
        Err(e) => {
            warnings.push(format!("{e:#}"));
            return serde_json::json!({"summary": format!("not usable: {e:#}"), "files": []});
        }
    };
    let mut files = Vec::new();
    let mut bad = 0;
    for e in &m.model {
        let status = match m.read_verified(e) {
            Ok(_) => "ok (size and sha256 match)".to_string(),
            Err(err) => {
                bad += 1;
                format!("BAD: {err:#}")
            }
        };
        // Which of a role's int8 files this process loads (the 7-bit-weight variant on AVX2).
        let loaded = m.entry(e.role, e.precision).is_ok_and(|x| x.file == e.file);
        files.push(serde_json::json!({"role": e.role.as_str(), "precision": e.precision.as_str(), "file": e.file,
                                      "weight_bits": (e.precision == Precision::Int8).then_some(e.weight_bits),
                                      "loaded_here": loaded, "status": status}));
    }
    if m.sam.synthetic {
        warnings.push("the SAM models have SYNTHETIC weights (seeded random): masks are not segmentations; quantize/build_models.sh without --synthetic builds the real LiteMedSAM".into());
    }
    if m.clip.as_ref().is_some_and(|c| c.synthetic) {
        warnings.push("the CLIP models have SYNTHETIC weights (seeded random): text prompts do not choose the region (box and point prompts are unaffected)".into());
    }
    let text = match &m.clip {
        None => {
            warnings.push("no CLIP models: text prompts (MedCLIP-SAM, SaLIP) unavailable".into());
            "unavailable: no CLIP models".to_string()
        }
        Some(c) => match crate::model::clip::load_tokenizer(&m) {
            Ok(_) => format!(
                "available ({}, vocabulary ok){}",
                c.config,
                if c.synthetic {
                    ", CLIP weights SYNTHETIC"
                } else {
                    ""
                }
            ),
            Err(e) => {
                warnings.push(format!("text prompts unavailable: {e:#}"));
                format!("unavailable: {e:#}")
            }
        },
    };
    if bad > 0 {
        warnings.push(format!(
            "{bad} model file(s) fail their check: rebuild the models"
        ));
    }
    let clip_weights = m
        .clip
        .as_ref()
        .map(|c| if c.synthetic { "SYNTHETIC" } else { "real" });
    serde_json::json!({
        "summary": format!(
            "{} file(s), {} ok; SAM {} ({} weights{}), CLIP {}",
            m.model.len(),
            m.model.len() - bad,
            m.sam.family.as_str(),
            m.sam.weights_label(),
            if m.sam.package.is_empty() { String::new() } else { format!(", {}", m.sam.package) },
            clip_weights.map(|w| format!("{w} weights")).unwrap_or_else(|| "absent".into()),
        ),
        "synthetic": m.sam.synthetic,
        "sam": {"family": m.sam.family.as_str(), "weights": m.sam.weights_label(), "input_size": m.sam.image_size,
                "source": m.sam.source, "package": m.sam.package, "checkpoint_sha256": m.sam.checkpoint_sha256},
        "clip_weights": clip_weights,
        "text_prompts": text,
        "files": files,
    })
}

/// Serial devices by the names UARTs and USB CDC-ACM links get on Linux boards.
pub fn serial_ports() -> Vec<String> {
    const PREFIXES: &[&str] = &["ttyACM", "ttyUSB", "ttyGS", "ttyAMA", "ttyTHS", "serial"];
    let mut v: Vec<String> = std::fs::read_dir("/dev")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| PREFIXES.iter().any(|p| n.starts_with(p)))
                .map(|n| format!("/dev/{n}"))
                .collect()
        })
        .unwrap_or_default();
    if let Ok(d) = std::fs::read_dir("/dev/serial/by-id") {
        v.extend(
            d.filter_map(|e| e.ok())
                .map(|e| e.path().display().to_string()),
        );
    }
    v.sort();
    v
}
