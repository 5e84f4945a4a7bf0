//! sonomask::fuzzing::board_file on arbitrary bytes: errors are expected, panics are bugs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sonomask::fuzzing::board_file(data));
