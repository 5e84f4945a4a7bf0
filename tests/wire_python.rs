//! The specification is implementable: tools/sonomask_wire.py, a second decoder written from
//! docs/PROTOCOL.md with Python's standard library only, must read the streams the Rust encoder
//! writes (clean and damaged) exactly as the Rust receiver does: the same masks, pixel for
//! pixel, and the same frame, loss and drop counts.

mod common;

use common::Rng;
use common::wire::{Fault, build_stream, inject, test_masks};
use sha2::{Digest, Sha256};
use sonomask::link::{Received, Receiver};
use std::process::Command;

fn python_decode(stream: &[u8], tag: &str) -> Vec<serde_json::Value> {
    let path = std::env::temp_dir().join(format!("sonomask-py-{tag}-{}.bin", std::process::id()));
    std::fs::write(&path, stream).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/sonomask_wire.py");
    let out = Command::new("python3")
        .args([script, "decode"])
        .arg(&path)
        .output()
        .expect(
            "python3 is needed for this test (the reference host decoder is Python, stdlib only)",
        );
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "python decoder failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn python_decoder_agrees_with_rust_on_clean_and_damaged_streams() {
    let masks = test_masks(25);
    let s = build_stream(&masks);
    let mut rng = Rng(0xC0FFEE);
    let mut cases = vec![("clean".to_string(), s.bytes.clone())];
    for (i, kind) in [
        Fault::FlipBit,
        Fault::DropByte,
        Fault::Truncate,
        Fault::InsertGarbage,
        Fault::InsertLongGarbage,
    ]
    .into_iter()
    .enumerate()
    {
        let (bad, _) = inject(&s.bytes, kind, 3 + i, &mut rng);
        cases.push((format!("{kind:?}"), bad));
    }
    let offset = s.bytes.len() / 3;
    cases.push(("mid-stream".into(), s.bytes[offset..].to_vec()));

    for (tag, bytes) in cases {
        let mut rx = Receiver::new();
        let mut rust_masks = Vec::new();
        rx.push(&bytes, |ev| {
            if let Received::Mask { header, pixels } = ev {
                rust_masks.push((
                    header.frame_id as u64,
                    format!("{:x}", Sha256::digest(pixels)),
                ));
            }
        });
        let py = python_decode(&bytes, &tag);
        let py_masks: Vec<(u64, String)> = py
            .iter()
            .filter(|v| v["type"] == "mask")
            .map(|v| {
                (
                    v["frame_id"].as_u64().unwrap(),
                    v["sha256"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(py_masks, rust_masks, "{tag}: masks differ");
        let summary = py.last().unwrap();
        assert_eq!(summary["type"], "summary");
        let st = rx.stats;
        for (key, rust) in [
            ("frames", st.frames),
            ("frame_errors", st.frame_errors),
            ("lost_frames", st.lost_frames),
            ("masks", st.masks),
            ("masks_dropped", st.masks_dropped),
            ("parse_errors", st.parse_errors),
        ] {
            assert_eq!(summary[key].as_u64().unwrap(), rust, "{tag}: {key}");
        }
        if tag == "clean" {
            assert_eq!(st.masks as usize, masks.len());
            // The pixels themselves, not just their hash, for the first real masks.
            for (m, (_, h)) in masks.iter().zip(&py_masks) {
                assert_eq!(&format!("{:x}", Sha256::digest(&m.pixels)), h, "{}", m.name);
            }
        }
    }
}

/// Revision 1.1's Measure (0x12) follows a mask: the Python decoder reads every field as the
/// Rust encoder wrote it, and the masks around it arrive whole in both decoders (it never
/// interrupts a reassembly).
#[test]
fn measure_messages_cross_decode_and_leave_masks_whole() {
    use sonomask::wire::message::{MeasureMsg, Message, WireCaliper, measure_flags};
    use sonomask::wire::send::{MaskMeta, Sender};
    let masks = test_masks(4);
    let mut tx = Sender::new();
    let mut bytes = vec![0u8];
    let mut sent = Vec::new();
    for (i, m) in masks.iter().enumerate() {
        let meta = MaskMeta {
            frame_id: i as u32,
            timestamp_us: 0,
            prompt_id: 0,
            object: 0,
            score: 0.5,
        };
        tx.mask(meta, m.width, m.height, &m.pixels, |b| {
            bytes.extend_from_slice(b);
            Ok::<(), ()>(())
        })
        .unwrap();
        let msg = MeasureMsg {
            frame_id: i as u32,
            object: 0,
            target: 1 + (i as u8 % 2),
            unit: (i % 2 == 0) as u8,
            flags: if i % 2 == 0 {
                measure_flags::ELLIPSE | measure_flags::HC_ON_SKULL
            } else {
                0
            },
            area: 123.25 + i as f32,
            perimeter: 45.5,
            hc: if i % 2 == 0 { 180.75 } else { f32::NAN },
            ellipse: if i % 2 == 0 {
                [10.5, 20.25, 30.0, 20.0, 12.5]
            } else {
                [f32::NAN; 5]
            },
            long_axis: WireCaliper {
                x0: 1.0,
                y0: 2.0,
                x1: 3.5,
                y1: 4.0,
                length: 60.0,
            },
            short_axis: WireCaliper {
                x0: 5.0,
                y0: 6.0,
                x1: 7.0,
                y1: 8.25,
                length: 40.0,
            },
            spacing_mm: if i % 2 == 0 {
                [0.125, 0.25]
            } else {
                [f32::NAN; 2]
            },
        };
        tx.message(&Message::Measure(msg), |b| {
            bytes.extend_from_slice(b);
            Ok::<(), ()>(())
        })
        .unwrap();
        sent.push(msg);
    }
    let mut rx = Receiver::new();
    let (mut rust_masks, mut rust_measures) = (0, Vec::new());
    rx.push(&bytes, |ev| match ev {
        Received::Mask { .. } => rust_masks += 1,
        Received::Message {
            msg: Message::Measure(m),
            ..
        } => rust_measures.push(m),
        _ => {}
    });
    assert_eq!(rust_masks, masks.len());
    assert_eq!(rx.stats.parse_errors, 0);
    for (a, b) in rust_measures.iter().zip(&sent) {
        assert_eq!(a.frame_id, b.frame_id);
        let (mut x, mut y) = ([0u8; 128], [0u8; 128]);
        a.emit(&mut x).unwrap();
        b.emit(&mut y).unwrap();
        assert_eq!(x, y, "Rust round trip is bit-exact");
    }
    assert_eq!(rust_measures.len(), sent.len());
    let events = python_decode(&bytes, "measure");
    let py: Vec<&serde_json::Value> = events.iter().filter(|e| e["type"] == "measure").collect();
    let py_masks = events.iter().filter(|e| e["type"] == "mask").count();
    assert_eq!(py_masks, masks.len(), "{events:?}");
    assert_eq!(py.len(), sent.len());
    for (e, m) in py.iter().zip(&sent) {
        assert_eq!(e["frame_id"], m.frame_id);
        assert_eq!(e["target"], if m.target == 1 { "hc" } else { "lesion" });
        assert_eq!(e["unit"], if m.unit == 1 { "mm" } else { "px" });
        assert_eq!(e["area"].as_f64().unwrap(), m.area as f64);
        assert_eq!(e["long_axis"]["length"].as_f64().unwrap(), 60.0);
        assert_eq!(e["short_axis"]["to_px"][1].as_f64().unwrap(), 8.25);
        if m.hc.is_finite() {
            assert_eq!(e["hc"].as_f64().unwrap(), m.hc as f64);
            assert_eq!(e["hc_source"], "skull outer border");
            assert_eq!(e["ellipse"]["angle_deg"].as_f64().unwrap(), 12.5);
            assert_eq!(e["pixel_spacing_mm"][1].as_f64().unwrap(), 0.25);
        } else {
            assert!(e["hc"].is_null() && e["ellipse"].is_null() && e["pixel_spacing_mm"].is_null());
        }
    }
}
