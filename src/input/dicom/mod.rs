//! A focused DICOM reader for ultrasound: Part 10 files in implicit or explicit VR little endian,
//! explicit VR big endian, or JPEG baseline (encapsulated, one JPEG per frame); MONOCHROME1/2
//! (8 or 16 bit), RGB (pixel or planar), YBR_FULL, YBR_FULL_422 and PALETTE COLOR; single or
//! multi-frame. Every other transfer syntax is refused by name.
//!
//! Why not dicom-rs: `dicom-object` + `dicom-pixeldata` add 63 crates to the device build for
//! the general case; a cart needs this narrow subset, with allocation bounded before any pixel
//! buffer exists, and already has a JPEG decoder (the `image` crate's). Frames are decoded one at
//! a time from the file buffer, so a long cine costs one frame of RGB at a time.

mod parse;
mod pixels;

use anyhow::{Context, Result, bail};
use std::ops::Range;
use std::path::Path;

use crate::input::image_io::RgbFrame;
use parse::{Cursor, EXPLICIT_LE, Element, Encoding, TAG_PIXEL_DATA, Value};

/// Files larger than this are refused before reading (a cart's cine loops are tens of MB).
pub const MAX_FILE_BYTES: u64 = 1 << 30;
/// Largest frame side accepted (as for images).
pub const MAX_SIDE: u32 = crate::input::image_io::MAX_SIDE;
/// Most frames accepted in one file.
pub const MAX_FRAMES: u32 = 100_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Photometric {
    Monochrome1,
    Monochrome2,
    Rgb,
    YbrFull,
    YbrFull422,
    Palette,
}

impl Photometric {
    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "MONOCHROME1" => Photometric::Monochrome1,
            "MONOCHROME2" => Photometric::Monochrome2,
            "RGB" => Photometric::Rgb,
            "YBR_FULL" => Photometric::YbrFull,
            "YBR_FULL_422" => Photometric::YbrFull422,
            "PALETTE COLOR" => Photometric::Palette,
            other => bail!(
                "photometric interpretation '{other}' is not supported (MONOCHROME1/2, RGB, YBR_FULL, YBR_FULL_422, PALETTE COLOR are)"
            ),
        })
    }
}

/// Transfer syntaxes this reader decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Syntax {
    ImplicitLe,
    ExplicitLe,
    ExplicitBe,
    JpegBaseline,
}

fn syntax(uid: &str) -> Result<Syntax> {
    Ok(match uid {
        "1.2.840.10008.1.2" => Syntax::ImplicitLe,
        "1.2.840.10008.1.2.1" => Syntax::ExplicitLe,
        "1.2.840.10008.1.2.2" => Syntax::ExplicitBe,
        "1.2.840.10008.1.2.4.50" => Syntax::JpegBaseline,
        other => {
            let name = match other {
                "1.2.840.10008.1.2.1.99" => "Deflated Explicit VR Little Endian",
                "1.2.840.10008.1.2.4.51" => "JPEG Extended (Process 2 & 4)",
                "1.2.840.10008.1.2.4.57" => "JPEG Lossless (Process 14)",
                "1.2.840.10008.1.2.4.70" => "JPEG Lossless SV1",
                "1.2.840.10008.1.2.4.80" => "JPEG-LS Lossless",
                "1.2.840.10008.1.2.4.81" => "JPEG-LS Near-Lossless",
                "1.2.840.10008.1.2.4.90" => "JPEG 2000 Lossless",
                "1.2.840.10008.1.2.4.91" => "JPEG 2000",
                "1.2.840.10008.1.2.4.201"
                | "1.2.840.10008.1.2.4.202"
                | "1.2.840.10008.1.2.4.203" => "HTJ2K",
                "1.2.840.10008.1.2.5" => "RLE Lossless",
                "1.2.840.10008.1.2.4.100" | "1.2.840.10008.1.2.4.101" => "MPEG-2",
                "1.2.840.10008.1.2.4.102" | "1.2.840.10008.1.2.4.103" => "MPEG-4 AVC/H.264",
                "1.2.840.10008.1.2.4.107" | "1.2.840.10008.1.2.4.108" => "HEVC/H.265",
                _ => "unknown",
            };
            bail!(
                "transfer syntax {other} ({name}) is not supported: sonomask reads implicit/explicit VR little endian, explicit VR big endian and JPEG baseline (1.2.840.10008.1.2.4.50)"
            )
        }
    })
}

/// What the header says about the images.
#[derive(Clone, Debug, PartialEq)]
pub struct DicomInfo {
    pub transfer_syntax: String,
    pub syntax: Syntax,
    pub photometric: Photometric,
    pub rows: u32,
    pub columns: u32,
    pub frames: u32,
    pub samples_per_pixel: u16,
    pub bits_allocated: u16,
    pub bits_stored: u16,
    pub planar: bool,
    /// (row spacing, column spacing) in mm: Pixel Spacing, else the first ultrasound region
    /// whose physical units are cm.
    pub pixel_spacing_mm: Option<(f64, f64)>,
    /// Frame Time (0018,1063) in ms, when present.
    pub frame_time_ms: Option<f64>,
}

enum Pixels {
    Native(Range<usize>),
    Frames(Vec<Vec<Range<usize>>>),
}

/// An opened DICOM file; frames decode on demand.
pub struct DicomFile {
    data: Vec<u8>,
    pub info: DicomInfo,
    pixels: Pixels,
    palette: Option<pixels::Palette>,
}

impl DicomFile {
    pub fn open(path: &Path) -> Result<Self> {
        let len = std::fs::metadata(path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .len();
        if len > MAX_FILE_BYTES {
            bail!(
                "{}: {len} bytes is larger than the {MAX_FILE_BYTES}-byte limit",
                path.display()
            );
        }
        let data = crate::bounded::read(path, crate::bounded::DICOM_BYTES, "DICOM file")?;
        Self::parse(data).with_context(|| format!("DICOM {}", path.display()))
    }

    pub fn parse(data: Vec<u8>) -> Result<Self> {
        let (ts, start) = parse::meta(&data)?;
        let syntax = syntax(&ts)?;
        let enc = match syntax {
            Syntax::ImplicitLe => Encoding {
                explicit_vr: false,
                big_endian: false,
            },
            Syntax::ExplicitBe => Encoding {
                explicit_vr: true,
                big_endian: true,
            },
            _ => EXPLICIT_LE,
        };
        let mut c = Cursor {
            buf: &data,
            pos: start,
            big_endian: enc.big_endian,
        };
        let elements = parse::parse_elements(&mut c, Some(data.len()), enc, 0)?;
        let h = Header {
            buf: &data,
            els: &elements,
            be: enc.big_endian,
        };

        let rows = h.u16(0x0028_0010)?.context("no Rows (0028,0010)")? as u32;
        let columns = h.u16(0x0028_0011)?.context("no Columns (0028,0011)")? as u32;
        let frames = match h.text(0x0028_0008) {
            Some(s) => s
                .trim()
                .parse::<i64>()
                .with_context(|| format!("Number of Frames '{s}' is not a number"))?,
            None => 1,
        };
        if frames <= 0 {
            bail!("Number of Frames is {frames}: the file holds no image");
        }
        if frames > MAX_FRAMES as i64 {
            bail!("{frames} frames is more than the {MAX_FRAMES} accepted");
        }
        let frames = frames as u32;
        if rows == 0 || columns == 0 || rows > MAX_SIDE || columns > MAX_SIDE {
            bail!("image of {columns}x{rows} pixels is outside 1..{MAX_SIDE} per side");
        }
        let photometric = Photometric::parse(h.text(0x0028_0004).as_deref().unwrap_or(""))
            .context("Photometric Interpretation (0028,0004)")?;
        let samples_per_pixel = h.u16(0x0028_0002)?.unwrap_or(1);
        let bits_allocated = h
            .u16(0x0028_0100)?
            .context("no Bits Allocated (0028,0100)")?;
        let bits_stored = h.u16(0x0028_0101)?.unwrap_or(bits_allocated);
        let planar = h.u16(0x0028_0006)?.unwrap_or(0) == 1;
        let want_spp = if matches!(
            photometric,
            Photometric::Monochrome1 | Photometric::Monochrome2 | Photometric::Palette
        ) {
            1
        } else {
            3
        };
        if samples_per_pixel != want_spp {
            bail!(
                "{photometric:?} needs {want_spp} sample(s) per pixel, the file says {samples_per_pixel}"
            );
        }
        if !(bits_allocated == 8 || (bits_allocated == 16 && want_spp == 1))
            || bits_stored == 0
            || bits_stored > bits_allocated
        {
            bail!(
                "{bits_allocated} bits allocated / {bits_stored} stored is not supported for {photometric:?} (8-bit colour, 8- or 16-bit grey and palette indices)"
            );
        }
        let info = DicomInfo {
            transfer_syntax: ts,
            syntax,
            photometric,
            rows,
            columns,
            frames,
            samples_per_pixel,
            bits_allocated,
            bits_stored,
            planar,
            pixel_spacing_mm: h.spacing(),
            frame_time_ms: h.text(0x0018_1063).and_then(|s| s.trim().parse().ok()),
        };
        let palette = if photometric == Photometric::Palette {
            Some(pixels::Palette::read(&h)?)
        } else {
            None
        };
        let pd = elements
            .iter()
            .find(|e| e.tag == TAG_PIXEL_DATA)
            .context("no Pixel Data (7FE0,0010)")?;
        let pixels = match (&pd.value, syntax) {
            (Value::Bytes(r), Syntax::ImplicitLe | Syntax::ExplicitLe | Syntax::ExplicitBe) => {
                let need = pixels::native_frame_bytes(&info) as u64 * frames as u64;
                if (r.len() as u64) < need {
                    bail!(
                        "Pixel Data holds {} bytes; {frames} frame(s) of {columns}x{rows} need {need}",
                        r.len()
                    );
                }
                Pixels::Native(r.clone())
            }
            (Value::Fragments { offsets, fragments }, Syntax::JpegBaseline) => Pixels::Frames(
                pixels::group_fragments(&data, offsets.clone(), fragments, frames)?,
            ),
            _ => bail!(
                "Pixel Data encoding does not match transfer syntax {}",
                info.transfer_syntax
            ),
        };
        drop(elements);
        Ok(DicomFile {
            data,
            info,
            pixels,
            palette,
        })
    }

    pub fn frame_count(&self) -> u32 {
        self.info.frames
    }

    /// Decodes frame `i` (0-based) to RGB8.
    pub fn frame(&self, i: u32) -> Result<RgbFrame> {
        if i >= self.info.frames {
            bail!("frame {i} requested; the file has {}", self.info.frames);
        }
        match &self.pixels {
            Pixels::Native(r) => {
                let n = pixels::native_frame_bytes(&self.info);
                let start = r.start + n * i as usize;
                let be = self.info.syntax == Syntax::ExplicitBe;
                pixels::native(
                    &self.info,
                    &self.data[start..start + n],
                    be,
                    self.palette.as_ref(),
                )
            }
            Pixels::Frames(f) => {
                let frags = &f[i as usize];
                let bytes: Vec<u8> = if frags.len() == 1 {
                    self.data[frags[0].clone()].to_vec()
                } else {
                    frags
                        .iter()
                        .flat_map(|r| self.data[r.clone()].iter().copied())
                        .collect()
                };
                pixels::jpeg(&self.info, &bytes).with_context(|| format!("frame {i}"))
            }
        }
    }
}

/// Lookups into the top-level elements.
struct Header<'a> {
    buf: &'a [u8],
    els: &'a [Element],
    be: bool,
}

impl<'a> Header<'a> {
    fn find(&self, tag: u32) -> Option<&'a Element> {
        self.els.iter().find(|e| e.tag == tag)
    }
    fn bytes(&self, tag: u32) -> Option<&'a [u8]> {
        match &self.find(tag)?.value {
            Value::Bytes(r) => Some(&self.buf[r.clone()]),
            _ => None,
        }
    }
    fn u16(&self, tag: u32) -> Result<Option<u16>> {
        let Some(b) = self.bytes(tag) else {
            return Ok(None);
        };
        if b.len() < 2 {
            bail!(
                "element ({:04X},{:04X}) is {} bytes, expected 2",
                tag >> 16,
                tag & 0xFFFF,
                b.len()
            );
        }
        let v = [b[0], b[1]];
        Ok(Some(if self.be {
            u16::from_be_bytes(v)
        } else {
            u16::from_le_bytes(v)
        }))
    }
    fn u16s(&self, tag: u32) -> Option<Vec<u16>> {
        let b = self.bytes(tag)?;
        Some(
            b.chunks_exact(2)
                .map(|c| {
                    if self.be {
                        u16::from_be_bytes([c[0], c[1]])
                    } else {
                        u16::from_le_bytes([c[0], c[1]])
                    }
                })
                .collect(),
        )
    }
    fn text(&self, tag: u32) -> Option<String> {
        self.find(tag).and_then(|e| match &e.value {
            Value::Bytes(r) => Some(parse::text(self.buf, r.clone())),
            _ => None,
        })
    }
    fn spacing(&self) -> Option<(f64, f64)> {
        if let Some(s) = self.text(0x0028_0030) {
            let v: Vec<f64> = s
                .split('\\')
                .filter_map(|x| x.trim().parse().ok())
                .collect();
            if v.len() == 2 && v.iter().all(|x| *x > 0.0 && x.is_finite()) {
                return Some((v[0], v[1]));
            }
        }
        // Ultrasound regions: Physical Delta X/Y (FD) in cm when the units code is 3.
        let Some(Element {
            value: Value::Items(items),
            ..
        }) = self.find(0x0018_6011)
        else {
            return None;
        };
        for item in items {
            let sub = Header {
                buf: self.buf,
                els: item,
                be: self.be,
            };
            let units = (sub.u16(0x0018_6024).ok()??, sub.u16(0x0018_6026).ok()??);
            let f64_of = |tag| -> Option<f64> {
                let b: [u8; 8] = sub.bytes(tag)?.get(..8)?.try_into().ok()?;
                Some(if self.be {
                    f64::from_be_bytes(b)
                } else {
                    f64::from_le_bytes(b)
                })
            };
            if units == (3, 3) {
                let (dx, dy) = (f64_of(0x0018_602C)?, f64_of(0x0018_602E)?);
                if dx > 0.0 && dy > 0.0 && dx.is_finite() && dy.is_finite() {
                    return Some((dy * 10.0, dx * 10.0));
                }
            }
        }
        None
    }
}
