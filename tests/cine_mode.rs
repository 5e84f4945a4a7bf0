//! Cine mode: embedding reuse, re-encoding on change, smoothing, and the multi-frame outputs,
//! on the tiny fixture models (synthetic weights: the masks prove the mechanics, not anatomy).

mod common;

use sonomask::input::image_io::{RgbFrame, load_rgb};
use sonomask::model::Precision;
use sonomask::pipelines::cine::{Cine, CineOptions};
use sonomask::pipelines::segment::SamSession;
use sonomask::prompting::prompt::{BoxPrompt, Prompt};
use sonomask::timing::Timings;
use std::process::Command;

/// `sonomask segment SOURCE --box BOX --json -o OUT` on the tiny fp32 models, plus `extra`.
fn segment_cine(
    source: &std::ffi::OsStr,
    bbox: &str,
    out: &std::path::Path,
    extra: &[&str],
) -> std::process::Output {
    segment_cine_cmd(source, bbox, out, extra).output().unwrap()
}

fn segment_cine_cmd(
    source: &std::ffi::OsStr,
    bbox: &str,
    out: &std::path::Path,
    extra: &[&str],
) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sonomask"));
    c.env("SONOMASK_LOG", "error")
        .arg("segment")
        .arg(source)
        .args(["--box", bbox, "--precision", "fp32", "--json", "--models"])
        .arg(common::models_tiny())
        .arg("-o")
        .arg(out)
        .args(extra);
    c
}

fn session() -> SamSession {
    SamSession::load(&common::models_tiny(), Precision::Fp32).unwrap()
}

fn prompt() -> Prompt {
    Prompt {
        bbox: Some(BoxPrompt {
            x0: 40.0,
            y0: 30.0,
            x1: 150.0,
            y1: 120.0,
        }),
        points: vec![],
    }
}

fn shifted(f: &RgbFrame, dx: u32) -> RgbFrame {
    let mut out = f.clone();
    for y in 0..f.height {
        for x in 0..f.width {
            let sx = (x + dx).min(f.width - 1);
            let s = ((y * f.width + sx) * 3) as usize;
            let d = ((y * f.width + x) * 3) as usize;
            out.pixels[d..d + 3].copy_from_slice(&f.pixels[s..s + 3]);
        }
    }
    out
}

#[test]
fn encoder_reruns_only_on_change_and_reuse_matches_a_fresh_decode() {
    let a = load_rgb(&common::models_tiny().join("input.png")).unwrap();
    let b = shifted(&a, 40); // a different view: large change
    let frames = [&a, &a, &a, &b, &b, &a];
    let mut s = session();
    let mut cine = Cine::new(CineOptions {
        smooth: 1.0,
        ..CineOptions::default()
    });
    let mut ran = Vec::new();
    let mut masks = Vec::new();
    for f in frames {
        let step = cine
            .step(&mut s, f, &prompt(), &mut Timings::default())
            .unwrap();
        ran.push(step.encoder_ran);
        masks.push(step.segmentation.mask);
    }
    assert_eq!(ran, vec![true, false, false, true, false, true]);
    // A reused embedding gives exactly the mask a fresh encode of the same frame gives.
    let mut fresh = session();
    let mut t = Timings::default();
    let e = fresh.encode(&a, &mut t).unwrap();
    let direct = fresh.decode(&e, &prompt(), &mut t).unwrap().mask;
    assert_eq!(masks[1], direct);
    assert_eq!(masks[2], direct);
}

/// `will_encode` answers ahead what the next `step` does (text pipelines recompute their
/// saliency box only then), on the same frame sequence.
#[test]
fn will_encode_predicts_the_next_step() {
    let a = load_rgb(&common::models_tiny().join("input.png")).unwrap();
    let b = shifted(&a, 40);
    let mut s = session();
    let mut cine = Cine::new(CineOptions::default());
    let mut said = Vec::new();
    let mut ran = Vec::new();
    for f in [&a, &a, &b, &b, &a] {
        let mut t = Timings::default();
        said.push(cine.will_encode(f, &mut t));
        ran.push(cine.step(&mut s, f, &prompt(), &mut t).unwrap().encoder_ran);
        // the change was measured once per frame, not again by step
        assert_eq!(t.stages.iter().filter(|(n, _)| *n == "change").count(), 1);
    }
    assert_eq!(said, ran);
    assert_eq!(ran, vec![true, false, true, false, true]);
}

#[test]
fn reencode_every_n_and_no_reuse() {
    let a = load_rgb(&common::models_tiny().join("input.png")).unwrap();
    let mut s = session();
    let mut cine = Cine::new(CineOptions {
        max_reuse: 3,
        ..CineOptions::default()
    });
    let ran: Vec<bool> = (0..9)
        .map(|_| {
            cine.step(&mut s, &a, &prompt(), &mut Timings::default())
                .unwrap()
                .encoder_ran
        })
        .collect();
    assert_eq!(
        ran,
        vec![true, false, false, false, true, false, false, false, true]
    );
    let mut every = Cine::new(CineOptions {
        threshold: 0.0,
        max_reuse: 0,
        ..CineOptions::default()
    });
    assert!((0..3).all(|_| {
        every
            .step(&mut s, &a, &prompt(), &mut Timings::default())
            .unwrap()
            .encoder_ran
    }));
}

#[test]
fn smoothing_blends_only_overlapping_masks() {
    let a = load_rgb(&common::models_tiny().join("input.png")).unwrap();
    let mut s = session();
    let mut cine = Cine::new(CineOptions::default());
    let first = cine
        .step(&mut s, &a, &prompt(), &mut Timings::default())
        .unwrap();
    assert!(!first.blended, "nothing to blend with on the first frame");
    let second = cine
        .step(&mut s, &a, &prompt(), &mut Timings::default())
        .unwrap();
    assert!(second.blended, "same frame, same prompt: IoU 1, blended");
    // Blending a mask with itself changes nothing.
    assert_eq!(second.segmentation.mask, first.segmentation.mask);
    // A prompt elsewhere gives a disjoint mask: the gate keeps it unblended.
    let far = Prompt {
        bbox: Some(BoxPrompt {
            x0: 160.0,
            y0: 120.0,
            x1: 199.0,
            y1: 149.0,
        }),
        points: vec![],
    };
    let third = cine
        .step(&mut s, &a, &far, &mut Timings::default())
        .unwrap();
    let mut fresh = session();
    let mut t = Timings::default();
    let e = fresh.encode(&a, &mut t).unwrap();
    let raw = fresh.decode(&e, &far, &mut t).unwrap().mask;
    let overlap = raw.iou(&second.segmentation.mask);
    assert_eq!(third.blended, overlap >= 0.5, "gate at IoU {overlap}");
    if !third.blended {
        assert_eq!(
            third.segmentation.mask, raw,
            "an unblended mask is the decoder's own"
        );
    }
}

#[test]
fn damaged_dicom_is_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("sonomask-baddcm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good =
        std::fs::read(common::fixtures().join("dicom/variants/palette_3frames.dcm")).unwrap();
    let bad = dir.join("cut.dcm");
    std::fs::write(&bad, &good[..good.len() - 100]).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_sonomask"))
        .args([
            "segment",
            bad.to_str().unwrap(),
            "--box",
            "1,1,20,20",
            "--precision",
            "fp32",
            "--models",
        ])
        .arg(common::models_tiny())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cut.dcm") && err.contains("truncated"),
        "{err}"
    );
    assert!(!err.contains("panicked"));
}

#[test]
fn segment_on_the_real_cine_dicom_writes_every_frame() {
    let Some(shared) = common::shared() else {
        return;
    };
    let out = std::env::temp_dir().join(format!("sonomask-cine-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let dcm = shared.join("data/dicom_us/examples_ybr_color.dcm");
    let run = |extra: &[&str]| {
        let o = segment_cine(dcm.as_os_str(), "100,60,220,180", &out, extra);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    let reuse = run(&[]);
    assert_eq!(reuse["frames"], 30);
    let runs = reuse["encoder_runs"].as_u64().unwrap();
    assert!((3..30).contains(&runs), "encoder runs {runs}");
    assert!((reuse["pixel_spacing_mm"][0].as_f64().unwrap() - 0.5104970559477806).abs() < 1e-12);
    let lines = std::fs::read_to_string(out.join("frames.jsonl")).unwrap();
    let frames: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(frames.len(), 30);
    assert_eq!(
        frames.iter().filter(|f| f["encoder_ran"] == true).count() as u64,
        runs
    );
    for k in 0..30 {
        let m = load_rgb(&out.join(format!("mask_{k:05}.png"))).unwrap();
        assert_eq!((m.width, m.height), (320, 240));
    }
    // overlay.png is an animated PNG with 30 frames (acTL chunk: num_frames).
    let apng = std::fs::read(out.join("overlay.png")).unwrap();
    let at = apng
        .windows(4)
        .position(|w| w == b"acTL")
        .expect("animated PNG");
    assert_eq!(
        u32::from_be_bytes(apng[at + 4..at + 8].try_into().unwrap()),
        30
    );
    assert!(out.join("strip.png").exists());
    let every = run(&["--no-reuse"]);
    assert_eq!(every["encoder_runs"], 30);
}

#[test]
fn raw_frame_stream_source_and_a_size_change() {
    let a = load_rgb(&common::models_tiny().join("input.png")).unwrap();
    let dir = std::env::temp_dir().join(format!("sonomask-raw-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let raw = dir.join("frames.raw");
    let mut bytes = Vec::new();
    for _ in 0..3 {
        sonomask::input::source::write_raw_frame(&mut bytes, &a).unwrap();
    }
    let small = RgbFrame::new(100, 50, vec![9; 100 * 50 * 3]).unwrap();
    sonomask::input::source::write_raw_frame(&mut bytes, &small).unwrap();
    std::fs::write(&raw, &bytes).unwrap();
    let out = dir.join("out");
    let o = segment_cine(
        format!("raw:{}", raw.display()).as_ref(),
        "40,30,150,120",
        &out,
        &[],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (j["frames"].as_u64(), j["failed_frames"].as_u64()),
        (Some(3), Some(1))
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("the stream started with 200x150"), "{err}");
}

/// Runs `segment raw:<spec>` on the tiny models for `n` frames; returns the JSON summary.
fn segment_raw(spec: &str, n: u32, tag: &str) -> serde_json::Value {
    let out = std::env::temp_dir().join(format!("sonomask-rawlink-{tag}-{}", std::process::id()));
    let o = segment_cine(
        spec.as_ref(),
        "40,30,150,120",
        &out,
        &["--max-frames", &n.to_string()],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn raw_frames_over_a_serial_link_and_tcp() {
    use std::io::Write;
    let a = load_rgb(&common::models_tiny().join("input.png")).unwrap();
    let mut frame = Vec::new();
    sonomask::input::source::write_raw_frame(&mut frame, &a).unwrap();

    // Serial: a capture device writes frames into the far end of a pty pair, once sonomask
    // has the port open (bytes written before would be flushed by its open).
    let (mut master, slave) = serialport::TTYPort::pair().unwrap();
    let path = serialport::SerialPort::name(&slave).unwrap();
    let out = std::env::temp_dir().join(format!("sonomask-rawlink-serial-{}", std::process::id()));
    let child = segment_cine_cmd(
        format!("raw:serial:{path}@921600").as_ref(),
        "40,30,150,120",
        &out,
        &["--max-frames", "3"],
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    common::wait_until(
        "sonomask to open the serial port",
        std::time::Duration::from_secs(20),
        || common::holds_open(child.id(), std::path::Path::new(&path)),
    );
    serialport::SerialPort::set_timeout(&mut master, std::time::Duration::from_secs(5)).unwrap();
    for c in frame.repeat(4).chunks(4096) {
        master.write_all(c).unwrap();
    }
    // The far end stays open until sonomask has read its three frames and exited.
    let o = child.wait_with_output().unwrap();
    drop(slave);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["frames"], 3);

    // TCP: the device connects to a frame server.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.write_all(&frame.repeat(2)).unwrap();
    });
    let j = segment_raw(&format!("raw:tcp:{addr}"), 10, "tcp");
    assert_eq!(j["frames"], 2, "the stream ended after two frames");
    server.join().unwrap();
}
