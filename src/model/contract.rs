//! Model I/O contracts: the tensor names and shapes a role must have. Checked at load so that a
//! wrong file fails at start-up with an error naming the file, the tensor, and both shapes, instead
//! of producing nonsense or a panic deep in a run.

use anyhow::{Result, bail};
use std::fmt;
use std::path::Path;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dim {
    Fixed(usize),
    /// A dimension the model leaves symbolic and the runtime pins per call (e.g. prompt count).
    Any,
}

#[derive(Clone, Debug)]
pub struct TensorContract {
    pub name: &'static str,
    pub shape: Vec<Dim>,
}

#[derive(Clone, Debug)]
pub struct Contract {
    pub inputs: Vec<TensorContract>,
    pub outputs: Vec<TensorContract>,
}

pub(crate) struct ShapeDisplay<'a>(pub &'a [Dim]);

impl fmt::Display for ShapeDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ",")?;
            }
            match d {
                Dim::Fixed(n) => write!(f, "{n}")?,
                Dim::Any => write!(f, "N")?,
            }
        }
        write!(f, "]")
    }
}

fn fixed(shape: &[usize]) -> Vec<Dim> {
    shape.iter().map(|&d| Dim::Fixed(d)).collect()
}

impl TensorContract {
    pub fn fixed(name: &'static str, shape: &[usize]) -> Self {
        TensorContract {
            name,
            shape: fixed(shape),
        }
    }
}

/// Render an ONNX input fact's shape with `?` for unknown and the symbol for symbolic dims.
fn describe(fact: &InferenceFact) -> String {
    let dims: Vec<String> = fact
        .shape
        .dims()
        .map(|d| match d.concretize() {
            Some(t) => t.to_string(),
            None => "?".into(),
        })
        .collect();
    format!(
        "[{}]{}",
        dims.join(","),
        if fact.shape.is_open() { ".." } else { "" }
    )
}

/// Check the parsed ONNX graph's inputs (names, count, rank, fixed dims) before pinning them.
pub fn check_inputs(model: &InferenceModel, file: &Path, c: &Contract) -> Result<()> {
    let outlets = model.input_outlets()?;
    let names: Vec<String> = outlets
        .iter()
        .map(|o| model.node(o.node).name.clone())
        .collect();
    let want: Vec<&str> = c.inputs.iter().map(|t| t.name).collect();
    if names != want {
        bail!(
            "{}: model inputs are {:?}, expected {:?} (wrong model for this role?)",
            file.display(),
            names,
            want
        );
    }
    for (i, t) in c.inputs.iter().enumerate() {
        let fact = model.input_fact(i)?;
        let dims: Vec<_> = fact.shape.dims().collect();
        let rank_ok = if fact.shape.is_open() {
            dims.len() <= t.shape.len()
        } else {
            dims.len() == t.shape.len()
        };
        let dims_ok = dims.iter().zip(&t.shape).all(|(d, want)| {
            match (d.concretize().and_then(|d| d.to_i64().ok()), *want) {
                (Some(have), Dim::Fixed(w)) => have == w as i64,
                _ => true, // symbolic/unknown in the file: pinned below, then checked by type inference
            }
        });
        if !rank_ok || !dims_ok {
            bail!(
                "{}: input '{}' has shape {}, expected {}",
                file.display(),
                t.name,
                describe(fact),
                ShapeDisplay(&t.shape)
            );
        }
    }
    Ok(())
}

/// Check the typed (pinned) graph's outputs: names, and every `Dim::Fixed` axis.
pub fn check_outputs(model: &TypedModel, file: &Path, c: &Contract) -> Result<()> {
    let outlets = model.output_outlets()?;
    if outlets.len() != c.outputs.len() {
        bail!(
            "{}: model has {} outputs, expected {} ({:?})",
            file.display(),
            outlets.len(),
            c.outputs.len(),
            c.outputs.iter().map(|t| t.name).collect::<Vec<_>>()
        );
    }
    for (i, (o, t)) in outlets.iter().zip(&c.outputs).enumerate() {
        let label = model
            .outlet_label(*o)
            .map(str::to_owned)
            .unwrap_or_else(|| model.node(o.node).name.clone());
        if label != t.name {
            bail!(
                "{}: output #{i} is '{label}', expected '{}'",
                file.display(),
                t.name
            );
        }
        let fact = model.outlet_fact(*o)?;
        let have: Option<Vec<usize>> = fact.shape.as_concrete().map(|s| s.to_vec());
        let matches = have.as_ref().is_some_and(|h| {
            h.len() == t.shape.len()
                && h.iter().zip(&t.shape).all(|(&h, d)| match d {
                    Dim::Fixed(n) => h == *n,
                    Dim::Any => true,
                })
        });
        if !matches {
            bail!(
                "{}: output '{}' has shape {:?}, expected {}",
                file.display(),
                t.name,
                fact.shape,
                ShapeDisplay(&t.shape)
            );
        }
    }
    Ok(())
}
