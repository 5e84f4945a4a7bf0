//! Wire-test helpers: streams of masks built by the Rust sender, and fault injection.

use super::{Rng, TestMask};
use sonomask::link::{Received, Receiver};
use sonomask::wire::message::*;
use sonomask::wire::send::{MaskMeta, Sender};

/// A stream of masks with a Status after every third, and where each mask's frames lie.
pub struct Stream {
    pub bytes: Vec<u8>,
    /// (frame_id, first byte, one past its last delimiter)
    pub spans: Vec<(u32, usize, usize)>,
}

pub fn build_stream(masks: &[TestMask]) -> Stream {
    let mut tx = Sender::new();
    let mut bytes = vec![0u8];
    let mut spans = Vec::new();
    for (i, m) in masks.iter().enumerate() {
        let start = bytes.len();
        let meta = MaskMeta {
            frame_id: i as u32,
            timestamp_us: i as u64 * 33_333,
            prompt_id: 0,
            object: 0,
            score: 0.9,
        };
        tx.mask(meta, m.width, m.height, &m.pixels, |b| {
            bytes.extend_from_slice(b);
            Ok::<(), ()>(())
        })
        .unwrap();
        spans.push((i as u32, start, bytes.len()));
        if i % 3 == 2 {
            let st = Status {
                frames_in: i as u32,
                masks_sent: i as u32,
                ..Status::default()
            };
            tx.message(&Message::Status(st), |b| {
                bytes.extend_from_slice(b);
                Ok::<(), ()>(())
            })
            .unwrap();
        }
    }
    Stream { bytes, spans }
}

/// Feeds `bytes` in pieces of varying size; returns the delivered masks and the receiver.
pub fn receive(bytes: &[u8], rng: &mut Rng) -> (Vec<(u32, Vec<u8>)>, Receiver) {
    let mut rx = Receiver::new();
    let mut got = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let n = (1 + rng.below(3000)).min(bytes.len() - at);
        rx.push(&bytes[at..at + n], |ev| {
            if let Received::Mask { header, pixels } = ev {
                got.push((header.frame_id, pixels.to_vec()));
            }
        });
        at += n;
    }
    (got, rx)
}

pub fn synthetic_masks() -> Vec<TestMask> {
    let mut rng = Rng(7);
    let disc = |w: u32, h: u32, r: f32| TestMask {
        name: format!("disc {w}x{h}"),
        width: w,
        height: h,
        pixels: (0..w * h)
            .map(|i| {
                let (x, y) = (
                    (i % w) as f32 - w as f32 / 2.0,
                    (i / w) as f32 - h as f32 / 2.0,
                );
                (x * x + y * y < r * r) as u8
            })
            .collect(),
    };
    vec![
        disc(2000, 1500, 600.0),
        TestMask {
            name: "noise 1024x1024".into(),
            width: 1024,
            height: 1024,
            pixels: (0..1024 * 1024).map(|_| (rng.next() >> 63) as u8).collect(),
        },
        TestMask {
            name: "empty".into(),
            width: 640,
            height: 480,
            pixels: vec![0; 640 * 480],
        },
        TestMask {
            name: "full".into(),
            width: 333,
            height: 77,
            pixels: vec![1; 333 * 77],
        },
        TestMask {
            name: "1x1".into(),
            width: 1,
            height: 1,
            pixels: vec![1],
        },
    ]
}

pub fn test_masks(shared_limit: usize) -> Vec<TestMask> {
    let mut v = synthetic_masks();
    if let Some(shared) = super::shared() {
        v.extend(super::shared_masks(&shared, "busi", shared_limit));
        v.extend(super::shared_masks(&shared, "hc18", shared_limit));
    }
    v
}

#[derive(Clone, Copy, Debug)]
pub enum Fault {
    FlipBit,
    DropByte,
    Truncate,
    InsertGarbage,
    InsertLongGarbage,
}

/// Applies `n` faults of `kind`; returns the damaged stream and, for each fault, the position
/// in the original stream it touched.
pub fn inject(bytes: &[u8], kind: Fault, n: usize, rng: &mut Rng) -> (Vec<u8>, Vec<usize>) {
    let mut positions: Vec<usize> = (0..n).map(|_| 1 + rng.below(bytes.len() - 1)).collect();
    positions.sort_unstable();
    positions.dedup();
    let mut out = Vec::with_capacity(bytes.len() + 4096);
    let mut touched = Vec::new();
    let mut at = 0;
    for &p in &positions {
        if p < at {
            continue;
        }
        out.extend_from_slice(&bytes[at..p]);
        at = p;
        match kind {
            Fault::FlipBit => {
                out.push(bytes[p] ^ (1 << rng.below(8)));
                at = p + 1;
                touched.push(p);
            }
            Fault::DropByte => {
                at = p + 1;
                touched.push(p);
            }
            Fault::Truncate => {
                let k = 1 + rng.below(600);
                let end = (p + k).min(bytes.len());
                touched.extend(p..end);
                at = end;
            }
            Fault::InsertGarbage => {
                for _ in 0..1 + rng.below(40) {
                    out.push(rng.next() as u8);
                }
                touched.push(p);
            }
            Fault::InsertLongGarbage => {
                for _ in 0..2000 + rng.below(3000) {
                    out.push(1 + rng.below(255) as u8);
                }
                touched.push(p);
            }
        }
    }
    out.extend_from_slice(&bytes[at..]);
    (out, touched)
}
