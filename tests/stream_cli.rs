//! `stream` and `listen` refuse bad input with one clear line and exit 1, never a panic.

mod common;

use std::process::{Command, Output};

fn sonomask(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sonomask"))
        .env("SONOMASK_LOG", "warn")
        .args(args)
        .output()
        .unwrap()
}

fn fails_with(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "expected exit 1, stderr: {err}");
    assert!(err.contains(needle), "stderr lacks '{needle}': {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
}

fn tmp(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("sonomask-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn stream_bad_arguments() {
    let img = common::models_tiny().join("input.png");
    let img = img.to_str().unwrap();
    fails_with(&sonomask(&["stream", "--sink", "stdout"]), "needs --source");
    fails_with(&sonomask(&["stream", "--source", img]), "needs --sink");
    fails_with(
        &sonomask(&["stream", "--source", img, "--sink", "udp:1.2.3.4:5"]),
        "unknown endpoint",
    );
    fails_with(
        &sonomask(&["stream", "--source", img, "--sink", "tcp:nohost"]),
        "not tcp:HOST:PORT",
    );
    fails_with(
        &sonomask(&["stream", "--source", img, "--sink", "serial:/dev/x@fast"]),
        "baud rate",
    );
    fails_with(
        &sonomask(&[
            "stream",
            "--source",
            "/no/such/dir",
            "--sink",
            "stdout",
            "--masks",
        ]),
        "/no/such/dir",
    );
    fails_with(
        &sonomask(&[
            "stream", "--source", img, "--sink", "stdout", "--masks", "--box", "1,2,3,4",
        ]),
        "do not apply",
    );
    fails_with(
        &sonomask(&["stream", "--source", img, "--sink", "stdout"]),
        "no prompt",
    );
    fails_with(
        &sonomask(&[
            "stream", "--source", img, "--sink", "stdout", "--masks", "--queue", "0",
        ]),
        "--queue",
    );
    fails_with(
        &sonomask(&[
            "stream", "--source", img, "--sink", "stdout", "--masks", "--fps", "-3",
        ]),
        "--fps",
    );
    let empty = tmp("empty");
    fails_with(
        &sonomask(&[
            "stream",
            "--source",
            empty.to_str().unwrap(),
            "--sink",
            "stdout",
            "--masks",
        ]),
        "no PNG, JPEG or DICOM",
    );
    // A box outside the frame skips that frame (reported), never ends the stream
    // (stream_skips_a_frame_the_prompt_does_not_fit checks the wire).
    let out = sonomask(&[
        "stream",
        "--source",
        img,
        "--sink",
        "file:/dev/null",
        "--box",
        "0,0,900,900",
        "--precision",
        "fp32",
        "--models",
        common::models_tiny().to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("lies outside") && err.contains("frame skipped"),
        "{err}"
    );
}

#[test]
fn stream_to_an_absent_serial_port_says_so() {
    // An unplugged cable: the device keeps trying while it has frames, then reports what failed.
    let img = common::models_tiny().join("input.png");
    let out = sonomask(&[
        "stream",
        "--masks",
        "--source",
        img.to_str().unwrap(),
        "--count",
        "2",
        "--sink",
        "serial:/dev/ttyNOSUCH0",
    ]);
    fails_with(&out, "never opened");
    fails_with(&out, "/dev/ttyNOSUCH0");
}

#[test]
fn stream_skips_an_unreadable_frame_and_goes_on() {
    let masks = tmp("badframe");
    let mask = common::fixtures().join("models_tiny/input.png");
    std::fs::copy(&mask, masks.join("a1.png")).unwrap();
    std::fs::write(masks.join("a2.png"), b"not a png").unwrap();
    std::fs::copy(&mask, masks.join("a3.png")).unwrap();
    let rec = masks.join("rec.bin");
    let out = sonomask(&[
        "stream",
        "--masks",
        "--source",
        masks.to_str().unwrap(),
        "--sink",
        &format!("file:{}", rec.display()),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = common::listen_recording(&rec, &masks.join("out"));
    let log: String = lines.iter().map(|v| format!("{v}\n")).collect();
    assert_eq!(common::of_type(&lines, "mask").len(), 2, "{log}");
    assert!(
        log.contains("\"name\":\"source\""),
        "the bad frame is reported as an Error: {log}"
    );
}

#[test]
fn listen_bad_arguments_and_garbage() {
    let out = tmp("listen");
    let o = out.to_str().unwrap();
    fails_with(&sonomask(&["listen", "--out", o]), "exactly one ENDPOINT");
    fails_with(&sonomask(&["listen", "rec.bin"]), "needs --out");
    fails_with(
        &sonomask(&["listen", "/no/such/file.bin", "--out", o]),
        "/no/such/file.bin",
    );
    fails_with(
        &sonomask(&["listen", "udp:1:2", "--out", o]),
        "unknown endpoint",
    );
    fails_with(
        &sonomask(&["listen", "rec.bin", "--out", o, "--pipeline", "salip"]),
        "needs --box, --point or --text",
    );
    fails_with(
        &sonomask(&[
            "listen",
            "rec.bin",
            "--out",
            o,
            "--pipeline",
            "magic",
            "--text",
            "x",
        ]),
        "unknown pipeline",
    );
    let too_many: Vec<String> = (0..17)
        .flat_map(|i| ["--point".to_string(), format!("{i},{i}")])
        .collect();
    let mut args = vec!["listen", "rec.bin", "--out", o];
    args.extend(too_many.iter().map(String::as_str));
    fails_with(&sonomask(&args), "at most 16");
    // Garbage in: no mask, no crash; the counts say what happened.
    let junk = out.join("junk.bin");
    let mut rng = common::Rng(3);
    std::fs::write(
        &junk,
        (0..200_000).map(|_| rng.next() as u8).collect::<Vec<_>>(),
    )
    .unwrap();
    let l = sonomask(&["listen", junk.to_str().unwrap(), "--out", o, "--quiet"]);
    assert!(l.status.success());
    let log = std::fs::read_to_string(out.join("messages.jsonl")).unwrap();
    let summary: serde_json::Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
    assert_eq!(summary["masks"], 0);
    assert!(summary["frame_errors"].as_u64().unwrap() > 100, "{summary}");
    fails_with(
        &sonomask(&[
            "listen",
            junk.to_str().unwrap(),
            "--out",
            o,
            "--quiet",
            "--count",
            "1",
        ]),
        "received 0 of 1 masks",
    );
}

#[test]
fn stream_a_dicom_cine_through_sam_with_embedding_reuse() {
    let Some(shared) = common::shared() else {
        return;
    };
    let dir = tmp("cine-stream");
    let rec = dir.join("rec.bin");
    let dcm = shared.join("data/dicom_us/examples_ybr_color.dcm");
    let models = common::models_tiny();
    let out = sonomask(&[
        "stream",
        "--source",
        dcm.to_str().unwrap(),
        "--box",
        "100,60,220,180",
        "--sink",
        &format!("file:{}", rec.display()),
        "--models",
        models.to_str().unwrap(),
        "--precision",
        "fp32",
        "--queue",
        "64",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = common::listen_recording(&rec, &dir.join("out"));
    let masks = common::of_type(&lines, "mask");
    assert_eq!(masks.len(), 30, "one mask per cine frame");
    assert!(
        masks
            .iter()
            .all(|m| m["width"] == 320 && m["height"] == 240)
    );
    // The last Status shows the stages of a frame; with reuse most frames skip the encoder.
    let status = common::of_type(&lines, "status");
    let last = status.last().expect("a Status at the end");
    assert_eq!(last["frames_in"], 30);
    assert!(last["stages_us"]["decoder"].as_u64().is_some(), "{last}");
}

#[test]
fn stream_waits_for_a_live_frame_feed_that_starts_late() {
    use std::io::Write;
    // The capture service comes up 1.5 s after the device: the device waits, then streams.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let img =
        sonomask::input::image_io::load_rgb(&common::models_tiny().join("input.png")).unwrap();
    let feeder = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(1500));
        let l = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        let (mut s, _) = l.accept().unwrap();
        let mut b = Vec::new();
        sonomask::input::source::write_raw_frame(&mut b, &img).unwrap();
        s.write_all(&b).unwrap();
    });
    let dir = tmp("late-feed");
    let rec = dir.join("rec.bin");
    let out = sonomask(&[
        "stream",
        "--source",
        &format!("raw:tcp:127.0.0.1:{port}"),
        "--box",
        "40,30,150,120",
        "--sink",
        &format!("file:{}", rec.display()),
        "--models",
        common::models_tiny().to_str().unwrap(),
        "--precision",
        "fp32",
    ]);
    feeder.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("retrying every second"));
    let summary = String::from_utf8_lossy(&out.stderr)
        .lines()
        .last()
        .unwrap()
        .to_string();
    assert!(summary.contains("\"masks_sent\":1"), "{summary}");
}

#[test]
fn stream_with_a_text_prompt() {
    let img = common::models_tiny().join("input.png");
    let models = common::models_tiny();
    let (i, m) = (img.to_str().unwrap(), models.to_str().unwrap());
    fails_with(
        &sonomask(&[
            "stream", "--source", i, "--sink", "stdout", "--text", "x", "--box", "1,1,9,9",
            "--models", m,
        ]),
        "not both",
    );
    fails_with(
        &sonomask(&[
            "stream", "--source", i, "--sink", "stdout", "--text", " ", "--models", m,
        ]),
        "empty text",
    );
    fails_with(
        &sonomask(&[
            "stream",
            "--source",
            i,
            "--sink",
            "stdout",
            "--text",
            "x",
            "--no-text",
            "--models",
            m,
        ]),
        "drop --no-text",
    );
    fails_with(
        &sonomask(&[
            "stream",
            "--source",
            i,
            "--sink",
            "stdout",
            "--text",
            "x",
            "--pipeline",
            "gsam",
            "--models",
            m,
        ]),
        "expected medclip-sam or salip",
    );
    if common::clip_vocab().is_none() {
        return;
    }
    let d = tmp("text");
    let rec = d.join("rec.bin");
    let out = common::sonomask_cmd("warn")
        .args([
            "stream",
            "--source",
            i,
            "--sink",
            &format!("file:{}", rec.display()),
            "--text",
            "breast tumor",
        ])
        .args(["--count", "2", "--loop", "--models", m])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let msgs = common::listen_recording(&rec, &d.join("out"));
    assert_eq!(common::of_type(&msgs, "mask").len(), 2);
    let hello = common::of_type(&msgs, "hello");
    assert_eq!(hello[0]["models"].as_array().unwrap().len(), 4);
}

/// `stream --measure` sends a Measure after each mask (Hello capability bit 8); `listen` writes
/// it as a JSON line; the figures equal `segment --measure` on the same frame and prompt.
#[test]
fn stream_measures_each_mask_as_segment_does() {
    let dir = tmp("measure-stream");
    let rec = dir.join("rec.bin");
    let input = common::fixtures().join("models_tiny/input.png");
    let models = common::models_tiny();
    let common_args = [
        "--box",
        "40,30,150,120",
        "--models",
        models.to_str().unwrap(),
        "--precision",
        "fp32",
        "--measure",
        "lesion",
        "--pixel-size",
        "0.1",
    ];
    let mut seg = vec!["segment", input.to_str().unwrap(), "--json", "-o"];
    let mask_png = dir.join("m.png");
    seg.push(mask_png.to_str().unwrap());
    seg.extend_from_slice(&common_args);
    let out = sonomask(&seg);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let sink = format!("file:{}", rec.display());
    let mut st = vec![
        "stream",
        "--source",
        input.to_str().unwrap(),
        "--sink",
        &sink,
        "--count",
        "2",
        "--loop",
    ];
    st.extend_from_slice(&common_args);
    let out = sonomask(&st);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = common::listen_recording(&rec, &dir.join("out"));
    let log: String = lines.iter().map(|v| format!("{v}\n")).collect();
    let hello = common::of_type(&lines, "hello");
    assert!(
        hello[0]["capabilities"].as_u64().unwrap() & (1 << 8) != 0,
        "{log}"
    );
    let masks = common::of_type(&lines, "mask");
    let measures = common::of_type(&lines, "measure");
    assert_eq!(masks.len(), 2, "{log}");
    if j["measure"].is_null() {
        assert!(
            measures.is_empty(),
            "an empty mask has no measurement: {log}"
        );
        return;
    }
    assert_eq!(measures.len(), 2, "{log}");
    for (m, k) in measures.iter().zip(&masks) {
        assert_eq!(m["frame_id"], k["frame_id"]);
        assert_eq!(m["target"], "lesion");
        assert_eq!(m["unit"], "mm");
        let close = |a: &serde_json::Value, b: &serde_json::Value| {
            let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
            (a - b).abs() <= 1e-4 * b.abs().max(1.0)
        };
        assert!(
            close(&m["area"], &j["measure"]["area"]),
            "{m} vs {}",
            j["measure"]
        );
        assert!(close(
            &m["long_axis"]["length"],
            &j["measure"]["long_axis"]["length"]
        ));
        assert!(close(
            &m["short_axis"]["length"],
            &j["measure"]["short_axis"]["length"]
        ));
    }
}

/// A command-line box that does not fit one frame of the source skips that frame with an Error
/// on the wire naming it; the frames around it are segmented, their masks all arrive, exit 0.
#[test]
fn stream_skips_a_frame_the_prompt_does_not_fit() {
    let dir = tmp("nofit");
    let src = dir.join("frames");
    std::fs::create_dir_all(&src).unwrap();
    let input = common::fixtures().join("models_tiny/input.png");
    std::fs::copy(&input, src.join("a1.png")).unwrap();
    image::RgbImage::from_pixel(90, 70, image::Rgb([80, 80, 80]))
        .save(src.join("a2.png"))
        .unwrap();
    std::fs::copy(&input, src.join("a3.png")).unwrap();
    let rec = dir.join("rec.bin");
    let models = common::models_tiny();
    let out = sonomask(&[
        "stream",
        "--source",
        src.to_str().unwrap(),
        "--box",
        "40,30,150,120",
        "--models",
        models.to_str().unwrap(),
        "--precision",
        "fp32",
        "--queue",
        "8",
        "--sink",
        &format!("file:{}", rec.display()),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let lines = common::listen_recording(&rec, &dir.join("out"));
    let log: String = lines.iter().map(|v| format!("{v}\n")).collect();
    let masks = common::of_type(&lines, "mask");
    assert_eq!(masks.len(), 2, "{log}");
    assert_eq!(
        (masks[0]["frame_id"].as_u64(), masks[1]["frame_id"].as_u64()),
        (Some(0), Some(2))
    );
    let errors = common::of_type(&lines, "error");
    assert!(
        errors.iter().any(
            |e| e["name"] == "bad_prompt" && e["message"].as_str().unwrap().contains("frame 1")
        ),
        "{log}"
    );
    let status = common::of_type(&lines, "status");
    assert!(
        status.last().unwrap()["errors"].as_u64().unwrap() >= 1,
        "{log}"
    );
}

/// systemd stops the device with SIGTERM mid-stream: the loop ends between frames, every mask
/// already produced and a final Status reach the host, and the exit status is 128 + 15.
#[cfg(unix)]
#[test]
fn sigterm_mid_stream_flushes_the_queue_and_exits_143() {
    let dir = tmp("sigterm");
    let rec = dir.join("rec.bin");
    let input = common::fixtures().join("models_tiny/input.png");
    let models = common::models_tiny();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sonomask"))
        .env("SONOMASK_LOG", "warn")
        .args([
            "stream",
            "--source",
            input.to_str().unwrap(),
            "--loop",
            "--fps",
            "20",
            "--box",
            "40,30,150,120",
            "--models",
            models.to_str().unwrap(),
            "--precision",
            "fp32",
            "--queue",
            "64",
            "--sink",
            &format!("file:{}", rec.display()),
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until some masks are on the wire (a Hello alone is ~50 bytes), then stop it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::fs::metadata(&rec).map(|m| m.len()).unwrap_or(0) < 2000 {
        assert!(
            std::time::Instant::now() < deadline,
            "the stream never produced masks"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the stream ended by itself"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(143), "{err}");
    assert!(
        err.contains("\"stopped_by\":\"SIGTERM\"") && err.contains("stopped by SIGTERM"),
        "{err}"
    );
    let lines = common::listen_recording(&rec, &dir.join("out"));
    let log: String = lines.iter().map(|v| format!("{v}\n")).collect();
    let masks = common::of_type(&lines, "mask").len() as u64;
    let last = lines
        .iter()
        .rev()
        .find(|v| v["type"] == "status")
        .expect("a final Status");
    assert!(masks > 0, "{log}");
    assert_eq!(
        last["masks_sent"].as_u64().unwrap(),
        masks,
        "every sent mask received: {log}"
    );
    assert_eq!(
        last["queue_drops"].as_u64().unwrap(),
        0,
        "nothing left in the queue: {log}"
    );
    let summary: serde_json::Value = err
        .lines()
        .find_map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .filter(|v| v["type"] == "summary")
        })
        .unwrap();
    assert_eq!(summary["masks_sent"].as_u64().unwrap(), masks, "{summary}");
}

/// A box-prompted stream does not load CLIP (it is loaded on the first text Prompt from the
/// host instead, tests/link_e2e.rs), yet its Hello still names the CLIP models it can run.
#[test]
fn box_stream_leaves_clip_unloaded() {
    let dir = tmp("lazyclip");
    let rec = dir.join("rec.bin");
    let input = common::fixtures().join("models_tiny/input.png");
    let models = common::models_tiny();
    let vocab = common::clip_vocab();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sonomask"));
    if let Some(v) = &vocab {
        cmd.env("SONOMASK_CLIP_VOCAB", v);
    }
    let out = cmd
        .env("SONOMASK_LOG", "info")
        .args([
            "stream",
            "--source",
            input.to_str().unwrap(),
            "--box",
            "40,30,150,120",
            "--models",
            models.to_str().unwrap(),
            "--precision",
            "fp32",
            "--sink",
            &format!("file:{}", rec.display()),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        !err.contains("CLIP models in") && !err.contains("load_clip"),
        "CLIP was loaded: {err}"
    );
    let lines = common::listen_recording(&rec, &dir.join("out"));
    let hello = common::of_type(&lines, "hello");
    assert_eq!(
        hello[0]["models"].as_array().unwrap().len(),
        4,
        "{:?}",
        hello[0]
    );
    assert_eq!(common::of_type(&lines, "mask").len(), 1);
}
