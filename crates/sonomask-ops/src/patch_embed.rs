//! TinyViT's patch embedding in one pass, row by row: a dense 3x3 convolution over the RGB
//! image, GELU, then a dense 3x3 convolution over its result, with that intermediate map
//! never leaving the cache.
//!
//! Why: MobileSAM's embedding is `3 -> 32` channels (stride 2, 1024 -> 512) then `32 -> 64`
//! (stride 2, 512 -> 256). Unfused, the 32 MiB intermediate map is written, read and written
//! by the GELU, split into stride phases (read and written again) and read by the second
//! convolution, and the three nodes scaled poorly to 2 threads (figures: docs/BENCHMARKS.md, appendix, "What each own operator replaced"). Here each thread walks a run of
//! output rows keeping three intermediate rows in a ring (the second convolution's window),
//! stored as even then odd columns so that every tap of 16 neighbouring outputs is 16
//! contiguous values: per output row it computes the next one or two intermediate rows (the
//! first convolution's taps for all 32 channels, GELU), then the second convolution as the
//! [`pointwise`] product over the ring's 288 tap rows.
//!
//! Measured against the unfused plan, interleaved in one process: docs/BENCHMARKS.md,
//! appendix, sixth step.
//!
//! The kernels are the unfused ops' own ([`Conv3x3::dense_rows`], [`gelu_slice`],
//! [`pointwise::multiply`] with the taps in the same order), so the result equals the unfused
//! plan bit for bit (tested with `==`).

use std::cell::RefCell;

use tract_core::internal::*;

use crate::conv_packed::Conv3x3Packed;
use crate::conv3x3::{Conv3x3, RowCache};
use crate::exec::{eval_by_rows, planned_facts};
use crate::f32s;
use crate::gelu::gelu_slice;
use crate::pointwise::{self, Columns};
use crate::ring::{PaddedRow, slot};

thread_local! {
    /// Each thread's ring of intermediate rows and staging row, reused across calls.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `conv2(GELU(conv1(x)))` over a `[1, c, h, w]` (or `[c, h, w]`) f32 image.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchEmbed {
    /// The first convolution (dense, a few input channels), its weights `[c1, c, 3, 3]` and
    /// bias.
    first: Conv3x3,
    first_weights: Vec<f32>,
    first_bias: Vec<f32>,
    /// The second convolution (weights packed, bias), padding 1 before.
    second: Conv3x3Packed,
    in_shape: TVec<usize>,
}

// Plan equality only (tract compares ops to merge duplicates).
impl Eq for PatchEmbed {}

/// The ring's 9 x c1 tap rows for one output row: tap `(c, ky, kx)` at output column `j`.
struct RingTaps {
    starts: Vec<*const f32>,
}

impl Columns for RingTaps {
    fn at(&self, p: usize, j: usize) -> *const f32 {
        self.starts[p].wrapping_add(j)
    }

    fn run_from(&self, _: usize) -> usize {
        usize::MAX
    }
}

impl PatchEmbed {
    /// The fused pair for `first` (a dense [`Conv3x3`] over an input of `in_shape`, with
    /// constant `weights` and `bias`) then GELU then `second`, if they chain: the second reads
    /// the first's output shape, with padding 1 before.
    pub fn fusing(
        (first, weights, bias): (&Conv3x3, &Tensor, &Tensor),
        second: &Conv3x3Packed,
        in_shape: &[usize],
    ) -> Option<Self> {
        let [ci, c1] = first.dense?;
        let r = in_shape.len();
        if r < 3 || in_shape[r - 3] != ci {
            return None;
        }
        let (oh, ow) = first.out_hw(in_shape[r - 2], in_shape[r - 1]);
        let ([c, h, w], _) = second.dims();
        let weights = f32s(weights).ok()?.to_vec();
        let b = f32s(bias).ok()?;
        let first_bias: Vec<f32> = match b.len() {
            0 => vec![0.0; c1],
            1 => vec![b[0]; c1],
            n if n == c1 => b.to_vec(),
            _ => return None,
        };
        let ok = (c, h, w) == (c1, oh, ow)
            && weights.len() == c1 * ci * 9
            && second.pad == (1, 1)
            && (1..=2).contains(&second.stride);
        ok.then(|| PatchEmbed {
            first: first.clone(),
            first_weights: weights,
            first_bias,
            second: second.clone(),
            in_shape: in_shape.into(),
        })
    }

    /// Input channels and size, intermediate channels and size, output channels and size.
    fn dims(&self) -> ([usize; 3], [usize; 3], [usize; 3]) {
        let r = self.in_shape.len();
        let x = [
            self.in_shape[r - 3],
            self.in_shape[r - 2],
            self.in_shape[r - 1],
        ];
        let (mid, out) = self.second.dims();
        (x, mid, out)
    }

    /// Layout of one padded intermediate row in the ring.
    fn padded(&self) -> PaddedRow {
        let (_, [_, _, w1], _) = self.dims();
        PaddedRow {
            w: w1,
            stride: self.second.stride,
        }
    }

    fn scratch_len(&self) -> usize {
        let (_, [c1, _, w1], _) = self.dims();
        c1 * 3 * self.padded().len() + c1 * w1
    }

    /// Output rows `ys`.
    ///
    /// # Safety
    /// `out` addresses the `[c2, oh, ow]` output, of which no one else writes rows `ys`.
    unsafe fn rows(&self, x: &[f32], out: *mut f32, ys: std::ops::Range<usize>) -> TractResult<()> {
        let ([ci, _, w], [c1, _, w1], [_, oh, ow]) = self.dims();
        let s = self.second.stride;
        let (layout, pw) = (self.padded(), self.padded().len());
        let mut caches = self.first.row_caches(ci, w);
        SCRATCH.with_borrow_mut(|scratch| {
            if scratch.len() < self.scratch_len() {
                scratch.resize(self.scratch_len(), 0.0);
            }
            let (ring, staging) = scratch.split_at_mut(c1 * 3 * pw);
            let staging = &mut staging[..c1 * w1];
            layout.zero_padding(ring);
            let mut tag = [None::<isize>; 3];
            for y in ys {
                let top = (s * y) as isize - 1;
                for r in top..top + 3 {
                    if tag[slot(r)] != Some(r) {
                        self.mid_row(x, (ring, staging), slot(r), r, &mut caches)?;
                        tag[slot(r)] = Some(r);
                    }
                }
                // Tap (c, ky, kx) of output column j is padded column s j + kx of row top + ky.
                let base = ring.as_ptr();
                let starts = (0..9 * c1)
                    .map(|p| {
                        let (c, ky, kx) = (p / 9, p % 9 / 3, p % 3);
                        let row = (c * 3 + slot(top + ky as isize)) * pw;
                        base.wrapping_add(row + layout.at(kx))
                    })
                    .collect();
                let taps = RingTaps { starts };
                // SAFETY: each tap row has ow values from its start (the ring row's even or
                // odd half, or the whole padded row); row y of every output plane is ours.
                unsafe {
                    pointwise::multiply(
                        self.second.kernel,
                        &self.second.weights,
                        &taps,
                        (out.add(y * ow), oh * ow),
                        0..ow,
                        Some(&self.second.bias),
                        true,
                    )
                };
            }
            Ok(())
        })
    }

    /// Fills ring slot `slot` with intermediate row `r` after GELU (zeros outside the map: the
    /// second convolution's padding).
    fn mid_row(
        &self,
        x: &[f32],
        (ring, staging): (&mut [f32], &mut [f32]),
        slot: usize,
        r: isize,
        caches: &mut [RowCache],
    ) -> TractResult<()> {
        let ([_, h, w], [c1, h1, w1], _) = self.dims();
        let (layout, pw) = (self.padded(), self.padded().len());
        let rows = ring
            .chunks_exact_mut(3 * pw)
            .map(|p| &mut p[slot * pw..(slot + 1) * pw]);
        if r < 0 || r as usize >= h1 {
            rows.for_each(|row| layout.clear(row));
            return Ok(());
        }
        let st = staging.as_mut_ptr();
        let dst = |oc: usize, _| st.wrapping_add(oc * w1);
        let bias = |oc: usize| self.first_bias[oc];
        let k = (&self.first_weights[..], &bias as &dyn Fn(usize) -> f32);
        let rr = r as usize..r as usize + 1;
        // SAFETY: staging holds c1 rows of w1.
        unsafe { self.first.dense_rows((x, h, w), k, rr, (&dst, c1), caches) }?;
        for (row, st) in rows.zip(staging.chunks_exact_mut(w1)) {
            gelu_slice(self.second.kernel, st);
            layout.store(st, row);
        }
        Ok(())
    }

    fn fma(&self) -> usize {
        let ([ci, _, _], [c1, h1, w1], [c2, oh, ow]) = self.dims();
        9 * ci * c1 * h1 * w1 + 9 * c1 * c2 * oh * ow
    }
}

impl Op for PatchEmbed {
    fn name(&self) -> StaticName {
        "PatchEmbed".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let ([ci, ..], [c1, ..], [c2, ..]) = self.dims();
        Ok(vec![format!(
            "{ci} -> {c1} -> {c2} channels, strides {} and {}, kernel {:?}",
            self.first.stride, self.second.stride, self.second.kernel
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for PatchEmbed {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        let (_, _, [_, oh, _]) = self.dims();
        let shapes = (&self.in_shape[..], &self.second.output_shape[..]);
        eval_by_rows("PatchEmbed", &x, shapes, (oh, self.fma()), |xs, out, ys| {
            // SAFETY: shapes checked; the row runs are disjoint and cover every row.
            unsafe { self.rows(xs, out.get(), ys) }
        })
    }
}

impl TypedOp for PatchEmbed {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        planned_facts(
            "PatchEmbed",
            inputs[0],
            (&self.in_shape, &self.second.output_shape),
        )
    }

    /// Both convolutions' multiply-adds plus tract's cost for the GELU (as the unfused plan).
    fn cost(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let (_, [c1, h1, w1], _) = self.dims();
        let gelus = c1 * h1 * w1;
        Ok(tvec!(
            (Cost::FMA(DatumType::F32), (self.fma() + 14 * gelus).into()),
            (Cost::Div(DatumType::F32), gelus.into())
        ))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use tract_core::ops::cnn::{Conv, KernelFormat, PaddingSpec, PoolSpec};
    use tract_core::ops::element_wise::ElementWiseOp;
    use tract_core::ops::nn::{DataFormat, GeluExact};

    use super::*;
    use crate::{
        Fusions, Replaced, max_abs_diff, run_one, substitute_decluttered, substitute_with,
        test_values,
    };
    use sonomask_kernels::Kernel;

    /// A dense 3x3 convolution from `ci` to `co` channels, stride `s`, padding 1.
    fn conv(ci: usize, co: usize, s: usize) -> Conv {
        Conv {
            pool_spec: PoolSpec {
                data_format: DataFormat::NCHW,
                kernel_shape: tvec![3, 3],
                padding: PaddingSpec::Explicit(tvec![1, 1], tvec![1, 1]),
                dilations: None,
                strides: Some(tvec![s, s]),
                input_channels: ci,
                output_channels: co,
            },
            kernel_fmt: KernelFormat::OIHW,
            group: 1,
            q_params: None,
        }
    }

    /// TinyViT's patch embedding over `[1, c, h, w]`: 3x3 to `c1` channels (stride 2), GELU,
    /// 3x3 to `c2` channels of stride `s2`.
    fn embedding(
        (c, c1, c2): (usize, usize, usize),
        (h, w): (usize, usize),
        s2: usize,
    ) -> TypedModel {
        let mut seed = (c * 7 + c1 * 5 + c2 + h + w) as u64;
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact([1, c, h, w])).unwrap();
        let mut konst = |m: &mut TypedModel, name: &str, shape: &[usize]| {
            let v = test_values(&mut seed, shape.iter().product());
            m.add_const(name, Tensor::from_shape(shape, &v).unwrap())
                .unwrap()
        };
        let (w1, b1) = (
            konst(&mut m, "w1", &[c1, c, 3, 3]),
            konst(&mut m, "b1", &[c1]),
        );
        let y = m.wire_node("conv1", conv(c, c1, 2), &[x, w1, b1]).unwrap()[0];
        let gelu = ElementWiseOp(Box::new(GeluExact {}), None);
        let y = m.wire_node("act", gelu, &[y]).unwrap()[0];
        let (w2, b2) = (
            konst(&mut m, "w2", &[c2, c1, 3, 3]),
            konst(&mut m, "b2", &[c2]),
        );
        let y = m
            .wire_node("conv2", conv(c1, c2, s2), &[y, w2, b2])
            .unwrap();
        m.select_output_outlets(&y).unwrap();
        m
    }

    /// (stock, unfused, fused) outputs and what the fused plan's pass replaced.
    fn run(m: &TypedModel, x: &Tensor, kernel: Kernel) -> ([Vec<f32>; 3], Replaced) {
        let want = run_one(m.clone().into_optimized().unwrap(), x);
        let ours = |except: &[&str]| {
            let mut m = m.clone();
            m.declutter().unwrap();
            substitute_decluttered(&mut m, kernel).unwrap();
            m.optimize().unwrap();
            let done = substitute_with(&mut m, kernel, &Fusions::without(except).unwrap()).unwrap();
            assert!(done.patch_embed == 0 || m.nodes.len() == 2, "{m}");
            (run_one(m, x), done)
        };
        let ((unfused, none), (fused, done)) = (ours(&["patch_embed"]), ours(&[]));
        assert_eq!(none.patch_embed, 0);
        ([want, unfused, fused], done)
    }

    fn input(c: usize, h: usize, w: usize) -> Tensor {
        let mut seed = 3;
        Tensor::from_shape(&[1, c, h, w], &test_values(&mut seed, c * h * w)).unwrap()
    }

    /// (channels: in, between, out), input size, second stride: MobileSAM's 3 -> 32 -> 64 in
    /// small, even and odd sizes (an odd intermediate width leaves a last odd column).
    type Case = ((usize, usize, usize), (usize, usize), usize);
    const CASES: [Case; 4] = [
        ((3, 8, 10), (40, 36), 2),
        ((3, 8, 10), (37, 41), 2),
        ((2, 6, 7), (21, 30), 1),
        ((3, 8, 10), (34, 34), 1),
    ];

    #[test]
    fn fused_embedding_equals_the_unfused_plan_and_matches_tract() {
        for (ch, hw, s2) in CASES {
            let (m, x) = (embedding(ch, hw, s2), input(ch.0, hw.0, hw.1));
            for k in Kernel::available() {
                let ([want, unfused, fused], done) = run(&m, &x, k);
                assert_eq!(done.patch_embed, 1, "{k:?} {ch:?} {hw:?} {s2}");
                assert!(
                    fused == unfused,
                    "{k:?} {ch:?} {hw:?} {s2}: differs from unfused"
                );
                let scale = want.iter().fold(1f32, |a, v| a.max(v.abs()));
                let diff = max_abs_diff(&want, &fused);
                assert!(
                    diff < 1e-5 * scale,
                    "{k:?} {ch:?} {hw:?}: {diff:e} (max {scale})"
                );
            }
        }
    }

    #[cfg(feature = "multithread-mm")]
    #[test]
    fn threads_split_the_rows_without_changing_a_bit() {
        use tract_core::tract_linalg::multithread::{Executor, multithread_tract_scope};
        let (ch, hw, s2) = CASES[1];
        let (m, x) = (embedding(ch, hw, s2), input(ch.0, hw.0, hw.1));
        let ([_, _, one], _) = run(&m, &x, Kernel::best());
        let ([_, unfused, three], done) =
            multithread_tract_scope(Executor::multithread(3), || run(&m, &x, Kernel::best()));
        assert_eq!(done.patch_embed, 1);
        assert!(three == one && three == unfused);
    }
}
