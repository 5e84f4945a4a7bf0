//! Labelled image sets as laid out in ../shared/data/<set>/: a `pairs.csv` with the header
//! `image,mask(s)`, one image per row, its ground-truth mask files separated by ';' (paths
//! relative to the CSV). The ground truth of an image is the union of its masks; a pixel is
//! foreground where any channel is above 127.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

use crate::input::image_io::load_rgb;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pair {
    pub image: PathBuf,
    pub masks: Vec<PathBuf>,
}

/// One CSV line split into fields (double-quoted fields may hold commas and "" escapes).
fn fields(line: &str) -> Vec<String> {
    let (mut out, mut cur, mut quoted, mut chars) =
        (Vec::new(), String::new(), false, line.chars().peekable());
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

pub fn read_pairs(csv: &Path) -> Result<Vec<Pair>> {
    let text = crate::bounded::read_text(csv, crate::bounded::TEXT_BYTES, "pairs file")?;
    let base = csv.parent().unwrap_or(Path::new("."));
    let mut lines = text.lines();
    let header = fields(lines.next().unwrap_or_default());
    if header.len() < 2 || header[0].trim() != "image" {
        bail!(
            "{}: expected the header \"image,mask(s)\", found {:?}",
            csv.display(),
            header
        );
    }
    let mut out = Vec::new();
    for (n, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let f = fields(line);
        if f.len() < 2 || f[0].is_empty() {
            bail!(
                "{} line {}: expected image,mask(s): {line:?}",
                csv.display(),
                n + 2
            );
        }
        out.push(Pair {
            image: base.join(f[0].trim()),
            masks: f[1]
                .split(';')
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .map(|m| base.join(m))
                .collect(),
        });
    }
    if out.is_empty() {
        bail!("{}: no rows", csv.display());
    }
    Ok(out)
}

/// The union of the ground-truth masks, checked to have the image's size.
pub fn load_gt(pair: &Pair, width: u32, height: u32) -> Result<Vec<u8>> {
    load_masks(&pair.masks, width, height)
}

/// The union of mask files (a pixel is foreground where any channel is over 127), each checked
/// to be `width x height`.
pub fn load_masks(masks: &[std::path::PathBuf], width: u32, height: u32) -> Result<Vec<u8>> {
    let mut gt = vec![0u8; width as usize * height as usize];
    for m in masks {
        let f = load_rgb(m).with_context(|| format!("ground truth {}", m.display()))?;
        if (f.width, f.height) != (width, height) {
            bail!(
                "ground truth {} is {}x{}, the image {width}x{height}",
                m.display(),
                f.width,
                f.height
            );
        }
        for (g, p) in gt.iter_mut().zip(f.pixels.chunks_exact(3)) {
            *g |= (p.iter().any(|&v| v > 127)) as u8;
        }
    }
    Ok(gt)
}

/// Per-image pixel size (and, where the CSV has it, the reference head circumference), as
/// HC18's `pixel_size_and_HC.csv`: `filename,pixel size(mm)[,head circumference (mm)]`,
/// keyed by the image's file name.
#[derive(Clone, Debug, Default)]
pub struct PixelSizes {
    rows: std::collections::HashMap<String, (f64, Option<f64>)>,
}

impl PixelSizes {
    pub fn read(csv: &Path) -> Result<Self> {
        let text = crate::bounded::read_text(csv, crate::bounded::TEXT_BYTES, "pixel sizes")?;
        let mut lines = text.lines();
        let header = fields(lines.next().unwrap_or_default());
        if header.len() < 2 || !header[1].to_ascii_lowercase().contains("pixel") {
            bail!(
                "{}: expected the header \"filename,pixel size(mm)[,head circumference (mm)]\", found {:?}",
                csv.display(),
                header
            );
        }
        let mut rows = std::collections::HashMap::new();
        for (n, line) in lines.enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let f = fields(line);
            let bad = || anyhow::anyhow!("{} line {}: {line:?}", csv.display(), n + 2);
            let mm: f64 = f
                .get(1)
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(bad)?;
            if !(mm.is_finite() && mm > 0.0 && mm < 100.0) {
                bail!(
                    "{} line {}: pixel size {mm} mm is not plausible",
                    csv.display(),
                    n + 2
                );
            }
            let hc = match f.get(2).map(|v| v.trim()).filter(|v| !v.is_empty()) {
                Some(v) => Some(v.parse::<f64>().map_err(|_| bad())?),
                None => None,
            };
            rows.insert(f[0].trim().to_string(), (mm, hc));
        }
        Ok(PixelSizes { rows })
    }

    /// (pixel size in mm, reference HC in mm) for an image file name.
    pub fn get(&self, file_name: &str) -> Option<(f64, Option<f64>)> {
        self.rows.get(file_name).copied()
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_and_pairs() {
        assert_eq!(fields(r#"a,"b,c",d"#), vec!["a", "b,c", "d"]);
        assert_eq!(fields(r#""x ""y""",z"#), vec!["x \"y\"", "z"]);
        let dir = std::env::temp_dir().join(format!("sonomask-pairs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let csv = dir.join("pairs.csv");
        std::fs::write(
            &csv,
            "image,mask(s)\nimages/a (1).png,masks/a_mask.png;masks/a_mask_1.png\nimages/n.png,\n",
        )
        .unwrap();
        let p = read_pairs(&csv).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].masks.len(), 2);
        assert_eq!(p[0].image, dir.join("images/a (1).png"));
        assert!(p[1].masks.is_empty());
        std::fs::write(&csv, "file,mask\nx,y\n").unwrap();
        assert!(read_pairs(&csv).unwrap_err().to_string().contains("header"));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn pixel_sizes_read_hc18_layout_and_refuse_nonsense() {
        let dir = std::env::temp_dir().join(format!("sonomask-px-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("px.csv");
        std::fs::write(
            &p,
            "filename,pixel size(mm),head circumference (mm)\n000_HC.png,0.069,44.3\nb.png,0.1,\n",
        )
        .unwrap();
        let t = PixelSizes::read(&p).unwrap();
        assert_eq!(t.get("000_HC.png"), Some((0.069, Some(44.3))));
        assert_eq!(t.get("b.png"), Some((0.1, None)));
        assert_eq!(t.get("c.png"), None);
        std::fs::write(&p, "filename,pixel size(mm)\na.png,-1\n").unwrap();
        assert!(
            PixelSizes::read(&p)
                .unwrap_err()
                .to_string()
                .contains("not plausible")
        );
        std::fs::write(&p, "image,mask\na.png,b.png\n").unwrap();
        assert!(
            PixelSizes::read(&p)
                .unwrap_err()
                .to_string()
                .contains("header")
        );
        std::fs::write(&p, "filename,pixel size(mm)\na.png,abc\n").unwrap();
        assert!(
            PixelSizes::read(&p)
                .unwrap_err()
                .to_string()
                .contains("line 2")
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
