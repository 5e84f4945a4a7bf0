//! File reads with a size limit: every file sonomask reads is untrusted input, and a huge or
//! endless file (a 40 GB "image", `/dev/zero` named as a frame, a log mistaken for a prompt file)
//! must be an error naming the file, not an exhausted board.

use anyhow::{Context, Result, bail};
use std::io::Read;
use std::path::Path;

/// Largest image file (PNG/JPEG): well above a 16384x16384 frame's compressed size.
pub const IMAGE_BYTES: u64 = 512 << 20;
/// Largest DICOM file: long multi-frame ultrasound cine loops.
pub const DICOM_BYTES: u64 = 2 << 30;
/// Largest text file (manifest, board profile, prompt file, prompt bank, CSV, vocabulary).
pub const TEXT_BYTES: u64 = 64 << 20;
/// Largest model file.
pub const MODEL_BYTES: u64 = 4 << 30;

/// Reads `path` whole, refusing it when it is (or turns out to be, for a pipe or a device)
/// larger than `limit` bytes. `what` names the file's role in the error.
pub fn read(path: &Path, limit: u64, what: &str) -> Result<Vec<u8>> {
    let f = std::fs::File::open(path)
        .with_context(|| format!("cannot read {what} {}", path.display()))?;
    let meta = f
        .metadata()
        .with_context(|| format!("cannot read {what} {}", path.display()))?;
    if meta.is_dir() {
        bail!("{what} {} is a directory", path.display());
    }
    if meta.len() > limit {
        bail!(
            "{what} {} is {} bytes, over the {} byte limit",
            path.display(),
            meta.len(),
            limit
        );
    }
    let mut out = Vec::with_capacity(meta.len() as usize);
    f.take(limit + 1)
        .read_to_end(&mut out)
        .with_context(|| format!("cannot read {what} {}", path.display()))?;
    if out.len() as u64 > limit {
        bail!(
            "{what} {} is over the {limit} byte limit (it kept growing or is not a regular file)",
            path.display()
        );
    }
    Ok(out)
}

/// [`read`] as UTF-8 text.
pub fn read_text(path: &Path, limit: u64, what: &str) -> Result<String> {
    let bytes = read(path, limit, what)?;
    String::from_utf8(bytes).with_context(|| format!("{what} {} is not UTF-8 text", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_large_endless_and_directories() {
        let dir = std::env::temp_dir().join(format!("sonomask-bounded-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("a.bin");
        std::fs::write(&f, vec![7u8; 100]).unwrap();
        assert_eq!(read(&f, 100, "test file").unwrap().len(), 100);
        let e = read(&f, 99, "test file").unwrap_err().to_string();
        assert!(
            e.contains("100 bytes") && e.contains("99 byte limit") && e.contains("a.bin"),
            "{e}"
        );
        assert!(
            read(&dir, 10, "image")
                .unwrap_err()
                .to_string()
                .contains("is a directory")
        );
        #[cfg(unix)]
        {
            let e = read(Path::new("/dev/zero"), 1 << 16, "image")
                .unwrap_err()
                .to_string();
            assert!(e.contains("over the 65536 byte limit"), "{e}");
        }
        std::fs::write(&f, [0xFF, 0xFE]).unwrap();
        assert!(
            read_text(&f, 10, "board")
                .unwrap_err()
                .to_string()
                .contains("not UTF-8")
        );
        assert!(
            read(&dir.join("none"), 10, "image")
                .unwrap_err()
                .to_string()
                .contains("cannot read image")
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
