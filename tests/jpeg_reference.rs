//! JPEG frames decode to the pixels Pillow and OpenCV (libjpeg-turbo) give, bit for bit, on real
//! frames from ../shared/data, and so the whole LiteMedSAM input tensor of a JPEG frame equals
//! the official recipe's. Reference hashes: quantize/make_fixtures.py `jpeg`.
//!
//! Built without the `libjpeg` feature, the image crate's zune-jpeg decodes instead and is not
//! bit-exact: the test then only reports how many frames differ.

mod common;

use sonomask::input::image_io::{jpeg, load_rgb};
use sonomask::model::manifest::sha256_hex;
use sonomask::preprocess::{Recipe, sam_input_into};

#[test]
fn jpeg_frames_decode_bit_exact_with_libjpeg_turbo() {
    let Some(shared) = common::shared() else {
        return;
    };
    let text = std::fs::read_to_string(common::fixtures().join("jpeg_reference.toml")).unwrap();
    let t: toml::Table = toml::from_str(&text).unwrap();
    let images = t["image"].as_array().unwrap();
    assert!(images.len() >= 20);
    let recipe = Recipe::lite_medsam(256);
    let mut input = vec![0f32; 3 * 256 * 256];
    let mut differ = Vec::new();
    for e in images {
        let rel = e["path"].as_str().unwrap();
        let frame = load_rgb(&shared.join("data").join(rel)).unwrap();
        let size = e["size"].as_array().unwrap();
        assert_eq!(
            (frame.width as i64, frame.height as i64),
            (size[0].as_integer().unwrap(), size[1].as_integer().unwrap()),
            "{rel}"
        );
        if sha256_hex(&frame.pixels) != e["sha256"].as_str().unwrap() {
            differ.push(rel.to_string());
            continue;
        }
        sam_input_into(&frame, &recipe, &mut input);
        let bytes: Vec<u8> = input.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(
            sha256_hex(&bytes),
            e["input_sha256"].as_str().unwrap(),
            "{rel}: the LiteMedSAM input tensor differs from the official recipe's"
        );
    }
    eprintln!(
        "JPEG decoder {}: {} of {} real frames bit-exact with Pillow/OpenCV",
        jpeg::DECODER,
        images.len() - differ.len(),
        images.len()
    );
    if cfg!(feature = "libjpeg") {
        assert!(
            differ.is_empty(),
            "decoded pixels differ from Pillow/OpenCV on {differ:?}"
        );
    }
}
