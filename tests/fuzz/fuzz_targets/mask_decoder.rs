//! Arbitrary mask data into the streaming RLE/raw decoder: errors, never panics, never writes
//! outside the mask.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sonomask_wire::fuzzing::mask_decoder(data));
