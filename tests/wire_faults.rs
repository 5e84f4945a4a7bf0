//! The wire protocol end to end in memory: every message round-trips, real masks from
//! ../shared survive any chunking, and under injected faults (bit flips, dropped bytes,
//! truncated frames, inserted garbage, a listener attaching mid-stream) no damaged mask is ever
//! accepted while every mask whose bytes were untouched is delivered.

mod common;

use common::Rng;
use common::wire::{Fault, build_stream, inject, receive, test_masks};
use sonomask::link::{Received, Receiver};
use sonomask::wire::message::*;
use sonomask::wire::send::Sender;
use sonomask::wire::{Encoding, MAX_WIRE};

#[test]
fn messages_round_trip() {
    let mut models = heapless::Vec::new();
    models
        .push(ModelHash {
            role: 0,
            precision: 1,
            sha256: [0xAB; 32],
        })
        .unwrap();
    let mut stages = heapless::Vec::new();
    stages
        .push(StageLatency {
            name: "encoder".try_into().unwrap(),
            micros: 123_456,
        })
        .unwrap();
    let mut points = heapless::Vec::new();
    points
        .push(Point {
            x: 10,
            y: 20,
            foreground: true,
        })
        .unwrap();
    points
        .push(Point {
            x: 30,
            y: 40,
            foreground: false,
        })
        .unwrap();
    let msgs = vec![
        Message::Hello(Hello {
            min_version: 1,
            max_version: 1,
            session_id: 0xDEAD_BEEF,
            capabilities: caps::MASK_RLE | caps::PROMPT_BOX,
            max_payload: 1024,
            device: "sonomask 0.1.0".try_into().unwrap(),
            board: "Raspberry Pi 5 Model B Rev 1.0".try_into().unwrap(),
            models,
        }),
        Message::Status(Status {
            frames_in: 5,
            masks_sent: 4,
            queue_drops: 1,
            errors: 2,
            reconnects: 3,
            fps_centi: 1234,
            last_error: 5,
            stages,
        }),
        Message::Prompt(PromptMsg {
            prompt_id: 9,
            pipeline: Pipeline::MedClipSam,
            flags: prompt_flags::HAS_BOX,
            bbox: Rect {
                x0: 1,
                y0: 2,
                x1: 300,
                y1: 400,
            },
            points,
            text: "a breast ultrasound showing a hypoechoic tumor, é ü 超音波"
                .try_into()
                .unwrap(),
        }),
        Message::Ack(Ack {
            seq: 65535,
            msg_type: 0x20,
            ref_id: 9,
        }),
        Message::Error(ErrorMsg::new(
            ErrorCode::UnsupportedPipeline,
            7,
            0x20,
            "pipeline salip is not available",
        )),
    ];
    let mut tx = Sender::new();
    let mut bytes = Vec::new();
    for m in &msgs {
        tx.message(m, |b| {
            assert!(b.len() <= MAX_WIRE);
            bytes.extend_from_slice(b);
            Ok::<(), ()>(())
        })
        .unwrap();
    }
    let mut rx = Receiver::new();
    let mut got = Vec::new();
    rx.push(&bytes, |ev| match ev {
        Received::Message { seq, msg } => got.push((seq, msg)),
        other => panic!("unexpected {other:?}"),
    });
    assert_eq!(got.len(), msgs.len());
    for (i, ((seq, g), m)) in got.iter().zip(&msgs).enumerate() {
        assert_eq!(*seq as usize, i);
        assert_eq!(g, m);
    }
    // An over-long error text is cut at a character boundary, not refused.
    let long = ErrorMsg::new(ErrorCode::Model, 0, 0, &"é".repeat(300));
    assert!(long.message.len() <= 200 && long.message.chars().all(|c| c == 'é'));
}

#[test]
fn real_and_synthetic_masks_survive_any_chunking() {
    let masks = test_masks(60);
    let s = build_stream(&masks);
    for seed in [1, 2, 3] {
        let (got, rx) = receive(&s.bytes, &mut Rng(seed));
        assert_eq!(
            rx.stats.frame_errors + rx.stats.lost_frames + rx.stats.masks_dropped,
            0
        );
        assert_eq!(got.len(), masks.len());
        for ((id, px), m) in got.iter().zip(&masks) {
            assert_eq!(px, &m.pixels, "mask {id} ({}) changed on the way", m.name);
        }
    }
    // The sender picked the smaller encoding: noise goes raw, discs go RLE.
    let mut rx = Receiver::new();
    let mut encodings = Vec::new();
    rx.push(&s.bytes, |ev| {
        if let Received::Mask { header, .. } = ev {
            encodings.push((
                header.encoding,
                header.data_len,
                header.width as usize * header.height as usize,
            ));
        }
    });
    assert_eq!(encodings[0].0, Encoding::Rle);
    assert_eq!(encodings[1].0, Encoding::Raw);
    assert!(
        encodings
            .iter()
            .all(|&(_, len, px)| len as usize <= px.div_ceil(8))
    );
}

#[test]
fn faults_never_deliver_a_damaged_mask_and_never_lose_an_intact_one() {
    let masks = test_masks(40);
    let s = build_stream(&masks);
    let mut rng = Rng(0x5EED);
    let mut delivered_after_fault = 0;
    for kind in [
        Fault::FlipBit,
        Fault::DropByte,
        Fault::Truncate,
        Fault::InsertGarbage,
        Fault::InsertLongGarbage,
    ] {
        for trial in 0..6 {
            let n = 1 + rng.below(12);
            let (bad, touched) = inject(&s.bytes, kind, n, &mut rng);
            let (got, rx) = receive(&bad, &mut rng);
            // No damaged mask accepted: each delivered mask is exactly the one sent.
            for (id, px) in &got {
                assert_eq!(
                    px, &masks[*id as usize].pixels,
                    "{kind:?} trial {trial}: mask {id} delivered damaged"
                );
            }
            // Every mask whose bytes (and the delimiter before them) were untouched arrives:
            // resynchronisation costs at most the damaged frame.
            let ids: Vec<u32> = got.iter().map(|g| g.0).collect();
            let first_fault = touched.first().copied().unwrap_or(usize::MAX);
            for &(id, start, end) in &s.spans {
                let hit = touched.iter().any(|&p| p + 1 >= start && p < end);
                if !hit {
                    assert!(
                        ids.contains(&id),
                        "{kind:?} trial {trial}: intact mask {id} lost (faults at {touched:?})"
                    );
                    if start > first_fault {
                        delivered_after_fault += 1;
                    }
                }
            }
            assert!(
                rx.stats.frame_errors + rx.stats.masks_dropped + rx.stats.lost_frames > 0,
                "{kind:?}: fault not seen"
            );
        }
    }
    assert!(
        delivered_after_fault > 100,
        "too few masks after faults: {delivered_after_fault}"
    );
}

#[test]
fn a_listener_attaching_mid_stream_gets_every_later_mask() {
    let masks = test_masks(20);
    let s = build_stream(&masks);
    let mut rng = Rng(99);
    for _ in 0..20 {
        let offset = rng.below(s.bytes.len());
        let (got, _) = receive(&s.bytes[offset..], &mut rng);
        let expect: Vec<u32> = s
            .spans
            .iter()
            .filter(|&&(_, start, _)| start >= offset)
            .map(|s| s.0)
            .collect();
        let ids: Vec<u32> = got.iter().map(|g| g.0).collect();
        for (id, px) in &got {
            assert_eq!(px, &masks[*id as usize].pixels);
        }
        assert_eq!(ids, expect, "attached at byte {offset}");
    }
}

#[test]
fn random_bytes_never_panic_and_are_never_masks() {
    let mut rng = Rng(4242);
    let mut rx = Receiver::new();
    for _ in 0..300 {
        let len = rng.below(5000);
        let zero_every = 1 + rng.below(2000);
        let junk: Vec<u8> = (0..len)
            .map(|i| {
                if i % zero_every == 0 {
                    0
                } else {
                    rng.next() as u8
                }
            })
            .collect();
        rx.push(&junk, |ev| {
            assert!(!matches!(
                ev,
                Received::Mask { .. } | Received::Message { .. }
            ))
        });
    }
}

#[test]
fn peer_restart_resets_sequence_tracking() {
    // Two sessions back to back (a device that rebooted): sequence numbers restart at 0; the
    // new session id in Hello must not count the restart as lost frames.
    let hello = |id| {
        Message::Hello(Hello {
            min_version: 1,
            max_version: 1,
            session_id: id,
            capabilities: 0,
            max_payload: 1024,
            device: heapless::String::new(),
            board: heapless::String::new(),
            models: heapless::Vec::new(),
        })
    };
    let mut bytes = Vec::new();
    for id in [1, 2] {
        let mut tx = Sender::new();
        for _ in 0..(if id == 1 { 50 } else { 3 }) {
            tx.message(&hello(id), |b| {
                bytes.extend_from_slice(b);
                Ok::<(), ()>(())
            })
            .unwrap();
        }
    }
    let mut rx = Receiver::new();
    rx.push(&bytes, |_| {});
    assert_eq!((rx.stats.frames, rx.stats.lost_frames), (53, 0));
}
