//! Text prompts to embeddings: on-device encoding with a bounded cache, prompt ensembles
//! (several descriptions averaged, then L2-normalised, as SaLIP and CLIP's zero-shot recipe do),
//! prompt files, and prompt banks (embeddings precomputed on a host into a small JSON file bound
//! to the text model's sha256, so a cart without the text model's time budget skips encoding).

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

use crate::model::ClipTextEncoder;
use crate::text::Tokenizer;

/// Cached embeddings kept at most (prompts are few; the bound keeps memory flat over days).
const CACHE_MAX: usize = 256;

/// L2-normalise in place; an all-zero vector is an error (it has no direction).
pub fn normalize(v: &mut [f32]) -> Result<()> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n.is_nan() || n <= 0.0 || !n.is_finite() {
        bail!("embedding has no direction (norm {n})");
    }
    v.iter_mut().for_each(|x| *x /= n);
    Ok(())
}

/// The tokenizer, the text model and a cache of normalised embeddings.
pub struct TextEncoder {
    pub tokenizer: Tokenizer,
    model: ClipTextEncoder,
    /// sha256 of the text model file: what a prompt bank must be bound to.
    pub model_sha256: String,
    cache: HashMap<String, Vec<f32>>,
}

impl TextEncoder {
    pub fn new(tokenizer: Tokenizer, model: ClipTextEncoder, model_sha256: String) -> Self {
        TextEncoder {
            tokenizer,
            model,
            model_sha256,
            cache: HashMap::new(),
        }
    }

    pub fn dim(&self) -> usize {
        self.model.dim
    }

    /// One text -> its L2-normalised embedding. Empty or whitespace-only text is refused; text
    /// longer than the context is truncated (as CLIP was trained) with a warning.
    pub fn embed(&mut self, text: &str) -> Result<Vec<f32>> {
        if let Some(e) = self.cache.get(text) {
            return Ok(e.clone());
        }
        let tokens = self.tokenizer.tokenize(text);
        if tokens.len <= 2 {
            bail!(
                "text prompt {:?} is empty after clean-up: give a description such as \"breast tumor\"",
                text
            );
        }
        if tokens.truncated {
            log::warn!(
                "text prompt is longer than {} tokens and was truncated (CLIP sees: {:?})",
                self.tokenizer.context_length,
                self.tokenizer.decode(
                    &tokens.ids[1..tokens.len - 1]
                        .iter()
                        .map(|&i| i as u32)
                        .collect::<Vec<_>>()
                )
            );
        }
        let mut e = self.model.run(&tokens.ids)?;
        normalize(&mut e).with_context(|| format!("text prompt {text:?}"))?;
        if self.cache.len() >= CACHE_MAX {
            self.cache.clear();
        }
        self.cache.insert(text.to_string(), e.clone());
        Ok(e)
    }

    /// A prompt ensemble: each text embedded and normalised, averaged, normalised again.
    pub fn embed_ensemble(&mut self, texts: &[String]) -> Result<Vec<f32>> {
        if texts.is_empty() {
            bail!("no text prompts given");
        }
        let mut acc = vec![0f32; self.dim()];
        for t in texts {
            let e = self.embed(t)?;
            acc.iter_mut().zip(&e).for_each(|(a, b)| *a += b);
        }
        normalize(&mut acc).context("the prompt ensemble's descriptions cancel out")?;
        Ok(acc)
    }
}

/// A prompt file: plain text (one description per line, `#` comments), a SaLIP-style JSON
/// object of description lists (`{"fetal_head": ["...", ...]}`), or a MedCLIP-SAMv2-style JSON
/// object of per-image descriptions (`{"000001.png": "..."}`).
#[derive(Clone, Debug, PartialEq)]
pub enum PromptFile {
    Lines(Vec<String>),
    Classes(Vec<(String, Vec<String>)>),
    PerImage(HashMap<String, String>),
}

impl PromptFile {
    pub fn load(path: &Path) -> Result<Self> {
        let raw = crate::bounded::read(path, crate::bounded::TEXT_BYTES, "prompt file")?;
        let text = String::from_utf8(raw).map_err(|e| {
            anyhow::anyhow!(
                "prompt file {} is not UTF-8 text (invalid byte at offset {}); save it as UTF-8",
                path.display(),
                e.utf8_error().valid_up_to()
            )
        })?;
        Self::parse(&text).with_context(|| format!("prompt file {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self> {
        let trimmed = text.trim_start_matches('\u{feff}').trim();
        if trimmed.starts_with('{') {
            let v: serde_json::Value = serde_json::from_str(trimmed).context("malformed JSON")?;
            let obj = v.as_object().context("expected a JSON object")?;
            if obj.is_empty() {
                bail!("the JSON object is empty");
            }
            if obj.values().all(|v| v.is_string()) {
                return Ok(PromptFile::PerImage(
                    obj.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect(),
                ));
            }
            let mut classes = Vec::new();
            for (k, v) in obj {
                let list = v.as_array().with_context(|| {
                    format!("\"{k}\": expected a list of descriptions or one string")
                })?;
                let texts: Vec<String> = list
                    .iter()
                    .map(|s| {
                        s.as_str()
                            .map(str::to_string)
                            .context("descriptions must be strings")
                    })
                    .collect::<Result<_>>()?;
                if texts.is_empty() {
                    bail!("\"{k}\" has no descriptions");
                }
                classes.push((k.clone(), texts));
            }
            return Ok(PromptFile::Classes(classes));
        }
        let lines: Vec<String> = trimmed
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_string)
            .collect();
        if lines.is_empty() {
            bail!("no descriptions in the file (one per line; '#' starts a comment)");
        }
        Ok(PromptFile::Lines(lines))
    }

    /// The descriptions to ensemble for one image: per-image files look up the image's file
    /// name; class files take `class` (or their only class).
    pub fn texts_for(&self, image_name: &str, class: Option<&str>) -> Result<Vec<String>> {
        match self {
            PromptFile::Lines(l) => Ok(l.clone()),
            PromptFile::PerImage(m) => {
                m.get(image_name).map(|t| vec![t.clone()]).with_context(|| {
                    format!(
                        "no description for image \"{image_name}\" in the per-image prompt file"
                    )
                })
            }
            PromptFile::Classes(c) => match class {
                Some(name) => c
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, t)| t.clone())
                    .with_context(|| {
                        format!(
                            "no class \"{name}\" in the prompt file (it has: {})",
                            c.iter()
                                .map(|(k, _)| k.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    }),
                None if c.len() == 1 => Ok(c[0].1.clone()),
                None => bail!(
                    "the prompt file has several classes ({}): pick one with --class",
                    c.iter()
                        .map(|(k, _)| k.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            },
        }
    }
}

/// Precomputed prompt embeddings, bound to one text model.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PromptBank {
    pub format: u32,
    /// The text model file the embeddings came from.
    pub text_model_sha256: String,
    pub embed_dim: usize,
    pub entries: Vec<BankEntry>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BankEntry {
    pub name: String,
    pub texts: Vec<String>,
    /// The ensemble embedding, L2-normalised.
    pub embedding: Vec<f32>,
}

impl PromptBank {
    pub fn build(enc: &mut TextEncoder, classes: &[(String, Vec<String>)]) -> Result<Self> {
        let mut entries = Vec::new();
        for (name, texts) in classes {
            entries.push(BankEntry {
                name: name.clone(),
                texts: texts.clone(),
                embedding: enc
                    .embed_ensemble(texts)
                    .with_context(|| format!("class \"{name}\""))?,
            });
        }
        Ok(PromptBank {
            format: 1,
            text_model_sha256: enc.model_sha256.clone(),
            embed_dim: enc.dim(),
            entries,
        })
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        std::fs::write(path, serde_json::to_string_pretty(self)?)
            .with_context(|| format!("cannot write prompt bank {}", path.display()))
    }

    /// Load and check against the text model in use: a bank from another model is refused
    /// (its embeddings live in another space and would select garbage silently).
    pub fn load(path: &Path, text_model_sha256: &str, embed_dim: usize) -> Result<Self> {
        let raw = crate::bounded::read_text(path, crate::bounded::TEXT_BYTES, "prompt bank")?;
        Self::from_text(&raw, path, text_model_sha256, embed_dim)
    }

    /// Parses and checks a bank's JSON; `path` names it in messages.
    pub fn from_text(
        raw: &str,
        path: &Path,
        text_model_sha256: &str,
        embed_dim: usize,
    ) -> Result<Self> {
        let b: PromptBank = serde_json::from_str(raw)
            .with_context(|| format!("malformed prompt bank {}", path.display()))?;
        if b.format != 1 {
            bail!(
                "prompt bank {}: format {} is not supported (this build reads 1)",
                path.display(),
                b.format
            );
        }
        if !b.text_model_sha256.eq_ignore_ascii_case(text_model_sha256) {
            bail!(
                "prompt bank {} was built with text model {}, but the models in use have {}: rebuild it with `sonomask prompt-bank`",
                path.display(),
                b.text_model_sha256,
                text_model_sha256
            );
        }
        for e in &b.entries {
            if e.embedding.len() != embed_dim || e.embedding.iter().any(|v| !v.is_finite()) {
                bail!(
                    "prompt bank {}: entry \"{}\" has {} values, expected {embed_dim} finite ones",
                    path.display(),
                    e.name,
                    e.embedding.len()
                );
            }
        }
        Ok(b)
    }

    pub fn get(&self, name: &str) -> Result<&BankEntry> {
        self.entries
            .iter()
            .find(|e| e.name == name)
            .with_context(|| {
                format!(
                    "no entry \"{name}\" in the prompt bank (it has: {})",
                    self.entries
                        .iter()
                        .map(|e| e.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_files_of_every_kind() {
        let l = PromptFile::parse("# comment\nbreast tumor\n\n a hypoechoic mass \n").unwrap();
        assert_eq!(
            l,
            PromptFile::Lines(vec!["breast tumor".into(), "a hypoechoic mass".into()])
        );
        let c = PromptFile::parse(r#"{"lungs": ["a", "b"], "heart": ["c"]}"#).unwrap();
        assert_eq!(
            c.texts_for("x.png", Some("heart")).unwrap(),
            vec!["c".to_string()]
        );
        assert!(
            c.texts_for("x.png", None)
                .unwrap_err()
                .to_string()
                .contains("--class")
        );
        let p = PromptFile::parse(r#"{"000001.png": "a mass"}"#).unwrap();
        assert_eq!(
            p.texts_for("000001.png", None).unwrap(),
            vec!["a mass".to_string()]
        );
        assert!(p.texts_for("2.png", None).is_err());
        assert!(PromptFile::parse("  \n# only a comment\n").is_err());
        assert!(PromptFile::parse("{\"a\": [1]}").is_err());
        assert!(PromptFile::parse("{\"a\": []}").is_err());
    }

    #[test]
    fn non_utf8_prompt_file_is_refused() {
        let p = std::env::temp_dir().join(format!("sonomask-prompt-{}.txt", std::process::id()));
        std::fs::write(&p, b"breast \xff tumor").unwrap();
        let e = PromptFile::load(&p).unwrap_err().to_string();
        assert!(e.contains("not UTF-8") && e.contains("offset 7"), "{e}");
        std::fs::remove_file(&p).ok();
    }

    #[test]
    fn bank_bound_to_its_model() {
        let b = PromptBank {
            format: 1,
            text_model_sha256: "ab".into(),
            embed_dim: 2,
            entries: vec![BankEntry {
                name: "x".into(),
                texts: vec!["t".into()],
                embedding: vec![0.6, 0.8],
            }],
        };
        let p = std::env::temp_dir().join(format!("sonomask-bank-{}.json", std::process::id()));
        b.save(&p).unwrap();
        assert_eq!(PromptBank::load(&p, "AB", 2).unwrap(), b);
        assert!(
            PromptBank::load(&p, "cd", 2)
                .unwrap_err()
                .to_string()
                .contains("rebuild")
        );
        assert!(PromptBank::load(&p, "ab", 3).is_err());
        std::fs::remove_file(&p).ok();
    }
}
