//! `--precision auto` from a measured table. Whether int8 pays depends on the CPU (its int8
//! kernel: VNNI, AVX2, SDOT, none), the thread count and the model (the encoder's int8 runs on
//! own kernels, the decoder's mostly on tract's): a rule cannot know. `sonomask bench --table
//! --save` times every model in each precision on the machine and records the faster one per
//! model, keyed by CPU class and thread count, in `MODELS/precision_table.json`; `auto` picks
//! per model from it, and falls back to the rule ([`rule`]) on a CPU class the table has not
//! measured.

use anyhow::{Context, Result, anyhow};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{Precision, Role};

/// The table's file in a models directory.
pub const FILE: &str = "precision_table.json";

/// One measurement: which precision was faster for each model, on one CPU class and thread
/// count, with the medians it was decided on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub cpu_class: String,
    pub threads: usize,
    /// Unix seconds of the measurement.
    pub measured_at: u64,
    /// Role name -> "fp32" / "int8".
    pub faster: BTreeMap<String, String>,
    /// Role name -> precision -> median milliseconds.
    pub ms: BTreeMap<String, BTreeMap<String, f64>>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Table {
    entries: Vec<Entry>,
}

/// The CPU class a measurement holds for: architecture, sonomask's fp32 kernel family and its
/// int8 kernel (what decides the int8 / fp32 ratio on a given model).
pub fn cpu_class() -> String {
    format!(
        "{} {:?} {}",
        std::env::consts::ARCH,
        crate::simd::Kernel::best(),
        crate::simd::int8::I8Kernel::best().name()
    )
}

/// The rule for a CPU no table has measured: int8 where the own int8 kernel has a dot-product
/// instruction (SDOT, VNNI: [`crate::cpu::CpuFeatures::fast_int8`]), or where it is AVX2's and
/// the model's int8 file has 7-bit weights (one pass of `vpmaddubsw`: SAM encoder 0.73x, decoder
/// 0.77x fp32); elsewhere measured slower or no faster (docs/BENCHMARKS.md, issue 22).
pub fn rule(seven_bit_file: bool) -> Precision {
    let k = crate::simd::int8::I8Kernel::best();
    if crate::cpu::CpuFeatures::detect().fast_int8() || seven_bit_file && k.prefers_7bit_weights() {
        Precision::Int8
    } else {
        Precision::Fp32
    }
}

fn path(models: &Path) -> PathBuf {
    models.join(FILE)
}

/// The table's entries (none without a file); a file that is not such a table is an error
/// naming it.
pub fn load(models: &Path) -> Result<Vec<Entry>> {
    let p = path(models);
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(anyhow!("cannot read {}: {e}", p.display())),
    };
    let t: Table = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a precision table (delete it, or rerun `sonomask bench --table --save`)",
            p.display()
        )
    })?;
    for e in &t.entries {
        for (role, prec) in &e.faster {
            Precision::parse(prec).with_context(|| format!("{}: {role}", p.display()))?;
        }
    }
    Ok(t.entries)
}

/// Adds `e` to the table in `models`, replacing an entry of the same CPU class and threads.
pub fn save(models: &Path, e: Entry) -> Result<PathBuf> {
    let mut entries = load(models)?;
    entries.retain(|x| !(x.cpu_class == e.cpu_class && x.threads == e.threads));
    entries.push(e);
    let p = path(models);
    let text = serde_json::to_string_pretty(&Table { entries })? + "\n";
    std::fs::write(&p, text).with_context(|| format!("cannot write {}", p.display()))?;
    Ok(p)
}

/// Where an `auto` precision came from.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    /// The table's entry for this CPU class measured at these threads (the nearest count).
    Table { threads: usize },
    /// No entry for this CPU class, or none for the model: [`rule`].
    Rule,
}

impl Source {
    /// For a log line or `doctor`.
    pub fn describe(&self) -> String {
        match self {
            Source::Table { threads } => {
                format!("measured on this CPU class at {threads} thread(s), {FILE}")
            }
            Source::Rule => "no measurement for this CPU class: int8 only with a dot-product int8 kernel (SDOT, VNNI), or AVX2's with a 7-bit-weight file".into(),
        }
    }
}

/// `auto` for `role` on this CPU class at `threads`: the table's faster precision (from the
/// entry measured at the nearest thread count), else `rule` (see [`rule`]).
pub fn pick(
    entries: &[Entry],
    class: &str,
    threads: usize,
    role: Role,
    rule: Precision,
) -> (Precision, Source) {
    entries
        .iter()
        .filter(|e| e.cpu_class == class)
        .filter_map(|e| Some((e, Precision::parse(e.faster.get(role.as_str())?).ok()?)))
        .min_by_key(|(e, _)| (e.threads.abs_diff(threads), e.threads))
        .map_or((rule, Source::Rule), |(e, p)| {
            (p, Source::Table { threads: e.threads })
        })
}

/// `auto` on this CPU at a thread count, the table of a models directory read once.
pub struct Auto {
    entries: Vec<Entry>,
    class: String,
    threads: usize,
    /// The roles whose int8 file this process loads has 7-bit weights (for [`rule`]).
    seven_bit: Vec<Role>,
}

impl Auto {
    /// The table in `models` for this CPU at `threads`; a table that cannot be read is named in
    /// a warning and `auto` uses the rule (a precision is still chosen).
    pub fn load(models: &Path, threads: usize) -> Self {
        let entries = load(models).unwrap_or_else(|e| {
            log::warn!("{e:#}; --precision auto uses its rule");
            Vec::new()
        });
        // The manifest's small TOML read once more here (the session loads it on its own): a
        // manifest that cannot be read leaves the rule as for 8-bit files, and its loader says why.
        let seven_bit = super::Manifest::load(models)
            .map(|m| {
                let loads_7_bits = |r: Role| {
                    m.entry(r, Precision::Int8)
                        .is_ok_and(|e| e.weight_bits == 7)
                };
                Role::ALL.into_iter().filter(|&r| loads_7_bits(r)).collect()
            })
            .unwrap_or_default();
        Auto {
            entries,
            class: cpu_class(),
            threads,
            seven_bit,
        }
    }

    /// [`pick`] for `role`, logged with where it came from.
    pub fn pick(&self, role: Role) -> (Precision, Source) {
        let rule = rule(self.seven_bit.contains(&role));
        let (p, source) = pick(&self.entries, &self.class, self.threads, role, rule);
        log::info!(
            "--precision auto: {} {} ({})",
            role.as_str(),
            p.as_str(),
            source.describe()
        );
        (p, source)
    }

    /// The precision of [`Self::pick`].
    pub fn precision(&self, role: Role) -> Precision {
        self.pick(role).0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(class: &str, threads: usize, enc: &str) -> Entry {
        Entry {
            cpu_class: class.into(),
            threads,
            measured_at: 1,
            faster: [("sam_encoder".to_string(), enc.to_string())]
                .into_iter()
                .collect(),
            ms: BTreeMap::new(),
        }
    }

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sonomask-ptable-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn picks_the_measured_precision_of_this_class_at_the_nearest_threads() {
        let t = [
            entry("x86_64 Avx512 avx512vnni", 1, "int8"),
            entry("x86_64 Avx512 avx512vnni", 4, "fp32"),
            entry("aarch64 Neon neon-sdot", 2, "fp32"),
        ];
        let class = "x86_64 Avx512 avx512vnni";
        let p = |threads| pick(&t, class, threads, Role::SamEncoder, Precision::Fp32);
        assert_eq!(p(1), (Precision::Int8, Source::Table { threads: 1 }));
        assert_eq!(p(2), (Precision::Int8, Source::Table { threads: 1 }));
        assert_eq!(p(3), (Precision::Fp32, Source::Table { threads: 4 }));
        assert_eq!(p(8), (Precision::Fp32, Source::Table { threads: 4 }));
        // a model the entry did not measure, another CPU class: the rule
        for rule in [Precision::Fp32, Precision::Int8] {
            assert_eq!(
                pick(&t, class, 1, Role::ClipText, rule),
                (rule, Source::Rule)
            );
            assert_eq!(
                pick(&t, "x86_64 Avx2 avx2", 1, Role::SamEncoder, rule),
                (rule, Source::Rule)
            );
        }
    }

    #[test]
    fn save_replaces_the_same_class_and_threads_and_load_reads_it_back() {
        let d = scratch("save");
        assert!(load(&d).unwrap().is_empty(), "no file: no entries");
        save(&d, entry("a", 1, "int8")).unwrap();
        save(&d, entry("a", 2, "fp32")).unwrap();
        save(&d, entry("a", 1, "fp32")).unwrap();
        let got = load(&d).unwrap();
        assert_eq!(got, vec![entry("a", 2, "fp32"), entry("a", 1, "fp32")]);
    }

    #[test]
    fn a_broken_table_is_an_error_naming_it_and_auto_falls_back_to_the_rule() {
        let d = scratch("broken");
        std::fs::write(d.join(FILE), "{ not json").unwrap();
        let err = format!("{:#}", load(&d).unwrap_err());
        assert!(
            err.contains(FILE) && err.contains("not a precision table"),
            "{err}"
        );
        assert_eq!(
            Auto::load(&d, 1).pick(Role::SamEncoder),
            (rule(false), Source::Rule)
        );
        // a precision name that is not one
        std::fs::write(
            d.join(FILE),
            r#"{"entries":[{"cpu_class":"a","threads":1,"measured_at":1,"faster":{"sam_encoder":"int4"},"ms":{}}]}"#,
        )
        .unwrap();
        let err = format!("{:#}", load(&d).unwrap_err());
        assert!(err.contains("sam_encoder"), "{err}");
    }
}
