//! `sonomask doctor` and `sonomask run --board` on this machine.

mod common;

use std::path::Path;
use std::process::{Command, Output};

fn sonomask(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sonomask"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("SONOMASK_LOG", "warn")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn doctor_reports_cpu_models_and_warnings() {
    let tiny = common::models_tiny();
    let o = sonomask(&["doctor", "--json", "--models", tiny.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["arch"], std::env::consts::ARCH);
    // The own int8 kernel doctor names is the one this CPU's features pick.
    assert_eq!(
        j["int8_kernel"],
        sonomask::simd::int8::I8Kernel::best().name()
    );
    #[cfg(target_arch = "x86_64")]
    {
        assert_eq!(
            j["cpu_features"]["avx2"],
            std::arch::is_x86_feature_detected!("avx2")
        );
        // Without a measured table, auto follows the rule: int8 where the own int8 kernel
        // has a dot-product instruction (VNNI on x86), else fp32.
        use sonomask::simd::int8::I8Kernel;
        assert_eq!(
            j["auto_precision"],
            if I8Kernel::best().has_dot_product() {
                "int8"
            } else {
                "fp32"
            },
            "int8 kernel {}",
            I8Kernel::best().name()
        );
    }
    assert!(
        j["models"]["summary"]
            .as_str()
            .unwrap()
            .starts_with("8 file(s), 8 ok"),
        "{}",
        j["models"]
    );
    let warnings = j["warnings"].to_string();
    assert!(warnings.contains("SYNTHETIC"), "{warnings}");
    // the fixtures ship without the CLIP vocabulary (it is ../shared's): said, not fatal
    assert!(
        j["models"]["text_prompts"]
            .as_str()
            .unwrap()
            .starts_with("unavailable"),
        "{}",
        j["models"]
    );
    assert!(warnings.contains("vocabulary"), "{warnings}");
    // A damaged model is reported, not fatal.
    let scratch = common::scratch_models("doctor");
    let enc = scratch.join("sam_encoder.fp32.onnx");
    let mut b = std::fs::read(&enc).unwrap();
    b[1000] ^= 0xFF;
    std::fs::write(&enc, b).unwrap();
    let o = sonomask(&["doctor", "--json", "--models", scratch.to_str().unwrap()]);
    assert!(o.status.success());
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        j["models"]["summary"].as_str().unwrap().contains("7 ok"),
        "{}",
        j["models"]
    );
    assert!(j["warnings"].to_string().contains("fail their check"));
    // No models at all: still a report.
    let o = sonomask(&["doctor", "--models", "/no/such/models"]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("cannot read model manifest"));
}

/// A 7-bit-weight int8 encoder beside the 8-bit one: loaded (and `auto` picks int8 for it) only
/// where the int8 kernel is AVX2's, which runs 7-bit weights in one pass; every other kernel
/// loads the 8-bit file. The process's kernel is pinned with `SONOMASK_INT8_KERNEL`.
#[test]
fn the_7_bit_int8_file_is_loaded_only_by_the_avx2_int8_kernel() {
    use sonomask::simd::int8::I8Kernel;
    let dir = common::scratch_models("w7");
    let m = sonomask::model::Manifest::load(&dir).unwrap();
    let e = m
        .entry_for(
            sonomask::model::Role::SamEncoder,
            sonomask::model::Precision::Int8,
            false,
        )
        .unwrap();
    std::fs::copy(dir.join(&e.file), dir.join("sam_encoder.int8w7.onnx")).unwrap();
    let entry = format!(
        "\n[[model]]\nfile = \"sam_encoder.int8w7.onnx\"\nrole = \"sam_encoder\"\nprecision = \"int8\"\nsha256 = \"{}\"\nbytes = {}\nweight_bits = 7\n",
        e.sha256, e.bytes
    );
    let manifest = dir.join("manifest.toml");
    let text = std::fs::read_to_string(&manifest).unwrap() + &entry;
    std::fs::write(&manifest, text).unwrap();
    let kernels: Vec<I8Kernel> = I8Kernel::available();
    assert!(kernels.contains(&I8Kernel::Scalar));
    for k in kernels {
        let o = Command::new(env!("CARGO_BIN_EXE_sonomask"))
            .env("SONOMASK_LOG", "warn")
            .env("SONOMASK_INT8_KERNEL", k.name())
            .args(["doctor", "--json", "--models", dir.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(j["int8_kernel"], k.name());
        let loaded: Vec<&str> = j["models"]["files"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["role"] == "sam_encoder" && f["precision"] == "int8")
            .filter(|f| f["loaded_here"] == true)
            .map(|f| f["file"].as_str().unwrap())
            .collect();
        let w7 = k == I8Kernel::Avx2;
        let want = if w7 {
            "sam_encoder.int8w7.onnx"
        } else {
            e.file.as_str()
        };
        assert_eq!(loaded, [want], "{}", k.name());
        // Without a measured table: int8 for the 7-bit file on AVX2; the 8-bit decoder there
        // stays fp32 (two passes).
        let auto = &j["auto_precision_by_model"];
        let dot = k.has_dot_product();
        let pick = |p: bool| if p { "int8" } else { "fp32" };
        assert_eq!(
            auto["sam_encoder"]["precision"],
            pick(dot || w7),
            "{}",
            k.name()
        );
        assert_eq!(auto["sam_decoder"]["precision"], pick(dot), "{}", k.name());
        eprintln!("int8 kernel {}: loads {want}", k.name());
    }
    // The 7-bit file runs: a box prompt segmented with it on whichever kernel prefers it.
    if I8Kernel::available().contains(&I8Kernel::Avx2) {
        let out = dir.join("mask.png");
        let o = Command::new(env!("CARGO_BIN_EXE_sonomask"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("SONOMASK_LOG", "info")
            .env("SONOMASK_INT8_KERNEL", "avx2")
            .args([
                "segment",
                "tests/fixtures/models_tiny/input.png",
                "--box",
                "10,10,100,100",
            ])
            .args(["--precision", "int8", "--models", dir.to_str().unwrap()])
            .args(["-o", out.to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{err}");
        assert!(err.contains("sam_encoder.int8w7.onnx"), "{err}");
    }
}

#[test]
fn run_builds_the_stream_command_from_the_board() {
    let o = sonomask(&["run", "--board", "rpi5", "--dry-run", "--sink", "stdout"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cmd = String::from_utf8_lossy(&o.stdout).to_string();
    for part in [
        "--source raw:tcp:127.0.0.1:5600",
        "--models /opt/sonomask/models",
        "--precision int8",
        "--decoder-precision fp32",
        "--threads 4",
        "--reencode-every 10",
    ] {
        assert!(cmd.contains(part), "{part} missing in: {cmd}");
    }
    // The override comes after the board's sink, so it wins.
    assert!(
        cmd.find("--sink serial:/dev/ttyGS0@921600").unwrap() < cmd.find("--sink stdout").unwrap()
    );
    // a text-prompted board profile passes its text and pipeline on
    let rpi5 =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("boards/rpi5.toml"))
            .unwrap();
    let text_board =
        std::env::temp_dir().join(format!("sonomask-textboard-{}.toml", std::process::id()));
    std::fs::write(
        &text_board,
        rpi5.replace(
            "mode = \"interactive\"",
            "mode = \"salip\"\ntext = \"fetal head\"",
        ),
    )
    .unwrap();
    let o = sonomask(&["run", "--board", text_board.to_str().unwrap(), "--dry-run"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("--text fetal head --pipeline salip"));
    let bad = sonomask(&["run", "--board", "rpi9"]);
    assert_eq!(bad.status.code(), Some(1));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("unknown board 'rpi9'") && err.contains("jetson-nano"),
        "{err}"
    );
    let none = sonomask(&["run"]);
    assert!(String::from_utf8_lossy(&none.stderr).contains("needs --board"));
}

#[test]
fn run_streams_with_a_board_profile_and_overrides() {
    // x86-cart (int8 encoder, fp32 decoder) pointed at the tiny models and a one-frame source,
    // masks to a file.
    let dir = std::env::temp_dir().join(format!("sonomask-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rec = dir.join("rec.bin");
    let tiny = common::models_tiny();
    let image = tiny.join("input.png");
    let o = sonomask(&[
        "run",
        "--board",
        "x86-cart",
        "--models",
        tiny.to_str().unwrap(),
        "--source",
        image.to_str().unwrap(),
        "--sink",
        &format!("file:{}", rec.display()),
        "--box",
        "40,30,150,120",
        "--threads",
        "1",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines = common::listen_recording(&rec, &dir.join("out"));
    assert_eq!(common::of_type(&lines, "mask").len(), 1, "{lines:?}");
    // The Hello names both models at the board's precisions (encoder int8 = 1, decoder fp32 = 0).
    let hello = common::of_type(&lines, "hello")[0];
    let models = hello["models"].as_array().unwrap();
    let precisions: Vec<_> = models.iter().map(|m| m["precision"].clone()).collect();
    assert_eq!(precisions, [1, 0], "{hello}");
    // A board whose models are missing for its precision fails with the manifest's words.
    let o = sonomask(&[
        "run",
        "--board",
        "rpi5",
        "--models",
        "/no/such/models",
        "--source",
        image.to_str().unwrap(),
        "--sink",
        "stdout",
        "--box",
        "1,1,20,20",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot read model manifest"));
}

#[test]
fn bench_takes_the_decoder_precision_like_segment() {
    let tiny = common::models_tiny();
    let img = tiny.join("input.png");
    let bench = |extra: &[&str]| {
        let mut args = vec![
            "bench",
            img.to_str().unwrap(),
            "--box",
            "40,30,150,120",
            "--models",
            tiny.to_str().unwrap(),
            "--precision",
            "fp32",
            "--runs",
            "1",
            "--warmup",
            "0",
        ];
        args.extend_from_slice(extra);
        sonomask(&args)
    };
    let precisions = |extra: &[&str]| {
        let o = bench(extra);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        (j["precision"].clone(), j["decoder_precision"].clone())
    };
    assert_eq!(precisions(&[]), ("fp32".into(), "fp32".into()));
    assert_eq!(
        precisions(&["--decoder-precision", "int8"]),
        ("fp32".into(), "int8".into())
    );
    assert_eq!(
        bench(&["--decoder-precision", "int4"]).status.code(),
        Some(1)
    );
}

#[test]
fn bench_table_times_every_model_in_every_precision() {
    let tiny = common::models_tiny();
    let img = tiny.join("input.png");
    let o = sonomask(&[
        "bench",
        img.to_str().unwrap(),
        "--table",
        "--models",
        tiny.to_str().unwrap(),
        "--runs",
        "1",
        "--warmup",
        "0",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    for m in ["sam_encoder", "sam_decoder", "clip_image", "clip_text"] {
        assert!(out.contains(&format!("| {m} |")), "{m} row missing: {out}");
    }
    let j: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(j["ms"].as_array().unwrap().len(), 8);
    for m in ["sam_encoder", "sam_decoder", "clip_image", "clip_text"] {
        let p = j["faster_here"][m].as_str().unwrap();
        assert!(p == "fp32" || p == "int8");
    }
}

/// `bench --table --save` records the faster precision per model for this CPU class;
/// `--precision auto` (as `doctor` reports it) follows that table, and the rule without it.
#[test]
fn precision_auto_follows_the_table_bench_saves() {
    use sonomask::model::precision_table::{FILE, cpu_class, rule};
    let dir = common::scratch_models("ptable");
    let d = dir.to_str().unwrap();
    let auto = |role: &str| -> (String, String) {
        let o = sonomask(&["doctor", "--json", "--models", d]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let p = &j["auto_precision_by_model"][role];
        (
            p["precision"].as_str().unwrap().into(),
            p["from"].as_str().unwrap().into(),
        )
    };
    let roles = ["sam_encoder", "sam_decoder", "clip_image", "clip_text"];
    for role in roles {
        let (p, from) = auto(role);
        // The fixtures have 8-bit int8 files only.
        assert_eq!(p, rule(false).as_str(), "{role}: the rule without a table");
        assert!(from.contains("no measurement"), "{from}");
    }
    let img = common::models_tiny().join("input.png");
    let o = sonomask(&[
        "bench",
        img.to_str().unwrap(),
        "--table",
        "--save",
        "--runs",
        "1",
        "--warmup",
        "0",
        "--models",
        d,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("saved to"));
    let path = dir.join(FILE);
    let mut table: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let entry = &table["entries"][0];
    assert_eq!(entry["cpu_class"], cpu_class());
    for role in roles {
        // the recorded pick: int8 where its median is under the margin of fp32's
        let ms = &entry["ms"][role];
        let (f, i) = (ms["fp32"].as_f64().unwrap(), ms["int8"].as_f64().unwrap());
        let faster = if i < sonomask::cli::bench::INT8_MARGIN * f {
            "int8"
        } else {
            "fp32"
        };
        assert_eq!(entry["faster"][role], faster, "{role}");
        let (p, from) = auto(role);
        assert_eq!(p, faster, "{role}: auto follows the table");
        assert!(from.contains("measured"), "{from}");
    }
    // the table decides, whatever the rule says: flip the decoder's entry
    let flipped = match entry["faster"]["sam_decoder"].as_str().unwrap() {
        "int8" => "fp32",
        _ => "int8",
    };
    table["entries"][0]["faster"]["sam_decoder"] = flipped.into();
    std::fs::write(&path, table.to_string()).unwrap();
    assert_eq!(auto("sam_decoder").0, flipped);
}
