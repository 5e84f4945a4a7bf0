//! Wire protocol figures: bytes per mask (RLE vs raw bitmap) over every mask in
//! ../shared/data/busi and hc18, the masks per second that allows at 115200 and 921600 baud
//! (8N1: 10 bits per byte), encode/decode CPU time, and the measured throughput of a real
//! stream over a pseudo-terminal against a raw byte copy over the same pty in the same run.
//!
//! Run: `cargo bench --bench wire` (prints a markdown block for docs/BENCHMARKS.md).

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use serialport::{SerialPort, TTYPort};
use sonomask::link::{Received, Receiver};
use sonomask::wire::maskcodec::{raw_len, rle_len};
use sonomask::wire::send::{MaskMeta, Sender};

struct M {
    w: u32,
    h: u32,
    px: Vec<u8>,
}

fn load(dataset: &str) -> Vec<M> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data")
        .join(dataset);
    let csv = std::fs::read_to_string(dir.join("pairs.csv")).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (this benchmark needs ../shared/data)",
            dir.display()
        )
    });
    let mut out = Vec::new();
    for line in csv.lines().skip(1) {
        let Some((_, masks)) = line.split_once(',') else {
            continue;
        };
        for m in masks.split(';').filter(|m| !m.is_empty()) {
            let f = sonomask::input::image_io::load_rgb(&dir.join(m)).unwrap();
            let px = f
                .pixels
                .chunks_exact(3)
                .map(|p| (*p.iter().max().unwrap() > 127) as u8)
                .collect();
            out.push(M {
                w: f.width,
                h: f.height,
                px,
            });
        }
    }
    out
}

fn wire_bytes(m: &M, tx: &mut Sender) -> usize {
    let meta = MaskMeta {
        frame_id: 0,
        timestamp_us: 0,
        prompt_id: 0,
        object: 0,
        score: 0.5,
    };
    tx.mask(meta, m.w, m.h, &m.px, |_| Ok::<(), ()>(()))
        .unwrap()
        .wire_bytes
}

fn main() {
    sonomask::heap::keep_freed_memory();
    let mut all_streams = Vec::new();
    println!(
        "| dataset | masks | mean size | raw bitmap B (mean) | RLE B (mean) | RLE B (min-max) | sent B on the wire (mean, framed) | masks/s @115200 | masks/s @921600 | encode us/mask | decode us/mask |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for ds in ["busi", "hc18"] {
        let masks = load(ds);
        let n = masks.len() as f64;
        let mut tx = Sender::new();
        let (mut raw, mut rle, mut wire, mut px) = (0f64, 0f64, 0f64, 0f64);
        let (mut rmin, mut rmax) = (usize::MAX, 0);
        for m in &masks {
            let r = rle_len(&m.px);
            rmin = rmin.min(r);
            rmax = rmax.max(r);
            rle += r as f64;
            raw += raw_len(m.px.len()) as f64;
            wire += wire_bytes(m, &mut tx) as f64;
            px += m.px.len() as f64;
        }
        // CPU cost: encode every mask into a buffer (best of 3), then decode that stream.
        let mut stream = Vec::new();
        let mut best_enc = f64::MAX;
        for _ in 0..3 {
            stream.clear();
            let t = Instant::now();
            for (i, m) in masks.iter().enumerate() {
                let meta = MaskMeta {
                    frame_id: i as u32,
                    timestamp_us: 0,
                    prompt_id: 0,
                    object: 0,
                    score: 0.5,
                };
                tx.mask(meta, m.w, m.h, &m.px, |b| {
                    stream.extend_from_slice(b);
                    Ok::<(), ()>(())
                })
                .unwrap();
            }
            best_enc = best_enc.min(t.elapsed().as_secs_f64());
        }
        let mut best_dec = f64::MAX;
        for _ in 0..3 {
            let mut rx = Receiver::new();
            let mut got = 0;
            let t = Instant::now();
            rx.push(&stream, |ev| {
                if matches!(ev, Received::Mask { .. }) {
                    got += 1;
                }
            });
            best_dec = best_dec.min(t.elapsed().as_secs_f64());
            assert_eq!(got, masks.len());
        }
        let side = (px / n).sqrt();
        println!(
            "| {ds} | {} | {:.0} px (~{side:.0}^2) | {:.0} | {:.0} | {rmin}-{rmax} | {:.0} | {:.1} | {:.1} | {:.0} | {:.0} |",
            masks.len(),
            px / n,
            raw / n,
            rle / n,
            wire / n,
            11520.0 / (wire / n),
            92160.0 / (wire / n),
            best_enc / n * 1e6,
            best_dec / n * 1e6,
        );
        all_streams.push((ds, masks.len(), stream, 92160.0 / (wire / n)));
    }

    println!();
    println!(
        "| pty run | bytes | seconds | MB/s | masks/s | time vs raw copy of the same bytes | masks/s vs a 921600-baud UART |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (ds, n, stream, uart_rate) in &all_streams {
        // Repeat the stream so each run moves a few MB.
        let reps = (4_000_000 / stream.len()).max(1);
        let raw = pty_copy(stream, reps, false);
        let framed = pty_copy(stream, reps, true);
        let masks = (*n * reps) as f64;
        let bytes = stream.len() * reps;
        println!(
            "| raw copy ({ds}) | {bytes} | {raw:.3} | {:.1} | - | 1.0x | - |",
            bytes as f64 / raw / 1e6
        );
        println!(
            "| sonomask encode + pty + decode ({ds}) | {bytes} | {framed:.3} | {:.1} | {:.0} | {:.0}x | {:.1}x |",
            bytes as f64 / framed / 1e6,
            masks / framed,
            framed / raw,
            masks / framed / uart_rate
        );
    }
}

/// Seconds to move `reps` copies of `stream` through a pty pair: as pre-encoded bytes
/// (`framed` false: the reference) or by encoding masks on the fly and decoding them on the far
/// side (`framed` true).
fn pty_copy(stream: &[u8], reps: usize, framed: bool) -> f64 {
    let (mut master, slave) = TTYPort::pair().unwrap();
    master.set_timeout(Duration::from_secs(5)).unwrap();
    let mut writer = slave;
    writer.set_timeout(Duration::from_secs(5)).unwrap();
    let mut total = stream.len() * reps;
    // For the framed run: decode the pre-encoded masks once to get them back as pixels.
    let mut masks: Vec<(sonomask::wire::message::MaskHeader, Vec<u8>)> = Vec::new();
    if framed {
        let mut rx = Receiver::new();
        rx.push(stream, |ev| {
            if let Received::Mask { header, pixels } = ev {
                masks.push((header, pixels.to_vec()));
            }
        });
    }
    // Re-encoding changes sequence numbers and CRCs, so COBS may differ by a byte here and
    // there: the framed run ends when every mask arrived, not at a byte count.
    let want_masks = masks.len() * reps;
    if framed {
        total = usize::MAX;
    }
    let t = Instant::now();
    let owned = stream.to_vec();
    let w = std::thread::spawn(move || {
        if framed {
            let mut tx = Sender::new();
            for _ in 0..reps {
                for (h, px) in &masks {
                    let meta = MaskMeta {
                        frame_id: h.frame_id,
                        timestamp_us: 0,
                        prompt_id: 0,
                        object: 0,
                        score: h.score,
                    };
                    tx.mask(meta, h.width as u32, h.height as u32, px, |b| {
                        writer.write_all(b)
                    })
                    .unwrap();
                }
            }
        } else {
            for _ in 0..reps {
                for c in owned.chunks(4096) {
                    writer.write_all(c).unwrap();
                }
            }
        }
        writer
    });
    let mut rx = Receiver::new();
    let mut buf = vec![0u8; 65536];
    let mut got = 0usize;
    let mut masks_in = 0usize;
    while got < total && (!framed || masks_in < want_masks) {
        let n = match master.read(&mut buf) {
            Ok(n) => n,
            Err(e) => panic!(
                "pty read after {got} of {total} bytes: {e}; writer: {:?}",
                w.join().map(|_| ())
            ),
        };
        got += n;
        if framed {
            rx.push(&buf[..n], |ev| {
                if matches!(ev, Received::Mask { .. }) {
                    masks_in += 1;
                }
            });
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let _ = w.join();
    if framed {
        assert_eq!(rx.stats.frame_errors, 0);
    }
    if framed {
        assert_eq!(masks_in, want_masks);
    }
    secs
}
