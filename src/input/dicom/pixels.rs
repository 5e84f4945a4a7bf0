//! Pixel decoding: native (uncompressed) frames in every supported photometric interpretation,
//! palette lookup, YCbCr conversion as DICOM PS3.3 C.7.6.3.1.2 (and pydicom) does it, and JPEG
//! baseline frames through the `image` crate's decoder.

use anyhow::{Result, bail};
use std::ops::Range;

use super::{DicomInfo, Header, Photometric};
use crate::input::image_io::RgbFrame;

/// Bytes one native frame occupies.
pub fn native_frame_bytes(i: &DicomInfo) -> usize {
    let px = i.rows as usize * i.columns as usize;
    match i.photometric {
        // Y0 Y1 Cb Cr per two pixels.
        Photometric::YbrFull422 => px * 2,
        _ => px * i.samples_per_pixel as usize * (i.bits_allocated as usize / 8),
    }
}

/// A palette colour lookup table, reduced to 8 bits per channel.
pub struct Palette {
    first: i64,
    lut: [Vec<u8>; 3],
}

impl Palette {
    pub(super) fn read(h: &Header<'_>) -> Result<Self> {
        let mut lut: [Vec<u8>; 3] = Default::default();
        let mut first = 0;
        for (k, (desc, data)) in [
            (0x0028_1101, 0x0028_1201),
            (0x0028_1102, 0x0028_1202),
            (0x0028_1103, 0x0028_1203),
        ]
        .into_iter()
        .enumerate()
        {
            let d = h.u16s(desc).filter(|d| d.len() == 3);
            let Some(d) = d else {
                bail!(
                    "palette descriptor ({:04X},{:04X}) missing or malformed",
                    desc >> 16,
                    desc & 0xFFFF
                )
            };
            let entries = if d[0] == 0 { 65536 } else { d[0] as usize };
            // The three descriptors must agree (PS3.3 C.7.6.3.1.5): a shorter green or blue
            // table would be indexed past its end.
            if k > 0 && (entries != lut[0].len() || d[1] as i64 != first) {
                bail!(
                    "palette descriptors disagree: red has {} entries from {first}, ({:04X},{:04X}) says {entries} from {}",
                    lut[0].len(),
                    desc >> 16,
                    desc & 0xFFFF,
                    d[1]
                );
            }
            first = d[1] as i64;
            let bits = d[2];
            let raw = h.bytes(data).ok_or_else(|| {
                anyhow::anyhow!(
                    "palette data ({:04X},{:04X}) missing (segmented palettes are not supported)",
                    data >> 16,
                    data & 0xFFFF
                )
            })?;
            lut[k] = match bits {
                16 => {
                    let w = h.u16s(data).unwrap_or_default();
                    if w.len() < entries {
                        bail!("palette has {} entries, descriptor says {entries}", w.len());
                    }
                    w[..entries].iter().map(|v| (v >> 8) as u8).collect()
                }
                8 => {
                    // 8-bit entries are stored one per 16-bit word (low byte) or packed.
                    let words = h.u16s(data).unwrap_or_default();
                    if let Some(w) = words.get(..entries).filter(|_| raw.len() >= entries * 2) {
                        w.iter().map(|v| *v as u8).collect()
                    } else if raw.len() >= entries {
                        raw[..entries].to_vec()
                    } else {
                        bail!("palette data too short for {entries} entries");
                    }
                }
                b => bail!("palette entries of {b} bits are not supported"),
            };
        }
        Ok(Palette { first, lut })
    }

    fn rgb(&self, index: i64) -> [u8; 3] {
        let n = self.lut[0].len() as i64;
        let k = (index - self.first).clamp(0, n - 1) as usize;
        [self.lut[0][k], self.lut[1][k], self.lut[2][k]]
    }
}

/// YCbCr (full range) to RGB, as pydicom: f32 products, round half up, clamp.
fn ybr_to_rgb(y: u8, cb: u8, cr: u8) -> [u8; 3] {
    let (y, cb, cr) = (y as f32, cb as f32 - 128.0, cr as f32 - 128.0);
    let g_cb = -0.114f32 * 1.772 / 0.587;
    let g_cr = -0.299f32 * 1.402 / 0.587;
    let r = y + 1.402f32 * cr;
    let g = y + g_cb * cb + g_cr * cr;
    let b = y + 1.772f32 * cb;
    [r, g, b].map(|v| (v + 0.5).floor().clamp(0.0, 255.0) as u8)
}

/// One native frame to RGB8.
pub fn native(
    i: &DicomInfo,
    b: &[u8],
    big_endian: bool,
    palette: Option<&Palette>,
) -> Result<RgbFrame> {
    let (w, h) = (i.columns as usize, i.rows as usize);
    let px = w * h;
    let mut out = vec![0u8; px * 3];
    let sample16 = |k: usize| -> u16 {
        let v = [b[2 * k], b[2 * k + 1]];
        if big_endian {
            u16::from_be_bytes(v)
        } else {
            u16::from_le_bytes(v)
        }
    };
    match i.photometric {
        Photometric::Monochrome1 | Photometric::Monochrome2 => {
            let invert = i.photometric == Photometric::Monochrome1;
            let shift = i.bits_stored.saturating_sub(8) as u32;
            let mask = if i.bits_stored >= 16 {
                u16::MAX
            } else {
                (1u16 << i.bits_stored) - 1
            };
            for (k, o) in out.chunks_exact_mut(3).enumerate() {
                let v = if i.bits_allocated == 16 {
                    ((sample16(k) & mask) >> shift) as u8
                } else {
                    b[k]
                };
                o.fill(if invert { 255 - v } else { v });
            }
        }
        Photometric::Palette => {
            let p = palette.expect("palette read with the header");
            for (k, o) in out.chunks_exact_mut(3).enumerate() {
                let idx = if i.bits_allocated == 16 {
                    sample16(k) as i64
                } else {
                    b[k] as i64
                };
                o.copy_from_slice(&p.rgb(idx));
            }
        }
        Photometric::Rgb | Photometric::YbrFull => {
            let ybr = i.photometric == Photometric::YbrFull;
            for (k, o) in out.chunks_exact_mut(3).enumerate() {
                let s = if i.planar {
                    [b[k], b[px + k], b[2 * px + k]]
                } else {
                    [b[3 * k], b[3 * k + 1], b[3 * k + 2]]
                };
                o.copy_from_slice(&if ybr { ybr_to_rgb(s[0], s[1], s[2]) } else { s });
            }
        }
        Photometric::YbrFull422 => {
            if w % 2 != 0 {
                bail!("YBR_FULL_422 with an odd width ({w}) is not valid");
            }
            for (pair, q) in b[..px * 2].chunks_exact(4).enumerate() {
                let (y0, y1, cb, cr) = (q[0], q[1], q[2], q[3]);
                out[pair * 6..pair * 6 + 3].copy_from_slice(&ybr_to_rgb(y0, cb, cr));
                out[pair * 6 + 3..pair * 6 + 6].copy_from_slice(&ybr_to_rgb(y1, cb, cr));
            }
        }
    }
    RgbFrame::new(w as u32, h as u32, out)
}

/// Splits encapsulated fragments into frames: one fragment per frame when the counts agree,
/// else by the basic offset table, else at JPEG end-of-image markers.
pub fn group_fragments(
    buf: &[u8],
    offsets: Range<usize>,
    frags: &[Range<usize>],
    frames: u32,
) -> Result<Vec<Vec<Range<usize>>>> {
    let frames = frames as usize;
    if frags.is_empty() {
        bail!("encapsulated Pixel Data holds no fragments");
    }
    if frames == 1 {
        return Ok(vec![frags.to_vec()]);
    }
    if frags.len() == frames {
        return Ok(frags.iter().map(|f| vec![f.clone()]).collect());
    }
    let mut out: Vec<Vec<Range<usize>>> = Vec::new();
    let bot: Vec<u32> = buf[offsets]
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    if bot.len() == frames {
        // Offsets are from the first fragment's item tag; each item adds 8 header bytes.
        let mut pos = 0u32;
        let mut k = 0;
        for f in frags {
            while k + 1 < bot.len() && pos >= bot[k + 1] {
                k += 1;
            }
            if out.len() <= k {
                out.resize(k + 1, Vec::new());
            }
            out[k].push(f.clone());
            pos += 8 + f.len() as u32;
        }
    } else {
        let mut cur = Vec::new();
        for f in frags {
            cur.push(f.clone());
            let d = &buf[f.clone()];
            let ends = d.len() >= 2 && d[d.len() - 2..] == [0xFF, 0xD9]
                || d.len() >= 3 && d[d.len() - 3..d.len() - 1] == [0xFF, 0xD9];
            if ends {
                out.push(std::mem::take(&mut cur));
            }
        }
        if !cur.is_empty() {
            out.push(cur);
        }
    }
    if out.len() != frames {
        bail!(
            "Pixel Data holds {} JPEG frame(s); Number of Frames says {frames}",
            out.len()
        );
    }
    Ok(out)
}

/// One JPEG baseline frame to RGB8 (the decoder turns YCbCr into RGB). The header's Rows and
/// Columns bound the decoder: a frame that claims more is refused before it is decoded.
pub fn jpeg(i: &DicomInfo, bytes: &[u8]) -> Result<RgbFrame> {
    let frame = crate::input::image_io::jpeg::decode(bytes, i.columns, i.rows)
        .map_err(|e| anyhow::anyhow!("JPEG decode failed: {e:#}"))?;
    if frame.width != i.columns || frame.height != i.rows {
        bail!(
            "JPEG frame is {}x{}, the header says {}x{}",
            frame.width,
            frame.height,
            i.columns,
            i.rows
        );
    }
    Ok(frame)
}
