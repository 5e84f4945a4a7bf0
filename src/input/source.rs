//! Frame sources behind one trait: an image file, a directory (natural order; DICOM files in it
//! expand to their frames), a DICOM file (every frame), or a raw frame stream (stdin, a file, a
//! TCP connection or a serial port) in the format below.
//!
//! Raw frame stream, per frame (little endian):
//!
//! ```text
//! offset size field
//! 0      4    magic "SMRF"
//! 4      1    version (1)
//! 5      1    format: 0 = gray8, 1 = rgb8
//! 6      2    width  (1..=16384)
//! 8      2    height (1..=16384)
//! 10     2    reserved (0)
//! 12     w*h*channels pixel bytes, row-major
//! ```
//!
//! Every frame of a stream must have the first frame's size (a capture device that changes
//! mode mid-stream is reported, not silently rescaled).

use anyhow::{Context, Result, bail};
use std::cmp::Ordering;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::input::dicom::DicomFile;
use crate::input::image_io::{self, MAX_SIDE, RgbFrame};

const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg"];
const DICOM_EXTENSIONS: &[&str] = &["dcm", "dicom"];

/// One frame and where it came from.
pub struct SourceFrame {
    /// 0-based index in the source.
    pub index: u32,
    pub image: RgbFrame,
    /// File (and frame) the pixels came from, for logs and outputs.
    pub label: String,
    /// (row, column) spacing in mm when the source knows it (DICOM).
    pub pixel_spacing_mm: Option<(f64, f64)>,
}

/// Frames in order; `None` at the end. An `Err` is one bad frame: callers may log it and go on.
pub trait FrameSource {
    fn next_frame(&mut self) -> Option<Result<SourceFrame>>;
    /// Frames in the source, when known.
    fn len_hint(&self) -> Option<u32>;
    fn describe(&self) -> String;
}

/// Opens `spec`: `raw:-`, `raw:FILE`, `raw:tcp:HOST:PORT`, `raw:serial:PATH[@BAUD]`, a DICOM
/// file, an image, or a directory.
pub fn open(spec: &str) -> Result<Box<dyn FrameSource>> {
    if let Some(rest) = spec.strip_prefix("raw:") {
        let (reader, name): (Box<dyn Read + Send>, String) = if rest == "-" || rest == "stdin" {
            (Box::new(std::io::stdin()), "stdin".into())
        } else if rest.starts_with("serial:") {
            let ep = crate::link::Endpoint::parse(rest, false)?;
            let crate::link::Endpoint::Serial { path, baud } = ep else {
                unreachable!()
            };
            // A live feed: wait up to 10 s for the next bytes before calling the stream stalled.
            let port = serialport::new(path.to_string_lossy(), baud)
                .timeout(std::time::Duration::from_secs(10))
                .open_native()
                .with_context(|| format!("raw frame source {rest}"))?;
            (Box::new(port), rest.to_string())
        } else if let Some(addr) = rest.strip_prefix("tcp:") {
            let s = std::net::TcpStream::connect(addr)
                .with_context(|| format!("raw frame source tcp:{addr}"))?;
            (Box::new(s), format!("tcp:{addr}"))
        } else {
            let f =
                std::fs::File::open(rest).with_context(|| format!("raw frame source {rest}"))?;
            (Box::new(std::io::BufReader::new(f)), rest.to_string())
        };
        return Ok(Box::new(RawStream::new(reader, name)));
    }
    let path = Path::new(spec);
    let meta = std::fs::metadata(path).with_context(|| format!("source {spec}"))?;
    if meta.is_dir() {
        return Ok(Box::new(Files::new(source_files(path)?, spec.to_string())));
    }
    Ok(Box::new(Files::new(
        vec![path.to_path_buf()],
        spec.to_string(),
    )))
}

fn has_ext(p: &Path, exts: &[&str]) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| exts.contains(&e.to_ascii_lowercase().as_str()))
}

/// Whether `p` is a DICOM file: by extension, or by the magic at byte 128.
pub fn is_dicom(p: &Path) -> bool {
    if has_ext(p, DICOM_EXTENSIONS) {
        return true;
    }
    let mut head = [0u8; 132];
    std::fs::File::open(p)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok()
        && &head[128..] == b"DICM"
}

/// Image and DICOM files of a directory, naturally sorted.
fn source_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| has_ext(p, IMAGE_EXTENSIONS) || has_ext(p, DICOM_EXTENSIONS))
        .collect();
    if files.is_empty() {
        bail!("{} holds no PNG, JPEG or DICOM files", dir.display());
    }
    files.sort_by(|a, b| natural_cmp(&a.to_string_lossy(), &b.to_string_lossy()));
    Ok(files)
}

/// The image files `path` names: itself, or the PNG/JPEG files of a directory, naturally sorted.
pub fn image_files(path: &Path) -> Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(path).with_context(|| format!("source {}", path.display()))?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let files: Vec<PathBuf> = source_files(path)
        .ok()
        .unwrap_or_default()
        .into_iter()
        .filter(|p| has_ext(p, IMAGE_EXTENSIONS))
        .collect();
    if files.is_empty() {
        bail!("{} holds no PNG or JPEG images", path.display());
    }
    Ok(files)
}

/// Files in order; a DICOM file contributes each of its frames.
struct Files {
    files: Vec<PathBuf>,
    next_file: usize,
    dicom: Option<(DicomFile, u32, PathBuf)>,
    index: u32,
    name: String,
    single_dicom_frames: Option<u32>,
}

impl Files {
    fn new(files: Vec<PathBuf>, name: String) -> Self {
        let mut s = Files {
            files,
            next_file: 0,
            dicom: None,
            index: 0,
            name,
            single_dicom_frames: None,
        };
        // A lone DICOM file: open it now so its frame count is known and its errors surface first.
        if s.files.len() == 1 && is_dicom(&s.files[0]) {
            // An unreadable file is reported by `next_frame`, with the reason.
            if let Ok(d) = DicomFile::open(&s.files[0]) {
                s.single_dicom_frames = Some(d.frame_count());
                s.dicom = Some((d, 0, s.files[0].clone()));
                s.next_file = 1;
            }
        }
        s
    }
}

impl FrameSource for Files {
    fn next_frame(&mut self) -> Option<Result<SourceFrame>> {
        loop {
            if let Some((d, k, path)) = &mut self.dicom {
                if *k < d.frame_count() {
                    let r = d.frame(*k).map(|image| SourceFrame {
                        index: self.index,
                        image,
                        label: format!("{}#{}", path.display(), *k),
                        pixel_spacing_mm: d.info.pixel_spacing_mm,
                    });
                    *k += 1;
                    self.index += 1;
                    return Some(r.with_context(|| format!("{}", path.display())));
                }
                self.dicom = None;
            }
            let path = self.files.get(self.next_file)?.clone();
            self.next_file += 1;
            if is_dicom(&path) {
                match DicomFile::open(&path) {
                    Ok(d) => {
                        self.dicom = Some((d, 0, path));
                        continue;
                    }
                    Err(e) => {
                        self.index += 1;
                        return Some(Err(e));
                    }
                }
            }
            let index = self.index;
            self.index += 1;
            return Some(image_io::load_rgb(&path).map(|image| SourceFrame {
                index,
                image,
                label: path.display().to_string(),
                pixel_spacing_mm: None,
            }));
        }
    }
    fn len_hint(&self) -> Option<u32> {
        match self.single_dicom_frames {
            Some(n) => Some(n),
            None if self.files.iter().all(|f| !has_ext(f, DICOM_EXTENSIONS)) => {
                Some(self.files.len() as u32)
            }
            None => None,
        }
    }
    fn describe(&self) -> String {
        self.name.clone()
    }
}

/// The raw frame stream described in the module docs.
pub struct RawStream<R: Read> {
    reader: R,
    name: String,
    index: u32,
    first: Option<(u16, u16, u8)>,
    failed: bool,
}

pub const RAW_MAGIC: &[u8; 4] = b"SMRF";

impl<R: Read> RawStream<R> {
    pub fn new(reader: R, name: String) -> Self {
        RawStream {
            reader,
            name,
            index: 0,
            first: None,
            failed: false,
        }
    }

    fn read_frame(&mut self) -> Result<Option<RgbFrame>> {
        let mut h = [0u8; 12];
        // A clean end is EOF exactly at a frame boundary.
        let mut got = 0;
        while got < h.len() {
            let n = self
                .reader
                .read(&mut h[got..])
                .context("reading the raw stream")?;
            if n == 0 {
                if got == 0 {
                    return Ok(None);
                }
                bail!("truncated frame header ({got} of 12 bytes)");
            }
            got += n;
        }
        if &h[..4] != RAW_MAGIC {
            bail!(
                "expected 'SMRF' at the start of the frame, found {:02x?} (not a sonomask raw stream, or out of step)",
                &h[..4]
            );
        }
        if h[4] != 1 {
            bail!("raw stream version {} (this reader knows 1)", h[4]);
        }
        let format = h[5];
        let channels = match format {
            0 => 1,
            1 => 3,
            f => bail!("pixel format {f} (0 = gray8, 1 = rgb8)"),
        };
        let (w, hgt) = (
            u16::from_le_bytes([h[6], h[7]]),
            u16::from_le_bytes([h[8], h[9]]),
        );
        if w == 0 || hgt == 0 || w as u32 > MAX_SIDE || hgt as u32 > MAX_SIDE {
            bail!("frame of {w}x{hgt} is outside 1..{MAX_SIDE} per side");
        }
        match self.first {
            None => self.first = Some((w, hgt, format)),
            Some(f) if f != (w, hgt, format) => bail!(
                "frame is {w}x{hgt} format {format}; the stream started with {}x{} format {}",
                f.0,
                f.1,
                f.2
            ),
            _ => {}
        }
        let mut px = vec![0u8; w as usize * hgt as usize * channels];
        self.reader
            .read_exact(&mut px)
            .context("truncated frame pixels")?;
        let frame = if channels == 1 {
            RgbFrame::from_gray(w as u32, hgt as u32, &px)?
        } else {
            RgbFrame::new(w as u32, hgt as u32, px)?
        };
        Ok(Some(frame))
    }
}

impl<R: Read> FrameSource for RawStream<R> {
    fn next_frame(&mut self) -> Option<Result<SourceFrame>> {
        if self.failed {
            return None;
        }
        let index = self.index;
        match self.read_frame() {
            Ok(None) => None,
            Ok(Some(image)) => {
                self.index += 1;
                Some(Ok(SourceFrame {
                    index,
                    image,
                    label: format!("{}#{index}", self.name),
                    pixel_spacing_mm: None,
                }))
            }
            Err(e) => {
                // After a bad header the stream is out of step: stop rather than guess.
                self.failed = true;
                Some(Err(e.context(format!("{} frame {index}", self.name))))
            }
        }
    }
    fn len_hint(&self) -> Option<u32> {
        None
    }
    fn describe(&self) -> String {
        self.name.clone()
    }
}

/// Writes one frame in the raw stream format (for tools and tests).
pub fn write_raw_frame(w: &mut impl std::io::Write, f: &RgbFrame) -> std::io::Result<()> {
    let mut h = [0u8; 12];
    h[..4].copy_from_slice(RAW_MAGIC);
    h[4] = 1;
    h[5] = 1;
    h[6..8].copy_from_slice(&(f.width as u16).to_le_bytes());
    h[8..10].copy_from_slice(&(f.height as u16).to_le_bytes());
    w.write_all(&h)?;
    w.write_all(&f.pixels)
}

/// Compares strings with digit runs compared as numbers.
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (None, _) => return Ordering::Less,
            (_, None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let da = a.iter().take_while(|c| c.is_ascii_digit()).count();
                let db = b.iter().take_while(|c| c.is_ascii_digit()).count();
                let (na, nb) = (trim_zeros(&a[..da]), trim_zeros(&b[..db]));
                let o = na.len().cmp(&nb.len()).then(na.cmp(nb)).then(da.cmp(&db));
                if o != Ordering::Equal {
                    return o;
                }
                a = &a[da..];
                b = &b[db..];
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(y);
                }
                a = &a[1..];
                b = &b[1..];
            }
        }
    }
}

fn trim_zeros(d: &[u8]) -> &[u8] {
    let k = d.iter().take_while(|&&c| c == b'0').count();
    &d[k.min(d.len().saturating_sub(1))..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natural_order() {
        let mut v = vec![
            "img10.png",
            "img2.png",
            "img1.png",
            "benign (10).png",
            "benign (9).png",
            "img02.png",
        ];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            v,
            vec![
                "benign (9).png",
                "benign (10).png",
                "img1.png",
                "img2.png",
                "img02.png",
                "img10.png"
            ]
        );
    }

    fn frame(w: u32, h: u32, v: u8) -> RgbFrame {
        RgbFrame::new(w, h, vec![v; (w * h * 3) as usize]).unwrap()
    }

    #[test]
    fn raw_stream_round_trip_and_faults() {
        let mut buf = Vec::new();
        for v in [10, 20, 30] {
            write_raw_frame(&mut buf, &frame(4, 3, v)).unwrap();
        }
        let mut s = RawStream::new(&buf[..], "t".into());
        let got: Vec<u8> = std::iter::from_fn(|| s.next_frame())
            .map(|f| f.unwrap().image.pixels[0])
            .collect();
        assert_eq!(got, vec![10, 20, 30]);

        let err = |bytes: &[u8]| -> String {
            let mut s = RawStream::new(bytes, "t".into());
            let mut last = String::new();
            while let Some(f) = s.next_frame() {
                if let Err(e) = f {
                    last = format!("{e:#}");
                }
            }
            last
        };
        assert!(err(&buf[..buf.len() - 5]).contains("truncated frame pixels"));
        assert!(err(&buf[..20]).contains("truncated frame pixels"));
        assert!(err(&buf[..5]).contains("truncated frame header"));
        let mut other = buf.clone();
        write_raw_frame(&mut other, &frame(5, 3, 1)).unwrap();
        assert!(err(&other).contains("the stream started with 4x3"));
        let mut bad = buf.clone();
        bad[0] = b'X';
        assert!(err(&bad).contains("expected 'SMRF'"));
        let mut huge = buf[..12].to_vec();
        huge[6..8].copy_from_slice(&60000u16.to_le_bytes());
        assert!(err(&huge).contains("outside 1..16384"));
    }
}
