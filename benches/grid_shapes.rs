//! The products of one everything-mode pixel block (96 pixels, one prompt of 7 tokens, 8 heads,
//! LiteMedSAM's 256 channels) on every kernel path the CPU has, one thread: time per call,
//! GFLOP/s, and the block's total per product (calls x time), so a change to the register
//! blocks can be judged on the shapes the grid runs, path by path, in the same run. Synthetic
//! values: speed does not depend on them.
//!
//! Run: `cargo bench --profile iter --bench grid_shapes` (`ROUNDS=N`, default 7).

use std::time::Instant;

use sonomask::model::fast_ops::linear::{WeightPanels, multiply, multiply_add_rows};
use sonomask::simd::Kernel;

#[path = "common/mod.rs"]
mod common;
use common::{median, values};

/// How A is laid out: rows contiguous, or columns contiguous (the head-major scores).
#[derive(Clone, Copy)]
enum A {
    Rows,
    Cols,
}

/// The right-hand side: packed at load, or a row-major block read in place.
#[derive(Clone, Copy)]
enum W {
    Packed,
    InPlace,
}

fn main() {
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    let kernels: Vec<Kernel> = Kernel::available()
        .into_iter()
        .filter(|k| *k != Kernel::Scalar)
        .collect();
    println!("kernel paths timed: {kernels:?}");
    let mut head = "| product | m x k x n | calls / block |".to_string();
    for k in &kernels {
        head += &format!(" {k:?} us/call | {k:?} GFLOP/s | {k:?} us/block |");
    }
    println!("{head}");
    println!("|---|---|---|{}", "---|---|---|".repeat(kernels.len()));
    let mut totals = vec![0f64; kernels.len()];
    for (name, (m, k, n), a_at, w_at, calls) in [
        // a per-head product of the tokens with a per-frame or per-model table: the first
        // layer's image-to-token scores, the second layer's token-to-image scores (two tables)
        // and its image-to-token scores (two tables)
        (
            "scores per head (7 tokens)",
            (7, 16, 96),
            A::Rows,
            W::Packed,
            40,
        ),
        (
            "residual (head-major scores)",
            (96, 56, 256),
            A::Cols,
            W::Packed,
            2,
        ),
        // B^T P0^T and (D W_q kt)^T P0^T
        ("P0 terms", (56, 56, 96), A::Cols, W::InPlace, 2),
        ("values per head", (7, 96, 16), A::Rows, W::Packed, 8),
        ("hacc", (56, 96, 56), A::Rows, W::Packed, 1),
        (
            "final scores (IoU token)",
            (96, 256, 8),
            A::Rows,
            W::Packed,
            1,
        ),
        ("G += E^T keys", (8, 96, 256), A::Cols, W::InPlace, 1),
        // the dense scores of a decoder that is not SAM's two layers (not in the block)
        (
            "dense scores (other depths)",
            (96, 256, 56),
            A::Rows,
            W::Packed,
            0,
        ),
    ] {
        let a = values(m * k, 1);
        let (rsa, csa) = match a_at {
            A::Rows => (k as isize, 1),
            A::Cols => (1, m as isize),
        };
        let w = values(k * n, 2);
        let panels = WeightPanels::pack(&w, k, n, (n, 1));
        let mut c = vec![0f32; m * n];
        // enough calls per timing for ~1 ms
        let reps = (500_000 / (m * k * n)).max(1);
        let mut row = format!("| {name} | {m} x {k} x {n} | {calls} |");
        for (i, &kernel) in kernels.iter().enumerate() {
            let mut ts = vec![];
            for _ in 0..rounds {
                let t = Instant::now();
                for _ in 0..reps {
                    // SAFETY: a is m x k through its strides, w k x n (n a multiple of 16 where
                    // read in place), c m x n row-major.
                    unsafe {
                        match w_at {
                            W::Packed => multiply(
                                kernel,
                                (a.as_ptr(), rsa, csa),
                                &panels,
                                (c.as_mut_ptr(), n),
                                (0..m, 0..n),
                                None,
                            ),
                            W::InPlace => multiply_add_rows(
                                kernel,
                                (a.as_ptr(), rsa, csa),
                                (w.as_ptr(), n, k, n),
                                (c.as_mut_ptr(), n),
                                (0..m, 0..n),
                            ),
                        }
                    }
                }
                ts.push(t.elapsed().as_secs_f64() * 1e6 / reps as f64);
            }
            let us = median(ts);
            let block = us * calls as f64;
            totals[i] += block;
            let gf = 2.0 * (m * k * n) as f64 / us / 1e3;
            row += &format!(" {us:.2} | {gf:.1} | {block:.1} |");
        }
        println!("{row}");
    }
    let mut row = "| products of a block | | |".to_string();
    for t in &totals {
        row += &format!(" | | {t:.1} |");
    }
    println!("{row}");
    row_kernels(&kernels, rounds);
}

/// The block's row kernels: the image tokens' residual add + norm of both layers (timed with
/// the positional encoding's output), both layers' softmax over each head's 7 tokens
/// (head-major, interleaved by pixel) and the first layer's pass's online softmax along rows
/// (the second layer's token-to-image attention).
fn row_kernels(kernels: &[Kernel], rounds: usize) {
    use sonomask::simd::{layer_norm, softmax};
    let (rows, c, t, heads) = (96, 256, 7, 8);
    let (g, b, pe, d) = (
        values(c, 4),
        values(c, 5),
        values(rows * c, 6),
        values(rows * c, 7),
    );
    let x0 = values(rows * c, 8);
    let scores0 = values(heads * t * rows, 9);
    let mut head = "| row kernel (per block) | calls / block |".to_string();
    for k in kernels {
        head += &format!(" {k:?} us/block |");
    }
    println!("\n{head}");
    println!("|---|---|{}", "---|".repeat(kernels.len()));
    let time = |name: &str, calls: usize, f: &mut dyn FnMut(Kernel)| {
        let mut line = format!("| {name} | {calls} |");
        for &k in kernels {
            let mut ts = vec![];
            for _ in 0..rounds {
                let t0 = Instant::now();
                for _ in 0..20 {
                    f(k);
                }
                ts.push(t0.elapsed().as_secs_f64() * 1e6 / 20.0);
            }
            line += &format!(" {:.1} |", median(ts) * calls as f64);
        }
        println!("{line}");
    };
    // each timed call overwrites what it reads next time from copies made here, once
    let (mut x, mut out) = (x0.clone(), vec![0f32; rows * c]);
    time("add + norm (+ pe): both layers", 2, &mut |k| {
        for ((xr, dr), (pr, or)) in x
            .chunks_exact_mut(c)
            .zip(d.chunks_exact(c))
            .zip(pe.chunks_exact(c).zip(out.chunks_exact_mut(c)))
        {
            layer_norm::add_norm_pe_row(k, xr, None, dr, (1e-5, &g, &b), pr, Some(or));
        }
        std::hint::black_box(&out);
    });
    let mut x = scores0.clone();
    time("softmax over 7 tokens a head: both layers", 2, &mut |k| {
        x.copy_from_slice(&scores0);
        softmax::softmax_interleaved(k, &mut x, t, rows);
        std::hint::black_box(&x);
    });
    let (mut max, mut sum) = (vec![0f32; heads * t], vec![0f32; heads * t]);
    time("row maxima + exp sums (online)", 1, &mut |k| {
        x.copy_from_slice(&scores0);
        softmax::row_maxima(k, &x, rows, &mut max);
        softmax::row_exp_sums(k, &mut x, rows, &max, &mut sum);
        std::hint::black_box(&sum);
    });
}
