//! The int8 product of a quantized linear layer or 1x1 convolution: `C = ((A - za) . W) * s + b`
//! with activations `A` (`m x k`, u8, one zero point `za`), constant weights `W` (`k x n`, i8,
//! symmetric per output column) packed once at load, and the f32 output scaled per column
//! (`s[j]` = the activations' scale times column j's weight scale) plus a bias.
//!
//! Why its own kernel family: the integer multiply-adds are 4x (AVX-512 VNNI / AVX-VNNI
//! `vpdpbusd`, NEON `sdot`) or 2x (AVX2 `vpmaddubsw`) the lanes of an fp32 FMA, and the products
//! are exact, so every path can be proven equal to the scalar reference bit for bit.
//!
//! Layout: the weights are packed into panels of [`NR`] = 16 columns, each `k4 / 4` steps of
//! 16 columns x 4 consecutive k values (64 bytes, zero-padded past `k` and `n`): one `vpdpbusd`
//! on a 512-bit register, two on 256-bit ones, four `sdot` on NEON. A row's 4 activations of a
//! step are broadcast as one 32-bit value. `A`'s rows are read 4 bytes at a time up to `k4`
//! (`k` rounded up to 4): the bytes past `k` meet zero weights, so any value there is harmless.
//! AVX-512 VNNI runs up to four panels per 6-row tile (24 accumulators of its 32 registers), so
//! each broadcast feeds four `vpdpbusd`; the other paths one panel. The requantisation runs in
//! the path's own lanes (AVX-512, AVX2) or as the shared scalar code the compiler vectorises.
//!
//! Exactness per path:
//! - **scalar** (the reference): `sum a * w` in i32.
//! - **AVX-512 VNNI, AVX-VNNI**: `vpdpbusd` adds four u8 x i8 products to each i32 lane
//!   without intermediate rounding or saturation (the non-`s` form).
//! - **AVX2** (`vpmaddubsw` then `vpmaddwd` by ones): `vpmaddubsw` adds two u8 x i8 products
//!   into an i16 *with saturation*; `255 * 64 * 2 = 32640` fits, `255 * 127 * 2` does not. So
//!   the AVX2 path never sees a weight outside [-64, 64]: weights that fit are used as they are,
//!   wider ones are packed as two halves `w1 = w >> 1` (in [-64, 63]) and `w2 = w - w1` (in
//!   [-64, 64]) summed by two `vpmaddubsw` (twice the work, still exact). [`I8Weights::split`]
//!   says which.
//! - **NEON SDOT** (Pi 5, Orin): `sdot` is i8 x i8, so activations are taken as `a ^ 0x80`
//!   (`a - 128`, in i8) and `128 * colsum(W)` added back: exact in i32.
//! - **NEON without SDOT** (Pi 4, Jetson Nano): weights widened to i16, `smlal` by the
//!   activation as i16 into i32: exact.
//!
//! Then `C = raw - za * colsum(W)` (exact i32; `k * 255 * 128 < 2^31` for `k` up to
//! [`MAX_K`]), converted to f32 (round to nearest even on every path), multiplied by `s[j]` and
//! added to `b[j]`: the same IEEE operations on every path (no FMA), so the f32 outputs agree
//! bit for bit too.

use crate::Features;

/// Columns per packed panel.
pub const NR: usize = 16;
/// Most rows per register block.
pub const MR: usize = 6;
/// Longest reduction: `|raw| <= k * 255 * 128` and the zero-point term stay inside i32.
pub const MAX_K: usize = 1 << 15;

/// The int8 kernel this CPU runs, chosen once per process (see [`I8Kernel::best`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum I8Kernel {
    Scalar,
    /// AVX2 `vpmaddubsw` + `vpmaddwd` (weights within 7 bits, or split in two).
    Avx2,
    /// AVX-VNNI `vpdpbusd` on 256-bit registers (Alder Lake and later, Zen 5).
    AvxVnni,
    /// AVX-512 VNNI `vpdpbusd` on 512-bit registers (Cascade Lake and later, Zen 4).
    Avx512Vnni,
    /// NEON `smlal` on weights widened to i16 (Cortex-A72: Pi 4; Jetson Nano's A57).
    Neon,
    /// NEON `sdot` (Cortex-A76: Pi 5; Orin's A78AE).
    NeonDot,
}

impl I8Kernel {
    /// Every int8 kernel, scalar first, then in order of preference within an architecture.
    pub const ALL: [I8Kernel; 6] = [
        I8Kernel::Scalar,
        I8Kernel::Avx512Vnni,
        I8Kernel::AvxVnni,
        I8Kernel::Avx2,
        I8Kernel::NeonDot,
        I8Kernel::Neon,
    ];

    /// Whether a CPU with features `f` may run this kernel.
    pub fn runs_on(self, f: Features) -> bool {
        let x86 = cfg!(target_arch = "x86_64");
        let arm = cfg!(target_arch = "aarch64");
        match self {
            I8Kernel::Scalar => true,
            I8Kernel::Avx2 => x86 && f.avx2,
            I8Kernel::AvxVnni => x86 && f.avx2 && f.avxvnni,
            I8Kernel::Avx512Vnni => x86 && f.avx512f && f.avx512vnni,
            I8Kernel::Neon => arm && f.neon,
            I8Kernel::NeonDot => arm && f.neon && f.dotprod,
        }
    }

    /// Whether this CPU may run it: the check every dispatch makes.
    #[inline]
    pub fn usable(self) -> bool {
        self.runs_on(Features::host())
    }

    /// The name `SONOMASK_INT8_KERNEL` and `doctor` use.
    pub fn name(self) -> &'static str {
        match self {
            I8Kernel::Scalar => "scalar",
            I8Kernel::Avx2 => "avx2",
            I8Kernel::AvxVnni => "avxvnni",
            I8Kernel::Avx512Vnni => "avx512vnni",
            I8Kernel::Neon => "neon",
            I8Kernel::NeonDot => "neon-sdot",
        }
    }

    /// Whether it multiplies with a dot-product instruction (four u8 x i8 or i8 x i8
    /// multiply-adds per lane and instruction: SDOT, VNNI), the kernels that make int8 pay
    /// against fp32 (docs/BENCHMARKS.md, issue 22).
    pub fn has_dot_product(self) -> bool {
        matches!(
            self,
            I8Kernel::NeonDot | I8Kernel::Avx512Vnni | I8Kernel::AvxVnni
        )
    }

    /// Whether a model's weights in 7 bits ([-64, 64]) run faster here than in 8: AVX2's
    /// `vpmaddubsw` takes 8-bit weights only split into two passes (see the module doc); every
    /// other kernel takes either width in one.
    pub fn prefers_7bit_weights(self) -> bool {
        self == I8Kernel::Avx2
    }

    /// The fastest int8 kernel a CPU with features `f` runs.
    pub fn best_on(f: Features) -> I8Kernel {
        I8Kernel::ALL[1..]
            .iter()
            .copied()
            .find(|k| k.runs_on(f))
            .unwrap_or(I8Kernel::Scalar)
    }

    /// The int8 kernel of this process: the fastest this CPU runs, or the one
    /// `SONOMASK_INT8_KERNEL` names when this CPU runs it. Chosen once.
    pub fn best() -> I8Kernel {
        static CHOSEN: std::sync::OnceLock<I8Kernel> = std::sync::OnceLock::new();
        *CHOSEN.get_or_init(|| {
            let named = |v: &str| {
                I8Kernel::ALL
                    .into_iter()
                    .find(|k| k.name() == v && k.usable())
            };
            crate::pinned_or(
                "SONOMASK_INT8_KERNEL",
                named,
                I8Kernel::best_on(Features::host()),
            )
        })
    }

    /// Every int8 kernel this CPU runs (scalar first): what the equality tests iterate.
    pub fn available() -> Vec<I8Kernel> {
        I8Kernel::ALL.into_iter().filter(|k| k.usable()).collect()
    }
}

/// The symmetric range of int8 weights a plan quantizes to: 8 bits ([-127, 127]), or 7
/// ([-64, 64], onnxruntime's `reduce_range`: what AVX2's `vpmaddubsw` takes in one pass).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightBits {
    Eight,
    Seven,
}

impl WeightBits {
    /// The largest magnitude: the scale is `max |w| / max()`.
    pub fn max(self) -> f32 {
        match self {
            WeightBits::Eight => 127.0,
            WeightBits::Seven => 64.0,
        }
    }
}

/// Weights `k x n` packed for one kernel, with their column sums.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct I8Weights {
    kernel: I8Kernel,
    k: usize,
    n: usize,
    k4: usize,
    /// Panel-major: panel `p`, step `q`, column `j` of the panel, then 4 k values.
    panels: Vec<i8>,
    /// The AVX2 path's second half of weights wider than 7 bits (`panels` then holds the first).
    second: Option<Vec<i8>>,
    /// Column sums of W, padded to whole panels with 0.
    colsum: Vec<i32>,
    /// Every weight is in [-64, 64] (see [`I8Weights::within_7_bits`]).
    within_7_bits: bool,
}

impl I8Weights {
    /// Packs `w` (element `(p, j)` at `w[p * rs + j * cs]`) for `kernel`. Panics on a `k` of 0
    /// or over [`MAX_K`] or a `w` too short: a caller checks shapes at load.
    pub fn pack(kernel: I8Kernel, w: &[i8], k: usize, n: usize, (rs, cs): (usize, usize)) -> Self {
        assert!((1..=MAX_K).contains(&k) && n > 0, "int8 weights {k} x {n}");
        assert!(
            w.len() > (k - 1) * rs + (n - 1) * cs,
            "int8 weights: {} values for {k} x {n}",
            w.len()
        );
        let k4 = k.next_multiple_of(4);
        let panels = n.div_ceil(NR);
        let at = |p: usize, j: usize| {
            if p < k && j < n {
                w[p * rs + j * cs]
            } else {
                0
            }
        };
        let within_7_bits = !w_wider_than_7_bits(k, n, &at);
        let split = kernel == I8Kernel::Avx2 && !within_7_bits;
        let mut first = vec![0i8; panels * k4 * NR];
        let mut second = split.then(|| vec![0i8; panels * k4 * NR]);
        let mut colsum = vec![0i32; panels * NR];
        for pn in 0..panels {
            for q in 0..k4 / 4 {
                for c in 0..NR {
                    for t in 0..4 {
                        let v = at(4 * q + t, pn * NR + c);
                        let i = ((pn * (k4 / 4) + q) * NR + c) * 4 + t;
                        colsum[pn * NR + c] += v as i32;
                        match &mut second {
                            Some(s) => {
                                let lo = v >> 1;
                                first[i] = lo;
                                s[i] = v - lo;
                            }
                            None => first[i] = v,
                        }
                    }
                }
            }
        }
        I8Weights {
            kernel,
            k,
            n,
            k4,
            panels: first,
            second,
            colsum,
            within_7_bits,
        }
    }

    /// Whether every weight is in [-64, 64], the range AVX2's one-pass product takes: how a
    /// plan tells a 7-bit-weight model (and quantizes its own int8 weights to match).
    pub fn within_7_bits(&self) -> bool {
        self.within_7_bits
    }

    /// Whether the weights were split into two 7-bit halves (AVX2 with weights beyond [-64, 64]).
    pub fn split(&self) -> bool {
        self.second.is_some()
    }

    /// The kernel the weights were packed for.
    pub fn kernel(&self) -> I8Kernel {
        self.kernel
    }

    /// Bytes each activation row must have readable from its start: `k` rounded up to 4.
    pub fn row_len(&self) -> usize {
        self.k4
    }
}

fn w_wider_than_7_bits(k: usize, n: usize, at: &impl Fn(usize, usize) -> i8) -> bool {
    (0..k).any(|p| (0..n).any(|j| !(-64..=64).contains(&at(p, j))))
}

/// What turns the i32 sums into the f32 output.
#[derive(Debug, Clone, Copy)]
pub struct Requant<'a> {
    /// The activations' zero point.
    pub a_zero: u8,
    /// Per output column: the activations' scale times the column's weight scale.
    pub scale: &'a [f32],
    /// Per output column.
    pub bias: &'a [f32],
    /// The output's own quantisation, when the model rounds it to u8 and back (a QOperator
    /// graph's `QLinearMatMul` then `DequantizeLinear`): each value becomes
    /// `(clamp(round_ties_even(v * inv_scale) + zero, 0, 255) - zero) * scale`.
    pub out_q: Option<OutQuant>,
    /// Per output column, added last (after the output quantisation): the bias `Add` that
    /// follows a `DequantizeLinear` in a QOperator graph, in the same float operation.
    pub post_bias: Option<&'a [f32]>,
}

/// An output quantisation (see [`Requant::out_q`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutQuant {
    pub inv_scale: f32,
    pub zero: u8,
    pub scale: f32,
}

impl OutQuant {
    /// `v` rounded to the output's u8 grid and back: float operations only (the value after
    /// the clamp is a whole number), so the compiler vectorises it with the path's rounding
    /// instruction.
    #[inline(always)]
    fn apply(&self, v: f32) -> f32 {
        let z = self.zero as f32;
        (((v * self.inv_scale).round_ties_even() + z).clamp(0.0, 255.0) - z) * self.scale
    }
}

/// `C[i][j] = ((sum_p (A[i][p] - za) W[p][j]) as f32) * scale[j] + bias[j]` for `m` rows:
/// row `i` of A at `a[i * lda..]` (readable to [`I8Weights::row_len`]), of C at `c[i * ldc..]`
/// (`n` values). Runs the kernel the weights were packed for when this CPU runs it, else the
/// scalar reference (same result).
pub fn multiply(
    a: &[u8],
    lda: usize,
    m: usize,
    w: &I8Weights,
    rq: &Requant,
    c: &mut [f32],
    ldc: usize,
) {
    let (k4, n) = (w.k4, w.n);
    if m == 0 {
        return;
    }
    assert!(
        a.len() >= (m - 1) * lda + k4 && lda >= w.k,
        "int8 product: A of {} bytes for {m} rows of {k4} (stride {lda})",
        a.len()
    );
    assert!(
        c.len() >= (m - 1) * ldc + n && ldc >= n,
        "int8 product: C of {} values for {m} x {n} (stride {ldc})",
        c.len()
    );
    assert!(
        rq.scale.len() >= n && rq.bias.len() >= n,
        "int8 product: {} scales, {} biases for {n} columns",
        rq.scale.len(),
        rq.bias.len()
    );
    assert!(
        rq.post_bias.is_none_or(|p| p.len() >= n),
        "int8 product: a post bias shorter than {n} columns"
    );
    let kern = if w.kernel.usable() {
        w.kernel
    } else {
        I8Kernel::Scalar
    };
    let panels = n.div_ceil(NR);
    for i0 in (0..m).step_by(MR) {
        let rows = MR.min(m - i0);
        let mut pn = 0;
        while pn < panels {
            let t = Tile {
                a: &a[i0 * lda..],
                lda,
                rows,
                w,
                pn,
                cols: NR.min(n - pn * NR),
            };
            let mut out = Out {
                c: &mut c[i0 * ldc..],
                ldc,
                rq,
            };
            // Panels this step takes (AVX-512 VNNI runs up to four at once).
            let took = match kern {
                // SAFETY (each SIMD arm): the kernel's features were checked (`usable`), and
                // the tile's rows and panels lie inside A and W (asserted above).
                #[cfg(target_arch = "x86_64")]
                I8Kernel::Avx512Vnni => {
                    let took = match panels - pn {
                        4.. => 4,
                        2 | 3 => 2,
                        _ => 1,
                    };
                    unsafe { tile_avx512vnni(&t, took, &mut out) };
                    took
                }
                #[cfg(target_arch = "x86_64")]
                I8Kernel::AvxVnni => {
                    unsafe { tile_avxvnni(&t, &mut out) };
                    1
                }
                #[cfg(target_arch = "x86_64")]
                I8Kernel::Avx2 => {
                    unsafe { tile_avx2(&t, &mut out) };
                    1
                }
                #[cfg(target_arch = "aarch64")]
                I8Kernel::NeonDot => {
                    unsafe { tile_neon_dot(&t, &mut out) };
                    1
                }
                #[cfg(target_arch = "aarch64")]
                I8Kernel::Neon => {
                    unsafe { tile_neon(&t, &mut out) };
                    1
                }
                _ => {
                    tile_scalar(&t, &mut out);
                    1
                }
            };
            pn += took;
        }
    }
}

/// Activations quantized to u8: `clamp(round_ties_even(x * inv_scale) + zero, 0, 255)`, as
/// tract's `QuantizeLinearU8` (which holds `inv_scale`, the reciprocal of the ONNX scale) and
/// onnxruntime's `QuantizeLinear` round. A NaN becomes `zero` (no panic, no UB on any input).
pub fn quantize_u8(x: &[f32], inv_scale: f32, zero: u8, out: &mut [u8]) {
    quantize_u8_with(crate::Kernel::best(), x, inv_scale, zero, out)
}

/// [`quantize_u8`] on a chosen kernel (the same scalar body compiled for AVX2 or NEON, where
/// the rounding is one vector instruction instead of a libm call; equal by test).
pub fn quantize_u8_with(kernel: crate::Kernel, x: &[f32], inv: f32, zero: u8, out: &mut [u8]) {
    assert_eq!(
        x.len(),
        out.len(),
        "quantize_u8: {} values into {}",
        x.len(),
        out.len()
    );
    #[cfg(target_arch = "x86_64")]
    if kernel == crate::Kernel::Avx512 && kernel.usable() {
        // SAFETY: AVX-512F checked just above.
        return unsafe { quantize_avx512(x, inv, zero, out) };
    }
    crate::dispatch!(
        kernel,
        quantize_body(x, inv, zero, out),
        quantize_avx2(x, inv, zero, out),
        quantize_neon(x, inv, zero, out)
    )
}

/// [`quantize_u8_with`] of the transpose: `out[r * ldo + p] = q(x[p * ldx + r])` for `r < rows`,
/// `p < k`. For channels-first activations (`k x m`, a row per channel, as SAM's decoder keeps
/// its image tokens and the MBConv's int8 projection its depthwise output): quantized straight
/// into the row-major rows the product reads, instead of a transposed f32 copy first. On AVX2,
/// tiles of 16 channels x 16 rows: each channel's 16 values quantized as [`quantize_u8_with`]
/// does (the same operations, bit for bit), the 16 x 16 bytes transposed in registers; the
/// edges, and the other paths, quantize each channel's run into a small buffer and move its
/// bytes.
pub fn quantize_u8_transposed(
    kernel: crate::Kernel,
    x: &[f32],
    ldx: usize,
    (rows, k): (usize, usize),
    (inv, zero): (f32, u8),
    out: &mut [u8],
    ldo: usize,
) {
    if rows == 0 || k == 0 {
        return;
    }
    assert!(
        x.len() >= (k - 1) * ldx + rows && ldx >= rows,
        "quantize_u8_transposed: x of {} values for {k} channels of {rows} (stride {ldx})",
        x.len()
    );
    assert!(
        out.len() >= (rows - 1) * ldo + k && ldo >= k,
        "quantize_u8_transposed: out of {} bytes for {rows} rows of {k} (stride {ldo})",
        out.len()
    );
    let q = (inv, zero);
    #[cfg(target_arch = "x86_64")]
    if matches!(kernel, crate::Kernel::Avx2 | crate::Kernel::Avx512) && crate::Kernel::Avx2.usable()
    {
        let (r16, k16) = (rows / 16 * 16, k / 16 * 16);
        for r0 in (0..r16).step_by(16) {
            for p0 in (0..k16).step_by(16) {
                // SAFETY: AVX2 checked above; channels p0..p0 + 16 of rows r0..r0 + 16 lie in
                // x and their bytes in out (the asserts above, r0 + 16 <= rows, p0 + 16 <= k).
                unsafe {
                    transposed_tile_avx2(
                        &x[p0 * ldx + r0..],
                        ldx,
                        q,
                        &mut out[r0 * ldo + p0..],
                        ldo,
                    )
                };
            }
        }
        transposed_runs(kernel, x, ldx, (0..r16, k16..k), q, out, ldo);
        transposed_runs(kernel, x, ldx, (r16..rows, 0..k), q, out, ldo);
        return;
    }
    transposed_runs(kernel, x, ldx, (0..rows, 0..k), q, out, ldo);
}

/// [`quantize_u8_transposed`] of rows `rs`, channels `ps`: eight channels' runs at a time
/// quantized into a buffer, then their bytes moved.
fn transposed_runs(
    kernel: crate::Kernel,
    x: &[f32],
    ldx: usize,
    (rs, ps): (std::ops::Range<usize>, std::ops::Range<usize>),
    (inv, zero): (f32, u8),
    out: &mut [u8],
    ldo: usize,
) {
    /// Rows per pass: eight channels' runs of this many bytes stay in L1 beside the output.
    const RB: usize = 64;
    let mut buf = [[0u8; RB]; 8];
    for r0 in rs.clone().step_by(RB) {
        let rr = RB.min(rs.end - r0);
        for p0 in ps.clone().step_by(8) {
            let pc = 8.min(ps.end - p0);
            for (i, b) in buf.iter_mut().enumerate().take(pc) {
                let src = &x[(p0 + i) * ldx + r0..][..rr];
                quantize_u8_with(kernel, src, inv, zero, &mut b[..rr]);
            }
            for r in 0..rr {
                let dst = &mut out[(r0 + r) * ldo + p0..][..pc];
                for (i, d) in dst.iter_mut().enumerate() {
                    *d = buf[i][r];
                }
            }
        }
    }
}

/// One 16 x 16 tile of [`quantize_u8_transposed`]: channel `i`'s 16 values at `x[i * ldx..]`
/// quantized (as [`quantize_avx2`]) into register `i`, then the bytes transposed by four rounds
/// of unpacks (bytes, words, double words, quad words: after round `n` a register holds `2^n`
/// channels of `16 / 2^n` rows), row `r`'s 16 bytes stored at `out[r * ldo..]`.
///
/// # Safety
/// AVX2 present; `x` holds 16 channels of 16 values `ldx` apart, `out` 16 rows of 16 bytes
/// `ldo` apart.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn transposed_tile_avx2(
    x: &[f32],
    ldx: usize,
    (inv, zero): (f32, u8),
    out: &mut [u8],
    ldo: usize,
) {
    use std::arch::x86_64::*;
    debug_assert!(x.len() >= 15 * ldx + 16 && out.len() >= 15 * ldo + 16);
    let q = Quant8::new(inv, zero);
    let r: [__m128i; 16] = std::array::from_fn(|i| {
        // SAFETY: values i * ldx .. i * ldx + 16 lie in x (caller's contract).
        let (a, b) = unsafe {
            let p = x.as_ptr().add(i * ldx);
            (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)))
        };
        _mm_packus_epi16(q.words(a), q.words(b))
    });
    // a[g][c]: rows 8g.., channel pair c (words); b: rows 4g.., channel quad (dwords);
    // c: rows 2g.., channel octet (quad words); d[row]: 16 channels.
    let a: [[__m128i; 8]; 2] = [
        std::array::from_fn(|c| _mm_unpacklo_epi8(r[2 * c], r[2 * c + 1])),
        std::array::from_fn(|c| _mm_unpackhi_epi8(r[2 * c], r[2 * c + 1])),
    ];
    let b: [[__m128i; 4]; 4] = std::array::from_fn(|g| {
        let s = &a[g / 2];
        std::array::from_fn(|c| {
            if g % 2 == 0 {
                _mm_unpacklo_epi16(s[2 * c], s[2 * c + 1])
            } else {
                _mm_unpackhi_epi16(s[2 * c], s[2 * c + 1])
            }
        })
    });
    let c: [[__m128i; 2]; 8] = std::array::from_fn(|g| {
        let s = &b[g / 2];
        std::array::from_fn(|o| {
            if g % 2 == 0 {
                _mm_unpacklo_epi32(s[2 * o], s[2 * o + 1])
            } else {
                _mm_unpackhi_epi32(s[2 * o], s[2 * o + 1])
            }
        })
    });
    for row in 0..16 {
        let s = &c[row / 2];
        let d = if row % 2 == 0 {
            _mm_unpacklo_epi64(s[0], s[1])
        } else {
            _mm_unpackhi_epi64(s[0], s[1])
        };
        // SAFETY: 16 bytes at out[row * ldo..] (caller's contract).
        unsafe { _mm_storeu_si128(out.as_mut_ptr().add(row * ldo) as *mut __m128i, d) };
    }
}

#[inline(always)]
fn quantize_body(x: &[f32], inv: f32, zero: u8, out: &mut [u8]) {
    let z = zero as f32;
    for (o, &v) in out.iter_mut().zip(x) {
        let y = v * inv;
        let y = if y.is_nan() { 0.0 } else { y };
        // Through i32: the clamped value fits, and a saturating float-to-u8 cast is not
        // vectorised (float-to-i32 is, and the narrowing is a truncation).
        *o = (y.round_ties_even() + z).clamp(0.0, 255.0) as i32 as u8;
    }
}

/// 8 values at a time by intrinsics (the compiler scalarised the saturating float-to-int
/// conversion of the shared body): the same operations, and after the clamp the value is a
/// whole number in [0, 255], so `cvtps` converts it exactly; the rest by the shared body.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_avx2(x: &[f32], inv: f32, zero: u8, out: &mut [u8]) {
    use std::arch::x86_64::*;
    let n = x.len() / 8 * 8;
    let q = Quant8::new(inv, zero);
    for i in (0..n).step_by(8) {
        // SAFETY: i + 8 <= n <= x.len() = out.len().
        let v = unsafe { _mm256_loadu_ps(x.as_ptr().add(i)) };
        let w16 = q.words(v);
        let b8 = _mm_packus_epi16(w16, w16);
        // SAFETY: 8 bytes at out[i..i + 8].
        unsafe { _mm_storel_epi64(out.as_mut_ptr().add(i) as *mut __m128i, b8) };
    }
    quantize_body(&x[n..], inv, zero, &mut out[n..])
}

/// The AVX2 quantisation of eight values, shared by [`quantize_avx2`] and the transposed tiles.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Quant8 {
    inv: std::arch::x86_64::__m256,
    zero: std::arch::x86_64::__m256,
}

#[cfg(target_arch = "x86_64")]
impl Quant8 {
    #[target_feature(enable = "avx2")]
    fn new(inv: f32, zero: u8) -> Self {
        use std::arch::x86_64::*;
        Quant8 {
            inv: _mm256_set1_ps(inv),
            zero: _mm256_set1_ps(zero as f32),
        }
    }

    /// `v`'s eight values quantized (as the shared body: NaN -> 0, round ties-even, add the
    /// zero point, clamp to [0, 255]; then a whole number, so `cvtps` is exact), as eight u16.
    #[target_feature(enable = "avx2")]
    fn words(self, v: std::arch::x86_64::__m256) -> std::arch::x86_64::__m128i {
        use std::arch::x86_64::*;
        let y = _mm256_mul_ps(v, self.inv);
        let y = _mm256_and_ps(y, _mm256_cmp_ps::<_CMP_ORD_Q>(y, y));
        let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(y);
        let (lo, hi) = (_mm256_setzero_ps(), _mm256_set1_ps(255.0));
        let q = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(r, self.zero), lo), hi);
        let w = _mm256_cvtps_epi32(q);
        _mm_packus_epi32(_mm256_castsi256_si128(w), _mm256_extracti128_si256::<1>(w))
    }
}

/// [`quantize_avx2`] on sixteen lanes: the same operations per value (NaN -> 0 by a mask), the
/// whole numbers narrowed to bytes by truncation; the rest by the AVX2 path.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2")]
unsafe fn quantize_avx512(x: &[f32], inv: f32, zero: u8, out: &mut [u8]) {
    use std::arch::x86_64::*;
    let n = x.len() / 16 * 16;
    let (vi, vz) = (_mm512_set1_ps(inv), _mm512_set1_ps(zero as f32));
    let (lo, hi) = (_mm512_setzero_ps(), _mm512_set1_ps(255.0));
    for i in (0..n).step_by(16) {
        // SAFETY: i + 16 <= n <= x.len() = out.len().
        let v = unsafe { _mm512_loadu_ps(x.as_ptr().add(i)) };
        let y = _mm512_mul_ps(v, vi);
        let y = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_ORD_Q>(y, y), y);
        let r = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(y);
        let q = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(r, vz), lo), hi);
        let b = _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(q));
        // SAFETY: 16 bytes at out[i..i + 16].
        unsafe { _mm_storeu_si128(out.as_mut_ptr().add(i) as *mut __m128i, b) };
    }
    // SAFETY: AVX2 is implied by this function's features.
    unsafe { quantize_avx2(&x[n..], inv, zero, &mut out[n..]) }
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn quantize_neon(x: &[f32], inv: f32, zero: u8, out: &mut [u8]) {
    quantize_body(x, inv, zero, out)
}

/// One row block against one panel.
#[derive(Clone, Copy)]
struct Tile<'a> {
    /// From the block's first row on.
    a: &'a [u8],
    lda: usize,
    rows: usize,
    w: &'a I8Weights,
    pn: usize,
    /// Valid columns of the panel (the last may be partial).
    cols: usize,
}

impl Tile<'_> {
    /// The panel's bytes (`k4 / 4` steps of 64).
    fn panel<'b>(&self, data: &'b [i8]) -> &'b [i8] {
        let len = self.w.k4 * NR;
        &data[self.pn * len..(self.pn + 1) * len]
    }
}

/// Where a tile's results go: C from the tile's first row on.
struct Out<'a> {
    c: &'a mut [f32],
    ldc: usize,
    rq: &'a Requant<'a>,
}

impl Out<'_> {
    /// The zero-point correction and the requantisation of a tile's sums: the same scalar
    /// operations on every path, inlined into each path's function so that the compiler
    /// vectorises them with that path's instructions.
    #[inline(always)]
    fn finish(&mut self, t: &Tile, raw: &[[i32; NR]; MR]) {
        let j0 = t.pn * NR;
        let za = self.rq.a_zero as i32;
        let colsum = &t.w.colsum[j0..j0 + NR];
        if t.cols == NR {
            // Whole panels as fixed-size arrays: one vector pass per row (a slice of run-time
            // length was left scalar by the compiler).
            let cs: &[i32; NR] = colsum.try_into().expect("NR");
            let s: &[f32; NR] = self.rq.scale[j0..j0 + NR].try_into().expect("NR");
            let b: &[f32; NR] = self.rq.bias[j0..j0 + NR].try_into().expect("NR");
            for (r, raw) in raw.iter().enumerate().take(t.rows) {
                let o = r * self.ldc + j0;
                let out: &mut [f32; NR] = (&mut self.c[o..o + NR]).try_into().expect("NR");
                for j in 0..NR {
                    out[j] = (raw[j] - za * cs[j]) as f32 * s[j] + b[j];
                }
                if let Some(oq) = self.rq.out_q {
                    for o in out.iter_mut() {
                        *o = oq.apply(*o);
                    }
                }
                if let Some(pb) = self.rq.post_bias {
                    let pb: &[f32; NR] = pb[j0..j0 + NR].try_into().expect("NR");
                    for (o, p) in out.iter_mut().zip(pb) {
                        *o += p;
                    }
                }
            }
            return;
        }
        let (s, b) = (
            &self.rq.scale[j0..j0 + t.cols],
            &self.rq.bias[j0..j0 + t.cols],
        );
        for (r, raw) in raw.iter().enumerate().take(t.rows) {
            let out = &mut self.c[r * self.ldc + j0..r * self.ldc + j0 + t.cols];
            for (j, o) in out.iter_mut().enumerate() {
                let v = raw[j] - za * colsum[j];
                *o = v as f32 * s[j] + b[j];
            }
            if let Some(oq) = self.rq.out_q {
                for o in out.iter_mut() {
                    *o = oq.apply(*o);
                }
            }
            if let Some(pb) = self.rq.post_bias {
                for (o, p) in out.iter_mut().zip(&pb[j0..]) {
                    *o += p;
                }
            }
        }
    }
}

/// The reference: `sum a * w` over the tile, u8 x i8 in i32 (on the original weights, whole
/// or halves).
fn tile_scalar(t: &Tile, out: &mut Out) {
    let mut raw = [[0i32; NR]; MR];
    for data in std::iter::once(&t.w.panels).chain(&t.w.second) {
        let panel = t.panel(data);
        for (r, acc) in raw.iter_mut().enumerate().take(t.rows) {
            let row = &t.a[r * t.lda..r * t.lda + t.w.k4];
            for (q, step) in panel.chunks_exact(4 * NR).enumerate() {
                let av = &row[4 * q..4 * q + 4];
                for (c, wv) in step.chunks_exact(4).enumerate() {
                    for tt in 0..4 {
                        acc[c] += av[tt] as i32 * wv[tt] as i32;
                    }
                }
            }
        }
    }
    out.finish(t, &raw);
}

/// The 4 bytes of step `q` of row `r`, as the i32 a broadcast takes (read from memory, so a
/// broadcast can take it as its operand).
///
/// # Safety
/// `r < t.rows`, `q < k4 / 4`: inside A by [`multiply`]'s check.
#[inline(always)]
unsafe fn quad(t: &Tile, r: usize, q: usize) -> i32 {
    debug_assert!(r * t.lda + 4 * q + 4 <= t.a.len());
    // SAFETY: caller's contract.
    unsafe { (t.a.as_ptr().add(r * t.lda + 4 * q) as *const i32).read_unaligned() }
}

#[cfg(target_arch = "x86_64")]
/// `R` rows of a tile over the 256-bit halves of the panel (x86), each step's accumulator
/// `$c` updated by `$e` from the broadcast activations `$av` and the weights `$w` (an
/// expression, not a closure: a closure would not inherit the function's target features).
macro_rules! x86_rows {
    ($t:expr, $raw:expr, $R:expr, $data:expr, |$c:ident, $av:ident, $w:ident| $e:expr) => {{
        use std::arch::x86_64::*;
        let panel = $t.panel($data).as_ptr();
        let mut acc = [[_mm256_setzero_si256(); 2]; $R];
        for q in 0..$t.w.k4 / 4 {
            // SAFETY: step q of the panel is 64 bytes inside it.
            let w0 = unsafe { _mm256_loadu_si256(panel.add(q * 64) as *const __m256i) };
            let w1 = unsafe { _mm256_loadu_si256(panel.add(q * 64 + 32) as *const __m256i) };
            for (r, acc) in acc.iter_mut().enumerate() {
                // SAFETY: r and q inside the tile.
                let $av = _mm256_set1_epi32(unsafe { quad($t, r, q) });
                for (acc, w) in acc.iter_mut().zip([w0, w1]) {
                    let ($c, $w) = (*acc, w);
                    *acc = $e;
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (h, v) in acc.iter().enumerate() {
                let mut l = [0i32; 8];
                // SAFETY: l holds 8 lanes.
                unsafe { _mm256_storeu_si256(l.as_mut_ptr() as *mut __m256i, *v) };
                for (x, y) in $raw[r][8 * h..8 * h + 8].iter_mut().zip(l) {
                    *x += y;
                }
            }
        }
    }};
}

/// Runs `$body` (a generic over the block's row count `R`) for `t.rows`.
macro_rules! by_rows {
    ($rows:expr, $f:ident($($a:expr),*)) => {
        match $rows {
            6 => $f::<6>($($a),*),
            5 => $f::<5>($($a),*),
            4 => $f::<4>($($a),*),
            3 => $f::<3>($($a),*),
            2 => $f::<2>($($a),*),
            _ => $f::<1>($($a),*),
        }
    };
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avxvnni")]
unsafe fn tile_avxvnni(t: &Tile, out: &mut Out) {
    let mut raw = [[0i32; NR]; MR];
    #[target_feature(enable = "avx2,avxvnni")]
    fn rows<const R: usize>(t: &Tile, raw: &mut [[i32; NR]; MR]) {
        x86_rows!(t, raw, R, &t.w.panels, |c, a, w| _mm256_dpbusd_avx_epi32(
            c, a, w
        ));
    }
    by_rows!(t.rows, rows(t, &mut raw));
    // SAFETY: AVX2 present (this function's features).
    unsafe { finish_avx2(out, t, &raw) };
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn tile_avx2(t: &Tile, out: &mut Out) {
    let mut raw = [[0i32; NR]; MR];
    #[target_feature(enable = "avx2")]
    fn rows<const R: usize>(t: &Tile, raw: &mut [[i32; NR]; MR], data: &[i8]) {
        use std::arch::x86_64::*;
        let ones = _mm256_set1_epi16(1);
        // Two u8 x i8 products per i16 (never saturating: every weight here is in [-64, 64]),
        // then adjacent i16 pairs into the i32 lane.
        x86_rows!(t, raw, R, data, |c, a, w| _mm256_add_epi32(
            c,
            _mm256_madd_epi16(_mm256_maddubs_epi16(a, w), ones)
        ));
    }
    for data in std::iter::once(&t.w.panels).chain(&t.w.second) {
        by_rows!(t.rows, rows(t, &mut raw, data))
    }
    // SAFETY: AVX2 present (this function's features).
    unsafe { finish_avx2(out, t, &raw) };
}

/// [`Out::finish`] in eight lanes for a whole panel (as [`finish_avx512`] in sixteen: the
/// same operations in the same order, so equal bit for bit); a partial panel through
/// `Out::finish`.
///
/// # Safety
/// AVX2 present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn finish_avx2(out: &mut Out, t: &Tile, raw: &[[i32; NR]; MR]) {
    use std::arch::x86_64::*;
    if t.cols != NR {
        out.finish(t, raw);
        return;
    }
    let j0 = t.pn * NR;
    let za = _mm256_set1_epi32(out.rq.a_zero as i32);
    for (r, raw) in raw.iter().enumerate().take(t.rows) {
        for h in [0, 8] {
            let j = j0 + h;
            // SAFETY (every load and store): columns j..j + 8 lie inside colsum, scale, bias,
            // post_bias (checked by `multiply`) and row r of C; raw holds 16 lanes.
            unsafe {
                let cs = _mm256_loadu_si256(t.w.colsum.as_ptr().add(j) as *const __m256i);
                let v = _mm256_loadu_si256(raw.as_ptr().add(h) as *const __m256i);
                let v = _mm256_sub_epi32(v, _mm256_mullo_epi32(za, cs));
                let s = _mm256_loadu_ps(out.rq.scale.as_ptr().add(j));
                let b = _mm256_loadu_ps(out.rq.bias.as_ptr().add(j));
                let mut y = _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(v), s), b);
                if let Some(oq) = out.rq.out_q {
                    let z = _mm256_set1_ps(oq.zero as f32);
                    let q = _mm256_mul_ps(y, _mm256_set1_ps(oq.inv_scale));
                    let q = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(q);
                    let q = _mm256_add_ps(q, z);
                    let q =
                        _mm256_min_ps(_mm256_max_ps(q, _mm256_setzero_ps()), _mm256_set1_ps(255.0));
                    y = _mm256_mul_ps(_mm256_sub_ps(q, z), _mm256_set1_ps(oq.scale));
                }
                if let Some(pb) = out.rq.post_bias {
                    y = _mm256_add_ps(y, _mm256_loadu_ps(pb.as_ptr().add(j)));
                }
                _mm256_storeu_ps(out.c.as_mut_ptr().add(r * out.ldc + j), y);
            }
        }
    }
}

/// `np` (1, 2 or 4) panels from `t.pn` on: each step loads the panels' weights once and
/// broadcasts each row's activations once for all of them (one panel at a time took a broadcast
/// per `vpdpbusd`, and the loads bound the loop). Whole panels are finished from the
/// registers ([`finish_avx512`]); a partial last panel through [`Out::finish`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn tile_avx512vnni(t: &Tile, np: usize, out: &mut Out) {
    #[target_feature(enable = "avx512f,avx512vnni")]
    fn rows<const R: usize, const P: usize>(t: &Tile, out: &mut Out) {
        use std::arch::x86_64::*;
        let len = t.w.k4 * NR;
        let panel = t.w.panels[t.pn * len..(t.pn + P) * len].as_ptr();
        let mut acc = [[_mm512_setzero_si512(); P]; R];
        for q in 0..t.w.k4 / 4 {
            // SAFETY: step q of each of the P panels is 64 bytes inside it.
            let w: [__m512i; P] = std::array::from_fn(|p| unsafe {
                _mm512_loadu_si512(panel.add(p * len + q * 64) as *const __m512i)
            });
            for (r, acc) in acc.iter_mut().enumerate() {
                // SAFETY: r and q inside the tile.
                let a = _mm512_set1_epi32(unsafe { quad(t, r, q) });
                for (acc, w) in acc.iter_mut().zip(&w) {
                    *acc = _mm512_dpbusd_epi32(*acc, a, *w);
                }
            }
        }
        for p in 0..P {
            let pn = t.pn + p;
            let tp = Tile {
                pn,
                cols: NR.min(t.w.n - pn * NR),
                ..*t
            };
            if tp.cols == NR {
                for (r, acc) in acc.iter().enumerate() {
                    // SAFETY: row r of the tile, a whole panel of C.
                    unsafe { finish_avx512(out, &tp, r, acc[p]) };
                }
            } else {
                let mut raw = [[0i32; NR]; MR];
                for (r, acc) in acc.iter().enumerate() {
                    // SAFETY: a row of raw holds 16 lanes.
                    unsafe { _mm512_storeu_si512(raw[r].as_mut_ptr() as *mut __m512i, acc[p]) };
                }
                out.finish(&tp, &raw);
            }
        }
    }
    macro_rules! panels {
        ($R:literal) => {
            match np {
                4 => rows::<$R, 4>(t, out),
                2 => rows::<$R, 2>(t, out),
                _ => rows::<$R, 1>(t, out),
            }
        };
    }
    match t.rows {
        6 => panels!(6),
        5 => panels!(5),
        4 => panels!(4),
        3 => panels!(3),
        2 => panels!(2),
        _ => panels!(1),
    }
}

/// [`Out::finish`] of row `r` of a whole panel from its accumulator, in sixteen lanes: the
/// same IEEE operations in the same order (the i32 to f32 conversion rounds to nearest even,
/// the multiply and add are separate, the rounding to the output grid is ties-to-even, the
/// clamp a max then a min), so equal to the scalar definition bit for bit (tested). The
/// compiler had left `finish` partly scalar on this path (a third of the int8 encoder's time).
///
/// # Safety
/// `r < t.rows`, `t.cols == NR`; AVX-512F present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn finish_avx512(out: &mut Out, t: &Tile, r: usize, raw: std::arch::x86_64::__m512i) {
    use std::arch::x86_64::*;
    let j0 = t.pn * NR;
    debug_assert!(t.cols == NR && r < t.rows);
    // SAFETY (every load and store): the panel's 16 columns lie inside colsum, scale, bias,
    // post_bias (checked by `multiply`) and row r of C.
    unsafe {
        let cs = _mm512_loadu_si512(t.w.colsum.as_ptr().add(j0) as *const __m512i);
        let za = _mm512_set1_epi32(out.rq.a_zero as i32);
        let v = _mm512_sub_epi32(raw, _mm512_mullo_epi32(za, cs));
        let s = _mm512_loadu_ps(out.rq.scale.as_ptr().add(j0));
        let b = _mm512_loadu_ps(out.rq.bias.as_ptr().add(j0));
        let mut y = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(v), s), b);
        if let Some(oq) = out.rq.out_q {
            let z = _mm512_set1_ps(oq.zero as f32);
            let q = _mm512_mul_ps(y, _mm512_set1_ps(oq.inv_scale));
            let q = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(q);
            let q = _mm512_add_ps(q, z);
            let q = _mm512_min_ps(_mm512_max_ps(q, _mm512_setzero_ps()), _mm512_set1_ps(255.0));
            y = _mm512_mul_ps(_mm512_sub_ps(q, z), _mm512_set1_ps(oq.scale));
        }
        if let Some(pb) = out.rq.post_bias {
            y = _mm512_add_ps(y, _mm512_loadu_ps(pb.as_ptr().add(j0)));
        }
        _mm512_storeu_ps(out.c.as_mut_ptr().add(r * out.ldc + j0), y);
    }
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon,dotprod")]
unsafe fn tile_neon_dot(t: &Tile, out: &mut Out) {
    let mut raw = [[0i32; NR]; MR];
    #[target_feature(enable = "neon,dotprod")]
    fn rows<const R: usize>(t: &Tile, raw: &mut [[i32; NR]; MR]) {
        use std::arch::aarch64::*;
        /// `acc += sum of 4 i8 products per lane` (`sdot`, an intrinsic not yet stable).
        #[inline(always)]
        fn sdot(acc: int32x4_t, w: int8x16_t, a: int8x16_t) -> int32x4_t {
            let mut acc = acc;
            // SAFETY: a register-only instruction of the dotprod extension this function's
            // caller was compiled for.
            unsafe {
                std::arch::asm!(
                    ".arch_extension dotprod",
                    "sdot {0:v}.4s, {1:v}.16b, {2:v}.16b",
                    inout(vreg) acc,
                    in(vreg) w,
                    in(vreg) a,
                    options(pure, nomem, nostack)
                )
            };
            acc
        }
        /// `sdot` by element: the 4 bytes of lane `L` of `a` against every lane of `w`.
        #[inline(always)]
        fn sdot_lane<const L: i32>(acc: int32x4_t, w: int8x16_t, a: int8x16_t) -> int32x4_t {
            let mut acc = acc;
            // SAFETY: as `sdot`.
            unsafe {
                std::arch::asm!(
                    ".arch_extension dotprod",
                    "sdot {0:v}.4s, {1:v}.16b, {2:v}.4b[{l}]",
                    inout(vreg) acc,
                    in(vreg) w,
                    in(vreg_low16) a,
                    l = const L,
                    options(pure, nomem, nostack)
                )
            };
            acc
        }
        let panel = t.panel(&t.w.panels).as_ptr();
        let flip = vdupq_n_u8(0x80);
        let mut acc = [[vdupq_n_s32(0); 4]; R];
        let steps = t.w.k4 / 4;
        let mut q = 0;
        // Four steps at a time: each row's 16 activations loaded and flipped once, each step's
        // 4 bytes taken by lane (a dup and a flip per row and step otherwise).
        while q + 4 <= steps {
            // SAFETY: bytes 4q..4q + 16 of each row lie inside A (4q + 16 <= k4).
            let a: [int8x16_t; R] = std::array::from_fn(|r| unsafe {
                let p = t.a.as_ptr().add(r * t.lda + 4 * q);
                vreinterpretq_s8_u8(veorq_u8(vld1q_u8(p), flip))
            });
            macro_rules! step {
                ($l:literal) => {
                    // SAFETY: step q + l of the panel is 64 bytes inside it.
                    let w: [int8x16_t; 4] = std::array::from_fn(|h| unsafe {
                        vld1q_s8(panel.add((q + $l) * 64 + 16 * h))
                    });
                    for (acc, a) in acc.iter_mut().zip(&a) {
                        for (x, w) in acc.iter_mut().zip(&w) {
                            *x = sdot_lane::<$l>(*x, *w, *a);
                        }
                    }
                };
            }
            step!(0);
            step!(1);
            step!(2);
            step!(3);
            q += 4;
        }
        while q < steps {
            // SAFETY: step q of the panel is 64 bytes inside it.
            let w: [int8x16_t; 4] =
                std::array::from_fn(|h| unsafe { vld1q_s8(panel.add(q * 64 + 16 * h)) });
            for (r, acc) in acc.iter_mut().enumerate() {
                // a - 128 as i8 (the sums get 128 colsum(W) back below).
                let a = vreinterpretq_s8_u8(veorq_u8(
                    // SAFETY: r and q inside the tile.
                    vreinterpretq_u8_s32(vdupq_n_s32(unsafe { quad(t, r, q) })),
                    flip,
                ));
                for (x, w) in acc.iter_mut().zip(&w) {
                    *x = sdot(*x, *w, a);
                }
            }
            q += 1;
        }
        let cs = &t.w.colsum[t.pn * NR..t.pn * NR + NR];
        for (r, acc) in acc.iter().enumerate() {
            for (h, v) in acc.iter().enumerate() {
                let mut l = [0i32; 4];
                // SAFETY: l holds 4 lanes.
                unsafe { vst1q_s32(l.as_mut_ptr(), *v) };
                for (c, x) in l.iter().enumerate() {
                    raw[r][4 * h + c] = x + 128 * cs[4 * h + c];
                }
            }
        }
    }
    by_rows!(t.rows, rows(t, &mut raw));
    out.finish(t, &raw);
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn tile_neon(t: &Tile, out: &mut Out) {
    let mut raw = [[0i32; NR]; MR];
    #[target_feature(enable = "neon")]
    fn rows<const R: usize>(t: &Tile, raw: &mut [[i32; NR]; MR]) {
        use std::arch::aarch64::*;
        let panel = t.panel(&t.w.panels).as_ptr();
        let mut acc = [[vdupq_n_s32(0); 4]; R];
        for q in 0..t.w.k4 / 4 {
            // The step's 64 bytes de-interleaved: register tt holds k value 4q + tt of the 16
            // columns; widened to i16 halves.
            // SAFETY: step q of the panel is 64 bytes inside it.
            let w = unsafe { vld4q_s8(panel.add(q * 64)) };
            let wk = [w.0, w.1, w.2, w.3].map(|v| [vmovl_s8(vget_low_s8(v)), vmovl_high_s8(v)]);
            for (r, acc) in acc.iter_mut().enumerate() {
                // SAFETY: r and q inside the tile.
                let a4 = unsafe { quad(t, r, q) }.to_le_bytes();
                for (tt, wk) in wk.iter().enumerate() {
                    let a = a4[tt] as i16;
                    acc[0] = vmlal_n_s16(acc[0], vget_low_s16(wk[0]), a);
                    acc[1] = vmlal_high_n_s16(acc[1], wk[0], a);
                    acc[2] = vmlal_n_s16(acc[2], vget_low_s16(wk[1]), a);
                    acc[3] = vmlal_high_n_s16(acc[3], wk[1], a);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (h, v) in acc.iter().enumerate() {
                // SAFETY: 4 lanes into raw[r][4h..4h + 4].
                unsafe { vst1q_s32(raw[r].as_mut_ptr().add(4 * h), *v) };
            }
        }
    }
    by_rows!(t.rows, rows(t, &mut raw));
    out.finish(t, &raw);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seeded bytes.
    fn bytes(seed: &mut u64, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                *seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (*seed >> 56) as u8
            })
            .collect()
    }

    /// The definition, in i64 and f32, for C's element (i, j).
    fn definition<'a>(
        a: &'a [u8],
        lda: usize,
        w: &'a [i8],
        (k, n): (usize, usize),
        rq: &'a Requant,
    ) -> impl Fn(usize, usize) -> f32 + 'a {
        move |i, j| {
            let s: i64 = (0..k)
                .map(|p| (a[i * lda + p] as i64 - rq.a_zero as i64) * w[p * n + j] as i64)
                .sum();
            let v = s as i32 as f32 * rq.scale[j] + rq.bias[j];
            let v = match rq.out_q {
                None => v,
                Some(q) => {
                    let y = ((v * q.inv_scale).round_ties_even() + q.zero as f32).clamp(0.0, 255.0);
                    (y - q.zero as f32) * q.scale
                }
            };
            match rq.post_bias {
                None => v,
                Some(p) => v + p[j],
            }
        }
    }

    fn check(m: usize, k: usize, n: usize, w: &[i8], a: &[u8], za: u8) {
        let lda = k + 3;
        let mut seed = (m * k + n) as u64;
        let scale: Vec<f32> = (0..n).map(|j| 1e-3 * (1.0 + j as f32 / 7.0)).collect();
        let bias: Vec<f32> = bytes(&mut seed, n)
            .iter()
            .map(|&b| b as f32 / 50.0 - 2.5)
            .collect();
        // Without and with an output quantisation (a grid coarse enough to clamp some).
        for out_q in [
            None,
            Some(OutQuant {
                inv_scale: 4.0,
                zero: 117,
                scale: 0.25,
            }),
        ] {
            // The bias Add after the dequantisation, with the output quantisation only.
            let post: Vec<f32> = bias.iter().map(|b| b * 0.5 - 0.1).collect();
            check_with(
                m,
                (k, n),
                (w, a, lda),
                &Requant {
                    a_zero: za,
                    scale: &scale,
                    bias: &bias,
                    out_q,
                    post_bias: out_q.map(|_| &post[..]),
                },
            );
        }
    }

    fn check_with(
        m: usize,
        (k, n): (usize, usize),
        (w, a, lda): (&[i8], &[u8], usize),
        rq: &Requant,
    ) {
        let def = definition(a, lda, w, (k, n), rq);
        let mut want = None;
        for kern in I8Kernel::available() {
            let packed = I8Weights::pack(kern, w, k, n, (n, 1));
            let mut c = vec![f32::NAN; m * (n + 1)];
            multiply(a, lda, m, &packed, rq, &mut c, n + 1);
            for i in 0..m {
                for j in 0..n {
                    assert_eq!(
                        c[i * (n + 1) + j],
                        def(i, j),
                        "{kern:?} {m}x{k}x{n} ({i}, {j})"
                    );
                }
                assert!(c[i * (n + 1) + n].is_nan(), "{kern:?} wrote past the row");
            }
            let bits: Vec<u32> = c.iter().map(|x| x.to_bits()).collect();
            match &want {
                None => want = Some(bits),
                Some(w) => assert_eq!(&bits, w, "{kern:?} {m}x{k}x{n}"),
            }
        }
    }

    #[test]
    fn every_path_equals_the_definition_bit_for_bit() {
        let ran: Vec<_> = I8Kernel::available().iter().map(|k| k.name()).collect();
        println!("int8 paths run on this CPU: {}", ran.join(", "));
        let mut seed = 3;
        // Tails of every kind: rows (MR = 6), columns (NR = 16), k not a multiple of 4.
        for (m, k, n) in [
            (1usize, 1usize, 1usize),
            (7, 5, 17),
            (6, 64, 16),
            (13, 130, 40),
            (2, 3, 33),
            (12, 256, 32),
            // Four, then two, then one panel at a time (AVX-512 VNNI): 5 and 7 panels.
            (9, 40, 70),
            (6, 20, 100),
        ] {
            let lda = k + 3;
            let a = bytes(&mut seed, (m - 1) * lda + k.next_multiple_of(4) + 3);
            // Full-range weights (the AVX2 path splits them), then weights within 7 bits.
            let wide: Vec<i8> = bytes(&mut seed, k * n).iter().map(|&b| b as i8).collect();
            let narrow: Vec<i8> = wide.iter().map(|&w| w / 2).collect();
            for w in [&wide, &narrow] {
                for za in [0u8, 77, 255] {
                    check(m, k, n, w, &a, za);
                }
            }
        }
    }

    #[test]
    fn extremes_do_not_saturate() {
        // Every activation 255 against every weight -128, 127 or 64 (vpmaddubsw's limit), over a
        // long reduction: the largest sums each path can meet.
        let (m, k, n) = (7, 1024, 84);
        let a = vec![255u8; (m - 1) * (k + 3) + k + 3];
        for v in [-128i8, 127, 64, -64] {
            check(m, k, n, &vec![v; k * n], &a, 0);
            check(m, k, n, &vec![v; k * n], &a, 255);
        }
    }

    #[test]
    fn quantize_rounds_half_to_even_and_clamps() {
        let x = [0.0f32, 0.25, 0.75, 1.25, -100.0, 100.0, f32::NAN, -0.25];
        let mut out = [0u8; 8];
        quantize_u8(&x, 2.0, 10, &mut out);
        // 0.25 * 2 = 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -200 -> 0 (clamped), 200 + 10 -> 210,
        // NaN -> the zero point, -0.5 -> -0 (+10).
        assert_eq!(out, [10, 10, 12, 12, 0, 210, 10, 10]);
        quantize_u8(&[1000.0], 2.0, 10, &mut out[..1]);
        assert_eq!(out[0], 255);
        // Every kernel alike, on values around every rounding boundary and past both ends.
        let mut xs: Vec<f32> = (-3000..3000).map(|i| i as f32 * 0.0625 + 0.03125).collect();
        // NaN, infinities and huge values inside whole vectors of every width, and a tail.
        let special = [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -0.0,
            1e30,
            -1e30,
            31.9375,
        ];
        xs.extend(special.iter().cycle().take(37));
        let mut want = vec![0u8; xs.len()];
        quantize_u8_with(crate::Kernel::Scalar, &xs, 8.0, 100, &mut want);
        for k in crate::Kernel::available() {
            let mut got = vec![0u8; xs.len()];
            quantize_u8_with(k, &xs, 8.0, 100, &mut got);
            assert_eq!(got, want, "{k:?}");
        }
    }

    #[test]
    fn quantize_transposed_equals_quantize_of_the_transpose() {
        // Runs of 8 channels and 64 rows with tails of each; values on rounding boundaries.
        // Whole 16 x 16 tiles (AVX2) with edges of rows, of channels, or both.
        for (rows, k) in [
            (1, 1),
            (64, 8),
            (70, 13),
            (5, 130),
            (129, 17),
            (16, 16),
            (48, 37),
            (35, 256),
        ] {
            let (ldx, ldo) = (rows + 2, k + 4);
            let x: Vec<f32> = (0..k * ldx)
                .map(|i| (i as f32 * 0.37).sin() * 40.0 + 0.0625 * (i % 7) as f32)
                .collect();
            let mut t = vec![0f32; rows * k];
            for r in 0..rows {
                for p in 0..k {
                    t[r * k + p] = x[p * ldx + r];
                }
            }
            let mut want = vec![0u8; rows * k];
            quantize_u8_with(crate::Kernel::Scalar, &t, 8.0, 100, &mut want);
            for kern in crate::Kernel::available() {
                let mut got = vec![7u8; rows * ldo];
                quantize_u8_transposed(kern, &x, ldx, (rows, k), (8.0, 100), &mut got, ldo);
                for r in 0..rows {
                    assert_eq!(
                        &got[r * ldo..r * ldo + k],
                        &want[r * k..(r + 1) * k],
                        "{kern:?}"
                    );
                    assert!(got[r * ldo + k..(r + 1) * ldo].iter().all(|&b| b == 7));
                }
            }
        }
    }

    #[test]
    fn the_avx2_path_splits_only_weights_beyond_7_bits() {
        let fits = vec![64i8, -64, 0, 3];
        let wide = vec![65i8, 0, 0, 0];
        assert!(!I8Weights::pack(I8Kernel::Avx2, &fits, 2, 2, (2, 1)).split());
        assert!(I8Weights::pack(I8Kernel::Avx2, &wide, 2, 2, (2, 1)).split());
        assert!(!I8Weights::pack(I8Kernel::Avx512Vnni, &wide, 2, 2, (2, 1)).split());
    }

    #[test]
    fn kernel_choice_follows_the_features() {
        let none = Features::default();
        assert_eq!(I8Kernel::best_on(none), I8Kernel::Scalar);
        let avx2 = Features {
            avx2: true,
            fma: true,
            ..none
        };
        let vnni = Features {
            avxvnni: true,
            ..avx2
        };
        let v512 = Features {
            avx512f: true,
            avx512vnni: true,
            ..avx2
        };
        let (x86, arm) = (cfg!(target_arch = "x86_64"), cfg!(target_arch = "aarch64"));
        let pick = |ok: bool, k| if ok { k } else { I8Kernel::Scalar };
        assert_eq!(I8Kernel::best_on(avx2), pick(x86, I8Kernel::Avx2));
        assert_eq!(I8Kernel::best_on(vnni), pick(x86, I8Kernel::AvxVnni));
        assert_eq!(I8Kernel::best_on(v512), pick(x86, I8Kernel::Avx512Vnni));
        let neon = Features { neon: true, ..none };
        let dot = Features {
            dotprod: true,
            ..neon
        };
        assert_eq!(I8Kernel::best_on(neon), pick(arm, I8Kernel::Neon));
        assert_eq!(I8Kernel::best_on(dot), pick(arm, I8Kernel::NeonDot));
        assert!(I8Kernel::best().usable());
    }
}
