//! A minimal stderr logger for the binary (no extra crate).
//!
//! `SONOMASK_LOG=LEVEL[,TARGET=LEVEL]...`: a default level and per-target overrides, the longest
//! matching target prefix winning, as env_logger spells it (`warn,sonomask::health=info`). A
//! field engineer can then follow one stage (the device heartbeat, the sent-mask log) without
//! drowning it in every other debug line.

use log::{Level, LevelFilter, Log, Metadata, Record};
use std::sync::OnceLock;

/// The parsed `SONOMASK_LOG`: the default and the overrides.
#[derive(Clone, Debug, PartialEq)]
pub struct Filter {
    pub default: LevelFilter,
    pub targets: Vec<(String, LevelFilter)>,
}

impl Filter {
    /// Parses a spec; parts that do not parse are ignored (a typo must not silence errors).
    pub fn parse(spec: &str, default: LevelFilter) -> Filter {
        let mut f = Filter {
            default,
            targets: Vec::new(),
        };
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.split_once('=') {
                Some((t, l)) if !t.trim().is_empty() => {
                    if let Ok(l) = l.trim().parse() {
                        f.targets.push((t.trim().to_string(), l));
                    }
                }
                Some(_) => {}
                None => {
                    if let Ok(l) = part.parse() {
                        f.default = l;
                    }
                }
            }
        }
        f
    }

    /// The level in force for `target`.
    pub fn level(&self, target: &str) -> LevelFilter {
        self.targets
            .iter()
            .filter(|(t, _)| {
                target == t
                    || target
                        .strip_prefix(t.as_str())
                        .is_some_and(|r| r.starts_with("::"))
            })
            .max_by_key(|(t, _)| t.len())
            .map_or(self.default, |(_, l)| *l)
    }

    /// The most verbose level any target gets (the `log` crate's global gate).
    pub fn max(&self) -> LevelFilter {
        self.targets
            .iter()
            .map(|(_, l)| *l)
            .fold(self.default, |a, b| a.max(b))
    }
}

struct Stderr;

static FILTER: OnceLock<Filter> = OnceLock::new();

impl Log for Stderr {
    fn enabled(&self, m: &Metadata) -> bool {
        FILTER
            .get()
            .is_some_and(|f| m.level() <= f.level(m.target()))
    }
    fn log(&self, r: &Record) {
        if self.enabled(r.metadata()) {
            let tag = match r.level() {
                Level::Error => "error",
                Level::Warn => "warn",
                Level::Info => "info",
                Level::Debug => "debug",
                Level::Trace => "trace",
            };
            eprintln!("[{tag}] {}", r.args());
        }
    }
    fn flush(&self) {}
}

static LOGGER: Stderr = Stderr;

/// Install once; `default` applies unless SONOMASK_LOG says otherwise.
pub fn init(default: LevelFilter) {
    let filter = Filter::parse(&std::env::var("SONOMASK_LOG").unwrap_or_default(), default);
    let max = filter.max();
    if FILTER.set(filter).is_ok() && log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_and_target_overrides() {
        let f = Filter::parse(
            "warn,sonomask::health=info, sonomask::sent=debug",
            LevelFilter::Info,
        );
        assert_eq!(f.level("sonomask::cli::stream"), LevelFilter::Warn);
        assert_eq!(f.level("sonomask::health"), LevelFilter::Info);
        assert_eq!(f.level("sonomask::sent"), LevelFilter::Debug);
        // A prefix matches whole path segments only.
        assert_eq!(f.level("sonomask::sentinel"), LevelFilter::Warn);
        assert_eq!(f.max(), LevelFilter::Debug);
        // The longest prefix wins.
        let f = Filter::parse("sonomask=debug,sonomask::link=error", LevelFilter::Info);
        assert_eq!(f.level("sonomask::link::serial"), LevelFilter::Error);
        assert_eq!(f.level("sonomask::model"), LevelFilter::Debug);
        assert_eq!(f.level("tract_core"), LevelFilter::Info);
    }

    #[test]
    fn bad_parts_are_ignored() {
        let f = Filter::parse("loud,sonomask=,=debug,debug", LevelFilter::Warn);
        assert_eq!(f.default, LevelFilter::Debug);
        assert_eq!(f.level("sonomask::x"), LevelFilter::Debug);
        assert_eq!(
            Filter::parse("", LevelFilter::Warn).default,
            LevelFilter::Warn
        );
    }
}
