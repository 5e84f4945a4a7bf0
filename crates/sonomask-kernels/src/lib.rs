//! CPU kernels with runtime-dispatched SIMD: AVX2+FMA (and AVX-512 where a kernel has a path
//! that pays) on x86-64, NEON on aarch64, and a scalar fallback that defines the result. Each kernel has all its paths reachable through
//! [`Kernel`] so tests can prove them equal on the machine they run on (x86 here, aarch64 under
//! qemu in CI for the NEON path).
//!
//! Pure slice kernels: nothing here knows of tensors, graphs or models. The kernel choice
//! ([`Kernel::best`]) is made once per process from [`Features::host`]; the operators in
//! `sonomask-ops` and the saliency code in `sonomask` call these with that choice.

// `dispatch!` runs its SIMD arguments in `unsafe` by design (see its doc).
#![allow(clippy::macro_metavars_in_unsafe)]

pub mod attention;
pub mod conv;
pub mod few_keys;
pub mod gelu;
pub mod int8;
pub mod layer_norm;
pub mod linear;
pub mod narrow;
pub mod pointwise;
pub mod ring;
pub mod saliency;
pub mod softmax;
pub mod transpose;

/// Seeded values in [-0.5, 0.5) for the kernels' and the operators' equality tests (public,
/// hidden, so sonomask-ops' tests draw the same sequence instead of a copy of this).
#[doc(hidden)]
pub fn test_values(seed: &mut u64, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (*seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

/// An implementation choice for the kernels below. `Avx2` means AVX2 *and* FMA: the x86
/// kernels are compiled with both (`#[target_feature(enable = "avx2,fma")]` or fused
/// multiply-adds in their twins), and CPUs and VMs with AVX2 but no FMA exist, where running
/// them is undefined behaviour (SIGILL at best). `Avx512` means AVX-512F on top of AVX2+FMA:
/// kernels with an AVX-512 path take it, every other kernel runs its AVX2+FMA path (see
/// [`Kernel::x86`]). Every dispatch goes through [`Kernel::usable`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    Scalar,
    Avx2,
    Avx512,
    Neon,
}

/// The CPU features the kernels depend on, read once per process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Features {
    pub avx2: bool,
    pub fma: bool,
    pub avx512f: bool,
    /// AVX-512 VNNI and AVX-VNNI (`vpdpbusd`), for the int8 kernels.
    pub avx512vnni: bool,
    pub avxvnni: bool,
    pub neon: bool,
    /// NEON SDOT (ARMv8.2 dot product), for the int8 kernels.
    pub dotprod: bool,
}

impl Features {
    /// This CPU's features (detected once; `is_*_feature_detected` also caches).
    pub fn host() -> Features {
        static HOST: std::sync::OnceLock<Features> = std::sync::OnceLock::new();
        *HOST.get_or_init(|| Features {
            #[cfg(target_arch = "x86_64")]
            avx2: std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            fma: std::arch::is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            avx512f: std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "x86_64")]
            avx512vnni: std::arch::is_x86_feature_detected!("avx512vnni"),
            #[cfg(target_arch = "x86_64")]
            avxvnni: std::arch::is_x86_feature_detected!("avxvnni"),
            #[cfg(target_arch = "aarch64")]
            neon: std::arch::is_aarch64_feature_detected!("neon"),
            #[cfg(target_arch = "aarch64")]
            dotprod: std::arch::is_aarch64_feature_detected!("dotprod"),
            ..Features::default()
        })
    }
}

impl Kernel {
    /// Whether a CPU with features `f` may run this kernel's paths.
    pub fn runs_on(self, f: Features) -> bool {
        match self {
            Kernel::Scalar => true,
            Kernel::Avx2 => cfg!(target_arch = "x86_64") && f.avx2 && f.fma,
            Kernel::Avx512 => cfg!(target_arch = "x86_64") && f.avx2 && f.fma && f.avx512f,
            Kernel::Neon => cfg!(target_arch = "aarch64") && f.neon,
        }
    }

    /// The x86 kernel whose AVX2+FMA paths this kernel runs: `Avx2` for both x86 kernels (a
    /// kernel without an AVX-512 path runs its AVX2 one on an AVX-512 CPU), `None` elsewhere.
    #[inline]
    pub fn x86(self) -> Option<Kernel> {
        matches!(self, Kernel::Avx2 | Kernel::Avx512).then_some(Kernel::Avx2)
    }

    /// The name `SONOMASK_KERNEL` and `doctor` use.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Scalar => "scalar",
            Kernel::Avx2 => "avx2",
            Kernel::Avx512 => "avx512",
            Kernel::Neon => "neon",
        }
    }

    /// Whether this CPU may run this kernel's paths: the check every unsafe dispatch makes.
    #[inline]
    pub fn usable(self) -> bool {
        self.runs_on(Features::host())
    }

    /// The fastest kernel a CPU with features `f` runs.
    pub fn best_on(f: Features) -> Kernel {
        [Kernel::Avx512, Kernel::Avx2, Kernel::Neon]
            .into_iter()
            .find(|k| k.runs_on(f))
            .unwrap_or(Kernel::Scalar)
    }

    /// The kernel this process uses: the fastest this CPU runs, or the one `SONOMASK_KERNEL`
    /// (scalar, avx2, avx512, neon) names when this CPU runs it, for measuring one path against
    /// another and for working around a fault on a field unit. Chosen once.
    pub fn best() -> Kernel {
        static CHOSEN: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *CHOSEN.get_or_init(|| {
            let named = |v: &str| {
                Kernel::ALL
                    .into_iter()
                    .find(|k| k.name() == v && k.usable())
            };
            pinned_or("SONOMASK_KERNEL", named, Kernel::best_on(Features::host()))
        })
    }

    /// Every kernel, in order of preference after scalar.
    pub const ALL: [Kernel; 4] = [Kernel::Scalar, Kernel::Avx2, Kernel::Avx512, Kernel::Neon];

    /// Every kernel this CPU can run (scalar first): what the equality tests iterate.
    pub fn available() -> Vec<Kernel> {
        Kernel::ALL.into_iter().filter(|k| k.usable()).collect()
    }
}

/// The kernel environment variable `var` names, when `named` accepts it (a kernel this CPU
/// runs), else `best`: how both kernel tables ([`Kernel`], [`int8::I8Kernel`]) are chosen.
pub(crate) fn pinned_or<K>(var: &str, named: impl Fn(&str) -> Option<K>, best: K) -> K {
    std::env::var(var)
        .ok()
        .and_then(|v| named(&v))
        .unwrap_or(best)
}

/// Runs the path for kernel `$k`: AVX2+FMA or NEON where asked for and usable, else scalar.
///
/// The AVX2 and NEON arguments run in an `unsafe` block: they are calls of `#[target_feature]`
/// functions, unsafe only for the CPU check this macro makes (hence the lint allowed for the
/// crate: clippy takes no allow on the macro itself).
#[macro_export]
macro_rules! dispatch {
    ($k:expr, $scalar:expr, $avx2:expr, $neon:expr) => {
        match $k {
            #[cfg(target_arch = "x86_64")]
            $crate::Kernel::Avx2 | $crate::Kernel::Avx512 if $crate::Kernel::Avx2.usable() => {
                // SAFETY: AVX2 and FMA presence checked just above.
                unsafe { $avx2 }
            }
            #[cfg(target_arch = "aarch64")]
            $crate::Kernel::Neon if $crate::Kernel::Neon.usable() => {
                // SAFETY: NEON presence checked just above.
                unsafe { $neon }
            }
            _ => $scalar,
        }
    };
}

/// Eight partial sums reduced in one fixed order, shared by every path of a kernel that keeps
/// eight lanes (AVX2 as one register, NEON as two, scalar as an array) so that they agree
/// bit for bit.
#[inline]
pub fn reduce8(l: &[f32; 8]) -> f32 {
    ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]))
}

/// Sum of absolute differences of two byte slices of equal length.
pub fn sad_u8(a: &[u8], b: &[u8]) -> u64 {
    sad_u8_with(Kernel::best(), a, b)
}

/// [`sad_u8`] with a chosen kernel; a kernel the CPU lacks falls back to scalar.
pub fn sad_u8_with(k: Kernel, a: &[u8], b: &[u8]) -> u64 {
    assert_eq!(a.len(), b.len(), "sad_u8 needs slices of equal length");
    match k {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 | Kernel::Avx512 if Kernel::Avx2.usable() => {
            // SAFETY: AVX2 presence checked just above.
            unsafe { sad_avx2(a, b) }
        }
        #[cfg(target_arch = "aarch64")]
        Kernel::Neon if Kernel::Neon.usable() => {
            // SAFETY: NEON presence checked just above.
            unsafe { sad_neon(a, b) }
        }
        _ => sad_scalar(a, b),
    }
}

fn sad_scalar(a: &[u8], b: &[u8]) -> u64 {
    a.iter().zip(b).map(|(&x, &y)| x.abs_diff(y) as u64).sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sad_avx2(a: &[u8], b: &[u8]) -> u64 {
    use std::arch::x86_64::*;
    let n = a.len() / 32 * 32;
    let mut acc = _mm256_setzero_si256();
    let mut i = 0;
    while i < n {
        // SAFETY: i + 32 <= n <= len; unaligned loads.
        let (va, vb) = unsafe {
            (
                _mm256_loadu_si256(a.as_ptr().add(i) as *const __m256i),
                _mm256_loadu_si256(b.as_ptr().add(i) as *const __m256i),
            )
        };
        // Four u64 partial sums of 8 absolute differences each.
        acc = _mm256_add_epi64(acc, _mm256_sad_epu8(va, vb));
        i += 32;
    }
    let mut lanes = [0u64; 4];
    // SAFETY: 32-byte store into a 32-byte array.
    unsafe { _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, acc) };
    lanes.iter().sum::<u64>() + sad_scalar(&a[n..], &b[n..])
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn sad_neon(a: &[u8], b: &[u8]) -> u64 {
    use std::arch::aarch64::*;
    let n = a.len() / 16 * 16;
    let mut acc = vdupq_n_u32(0);
    let mut i = 0;
    while i < n {
        // SAFETY: i + 16 <= n <= len.
        let (va, vb) = unsafe { (vld1q_u8(a.as_ptr().add(i)), vld1q_u8(b.as_ptr().add(i))) };
        // |a-b| per byte, pairwise-add to u16, accumulate pairwise into u32 (no overflow:
        // each u32 lane gains at most 4 * 255 per step).
        acc = vpadalq_u16(acc, vpaddlq_u8(vabdq_u8(va, vb)));
        i += 16;
    }
    vaddlvq_u32(acc) + sad_scalar(&a[n..], &b[n..])
}

/// Box-averaged luma (BT.601 integer weights) of an RGB8 image on a `side x side` grid, into
/// `out`; `sums` is scratch reused across calls (no allocation once sized).
pub fn luma_thumbnail(
    width: u32,
    height: u32,
    rgb: &[u8],
    side: usize,
    sums: &mut Vec<(u32, u32)>,
    out: &mut [u8],
) {
    assert_eq!(out.len(), side * side);
    sums.clear();
    sums.resize(side * side, (0, 0));
    let (w, h) = (width as usize, height as usize);
    for y in 0..h {
        let row = &rgb[y * w * 3..(y + 1) * w * 3];
        let cy = y * side / h;
        let cells = &mut sums[cy * side..(cy + 1) * side];
        for (x, p) in row.chunks_exact(3).enumerate() {
            let l = (77 * p[0] as u32 + 150 * p[1] as u32 + 29 * p[2] as u32) >> 8;
            let c = &mut cells[x * side / w];
            c.0 += l;
            c.1 += 1;
        }
    }
    for (o, &(s, n)) in out.iter_mut().zip(sums.iter()) {
        *o = (s + n / 2).checked_div(n).unwrap_or(0) as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn avx2_kernels_need_fma_too() {
        let avx2_only = Features {
            avx2: true,
            ..Features::default()
        };
        assert!(!Kernel::Avx2.runs_on(avx2_only));
        assert_eq!(Kernel::best_on(avx2_only), Kernel::Scalar);
        let both = Features {
            fma: true,
            ..avx2_only
        };
        assert_eq!(Kernel::Avx2.runs_on(both), cfg!(target_arch = "x86_64"));
        assert!(!Kernel::Neon.runs_on(both));
        assert!(Kernel::Scalar.runs_on(Features::default()));
        // AVX-512 needs AVX2 and FMA too (its kernels fall back to their AVX2 paths).
        let avx512_no_fma = Features {
            avx512f: true,
            ..avx2_only
        };
        assert!(!Kernel::Avx512.runs_on(avx512_no_fma));
        let all = Features {
            avx512f: true,
            ..both
        };
        assert_eq!(Kernel::Avx512.runs_on(all), cfg!(target_arch = "x86_64"));
        let want = if cfg!(target_arch = "x86_64") {
            Kernel::Avx512
        } else {
            Kernel::Scalar
        };
        assert_eq!(Kernel::best_on(all), want);
        assert_eq!(Kernel::Avx512.x86(), Some(Kernel::Avx2));
        assert_eq!(Kernel::Neon.x86(), None);
        assert_eq!(Kernel::best_on(Features::default()), Kernel::Scalar);
        // What this process picks, it may run.
        assert!(Kernel::best().usable());
        assert!(Kernel::available().iter().all(|k| k.usable()));
    }

    /// Every `#[target_feature]` function asks only for features the kernel tables check
    /// (AVX2, FMA, AVX-512F, NEON for `Kernel`; AVX-512 VNNI, AVX-VNNI and SDOT for
    /// `int8::I8Kernel`): a kernel that enabled, say, AVX-512 BW would run behind a check that
    /// does not cover it. The VNNI and SDOT features appear only in `int8.rs`, whose dispatch
    /// checks them (`I8Kernel::usable`).
    #[test]
    fn target_features_are_covered_by_the_kernel_check() {
        fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    walk(&p, out);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    out.push(p);
                }
            }
        }
        // Every crate of the workspace: the operators and the runtime call these kernels' twins.
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut files = Vec::new();
        walk(&root.join("src"), &mut files);
        walk(&root.join("crates"), &mut files);
        let mut sites = 0;
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            for (i, line) in text.lines().enumerate() {
                let Some(rest) = line.trim().strip_prefix("#[target_feature(enable = \"") else {
                    continue;
                };
                sites += 1;
                let feats = rest.split('"').next().unwrap();
                for feat in feats.split(',') {
                    let int8_only = ["avx512vnni", "avxvnni", "dotprod"].contains(&feat.trim());
                    assert!(
                        !int8_only || f.ends_with("int8.rs"),
                        "{}:{}: {feat} outside the int8 kernels",
                        f.display(),
                        i + 1
                    );
                    assert!(
                        ["avx2", "fma", "avx512f", "neon"].contains(&feat.trim()) || int8_only,
                        "{}:{}: enables {feat}, which Kernel::usable does not check",
                        f.display(),
                        i + 1
                    );
                }
            }
        }
        assert!(sites > 20, "found only {sites} target_feature sites");
    }

    #[test]
    fn every_sad_kernel_equals_scalar() {
        let mut state = 0x1234_5678_9abc_def0u64;
        let mut next = move || {
            state ^= state << 7;
            state ^= state >> 9;
            state as u8
        };
        for len in (0..200).chain([1000, 4096, 4097, 65536 + 13]) {
            let a: Vec<u8> = (0..len).map(|_| next()).collect();
            let b: Vec<u8> = (0..len).map(|_| next()).collect();
            let want = sad_scalar(&a, &b);
            for k in Kernel::available() {
                assert_eq!(sad_u8_with(k, &a, &b), want, "{k:?} len {len}");
            }
        }
        // Extremes: every byte 0 vs 255 (the largest per-lane sums).
        let (z, f) = (vec![0u8; 100_003], vec![255u8; 100_003]);
        for k in Kernel::available() {
            assert_eq!(sad_u8_with(k, &z, &f), 255 * 100_003);
        }
    }

    #[test]
    fn thumbnail_averages_blocks() {
        // 4x2 image: left half black, right half white -> 2x2 thumbnail [0, 255; 0, 255].
        let mut rgb = vec![0u8; 4 * 2 * 3];
        for y in 0..2 {
            for x in 2..4 {
                rgb[(y * 4 + x) * 3..(y * 4 + x) * 3 + 3].fill(255);
            }
        }
        let mut out = [0u8; 4];
        luma_thumbnail(4, 2, &rgb, 2, &mut Vec::new(), &mut out);
        assert_eq!(out, [0, 255, 0, 255]);
    }
}
