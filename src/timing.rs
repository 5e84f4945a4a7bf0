//! Per-stage latency: every stage logs its time through `log` (target `sonomask::timing`) and
//! records it, so the CLI can print or emit them and benchmarks can compare stages.

use std::time::Instant;

#[derive(Clone, Debug, Default)]
pub struct Timings {
    pub stages: Vec<(&'static str, f64)>,
}

impl Timings {
    /// Run `f` as stage `name`, log and record its wall time in milliseconds.
    pub fn stage<T>(&mut self, name: &'static str, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let out = f();
        let ms = t.elapsed().as_secs_f64() * 1e3;
        log::info!(target: "sonomask::timing", "{name}: {ms:.1} ms");
        self.stages.push((name, ms));
        out
    }

    /// Records a stage timed elsewhere (a loop head, another thread).
    pub fn record(&mut self, name: &'static str, ms: f64) {
        log::info!(target: "sonomask::timing", "{name}: {ms:.1} ms");
        self.stages.push((name, ms));
    }

    pub fn total_ms(&self) -> f64 {
        self.stages.iter().map(|s| s.1).sum()
    }
}
