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

    /// Whether int8 is the precision to pick here for any int8 file without a measurement
    /// (AVX2 alone picks it for 7-bit-weight files: `precision_table::rule`): where sonomask's own
    /// int8 kernel has a dot-product instruction (aarch64 SDOT, AVX-512 VNNI, AVX-VNNI: four
    /// u8 x i8 multiply-adds per lane and instruction). Measured on an AVX-512 VNNI host, every
    /// int8 model then runs in 0.47-0.79x its fp32 time, and on that host's AVX2 + AVX-VNNI
    /// paths the SAM encoder in 0.64x; on AVX2 alone (8-bit weights split in two halves) the
    /// int8 encoder and decoder are slower than fp32, and NEON without SDOT does as many
    /// multiply-adds per cycle as fp32 (docs/BENCHMARKS.md, issue 22). Follows the int8 kernel
    /// actually chosen (`SONOMASK_INT8_KERNEL` included).
    pub fn fast_int8(&self) -> bool {
        crate::simd::int8::I8Kernel::best().has_dot_product()
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
