//! What the operators' `eval`s share: running tasks on tract's threads, an output shared by
//! them, and the checks of a planned op's input.

use tract_onnx::prelude::*;

/// An output buffer shared by the threads of one operator, each writing its own disjoint part.
pub(crate) struct SharedMut<T = f32>(pub *mut T);
// Not derived: a derive would ask `T: Copy`, and the wrapper copies its pointer whatever `T` is.
impl<T> Clone for SharedMut<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SharedMut<T> {}
// SAFETY: the operators hand each task a disjoint part of the buffer (see their `eval`).
unsafe impl<T> Send for SharedMut<T> {}
unsafe impl<T> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    /// The pointer (a method, so that closures capture the whole `Sync` wrapper).
    pub(crate) fn get(self) -> *mut T {
        self.0
    }
}

/// Runs `task(i)` for every `i < n` on tract's threads (runs of consecutive ids per thread);
/// `cost` is the work in elements, below tract's threshold everything runs inline.
pub(crate) fn par_tasks(
    n: usize,
    cost: usize,
    task: impl Fn(usize) + Send + Sync,
) -> TractResult<()> {
    let mut ids: Vec<usize> = (0..n).collect();
    tract_core::tract_linalg::multithread::par_chunks_mut(&mut ids, 1, cost, |_, chunk| {
        chunk.iter().for_each(|&i| task(i));
        Ok(())
    })
}

/// The eval of an operator that computes its output a few rows at a time, carrying state from
/// one row to the next (the fused row-by-row ops): checks that `x` is f32 of `in_shape`,
/// allocates the `out_shape` output and runs `rows(x, out, range)` over runs of consecutive
/// rows covering `0..n` on tract's threads (a few runs per thread; `cost` in elements decides
/// whether to thread). An error from any run is the op's.
///
/// `rows` gets the output as a raw pointer: each run must write only its own rows, and all runs
/// together every element (it is not initialised).
pub(crate) fn eval_by_rows(
    name: &str,
    x: &TValue,
    (in_shape, out_shape): (&[usize], &[usize]),
    (n, cost): (usize, usize),
    rows: impl Fn(&[f32], SharedMut, std::ops::Range<usize>) -> TractResult<()> + Send + Sync,
) -> TractResult<TVec<TValue>> {
    tract_core::internal::ensure!(
        x.datum_type() == DatumType::F32 && x.shape() == in_shape,
        "{name}: input is {:?} {:?}, planned for f32 {in_shape:?}",
        x.datum_type(),
        x.shape(),
    );
    let xs = x.try_as_plain_ram()?;
    let xs = xs.as_slice::<f32>()?;
    // SAFETY: `rows` writes every element (its contract).
    let mut output = unsafe { Tensor::uninitialized::<f32>(out_shape)? };
    let mut plain = output.try_as_plain_ram_mut()?;
    let out = SharedMut(plain.as_slice_mut::<f32>()?.as_mut_ptr());
    let mut ids: Vec<usize> = (0..n).collect();
    tract_core::tract_linalg::multithread::par_chunks_mut(&mut ids, 1, cost, |first, chunk| {
        rows(xs, out, first..first + chunk.len())
    })?;
    Ok(tvec!(output.into_tvalue()))
}

/// `output_facts` of an op planned for an input of `in_shape` and an f32 output of `out_shape`.
pub(crate) fn planned_facts(
    name: &str,
    input: &TypedFact,
    (in_shape, out_shape): (&[usize], &[usize]),
) -> TractResult<TVec<TypedFact>> {
    tract_core::internal::ensure!(
        input.shape.as_concrete() == Some(in_shape),
        "{name}: input fact {:?}, planned for {in_shape:?}",
        input.shape,
    );
    Ok(tvec!(f32::fact(out_shape)))
}
