//! A chain of data-movement nodes (reshapes, axis moves, zero padding, slices) as one threaded
//! copy of contiguous runs, optionally added into the tensor its result is added to.
//!
//! Why: TinyViT partitions each block's tokens into windows (zero padding to whole windows,
//! then a transpose) and reverses that after the attention (a transpose, two crops), then adds
//! the residual. tract runs each step as its own single-threaded pass over the activations,
//! not faster at 2 threads (figures: docs/BENCHMARKS.md, appendix, "What each own operator replaced"). The whole chain
//! is one fixed permutation with zeros: the channels (the last axis) stay contiguous, so it is
//! a list of runs `(destination, source or zeros, length)`, copied (or added) in one pass by
//! all threads.
//!
//! The runs are found by evaluating the chain's own tract operators once, at load, on the
//! element numbers `1..=n` (as i64; padding gives 0), so the op is exactly what the chain
//! computes, whatever tract made of the reshapes. The values are copied (and added in the
//! same order as tract's `Add`): bit-identical to the chain.

use tract_core::internal::*;
use tract_core::ops::array::{Pad, PadMode, Slice};
use tract_core::ops::change_axes::{AxisOp, IntoShape};

use crate::exec::{SharedMut, par_tasks};

/// Shortest mean run taken: shorter runs (a transpose of the last axis) copy too little per
/// run to beat tract's transpose.
const MIN_MEAN_RUN: usize = 32;
/// Elements per thread task.
const TASK: usize = 16 * 1024;

/// One run of the output: `len` values from `dst` on, copied from the input at `src` (zeros
/// where `None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Run {
    dst: usize,
    src: Option<usize>,
    len: usize,
}

/// The fused chain: input 0 moved into the output (zeros where padded), or, with `add`, added
/// into input 1 (a tensor of the output's shape).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MoveRuns {
    input_shape: TVec<usize>,
    output_shape: TVec<usize>,
    runs: Vec<Run>,
    /// Run ranges per thread task.
    tasks: Vec<(usize, usize)>,
    add: bool,
}

/// Whether `op` only moves, pads with zeros, slices or reshapes its one input of rank `rank`,
/// keeping the last axis in place (a move of the last axis is a transpose: runs of one value).
pub fn is_movement(op: &dyn TypedOp, rank: usize) -> bool {
    if let Some(pad) = op.downcast_ref::<Pad>() {
        return matches!(&pad.mode, PadMode::Constant(c)
            if c.cast_to_scalar::<f32>().is_ok_and(|v| v == 0.0));
    }
    let last = rank.saturating_sub(1);
    op.downcast_ref::<IntoShape>().is_some()
        || op.downcast_ref::<Slice>().is_some()
        || match op.downcast_ref::<AxisOp>() {
            Some(AxisOp::Move(from, to)) => *from != last && *to != last,
            Some(AxisOp::Reshape(..) | AxisOp::Add(_) | AxisOp::Rm(_)) => true,
            _ => false,
        }
}

/// Whether `op` copies its input (a reshape does not; a pad, slice or axis move does).
pub fn copies(op: &dyn TypedOp) -> bool {
    op.downcast_ref::<Pad>().is_some()
        || op.downcast_ref::<Slice>().is_some()
        || matches!(op.downcast_ref::<AxisOp>(), Some(AxisOp::Move(..)))
}

impl MoveRuns {
    /// The op computing `ops` applied in turn to an f32 tensor of `input_shape` (then, with
    /// `add`, added to a second input), if its output is made of runs at least
    /// [`MIN_MEAN_RUN`] long on average.
    pub fn of_chain(
        input_shape: &[usize],
        ops: &[Box<dyn TypedOp>],
        add: bool,
    ) -> TractResult<Option<Self>> {
        let n: usize = input_shape.iter().product();
        if n == 0 || n >= i64::MAX as usize {
            return Ok(None);
        }
        let mut m = TypedModel::default();
        let mut wire = m.add_source("x", i64::fact(input_shape))?;
        for (i, op) in ops.iter().enumerate() {
            wire = m.wire_node(format!("step{i}"), op.clone(), &[wire])?[0];
        }
        m.select_output_outlets(&[wire])?;
        let numbers = Tensor::from_shape(input_shape, &(1..=n as i64).collect::<Vec<_>>())?;
        let out = m.into_runnable()?.run(tvec!(numbers.into_tvalue()))?;
        let out = out[0].try_as_plain_ram()?;
        let output_shape: TVec<usize> = out.shape().into();
        let mut runs: Vec<Run> = Vec::new();
        for (dst, &v) in out.as_slice::<i64>()?.iter().enumerate() {
            let src = (v > 0).then(|| v as usize - 1);
            match runs.last_mut() {
                Some(r)
                    if r.src.map(|s| s + r.len) == src || (r.src.is_none() && src.is_none()) =>
                {
                    r.len += 1
                }
                _ => runs.push(Run { dst, src, len: 1 }),
            }
        }
        let total: usize = output_shape.iter().product();
        if runs.is_empty() || total / runs.len() < MIN_MEAN_RUN {
            return Ok(None);
        }
        let mut tasks = Vec::new();
        let (mut start, mut size) = (0, 0);
        for (i, r) in runs.iter().enumerate() {
            size += r.len;
            if size >= TASK {
                tasks.push((start, i + 1));
                (start, size) = (i + 1, 0);
            }
        }
        if start < runs.len() {
            tasks.push((start, runs.len()));
        }
        Ok(Some(MoveRuns {
            input_shape: input_shape.into(),
            output_shape,
            runs,
            tasks,
            add,
        }))
    }
}

impl Op for MoveRuns {
    fn name(&self) -> StaticName {
        "MoveRuns".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{:?} -> {:?}, {} runs, add {}",
            self.input_shape,
            self.output_shape,
            self.runs.len(),
            self.add
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for MoveRuns {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, mut inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(
            inputs.len() == 1 + self.add as usize,
            "MoveRuns: {} inputs",
            inputs.len()
        );
        let x = &inputs[0];
        ensure!(
            x.datum_type() == DatumType::F32 && x.shape() == &*self.input_shape,
            "MoveRuns: input {:?} {:?}, planned for f32 {:?}",
            x.datum_type(),
            x.shape(),
            self.input_shape
        );
        let mut output = if self.add {
            let other = inputs
                .pop()
                .unwrap_or_else(|| unreachable!("two inputs checked"));
            ensure!(
                other.datum_type() == DatumType::F32 && other.shape() == &*self.output_shape,
                "MoveRuns: added input {:?} {:?}, planned for f32 {:?}",
                other.datum_type(),
                other.shape(),
                self.output_shape
            );
            other.into_tensor()
        } else {
            // SAFETY: every element is written by a run below.
            unsafe { Tensor::uninitialized::<f32>(&self.output_shape)? }
        };
        let src = inputs[0].try_as_plain_ram()?.as_slice::<f32>()?;
        let mut plain = output.try_as_plain_ram_mut()?;
        let out = SharedMut(plain.as_slice_mut::<f32>()?.as_mut_ptr());
        let total = self.output_shape.iter().product::<usize>();
        par_tasks(self.tasks.len(), total, |t| {
            let (a, b) = self.tasks[t];
            for r in &self.runs[a..b] {
                // SAFETY: the runs cover disjoint parts of the output, inside it (built from
                // the output's own element numbers); tasks take disjoint runs.
                let dst = unsafe { std::slice::from_raw_parts_mut(out.get().add(r.dst), r.len) };
                match (r.src, self.add) {
                    (Some(s), false) => dst.copy_from_slice(&src[s..s + r.len]),
                    (Some(s), true) => {
                        for (d, &x) in dst.iter_mut().zip(&src[s..s + r.len]) {
                            *d += x;
                        }
                    }
                    (None, false) => dst.fill(0.0),
                    // As tract's add of the zeros (a -0.0 becomes 0.0).
                    (None, true) => dst.iter_mut().for_each(|d| *d += 0.0),
                }
            }
        })?;
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for MoveRuns {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(
            inputs.first().and_then(|f| f.shape.as_concrete()) == Some(&*self.input_shape),
            "MoveRuns: input facts {inputs:?}, planned for {:?}",
            self.input_shape
        );
        Ok(tvec!(f32::fact(&*self.output_shape)))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use tract_core::ops::einsum::EinSum;
    use tract_core::ops::math::add;

    use super::*;
    use crate::{Replaced, substitute, test_values};

    /// A TinyViT block's window partition of `[h, w, c]` tokens into `win x win` windows
    /// (zero padding to whole windows), the reverse with the crop, and the residual add:
    /// `out = x + reverse(mix(partition(x)))`, where `mix` (standing for the attention) mixes
    /// the tokens of each window, so that tract cannot move the reshapes through it.
    fn windows_model(h: usize, w: usize, c: usize, win: usize) -> TypedModel {
        let (ph, pw) = (h.next_multiple_of(win), w.next_multiple_of(win));
        let (nh, nw) = (ph / win, pw / win);
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact([h * w, c])).unwrap();
        let wire = |m: &mut TypedModel, name: &str, op: Box<dyn TypedOp>, i: OutletId| {
            m.wire_node(name, op, &[i]).unwrap()[0]
        };
        let reshape = |from: &[usize], to: &[usize]| -> Box<dyn TypedOp> {
            Box::new(AxisOp::Reshape(
                0,
                from.iter().map(|&d| d.into()).collect(),
                to.iter().map(|&d| d.into()).collect(),
            ))
        };
        let t = wire(&mut m, "to_map", reshape(&[h * w], &[h, w]), x);
        let pad = Pad {
            pads: vec![(0, ph - h), (0, pw - w), (0, 0)],
            mode: PadMode::Constant(Arc::new(tensor0(0f32))),
        };
        let t = wire(&mut m, "pad", Box::new(pad), t);
        let t = wire(&mut m, "split", reshape(&[ph, pw], &[nh, win, nw, win]), t);
        let t = wire(&mut m, "partition", Box::new(AxisOp::Move(2, 1)), t);
        let t = wire(
            &mut m,
            "windows",
            reshape(&[nh, nw, win, win], &[nh * nw, win * win]),
            t,
        );
        let tokens = win * win;
        let mut seed = 5;
        let mix = Tensor::from_shape(&[tokens, tokens], &test_values(&mut seed, tokens * tokens))
            .unwrap();
        let mix = m.add_const("mix", mix).unwrap();
        let einsum = EinSum::new("wtc,ts->wsc".parse().unwrap(), DatumType::F32);
        let t = m.wire_node("attention", einsum, &[t, mix]).unwrap()[0];
        let t = wire(
            &mut m,
            "unwindows",
            reshape(&[nh * nw, win * win], &[nh, nw, win, win]),
            t,
        );
        let t = wire(&mut m, "reverse", Box::new(AxisOp::Move(1, 2)), t);
        let t = wire(&mut m, "merge", reshape(&[nh, win, nw, win], &[ph, pw]), t);
        let t = wire(&mut m, "crop_h", Box::new(Slice::new(0, 0, h)), t);
        let t = wire(&mut m, "crop_w", Box::new(Slice::new(1, 0, w)), t);
        let t = wire(&mut m, "to_tokens", reshape(&[h, w], &[h * w]), t);
        let out = m.wire_node("residual", add(), &[x, t]).unwrap();
        m.select_output_outlets(&out).unwrap();
        m
    }

    fn run(m: TypedModel, x: &Tensor) -> Vec<f32> {
        crate::run_one(m, x)
    }

    #[test]
    fn window_partition_and_reverse_equal_the_chains() {
        for (h, w, c, win) in [(13, 11, 40, 7), (16, 16, 32, 8), (9, 20, 64, 4)] {
            let mut seed = (h * w + c) as u64;
            let x = Tensor::from_shape(&[h * w, c], &test_values(&mut seed, h * w * c)).unwrap();
            let stock = windows_model(h, w, c, win).into_optimized().unwrap();
            let want = run(stock.clone(), &x);
            let mut ours = stock;
            let done = substitute(&mut ours, sonomask_kernels::Kernel::best()).unwrap();
            assert_eq!(
                (done.movement, done.movement_add),
                (2, 1),
                "{h}x{w}x{c} win {win}"
            );
            let names: Vec<_> = ours.nodes.iter().map(|n| n.op.name().to_string()).collect();
            // Left: the two transposes tract puts around its own product (of the last axis).
            let count = |op: &str| names.iter().filter(|n| *n == op).count();
            assert_eq!(
                [
                    count("MoveAxis"),
                    count("Pad"),
                    count("Slice"),
                    count("OptAddUnicast")
                ],
                [2, 0, 0, 0],
                "{names:?}"
            );
            assert!(
                run(ours, &x) == want,
                "{h}x{w}x{c} win {win}: not bit-identical"
            );
        }
    }

    #[test]
    fn transposes_of_the_last_axis_stay_with_tract() {
        // [c, n] -> [n, c]: runs of one value.
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact([64, 300])).unwrap();
        let t = m.wire_node("t", AxisOp::Move(0, 1), &[x]).unwrap();
        m.select_output_outlets(&t).unwrap();
        let mut m = m.into_optimized().unwrap();
        let done = substitute(&mut m, sonomask_kernels::Kernel::best()).unwrap();
        assert_eq!(done, Replaced::default());
    }
}
