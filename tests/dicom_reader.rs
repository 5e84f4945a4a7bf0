//! The DICOM reader against pixels decoded by an independent reader (pydicom 3.0.2, through
//! quantize/make_dicom_fixtures.py): the three real ultrasound files in ../shared/data/dicom_us
//! and small variants pydicom wrote for the encodings those files lack; then damaged files.

mod common;

use sha2::{Digest, Sha256};
use sonomask::input::dicom::{DicomFile, Photometric, Syntax};
use std::path::PathBuf;

fn fixture(p: &str) -> PathBuf {
    common::fixtures().join("dicom").join(p)
}

fn reference() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("reference.json")).unwrap()).unwrap()
}

#[test]
fn real_native_files_match_pydicom_exactly() {
    let Some(shared) = common::shared() else {
        return;
    };
    let r = reference();
    for (name, photometric) in [
        ("examples_palette.dcm", Photometric::Palette),
        ("examples_rgb_color.dcm", Photometric::Rgb),
    ] {
        let want = &r["real"][name];
        let f = DicomFile::open(&shared.join("data/dicom_us").join(name)).unwrap();
        assert_eq!(f.info.photometric, photometric);
        assert_eq!(f.info.syntax, Syntax::ExplicitLe);
        assert_eq!(
            (f.info.rows as u64, f.info.columns as u64),
            (
                want["rows"].as_u64().unwrap(),
                want["columns"].as_u64().unwrap()
            )
        );
        for (k, sha) in want["sha256"].as_array().unwrap().iter().enumerate() {
            let fr = f.frame(k as u32).unwrap();
            assert_eq!(
                format!("{:x}", Sha256::digest(&fr.pixels)),
                sha.as_str().unwrap(),
                "{name} frame {k}"
            );
        }
        match want["pixel_spacing_mm"].as_array() {
            Some(s) => {
                let (dy, dx) = f.info.pixel_spacing_mm.expect("pixel spacing");
                assert!(
                    (dy - s[0].as_f64().unwrap()).abs() < 1e-9
                        && (dx - s[1].as_f64().unwrap()).abs() < 1e-9
                );
            }
            None => assert_eq!(f.info.pixel_spacing_mm, None),
        }
    }
}

#[test]
fn real_jpeg_cine_matches_pydicom_within_jpeg_decoder_differences() {
    let Some(shared) = common::shared() else {
        return;
    };
    let r = reference();
    let want = &r["real"]["examples_ybr_color.dcm"];
    let f = DicomFile::open(&shared.join("data/dicom_us/examples_ybr_color.dcm")).unwrap();
    assert_eq!(f.info.syntax, Syntax::JpegBaseline);
    assert_eq!(f.info.photometric, Photometric::YbrFull422);
    assert_eq!(f.frame_count(), 30);
    let s = f.info.pixel_spacing_mm.unwrap();
    assert!((s.0 - 0.5104970559477806).abs() < 1e-12);
    assert!((f.info.frame_time_ms.unwrap() - 33.333).abs() < 1e-9);
    // Two JPEG decoders (libjpeg in Pillow, zune-jpeg here) differ by IDCT and chroma
    // upsampling rounding: per-frame channel means within 0.1 levels, whole frames within a
    // mean absolute difference of 0.1 level and no sample off by more than 4 (measured: 0.017, 3).
    for (k, m) in want["mean_rgb"].as_array().unwrap().iter().enumerate() {
        let fr = f.frame(k as u32).unwrap();
        for c in 0..3 {
            let mean = fr
                .pixels
                .iter()
                .skip(c)
                .step_by(3)
                .map(|&v| v as f64)
                .sum::<f64>()
                / (fr.pixels.len() / 3) as f64;
            let d = (mean - m[c].as_f64().unwrap()).abs();
            assert!(d < 0.1, "frame {k} channel {c}: mean differs by {d}");
        }
    }
    for k in [0u32, 29] {
        let png =
            sonomask::input::image_io::load_rgb(&fixture(&format!("ybr_frame{k:02}.png"))).unwrap();
        let fr = f.frame(k).unwrap();
        let diffs: Vec<i32> = fr
            .pixels
            .iter()
            .zip(&png.pixels)
            .map(|(&a, &b)| (a as i32 - b as i32).abs())
            .collect();
        let mean = diffs.iter().sum::<i32>() as f64 / diffs.len() as f64;
        let within2 = diffs.iter().filter(|&&d| d <= 2).count() as f64 / diffs.len() as f64;
        eprintln!(
            "frame {k}: mean |diff| {mean:.3}, max {}, {:.4} within 2 levels",
            diffs.iter().max().unwrap(),
            within2
        );
        assert!(mean < 0.1, "frame {k}: mean |diff| {mean}");
        assert!(
            *diffs.iter().max().unwrap() <= 4,
            "frame {k}: a sample differs by more than 4 levels"
        );
        assert!(
            within2 > 0.999,
            "frame {k}: only {within2} of samples within 2 levels"
        );
    }
}

#[test]
fn variants_match_pydicom() {
    let r = reference();
    for (name, v) in r["variants"].as_object().unwrap() {
        let f = DicomFile::open(&fixture(&format!("variants/{name}.dcm")))
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert_eq!(
            f.frame_count() as u64,
            v["frames"].as_u64().unwrap(),
            "{name}"
        );
        let want = std::fs::read(fixture(&format!("variants/{name}.rgb"))).unwrap();
        let mut got = Vec::new();
        for k in 0..f.frame_count() {
            got.extend(f.frame(k).unwrap().pixels);
        }
        assert_eq!(got.len(), want.len(), "{name}");
        // pydicom's YCbCr conversion runs in numpy f32 with another summation order: allow 1.
        let tol = if name.starts_with("ybr") { 1 } else { 0 };
        let worst = got
            .iter()
            .zip(&want)
            .map(|(&a, &b)| (a as i32 - b as i32).abs())
            .max()
            .unwrap();
        assert!(
            worst <= tol,
            "{name}: differs from pydicom by up to {worst}"
        );
    }
    let be = DicomFile::open(&fixture("variants/explicit_be_rgb.dcm")).unwrap();
    assert_eq!(be.info.syntax, Syntax::ExplicitBe);
    let im = DicomFile::open(&fixture("variants/implicit_le_rgb.dcm")).unwrap();
    assert_eq!(im.info.syntax, Syntax::ImplicitLe);
}

fn err_of(bytes: Vec<u8>) -> String {
    match DicomFile::parse(bytes) {
        Ok(_) => "parsed".into(),
        Err(e) => format!("{e:#}"),
    }
}

fn replace(mut b: Vec<u8>, from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let at = b
        .windows(from.len())
        .position(|w| w == from)
        .expect("pattern in file");
    b[at..at + from.len()].copy_from_slice(to);
    b
}

#[test]
fn bad_files_are_refused_with_a_reason() {
    let good = std::fs::read(fixture("variants/rgb_planar.dcm")).unwrap();
    // Wrong magic.
    assert!(err_of(vec![0u8; 300]).contains("no 'DICM' magic"));
    assert!(err_of(b"\x89PNG\r\n".to_vec()).contains("not a DICOM file"));
    // Truncated anywhere: an error, never a panic, never a short image.
    for cut in (0..good.len()).step_by(7) {
        let e = err_of(good[..cut].to_vec());
        assert_ne!(e, "parsed", "file cut at {cut} parsed");
    }
    // Unsupported transfer syntaxes are named.
    let rle = replace(
        good.clone(),
        b"1.2.840.10008.1.2.1\0",
        b"1.2.840.10008.1.2.5\0",
    );
    assert!(err_of(rle).contains("1.2.840.10008.1.2.5 (RLE Lossless) is not supported"));
    let j2k = replace(
        good.clone(),
        b"1.2.840.10008.1.2.1\0",
        b"1.2.840.10008.1.2.4\0",
    );
    assert!(err_of(j2k).contains("1.2.840.10008.1.2.4 (unknown) is not supported"));
    // Zero frames.
    let pal = std::fs::read(fixture("variants/palette_3frames.dcm")).unwrap();
    let zero = replace(
        pal.clone(),
        b"\x08\x00IS\x02\x003 ",
        b"\x08\x00IS\x02\x000 ",
    );
    assert!(err_of(zero).contains("holds no image"));
    // Absurd or inconsistent sizes are refused before any pixel buffer is allocated.
    let rows = |v: u16| {
        replace(
            good.clone(),
            b"\x10\x00US\x02\x00\x1e\x00",
            &[&b"\x10\x00US\x02\x00"[..], &v.to_le_bytes()].concat(),
        )
    };
    assert!(err_of(rows(0xFFFF)).contains("outside 1..16384"));
    assert!(err_of(rows(0)).contains("outside 1..16384"));
    assert!(err_of(rows(16000)).contains("Pixel Data holds 3600 bytes"));
    let many = replace(pal, b"\x08\x00IS\x02\x003 ", b"\x08\x00IS\x02\x009 ");
    assert!(err_of(many).contains("Pixel Data holds"));
}
