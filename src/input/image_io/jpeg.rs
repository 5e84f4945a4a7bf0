//! JPEG decoding that gives the pixels the model's own pipelines see.
//!
//! LiteMedSAM's training and reference code read JPEGs with OpenCV or Pillow, both libjpeg-turbo
//! (accurate integer IDCT, fancy upsampling). JPEG leaves IDCT rounding to the decoder, and the
//! `image` crate's decoder (zune-jpeg) differs from libjpeg-turbo by up to 4 grey levels on ~12%
//! of the pixels of a real MRI frame, enough to move LiteMedSAM's mask on small targets
//! (docs/ACCURACY.md). With the `libjpeg` feature (default) frames are decoded by libjpeg-turbo's
//! code (the `mozjpeg` crate builds it from source), bit-exact with Pillow and OpenCV
//! (tests/jpeg_reference.rs); without it, by zune-jpeg.
//!
//! Both paths refuse a frame larger than the caller's limits before any pixel buffer exists, and
//! a truncated or corrupt stream is an error, never a frame padded with grey.

use super::RgbFrame;
use anyhow::{Result, bail};

/// Which decoder this build uses, for `doctor` and logs.
pub const DECODER: &str = if cfg!(feature = "libjpeg") {
    "libjpeg-turbo (mozjpeg build; bit-exact with Pillow/OpenCV)"
} else {
    "zune-jpeg (image crate; differs from Pillow/OpenCV in IDCT rounding)"
};

/// True when `bytes` start like a JPEG stream (SOI then a marker).
pub fn is_jpeg(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xFF, 0xD8, 0xFF])
}

/// Decode a JPEG stream to RGB8 (grey streams expanded), refusing a frame wider than
/// `max_width` or taller than `max_height` before decoding it.
pub fn decode(bytes: &[u8], max_width: u32, max_height: u32) -> Result<RgbFrame> {
    if !is_jpeg(bytes) {
        bail!("not a JPEG stream (no start-of-image marker)");
    }
    imp::decode(bytes, max_width, max_height)
}

fn check_size(width: usize, height: usize, max_width: u32, max_height: u32) -> Result<()> {
    if width == 0 || height == 0 {
        bail!("JPEG frame is empty ({width}x{height})");
    }
    if width > max_width as usize || height > max_height as usize {
        bail!("JPEG frame is {width}x{height}, larger than the {max_width}x{max_height} allowed");
    }
    Ok(())
}

#[cfg(feature = "libjpeg")]
mod imp {
    use super::{RgbFrame, check_size};
    use anyhow::{Result, anyhow};
    use mozjpeg_sys as ffi;
    use std::os::raw::c_int;
    use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

    /// libjpeg reports errors by calling `error_exit`, which must not return: ours unwinds with
    /// this payload to the `catch_unwind` in [`decode`] (the `C-unwind` ABI makes that defined).
    struct Fault(String);

    fn message(cinfo: &mut ffi::jpeg_common_struct) -> String {
        // SAFETY: libjpeg sets `err` before any callback; format_message writes at most 80
        // bytes (JMSG_LENGTH_MAX) into the buffer, NUL-terminated.
        unsafe {
            let err = &*cinfo.err;
            match err.format_message {
                Some(format) => {
                    let buffer = [0u8; 80];
                    format(cinfo, &buffer);
                    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
                    String::from_utf8_lossy(&buffer[..end]).into_owned()
                }
                None => format!("libjpeg message {}", err.msg_code),
            }
        }
    }

    extern "C-unwind" fn error_exit(cinfo: &mut ffi::jpeg_common_struct) {
        resume_unwind(Box::new(Fault(message(cinfo))));
    }

    /// Warnings (level -1) are corrupt-data reports: libjpeg would go on and fill the damage
    /// with grey. A frame with missing or damaged data must not be segmented, so every warning
    /// but "extraneous bytes before marker" (junk between segments, pixels intact; Pillow and
    /// many scanners' encoders produce it) ends the decode. Trace messages (level >= 0) are
    /// ignored.
    extern "C-unwind" fn emit_message(cinfo: &mut ffi::jpeg_common_struct, level: c_int) {
        if level >= 0 {
            return;
        }
        // SAFETY: as in `message`.
        let code = unsafe { (*cinfo.err).msg_code };
        let text = message(cinfo);
        if code == ffi::JWRN_EXTRANEOUS_DATA as c_int {
            log::warn!("JPEG: {text} (ignored: pixel data intact)");
            return;
        }
        resume_unwind(Box::new(Fault(text)));
    }

    fn error_manager() -> ffi::jpeg_error_mgr {
        // SAFETY: jpeg_error_mgr is plain C data (function pointers are Options, so zero is
        // None); jpeg_std_error fills every field before we replace two handlers.
        let mut err: ffi::jpeg_error_mgr = unsafe { std::mem::zeroed() };
        unsafe { ffi::jpeg_std_error(&mut err) };
        err.error_exit = Some(error_exit);
        err.emit_message = Some(emit_message);
        err
    }

    pub fn decode(bytes: &[u8], max_width: u32, max_height: u32) -> Result<RgbFrame> {
        let run = || -> Result<RgbFrame> {
            let dec = mozjpeg::Decompress::with_err(error_manager())
                .from_mem(bytes)
                .map_err(|e| anyhow!("{e}"))?;
            let (width, height) = dec.size();
            check_size(width, height, max_width, max_height)?;
            let mut started = dec.rgb().map_err(|e| anyhow!("{e}"))?;
            if (started.width(), started.height()) != (width, height) {
                return Err(anyhow!("JPEG output size differs from its header"));
            }
            let mut pixels = vec![0u8; width * height * 3];
            let read = started
                .read_scanlines_into::<u8>(&mut pixels)
                .map_err(|e| anyhow!("{e}"))?
                .len();
            if read != pixels.len() {
                return Err(anyhow!(
                    "JPEG data ends after {} of {height} rows",
                    read / (width * 3)
                ));
            }
            started.finish().map_err(|e| anyhow!("{e}"))?;
            RgbFrame::new(width as u32, height as u32, pixels)
        };
        match catch_unwind(AssertUnwindSafe(run)) {
            Ok(result) => result,
            Err(payload) => Err(match payload.downcast::<Fault>() {
                Ok(fault) => anyhow!("{}", fault.0),
                Err(payload) => match payload.downcast::<String>() {
                    Ok(s) => anyhow!("JPEG decoder failed: {s}"),
                    Err(_) => anyhow!("JPEG decoder failed"),
                },
            }),
        }
    }
}

#[cfg(not(feature = "libjpeg"))]
mod imp {
    use super::{RgbFrame, check_size};
    use anyhow::{Result, anyhow};
    use image::ImageDecoder;

    pub fn decode(bytes: &[u8], max_width: u32, max_height: u32) -> Result<RgbFrame> {
        let mut dec = image::codecs::jpeg::JpegDecoder::new(std::io::Cursor::new(bytes))
            .map_err(|e| anyhow!("{e}"))?;
        let (w, h) = dec.dimensions();
        check_size(w as usize, h as usize, max_width, max_height)?;
        let mut limits = image::Limits::default();
        limits.max_image_width = Some(max_width);
        limits.max_image_height = Some(max_height);
        dec.set_limits(limits).map_err(|e| anyhow!("{e}"))?;
        let img = image::DynamicImage::from_decoder(dec).map_err(|e| anyhow!("{e}"))?;
        let rgb = img.to_rgb8();
        RgbFrame::new(rgb.width(), rgb.height(), rgb.into_raw())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(width: u32, height: u32, gray: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90);
        if gray {
            let img = image::GrayImage::from_fn(width, height, |x, y| {
                image::Luma([(x * 7 + y * 3) as u8])
            });
            img.write_with_encoder(enc).unwrap();
        } else {
            let img = image::RgbImage::from_fn(width, height, |x, y| {
                image::Rgb([(x * 5) as u8, (y * 9) as u8, ((x + y) * 3) as u8])
            });
            img.write_with_encoder(enc).unwrap();
        }
        out
    }

    #[test]
    fn decodes_colour_and_grey() {
        let f = decode(&encode(37, 21, false), 64, 64).unwrap();
        assert_eq!((f.width, f.height, f.pixels.len()), (37, 21, 37 * 21 * 3));
        // JPEG is lossy: the decoded pixel is near the encoded one.
        let p = f.pixel(10, 5);
        assert!(
            (p[0] as i32 - 50).abs() <= 6 && (p[1] as i32 - 45).abs() <= 6,
            "{p:?}"
        );
        let g = decode(&encode(16, 9, true), 64, 64).unwrap();
        let p = g.pixel(4, 2);
        assert!(
            p[0] == p[1] && p[1] == p[2],
            "grey expands to three equal channels: {p:?}"
        );
    }

    #[test]
    fn refuses_oversize_before_decoding() {
        let e = decode(&encode(40, 30, false), 39, 64)
            .unwrap_err()
            .to_string();
        assert!(e.contains("40x30") && e.contains("39x64"), "{e}");
        let e = decode(&encode(40, 30, false), 64, 29)
            .unwrap_err()
            .to_string();
        assert!(e.contains("larger than"), "{e}");
    }

    #[test]
    fn refuses_truncated_corrupt_and_foreign_streams() {
        let jpeg = encode(64, 64, false);
        for cut in [3, 20, jpeg.len() / 2, jpeg.len() - 2] {
            assert!(
                decode(&jpeg[..cut], 64, 64).is_err(),
                "cut at {cut} of {}",
                jpeg.len()
            );
        }
        // Damage the entropy-coded data in the middle (after the headers).
        let mut bad = jpeg.clone();
        let mid = bad.len() * 2 / 3;
        for b in &mut bad[mid..mid + 40] {
            *b = 0xFF;
        }
        bad[mid + 40] = 0xD9;
        assert!(decode(&bad, 64, 64).is_err());
        assert!(
            decode(b"\x89PNG\r\n\x1a\n", 64, 64)
                .unwrap_err()
                .to_string()
                .contains("not a JPEG")
        );
        assert!(decode(&[0xFF, 0xD8, 0xFF], 64, 64).is_err());
        // The decoder is reusable after a fault (no state leaked by the unwinding).
        assert_eq!(decode(&jpeg, 64, 64).unwrap().width, 64);
    }
}
