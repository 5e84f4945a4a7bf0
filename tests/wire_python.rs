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
