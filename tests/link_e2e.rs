//! `sonomask stream` and `sonomask listen` as separate processes over real links: pseudo-
//! terminal pairs (the same tty layer a UART or a USB CDC-ACM port goes through) and TCP.
//! Between the two ptys a bridge thread plays the cable: it can corrupt bytes, and the test can
//! unplug and replug the device's side.

mod common;

use common::of_type;
use common::pty::{Bridge, pty};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sonomask"));
    c.env(
        "SONOMASK_LOG",
        std::env::var("SONOMASK_LOG").unwrap_or("warn".into()),
    );
    c
}

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sonomask-e2e-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn spawn(cmd: &mut Command) -> Child {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sonomask")
}

/// `sonomask listen ENDPOINT --quiet --out OUT` plus `extra` options.
fn listen(endpoint: &str, out: &Path, extra: &[&str]) -> Child {
    spawn(
        bin()
            .args(["listen", endpoint, "--quiet", "--out"])
            .arg(out)
            .args(extra),
    )
}

/// `sonomask stream --masks --loop` over the masks in `dir`.
fn stream_masks(dir: &Path, sink: &str, fps: u32, count: u32) -> Child {
    spawn(&mut stream_masks_cmd(dir, sink, fps, count))
}

fn stream_masks_cmd(dir: &Path, sink: &str, fps: u32, count: u32) -> Command {
    let (fps, count) = (fps.to_string(), count.to_string());
    let mut c = bin();
    c.args([
        "stream", "--masks", "--loop", "--fps", &fps, "--count", &count, "--source",
    ])
    .arg(dir)
    .args(["--sink", sink]);
    c
}

fn wait(child: Child, limit: Duration) -> Output {
    let start = Instant::now();
    let child = Arc::new(Mutex::new(child));
    loop {
        if let Some(_st) = child.lock().unwrap().try_wait().unwrap() {
            break;
        }
        if start.elapsed() > limit {
            let _ = child.lock().unwrap().kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let c = Arc::try_unwrap(child).ok().unwrap().into_inner().unwrap();
    c.wait_with_output().unwrap()
}

/// The listener's messages so far, as text (lines are flushed as written).
fn jsonl_text(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("messages.jsonl")).unwrap_or_default()
}

/// Waits until `n` masks have reached the listener.
fn wait_masks(out: &Path, n: usize) {
    common::wait_until(
        &format!("{n} masks at the host"),
        Duration::from_secs(30),
        || jsonl_text(out).matches(r#""type":"mask""#).count() >= n,
    );
}

fn jsonl(dir: &Path) -> Vec<serde_json::Value> {
    jsonl_text(dir)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn gray(path: &Path) -> Vec<u8> {
    let f = sonomask::input::image_io::load_rgb(path).unwrap();
    f.pixels
        .chunks_exact(3)
        .map(|p| (p[0] > 127) as u8)
        .collect()
}

fn device_summary(out: &Output) -> serde_json::Value {
    summary_in(&String::from_utf8_lossy(&out.stderr))
}

/// The device's closing summary line in its log.
fn summary_in(err: &str) -> serde_json::Value {
    let line = err
        .lines()
        .rev()
        .find(|l| l.contains("\"type\":\"summary\""))
        .unwrap_or_else(|| panic!("no summary in: {err}"));
    serde_json::from_str(line).unwrap()
}

/// A directory of a few real masks (replay mode needs no models).
fn mask_dir(tag: &str, n: usize) -> Option<(PathBuf, Vec<Vec<u8>>)> {
    let shared = common::shared()?;
    let dir = shared.join("data/busi/masks");
    let files = sonomask::input::source::image_files(&dir).unwrap();
    let files: Vec<PathBuf> = files.into_iter().take(n).collect();
    // One directory per test: tests run in parallel in this process.
    let d = tmp(&format!("masks-{tag}"));
    let mut expected = Vec::new();
    for (i, f) in files.iter().enumerate() {
        std::fs::copy(f, d.join(format!("m{i:03}.png"))).unwrap();
        expected.push(gray(f));
    }
    Some((d, expected))
}

#[test]
fn serial_both_directions_host_prompt_drives_sam() {
    let (dev, host) = (pty(), pty());
    let bridge = Bridge::start(&dev, &host, None);
    let out = tmp("prompt");
    let models = common::models_tiny();
    let image = common::models_tiny().join("input.png");
    // No prompt on the device's command line: it waits for the host's.
    let device = spawn(
        bin()
            .args(["stream", "--source"])
            .arg(&image)
            .args([
                "--sink",
                &format!("serial:{}@115200", dev.path),
                "--loop",
                "--fps",
                "20",
                "--count",
                "200",
                "--precision",
                "fp32",
                "--models",
            ])
            .arg(&models),
    );
    let listener = wait(
        listen(
            &format!("serial:{}@115200", host.path),
            &out,
            &["--box", "40,30,150,120", "--count", "5", "--timeout", "60"],
        ),
        Duration::from_secs(90),
    );
    let mut device = device;
    let _ = device.kill();
    let _ = device.wait();
    bridge.stop();
    assert!(
        listener.status.success(),
        "listen failed: {}",
        String::from_utf8_lossy(&listener.stderr)
    );
    let msgs = jsonl(&out);
    let hello = of_type(&msgs, "hello");
    assert!(!hello.is_empty(), "no Hello from the device");
    assert_eq!(
        hello[0]["models"].as_array().unwrap().len(),
        2,
        "Hello names both SAM models"
    );
    let acks = of_type(&msgs, "ack");
    assert!(
        acks.iter()
            .any(|a| a["ref_id"] == 1 && a["acked_type"] == 0x20),
        "no Ack of prompt 1: {msgs:?}"
    );
    let masks = of_type(&msgs, "mask");
    assert!(masks.len() >= 5);
    for m in &masks {
        assert_eq!(m["prompt_id"], 1, "mask not made with the host's prompt");
        assert_eq!(
            (m["width"].as_u64(), m["height"].as_u64()),
            (Some(200), Some(150))
        );
        let png = gray(Path::new(m["file"].as_str().unwrap()));
        assert_eq!(
            png.iter().map(|&p| p as u64).sum::<u64>(),
            m["area"].as_u64().unwrap()
        );
    }
}

#[test]
fn serial_unsupported_pipeline_gets_an_error_not_a_crash() {
    let Some((masks_dir, _)) = mask_dir("t3", 3) else {
        return;
    };
    let (dev, host) = (pty(), pty());
    let bridge = Bridge::start(&dev, &host, None);
    let out = tmp("pipeline");
    let mut device = stream_masks(&masks_dir, &format!("serial:{}", dev.path), 20, 400);
    let listener = wait(
        listen(
            &format!("serial:{}", host.path),
            &out,
            &[
                "--text",
                "fetal head",
                "--pipeline",
                "salip",
                "--count",
                "6",
                "--timeout",
                "30",
            ],
        ),
        Duration::from_secs(40),
    );
    let _ = device.kill();
    let _ = device.wait();
    bridge.stop();
    assert!(
        listener.status.success(),
        "{}",
        String::from_utf8_lossy(&listener.stderr)
    );
    let msgs = jsonl(&out);
    let errors = of_type(&msgs, "error");
    assert!(
        errors
            .iter()
            .any(|e| e["name"] == "unsupported_pipeline" && e["ref_type"] == 0x20),
        "no unsupported_pipeline error: {msgs:?}"
    );
    // The device kept streaming after refusing the prompt.
    assert!(of_type(&msgs, "mask").len() >= 6);
}

#[test]
fn serial_noisy_line_delivers_only_intact_masks() {
    let Some((masks_dir, expected)) = mask_dir("t12", 12) else {
        return;
    };
    let (dev, host) = (pty(), pty());
    // About one flipped bit per 3000 bytes: most ~400-byte masks pass, some are hit.
    let bridge = Bridge::start(&dev, &host, Some(3000));
    let out = tmp("noisy");
    let mut listener = listen(
        &format!("serial:{}", host.path),
        &out,
        &["--idle", "2", "--timeout", "60"],
    );
    common::wait_listener_open(&out);
    let device = wait(
        stream_masks(&masks_dir, &format!("serial:{}", dev.path), 100, 360),
        Duration::from_secs(30),
    );
    let _ = listener.wait();
    let damaged = bridge.damaged();
    bridge.stop();
    assert!(
        device.status.success(),
        "{}",
        String::from_utf8_lossy(&device.stderr)
    );
    let msgs = jsonl(&out);
    let masks = of_type(&msgs, "mask");
    let summary = of_type(&msgs, "summary")[0];
    assert!(damaged > 0, "the bridge damaged nothing");
    assert!(
        summary["frame_errors"].as_u64().unwrap() > 0,
        "damage not detected: {summary}"
    );
    // Every frame error costs at most the one mask it hit (each of these masks fits a frame).
    let sent = device_summary(&device)["masks_sent"].as_u64().unwrap();
    let errors = summary["frame_errors"].as_u64().unwrap();
    // Masks the link could not take in time were dropped (newest wins); that is not the point.
    assert!(sent > 50, "device sent only {sent}");
    assert!(
        masks.len() as u64 + errors >= sent,
        "{} masks + {errors} errors < {sent} sent ({summary})",
        masks.len()
    );
    for m in masks {
        let id = m["frame_id"].as_u64().unwrap() as usize;
        let png = gray(Path::new(m["file"].as_str().unwrap()));
        assert!(
            png == expected[id % expected.len()],
            "frame {id} accepted damaged"
        );
    }
}

#[test]
fn serial_unplug_and_replug_device_side_resumes() {
    let Some((masks_dir, expected)) = mask_dir("t5", 5) else {
        return;
    };
    let link_dir = tmp("replug");
    let link = link_dir.join("ttyACM-sonomask");
    let (dev1, host) = (pty(), pty());
    std::os::unix::fs::symlink(&dev1.path, &link).unwrap();
    let bridge1 = Bridge::start(&dev1, &host, None);
    let out = tmp("replug-out");
    let mut listener = listen(
        &format!("serial:{}", host.path),
        &out,
        &["--idle", "6", "--timeout", "60"],
    );
    common::wait_listener_open(&out);
    // The device's log goes to a file the test reads while it runs.
    let device_log = out.join("device.log");
    let device = stream_masks_cmd(&masks_dir, &format!("serial:{}", link.display()), 40, 280)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&device_log).unwrap())
        .spawn()
        .expect("spawn sonomask");
    let log = || std::fs::read_to_string(&device_log).unwrap_or_default();
    wait_masks(&out, 3);
    // Unplug: the device's tty hangs up (both ends of its pair close).
    bridge1.stop();
    drop(dev1);
    // Unplugged until the device has found the link down (it then drops and counts the frames
    // made until its next reopen attempt, 250 ms on) or failed to reopen the port.
    common::wait_until(
        "the device to see the unplug",
        Duration::from_secs(20),
        || {
            let l = log();
            l.contains(": down (") || l.contains("cannot open")
        },
    );
    // Replug: a new tty appears under the same by-id style name.
    let dev2 = pty();
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(&dev2.path, &link).unwrap();
    let bridge2 = Bridge::start(&dev2, &host, None);
    let device = wait(device, Duration::from_secs(30));
    let _ = listener.wait();
    bridge2.stop();
    assert!(device.status.success(), "device died on unplug: {}", log());
    let s = summary_in(&log());
    assert!(s["reconnects"].as_u64().unwrap() >= 1, "no reconnect: {s}");
    assert!(
        s["queue_drops"].as_u64().unwrap() > 0,
        "masks made while unplugged must be counted as drops: {s}"
    );
    let msgs = jsonl(&out);
    let ids: Vec<u64> = of_type(&msgs, "mask")
        .iter()
        .map(|m| m["frame_id"].as_u64().unwrap())
        .collect();
    assert!(
        ids.iter().any(|&i| i < 60),
        "no masks before the unplug: {ids:?}"
    );
    assert!(
        ids.iter().any(|&i| i > 160),
        "no masks after the replug: {ids:?}"
    );
    for m in of_type(&msgs, "mask") {
        let id = m["frame_id"].as_u64().unwrap() as usize;
        let png = gray(Path::new(m["file"].as_str().unwrap()));
        assert!(
            png == expected[id % expected.len()],
            "frame {id} differs from what was sent"
        );
    }
    // The device's Status reports the reconnect to the host.
    assert!(
        of_type(&msgs, "status")
            .iter()
            .any(|s| s["reconnects"].as_u64() >= Some(1))
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn tcp_host_restart_device_reconnects() {
    let Some((masks_dir, expected)) = mask_dir("t4", 4) else {
        return;
    };
    let port = free_port();
    let ep = format!("tcp:127.0.0.1:{port}");
    let (out1, out2) = (tmp("tcp1"), tmp("tcp2"));
    let l1 = listen(&ep, &out1, &["--count", "10", "--timeout", "20"]);
    // Bound once messages.jsonl exists (it is created after the bind).
    common::wait_until("the listener to bind", Duration::from_secs(20), || {
        out1.join("messages.jsonl").exists()
    });
    let device = stream_masks(&masks_dir, &ep, 30, 240);
    let l1 = wait(l1, Duration::from_secs(25));
    assert!(
        l1.status.success(),
        "{}",
        String::from_utf8_lossy(&l1.stderr)
    );
    // A new host at once: the device must notice the old one gone and reconnect by itself.
    let l2 = wait(
        listen(&ep, &out2, &["--count", "10", "--timeout", "20"]),
        Duration::from_secs(25),
    );
    let device = wait(device, Duration::from_secs(30));
    assert!(
        l2.status.success(),
        "second listener got nothing: {}",
        String::from_utf8_lossy(&l2.stderr)
    );
    assert!(
        device.status.success(),
        "{}",
        String::from_utf8_lossy(&device.stderr)
    );
    assert!(device_summary(&device)["reconnects"].as_u64().unwrap() >= 1);
    for out in [&out1, &out2] {
        for m in of_type(&jsonl(out), "mask") {
            let id = m["frame_id"].as_u64().unwrap() as usize;
            let png = gray(Path::new(m["file"].as_str().unwrap()));
            assert!(
                png == expected[id % expected.len()],
                "frame {id} differs from what was sent"
            );
        }
    }
}

#[test]
fn serial_host_text_prompt_runs_medclip_sam_on_the_device() {
    let Some(shared) = common::shared() else {
        return;
    };
    let (dev, host) = (pty(), pty());
    let bridge = Bridge::start(&dev, &host, None);
    let out = tmp("text");
    let models = common::models_tiny();
    let image = shared.join("data/busi/images/benign (1).png");
    let device = spawn(
        bin()
            .env("SONOMASK_CLIP_VOCAB", common::clip_vocab().unwrap())
            .args(["stream", "--source"])
            .arg(&image)
            .args([
                "--sink",
                &format!("serial:{}@921600", dev.path),
                "--loop",
                "--fps",
                "10",
                "--count",
                "200",
                "--precision",
                "fp32",
                "--models",
            ])
            .arg(&models),
    );
    let listener = wait(
        listen(
            &format!("serial:{}@921600", host.path),
            &out,
            &[
                "--text",
                "breast tumor",
                "--pipeline",
                "medclip-sam",
                "--count",
                "3",
                "--timeout",
                "60",
            ],
        ),
        Duration::from_secs(90),
    );
    let mut device = device;
    let _ = device.kill();
    let _ = device.wait();
    bridge.stop();
    assert!(
        listener.status.success(),
        "listen failed: {}",
        String::from_utf8_lossy(&listener.stderr)
    );
    let msgs = jsonl(&out);
    let hello = of_type(&msgs, "hello");
    assert!(!hello.is_empty());
    assert_eq!(
        hello[0]["models"].as_array().unwrap().len(),
        4,
        "Hello names SAM and CLIP models"
    );
    assert!(
        of_type(&msgs, "ack")
            .iter()
            .any(|a| a["ref_id"] == 1 && a["acked_type"] == 0x20)
    );
    let masks = of_type(&msgs, "mask");
    assert!(masks.len() >= 3);
    for m in &masks {
        assert_eq!(
            m["prompt_id"], 1,
            "mask not made with the host's text prompt"
        );
        assert_eq!(
            (m["width"].as_u64(), m["height"].as_u64()),
            (Some(562), Some(471))
        );
    }
}
