//! Arbitrary bytes, split at arbitrary points, into the host receiver (frame decoder, message
//! parsers, mask reassembly). It must never panic, and anything it delivers must be consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sonomask_wire::{Received, Receiver};

fuzz_target!(|data: &[u8]| {
    // The first byte picks the chunk size, so splits inside frames and varints get explored.
    let Some((&split, rest)) = data.split_first() else { return };
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
});
