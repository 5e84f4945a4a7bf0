//! Options and helpers shared by the subcommands.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

use super::args;
use super::flags::ModelArgs;
use crate::input::image_io::RgbFrame;
use crate::model::{Precision, Role, precision_table};
use crate::pipelines::segment::SamSession;
use crate::timing::Timings;

pub struct ModelOptions {
    pub models: PathBuf,
    pub precision: Precision,
    /// `--decoder-precision`, when it differs from `--precision`.
    pub decoder_precision: Option<Precision>,
    /// `--precision auto` (the default): other models (CLIP) pick their own precision too.
    pub precision_auto: bool,
    /// What `auto` picks per model (the measured table of `models`, read once).
    pub auto: precision_table::Auto,
    /// The decoder's precision is `auto`'s pick (see [`SamSession::decoder_auto`]).
    pub decoder_auto: bool,
}

impl ModelOptions {
    pub fn from_args(a: &ModelArgs) -> Result<Self> {
        let models = models_dir(a.models.as_deref());
        let threads: usize = args::parse_or("threads", a.threads.as_deref(), default_threads())?;
        set_threads(threads)?;
        let auto = precision_table::Auto::load(&models, threads);
        let precision_auto = a.precision.as_deref().unwrap_or("auto") == "auto";
        let precision = match a.precision.as_deref() {
            Some(p) if !precision_auto => Precision::parse(p)?,
            _ => auto.precision(Role::SamEncoder),
        };
        // `--decoder-precision`, and whether it is auto's pick.
        let (decoder_precision, decoder_auto) = match a.decoder_precision.as_deref() {
            Some("auto") => (Some(auto.precision(Role::SamDecoder)), true),
            Some(p) => (Some(Precision::parse(p)?), false),
            None if precision_auto => (Some(auto.precision(Role::SamDecoder)), true),
            None => (None, false),
        };
        Ok(ModelOptions {
            models,
            precision,
            decoder_precision,
            precision_auto,
            auto,
            decoder_auto,
        })
    }

    /// The decoder's precision: `--decoder-precision`, else `--precision`'s.
    pub fn decoder(&self) -> Precision {
        self.decoder_precision.unwrap_or(self.precision)
    }

    /// SAM with CLIP (the text-prompted pipelines), the SAM part as [`Self::load_session`].
    pub fn load_text_pipeline(
        &self,
        clip_precision: Precision,
        scorecam_batch: usize,
    ) -> Result<crate::pipelines::textseg::TextPipeline> {
        use crate::pipelines::textseg::{ClipParts, TextPipeline};
        let sam = self.load_session()?;
        let clip = ClipParts::load(&sam.manifest, &self.models, clip_precision, scorecam_batch)?;
        Ok(TextPipeline::with_clip(sam, clip))
    }

    pub fn load_session(&self) -> Result<SamSession> {
        let mut s = SamSession::load_mixed(&self.models, self.precision, self.decoder())?;
        s.decoder_auto = self.decoder_auto;
        Ok(s)
    }
}

/// `--models`, else SONOMASK_MODELS, else ./models.
pub fn models_dir(models: Option<&str>) -> PathBuf {
    models
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("SONOMASK_MODELS").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("models"))
}

/// Threads when `--threads` is not given: every core up to 4 with the `multithread-mm` feature
/// (the default build), else 1. Board profiles set their own.
pub fn default_threads() -> usize {
    if cfg!(feature = "multithread-mm") {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(4)
    } else {
        1
    }
}

/// tract's matmul thread pool (only with the `multithread-mm` feature).
pub fn set_threads(n: usize) -> Result<()> {
    if n == 0 {
        bail!("--threads must be at least 1");
    }
    #[cfg(feature = "multithread-mm")]
    if n > 1 {
        tract_linalg::multithread::set_default_executor(
            tract_linalg::multithread::Executor::multithread(n),
        );
    }
    #[cfg(not(feature = "multithread-mm"))]
    if n > 1 {
        log::warn!("built without the multithread-mm feature: running single-threaded");
    }
    Ok(())
}

pub fn save_gray(path: &Path, w: u32, h: u32, data: &[u8]) -> Result<()> {
    image::GrayImage::from_raw(w, h, data.to_vec())
        .context("mask buffer size")?
        .save(path)
        .with_context(|| format!("cannot write {}", path.display()))
}

pub fn save_rgb(path: &Path, f: &RgbFrame) -> Result<()> {
    image::RgbImage::from_raw(f.width, f.height, f.pixels.clone())
        .context("frame buffer size")?
        .save(path)
        .with_context(|| format!("cannot write {}", path.display()))
}

pub fn timings_json(t: &Timings) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for (name, ms) in &t.stages {
        let e = m.entry(name.to_string()).or_insert(serde_json::json!(0.0));
        *e = serde_json::json!(e.as_f64().unwrap_or(0.0) + ms);
    }
    serde_json::Value::Object(m)
}
