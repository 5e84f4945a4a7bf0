//! TinyViT's stage-0 MBConv block in one pass over the image, row by row: `GELU(x +
//! conv3(GELU(dw3x3(GELU(conv1(x))))))`, the expanded activations never leaving the cache.
//!
//! Why: at stage 0 the block expands 64 channels of a 256x256 map to 256 (a 64 MiB tensor),
//! and each of its five nodes reads and writes such a tensor from memory: the two 1x1
//! convolutions ran at 33-36 GFLOP/s (half the products' rate elsewhere), the depthwise pass
//! and the two GELUs are memory-bound, together ~200 ms per block at 1 thread (of 82 GFLOP,
//! these 4.4 take over a quarter of the encoder). Here each thread walks a run of output rows
//! keeping three expanded rows in a ring (the depthwise window): per output row it expands the
//! next input row (GELU applied while it is in cache), runs the depthwise taps and GELU into
//! one row of 256 channels, projects that back to 64 channels, adds the input and applies the
//! last GELU. Rows above and below a thread's run are expanded twice (once by each thread).
//! Measured (same process, interleaved, against the unfused plan): 1.087x the whole encoder
//! at 1 thread, 1.143x at 2; a block 90 ms, of which the two products take 28 ms each (77
//! GFLOP/s), the GELUs ~20, the depthwise taps ~8.
//!
//! The kernels are the unfused ops' own ([`pointwise::multiply`], [`taps_rows`],
//! [`gelu_slice`]) in the same order per value, so the result equals the unfused plan bit for
//! bit (tested with `==`, and to 1e-5 against tract's stock ops).

use std::cell::RefCell;

use tract_core::internal::*;

use super::conv3x3::{Conv3x3, taps_rows};
use super::gelu::gelu_slice;
use super::gemm::Gemm;
use super::pointwise::{self, PackedWeights, Rows};
use super::{SharedMut, par_ranges};
use crate::simd::Kernel;

thread_local! {
    /// Each thread's expanded-row ring, depthwise output row and projected row, reused across
    /// calls (the sizes are pinned by the model, so it is allocated once per thread).
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// A fused inverted-residual block over a `[1, c, h, w]` (or `[c, h, w]`) f32 map.
#[derive(Debug, Clone, PartialEq)]
pub struct MbConv {
    kernel: Kernel,
    /// Block channels (in and out), expanded channels, height, width.
    c: usize,
    e: usize,
    h: usize,
    w: usize,
    /// The 1x1 expansion `[e, c]` and its bias.
    expand: PackedWeights,
    expand_bias: Vec<f32>,
    /// The depthwise 3x3 taps (`[e, 9]`, row-major) and bias.
    taps: Vec<f32>,
    dw_bias: Vec<f32>,
    /// The 1x1 projection `[c, e]` and its bias.
    project: PackedWeights,
    project_bias: Vec<f32>,
    shape: TVec<usize>,
}

// Plan equality only (tract compares ops to merge duplicates).
impl Eq for MbConv {}

impl MbConv {
    /// The fused block for `expand` (a direct 1x1 product over a map of `shape`), depthwise
    /// `dw` with constant `taps` and `bias`, and `project` (a direct 1x1 product back to the
    /// map's channels), if their geometries chain: stride 1, padding 1, the same `h x w`.
    pub fn fusing(
        expand: &Gemm,
        (dw, taps, bias): (&Conv3x3, &Tensor, &Tensor),
        project: &Gemm,
        shape: &[usize],
    ) -> Option<Self> {
        let (de, dp) = (expand.direct.as_ref()?, project.direct.as_ref()?);
        let r = shape.len();
        if !(3..=4).contains(&r) || (r == 4 && shape[0] != 1) {
            return None;
        }
        let (c, h, w) = (shape[r - 3], shape[r - 2], shape[r - 1]);
        let e = de.weights.m;
        let plane = (h * w) as isize;
        // Each 1x1 reads its input's channels and writes its output's as contiguous planes.
        let planar = |g: &Gemm| {
            let [_, (rsb, csb), (rsc, csc)] = g.layout();
            g.batch.iter().all(|d| d.len == 1)
                && g.n.len == h * w
                && (rsb, csb, rsc, csc) == (plane, 1, plane, 1)
        };
        let ok = planar(expand)
            && planar(project)
            && de.weights.k == c
            && dp.weights.m == c
            && dp.weights.k == e
            && dw.dense.is_none()
            && dw.stride == 1
            && dw.pad == [(1, 1), (1, 1)]
            && taps.datum_type() == DatumType::F32
            && taps.shape() == [e, 1, 3, 3]
            && bias.datum_type() == DatumType::F32
            && [0, 1, e].contains(&bias.len());
        if !ok {
            return None;
        }
        let taps = taps
            .try_as_plain_ram()
            .ok()?
            .as_slice::<f32>()
            .ok()?
            .to_vec();
        let b = bias.try_as_plain_ram().ok()?;
        let b = b.as_slice::<f32>().ok()?;
        let dw_bias = (0..e).map(|i| b.get(i).or(b.first()).copied().unwrap_or(0.0));
        let or_zeros = |b: &Option<Vec<f32>>, n: usize| b.clone().unwrap_or_else(|| vec![0.0; n]);
        Some(MbConv {
            kernel: de.kernel,
            c,
            e,
            h,
            w,
            expand: de.weights.clone(),
            expand_bias: or_zeros(&de.bias, e),
            taps,
            dw_bias: dw_bias.collect(),
            project: dp.weights.clone(),
            project_bias: or_zeros(&dp.bias, c),
            shape: shape.into(),
        })
    }

    /// Floats of one thread's scratch: the ring of three padded expanded rows per channel, one
    /// depthwise output row, one projected row.
    fn scratch_len(&self) -> usize {
        self.e * 3 * (self.w + 2) + self.e * self.w + self.c * self.w
    }

    /// Output rows `ys` of the block.
    ///
    /// # Safety
    /// `x` is the `c x h x w` input; `out` addresses the `c x h x w` output, of which no one
    /// else writes rows `ys`.
    unsafe fn rows(&self, x: &[f32], out: *mut f32, ys: std::ops::Range<usize>) {
        let (k, e, h, w) = (self.kernel, self.e, self.h, self.w);
        let pw = w + 2;
        SCRATCH.with_borrow_mut(|s| {
            if s.len() < self.scratch_len() {
                s.resize(self.scratch_len(), 0.0);
            }
            let (ring, rest) = s.split_at_mut(e * 3 * pw);
            let (dwo, proj) = rest.split_at_mut(e * w);
            let proj = &mut proj[..self.c * w];
            // The ring's padding columns are zeros (another op may have used the scratch).
            for row in ring.chunks_exact_mut(pw) {
                row[0] = 0.0;
                row[pw - 1] = 0.0;
            }
            let slot = |r: isize| (r + 1).rem_euclid(3) as usize;
            let mut tag = [None::<isize>; 3];
            for y in ys {
                for r in y as isize - 1..=y as isize + 1 {
                    if tag[slot(r)] != Some(r) {
                        self.expand_row(x, ring, slot(r), r);
                        tag[slot(r)] = Some(r);
                    }
                }
                for (ch, dst) in dwo.chunks_exact_mut(w).enumerate() {
                    let planes = &ring[ch * 3 * pw..(ch + 1) * 3 * pw];
                    let src = |t: usize| {
                        let at = slot(y as isize + t as isize / 3 - 1) * pw + t % 3;
                        &planes[at..at + w]
                    };
                    let taps: &[f32; 9] = self.taps[ch * 9..ch * 9 + 9].try_into().expect("9");
                    taps_rows(k, dst, self.dw_bias[ch], &std::array::from_fn(src), taps);
                    gelu_slice(k, dst);
                }
                let d = Rows {
                    x: dwo.as_ptr(),
                    rs: w,
                };
                // SAFETY: dwo is e rows of w, proj c rows of w.
                unsafe {
                    pointwise::multiply(
                        k,
                        &self.project,
                        &d,
                        (proj.as_mut_ptr(), w),
                        0..w,
                        Some(&self.project_bias),
                        false,
                    )
                };
                for (ch, p) in proj.chunks_exact_mut(w).enumerate() {
                    let at = ch * h * w + y * w;
                    for (v, xv) in p.iter_mut().zip(&x[at..at + w]) {
                        *v += xv;
                    }
                    gelu_slice(k, p);
                    // SAFETY: row y of channel ch is ours (caller's contract).
                    unsafe { std::slice::from_raw_parts_mut(out.add(at), w) }.copy_from_slice(p);
                }
            }
        });
    }

    /// Fills ring slot `slot` with expanded row `r` after GELU (zeros outside the image: the
    /// depthwise convolution's padding).
    fn expand_row(&self, x: &[f32], ring: &mut [f32], slot: usize, r: isize) {
        let (w, pw) = (self.w, self.w + 2);
        let rows = ring
            .chunks_exact_mut(3 * pw)
            .map(|p| &mut p[slot * pw + 1..][..w]);
        if r < 0 || r as usize >= self.h {
            rows.for_each(|row| row.fill(0.0));
            return;
        }
        let xs = Rows {
            x: x[r as usize * w..].as_ptr(),
            rs: self.h * w,
        };
        // SAFETY: x holds c planes of h x w, so c rows of w from row r's start; the ring holds
        // e channels of 3 padded rows, `3 * pw` apart, each with w values from column 1.
        unsafe {
            pointwise::multiply(
                self.kernel,
                &self.expand,
                &xs,
                (ring.as_mut_ptr().add(slot * pw + 1), 3 * pw),
                0..w,
                Some(&self.expand_bias),
                false,
            )
        };
        let rows = ring
            .chunks_exact_mut(3 * pw)
            .map(|p| &mut p[slot * pw + 1..][..w]);
        rows.for_each(|row| gelu_slice(self.kernel, row));
    }

    fn fma(&self) -> usize {
        (2 * self.c * self.e + 9 * self.e) * self.h * self.w
    }
}

impl Op for MbConv {
    fn name(&self) -> StaticName {
        "MbConv".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{} -> {} -> {} channels, {}x{}, kernel {:?}",
            self.c, self.e, self.c, self.h, self.w, self.kernel
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for MbConv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        ensure!(
            x.datum_type() == DatumType::F32 && x.shape() == &*self.shape,
            "MbConv: input is {:?} {:?}, planned for f32 {:?}",
            x.datum_type(),
            x.shape(),
            self.shape
        );
        let xs = x.try_as_plain_ram()?;
        let xs = xs.as_slice::<f32>()?;
        // SAFETY: every row of every channel is written below.
        let mut output = unsafe { Tensor::uninitialized::<f32>(&self.shape)? };
        let mut plain = output.try_as_plain_ram_mut()?;
        let out = SharedMut(plain.as_slice_mut::<f32>()?.as_mut_ptr());
        par_ranges(self.h, self.fma(), |ys| {
            // SAFETY: shapes checked above; the row runs are disjoint.
            unsafe { self.rows(xs, out.get(), ys) }
        })?;
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for MbConv {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(
            inputs[0].shape.as_concrete() == Some(&*self.shape),
            "MbConv: input fact {:?}, planned for {:?}",
            inputs[0].shape,
            self.shape
        );
        Ok(tvec!(f32::fact(&*self.shape)))
    }

    /// The products' and taps' multiply-adds plus tract's cost for the three GELUs (so that
    /// profiles count the same work as the unfused plan's).
    fn cost(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let gelus = (2 * self.e + self.c) * self.h * self.w;
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
    use crate::model::fast_ops::{
        Replaced, max_abs_diff, run_one, substitute_decluttered, substitute_except, test_values,
    };

    /// A `k x k` convolution from `ci` to `co` channels in `group`s, stride `s`, padding `k / 2`.
    fn conv(ci: usize, co: usize, group: usize, k: usize, s: usize) -> Conv {
        let p = k / 2;
        Conv {
            pool_spec: PoolSpec {
                data_format: DataFormat::NCHW,
                kernel_shape: tvec![k, k],
                padding: PaddingSpec::Explicit(tvec![p, p], tvec![p, p]),
                dilations: None,
                strides: Some(tvec![s, s]),
                input_channels: ci,
                output_channels: co,
            },
            kernel_fmt: KernelFormat::OIHW,
            group,
            q_params: None,
        }
    }

    /// TinyViT's MBConv over `[1, c, h, w]`: 1x1 to `e` channels, GELU, depthwise 3x3 of
    /// `stride`, GELU, 1x1 back to `c`, then (with `residual`) `+ x` and GELU.
    fn block(
        c: usize,
        e: usize,
        (h, w): (usize, usize),
        stride: usize,
        residual: bool,
    ) -> TypedModel {
        let mut seed = (c * 131 + e * 17 + h + w) as u64;
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact([1, c, h, w])).unwrap();
        let mut konst = |m: &mut TypedModel, name: &str, shape: &[usize], scale: f32| {
            let n = shape.iter().product();
            let v: Vec<f32> = test_values(&mut seed, n)
                .iter()
                .map(|v| v * scale)
                .collect();
            m.add_const(name, Tensor::from_shape(shape, &v).unwrap())
                .unwrap()
        };
        let gelu = |m: &mut TypedModel, name: &str, i: OutletId| {
            m.wire_node(name, ElementWiseOp(Box::new(GeluExact {}), None), &[i])
                .unwrap()[0]
        };
        let (w1, b1) = (
            konst(&mut m, "w1", &[e, c, 1, 1], 1.0),
            konst(&mut m, "b1", &[e], 1.0),
        );
        let y = m
            .wire_node("conv1", conv(c, e, 1, 1, 1), &[x, w1, b1])
            .unwrap()[0];
        let y = gelu(&mut m, "act1", y);
        let (wd, bd) = (
            konst(&mut m, "wd", &[e, 1, 3, 3], 1.0),
            konst(&mut m, "bd", &[e], 1.0),
        );
        let y = m
            .wire_node("conv2", conv(e, e, e, 3, stride), &[y, wd, bd])
            .unwrap()[0];
        let y = gelu(&mut m, "act2", y);
        let (w3, b3) = (
            konst(&mut m, "w3", &[c, e, 1, 1], 0.5),
            konst(&mut m, "b3", &[c], 1.0),
        );
        let mut y = m
            .wire_node("conv3", conv(e, c, 1, 1, 1), &[y, w3, b3])
            .unwrap()[0];
        if residual {
            y = m
                .wire_node("add", tract_core::ops::math::add(), &[y, x])
                .unwrap()[0];
            y = gelu(&mut m, "act3", y);
        }
        m.select_output_outlets(&[y]).unwrap();
        m
    }

    /// The block through tract alone, and through our replacements with `kernel`, without
    /// and with the fusion: (stock, unfused, fused), and what the fused plan's pass replaced.
    fn run(model: &TypedModel, x: &Tensor, kernel: Kernel) -> ([Vec<f32>; 3], Replaced) {
        let want = run_one(model.clone().into_optimized().unwrap(), x);
        let ours = |except: &[&str]| {
            let mut m = model.clone();
            m.declutter().unwrap();
            substitute_decluttered(&mut m, kernel).unwrap();
            m.optimize().unwrap();
            let done = substitute_except(&mut m, kernel, except).unwrap();
            (run_one(m, x), done)
        };
        let (unfused, none) = ours(&["mbconv"]);
        let (fused, done) = ours(&[]);
        assert_eq!(none.mbconv, 0);
        ([want, unfused, fused], done)
    }

    /// Whether tract leaves such blocks channels-first, as the fusion needs. On aarch64 its
    /// declutter turns them channels-last (the products write pixels x channels, the depthwise
    /// kernel goes tap-major) and keeps its own `DepthWiseConv`, so there is no chain to fuse.
    const FUSABLE: bool = cfg!(target_arch = "x86_64");

    fn input(c: usize, h: usize, w: usize) -> Tensor {
        let mut seed = 7;
        Tensor::from_shape(&[1, c, h, w], &test_values(&mut seed, c * h * w)).unwrap()
    }

    #[test]
    fn fused_block_equals_the_unfused_plan_and_matches_tract() {
        // 20 expanded channels (row blocks of 6 and 2), widths with a partial 16-pixel tile.
        for (c, e, hw) in [(8, 20, (17, 19)), (6, 24, (16, 16)), (4, 16, (9, 40))] {
            let (m, x) = (block(c, e, hw, 1, true), input(c, hw.0, hw.1));
            for k in Kernel::available() {
                let ([want, unfused, fused], done) = run(&m, &x, k);
                assert_eq!(done.mbconv, FUSABLE as usize, "{k:?} {c} {e} {hw:?}");
                assert!(
                    fused == unfused,
                    "{k:?} {c} {e} {hw:?}: fused differs from unfused"
                );
                let scale = want.iter().fold(1f32, |a, v| a.max(v.abs()));
                let diff = max_abs_diff(&want, &fused);
                assert!(
                    diff < 1e-5 * scale,
                    "{k:?} {c} {e} {hw:?}: {diff:e} (max {scale})"
                );
            }
        }
    }

    #[cfg(feature = "multithread-mm")]
    #[test]
    fn threads_split_the_rows_without_changing_a_bit() {
        use tract_core::tract_linalg::multithread::{Executor, multithread_tract_scope};
        let (m, x) = (block(8, 20, (23, 17), 1, true), input(8, 23, 17));
        let ([_, _, one], _) = run(&m, &x, Kernel::best());
        // Three threads: twelve runs of one or two rows, each expanding the rows around it.
        let ([_, unfused, three], done) =
            multithread_tract_scope(Executor::multithread(3), || run(&m, &x, Kernel::best()));
        assert_eq!(done.mbconv, FUSABLE as usize);
        assert!(three == one && three == unfused);
    }

    #[test]
    fn other_blocks_are_left_alone() {
        // A strided depthwise convolution (a patch merging), and a block without its residual.
        for stride in [2, 1] {
            let m = block(8, 20, (16, 16), stride, false);
            let ([want, unfused, fused], done) = run(&m, &input(8, 16, 16), Kernel::best());
            assert_eq!(done.mbconv, 0);
            assert!(fused == unfused && max_abs_diff(&want, &fused) < 1e-4);
        }
    }
}
