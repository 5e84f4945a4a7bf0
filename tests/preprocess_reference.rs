//! The Rust SAM resizes are bit-exact with the official ones on real images from ../shared/data:
//! MobileSAM's (ResizeLongestSide: PIL bilinear) and LiteMedSAM's (OpenCV INTER_AREA, then
//! min-max). Reference hashes come from quantize/make_fixtures.py (`preprocess`, `area`).

mod common;

use sonomask::input::image_io::load_rgb;
use sonomask::model::manifest::sha256_hex;
use sonomask::preprocess::{Geometry, Recipe, resize_area_u8, resize_bilinear_u8, sam_input_into};

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

/// The test pattern quantize/make_fixtures.py `pattern` generates.
fn pattern(w: usize, h: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                v.push(((x * 7 + y * 13 + c * 29 + (x * y) % 17) % 256) as u8);
            }
        }
    }
    v
}

fn area_table() -> toml::Table {
    let text = std::fs::read_to_string(common::fixtures().join("area_reference.toml")).unwrap();
    toml::from_str(&text).unwrap()
}

/// LiteMedSAM's recipe: OpenCV INTER_AREA, bit for bit with cv2 (the OpenCV version the
/// fixture names) on generated patterns: the integer-factor path (2x with its half-up SIMD
/// rounding, 3x half-even), the general area path, scale 1 on one axis. Enlarging goes through
/// OpenCV's fixed-point bilinear, whose SIMD vertical pass drops 4 low bits: within 1 there.
#[test]
fn inter_area_matches_opencv_on_patterns() {
    let t = area_table();
    let cases = t["pattern"].as_array().unwrap();
    assert!(cases.len() >= 8);
    let (mut exact, mut enlarged) = (0, 0);
    for e in cases {
        let s = e["size"].as_array().unwrap();
        let o = e["out"].as_array().unwrap();
        let (w, h) = (
            s[0].as_integer().unwrap() as usize,
            s[1].as_integer().unwrap() as usize,
        );
        let (ow, oh) = (
            o[0].as_integer().unwrap() as usize,
            o[1].as_integer().unwrap() as usize,
        );
        let out = resize_area_u8(&pattern(w, h), w, h, ow, oh);
        assert_eq!(out.len(), ow * oh * 3);
        if let Some(hex) = e.get("bytes_hex").and_then(|v| v.as_str()) {
            let want: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            let worst = out
                .iter()
                .zip(&want)
                .map(|(&a, &b)| (a as i32 - b as i32).abs())
                .max()
                .unwrap();
            assert!(
                worst <= 1,
                "{w}x{h} -> {ow}x{oh}: off by {worst} from OpenCV"
            );
            enlarged += 1;
        } else {
            assert_eq!(
                sha256_hex(&out),
                e["sha256"].as_str().unwrap(),
                "{w}x{h} -> {ow}x{oh}: bytes differ from OpenCV INTER_AREA"
            );
            exact += 1;
        }
    }
    eprintln!("INTER_AREA: {exact} patterns bit-exact, {enlarged} enlarged within 1 of OpenCV");
}

/// The same on real frames from ../shared/data, and the whole LiteMedSAM input tensor
/// (min-max scaling in f64, zero padding) bit for bit with the official recipe's.
#[test]
fn lite_medsam_input_is_bit_exact_with_the_official_recipe_on_shared_images() {
    let Some(shared) = common::shared() else {
        return;
    };
    let t = area_table();
    let images = t["image"].as_array().unwrap();
    assert!(images.len() >= 10);
    let recipe = Recipe::lite_medsam(256);
    let mut input = vec![0f32; 3 * 256 * 256];
    for e in images {
        let rel = e["path"].as_str().unwrap();
        let frame = load_rgb(&shared.join("data").join(rel)).unwrap();
        let g = recipe.geometry(frame.width, frame.height);
        let r = e["resized"].as_array().unwrap();
        assert_eq!(
            (g.resized_w as i64, g.resized_h as i64),
            (r[0].as_integer().unwrap(), r[1].as_integer().unwrap()),
            "{rel}"
        );
        let out = recipe.resize(&frame, &g);
        assert_eq!(
            sha256_hex(&out),
            e["sha256"].as_str().unwrap(),
            "{rel}: INTER_AREA bytes differ from OpenCV"
        );
        sam_input_into(&frame, &recipe, &mut input);
        let bytes: Vec<u8> = input.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(
            sha256_hex(&bytes),
            e["input_sha256"].as_str().unwrap(),
            "{rel}: the input tensor differs from the official recipe's"
        );
    }
}
