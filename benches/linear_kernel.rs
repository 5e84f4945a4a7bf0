//! The linear-layer kernel (`fast_ops::linear`, weights packed at load) against the packed sgemm
//! it replaces (`matrixmultiply`, with the bias written into C first, as `fast_ops::gemm` did)
//! on the products of MobileSAM's layers, one thread, interleaved, medians. Synthetic values:
//! speed does not depend on them.
//!
//! Where the CPU has AVX-512, the kernel's AVX2+FMA path is timed too, in the same rounds, so
//! the AVX-512 path's gain is a same-run ratio.
//!
//! Run: `cargo bench --bench linear_kernel` (`ROUNDS=N`, default 7).

use std::time::Instant;

use sonomask::model::fast_ops::linear::{WeightPanels, multiply};
use sonomask::simd::Kernel;

#[path = "common/mod.rs"]
mod common;
use common::{median, values};

fn main() {
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    let kernel = Kernel::best();
    // The AVX2 path beside AVX-512, when the best kernel is AVX-512.
    let second = (kernel == Kernel::Avx512).then_some(Kernel::Avx2);
    println!("kernel: {kernel:?}; also timed: {second:?}");
    println!(
        "| layer | m x k x n | sgemm ms | linear ms | sgemm GFLOP/s | linear GFLOP/s | speed-up | AVX2 path ms | AVX-512 vs AVX2 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (name, (m, k, n)) in [
        ("in cache (peak)", (96, 256, 128)),
        ("stage-1 mlp.fc1", (16384, 128, 512)),
        ("stage-1 mlp.fc2", (16384, 512, 128)),
        ("stage-1 qkv", (17689, 128, 384)),
        ("stage-2 mlp.fc1", (4096, 160, 640)),
        ("stage-3 qkv", (4900, 320, 960)),
        ("stage-3 mlp.fc1", (4096, 320, 1280)),
        ("stage-3 mlp.fc2", (4096, 1280, 320)),
        ("decoder-size q/k/v", (4096, 256, 128)),
        // everything mode's per-prompt products: scores against 8 heads x 7 tokens, and the
        // residual back from them
        ("grid scores", (4096, 256, 56)),
        ("grid residual", (4096, 56, 256)),
    ] {
        let (rsa, csa) = (k as isize, 1);
        let a = values(m * k, 1);
        let w = values(k * n, 2);
        let bias = values(n, 3);
        let panels = WeightPanels::pack(&w, k, n, (n, 1));
        let mut c = vec![0f32; m * n];
        let mut d = vec![0f32; m * n];
        let (mut ts, mut tl, mut t2) = (vec![], vec![], vec![]);
        for _ in 0..rounds {
            let t = Instant::now();
            for row in c.chunks_mut(n) {
                row.copy_from_slice(&bias);
            }
            // SAFETY: a is m x k (strides rsa, csa), w k x n, c m x n, row-major.
            unsafe {
                matrixmultiply::sgemm(
                    m,
                    k,
                    n,
                    1.0,
                    a.as_ptr(),
                    rsa,
                    csa,
                    w.as_ptr(),
                    n as isize,
                    1,
                    1.0,
                    c.as_mut_ptr(),
                    n as isize,
                    1,
                )
            };
            ts.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            // SAFETY: as above.
            unsafe {
                multiply(
                    kernel,
                    (a.as_ptr(), rsa, csa),
                    &panels,
                    (d.as_mut_ptr(), n),
                    (0..m, 0..n),
                    Some(&bias),
                )
            };
            tl.push(t.elapsed().as_secs_f64() * 1e3);
            if let Some(k2) = second {
                let t = Instant::now();
                // SAFETY: as above.
                unsafe {
                    multiply(
                        k2,
                        (a.as_ptr(), rsa, csa),
                        &panels,
                        (d.as_mut_ptr(), n),
                        (0..m, 0..n),
                        Some(&bias),
                    )
                };
                t2.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        let diff = c
            .iter()
            .zip(&d)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-3, "{name}: results differ by {diff}");
        let (s, l) = (median(ts), median(tl));
        let gf = |ms: f64| 2.0 * (m * k * n) as f64 / ms / 1e6;
        let (avx2, ratio) = if t2.is_empty() {
            ("-".to_string(), "-".to_string())
        } else {
            let a2 = median(t2);
            (format!("{a2:.1}"), format!("{:.3}x", a2 / l))
        };
        println!(
            "| {name} | {m} x {k} x {n} | {s:.1} | {l:.1} | {:.1} | {:.1} | {:.3}x | {avx2} | {ratio} |",
            gf(s),
            gf(l),
            s / l
        );
    }
}
