//! Reading frames from image files (PNG/JPEG) into one owned RGB8 layout.

use anyhow::{Context, Result, bail};
use std::path::Path;

pub mod jpeg;

/// Largest side accepted from a file: refuse before decoding a 100k x 100k bomb.
pub const MAX_SIDE: u32 = 16_384;

/// An RGB8 frame, row-major, interleaved. Grayscale sources are expanded to RGB on load, as SAM
/// expects three channels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbFrame {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

impl RgbFrame {
    pub fn new(width: u32, height: u32, pixels: Vec<u8>) -> Result<Self> {
        if width == 0 || height == 0 {
            bail!("empty frame ({width}x{height})");
        }
        if pixels.len() != width as usize * height as usize * 3 {
            bail!(
                "frame {width}x{height} needs {} bytes, got {}",
                width as usize * height as usize * 3,
                pixels.len()
            );
        }
        Ok(RgbFrame {
            width,
            height,
            pixels,
        })
    }

    pub fn from_gray(width: u32, height: u32, gray: &[u8]) -> Result<Self> {
        Self::new(
            width,
            height,
            gray.iter().flat_map(|&g| [g, g, g]).collect(),
        )
    }

    /// The `w x h` region at (x0, y0), copied row by row. The region must lie in the frame.
    pub fn crop(&self, x0: u32, y0: u32, w: u32, h: u32) -> RgbFrame {
        assert!(
            x0 + w <= self.width && y0 + h <= self.height && w > 0 && h > 0,
            "crop inside the frame"
        );
        let mut pixels = Vec::with_capacity((w * h * 3) as usize);
        for y in y0..y0 + h {
            let s = ((y * self.width + x0) * 3) as usize;
            pixels.extend_from_slice(&self.pixels[s..s + (w * 3) as usize]);
        }
        RgbFrame {
            width: w,
            height: h,
            pixels,
        }
    }

    pub fn pixel(&self, x: u32, y: u32) -> [u8; 3] {
        let i = (y as usize * self.width as usize + x as usize) * 3;
        [self.pixels[i], self.pixels[i + 1], self.pixels[i + 2]]
    }
}

/// Decode a PNG or JPEG file. Errors name the file and say what is wrong with it.
pub fn load_rgb(path: &Path) -> Result<RgbFrame> {
    let bytes = crate::bounded::read(path, crate::bounded::IMAGE_BYTES, "image")?;
    decode_rgb(&bytes).with_context(|| format!("cannot decode image {}", path.display()))
}

/// Decode PNG/JPEG bytes, bounded by [`MAX_SIDE`] before any pixel buffer is allocated. JPEG goes
/// through [`jpeg`], which decodes as the models' reference pipelines do.
pub fn decode_rgb(bytes: &[u8]) -> Result<RgbFrame> {
    decode_rgb_within(bytes, MAX_SIDE)
}

/// [`decode_rgb`] with a smaller side limit (fuzzing, thumbnails).
pub fn decode_rgb_within(bytes: &[u8], max_side: u32) -> Result<RgbFrame> {
    if bytes.is_empty() {
        bail!("the file is empty");
    }
    if jpeg::is_jpeg(bytes) {
        return jpeg::decode(bytes, max_side, max_side);
    }
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .context("unrecognised image format")?;
    if reader.format().is_none() {
        bail!("not a PNG or JPEG image");
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(max_side);
    limits.max_image_height = Some(max_side);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| anyhow::anyhow!("{e}"))?;
    let rgb = img.to_rgb8();
    RgbFrame::new(rgb.width(), rgb.height(), rgb.into_raw())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_garbage_empty_and_truncated() {
        assert!(decode_rgb(b"").unwrap_err().to_string().contains("empty"));
        assert!(decode_rgb(b"hello world, not an image").is_err());
        let mut png = Vec::new();
        image::RgbImage::from_pixel(8, 8, image::Rgb([1, 2, 3]))
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        assert_eq!(decode_rgb(&png).unwrap().pixel(7, 7), [1, 2, 3]);
        assert!(decode_rgb(&png[..png.len() / 2]).is_err());
    }

    #[test]
    fn gray_expands_to_rgb() {
        let f = RgbFrame::from_gray(2, 1, &[5, 9]).unwrap();
        assert_eq!(f.pixels, vec![5, 5, 5, 9, 9, 9]);
        assert!(RgbFrame::new(0, 3, vec![]).is_err());
        assert!(RgbFrame::new(2, 2, vec![0; 5]).is_err());
    }
}
