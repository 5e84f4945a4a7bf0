//! The product `C = W . X (+ bias per row)` of a 1x1 convolution over channels-first
//! activations, with the weights packed once at load and the activations read in place.
//!
//! Why: in a channels-first 1x1 convolution each input channel is one contiguous row of pixels,
//! so a tile of 16 pixels over all input channels is a set of whole cache lines; a packed sgemm
//! instead repacks the 65536-pixel activations every call and writes C in 8x8 tiles whose rows
//! are 256 KiB apart (one cache set). The stage-0 MBConv 1x1 convolutions (k = 64 or 256) ran at
//! half the product rate that way (figures: docs/BENCHMARKS.md, appendix, "What each own operator replaced"). Here: groups of four 16-pixel tiles of the activations (four adjacent
//! cache lines per input channel, prefetched a group ahead because no hardware prefetcher follows
//! 64-256 streams) are copied into contiguous blocks (the rows are a power of two apart, one
//! cache set), then every block of 6 output channels is accumulated in registers over all input
//! channels (6 x 16, the classic AVX2 shape), tile after tile of the group, and stored once,
//! around the cache where aligned and C is big (the next layer reads it from memory anyway). Measured in the encoder against the packed
//! sgemm, interleaved in one process: docs/BENCHMARKS.md, appendix, third step.
//!
//! Every path (AVX2+FMA, NEON, scalar) does the same fused multiply-adds in the same order
//! (bias first, then input channel by input channel), so they agree bit for bit (tested with
//! `==`); against tract the sums are taken in another order (tested to 1e-5 in `gemm.rs`).

use crate::Kernel;

/// Output channels per register block.
pub const MR: usize = 6;
/// Pixels per register block.
pub const NR: usize = 16;
/// Tiles of [`NR`] pixels copied together: each input row's 4 cache lines adjacent (its rows
/// are a power of two apart, so separate tiles' lines conflict in the cache sets and the
/// prefetches ahead are evicted before use), and each block of weights used on all 4 while in
/// L1. Measured against one tile (the decoder's channels-first projections, rows 16 KiB apart):
/// docs/BENCHMARKS.md, appendix, eighth step.
const TILES: usize = 4;

thread_local! {
    /// Each thread's copy of the tiles (`k x NR` per tile), grown to the largest `k` once and
    /// kept: MBConv calls the kernel per image row.
    static TILES_SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Weights `[m, k]` packed in blocks of [`MR`] rows, input channel by input channel
/// (`data[(block * k + p) * MR + r] = w[block * MR + r][p]`, zero past row `m`).
#[derive(Debug, Clone, PartialEq)]
pub struct PackedWeights {
    pub m: usize,
    pub k: usize,
    data: Vec<f32>,
}

// Plan equality only (tract compares ops to merge duplicates).
impl Eq for PackedWeights {}

impl PackedWeights {
    /// Packs `w` read as `m x k` with the given row and column strides.
    pub fn pack(w: &[f32], m: usize, k: usize, (rs, cs): (usize, usize)) -> Self {
        let blocks = m.div_ceil(MR);
        let mut data = vec![0f32; blocks * k * MR];
        for b in 0..blocks {
            for p in 0..k {
                for r in 0..MR.min(m - b * MR) {
                    data[(b * k + p) * MR + r] = w[(b * MR + r) * rs + p * cs];
                }
            }
        }
        PackedWeights { m, k, data }
    }

    /// The weights as packed, `m x k` row-major again.
    pub fn unpacked(&self) -> Vec<f32> {
        let mut w = vec![0f32; self.m * self.k];
        for (i, row) in w.chunks_exact_mut(self.k).enumerate() {
            let (b, r) = (i / MR, i % MR);
            for (p, v) in row.iter_mut().enumerate() {
                *v = self.data[(b * self.k + p) * MR + r];
            }
        }
        w
    }

    fn block(&self, b: usize) -> &[f32] {
        &self.data[b * self.k * MR..(b + 1) * self.k * MR]
    }
}

/// Where the `k` rows of X come from: row `p` at column `j`, contiguous for
/// [`Columns::run_from`] columns.
pub trait Columns {
    /// Address of X's row `p`, column `j` (may be computed past the end: only read when in range).
    fn at(&self, p: usize, j: usize) -> *const f32;
    /// How many columns from `j` on are contiguous in every row (at least 1).
    fn run_from(&self, j: usize) -> usize;
}

/// X as `k` rows `rs` apart (a channels-first 1x1 convolution's activations).
pub struct Rows {
    pub x: *const f32,
    pub rs: usize,
}

impl Columns for Rows {
    fn at(&self, p: usize, j: usize) -> *const f32 {
        self.x.wrapping_add(p * self.rs + j)
    }

    fn run_from(&self, _: usize) -> usize {
        usize::MAX
    }
}

/// `C[i][j] = bias[i] + sum_p W[i][p] X[p][j]` for every row `i` and the columns `cols`.
/// `stream`: aligned rows of C are stored around the cache (C is big and read from memory by
/// the next layer); without it C stays in cache (a small block its caller reads right away).
///
/// # Safety
/// `x` addresses `k` rows of at least `cols.end` values (see [`Columns`]); `c` addresses `m`
/// rows of at least `cols.end` values, `rs_c` apart; no one else writes those columns of C.
pub unsafe fn multiply(
    kernel: Kernel,
    w: &PackedWeights,
    x: &impl Columns,
    (c, rs_c): (*mut f32, usize),
    cols: std::ops::Range<usize>,
    bias: Option<&[f32]>,
    stream: bool,
) {
    let fma = kernel_has_fma(kernel);
    // The tiles' input rows are a power of two apart in the big activations (one cache set):
    // copy each into a contiguous k x NR block once, then every row block reads those.
    TILES_SCRATCH.with_borrow_mut(|tile| {
        // Only the columns of a tile that are copied are read (partial tiles by the scalar
        // path, n wide): what an earlier call left in the rest does not matter.
        if tile.len() < w.k * NR * TILES {
            tile.resize(w.k * NR * TILES, 0.0);
        }
        let mut j = cols.start;
        while j < cols.end {
            // Up to TILES tiles of NR columns, each a contiguous run (their start and width).
            let mut subs = [(0usize, 0usize); TILES];
            let mut count = 0;
            let mut jj = j;
            while count < TILES && jj < cols.end {
                let n = NR.min(cols.end - jj).min(x.run_from(jj));
                subs[count] = (jj, n);
                count += 1;
                jj += n;
            }
            for p in 0..w.k {
                for (s, &(js, n)) in subs[..count].iter().enumerate() {
                    // SAFETY: caller's contract: row p has n contiguous values from column js.
                    let src = unsafe { std::slice::from_raw_parts(x.at(p, js), n) };
                    let at = (s * w.k + p) * NR;
                    tile[at..at + n].copy_from_slice(src);
                }
                // Too many rows for the hardware prefetcher to follow: ask for the group after next.
                #[cfg(target_arch = "x86_64")]
                // SAFETY: a prefetch does not fault; the address is only computed.
                unsafe {
                    use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
                    for s in 0..count {
                        _mm_prefetch::<_MM_HINT_T0>(x.at(p, jj + s * NR + NR * count) as *const i8);
                    }
                }
            }
            for b in 0..w.m.div_ceil(MR) {
                let rows = MR.min(w.m - b * MR);
                let mut init = [0f32; MR];
                if let Some(bias) = bias {
                    init[..rows].copy_from_slice(&bias[b * MR..b * MR + rows]);
                }
                let a = w.block(b);
                // AVX-512: two whole tiles at a time (12 accumulators of 16 lanes; one tile's 6
                // would leave the FMA units waiting on their latency).
                #[allow(unused_mut)]
                let mut from = 0;
                #[cfg(target_arch = "x86_64")]
                if kernel == Kernel::Avx512 && kernel.usable() {
                    while from + 1 < count && subs[from].1 == NR && subs[from + 1].1 == NR {
                        let (js, x) = (subs[from].0, tile.as_ptr());
                        // SAFETY: caller's contract; AVX-512F, AVX2 and FMA present (checked
                        // by `usable`); tiles `from` and `from + 1` are whole, their outputs
                        // `dc` columns apart in C.
                        unsafe {
                            let t = Tile {
                                x: x.add(from * w.k * NR),
                                rs_x: NR,
                                c: c.add(b * MR * rs_c + js),
                                rs_c,
                                rows,
                                stream,
                            };
                            tile2_avx512(
                                a,
                                w.k,
                                &init,
                                &t,
                                x.add((from + 1) * w.k * NR),
                                subs[from + 1].0 - js,
                            );
                        }
                        from += 2;
                    }
                }
                for (s, &(js, n)) in subs[..count].iter().enumerate().skip(from) {
                    // SAFETY: caller's contract; row `b * MR + r` of C exists for r < rows.
                    unsafe {
                        let t = Tile {
                            x: tile.as_ptr().add(s * w.k * NR),
                            rs_x: NR,
                            c: c.add(b * MR * rs_c + js),
                            rs_c,
                            rows,
                            stream,
                        };
                        match fma {
                            #[cfg(target_arch = "x86_64")]
                            Some(Kernel::Avx2) if n == NR => tile_avx2(a, w.k, &init, &t),
                            #[cfg(target_arch = "aarch64")]
                            Some(Kernel::Neon) if n == NR => tile_neon(a, w.k, &init, &t),
                            _ => tile_scalar(a, w.k, &init, &t, n),
                        }
                    }
                }
            }
            j = jj;
        }
    });
    // The streaming stores are weakly ordered: make them visible before another thread (the next
    // node's) reads C.
    #[cfg(target_arch = "x86_64")]
    if stream && fma.is_some() {
        // SAFETY: SSE is part of x86-64.
        unsafe { std::arch::x86_64::_mm_sfence() };
    }
}

/// The vector path `kernel` can take here (AVX2 needs FMA too), if any: `Avx2` for both x86
/// kernels (an operator without an AVX-512 path runs its AVX2+FMA one), `Neon` on ARM.
pub fn kernel_has_fma(kernel: Kernel) -> Option<Kernel> {
    match kernel {
        Kernel::Avx2 | Kernel::Avx512 | Kernel::Neon if kernel.usable() => {
            Some(kernel.x86().unwrap_or(kernel))
        }
        _ => None,
    }
}

/// One register block: `rows` (<= MR) output rows at `c`, columns from `x` / `c` onwards.
struct Tile {
    x: *const f32,
    rs_x: usize,
    c: *mut f32,
    rs_c: usize,
    rows: usize,
    /// Store aligned rows around the cache (x86-64's streaming stores; NEON stores plainly).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    stream: bool,
}

/// # Safety
/// `t` addresses `k` rows of `n` inputs and `t.rows` rows of `n` outputs.
unsafe fn tile_scalar(a: &[f32], k: usize, init: &[f32; MR], t: &Tile, n: usize) {
    let mut acc = [[0f32; NR]; MR];
    for (r, row) in acc.iter_mut().enumerate() {
        row.fill(init[r]);
    }
    for p in 0..k {
        // SAFETY: row p of the inputs has n values from t.x on.
        let xs = unsafe { std::slice::from_raw_parts(t.x.add(p * t.rs_x), n) };
        for (r, row) in acc.iter_mut().enumerate() {
            let w = a[p * MR + r];
            for (v, &x) in row.iter_mut().zip(xs) {
                *v = w.mul_add(x, *v);
            }
        }
    }
    for (r, row) in acc.iter().enumerate().take(t.rows) {
        // SAFETY: output row r has n values from t.c on.
        unsafe { std::slice::from_raw_parts_mut(t.c.add(r * t.rs_c), n) }
            .copy_from_slice(&row[..n]);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2(a: &[f32], k: usize, init: &[f32; MR], t: &Tile) {
    use std::arch::x86_64::*;
    let mut acc: [[__m256; 2]; MR] = std::array::from_fn(|r| [_mm256_set1_ps(init[r]); 2]);
    let ap = a.as_ptr();
    for p in 0..k {
        // SAFETY: row p of the inputs has NR values from t.x on; a holds k * MR weights.
        unsafe {
            let xp = t.x.add(p * t.rs_x);
            let x0 = _mm256_loadu_ps(xp);
            let x1 = _mm256_loadu_ps(xp.add(8));
            for (r, acc) in acc.iter_mut().enumerate() {
                let w = _mm256_broadcast_ss(&*ap.add(p * MR + r));
                acc[0] = _mm256_fmadd_ps(w, x0, acc[0]);
                acc[1] = _mm256_fmadd_ps(w, x1, acc[1]);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate().take(t.rows) {
        // SAFETY: output row r has NR values from t.c on.
        unsafe {
            let cp = t.c.add(r * t.rs_c);
            // C is written once and read by the next layer from memory: aligned rows go around
            // the cache (no read-for-ownership of lines that are overwritten whole).
            if t.stream && (cp as usize).is_multiple_of(32) {
                _mm256_stream_ps(cp, acc[0]);
                _mm256_stream_ps(cp.add(8), acc[1]);
            } else {
                _mm256_storeu_ps(cp, acc[0]);
                _mm256_storeu_ps(cp.add(8), acc[1]);
            }
        }
    }
}

/// Two tiles (`t.x` and `x1`, their outputs `dc` columns apart in C) of 16 pixels in one
/// pass: each tile's row of 16 pixels one register, each weight broadcast once for both. The
/// same fused multiply-adds in the same order as the other paths, per output value.
///
/// # Safety
/// As [`tile_avx2`], for both tiles; AVX-512F present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn tile2_avx512(a: &[f32], k: usize, init: &[f32; MR], t: &Tile, x1: *const f32, dc: usize) {
    use std::arch::x86_64::*;
    let mut acc: [[__m512; 2]; MR] = std::array::from_fn(|r| [_mm512_set1_ps(init[r]); 2]);
    let ap = a.as_ptr();
    for p in 0..k {
        // SAFETY: row p of both tiles has NR values; a holds k * MR weights.
        unsafe {
            let x = [
                _mm512_loadu_ps(t.x.add(p * t.rs_x)),
                _mm512_loadu_ps(x1.add(p * t.rs_x)),
            ];
            for (r, acc) in acc.iter_mut().enumerate() {
                let w = _mm512_set1_ps(*ap.add(p * MR + r));
                acc[0] = _mm512_fmadd_ps(w, x[0], acc[0]);
                acc[1] = _mm512_fmadd_ps(w, x[1], acc[1]);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate().take(t.rows) {
        for (h, v) in acc.iter().enumerate() {
            // SAFETY: output row r has NR values at t.c and at t.c + dc.
            unsafe {
                let cp = t.c.add(r * t.rs_c + h * dc);
                if t.stream && (cp as usize).is_multiple_of(64) {
                    _mm512_stream_ps(cp, *v);
                } else {
                    _mm512_storeu_ps(cp, *v);
                }
            }
        }
    }
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn tile_neon(a: &[f32], k: usize, init: &[f32; MR], t: &Tile) {
    use std::arch::aarch64::*;
    let mut acc: [[float32x4_t; 4]; MR] = std::array::from_fn(|r| [vdupq_n_f32(init[r]); 4]);
    let ap = a.as_ptr();
    for p in 0..k {
        // SAFETY: row p of the inputs has NR values from t.x on; a holds k * MR weights.
        unsafe {
            let xp = t.x.add(p * t.rs_x);
            let x = [
                vld1q_f32(xp),
                vld1q_f32(xp.add(4)),
                vld1q_f32(xp.add(8)),
                vld1q_f32(xp.add(12)),
            ];
            for (r, acc) in acc.iter_mut().enumerate() {
                let w = vdupq_n_f32(*ap.add(p * MR + r));
                for q in 0..4 {
                    acc[q] = vfmaq_f32(acc[q], w, x[q]);
                }
            }
        }
    }
    for (r, acc) in acc.iter().enumerate().take(t.rows) {
        // SAFETY: output row r has NR values from t.c on.
        unsafe {
            let cp = t.c.add(r * t.rs_c);
            for (q, v) in acc.iter().enumerate() {
                vst1q_f32(cp.add(4 * q), *v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_values as rand;

    fn run(kernel: Kernel, (m, k, n): (usize, usize, usize), seed: u64) -> Vec<f32> {
        let mut s = seed;
        let w = rand(&mut s, m * k);
        let x = rand(&mut s, k * n);
        let bias = rand(&mut s, m);
        let packed = PackedWeights::pack(&w, m, k, (k, 1));
        let mut c = vec![f32::NAN; m * n];
        // Two column ranges, as two threads would do them.
        let half = (n / 2) / NR * NR;
        for cols in [0..half, half..n] {
            // SAFETY: x is k x n, c is m x n, row strides n.
            unsafe {
                multiply(
                    kernel,
                    &packed,
                    &Rows {
                        x: x.as_ptr(),
                        rs: n,
                    },
                    (c.as_mut_ptr(), n),
                    cols,
                    Some(&bias),
                    true,
                )
            };
        }
        // Against a plain f64 product.
        for i in 0..m {
            for j in 0..n {
                let want = bias[i] as f64
                    + (0..k)
                        .map(|p| w[i * k + p] as f64 * x[p * n + j] as f64)
                        .sum::<f64>();
                let got = c[i * n + j];
                assert!(
                    (got as f64 - want).abs() < 1e-4,
                    "{kernel:?} {m}x{k}x{n} [{i},{j}]"
                );
            }
        }
        c
    }

    #[test]
    fn every_kernel_equals_scalar_bit_for_bit() {
        for (i, shape) in [
            (6, 4, 16),
            (13, 7, 45),
            (1, 64, 33),
            (256 / 16, 9, 100),
            (7, 1, 5),
            // Whole groups of four tiles (AVX-512 runs them two at a time) and a partial one.
            (8, 20, 300),
        ]
        .into_iter()
        .enumerate()
        {
            let want = run(Kernel::Scalar, shape, i as u64);
            for k in Kernel::available() {
                assert_eq!(run(k, shape, i as u64), want, "{k:?} {shape:?}");
            }
        }
    }
}
