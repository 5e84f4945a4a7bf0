//! The product `C = A . W (+ bias per column)` of a linear layer: activations `A` (`m x k`, read
//! in place through strides) times constant weights `W` (`k x n`) packed once at load.
//!
//! Why: the encoder's MLP, qkv and projection layers and the decoder's token projections were
//! computed by `matrixmultiply`'s sgemm, which repacks both operands on every call, writes the
//! bias into C before the product adds to it (one more pass over every output), and keeps an
//! 8 x 8 register block: 8 broadcasts and one load of B per 8 multiply-adds, so the loads, not
//! the FMA units, set its pace (figures: docs/BENCHMARKS.md, appendix, "What each own operator replaced").
//! Here the weights are packed at load into panels of [`NR`] = 16 columns (`k` rows of 16
//! contiguous values each) and every 6 x 16 block of C is accumulated in registers (12 AVX2
//! accumulators: 2 loads of W and 6 broadcasts of A per 12 multiply-adds), starting from the bias
//! or from the partial sums of the previous slice of `k`. `A` is read in place: a register
//! block's 6 rows of the current `k` slice come from memory once and from L1 for every other
//! panel. That wants A's rows contiguous (sonomask-ops' `Gemm` leaves a transposed A,
//! the decoder's channels-first image tokens, to the packed sgemm: copying each block's columns
//! here was measured slower, docs/BENCHMARKS.md, appendix, seventh step).
//!
//! Blocking (per thread, over its band of rows): `k` in slices of at most [`KC`] (one block's 6
//! rows of A stay in L1), the columns in groups whose `k` slice of W fits in L2 ([`L2_BYTES`]),
//! then 6-row blocks, then the group's panels.
//!
//! On an AVX-512 CPU ([`Kernel::Avx512`]) two neighbouring panels are one 6 x 32 block: 12
//! 512-bit accumulators, 2 loads of W and 6 broadcasts of A per 12 multiply-adds of 16 lanes,
//! twice the AVX2 block's work per instruction; a partial second panel goes through a padded
//! buffer rather than down to half-width blocks, and a lone panel is a 6 x 16 block of one
//! 512-bit register per row. The last 7 or 8 rows of a product are one 8-row block there
//! ([`MR_TALL`]: 16 accumulators of the 32 registers) rather than a 6-row block and a 1- or
//! 2-row one: the native decoder's products with a prompt's 7 tokens took two blocks each.
//!
//! On the paths of one panel a block (AVX2, NEON) a block has exactly the rows it stores (1 to
//! 6: a short block no longer computes 6 rows to store a few), a product's last 7 or 8 rows are
//! two blocks of 4 and 3 or 4 (a 1- or 2-row block after a 6-row one waits on its few FMA
//! chains' latency), and a panel's last 8 or fewer columns are a [`HALF`]-lane block (one AVX2
//! register a row) instead of a 16-lane block half of zeros: the decoder's 8-column scores and
//! the last 8 of its 56. AVX-512 takes the half-panel block too (a lone 8-column panel).
//!
//! Every path (AVX-512, AVX2+FMA, NEON, scalar `mul_add`) does the same fused multiply-adds in
//! the same order (from the bias, then `p = 0, 1, ..., k - 1`; a partial sum stored between `k` slices is
//! an f32 either way), so they agree bit for bit (tested with `==`).

use crate::Kernel;

use crate::pointwise::kernel_has_fma;

/// Rows per register block.
pub const MR: usize = 6;
/// Rows of the AVX-512 block that takes a product's last 7 or 8 rows.
const MR_TALL: usize = 8;
/// Columns per register block and per packed panel.
pub const NR: usize = 16;
/// Columns of the half-panel block (AVX2, NEON; AVX-512 for a lone panel) that takes a panel's
/// last 8 or fewer.
const HALF: usize = NR / 2;
/// Longest slice of `k` per pass over a register block (its 6 rows of A: 12 KiB, in L1).
const KC: usize = 512;
/// Budget for one column group's `k` slice of W (stays in L2 while every row block reads it).
const L2_BYTES: usize = 384 * 1024;

/// Weights `[k, n]` packed in panels of [`NR`] columns (`data[(panel * k + p) * NR + j] =
/// w[p][panel * NR + j]`, zero past column `n`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WeightPanels {
    pub k: usize,
    pub n: usize,
    data: Vec<f32>,
}

// Plan equality only (tract compares ops to merge duplicates).
impl Eq for WeightPanels {}

impl WeightPanels {
    /// Packs `w` read as `k x n` with the given row and column strides.
    pub fn pack(w: &[f32], k: usize, n: usize, strides: (usize, usize)) -> Self {
        let mut p = WeightPanels::default();
        p.repack(w, k, n, strides);
        p
    }

    /// [`Self::pack`] into this one's memory (a right-hand side packed per call, e.g. per
    /// prompt, allocates nothing once it has grown).
    pub fn repack(&mut self, w: &[f32], k: usize, n: usize, (rs, cs): (usize, usize)) {
        let panels = n.div_ceil(NR);
        self.data.clear();
        self.data.resize(panels * k * NR, 0.0);
        for panel in 0..panels {
            for p in 0..k {
                let row = &mut self.data[(panel * k + p) * NR..][..NR];
                for (j, v) in row.iter_mut().enumerate().take(n - panel * NR) {
                    *v = w[p * rs + (panel * NR + j) * cs];
                }
            }
        }
        (self.k, self.n) = (k, n);
    }

    /// Panel `panel` from row `p` on.
    fn panel(&self, panel: usize, p: usize) -> *const f32 {
        self.data[(panel * self.k + p) * NR..].as_ptr()
    }
}

/// Where a register block starts from: `NR` values per row, rows `rs` apart (0: one row for
/// all, the bias).
#[derive(Clone, Copy)]
struct Start {
    src: *const f32,
    rs: usize,
}

/// `C[i][j] = bias[j] + sum_p A[i][p] W[p][j]` for the rows `rows` and columns `cols` of C
/// (`cols.start` a multiple of [`NR`]).
///
/// # Safety
/// `a` addresses an `m x k` matrix (pointer, row stride, column stride) with `m >= rows.end`;
/// `c` addresses rows of at least `cols.end <= w.n` values, `rs_c` apart; no one else writes
/// that block of C.
pub unsafe fn multiply(
    kernel: Kernel,
    a: (*const f32, isize, isize),
    w: &WeightPanels,
    c: (*mut f32, usize),
    block: (std::ops::Range<usize>, std::ops::Range<usize>),
    bias: Option<&[f32]>,
) {
    // SAFETY: the caller's contract.
    unsafe { product(kernel, a, Rhs::Packed(w), c, block, bias, false) }
}

/// `C[i][j] += sum_p A[i][p] W[p][j]`: [`multiply`] starting from C's values (a sum of
/// products with different right-hand sides, e.g. a per-frame and a per-prompt part, without
/// a temporary).
///
/// # Safety
/// As [`multiply`]; C's block is read as well as written.
pub unsafe fn multiply_add(
    kernel: Kernel,
    a: (*const f32, isize, isize),
    w: &WeightPanels,
    c: (*mut f32, usize),
    block: (std::ops::Range<usize>, std::ops::Range<usize>),
) {
    // SAFETY: the caller's contract.
    unsafe { product(kernel, a, Rhs::Packed(w), c, block, None, true) }
}

/// [`multiply_add`] with a right-hand side read in place: `w` addresses a `k x n` row-major
/// matrix, rows `ld` apart, `n` a multiple of [`NR`] (each `NR`-wide column panel is then a
/// strided run of rows, as a packed panel is a contiguous one). For a product whose right-hand
/// side is used once and is long in `n` (e.g. `E^T . keys`: 8 rows of A against a block of
/// 256-wide image rows), where packing would copy the whole operand.
///
/// # Safety
/// As [`multiply_add`]; `w` reads `k` rows of `n` f32, `ld >= n` apart.
pub unsafe fn multiply_add_rows(
    kernel: Kernel,
    a: (*const f32, isize, isize),
    (w, ld, k, n): (*const f32, usize, usize, usize),
    c: (*mut f32, usize),
    block: (std::ops::Range<usize>, std::ops::Range<usize>),
) {
    assert!(
        n.is_multiple_of(NR) && ld >= n,
        "a row-major right-hand side needs whole panels"
    );
    let rhs = Rhs::Rows { w, ld, k, n };
    // SAFETY: the caller's contract.
    unsafe { product(kernel, a, rhs, c, block, None, true) }
}

/// A right-hand side as the register blocks read it: panel `j`'s row `p` is `NR` contiguous
/// values, the next row `step` values on.
#[derive(Clone, Copy)]
enum Rhs<'a> {
    Packed(&'a WeightPanels),
    /// `k x n` row-major, rows `ld` apart, `n` a multiple of [`NR`].
    Rows {
        w: *const f32,
        ld: usize,
        k: usize,
        n: usize,
    },
}

impl Rhs<'_> {
    fn k(&self) -> usize {
        match *self {
            Rhs::Packed(w) => w.k,
            Rhs::Rows { k, .. } => k,
        }
    }

    fn n(&self) -> usize {
        match *self {
            Rhs::Packed(w) => w.n,
            Rhs::Rows { n, .. } => n,
        }
    }

    fn step(&self) -> usize {
        match *self {
            Rhs::Packed(_) => NR,
            Rhs::Rows { ld, .. } => ld,
        }
    }

    /// Panel `panel` from row `p` on.
    fn panel(&self, panel: usize, p: usize) -> *const f32 {
        match *self {
            Rhs::Packed(w) => w.panel(panel, p),
            Rhs::Rows { w, ld, .. } => w.wrapping_add(p * ld + panel * NR),
        }
    }
}

unsafe fn product(
    kernel: Kernel,
    (a, rsa, csa): (*const f32, isize, isize),
    w: Rhs,
    (c, rs_c): (*mut f32, usize),
    (rows, cols): (std::ops::Range<usize>, std::ops::Range<usize>),
    bias: Option<&[f32]>,
    accumulate: bool,
) {
    let (wk, wn) = (w.k(), w.n());
    debug_assert!(cols.start.is_multiple_of(NR) && cols.end <= wn);
    let fma = kernel_has_fma(kernel);
    let wide = cfg!(target_arch = "x86_64") && kernel == Kernel::Avx512 && kernel.usable();
    // The vector paths of one panel a block (AVX2, NEON): blocks of exactly `valid` rows, and a
    // panel's last 8 or fewer columns as an 8-lane block.
    let split = !wide && fma.is_some();
    let zeros = [0f32; 2 * NR];
    let panels = cols.start / NR..cols.end.div_ceil(NR);
    let slices = wk.div_ceil(KC).max(1);
    let kc_max = wk.div_ceil(slices);
    let group = (L2_BYTES / (kc_max.max(1) * NR * 4)).max(1);
    // A block narrower than its registers (n not a multiple of NR, or of 2 NR on AVX-512)
    // starts from, and is stored through, these padded rows.
    let mut spare = [0f32; MR_TALL * 2 * NR];
    let mut tmp = [0f32; MR_TALL * 2 * NR];
    for s in 0..slices {
        let (p0, p1) = (s * wk / slices, (s + 1) * wk / slices);
        let mut g = panels.start;
        while g < panels.end {
            let g_end = (g + group).min(panels.end);
            let mut i = rows.start;
            while i < rows.end {
                // A product's last 7 or 8 rows are one 8-row block on AVX-512.
                let left = rows.end - i;
                let tall = wide && (left == MR + 1 || left == MR_TALL);
                // Elsewhere (AVX2, NEON) as two blocks of 4 and 3 or 4 rows: a 1- or 2-row
                // block after a 6-row one is bound by its few FMA chains' latency.
                let valid = match left {
                    _ if tall => left,
                    7 | 8 if split => 4,
                    _ => MR.min(left),
                };
                // Rows past the end repeat the last one (computed, not stored).
                let row_at = |r: usize| {
                    a.wrapping_offset((i + r.min(valid - 1)) as isize * rsa + p0 as isize * csa)
                };
                let a_rows: [*const f32; MR_TALL] = std::array::from_fn(row_at);
                let mut panel = g;
                while panel < g_end {
                    let j = panel * NR;
                    // AVX-512: two neighbouring panels as one 6 x 32 block, the second one
                    // partial too (n = 56: 32 + 24 columns rather than 32 + 16 + 8 through
                    // the half-width blocks).
                    let span = if wide && panel + 1 < g_end { 2 } else { 1 };
                    let half = (split || wide) && cols.end - j <= HALF;
                    let lanes = if half { HALF } else { span * NR };
                    let width = lanes.min(cols.end - j);
                    let full = width == lanes;
                    let cp = c.wrapping_add(i * rs_c + j);
                    let start = match (s > 0 || accumulate, full) {
                        (false, true) => Start {
                            src: bias.map_or(zeros.as_ptr(), |b| b[j..j + lanes].as_ptr()),
                            rs: 0,
                        },
                        (false, false) => {
                            spare[..lanes].fill(0.0);
                            if let Some(b) = bias {
                                spare[..width].copy_from_slice(&b[j..j + width]);
                            }
                            Start {
                                src: spare.as_ptr(),
                                rs: 0,
                            }
                        }
                        (true, true) => Start { src: cp, rs: rs_c },
                        (true, false) => {
                            for r in 0..valid {
                                // SAFETY: row i + r of C has `width` values from column j.
                                let row =
                                    unsafe { std::slice::from_raw_parts(cp.add(r * rs_c), width) };
                                spare[r * lanes..r * lanes + width].copy_from_slice(row);
                            }
                            Start {
                                src: spare.as_ptr(),
                                rs: lanes,
                            }
                        }
                    };
                    let block = Block {
                        a: a_rows,
                        csa,
                        w: w.panel(panel, p0),
                        step: w.step(),
                        kc: p1 - p0,
                        start,
                        valid,
                    };
                    let (dst, rs_dst) = if full {
                        (cp, rs_c)
                    } else {
                        (tmp.as_mut_ptr(), lanes)
                    };
                    // SAFETY: caller's contract: rows i..i + valid of C have `width` values
                    // from column j (a narrower block goes through `tmp`, `lanes` wide); A's
                    // rows and columns are in range; AVX-512F (and AVX2, FMA) checked by
                    // `usable` where `wide`.
                    unsafe {
                        match (span, tall) {
                            _ if half => run_block(fma, true, &block, dst, rs_dst),
                            #[cfg(target_arch = "x86_64")]
                            (2, false) => {
                                block_avx512_pair(&block, w.panel(panel + 1, p0), dst, rs_dst)
                            }
                            #[cfg(target_arch = "x86_64")]
                            (2, true) => {
                                let w1 = w.panel(panel + 1, p0);
                                block_avx512_pair_tall(&block, w1, dst, rs_dst)
                            }
                            #[cfg(target_arch = "x86_64")]
                            (_, true) => block_avx512_tall(&block, dst, rs_dst),
                            #[cfg(target_arch = "x86_64")]
                            _ if wide => block_avx512(&block, dst, rs_dst),
                            _ => run_block(fma, false, &block, dst, rs_dst),
                        }
                    }
                    if !full {
                        for r in 0..valid {
                            // SAFETY: row i + r of C has `width` values from column j.
                            unsafe {
                                std::slice::from_raw_parts_mut(cp.add(r * rs_c), width)
                                    .copy_from_slice(&tmp[r * lanes..r * lanes + width])
                            };
                        }
                    }
                    panel += span;
                }
                i += valid;
            }
            g = g_end;
        }
    }
}

/// One register block: `MR` (or [`MR_TALL`]) rows of A (`a[r]` at the slice's first column,
/// `csa` apart), the panel's slice of W, `kc` long; `valid` rows stored.
struct Block {
    a: [*const f32; MR_TALL],
    csa: isize,
    w: *const f32,
    /// From one row of W's panel to the next ([`NR`] packed).
    step: usize,
    kc: usize,
    start: Start,
    valid: usize,
}

/// A block of one panel on the path `fma` names: [`NR`] columns, or [`HALF`] where `half`
/// (taken only where `fma` names a vector path).
///
/// # Safety
/// `b` addresses what it says; `c` has `b.valid` rows of `NR` (`HALF` where `half`) values,
/// `rs_c` apart.
unsafe fn run_block(fma: Option<Kernel>, half: bool, b: &Block, c: *mut f32, rs_c: usize) {
    // SAFETY: the caller's contract (the vector path only where its features are present).
    unsafe {
        match (fma, half) {
            #[cfg(target_arch = "x86_64")]
            (Some(Kernel::Avx2), false) => block_avx2(b, c, rs_c),
            #[cfg(target_arch = "x86_64")]
            (Some(Kernel::Avx2), true) => block_avx2_half(b, c, rs_c),
            #[cfg(target_arch = "aarch64")]
            (Some(Kernel::Neon), false) => block_neon(b, c, rs_c),
            #[cfg(target_arch = "aarch64")]
            (Some(Kernel::Neon), true) => block_neon_half(b, c, rs_c),
            (_, false) => block_scalar(b, c, rs_c),
            (_, true) => unreachable!("half-panel blocks are taken on the vector paths only"),
        }
    }
}

/// # Safety
/// See [`run_block`].
unsafe fn block_scalar(b: &Block, c: *mut f32, rs_c: usize) {
    let mut acc = [[0f32; NR]; MR];
    for (r, row) in acc.iter_mut().enumerate() {
        let r = r.min(b.valid - 1);
        // SAFETY: the start has NR values per row.
        row.copy_from_slice(unsafe {
            std::slice::from_raw_parts(b.start.src.add(r * b.start.rs), NR)
        });
    }
    for p in 0..b.kc {
        // SAFETY: the panel holds kc rows of NR values; A's rows have kc values.
        let wr = unsafe { std::slice::from_raw_parts(b.w.add(p * b.step), NR) };
        for (r, row) in acc.iter_mut().enumerate() {
            // SAFETY: row r of A has kc values csa apart.
            let av = unsafe { *b.a[r].offset(p as isize * b.csa) };
            for (v, &wv) in row.iter_mut().zip(wr) {
                *v = av.mul_add(wv, *v);
            }
        }
    }
    for (r, row) in acc.iter().enumerate().take(b.valid) {
        // SAFETY: row r of C has NR values.
        unsafe { std::slice::from_raw_parts_mut(c.add(r * rs_c), NR) }.copy_from_slice(row);
    }
}

/// [`NR`] f32 lanes held in one ISA's registers: all the block's vector paths differ in. The
/// block is written once ([`block_lanes`]) and compiled per ISA by the `#[target_feature]`
/// wrappers below. It replaced three hand-written intrinsics twins: the AVX-512 and AVX2 inner
/// loops it compiles to are the same instructions as theirs (objdump; registers renamed), and
/// their times in one run agree within this VM's noise (docs/BENCHMARKS.md).
trait Lanes: Copy {
    /// # Safety
    /// `p` reads `WIDTH` f32 ([`NR`], or [`HALF`] for a half-panel type); the ISA is present
    /// (the wrapper's `#[target_feature]`).
    unsafe fn load(p: *const f32) -> Self;
    /// # Safety
    /// `p` writes `WIDTH` f32; the ISA is present.
    unsafe fn store(self, p: *mut f32);
    /// # Safety
    /// The ISA is present.
    unsafe fn splat(v: f32) -> Self;
    /// `a * b + c`, fused (one rounding), as `f32::mul_add` in the scalar path.
    ///
    /// # Safety
    /// The ISA is present.
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self;
}

/// `8 * Q` lanes in `Q` AVX2 registers: [`NR`] (`Q = 2`) or [`HALF`] (`Q = 1`).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Avx2Lanes<const Q: usize>([std::arch::x86_64::__m256; Q]);

#[cfg(target_arch = "x86_64")]
impl<const Q: usize> Lanes for Avx2Lanes<Q> {
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        use std::arch::x86_64::*;
        // SAFETY: the caller's contract.
        Avx2Lanes(std::array::from_fn(|q| unsafe {
            _mm256_loadu_ps(p.add(8 * q))
        }))
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        use std::arch::x86_64::*;
        for (q, v) in self.0.iter().enumerate() {
            // SAFETY: the caller's contract.
            unsafe { _mm256_storeu_ps(p.add(8 * q), *v) };
        }
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        // SAFETY: the caller's contract.
        let x = unsafe { std::arch::x86_64::_mm256_set1_ps(v) };
        Avx2Lanes([x; Q])
    }
    #[inline(always)]
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
        use std::arch::x86_64::*;
        // SAFETY: the caller's contract.
        Avx2Lanes(std::array::from_fn(|q| unsafe {
            _mm256_fmadd_ps(a.0[q], b.0[q], c.0[q])
        }))
    }
}

#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Avx512Lanes(std::arch::x86_64::__m512);

#[cfg(target_arch = "x86_64")]
impl Lanes for Avx512Lanes {
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: the caller's contract.
        unsafe { Avx512Lanes(std::arch::x86_64::_mm512_loadu_ps(p)) }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: the caller's contract.
        unsafe { std::arch::x86_64::_mm512_storeu_ps(p, self.0) }
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        // SAFETY: the caller's contract.
        unsafe { Avx512Lanes(std::arch::x86_64::_mm512_set1_ps(v)) }
    }
    #[inline(always)]
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
        // SAFETY: the caller's contract.
        unsafe { Avx512Lanes(std::arch::x86_64::_mm512_fmadd_ps(a.0, b.0, c.0)) }
    }
}

/// `4 * Q` lanes in `Q` NEON registers: [`NR`] (`Q = 4`) or [`HALF`] (`Q = 2`).
#[cfg(target_arch = "aarch64")]
#[derive(Clone, Copy)]
struct NeonLanes<const Q: usize>([std::arch::aarch64::float32x4_t; Q]);

#[cfg(target_arch = "aarch64")]
impl<const Q: usize> Lanes for NeonLanes<Q> {
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        use std::arch::aarch64::*;
        // SAFETY: the caller's contract.
        NeonLanes(std::array::from_fn(|q| unsafe { vld1q_f32(p.add(4 * q)) }))
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        use std::arch::aarch64::*;
        for (q, v) in self.0.iter().enumerate() {
            // SAFETY: the caller's contract.
            unsafe { vst1q_f32(p.add(4 * q), *v) };
        }
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        // SAFETY: the caller's contract.
        let x = unsafe { std::arch::aarch64::vdupq_n_f32(v) };
        NeonLanes([x; Q])
    }
    #[inline(always)]
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
        use std::arch::aarch64::*;
        // SAFETY: the caller's contract.
        NeonLanes(std::array::from_fn(|q| unsafe {
            vfmaq_f32(c.0[q], a.0[q], b.0[q])
        }))
    }
}

/// [`block_lanes`] of one panel with exactly `b.valid` rows: a short block does only its own
/// rows' multiply-adds (the AVX2 and NEON paths, whose blocks are one panel: 1 to [`MR`] rows;
/// 7 or 8 only in AVX-512's half-panel blocks, a product's last rows).
///
/// # Safety
/// As [`block_lanes`].
#[inline(always)]
unsafe fn block_rows<V: Lanes>(b: &Block, c: *mut f32, rs_c: usize) {
    // SAFETY: the caller's contract.
    unsafe {
        match b.valid {
            1 => block_lanes::<V, 1, 1>(b, [b.w], c, rs_c),
            2 => block_lanes::<V, 1, 2>(b, [b.w], c, rs_c),
            3 => block_lanes::<V, 1, 3>(b, [b.w], c, rs_c),
            4 => block_lanes::<V, 1, 4>(b, [b.w], c, rs_c),
            5 => block_lanes::<V, 1, 5>(b, [b.w], c, rs_c),
            6 => block_lanes::<V, 1, MR>(b, [b.w], c, rs_c),
            7 => block_lanes::<V, 1, 7>(b, [b.w], c, rs_c),
            _ => block_lanes::<V, 1, MR_TALL>(b, [b.w], c, rs_c),
        }
    }
}

/// A block of `R` rows by `P` panels (`w[q]`: panel q's slice), in `V`'s registers; the
/// start holds `P * NR` values per row.
///
/// # Safety
/// As [`run_block`], with `P * NR` values per row of C and of the start; `V`'s ISA present.
#[inline(always)]
unsafe fn block_lanes<V: Lanes, const P: usize, const R: usize>(
    b: &Block,
    w: [*const f32; P],
    c: *mut f32,
    rs_c: usize,
) {
    // SAFETY (whole body): the caller's contract.
    unsafe {
        let mut acc: [[V; P]; R] = std::array::from_fn(|r| {
            let s = b.start.src.add(r.min(b.valid - 1) * b.start.rs);
            std::array::from_fn(|q| V::load(s.add(q * NR)))
        });
        let a = b.a;
        let mut off = 0isize;
        let mut wp = w;
        for _ in 0..b.kc {
            let ws: [V; P] = std::array::from_fn(|q| V::load(wp[q]));
            for (r, acc) in acc.iter_mut().enumerate() {
                let av = V::splat(*a[r].offset(off));
                for q in 0..P {
                    acc[q] = V::fma(av, ws[q], acc[q]);
                }
            }
            off += b.csa;
            for p in &mut wp {
                *p = p.add(b.step);
            }
        }
        for (r, acc) in acc.iter().enumerate().take(b.valid) {
            let cp = c.add(r * rs_c);
            for (q, v) in acc.iter().enumerate() {
                v.store(cp.add(q * NR));
            }
        }
    }
}

/// # Safety
/// AVX2 and FMA present; see [`run_block`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_avx2(b: &Block, c: *mut f32, rs_c: usize) {
    // SAFETY: the caller's contract; the features are this function's.
    unsafe { block_rows::<Avx2Lanes<2>>(b, c, rs_c) }
}

/// # Safety
/// AVX2 and FMA present; see [`run_block`] (`half`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_avx2_half(b: &Block, c: *mut f32, rs_c: usize) {
    // SAFETY: the caller's contract; the features are this function's.
    unsafe { block_rows::<Avx2Lanes<1>>(b, c, rs_c) }
}

/// A 6 x 16 block in one 512-bit register per row: a lone panel on AVX-512 (6 accumulators,
/// latency-bound, but each instruction does twice an AVX2 block's lanes).
///
/// # Safety
/// AVX-512F present; see [`run_block`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn block_avx512(b: &Block, c: *mut f32, rs_c: usize) {
    // SAFETY: the caller's contract; the feature is this function's.
    unsafe { block_lanes::<Avx512Lanes, 1, MR>(b, [b.w], c, rs_c) }
}

/// A 6 x 32 block over two panels (`b.w` and `w1`); the start holds 32 values per row.
///
/// # Safety
/// AVX-512F present; as [`run_block`] with `2 * NR` values per row of C and of the start.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn block_avx512_pair(b: &Block, w1: *const f32, c: *mut f32, rs_c: usize) {
    // SAFETY: the caller's contract; the feature is this function's.
    unsafe { block_lanes::<Avx512Lanes, 2, MR>(b, [b.w, w1], c, rs_c) }
}

/// [`block_avx512`] with [`MR_TALL`] rows (a product's last 7 or 8).
///
/// # Safety
/// AVX-512F present; see [`run_block`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn block_avx512_tall(b: &Block, c: *mut f32, rs_c: usize) {
    // SAFETY: the caller's contract; the feature is this function's.
    unsafe { block_lanes::<Avx512Lanes, 1, MR_TALL>(b, [b.w], c, rs_c) }
}

/// [`block_avx512_pair`] with [`MR_TALL`] rows: 16 accumulators.
///
/// # Safety
/// AVX-512F present; as [`block_avx512_pair`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn block_avx512_pair_tall(b: &Block, w1: *const f32, c: *mut f32, rs_c: usize) {
    // SAFETY: the caller's contract; the feature is this function's.
    unsafe { block_lanes::<Avx512Lanes, 2, MR_TALL>(b, [b.w, w1], c, rs_c) }
}

/// # Safety
/// NEON present; see [`run_block`].
#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn block_neon(b: &Block, c: *mut f32, rs_c: usize) {
    // SAFETY: the caller's contract; the feature is this function's.
    unsafe { block_rows::<NeonLanes<4>>(b, c, rs_c) }
}

/// # Safety
/// NEON present; see [`run_block`] (`half`).
#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn block_neon_half(b: &Block, c: *mut f32, rs_c: usize) {
    // SAFETY: the caller's contract; the feature is this function's.
    unsafe { block_rows::<NeonLanes<2>>(b, c, rs_c) }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_values as rand;

    /// C for `a` (`m x k`, transposed in memory if `at`) and `w` (`k x n`), computed in two
    /// row bands and two column bands as threads would.
    fn run(kernel: Kernel, (m, k, n): (usize, usize, usize), at: bool, seed: u64) -> Vec<f32> {
        let mut s = seed;
        let a = rand(&mut s, m * k);
        let w = rand(&mut s, k * n);
        let bias = rand(&mut s, n);
        let panels = WeightPanels::pack(&w, k, n, (n, 1));
        let (rsa, csa) = if at { (1, m as isize) } else { (k as isize, 1) };
        let mut c = vec![f32::NAN; m * n];
        let (hm, hn) = (m / 2, (n / 2) / NR * NR);
        for rows in [0..hm, hm..m] {
            for cols in [0..hn, hn..n] {
                // SAFETY: a is m x k, c is m x n, row stride n.
                unsafe {
                    multiply(
                        kernel,
                        (a.as_ptr(), rsa, csa),
                        &panels,
                        (c.as_mut_ptr(), n),
                        (rows.clone(), cols),
                        Some(&bias),
                    )
                };
            }
        }
        for i in 0..m {
            for j in 0..n {
                let want = bias[j] as f64
                    + (0..k)
                        .map(|p| {
                            let av = a[(i as isize * rsa + p as isize * csa) as usize];
                            av as f64 * w[p * n + j] as f64
                        })
                        .sum::<f64>();
                let got = c[i * n + j];
                assert!(
                    (got as f64 - want).abs() < 1e-4,
                    "{kernel:?} {m}x{k}x{n} [{i},{j}]: {got} vs {want}"
                );
            }
        }
        c
    }

    #[test]
    fn every_kernel_equals_scalar_bit_for_bit() {
        eprintln!("linear kernel paths run here: {:?}", Kernel::available());
        // Partial row blocks and panels, k sliced (> KC) and not, A transposed.
        for (i, (shape, at)) in [
            ((6, 4, 16), false),
            ((13, 7, 45), false),
            ((1, 64, 33), true),
            ((25, 2 * KC + 37, 40), false),
            ((7, 1, 5), false),
            ((40, 300, 96), true),
            // AVX-512's 6 x 32 blocks: pairs of full panels, from the bias and (k sliced) from
            // C's partial sums, beside a lone and a partial panel.
            ((25, 2 * KC + 37, 96), false),
            ((9, KC + 5, 112), true),
            ((14, 33, 70), false),
            // A pair whose second panel is partial (the decoder's 56 = 8 heads x 7 tokens),
            // from the bias and from C's partial sums; a partial pair alone.
            ((11, 2 * KC + 3, 88), false),
            ((7, 40, 56), true),
            ((5, 9, 20), false),
            // AVX-512's 8-row blocks: a product's last 7 or 8 rows (a prompt's 7 tokens,
            // 56 = 6 x 8 + 8, 14 = 6 + 8), pairs, lone and partial panels, k sliced.
            ((8, 16, 48), false),
            ((14, 2 * KC + 9, 88), true),
            ((56, 56, 48), false),
            ((7, 16, 16), true),
            ((8, 300, 8), false),
            // AVX2's and NEON's blocks of exactly the rows left (4 + 3, 4 + 4, 1 to 5) and
            // half-panel blocks (a panel's last 8 or fewer columns), k sliced and not.
            ((96, 256, 8), false),
            ((5, 2 * KC + 3, 24), true),
            ((3, 17, 56), false),
            ((2, 9, 4), true),
            ((19, 33, 8), true),
        ]
        .into_iter()
        .enumerate()
        {
            let want = run(Kernel::Scalar, shape, at, i as u64);
            for k in Kernel::available() {
                assert_eq!(run(k, shape, at, i as u64), want, "{k:?} {shape:?}");
            }
        }
    }

    /// `multiply_add` from random C: the sum against f64, and every path equal to scalar.
    #[test]
    fn multiply_add_accumulates_into_c_on_every_path() {
        let shapes = [
            (7, 16, 4096),
            (13, 2 * KC + 5, 56),
            (6, 9, 20),
            (9, 56, 40),
            (8, 96, 8),
        ];
        for (i, &(m, k, n)) in shapes.iter().enumerate() {
            let mut s = 100 + i as u64;
            let (a, w, c0) = (
                rand(&mut s, m * k),
                rand(&mut s, k * n),
                rand(&mut s, m * n),
            );
            let panels = WeightPanels::pack(&w, k, n, (n, 1));
            let run = |kernel: Kernel| {
                let mut c = c0.clone();
                // SAFETY: a is m x k, c is m x n, row stride n.
                unsafe {
                    multiply_add(
                        kernel,
                        (a.as_ptr(), k as isize, 1),
                        &panels,
                        (c.as_mut_ptr(), n),
                        (0..m, 0..n),
                    )
                };
                c
            };
            let want = run(Kernel::Scalar);
            for r in 0..m {
                for j in 0..n {
                    let dot: f64 = (0..k)
                        .map(|p| a[r * k + p] as f64 * w[p * n + j] as f64)
                        .sum();
                    let e = c0[r * n + j] as f64 + dot;
                    assert!(
                        (want[r * n + j] as f64 - e).abs() < 1e-4,
                        "{m}x{k}x{n} [{r},{j}]"
                    );
                }
            }
            for kernel in Kernel::available() {
                assert_eq!(run(kernel), want, "{kernel:?} {m}x{k}x{n}");
            }
        }
    }

    /// A right-hand side read in place (`multiply_add_rows`): on every path the same values as
    /// its packed copy (the same sums in the same order), A transposed or not, k sliced or
    /// not, rows of W longer than `n`, a partial row block.
    #[test]
    fn row_major_rhs_equals_packed_on_every_path() {
        for (i, &((m, k, n, ld), at)) in [
            ((8, 48, 256, 256), true),
            ((13, 2 * KC + 5, 48, 64), false),
            ((5, 9, 16, 16), true),
            ((1, 7, 32, 40), false),
        ]
        .iter()
        .enumerate()
        {
            let mut s = 300 + i as u64;
            let (a, w, c0) = (
                rand(&mut s, m * k),
                rand(&mut s, k * ld),
                rand(&mut s, m * n),
            );
            let (rsa, csa) = if at { (1, m as isize) } else { (k as isize, 1) };
            let panels = WeightPanels::pack(&w, k, n, (ld, 1));
            for kernel in Kernel::available() {
                let (mut want, mut got) = (c0.clone(), c0.clone());
                // SAFETY: a is m x k (as strided), w is k rows of ld >= n, c is m x n.
                unsafe {
                    multiply_add(
                        kernel,
                        (a.as_ptr(), rsa, csa),
                        &panels,
                        (want.as_mut_ptr(), n),
                        (0..m, 0..n),
                    );
                    multiply_add_rows(
                        kernel,
                        (a.as_ptr(), rsa, csa),
                        (w.as_ptr(), ld, k, n),
                        (got.as_mut_ptr(), n),
                        (0..m, 0..n),
                    );
                }
                assert_eq!(got, want, "{kernel:?} {m}x{k}x{n} ld {ld}");
            }
        }
    }

    #[test]
    fn packing_keeps_every_weight_and_pads_with_zeros() {
        // w transposed in memory (rs 1, cs k): as a MatMul's [n, k] weights are read.
        let (k, n) = (3, 20);
        let w: Vec<f32> = (0..k * n).map(|v| v as f32).collect();
        let p = WeightPanels::pack(&w, k, n, (1, k));
        assert_eq!(p.data.len(), 2 * k * NR);
        for panel in 0..2 {
            for q in 0..k {
                for j in 0..NR {
                    let col = panel * NR + j;
                    let want = if col < n { w[q + col * k] } else { 0.0 };
                    assert_eq!(p.data[(panel * k + q) * NR + j], want);
                }
            }
        }
        // Repacked into the memory of a larger one: the same panels, padding zeroed again.
        let mut r = WeightPanels::pack(&vec![7.0; 5 * 40], 5, 40, (40, 1));
        r.repack(&w, k, n, (1, k));
        assert_eq!(r, p);
    }
}
