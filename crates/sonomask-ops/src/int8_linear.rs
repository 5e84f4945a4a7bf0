//! A quantized linear layer of a QOperator int8 model in one op: the `QuantizeLinear ->
//! QLinearMatMul -> DequantizeLinear` chain onnxruntime's quantizer writes for a `MatMul` with
//! constant weights (tract declutters it into `QuantizeLinearU8 -> EinSum (i8 weights, u8 in and
//! out) -> DequantizeLinearF32`), computed by the own int8 kernels
//! (`sonomask_kernels::int8`): f32 activations quantized to u8 row block by row block into a
//! per-thread scratch, the u8 x i8 product in i32, and the output's u8 rounding applied in the
//! registers before it is dequantized, so the u8 tensors between the three nodes never exist.
//!
//! Channels-first activations (`[k, m]`, SAM's decoder's image tokens) are quantized straight
//! into the row-major u8 rows, and a channels-first output (`[n, m]`) is transposed from each
//! task's rows as they are finished: the decoder's projections of its image tokens and back.
//! A quantized 3x3 convolution (`QLinearConv`, the encoder neck's 256 -> 256) is the same
//! product over each pixel's nine neighbours ([`Im2col3x3`]).
//!
//! Why: tract runs the chain on its own int8 matrix kernels with quantize, requantize and
//! dequantize passes around them; on x86 without VNNI that made the int8 encoder many times
//! slower than fp32, and with VNNI still slower than fp32 (docs/BENCHMARKS.md, issue 22).
//!
//! The same function as the chain: the activations round as tract's `QuantizeLinearU8` (same
//! multiplier, ties to even), the product is exact, the output rounds to the model's u8 grid and
//! back; a bias `Add` after the dequantisation is folded in as the same float addition. Where
//! the two differ is the requantisation's arithmetic (tract's fixed-point multiplier
//! against a float multiply here): at most one step of the output grid, on values that fall on
//! a rounding boundary (tested against tract's chain).

use std::cell::RefCell;
use std::sync::Arc;

use tract_core::internal::*;

use crate::exec::{SharedMut, par_tasks};
use sonomask_kernels::Kernel;
use sonomask_kernels::gelu::gelu_slice;
use sonomask_kernels::int8::{
    I8Kernel, I8Weights, OutQuant, Requant, multiply, quantize_u8, quantize_u8_transposed,
};
use sonomask_kernels::transpose::transpose;

/// Rows per task (a multiple of the kernel's 6-row blocks).
const ROWS: usize = 48;

thread_local! {
    /// Each thread's quantized activation rows, grown to the largest layer once and kept.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// The calling thread's padded channels-last u8 image of a 3x3 convolution ([`Im2col3x3`]).
    static PADDED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// Each thread's f32 output rows before their transpose (channels-first outputs) or their
    /// GELU and quantisation (u8 outputs).
    static ROWS_OUT: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `y = dequant(requant((quant(x) - za) . W) )` over the last axis of `x` (`k` -> `n`).
#[derive(Debug, Clone, PartialEq)]
pub struct Int8Linear {
    pub in_shape: TVec<usize>,
    pub out_shape: TVec<usize>,
    /// Rows (the product of the leading axes), reduction and output width.
    pub m: usize,
    pub k: usize,
    pub n: usize,
    /// The activations' quantisation: tract's multiplier (`1 / scale`) and zero point.
    pub a_inv_scale: f32,
    pub a_zero: u8,
    pub weights: Arc<I8Weights>,
    /// Per column: the activations' scale times the column's weight scale; the bias likewise
    /// scaled.
    pub scale: Arc<Vec<f32>>,
    pub bias: Arc<Vec<f32>>,
    pub out_q: OutQuant,
    /// The bias of the `Add` after the dequantisation, folded in (per output column).
    pub post_bias: Option<Arc<Vec<f32>>>,
    /// The input is channels-first: `x` read as `[k, m]`.
    pub a_t: bool,
    /// The output is channels-first: written as `[n, m]`.
    pub c_t: bool,
    /// The input is a 3x3 convolution's image: each row is a pixel's neighbourhood.
    pub im2col: Option<Im2col3x3>,
    /// The input is the previous layer's u8 ([`U8Out`]): rows of `k` bytes, used as they are.
    pub u8_in: bool,
    /// The output is u8 for the next layer.
    pub u8_out: Option<U8Out>,
}

// Plan equality only (tract compares ops to merge duplicates).
impl Eq for Int8Linear {}

impl Int8Linear {
    /// The kernel its weights were packed for.
    pub fn kernel(&self) -> I8Kernel {
        self.weights.kernel()
    }

    /// What it reads: the model's f32 activations, or the previous layer's u8.
    pub fn in_dt(&self) -> DatumType {
        u8_or_f32(self.u8_in)
    }

    /// What it writes: the model's dequantised f32, or the next layer's u8.
    pub fn out_dt(&self) -> DatumType {
        u8_or_f32(self.u8_out.is_some())
    }
}

/// The input of a 3x3 convolution with stride 1 and padding 1 on a channels-first image
/// `[c, h, w]` (batch 1), as the product's rows: pixel `y * w + x` reads its nine neighbours'
/// channels in `(ky, kx, c)` order. The image is quantized once per run into a channels-last
/// u8 copy with a one-pixel border of the zero point (a real 0, the padding of `QLinearConv`),
/// so a row is three runs of `3 c` contiguous bytes, gathered by each task into its scratch
/// (`9 c` bytes a row instead of `9 c` strided reads of f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Im2col3x3 {
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

impl Im2col3x3 {
    /// `x` (`[c, h * w]`) quantized into `padded` (`[(h + 2) * (w + 2), c]`, border `zero`).
    fn pad(&self, x: &[f32], (inv, zero): (f32, u8), padded: &mut Vec<u8>) {
        let (c, h, w) = (self.c, self.h, self.w);
        padded.clear();
        padded.resize((h + 2) * (w + 2) * c, zero);
        for y in 0..h {
            let dst = &mut padded[((y + 1) * (w + 2) + 1) * c..];
            quantize_u8_transposed(
                Kernel::best(),
                &x[y * w..],
                h * w,
                (w, c),
                (inv, zero),
                dst,
                c,
            );
        }
    }

    /// Pixel `p`'s row (`9 c` bytes) from the padded image.
    fn gather(&self, padded: &[u8], p: usize, row: &mut [u8]) {
        let (c, w) = (self.c, self.w);
        let (y, x) = (p / w, p % w);
        for (ky, dst) in row.chunks_exact_mut(3 * c).take(3).enumerate() {
            dst.copy_from_slice(&padded[((y + ky) * (w + 2) + x) * c..][..3 * c]);
        }
    }
}

fn u8_or_f32(u8: bool) -> DatumType {
    if u8 { DatumType::U8 } else { DatumType::F32 }
}

/// A u8 output on the next int8 layer's input grid: `quantize(gelu(y))` with that layer's
/// quantisation, the same operations as the `Gelu` and `QuantizeLinear` between the two layers
/// (the `Gelu` op's kernel, [`quantize_u8`]), on each task's rows while they are in cache.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct U8Out {
    /// The exact GELU between the layers is applied on this kernel (the replaced `Gelu`'s).
    pub gelu: Kernel,
    pub inv_scale: f32,
    pub zero: u8,
}

impl Op for Int8Linear {
    fn name(&self) -> StaticName {
        "Int8Linear".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "m {} k {} n {} kernel {}{}{}{}{}{}{}",
            self.m,
            self.k,
            self.n,
            self.kernel().name(),
            if self.a_t {
                ", input channels-first"
            } else {
                ""
            },
            if self.c_t {
                ", output channels-first"
            } else {
                ""
            },
            if self.u8_in { ", u8 input" } else { "" },
            if self.im2col.is_some() {
                ", 3x3 convolution"
            } else {
                ""
            },
            if self.u8_out.is_some() {
                ", GELU and u8 output"
            } else {
                ""
            },
            if self.weights.split() {
                " (weights split in two 7-bit halves)"
            } else {
                ""
            }
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for Int8Linear {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        let in_dt = self.in_dt();
        ensure!(
            x.datum_type() == in_dt && x.shape() == &*self.in_shape,
            "Int8Linear: input is {:?} {:?}, planned for {in_dt:?} {:?}",
            x.datum_type(),
            x.shape(),
            self.in_shape
        );
        let xs = x.try_as_plain_ram()?;
        let (xf, xu) = if self.u8_in {
            (&[][..], xs.as_slice::<u8>()?)
        } else {
            (xs.as_slice::<f32>()?, &[][..])
        };
        // SAFETY: every value is written by the tasks below.
        let mut output = unsafe { Tensor::uninitialized_dt(self.out_dt(), &self.out_shape)? };
        let mut plain = output.try_as_plain_ram_mut()?;
        // The output's first byte (u8 or f32 values: each task casts to what it writes).
        let out = SharedMut(match self.u8_out {
            Some(_) => plain.as_slice_mut::<u8>()?.as_mut_ptr(),
            None => plain.as_slice_mut::<f32>()?.as_mut_ptr() as *mut u8,
        });
        let (m, k, n) = (self.m, self.k, self.n);
        let k4 = self.weights.row_len();
        let rq = Requant {
            a_zero: self.a_zero,
            scale: &self.scale,
            bias: &self.bias,
            out_q: Some(self.out_q),
            post_bias: self.post_bias.as_deref().map(|v| &v[..]),
        };
        // A convolution's padded image, quantized once (a pass over the input) before the tasks.
        let padded = self.im2col.map(|g| {
            let mut p = PADDED.with(|p| std::mem::take(&mut *p.borrow_mut()));
            g.pad(xf, (self.a_inv_scale, self.a_zero), &mut p);
            p
        });
        let padded_ref = padded.as_deref().unwrap_or_default();
        let result = par_tasks(m.div_ceil(ROWS), m * k * n, |t| {
            let (r0, rows) = (t * ROWS, ROWS.min(m - t * ROWS));
            SCRATCH.with(|s| {
                let mut s = s.borrow_mut();
                // The task's u8 rows: the input's own (a u8 input has rows of k = k4 bytes,
                // checked when planned), or quantized here.
                let (a, lda) = if self.u8_in {
                    (&xu[r0 * k..], k)
                } else {
                    if s.len() < ROWS * k4 {
                        s.resize(ROWS * k4, 0);
                    }
                    if let Some(g) = self.im2col {
                        for (r, row) in s.chunks_exact_mut(k4).take(rows).enumerate() {
                            g.gather(padded_ref, r0 + r, &mut row[..k]);
                        }
                    } else if self.a_t {
                        let q = (self.a_inv_scale, self.a_zero);
                        quantize_u8_transposed(
                            Kernel::best(),
                            &xf[r0..],
                            m,
                            (rows, k),
                            q,
                            &mut s,
                            k4,
                        );
                    } else {
                        for (r, row) in s.chunks_exact_mut(k4).take(rows).enumerate() {
                            let src = &xf[(r0 + r) * k..(r0 + r + 1) * k];
                            quantize_u8(src, self.a_inv_scale, self.a_zero, &mut row[..k]);
                        }
                    }
                    (&s[..rows * k4], k4)
                };
                if !self.c_t && self.u8_out.is_none() {
                    // SAFETY: task t alone writes output rows r0..r0 + rows.
                    let c = unsafe {
                        std::slice::from_raw_parts_mut(
                            (out.get() as *mut f32).add(r0 * n),
                            rows * n,
                        )
                    };
                    multiply(a, lda, rows, &self.weights, &rq, c, n);
                    return;
                }
                // The rows in a scratch first, then transposed, or made the next layer's u8.
                ROWS_OUT.with(|o| {
                    let mut o = o.borrow_mut();
                    if o.len() < ROWS * n {
                        o.resize(ROWS * n, 0.0);
                    }
                    let o = &mut o[..rows * n];
                    multiply(a, lda, rows, &self.weights, &rq, o, n);
                    if let Some(u) = self.u8_out {
                        gelu_slice(u.gelu, o);
                        // SAFETY: task t alone writes output rows r0..r0 + rows.
                        let c = unsafe {
                            std::slice::from_raw_parts_mut(out.get().add(r0 * n), rows * n)
                        };
                        for (src, dst) in o.chunks_exact(n).zip(c.chunks_exact_mut(n)) {
                            quantize_u8(src, u.inv_scale, u.zero, dst);
                        }
                    } else {
                        let c = (out.get() as *mut f32).wrapping_add(r0);
                        // SAFETY: task t alone writes columns r0..r0 + rows of the n rows of m.
                        unsafe { transpose(Kernel::best(), o, n, (rows, n), c, m) };
                    }
                });
            });
        });
        // Kept for the next run (grown once).
        if let Some(padded) = padded {
            PADDED.with(|p| *p.borrow_mut() = padded);
        }
        result?;
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for Int8Linear {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let f =
            crate::exec::planned_facts("Int8Linear", inputs[0], (&self.in_shape, &self.out_shape))?;
        Ok(tvec!(self.out_dt().fact(f[0].shape.clone())))
    }

    fn cost(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        Ok(tvec!((
            Cost::FMA(DatumType::I32),
            (self.m * self.k * self.n).into()
        )))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{substitute_decluttered, test_values};
    use tract_core::ops::einsum::EinSum;
    use tract_core::ops::quant::{DequantizeLinearF32, quantize_linear_u8};

    /// How a chain's activations and output are laid out.
    #[derive(Clone, Copy, Debug)]
    enum Layout {
        /// `x: [rows, k]` -> `[rows, n]`.
        Rows,
        /// `x: [rows, heads, k / heads]` reduced over both (an attention's output projection).
        Heads(usize),
        /// Channels-first `x: [1, k, rows]` -> `[rows, n]` (SAM's decoder projecting its image
        /// tokens).
        ChannelsFirstIn,
        /// `x: [rows, heads, k / heads]` -> channels-first `[1, n, rows]` (its output projection
        /// back to the image tokens).
        ChannelsFirstOut(usize),
    }

    /// `QuantizeLinearU8 -> EinSum (i8 weights, per-column scales) -> DequantizeLinearF32` in
    /// one of the [`Layout`]s, the chain onnxruntime's quantizer writes, with the bias `Add`
    /// after it (`post_bias`, shaped to broadcast along the output's columns).
    fn chain(
        rows: usize,
        k: usize,
        n: usize,
        layout: Layout,
        b0: i8,
        post_bias: bool,
    ) -> (TypedModel, Vec<f32>) {
        let mut seed = (rows * k + n) as u64;
        let x: Vec<f32> = test_values(&mut seed, rows * k)
            .iter()
            .map(|v| v * 6.0)
            .collect();
        let shape = match layout {
            Layout::Rows => vec![rows, k],
            Layout::Heads(h) | Layout::ChannelsFirstOut(h) => vec![rows, h, k / h],
            Layout::ChannelsFirstIn => vec![1, k, rows],
        };
        let mut m = TypedModel::default();
        let s = m.add_source("x", f32::fact(&shape)).unwrap();
        let d = wire_chain(
            &mut m,
            "l",
            s,
            (k, n),
            layout,
            (6.0, 0.04),
            b0,
            post_bias,
            254.0,
            &mut seed,
        );
        m.select_output_outlets(&[d]).unwrap();
        (m, x)
    }

    /// One chain (`name.*` nodes) on `x`, its activations quantized over `[-ranges.0,
    /// ranges.0]`, its output on a grid `ranges.1` apart, its weights in `(-w_max / 2,
    /// w_max / 2)` (254: 8 bits; 128: 7, what AVX2 runs in one pass).
    #[allow(clippy::too_many_arguments)]
    fn wire_chain(
        m: &mut TypedModel,
        name: &str,
        x: OutletId,
        (k, n): (usize, usize),
        layout: Layout,
        ranges: (f32, f32),
        b0: i8,
        post_bias: bool,
        w_max: f32,
        seed: &mut u64,
    ) -> OutletId {
        let w: Vec<i8> = test_values(seed, k * n)
            .iter()
            .map(|v| (v * w_max) as i8)
            .collect();
        let b_scale: Vec<f32> = (0..n).map(|j| 0.002 + j as f32 * 1e-5).collect();
        let bias: Vec<i32> = (0..n).map(|j| j as i32 * 37 - 500).collect();
        let (a_scale, a_zero, c_scale, c_zero) = (2.0 * ranges.0 / 255.0, 128u8, ranges.1, 120u8);
        let (expr, w_shape): (&str, Vec<usize>) = match layout {
            Layout::Rows => ("mk,kn,n,,,n,n,,->mn", vec![k, n]),
            Layout::Heads(h) => ("mbk,bkn,n,,,n,n,,->mn", vec![h, k / h, n]),
            Layout::ChannelsFirstIn => ("akm,kn,n,,,n,n,,->mn", vec![k, n]),
            Layout::ChannelsFirstOut(h) => ("mbk,bkn,n,,,n,n,,->anm", vec![h, k / h, n]),
        };
        let c_first = matches!(layout, Layout::ChannelsFirstOut(_));
        let nm = |s: &str| format!("{name}.{s}");
        let q = m
            .wire_node(nm("q"), quantize_linear_u8(1.0 / a_scale, a_zero), &[x])
            .unwrap();
        let mut k_ = |s: &str, t: Tensor| m.add_const(nm(s), t).unwrap();
        let consts = [
            k_("w", tensor1(&w).into_shape(&w_shape).unwrap()),
            k_("bias", tensor1(&bias)),
            k_("a0", tensor0(a_zero)),
            k_("a_scale", tensor0(a_scale)),
            k_("b0", tensor1(&vec![b0; n])),
            k_("b_scale", tensor1(&b_scale)),
            k_("c0", tensor0(c_zero)),
            k_("c_scale", tensor0(c_scale)),
        ];
        let mut inputs = vec![q[0]];
        inputs.extend(consts);
        let es = EinSum::newq(expr.parse().unwrap(), i32::datum_type(), u8::datum_type());
        let y = m.wire_node(nm("mm"), es, &inputs).unwrap();
        let d = m
            .wire_node(
                nm("dq"),
                DequantizeLinearF32::new(c_scale, c_zero as i32),
                &y,
            )
            .unwrap();
        if !post_bias {
            return d[0];
        }
        let b: Vec<f32> = (0..n).map(|j| j as f32 * 0.01 - 0.2).collect();
        let b = if c_first {
            tensor1(&b).into_shape(&[1, n, 1]).unwrap()
        } else {
            tensor1(&b).into_shape(&[1, n]).unwrap()
        };
        let b = m.add_const(nm("post"), b).unwrap();
        m.wire_node(nm("add"), tract_core::ops::math::add(), &[d[0], b])
            .unwrap()[0]
    }

    /// The plan as sonomask makes it (declutter, the first rewrites, tract's code
    /// generation, the rest) with `fusions`, run on `x`.
    fn run_own(m: TypedModel, x: &[f32], shape: &[usize], fusions: &crate::Fusions) -> Vec<f32> {
        let k = sonomask_kernels::Kernel::best();
        let mut m = m.into_decluttered().unwrap();
        crate::substitute_decluttered_with(&mut m, k, fusions).unwrap();
        let mut m = m.into_optimized().unwrap();
        let done = crate::substitute_with(&mut m, k, fusions).unwrap();
        assert_eq!(done.int8_chain, !fusions.is_off("int8_chain") as usize);
        exec(m, x, shape)
    }

    /// An optimized plan run on `x`.
    fn exec(m: TypedModel, x: &[f32], shape: &[usize]) -> Vec<f32> {
        let out = m
            .into_runnable()
            .unwrap()
            .run(tvec!(Tensor::from_shape(shape, x).unwrap().into_tvalue()))
            .unwrap();
        crate::f32s(&out[0]).unwrap().to_vec()
    }

    #[test]
    fn a_plan_tells_7_bit_weights_from_8_bit_ones() {
        use sonomask_kernels::int8::WeightBits;
        // 7-bit weights (what AVX2 runs in one pass): the plan's own int8 weights follow them.
        for (w_max, want) in [(254.0, WeightBits::Eight), (128.0, WeightBits::Seven)] {
            let mut seed = 5;
            let mut m = TypedModel::default();
            let s = m.add_source("x", f32::fact([64, 96])).unwrap();
            let (r, f) = ((6.0, 0.04), &crate::Fusions::all());
            let d = wire_chain(
                &mut m,
                "l",
                s,
                (96, 40),
                Layout::Rows,
                r,
                0,
                false,
                w_max,
                &mut seed,
            );
            m.select_output_outlets(&[d]).unwrap();
            let k = sonomask_kernels::Kernel::best();
            let mut m = m.into_decluttered().unwrap();
            let done = crate::substitute_decluttered_with(&mut m, k, f).unwrap();
            assert_eq!(done.int8_linear, 1);
            let mut m = m.into_optimized().unwrap();
            crate::substitute_with(&mut m, k, f).unwrap();
            assert_eq!(crate::rewrite::int8_weight_bits(&m), want, "{w_max}");
        }
    }

    #[test]
    fn an_mlp_passes_u8_between_its_layers_with_the_same_values() {
        use tract_core::ops::element_wise::ElementWiseOp;
        use tract_core::ops::nn::GeluExact;
        // Rows past one task (48); a hidden width of several panels.
        for (rows, k, hidden) in [(100, 32, 96), (7, 24, 64)] {
            let mut seed = 5;
            let x: Vec<f32> = test_values(&mut seed, rows * k)
                .iter()
                .map(|v| v * 6.0)
                .collect();
            let mut m = TypedModel::default();
            let s = m.add_source("x", f32::fact([rows, k])).unwrap();
            let h = wire_chain(
                &mut m,
                "fc1",
                s,
                (k, hidden),
                Layout::Rows,
                (3.0, 0.02),
                0,
                true,
                254.0,
                &mut seed,
            );
            let g = m
                .wire_node("gelu", ElementWiseOp(Box::new(GeluExact {}), None), &[h])
                .unwrap();
            let y = wire_chain(
                &mut m,
                "fc2",
                g[0],
                (hidden, k),
                Layout::Rows,
                (2.5, 0.03),
                0,
                true,
                254.0,
                &mut seed,
            );
            m.select_output_outlets(&[y]).unwrap();
            let shape = [rows, k];
            let apart = run_own(
                m.clone(),
                &x,
                &shape,
                &crate::Fusions::without(&["int8_chain"]).unwrap(),
            );
            let chained = run_own(m, &x, &shape, &crate::Fusions::all());
            assert_eq!(chained.len(), rows * k);
            // The same kernels on the same values: equal bit for bit.
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&chained), bits(&apart), "{rows}x{k}x{hidden}");
            assert!(apart.iter().any(|v| *v != apart[0]));
        }
    }

    fn run(m: TypedModel, x: &[f32], shape: &[usize]) -> Vec<f32> {
        exec(m.into_optimized().unwrap(), x, shape)
    }

    #[test]
    fn replaces_the_chain_and_matches_tract_within_one_output_step() {
        // Rows past one task (48) with a partial last one; channels-first rows past the
        // transposes' 8 x 8 tiles and the quantisation's 64-row runs.
        for (rows, k, n, layout, post) in [
            (50, 64, 40, Layout::Rows, false),
            (7, 130, 17, Layout::Rows, true),
            (49, 128, 32, Layout::Heads(4), true),
            (100, 72, 24, Layout::ChannelsFirstIn, true),
            (13, 20, 9, Layout::ChannelsFirstIn, false),
            (99, 64, 40, Layout::ChannelsFirstOut(4), true),
            (5, 32, 12, Layout::ChannelsFirstOut(2), false),
        ] {
            let (m, x) = chain(rows, k, n, layout, 0, post);
            let shape = m
                .outlet_fact(m.input_outlets().unwrap()[0])
                .unwrap()
                .shape
                .as_concrete()
                .unwrap()
                .to_vec();
            let want = run(m.clone(), &x, &shape);
            let mut ours = m;
            let done = substitute_decluttered(&mut ours, sonomask_kernels::Kernel::best()).unwrap();
            assert_eq!(done.int8_linear, 1, "{rows}x{k}x{n}");
            assert!(ours.nodes.iter().any(|n| n.op_is::<Int8Linear>()));
            // The bias Add is folded in: the op is the output's only producer.
            let out = ours.output_outlets().unwrap()[0];
            assert!(
                ours.nodes[out.node].op_is::<Int8Linear>(),
                "{rows}x{k}x{n} {layout:?} {post}"
            );
            let op = ours
                .nodes
                .iter()
                .find_map(|n| n.op_as::<Int8Linear>())
                .unwrap();
            assert_eq!(
                (op.a_t, op.c_t),
                (
                    matches!(layout, Layout::ChannelsFirstIn),
                    matches!(layout, Layout::ChannelsFirstOut(_))
                ),
                "{layout:?}"
            );
            let got = run(ours, &x, &shape);
            on_the_same_grid(&got, &want, 0.04, &format!("{rows}x{k}x{n}"));
        }
    }

    /// `got` and `want` (tract's) on the same output grid `step` apart: equal but for ties that
    /// round apart (at most one step, on at most 1% of the values), and not constant (the test
    /// sees the product).
    fn on_the_same_grid(got: &[f32], want: &[f32], step: f32, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}");
        let mut off = 0;
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() <= step * 1.001, "{what}: {g} vs {w}");
            off += (g != w) as usize;
        }
        assert!(
            off * 100 <= want.len(),
            "{what}: {off} of {} values off the grid step",
            want.len()
        );
        assert!(want.iter().any(|v| *v != want[0]), "{what}");
    }

    #[test]
    fn replaces_a_quantized_3x3_convolution_and_matches_tract_within_one_output_step() {
        use tract_core::ops::cnn::{Conv, KernelFormat, PaddingSpec, PoolSpec};
        use tract_core::ops::nn::DataFormat;
        // Pixels past one task (48) with a partial last one, image rows of odd widths (a
        // task's rows cross them), channels past the quantisation's eight-channel runs, a
        // one-pixel image (every neighbour the border), with and without the batch axis.
        for (c, co, h, w, batch) in [
            (20, 24, 7, 9, true),
            (9, 16, 3, 70, false),
            (32, 8, 1, 1, true),
        ] {
            let mut seed = (c * co + h * w) as u64;
            let shape = if batch {
                vec![1, c, h, w]
            } else {
                vec![c, h, w]
            };
            let x: Vec<f32> = test_values(&mut seed, c * h * w)
                .iter()
                .map(|v| v * 6.0)
                .collect();
            let wts: Vec<i8> = test_values(&mut seed, co * c * 9)
                .iter()
                .map(|v| (v * 254.0) as i8)
                .collect();
            let k_scale: Vec<f32> = (0..co).map(|j| 0.002 + j as f32 * 1e-5).collect();
            let bias: Vec<i32> = (0..co).map(|j| j as i32 * 37 - 500).collect();
            let (a_scale, a_zero, c_scale, c_zero) = (12.0 / 255.0, 128u8, 0.04f32, 120u8);
            let mut m = TypedModel::default();
            let s = m.add_source("x", f32::fact(&shape)).unwrap();
            let q = m
                .wire_node("q", quantize_linear_u8(1.0 / a_scale, a_zero), &[s])
                .unwrap();
            let mut k_ = |name: &str, t: Tensor| m.add_const(name, t).unwrap();
            let consts = [
                k_("w", tensor1(&wts).into_shape(&[co, c, 3, 3]).unwrap()),
                k_("bias", tensor1(&bias)),
                k_("x0", tensor0(a_zero as i32)),
                k_("x_scale", tensor0(a_scale)),
                k_("k0", tensor0(0i32)),
                k_("k_scale", tensor1(&k_scale)),
                k_("y0", tensor0(c_zero as i32)),
                k_("y_scale", tensor0(c_scale)),
            ];
            let conv = Conv {
                pool_spec: PoolSpec {
                    data_format: if batch {
                        DataFormat::NCHW
                    } else {
                        DataFormat::CHW
                    },
                    kernel_shape: tvec![3, 3],
                    padding: PaddingSpec::Explicit(tvec![1, 1], tvec![1, 1]),
                    dilations: None,
                    strides: None,
                    input_channels: c,
                    output_channels: co,
                },
                kernel_fmt: KernelFormat::OIHW,
                group: 1,
                q_params: Some(u8::datum_type()),
            };
            let mut inputs = vec![q[0]];
            inputs.extend(consts);
            let y = m.wire_node("conv", conv, &inputs).unwrap();
            let d = m
                .wire_node("dq", DequantizeLinearF32::new(c_scale, c_zero as i32), &y)
                .unwrap();
            m.select_output_outlets(&d).unwrap();
            let want = run(m.clone(), &x, &shape);
            let mut ours = m;
            let done = substitute_decluttered(&mut ours, sonomask_kernels::Kernel::best()).unwrap();
            assert_eq!(done.int8_linear, 1, "{c}x{h}x{w}");
            let out = ours.output_outlets().unwrap()[0];
            let op = ours.nodes[out.node].op_as::<Int8Linear>().unwrap();
            assert_eq!(op.im2col, Some(Im2col3x3 { c, h, w }));
            let got = run(ours, &x, &shape);
            on_the_same_grid(&got, &want, c_scale, &format!("{c}->{co} {h}x{w}"));
        }
    }

    #[test]
    fn leaves_a_chain_with_asymmetric_weights_to_tract() {
        // Nonzero weight zero points: not what the kernels assume.
        let (mut m, _) = chain(6, 16, 8, Layout::Rows, 1, false);
        let done = substitute_decluttered(&mut m, sonomask_kernels::Kernel::best()).unwrap();
        assert_eq!(done.int8_linear, 0);
    }
}
