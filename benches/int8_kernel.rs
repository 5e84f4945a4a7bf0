//! The int8 product kernels (`sonomask_kernels::int8`) against the fp32 linear-layer kernel on
//! the products of the SAM encoder's and decoder's layers, one thread, interleaved in the same
//! rounds, medians. Synthetic values: speed does not depend on them. The int8 time is given
//! with and without quantizing the f32 activations to u8 first (what an int8 operator fed by
//! f32 activations pays), and for the AVX2 path with weights within 7 bits and with full-range
//! weights (split in two, twice the work).
//!
//! Run: `cargo bench --bench int8_kernel` (`ROUNDS=N`, default 7).

use std::time::Instant;

use sonomask_kernels::int8::{I8Kernel, I8Weights, Requant, quantize_u8};
use sonomask_kernels::linear::{WeightPanels, multiply};
use sonomask_kernels::{Kernel, test_values};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64() * 1e3
}

fn main() {
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    let fp32 = Kernel::best();
    // Each int8 path this CPU runs; AVX2 twice (7-bit and full-range weights).
    let mut paths: Vec<(I8Kernel, bool)> = I8Kernel::available()
        .into_iter()
        .filter(|k| *k != I8Kernel::Scalar)
        .map(|k| (k, false))
        .collect();
    if I8Kernel::Avx2.usable() {
        paths.push((I8Kernel::Avx2, true));
    }
    let label = |(k, wide): (I8Kernel, bool)| match (k, wide) {
        (I8Kernel::Avx2, false) => "avx2 (7-bit w)".to_string(),
        (I8Kernel::Avx2, true) => "avx2 (8-bit w, split)".to_string(),
        (k, _) => k.name().to_string(),
    };
    println!(
        "fp32 kernel: {fp32:?}; int8 kernel chosen here: {:?}",
        I8Kernel::best()
    );
    print!("| layer | m x k x n | fp32 ms |");
    for &p in &paths {
        print!(" {} ms | vs fp32 | with quantize vs fp32 |", label(p));
    }
    println!();
    println!("|---|---|---|{}", "---|---|---|".repeat(paths.len()));
    for (name, (m, k, n)) in [
        ("in cache (peak)", (96, 256, 128)),
        ("stage-1 mlp.fc1", (16384, 128, 512)),
        ("stage-1 mlp.fc2", (16384, 512, 128)),
        ("stage-2 mlp.fc1", (4096, 160, 640)),
        ("stage-3 qkv", (4900, 320, 960)),
        ("stage-3 mlp.fc2", (4096, 1280, 320)),
        ("decoder-size q/k/v", (4096, 256, 128)),
    ] {
        // Seeded values in [-0.5, 0.5) (the kernels' test generator; speed does not depend on
        // them).
        let mut seed = 1;
        let a = test_values(&mut seed, m * k);
        let w = test_values(&mut seed, k * n);
        let bias = test_values(&mut seed, n);
        let panels = WeightPanels::pack(&w, k, n, (n, 1));
        let mut c = vec![0f32; m * n];
        // int8 operands: activations in [-0.5, 0.5) on 255 steps, weights per column on 127
        // (or on 64 for the 7-bit case).
        let (sa, za) = (1.0 / 255.0, 128u8);
        let k4 = k.next_multiple_of(4);
        let mut qa = vec![0u8; m * k4];
        let quantize = |qa: &mut [u8]| {
            for (row, src) in qa.chunks_exact_mut(k4).zip(a.chunks_exact(k)) {
                quantize_u8(src, 1.0 / sa, za, &mut row[..k]);
            }
        };
        quantize(&mut qa);
        let packs: Vec<(I8Weights, Vec<f32>)> = paths
            .iter()
            .map(|&(kern, wide)| {
                let top = if kern == I8Kernel::Avx2 && !wide {
                    64.0
                } else {
                    127.0
                };
                let qw: Vec<i8> = w.iter().map(|&x| (x * 2.0 * top).round() as i8).collect();
                let scale = vec![sa / (2.0 * top); n];
                (I8Weights::pack(kern, &qw, k, n, (n, 1)), scale)
            })
            .collect();
        let mut tf = vec![];
        let mut ti = vec![vec![]; paths.len()];
        let mut tq = vec![];
        for _ in 0..rounds {
            tf.push(time(|| {
                // SAFETY: a is m x k row-major, c m x n.
                unsafe {
                    multiply(
                        fp32,
                        (a.as_ptr(), k as isize, 1),
                        &panels,
                        (c.as_mut_ptr(), n),
                        (0..m, 0..n),
                        Some(&bias),
                    )
                }
            }));
            tq.push(time(|| quantize(&mut qa)));
            for (t, (pw, scale)) in ti.iter_mut().zip(&packs) {
                let rq = Requant {
                    a_zero: za,
                    scale,
                    bias: &bias,
                    out_q: None,
                    post_bias: None,
                };
                t.push(time(|| {
                    sonomask_kernels::int8::multiply(&qa, k4, m, pw, &rq, &mut c, n)
                }));
            }
        }
        let (f, q) = (median(tf), median(tq));
        print!("| {name} | {m} x {k} x {n} | {f:.2} |");
        for t in ti {
            let t = median(t);
            print!(" {t:.2} | {:.2}x | {:.2}x |", t / f, (t + q) / f);
        }
        println!();
    }
}
