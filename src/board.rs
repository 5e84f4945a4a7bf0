//! Board profiles (`boards/<name>.toml`): what a board is (target, core, features, threads),
//! which model precision runs best on it, where frames come from and masks go, and the
//! pipeline defaults. Every field is documented in boards/README.md; unknown fields and
//! impossible combinations are errors that name the file and the field.

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::path::{Path, PathBuf};

use crate::link::Endpoint;
use crate::model::Precision;

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Board {
    pub name: String,
    pub description: String,
    /// Rust target triple the binary is built for.
    pub target: String,
    /// `-C target-cpu` for that build.
    pub target_cpu: String,
    /// CPU features the profile relies on (checked against the running CPU).
    pub features: Vec<String>,
    pub threads: usize,
    pub models: BoardModels,
    pub io: BoardIo,
    pub pipeline: BoardPipeline,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BoardModels {
    pub dir: PathBuf,
    pub sam_encoder: Precision,
    pub sam_decoder: Precision,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BoardIo {
    /// A frame source as `segment`/`stream` take it.
    pub source: String,
    /// A sink as `stream --sink` takes it.
    pub sink: String,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BoardPipeline {
    /// `interactive` (box/point prompts), `medclip-sam` or `salip` (text prompt `text`).
    pub mode: String,
    /// The text prompt of the text modes (the host may replace it with a Prompt).
    #[serde(default)]
    pub text: Option<String>,
    pub cine_threshold: f32,
    pub reencode_every: u32,
    pub queue: usize,
    /// The biometry sent with each mask (`hc`, `lesion`, `none`; docs/BIOMETRY.md). Absent: from
    /// the text prompt (a head gets HC, a lesion calipers), else none.
    #[serde(default)]
    pub measure: Option<String>,
    /// Pixel size in mm for the measurements (a video grabber carries none); overrides DICOM's.
    #[serde(default)]
    pub pixel_size_mm: Option<f64>,
}

const TARGETS: &[(&str, &str)] = &[
    ("aarch64-unknown-linux-gnu", "aarch64"),
    ("x86_64-unknown-linux-gnu", "x86_64"),
];
const AARCH64_FEATURES: &[&str] = &["neon", "dotprod", "fp16", "i8mm"];
const X86_FEATURES: &[&str] = &["sse4.1", "avx2", "fma", "avx512f", "avx512vnni", "avxvnni"];

impl Board {
    /// Loads `name` from `dir` (`boards/`), or a path to a .toml file.
    pub fn load(name_or_path: &str, dir: &Path) -> Result<Board> {
        let path = if name_or_path.ends_with(".toml") {
            PathBuf::from(name_or_path)
        } else {
            dir.join(format!("{name_or_path}.toml"))
        };
        let text = crate::bounded::read_text(&path, crate::bounded::TEXT_BYTES, "board file")
            .with_context(|| {
                let known = Self::available(dir).join(", ");
                format!(
                    "unknown board '{name_or_path}': cannot read {} (boards in {}: {known})",
                    path.display(),
                    dir.display()
                )
            })?;
        Self::parse(&text).with_context(|| format!("board file {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Board> {
        let b: Board = toml::from_str(text)?;
        b.validate()?;
        Ok(b)
    }

    /// Board names in `dir`.
    pub fn available(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter_map(|e| {
                        e.file_name()
                            .to_str()
                            .and_then(|n| n.strip_suffix(".toml"))
                            .map(str::to_string)
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    fn validate(&self) -> Result<()> {
        let Some((_, arch)) = TARGETS.iter().find(|(t, _)| *t == self.target) else {
            bail!(
                "target '{}' is not one sonomask builds for ({})",
                self.target,
                TARGETS.iter().map(|t| t.0).collect::<Vec<_>>().join(", ")
            );
        };
        let known = if *arch == "aarch64" {
            AARCH64_FEATURES
        } else {
            X86_FEATURES
        };
        for f in &self.features {
            if !known.contains(&f.as_str()) {
                bail!(
                    "feature '{f}' does not exist on {arch} (known: {})",
                    known.join(", ")
                );
            }
        }
        let x86_cpu = self.target_cpu.starts_with("x86-64")
            || matches!(
                self.target_cpu.as_str(),
                "native" | "haswell" | "skylake" | "alderlake" | "znver2" | "znver3" | "znver4"
            );
        if (*arch == "x86_64") != x86_cpu {
            bail!(
                "target_cpu '{}' does not match target {}",
                self.target_cpu,
                self.target
            );
        }
        if self.threads == 0 || self.threads > 256 {
            bail!("threads must be 1..256, not {}", self.threads);
        }
        let int8 = [
            ("sam_encoder", self.models.sam_encoder),
            ("sam_decoder", self.models.sam_decoder),
        ];
        // The features on which sonomask's own int8 kernel beats fp32 (docs/BENCHMARKS.md, issue
        // 22): a dot product (SDOT, VNNI), or AVX2 with the 7-bit-weight files the build writes.
        let pays = match *arch {
            "aarch64" => &["dotprod"][..],
            _ => &["avx512vnni", "avxvnni", "avx2"][..],
        };
        for (field, p) in int8 {
            if p == Precision::Int8 && !self.features.iter().any(|f| pays.contains(&f.as_str())) {
                bail!(
                    "models.{field} = \"int8\" on a core without {}: there sonomask's int8 is no faster than its fp32 (use fp32, or list the feature if the core has it)",
                    pays.iter()
                        .map(|f| format!("\"{f}\""))
                        .collect::<Vec<_>>()
                        .join(" or ")
                );
            }
        }
        Endpoint::parse(&self.io.sink, false).context("io.sink")?;
        if self.io.source.trim().is_empty() {
            bail!("io.source is empty");
        }
        match self.pipeline.mode.as_str() {
            "interactive" if self.pipeline.text.is_some() => {
                bail!("pipeline.text applies to the medclip-sam and salip modes, not interactive")
            }
            "interactive" => {}
            "medclip-sam" | "salip" => {
                if self
                    .pipeline
                    .text
                    .as_deref()
                    .is_none_or(|t| t.trim().is_empty())
                {
                    bail!(
                        "pipeline.mode '{}' needs pipeline.text (e.g. text = \"breast tumor\")",
                        self.pipeline.mode
                    );
                }
            }
            m => bail!("pipeline.mode '{m}' is not interactive, medclip-sam or salip"),
        }
        if !(0.0..=1.0).contains(&self.pipeline.cine_threshold) {
            bail!("pipeline.cine_threshold must be in 0..1");
        }
        if self.pipeline.queue == 0 {
            bail!("pipeline.queue must be at least 1");
        }
        if let Some(m) = &self.pipeline.measure {
            crate::output::measure::Target::parse(m)
                .map_err(|_| anyhow::anyhow!("pipeline.measure '{m}' is not hc, lesion or none"))?;
        }
        if let Some(mm) = self.pipeline.pixel_size_mm {
            crate::output::measure::parse_pixel_size(&mm.to_string()).map_err(|_| {
                anyhow::anyhow!("pipeline.pixel_size_mm {mm} is not a pixel size in mm")
            })?;
        }
        Ok(())
    }

    /// Declared features the running CPU lacks (empty on the right board).
    pub fn missing_features(&self, cpu: &crate::cpu::CpuFeatures) -> Vec<String> {
        if cpu.arch
            != TARGETS
                .iter()
                .find(|(t, _)| *t == self.target)
                .map(|t| t.1)
                .unwrap_or("")
        {
            return vec![format!(
                "this is {}, the board is {}",
                cpu.arch, self.target
            )];
        }
        self.features
            .iter()
            .filter(|f| !cpu.has(f))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boards_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("boards")
    }

    #[test]
    fn every_board_file_loads() {
        let names = Board::available(&boards_dir());
        for n in [
            "rpi4",
            "rpi5",
            "jetson-orin-nano",
            "jetson-nano",
            "x86-cart",
        ] {
            assert!(names.contains(&n.to_string()), "boards/{n}.toml missing");
        }
        for n in names {
            let b = Board::load(&n, &boards_dir()).unwrap_or_else(|e| panic!("{n}: {e:#}"));
            assert_eq!(b.name, n, "name field matches the file name");
        }
    }

    #[test]
    fn bad_board_files_are_refused_by_field() {
        let good = std::fs::read_to_string(boards_dir().join("rpi5.toml")).unwrap();
        let err = |from: &str, to: &str| -> String {
            assert!(good.contains(from), "{from}");
            format!("{:#}", Board::parse(&good.replace(from, to)).unwrap_err())
        };
        assert!(err("threads = 4", "threads = 4\nturbo = true").contains("unknown field `turbo`"));
        assert!(err("threads = 4", "threads = 0").contains("threads must be"));
        assert!(
            err(
                "features = [\"neon\", \"dotprod\", \"fp16\"]",
                "features = [\"neon\"]"
            )
            .contains("without \"dotprod\"")
        );
        assert!(
            err(
                "features = [\"neon\", \"dotprod\", \"fp16\"]",
                "features = [\"neon\", \"avx2\"]"
            )
            .contains("does not exist on aarch64")
        );
        assert!(err("sam_decoder = \"fp32\"", "sam_decoder = \"fp16\"").contains("fp16"));
        // On x86, int8 needs VNNI or AVX2 (the 7-bit-weight files): SSE4.1 alone is refused.
        let cart = std::fs::read_to_string(boards_dir().join("x86-cart.toml")).unwrap();
        let features = "features = [\"avx2\", \"fma\"]";
        assert!(cart.contains(features) && cart.contains("sam_encoder = \"int8\""));
        let sse = Board::parse(&cart.replace(features, "features = [\"sse4.1\"]"));
        let e = format!("{:#}", sse.unwrap_err());
        assert!(
            e.contains("models.sam_encoder") && e.contains("\"avx2\""),
            "{e}"
        );
        assert!(
            err("target_cpu = \"cortex-a76\"", "target_cpu = \"x86-64-v3\"")
                .contains("does not match")
        );
        assert!(
            err("aarch64-unknown-linux-gnu", "riscv64gc-unknown-linux-gnu")
                .contains("not one sonomask builds for")
        );
        assert!(err("serial:/dev/ttyGS0@921600", "serial:/dev/ttyGS0@fast").contains("io.sink"));
        assert!(err("mode = \"interactive\"", "mode = \"salip\"").contains("needs pipeline.text"));
        assert!(
            err(
                "mode = \"interactive\"",
                "mode = \"interactive\"\ntext = \"x\""
            )
            .contains("not interactive")
        );
        let text = good.replace(
            "mode = \"interactive\"",
            "mode = \"medclip-sam\"\ntext = \"breast tumor\"",
        );
        assert_eq!(
            Board::parse(&text).unwrap().pipeline.text.as_deref(),
            Some("breast tumor")
        );
        assert!(err("queue = 2", "queue = 0").contains("queue"));
        assert!(
            err("queue = 2", "queue = 2\nmeasure = \"bpd\"").contains("pipeline.measure 'bpd'")
        );
        assert!(err("queue = 2", "queue = 2\npixel_size_mm = -1.0").contains("pixel_size_mm"));
        let m = Board::parse(&good.replace(
            "queue = 2",
            "queue = 2\nmeasure = \"hc\"\npixel_size_mm = 0.1",
        ))
        .unwrap();
        assert_eq!(
            (m.pipeline.measure.as_deref(), m.pipeline.pixel_size_mm),
            (Some("hc"), Some(0.1))
        );
        assert!(Board::parse("name = ").is_err());
        let e = format!("{:#}", Board::load("rpi9", &boards_dir()).unwrap_err());
        assert!(
            e.contains("unknown board 'rpi9'") && e.contains("rpi5"),
            "{e}"
        );
    }
}
