//! Arbitrary mask data into the streaming RLE/raw decoder: errors, never panics, never writes
//! outside the mask.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sonomask_wire::maskcodec::{Encoding, MaskDecoder};

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let encoding = if data[0] & 1 == 0 { Encoding::Rle } else { Encoding::Raw };
    let pixels = u16::from_le_bytes([data[1], data[2]]) as usize;
    let mut out = vec![0u8; pixels];
    let mut d = MaskDecoder::new(encoding, pixels);
    for piece in data[3..].chunks(1 + (data[0] >> 1) as usize) {
        if d.feed(piece, out.as_mut_slice()).is_err() {
            return;
        }
    }
    let _ = d.finish();
});
