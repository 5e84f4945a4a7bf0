//! The Rust SAM resize is bit-exact with the official one (ResizeLongestSide: PIL bilinear) on
//! real images from ../shared/data. Reference hashes come from quantize/make_fixtures.py.

mod common;

use sonomask::image_io::load_rgb;
use sonomask::model::manifest::sha256_hex;
use sonomask::preprocess::{Geometry, resize_bilinear_u8};

#[test]
fn resize_is_bit_exact_with_pil_on_shared_images() {
    let Some(shared) = common::shared() else {
        return;
    };
    let text =
        std::fs::read_to_string(common::fixtures().join("preprocess_reference.toml")).unwrap();
    let t: toml::Table = toml::from_str(&text).unwrap();
    let images = t["image"].as_array().unwrap();
    assert!(images.len() >= 10);
    for e in images {
        let rel = e["path"].as_str().unwrap();
        let size = e["size"].as_integer().unwrap() as u32;
        let frame = load_rgb(&shared.join("data").join(rel)).unwrap();
        let g = Geometry::new(frame.width, frame.height, size);
        let r = e["resized"].as_array().unwrap();
        assert_eq!(
            (g.resized_w as i64, g.resized_h as i64),
            (r[0].as_integer().unwrap(), r[1].as_integer().unwrap()),
            "{rel} @ {size}"
        );
        let out = resize_bilinear_u8(
            &frame.pixels,
            frame.width as usize,
            frame.height as usize,
            g.resized_w as usize,
            g.resized_h as usize,
        );
        assert_eq!(
            sha256_hex(&out),
            e["sha256"].as_str().unwrap(),
            "{rel} resized to {size}: bytes differ from PIL"
        );
    }
}
