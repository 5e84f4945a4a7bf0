//! The worked examples in docs/PROTOCOL.md are real: each is rebuilt here with the Rust encoder
//! and must appear in the document byte for byte (both the frame before COBS and the wire bytes),
//! and the wire bytes must decode back to the message.

use sonomask::link::{Received, Receiver};
use sonomask::wire::cobs;
use sonomask::wire::message::*;
use sonomask::wire::send::{MaskMeta, Sender};

fn hex(b: &[u8]) -> String {
    b.chunks(16)
        .map(|l| {
            l.iter()
                .map(|x| format!("{x:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A sender whose next frame carries sequence number `seq`.
fn sender_at(seq: u16) -> Sender {
    let mut tx = Sender::new();
    let ack = Message::Ack(Ack {
        seq: 0,
        msg_type: 0,
        ref_id: 0,
    });
    for _ in 0..seq {
        tx.message(&ack, |_| Ok::<(), ()>(())).unwrap();
    }
    tx
}

/// (name, wire bytes of every frame) for each documented example.
fn examples() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    let mut emit = |name, seq: u16, msg: Message<'_>| {
        let mut tx = sender_at(seq);
        let mut w = Vec::new();
        tx.message(&msg, |b| {
            w.extend_from_slice(b);
            Ok::<(), ()>(())
        })
        .unwrap();
        out.push((name, w));
    };
    emit(
        "hello",
        0,
        Message::Hello(Hello {
            min_version: 1,
            max_version: 1,
            session_id: 0x1234_5678,
            capabilities: caps::MASK_RLE
                | caps::MASK_RAW
                | caps::PROMPT_BOX
                | caps::PROMPT_POINTS
                | caps::STATUS,
            max_payload: 1024,
            device: "sonomask 0.1.0".try_into().unwrap(),
            board: "rpi5".try_into().unwrap(),
            models: heapless::Vec::new(),
        }),
    );
    let mut points = heapless::Vec::new();
    points
        .push(Point {
            x: 95,
            y: 75,
            foreground: true,
        })
        .unwrap();
    emit(
        "prompt",
        0,
        Message::Prompt(PromptMsg {
            prompt_id: 1,
            pipeline: Pipeline::Interactive,
            flags: prompt_flags::HAS_BOX,
            bbox: Rect {
                x0: 40,
                y0: 30,
                x1: 150,
                y1: 120,
            },
            points,
            text: heapless::String::new(),
        }),
    );
    emit(
        "ack",
        7,
        Message::Ack(Ack {
            seq: 0,
            msg_type: 0x20,
            ref_id: 1,
        }),
    );
    let mut stages = heapless::Vec::new();
    stages
        .push(StageLatency {
            name: "encoder".try_into().unwrap(),
            micros: 1_442_000,
        })
        .unwrap();
    emit(
        "status",
        9,
        Message::Status(Status {
            frames_in: 30,
            masks_sent: 28,
            queue_drops: 2,
            errors: 0,
            reconnects: 1,
            fps_centi: 69,
            last_error: 0,
            stages,
        }),
    );
    // A 16x8 mask with a 6x4 block of foreground at x 4..10, y 2..6.
    let mut px = vec![0u8; 128];
    for y in 2..6 {
        for x in 4..10 {
            px[y * 16 + x] = 1;
        }
    }
    let mut tx = sender_at(2);
    let mut w = Vec::new();
    let meta = MaskMeta {
        frame_id: 17,
        timestamp_us: 1_000_000,
        prompt_id: 1,
        object: 0,
        score: 0.75,
    };
    tx.mask(meta, 16, 8, &px, |b| {
        w.extend_from_slice(b);
        Ok::<(), ()>(())
    })
    .unwrap();
    out.push(("mask", w));
    // Revision 1.1: the Measure that follows that mask when the device measures heads.
    let mut tx = sender_at(3);
    let mut w = Vec::new();
    tx.message(
        &Message::Measure(MeasureMsg {
            frame_id: 17,
            object: 0,
            target: 1,
            unit: 1,
            flags: measure_flags::ELLIPSE | measure_flags::HC_ON_SKULL,
            area: 4443.5,
            perimeter: 240.5,
            hc: 239.25,
            ellipse: [400.5, 270.25, 41.0, 34.5, 12.0],
            long_axis: WireCaliper {
                x0: 360.0,
                y0: 250.0,
                x1: 441.0,
                y1: 290.0,
                length: 82.0,
            },
            short_axis: WireCaliper {
                x0: 395.0,
                y0: 236.0,
                x1: 405.0,
                y1: 305.0,
                length: 69.0,
            },
            spacing_mm: [0.125, 0.125],
        }),
        |b| {
            w.extend_from_slice(b);
            Ok::<(), ()>(())
        },
    )
    .unwrap();
    out.push(("measure", w));
    out
}

#[test]
fn documented_examples_match_the_encoder() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/PROTOCOL.md")).unwrap();
    let mut missing = Vec::new();
    for (name, wire) in examples() {
        // The frame before COBS (drop the delimiter, undo the stuffing).
        let mut raw = wire[..wire.len() - 1].to_vec();
        let n = cobs::decode_in_place(&mut raw).unwrap();
        let (raw_hex, wire_hex) = (hex(&raw[..n]), hex(&wire));
        if std::env::var("PRINT_EXAMPLES").is_ok() {
            println!("== {name}\nframe:\n{raw_hex}\nwire:\n{wire_hex}\n");
        }
        if !doc.contains(&raw_hex) || !doc.contains(&wire_hex) {
            missing.push(name);
        }
        let mut rx = Receiver::new();
        let mut n_ok = 0;
        rx.push(&wire, |ev| {
            if matches!(ev, Received::Message { .. } | Received::Mask { .. }) {
                n_ok += 1;
            }
        });
        assert_eq!(n_ok, 1, "{name} does not decode");
    }
    assert!(
        missing.is_empty(),
        "docs/PROTOCOL.md lacks the current bytes of: {missing:?} (PRINT_EXAMPLES=1 cargo test --test protocol_examples -- --nocapture prints them)"
    );
}
