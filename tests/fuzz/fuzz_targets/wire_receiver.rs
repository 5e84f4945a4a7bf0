//! Arbitrary bytes, split at arbitrary points, into the host receiver (frame decoder, message
//! parsers, mask reassembly). It must never panic, and anything it delivers must be consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sonomask_wire::fuzzing::wire_receiver(data));
