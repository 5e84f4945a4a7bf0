//! sonomask's focused DICOM reader against dicom-rs (dicom-object) on every DICOM file in the
//! fixtures and in ../shared/data/dicom_us: the header fields the pipeline uses, and, for native
//! 8-bit greyscale and interleaved RGB, every pixel of every frame.

mod common;

use dicom_object::{Tag, open_file};
use sonomask::input::dicom::{DicomFile, Photometric};
use std::path::{Path, PathBuf};

fn files() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![common::fixtures().join("dicom/variants")];
    if let Some(shared) = common::shared() {
        dirs.push(shared.join("data/dicom_us"));
    }
    for d in dirs {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
            .collect();
        v.sort();
        out.extend(v);
    }
    out
}

fn text(obj: &dicom_object::DefaultDicomObject, tag: Tag) -> Option<String> {
    obj.element(tag)
        .ok()
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
}

fn int(obj: &dicom_object::DefaultDicomObject, tag: Tag) -> Option<u32> {
    obj.element(tag).ok().and_then(|e| e.to_int::<u32>().ok())
}

fn check(path: &Path) -> usize {
    let ours = DicomFile::open(path).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
    let theirs = open_file(path).unwrap_or_else(|e| panic!("dicom-rs {}: {e}", path.display()));
    let i = &ours.info;
    let name = path.display();
    assert_eq!(
        i.transfer_syntax.trim_end_matches(['\0', ' ']),
        theirs
            .meta()
            .transfer_syntax()
            .trim_end_matches(['\0', ' ']),
        "{name}: transfer syntax"
    );
    assert_eq!(
        Some(i.rows),
        int(&theirs, Tag(0x0028, 0x0010)),
        "{name}: rows"
    );
    assert_eq!(
        Some(i.columns),
        int(&theirs, Tag(0x0028, 0x0011)),
        "{name}: columns"
    );
    assert_eq!(
        i.frames,
        int(&theirs, Tag(0x0028, 0x0008)).unwrap_or(1),
        "{name}: frames"
    );
    assert_eq!(
        Some(i.samples_per_pixel as u32),
        int(&theirs, Tag(0x0028, 0x0002)),
        "{name}: samples"
    );
    assert_eq!(
        Some(i.bits_allocated as u32),
        int(&theirs, Tag(0x0028, 0x0100)),
        "{name}"
    );
    assert_eq!(
        Some(i.bits_stored as u32),
        int(&theirs, Tag(0x0028, 0x0101)),
        "{name}"
    );
    let photometric = text(&theirs, Tag(0x0028, 0x0004)).unwrap();
    let want = match i.photometric {
        Photometric::Monochrome1 => "MONOCHROME1",
        Photometric::Monochrome2 => "MONOCHROME2",
        Photometric::Rgb => "RGB",
        Photometric::YbrFull => "YBR_FULL",
        Photometric::YbrFull422 => "YBR_FULL_422",
        Photometric::Palette => "PALETTE COLOR",
    };
    assert_eq!(photometric, want, "{name}: photometric");
    if let Some(ps) = text(&theirs, Tag(0x0028, 0x0030)) {
        let v: Vec<f64> = ps.split('\\').map(|x| x.trim().parse().unwrap()).collect();
        let (r, c) = i.pixel_spacing_mm.expect("Pixel Spacing read");
        assert!(
            (r - v[0]).abs() < 1e-9 && (c - v[1]).abs() < 1e-9,
            "{name}: spacing"
        );
    }
    // Every frame decodes; native 8-bit grey and interleaved RGB pixel for pixel.
    let native = !i.transfer_syntax.starts_with("1.2.840.10008.1.2.4");
    let raw = native
        .then(|| {
            theirs
                .element(Tag(0x7FE0, 0x0010))
                .ok()?
                .to_bytes()
                .ok()
                .map(|b| b.to_vec())
        })
        .flatten();
    let n = (i.rows * i.columns) as usize;
    let mut pixels_checked = 0;
    for f in 0..i.frames {
        let frame = ours
            .frame(f)
            .unwrap_or_else(|e| panic!("{name} frame {f}: {e:#}"));
        assert_eq!(
            (frame.width, frame.height),
            (i.columns, i.rows),
            "{name} frame {f}"
        );
        let Some(raw) = &raw else { continue };
        if i.bits_allocated != 8 {
            continue;
        }
        match (i.photometric, i.samples_per_pixel, i.planar) {
            (Photometric::Monochrome2, 1, _) => {
                let src = &raw[f as usize * n..(f as usize + 1) * n];
                for (k, &v) in src.iter().enumerate() {
                    assert_eq!(
                        frame.pixels[3 * k..3 * k + 3],
                        [v, v, v],
                        "{name} frame {f} px {k}"
                    );
                }
                pixels_checked += n;
            }
            (Photometric::Rgb, 3, false) => {
                let src = &raw[f as usize * 3 * n..(f as usize + 1) * 3 * n];
                assert_eq!(frame.pixels, src, "{name} frame {f}: RGB pixels");
                pixels_checked += n;
            }
            _ => {}
        }
    }
    pixels_checked
}

#[test]
fn dicom_reader_agrees_with_dicom_rs() {
    let files = files();
    assert!(files.len() >= 9, "{files:?}");
    let mut pixels = 0;
    for f in &files {
        pixels += check(f);
    }
    eprintln!(
        "{} DICOM files: headers agree with dicom-rs; {pixels} native pixels compared",
        files.len()
    );
    assert!(pixels > 0, "no native 8-bit file compared pixel by pixel");
}
