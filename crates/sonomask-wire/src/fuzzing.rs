//! Fuzz entry points for the wire decoder, shared by the libFuzzer targets (tests/fuzz, which
//! depend on this crate alone) and by the corpus replay in sonomask's test suite. Each takes
//! arbitrary bytes and must return without panicking.

use crate::maskcodec::{Encoding, MaskDecoder};
use crate::receiver::{Received, Receiver};
use alloc::vec;

/// Arbitrary bytes, split at arbitrary points, into the host receiver (frame decoder, message
/// parsers, mask reassembly); anything it delivers must be consistent.
pub fn wire_receiver(data: &[u8]) {
    // The first byte picks the chunk size, so splits inside frames and varints get explored.
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let chunk = 1 + split as usize;
    let mut rx = Receiver::new();
    for piece in rest.chunks(chunk) {
        rx.push(piece, |ev| {
            if let Received::Mask { header, pixels } = ev {
                assert_eq!(pixels.len(), header.width as usize * header.height as usize);
                assert!(pixels.iter().all(|&p| p <= 1));
            }
        });
    }
    let s = rx.stats;
    assert!(s.masks <= s.frames);
}

/// Arbitrary mask data into the streaming RLE/raw decoder: errors, never panics, never writes
/// outside the mask.
pub fn mask_decoder(data: &[u8]) {
    if data.len() < 3 {
        return;
    }
    let encoding = if data[0] & 1 == 0 {
        Encoding::Rle
    } else {
        Encoding::Raw
    };
    let pixels = u16::from_le_bytes([data[1], data[2]]) as usize;
    let mut out = vec![0u8; pixels];
    let mut d = MaskDecoder::new(encoding, pixels);
    for piece in data[3..].chunks(1 + (data[0] >> 1) as usize) {
        if d.feed(piece, out.as_mut_slice()).is_err() {
            return;
        }
    }
    let _ = d.finish();
}
