//! Constant padding of a plain tensor by whole-row copies.
//!
//! Why: tract's `Pad` fills the output and assigns the input through an n-d ndarray slice view;
//! on the encoder's 32x512x512 patch-embedding pad it ran far below memory speed (figures: docs/BENCHMARKS.md, appendix, "What each own operator replaced"). Here the output
//! is filled once and every innermost input row lands with one `copy_from_slice`.

use tract_core::internal::*;
use tract_core::ops::array::{Pad, PadMode};

/// Drop-in for tract's constant-mode [`Pad`] on f32; other modes and types are not replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowPad {
    pub pads: Vec<(usize, usize)>,
    /// The pad value's bits (f32 has no `Eq`, which tract's ops need).
    pub value_bits: u32,
}

impl RowPad {
    /// The replacement for `op` on an `f32` input, if `op` pads with a constant.
    pub fn replacing(op: &Pad, dt: DatumType) -> Option<Self> {
        let PadMode::Constant(v) = &op.mode else {
            return None;
        };
        if dt != DatumType::F32 || op.pads.is_empty() {
            return None;
        }
        let value = v.cast_to_scalar::<f32>().ok()?;
        Some(RowPad {
            pads: op.pads.clone(),
            value_bits: value.to_bits(),
        })
    }

    fn pad(&self, input: &[f32], shape: &[usize], out: &mut [f32]) {
        let value = f32::from_bits(self.value_bits);
        out.fill(value);
        let rank = shape.len();
        let row = shape[rank - 1];
        let out_shape: Vec<usize> = shape
            .iter()
            .zip(&self.pads)
            .map(|(d, (a, b))| d + a + b)
            .collect();
        let mut out_strides = vec![1usize; rank];
        for i in (0..rank - 1).rev() {
            out_strides[i] = out_strides[i + 1] * out_shape[i + 1];
        }
        let before = self.pads[rank - 1].0;
        if row == 0 || input.is_empty() {
            return;
        }
        let mut idx = vec![0usize; rank - 1];
        for src in input.chunks_exact(row) {
            let mut off = before;
            for (i, &ix) in idx.iter().enumerate() {
                off += (ix + self.pads[i].0) * out_strides[i];
            }
            out[off..off + row].copy_from_slice(src);
            // Next outer index, last axis fastest.
            for i in (0..rank - 1).rev() {
                idx[i] += 1;
                if idx[i] < shape[i] {
                    break;
                }
                idx[i] = 0;
            }
        }
    }
}

impl Op for RowPad {
    fn name(&self) -> StaticName {
        "RowPad".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "pads {:?} value {}",
            self.pads,
            f32::from_bits(self.value_bits)
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for RowPad {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        ensure!(
            input.rank() == self.pads.len() && input.datum_type() == DatumType::F32,
            "RowPad: expected f32 of rank {}, got {:?} of rank {}",
            self.pads.len(),
            input.datum_type(),
            input.rank()
        );
        let shape = input.shape().to_vec();
        let out_shape: Vec<usize> = shape
            .iter()
            .zip(&self.pads)
            .map(|(d, (a, b))| d + a + b)
            .collect();
        // SAFETY: every element is written by `pad` (fill, then copies).
        let mut output = unsafe { Tensor::uninitialized::<f32>(&out_shape)? };
        let src = input.try_as_plain_ram()?;
        let mut dst = output.try_as_plain_ram_mut()?;
        self.pad(src.as_slice::<f32>()?, &shape, dst.as_slice_mut::<f32>()?);
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for RowPad {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut fact = inputs[0].without_value();
        ensure!(fact.rank() == self.pads.len(), "RowPad: rank mismatch");
        let dims = fact.shape.to_tvec();
        for (axis, (d, (a, b))) in dims.iter().zip(&self.pads).enumerate() {
            fact.shape.set(axis, d.clone() + *a + *b);
        }
        Ok(tvec!(fact))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::f32s;

    #[test]
    fn equals_tract_pad_exactly() {
        for (shape, pads) in [
            (vec![1usize, 3, 5, 4], vec![(0, 0), (0, 0), (1, 1), (1, 1)]),
            (vec![2, 3, 4], vec![(1, 0), (0, 2), (3, 1)]),
            (vec![6], vec![(2, 5)]),
            (vec![2, 0, 3], vec![(0, 0), (1, 1), (0, 0)]),
        ] {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 3.0).collect();
            let x = Tensor::from_shape(&shape, &data).unwrap();
            let stock = Pad::new(pads.clone(), PadMode::Constant(rctensor0(-1.25f32)));
            let want = stock
                .eval_out_of_plan(tvec!(x.clone().into_tvalue()))
                .unwrap()
                .unwrap();
            let ours = RowPad::replacing(&stock, DatumType::F32).unwrap();
            let got = ours
                .eval_out_of_plan(tvec!(x.into_tvalue()))
                .unwrap()
                .unwrap();
            assert_eq!(got[0].shape(), want[0].shape(), "{shape:?} {pads:?}");
            assert_eq!(
                f32s(&got[0]).unwrap(),
                f32s(&want[0]).unwrap(),
                "{shape:?} {pads:?}"
            );
        }
    }

    #[test]
    fn only_constant_f32_pads_are_replaced() {
        let edge = Pad::new(vec![(1, 1)], PadMode::Edge);
        assert!(RowPad::replacing(&edge, DatumType::F32).is_none());
        let c = Pad::new(vec![(1, 1)], PadMode::Constant(rctensor0(0f32)));
        assert!(RowPad::replacing(&c, DatumType::F16).is_none());
        assert!(RowPad::replacing(&c, DatumType::F32).is_some());
    }
}
