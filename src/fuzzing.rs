//! One entry per parser of untrusted input, shared by the fuzz targets (tests/fuzz) and by the
//! test that replays their corpora in CI (tests/fuzz_corpora.rs). Each takes arbitrary bytes and
//! must return without panicking, whatever it is given; errors are the expected outcome.

use std::io::Cursor;
use std::path::Path;

use crate::input::source::FrameSource;

/// Frames a fuzzed source may decode: enough to reach the multi-frame paths, bounded work.
const MAX_FRAMES: u32 = 4;
/// Side limit for fuzzed images: a 16384-px claim would only make the fuzzer slow.
const MAX_SIDE: u32 = 2048;

/// A target's entry: arbitrary bytes in, nothing out (a panic is the finding).
pub type FuzzFn = fn(&[u8]);

/// Every target by name, as in tests/fuzz/Cargo.toml and tests/fuzz/corpus/.
pub const TARGETS: &[(&str, FuzzFn)] = &[
    ("dicom_reader", dicom_reader),
    ("raw_stream", raw_stream),
    ("prompt_file", prompt_file),
    ("prompt_bank", prompt_bank),
    ("board_file", board_file),
    ("manifest", manifest),
    ("image_loader", image_loader),
    ("wire_receiver", crate::wire::fuzzing::wire_receiver),
    ("mask_decoder", crate::wire::fuzzing::mask_decoder),
];

/// The DICOM reader: header, pixel data, every transfer syntax it accepts, the first frames.
pub fn dicom_reader(data: &[u8]) {
    if let Ok(d) = crate::input::dicom::DicomFile::parse(data.to_vec()) {
        for i in 0..d.frame_count().min(MAX_FRAMES) {
            if let Ok(f) = d.frame(i) {
                assert_eq!(f.pixels.len(), f.width as usize * f.height as usize * 3);
            }
        }
    }
}

/// The raw frame stream (`raw:` sources).
pub fn raw_stream(data: &[u8]) {
    let mut s = crate::input::source::RawStream::new(Cursor::new(data), "fuzz".into());
    for _ in 0..MAX_FRAMES {
        match s.next_frame() {
            Some(Ok(f)) => assert_eq!(
                f.image.pixels.len(),
                f.image.width as usize * f.image.height as usize * 3
            ),
            Some(Err(_)) | None => break,
        }
    }
}

/// Prompt files (plain lines, class lists, per-image JSON).
pub fn prompt_file(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::prompting::bank::PromptFile::parse(text);
    }
}

/// Prompt banks (JSON with embeddings), checked against a 4-dimensional text model.
pub fn prompt_bank(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::prompting::bank::PromptBank::from_text(text, Path::new("fuzz"), "ab", 4);
    }
}

/// Board profiles (TOML).
pub fn board_file(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::board::Board::parse(text);
    }
}

/// Model manifests (TOML).
pub fn manifest(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::model::Manifest::from_text(text, Path::new("fuzz"));
    }
}

/// The image loader (PNG, JPEG through libjpeg-turbo or zune-jpeg).
pub fn image_loader(data: &[u8]) {
    if let Ok(f) = crate::input::image_io::decode_rgb_within(data, MAX_SIDE) {
        assert_eq!(f.pixels.len(), f.width as usize * f.height as usize * 3);
    }
}
