//! Interactive prompts (boxes and points) in original-image pixels, validated against the image,
//! and their encoding as SAM decoder inputs.
//!
//! Encoding follows the official SAM ONNX convention: a box is two corner points labelled 2 and 3;
//! a point is labelled 1 (foreground) or 0 (background); when no box is given, one padding point
//! (0,0) labelled -1 is appended, exactly as `SamPredictor` pads sparse prompts without a box.

use anyhow::{Result, bail};

use crate::preprocess::Geometry;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BoxPrompt {
    pub x0: f32,
    pub y0: f32,
    pub x1: f32,
    pub y1: f32,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PointPrompt {
    pub x: f32,
    pub y: f32,
    /// true: foreground (label 1); false: background (label 0).
    pub foreground: bool,
}

/// One decoder query: at most one box (SAM takes one box per mask) plus any number of points.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Prompt {
    pub bbox: Option<BoxPrompt>,
    pub points: Vec<PointPrompt>,
}

fn parse_floats<const N: usize>(s: &str, what: &str) -> Result<[f32; N]> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    if parts.len() != N {
        bail!("{what} '{s}': expected {N} comma-separated numbers");
    }
    let mut out = [0f32; N];
    for (o, p) in out.iter_mut().zip(&parts) {
        *o = p
            .parse::<f32>()
            .map_err(|_| anyhow::anyhow!("{what} '{s}': '{p}' is not a number"))?;
        if !o.is_finite() {
            bail!("{what} '{s}': '{p}' is not finite");
        }
    }
    Ok(out)
}

impl BoxPrompt {
    /// `x0,y0,x1,y1` in pixels of the original image.
    pub fn parse(s: &str) -> Result<Self> {
        let [x0, y0, x1, y1] = parse_floats::<4>(s, "box")?;
        Ok(BoxPrompt { x0, y0, x1, y1 })
    }

    /// Reject inverted or degenerate boxes and boxes that leave the image.
    pub fn validate(&self, width: u32, height: u32) -> Result<()> {
        let (w, h) = (width as f32, height as f32);
        if !(self.x0 < self.x1 && self.y0 < self.y1) {
            bail!("box {self}: inverted or empty (need x0 < x1 and y0 < y1)");
        }
        if self.x0 < 0.0 || self.y0 < 0.0 || self.x1 > w || self.y1 > h {
            bail!("box {self} lies outside the {width}x{height} image");
        }
        Ok(())
    }
}

impl std::fmt::Display for BoxPrompt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{},{},{},{}", self.x0, self.y0, self.x1, self.y1)
    }
}

impl PointPrompt {
    /// `x,y` (foreground) or `x,y,label` with label 1 = foreground, 0 = background.
    pub fn parse(s: &str) -> Result<Self> {
        let n = s.split(',').count();
        let (x, y, foreground) = match n {
            2 => {
                let [x, y] = parse_floats::<2>(s, "point")?;
                (x, y, true)
            }
            3 => {
                let [x, y, l] = parse_floats::<3>(s, "point")?;
                let fg = match l {
                    1.0 => true,
                    0.0 => false,
                    _ => bail!("point '{s}': label must be 1 (foreground) or 0 (background)"),
                };
                (x, y, fg)
            }
            _ => bail!("point '{s}': expected x,y or x,y,label"),
        };
        Ok(PointPrompt { x, y, foreground })
    }

    pub fn validate(&self, width: u32, height: u32) -> Result<()> {
        if self.x < 0.0 || self.y < 0.0 || self.x >= width as f32 || self.y >= height as f32 {
            bail!(
                "point {},{} lies outside the {width}x{height} image",
                self.x,
                self.y
            );
        }
        Ok(())
    }
}

impl Prompt {
    pub fn is_empty(&self) -> bool {
        self.bbox.is_none() && self.points.is_empty()
    }

    pub fn validate(&self, width: u32, height: u32) -> Result<()> {
        if self.is_empty() {
            bail!("no prompt: give a box or at least one point");
        }
        if let Some(b) = &self.bbox {
            b.validate(width, height)?;
        }
        self.points
            .iter()
            .try_for_each(|p| p.validate(width, height))
    }

    /// Number of sparse tokens the decoder sees (the `N` of `point_coords [1,N,2]`).
    pub fn num_tokens(&self) -> usize {
        self.points.len() + if self.bbox.is_some() { 2 } else { 1 }
    }

    /// Fill decoder inputs in the model frame: coordinates `[N*2]` and labels `[N]`.
    pub fn encode(&self, g: &Geometry, coords: &mut Vec<f32>, labels: &mut Vec<f32>) {
        coords.clear();
        labels.clear();
        for p in &self.points {
            let (x, y) = g.to_model(p.x, p.y);
            coords.extend([x, y]);
            labels.push(if p.foreground { 1.0 } else { 0.0 });
        }
        match &self.bbox {
            Some(b) => {
                let (x0, y0) = g.box_corner_to_model(b.x0, b.y0);
                let (x1, y1) = g.box_corner_to_model(b.x1, b.y1);
                coords.extend([x0, y0, x1, y1]);
                labels.extend([2.0, 3.0]);
            }
            None => {
                coords.extend([0.0, 0.0]);
                labels.push(-1.0);
            }
        }
    }

    /// Which of the 4 mask tokens answers this prompt: SAM's `multimask_output=False` (token 0)
    /// for a box or several points, the best predicted IoU of tokens 1..=3 for a single point
    /// (`multimask_output=True`, as SamPredictor recommends for ambiguous single clicks).
    pub fn pick_token(&self, iou: &[f32; 4]) -> usize {
        if self.bbox.is_none() && self.points.len() == 1 {
            (1..4)
                .max_by(|&a, &b| iou[a].total_cmp(&iou[b]))
                .unwrap_or(0)
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_validate() {
        let b = BoxPrompt::parse("10, 20,30,40").unwrap();
        assert_eq!(
            b,
            BoxPrompt {
                x0: 10.0,
                y0: 20.0,
                x1: 30.0,
                y1: 40.0
            }
        );
        assert!(b.validate(100, 100).is_ok());
        assert!(
            b.validate(25, 100)
                .unwrap_err()
                .to_string()
                .contains("outside")
        );
        assert!(
            BoxPrompt::parse("30,20,10,40")
                .unwrap()
                .validate(100, 100)
                .unwrap_err()
                .to_string()
                .contains("inverted")
        );
        assert!(BoxPrompt::parse("1,2,3").is_err());
        assert!(BoxPrompt::parse("1,2,3,x").is_err());
        assert!(BoxPrompt::parse("1,2,3,NaN").is_err());
        assert!(PointPrompt::parse("5,6").unwrap().foreground);
        assert!(!PointPrompt::parse("5,6,0").unwrap().foreground);
        assert!(PointPrompt::parse("5,6,2").is_err());
        assert!(
            PointPrompt::parse("500,6")
                .unwrap()
                .validate(100, 100)
                .is_err()
        );
        assert!(Prompt::default().validate(10, 10).is_err());
    }

    #[test]
    fn encode_box_and_points() {
        let g = Geometry::new(200, 100, 1024); // scale 5.12
        let mut p = Prompt {
            bbox: Some(BoxPrompt::parse("0,0,100,50").unwrap()),
            points: vec![],
        };
        let (mut c, mut l) = (vec![], vec![]);
        p.encode(&g, &mut c, &mut l);
        assert_eq!(l, vec![2.0, 3.0]);
        assert_eq!(c, vec![0.0, 0.0, 512.0, 256.0]);
        assert_eq!(p.num_tokens(), 2);
        p.bbox = None;
        p.points.push(PointPrompt {
            x: 10.0,
            y: 10.0,
            foreground: false,
        });
        p.encode(&g, &mut c, &mut l);
        assert_eq!(l, vec![0.0, -1.0]);
        assert_eq!(p.num_tokens(), 2);
        assert_eq!(p.pick_token(&[0.9, 0.1, 0.5, 0.3]), 2);
        p.points.push(PointPrompt {
            x: 1.0,
            y: 1.0,
            foreground: true,
        });
        assert_eq!(p.pick_token(&[0.1, 0.9, 0.5, 0.3]), 0);
    }
}
