//! What this CPU offers, detected at run time (never from /proc/cpuinfo, which qemu-user fakes
//! with the host's), and what that means for precision and kernels.

use crate::simd::Kernel;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuFeatures {
    pub arch: &'static str,
    /// (name, present) in a stable order for printing.
    pub flags: Vec<(&'static str, bool)>,
}

impl CpuFeatures {
    pub fn detect() -> Self {
        CpuFeatures {
            arch: std::env::consts::ARCH,
            flags: detect_flags(),
        }
    }

    pub fn has(&self, name: &str) -> bool {
        self.flags.iter().any(|(n, p)| *n == name && *p)
    }

    /// Whether int8 is the precision to pick here: aarch64 with SDOT, where tract's int8
    /// kernels use the dot-product instruction. tract-linalg 0.23.9 also has AVX-512-VNNI and
    /// AVX-VNNI int8 kernels, but no VNNI machine was at hand to measure them, and on AVX2
    /// without VNNI its int8 encoder is many times slower than its fp32 (docs/BENCHMARKS.md), so x86
    /// stays fp32 until int8 is measured to pay there.
    pub fn fast_int8(&self) -> bool {
        self.has("dotprod")
    }

    /// The SIMD kernel family sonomask's own loops use.
    pub fn kernel(&self) -> Kernel {
        Kernel::best()
    }
}

/// The board's model string from the device tree (Pi, Jetson); None on a PC.
pub fn board_model() -> Option<String> {
    std::fs::read_to_string("/proc/device-tree/model")
        .map(|s| s.trim_end_matches('\0').trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
}

#[cfg(target_arch = "x86_64")]
fn detect_flags() -> Vec<(&'static str, bool)> {
    use std::arch::is_x86_feature_detected as d;
    vec![
        ("sse4.1", d!("sse4.1")),
        ("avx2", d!("avx2")),
        ("fma", d!("fma")),
        ("avx512f", d!("avx512f")),
        ("avx512vnni", d!("avx512vnni")),
        ("avxvnni", d!("avxvnni")),
    ]
}

#[cfg(target_arch = "aarch64")]
fn detect_flags() -> Vec<(&'static str, bool)> {
    use std::arch::is_aarch64_feature_detected as d;
    vec![
        ("neon", d!("neon")),
        ("dotprod", d!("dotprod")),
        ("fp16", d!("fp16")),
        ("i8mm", d!("i8mm")),
    ]
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn detect_flags() -> Vec<(&'static str, bool)> {
    Vec::new()
}
