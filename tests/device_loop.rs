//! The device loop (`sonomask::pipelines::device`) driven in-process, without the binary: what
//! `stream` and `run` share. The recording a file sink writes is decoded with the wire crate's
//! receiver, so these tests see exactly the bytes a host would.

mod common;

use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use sonomask::input::image_io;
use sonomask::link::Endpoint;
use sonomask::model::Precision;
use sonomask::pipelines::cine::CineOptions;
use sonomask::pipelines::device::{self, Engine, FramePrompt, Models, Settings};
use sonomask::pipelines::segment::SamSession;
use sonomask::prompting::prompt::{BoxPrompt, Prompt};
use sonomask::stream::{DeviceLink, LinkOptions};
use sonomask::timing::Timings;
use sonomask::wire::message::{ErrorCode, Message};
use sonomask::wire::receiver::{Received, Receiver};

/// What a host decodes from a recording: masks (frame id, pixels) and Error codes.
#[derive(Default)]
struct Heard {
    masks: Vec<(u32, u16, u16, Vec<u8>)>,
    errors: Vec<u16>,
}

fn hear(rec: &std::path::Path) -> Heard {
    let bytes = std::fs::read(rec).unwrap();
    let mut heard = Heard::default();
    let mut rx = Receiver::new();
    rx.push(&bytes, |ev| match ev {
        Received::Mask { header, pixels } => heard.masks.push((
            header.frame_id,
            header.width,
            header.height,
            pixels.to_vec(),
        )),
        Received::Message {
            msg: Message::Error(e),
            ..
        } => heard.errors.push(e.code),
        _ => {}
    });
    assert_eq!(rx.stats.frame_errors, 0, "a file sink loses nothing");
    heard
}

/// Runs the loop on `settings` into a file sink; returns the report and what a host hears.
fn run(
    tag: &str,
    settings: &Settings,
    models: &mut Models,
    stop: &AtomicUsize,
) -> (device::Report, Heard) {
    let rec = common::tmp_dir(tag).join("rec.bin");
    let transport = Endpoint::File(rec.clone()).device_transport().unwrap();
    let info = models.device_info("test".into(), settings.target);
    let link = DeviceLink::start(
        transport,
        info,
        LinkOptions {
            queue: 64,
            ..LinkOptions::default()
        },
    )
    .unwrap();
    let mut frames = device::open_source(&settings.source).unwrap();
    let report = device::run(settings, models, &mut frames, &link, stop);
    let summary = link.finish(Duration::from_secs(5)).unwrap();
    assert_eq!(summary.queue_drops, 0);
    (report, hear(&rec))
}

#[test]
fn replayed_masks_go_out_as_they_are_and_a_bad_frame_is_reported() {
    let dir = common::tmp_dir("device_replay");
    let png = common::fixtures().join("models_tiny/input.png");
    std::fs::copy(&png, dir.join("a1.png")).unwrap();
    std::fs::write(dir.join("a2.png"), b"not a png").unwrap();
    std::fs::copy(&png, dir.join("a3.png")).unwrap();
    let frame = image_io::load_rgb(&png).unwrap();
    let expected: Vec<u8> = frame
        .pixels
        .chunks_exact(3)
        .map(|p| (p.iter().copied().max().unwrap() > 127) as u8)
        .collect();
    let settings = Settings {
        source: dir.to_str().unwrap().to_string(),
        ..Settings::default()
    };
    let (report, heard) = run(
        "replay",
        &settings,
        &mut Models::default(),
        &AtomicUsize::new(0),
    );
    assert!(report.error.is_none(), "{:?}", report.error);
    assert_eq!(report.frames, 3, "two frames and the unreadable one");
    assert_eq!(heard.errors, vec![ErrorCode::Source as u16]);
    let ids: Vec<u32> = heard.masks.iter().map(|m| m.0).collect();
    assert_eq!(ids, vec![0, 2], "the bad frame keeps its id");
    for (_, w, h, pixels) in &heard.masks {
        assert_eq!((*w as u32, *h as u32), (frame.width, frame.height));
        assert_eq!(pixels, &expected);
    }

    // count and looping: the directory reopened until 5 frames.
    let looped = Settings {
        count: Some(5),
        looping: true,
        ..settings.clone()
    };
    let (report, heard) = run(
        "looped",
        &looped,
        &mut Models::default(),
        &AtomicUsize::new(0),
    );
    assert_eq!(report.frames, 5);
    let ids: Vec<u32> = heard.masks.iter().map(|m| m.0).collect();
    assert_eq!(ids, vec![0, 2, 3], "a1 a2 a3 a1 a2: the bad a2 twice");
    assert_eq!(heard.errors.len(), 2);

    // A stop flag already set (SIGTERM before the first frame): nothing runs, nothing is lost.
    let (report, heard) = run(
        "stopped",
        &settings,
        &mut Models::default(),
        &AtomicUsize::new(15),
    );
    assert_eq!(report.frames, 0);
    assert!(heard.masks.is_empty());
}

#[test]
fn a_box_prompt_gives_the_masks_the_sam_pipeline_gives() {
    let models_dir = common::models_tiny();
    let png = common::fixtures().join("models_tiny/input.png");
    let frame = image_io::load_rgb(&png).unwrap();
    let prompt = Prompt {
        bbox: Some(BoxPrompt {
            x0: 4.0,
            y0: 6.0,
            x1: (frame.width - 5) as f32,
            y1: (frame.height - 3) as f32,
        }),
        points: vec![],
    };
    // The reference: the interactive pipeline on the same frame and prompt.
    let mut reference = SamSession::load(&models_dir, Precision::Fp32).unwrap();
    let mut t = Timings::default();
    let encoded = reference.encode(&frame, &mut t).unwrap();
    let want = reference.decode(&encoded, &prompt, &mut t).unwrap().mask;

    let dir = common::tmp_dir("device_sam");
    for i in 0..3 {
        std::fs::copy(&png, dir.join(format!("f{i}.png"))).unwrap();
    }
    // Cine reuse off: every frame is encoded, as the reference was.
    let settings = Settings {
        source: dir.to_str().unwrap().to_string(),
        prompt: Some(FramePrompt::Sam(prompt)),
        cine: CineOptions {
            threshold: 0.0,
            max_reuse: 0,
            ..CineOptions::default()
        },
        ..Settings::default()
    };
    let mut models = Models {
        engine: Some(Engine::Sam(Box::new(
            SamSession::load(&models_dir, Precision::Fp32).unwrap(),
        ))),
        lazy_clip: None,
    };
    let (report, heard) = run("sam", &settings, &mut models, &AtomicUsize::new(0));
    assert!(report.error.is_none());
    assert_eq!(report.frames, 3);
    assert!(heard.errors.is_empty());
    assert_eq!(heard.masks.len(), 3);
    for (_, w, h, pixels) in &heard.masks {
        assert_eq!((*w as u32, *h as u32), (want.width, want.height));
        assert_eq!(pixels, &want.data, "the device's mask is the pipeline's");
    }
    assert!(want.data.contains(&1), "a non-empty mask");

    // A prompt that cannot fit the frames: each frame is skipped and reported, none fails
    // the run.
    let outside = Settings {
        prompt: Some(FramePrompt::Sam(Prompt {
            bbox: Some(BoxPrompt {
                x0: 0.0,
                y0: 0.0,
                x1: frame.width as f32 * 4.0,
                y1: 8.0,
            }),
            points: vec![],
        })),
        ..settings
    };
    let (report, heard) = run("outside", &outside, &mut models, &AtomicUsize::new(0));
    assert_eq!(report.frames, 3);
    assert!(heard.masks.is_empty());
    assert_eq!(heard.errors, vec![ErrorCode::BadPrompt as u16; 3]);
}
