//! Every failure a user can cause exits non-zero with a clear message, never a panic.

mod common;

use std::path::Path;
use std::process::{Command, Output};

fn sonomask(args: &[&str]) -> Output {
    sonomask_logging(args, "error")
}

/// With the log level the test reads on stderr.
fn sonomask_logging(args: &[&str], level: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sonomask"))
        .args(args)
        .env("SONOMASK_LOG", level)
        .output()
        .expect("spawn sonomask")
}

fn fails_with(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got success; stderr: {err}"
    );
    assert!(!err.contains("panicked"), "panicked: {err}");
    assert!(err.contains(needle), "stderr lacks '{needle}': {err}");
}

/// `sonomask segment IMAGE --box BOX --models DIR`
fn segment_box(image: &str, bbox: &str, models: &str) -> Output {
    sonomask(&["segment", image, "--box", bbox, "--models", models])
}

/// `segment` of the fixture image with a box, on the models in `models` at `precision`, then
/// `extra` arguments.
fn segment_at(models: &Path, precision: &str, extra: &[&str]) -> Output {
    let input = input();
    let mut args = vec![
        "segment",
        &input,
        "--box",
        "40,30,150,120",
        "--models",
        models.to_str().unwrap(),
        "--precision",
        precision,
    ];
    args.extend_from_slice(extra);
    sonomask(&args)
}

fn input() -> String {
    common::models_tiny()
        .join("input.png")
        .display()
        .to_string()
}

#[test]
fn segment_writes_mask_and_overlay() {
    let dir = std::env::temp_dir().join(format!("sonomask-cli-ok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (m, o) = (dir.join("mask.png"), dir.join("overlay.png"));
    let models = common::models_tiny();
    for precision in ["fp32", "int8"] {
        let extra = [
            "-o",
            m.to_str().unwrap(),
            "--overlay",
            o.to_str().unwrap(),
            "--json",
        ];
        let out = segment_at(&models, precision, &extra);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(j["precision"], precision);
        assert_eq!(j["synthetic_weights"], true);
        assert!(j["timings_ms"]["encoder"].as_f64().unwrap() > 0.0);
        let mask = image::open(&m).unwrap().to_luma8();
        assert_eq!(mask.dimensions(), (200, 150));
        assert_eq!(
            mask.pixels().filter(|p| p.0[0] == 255).count() as u64,
            j["area"].as_u64().unwrap()
        );
        assert_eq!(image::open(&o).unwrap().to_rgb8().dimensions(), (200, 150));
    }
}

#[test]
fn bad_images_and_prompts() {
    let models = common::models_tiny();
    let md = models.to_str().unwrap();
    fails_with(
        &segment_box("/nonexistent.png", "1,1,5,5", md),
        "cannot read image",
    );
    let garbage = std::env::temp_dir().join(format!("sonomask-garbage-{}.png", std::process::id()));
    std::fs::write(&garbage, b"\x89PNG\r\n\x1a\nthis is not really a png").unwrap();
    fails_with(
        &segment_box(garbage.to_str().unwrap(), "1,1,5,5", md),
        "cannot decode image",
    );
    std::fs::write(&garbage, b"").unwrap();
    fails_with(
        &segment_box(garbage.to_str().unwrap(), "1,1,5,5", md),
        "empty",
    );
    fails_with(&segment_box(&input(), "150,30,40,120", md), "inverted");
    fails_with(&segment_box(&input(), "40,30,950,120", md), "outside");
    fails_with(
        &sonomask(&["segment", &input(), "--point", "500,20", "--models", md]),
        "outside",
    );
    fails_with(&segment_box(&input(), "1,2,3", md), "expected 4");
    fails_with(
        &sonomask(&["segment", &input(), "--models", md]),
        "no prompt",
    );
    fails_with(
        &sonomask(&[
            "segment",
            &input(),
            "--box",
            "1,1,5,5",
            "--precision",
            "int4",
            "--models",
            md,
        ]),
        "unknown precision",
    );
    fails_with(
        &sonomask(&["segment", &input(), "--bogus"]),
        "unknown option --bogus",
    );
    fails_with(&sonomask(&["frobnicate"]), "unknown command");
}

/// An int8 model the manifest vouches for whose quantisation scale is NaN: refused when it is
/// parsed, naming the file, the node and the tensor (not run into NaN masks).
#[test]
fn an_int8_model_with_a_broken_scale_is_refused_naming_the_node() {
    use prost::Message;
    use tract_onnx::prelude::Framework;
    let dir = common::scratch_models("nanscale");
    let file = dir.join("sam_decoder.int8.onnx");
    let bytes = std::fs::read(&file).unwrap();
    let mut proto = tract_onnx::onnx()
        .proto_model_for_read(&mut &bytes[..])
        .unwrap();
    let graph = proto.graph.as_mut().unwrap();
    // the first QLinearMatMul's weight scale (input 4), an initializer
    let (node, scale) = graph
        .node
        .iter()
        .filter(|n| n.op_type == "QLinearMatMul")
        .find_map(|n| {
            let s = n.input.get(4)?;
            graph
                .initializer
                .iter()
                .any(|t| &t.name == s)
                .then(|| (n.name.clone(), s.clone()))
        })
        .expect("a QLinearMatMul with a constant weight scale");
    let t = graph
        .initializer
        .iter_mut()
        .find(|t| t.name == scale)
        .unwrap();
    if t.raw_data.is_empty() {
        t.float_data.iter_mut().for_each(|v| *v = f32::NAN);
    } else {
        let n = t.raw_data.len() / 4;
        t.raw_data = (0..n).flat_map(|_| f32::NAN.to_le_bytes()).collect();
    }
    let broken = proto.encode_to_vec();
    std::fs::write(&file, &broken).unwrap();
    let text = std::fs::read_to_string(dir.join("manifest.toml")).unwrap();
    let sha = |b: &[u8]| sonomask::model::manifest::sha256_hex(b);
    let patched = text.replace(&sha(&bytes), &sha(&broken)).replace(
        &format!("bytes = {}\n", bytes.len()),
        &format!("bytes = {}\n", broken.len()),
    );
    assert_ne!(patched, text, "the manifest lists the decoder");
    std::fs::write(dir.join("manifest.toml"), patched).unwrap();
    let out = segment_at(&dir, "int8", &[]);
    fails_with(&out, "sam_decoder.int8.onnx");
    fails_with(&out, &format!("`{node}`"));
    fails_with(&out, &format!("`{scale}`"));
    fails_with(&out, "scale value NaN");
}

#[test]
fn bad_models() {
    let run = |dir: &Path| segment_at(dir, "fp32", &[]);
    fails_with(
        &run(Path::new("/nonexistent-models")),
        "cannot read model manifest",
    );

    // Truncated encoder: caught by the manifest's size before parsing.
    let dir = common::scratch_models("trunc");
    let enc = dir.join("sam_encoder.fp32.onnx");
    let bytes = std::fs::read(&enc).unwrap();
    std::fs::write(&enc, &bytes[..bytes.len() / 2]).unwrap();
    fails_with(&run(&dir), "truncated");

    // Same size, flipped bytes: caught by sha256.
    let mut b = bytes.clone();
    let n = b.len();
    b[n / 2] ^= 0xff;
    std::fs::write(&enc, &b).unwrap();
    fails_with(&run(&dir), "sha256");

    // A corrupt file the manifest vouches for (user regenerated the manifest): the parser's error.
    let text = std::fs::read_to_string(dir.join("manifest.toml")).unwrap();
    let good_sha = sonomask::model::manifest::sha256_hex(&bytes);
    let bad_sha = sonomask::model::manifest::sha256_hex(&b[..n / 3]);
    std::fs::write(&enc, &b[..n / 3]).unwrap();
    let patched = text
        .replace(&good_sha, &bad_sha)
        .replace(&format!("bytes = {n}\n"), &format!("bytes = {}\n", n / 3));
    std::fs::write(dir.join("manifest.toml"), patched).unwrap();
    fails_with(&run(&dir), "cannot parse ONNX model");

    // The wrong model for the role: the decoder file listed as the encoder.
    let dir = common::scratch_models("wrongrole");
    std::fs::copy(
        dir.join("sam_decoder.fp32.onnx"),
        dir.join("sam_encoder.fp32.onnx"),
    )
    .unwrap();
    let dec = std::fs::read(dir.join("sam_decoder.fp32.onnx")).unwrap();
    let text = std::fs::read_to_string(dir.join("manifest.toml")).unwrap();
    let patched = text
        .replacen(&good_sha, &sonomask::model::manifest::sha256_hex(&dec), 1)
        .replacen(
            &format!("bytes = {n}\n"),
            &format!("bytes = {}\n", dec.len()),
            1,
        );
    std::fs::write(dir.join("manifest.toml"), patched).unwrap();
    let out = run(&dir);
    fails_with(&out, "sam_encoder.fp32.onnx: model inputs are");
    fails_with(&out, "\"image\"");

    // A model with the right names but the wrong input size (manifest says 512 px).
    let dir = common::scratch_models("wrongshape");
    let text = std::fs::read_to_string(dir.join("manifest.toml")).unwrap();
    let patched = text.replace("image_size = 256", "image_size = 512");
    std::fs::write(dir.join("manifest.toml"), patched).unwrap();
    fails_with(
        &run(&dir),
        "input 'image' has shape [1,3,256,256], expected [1,3,512,512]",
    );

    // A precision that was never built.
    let dir = common::scratch_models("noint8");
    let text = std::fs::read_to_string(dir.join("manifest.toml")).unwrap();
    let fp32_only: String = text
        .split("[[model]]")
        .filter(|s| !s.contains("precision = \"int8\""))
        .collect::<Vec<_>>()
        .join("[[model]]");
    std::fs::write(dir.join("manifest.toml"), fp32_only).unwrap();
    fails_with(
        &segment_at(&dir, "int8", &[]),
        "no sam_encoder model in int8 precision",
    );
}

/// The manifest's family: an unknown one is refused naming the file and the known families; a
/// family whose recorded scaling is another family's is refused too.
#[test]
fn unknown_or_inconsistent_family() {
    let img = input();
    for (tag, edit, needle) in [
        (
            "family-unknown",
            "[sam]\nfamily = \"medsam_xl\"",
            "unknown variant `medsam_xl`",
        ),
        (
            "family-mixed",
            "[sam]\nfamily = \"lite_medsam\"",
            "family lite_medsam takes normalization \"min_max\"",
        ),
    ] {
        let dir = common::scratch_models(tag);
        let m = dir.join("manifest.toml");
        let text = std::fs::read_to_string(&m).unwrap();
        let text = text
            .replace("family = \"mobilesam\"\n", "")
            .replace("[sam]", edit);
        std::fs::write(&m, text).unwrap();
        let out = segment_box(&img, "40,30,150,120", dir.to_str().unwrap());
        fails_with(&out, needle);
        fails_with(&out, "manifest.toml");
        std::fs::remove_dir_all(&dir).ok();
    }
}

/// LiteMedSAM's recipe on the edge cases the issue names: a box on the image border and a flat
/// frame (max = min) give a mask and exit 0; the flat frame's input is all zeros (the official
/// recipe's result) and the run says so.
#[test]
fn lite_medsam_border_box_and_flat_frame() {
    let lite = common::fixtures().join("models_tiny_lite");
    let dir = std::env::temp_dir().join(format!("sonomask-lite-edge-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mask = dir.join("mask.png");
    let out = sonomask(&[
        "segment",
        &input(),
        "--box",
        "0,0,200,150",
        "--models",
        lite.to_str().unwrap(),
        "-o",
        mask.to_str().unwrap(),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["model"]["family"], "lite_medsam");
    assert_eq!(
        (j["width"].as_u64(), j["height"].as_u64()),
        (Some(200), Some(150))
    );
    let flat = dir.join("flat.png");
    image::RgbImage::from_pixel(120, 90, image::Rgb([40, 40, 40]))
        .save(&flat)
        .unwrap();
    let out = sonomask_logging(
        &[
            "segment",
            flat.to_str().unwrap(),
            "--box",
            "10,10,100,80",
            "--models",
            lite.to_str().unwrap(),
            "-o",
            mask.to_str().unwrap(),
        ],
        "warn",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("flat image") && err.contains("all zeros"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// `segment --measure` reports what the measurement stage computes on the mask it wrote (the
/// stage eval and stream call), in mm with --pixel-size; bad flags are refused.
#[test]
fn segment_measures_its_mask() {
    let dir = std::env::temp_dir().join(format!("sonomask-cli-measure-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let m = dir.join("mask.png");
    let models = common::models_tiny();
    let out = sonomask(&[
        "segment",
        &input(),
        "--box",
        "40,30,150,120",
        "--models",
        models.to_str().unwrap(),
        "-o",
        m.to_str().unwrap(),
        "--overlay",
        dir.join("o.png").to_str().unwrap(),
        "--measure",
        "lesion",
        "--pixel-size",
        "0.1",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let png = image::open(&m).unwrap().to_luma8();
    let mask = sonomask::mask::Mask {
        width: png.width(),
        height: png.height(),
        data: png.pixels().map(|p| (p.0[0] > 127) as u8).collect(),
    };
    let want = sonomask::output::measure::measure_for(
        sonomask::output::measure::Target::Lesion,
        &mask,
        &[],
        Some(sonomask::output::measure::Spacing::isotropic(0.1)),
        &mut Default::default(),
    );
    match want {
        None => assert!(j["measure"].is_null(), "empty mask, no measurement"),
        Some(w) => {
            assert_eq!(j["measure"]["unit"], "mm");
            assert_eq!(j["measure"]["target"], "lesion");
            assert!((j["measure"]["area"].as_f64().unwrap() - w.area).abs() < 1e-9);
            let long = j["measure"]["long_axis"]["length"].as_f64().unwrap();
            assert!((long - w.long_axis.length).abs() < 1e-9);
        }
    }
    let bad = |flag: &str, v: &str, needle: &str| {
        let out = sonomask(&[
            "segment",
            &input(),
            "--box",
            "40,30,150,120",
            "--models",
            models.to_str().unwrap(),
            "-o",
            m.to_str().unwrap(),
            flag,
            v,
        ]);
        fails_with(&out, needle);
    };
    bad("--measure", "bpd", "hc, lesion and none");
    bad("--pixel-size", "-1", "not a pixel size");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn help_and_flag_errors_come_from_the_declarations() {
    for sub in [
        "segment",
        "prompt-bank",
        "stream",
        "listen",
        "run",
        "eval",
        "bench",
        "doctor",
    ] {
        let out = sonomask(&[sub, "--help"]);
        assert!(out.status.success(), "{sub} --help");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            help.contains(&format!("Usage: sonomask {sub}")),
            "{sub}: {help}"
        );
    }
    // bench once lacked the shared --decoder-precision; the flattened group gives it.
    let bench = sonomask(&["bench", "--help"]);
    assert!(String::from_utf8_lossy(&bench.stdout).contains("--decoder-precision"));
    let top = sonomask(&["--help"]);
    assert!(String::from_utf8_lossy(&top.stdout).contains("prompt-bank"));
    fails_with(
        &sonomask(&["segment", "x.png", "--bogus"]),
        "unknown option --bogus",
    );
    fails_with(
        &sonomask(&["segment", "x.png", "--box"]),
        "--box needs a value",
    );
    fails_with(&sonomask(&["doctor", "--json=1"]), "--json takes no value");
    fails_with(&sonomask(&["frobnicate"]), "unknown command 'frobnicate'");
    fails_with(
        &sonomask(&["stream", "stray", "--sink", "stdout"]),
        "unexpected argument 'stray'",
    );
    fails_with(
        &sonomask(&["bench", "x.png", "--runs", "many", "--box", "1,2,3,4"]),
        "--runs 'many' is not valid",
    );
}
