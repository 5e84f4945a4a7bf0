//! Loading an ONNX file into a tract plan: parse once, check the contract, pin every input shape,
//! optimize once, and keep one reusable run state (no per-frame planning or allocation of plans).

use anyhow::{Context, Result, anyhow, bail};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tract_onnx::prelude::*;

use super::contract::{Contract, check_inputs, check_outputs};
use super::fast_ops;

pub type Plan = Arc<TypedRunnableModel>;
pub type State = TypedSimpleState;

/// A parsed, contract-checked ONNX graph, before its inputs are pinned.
#[derive(Clone)]
pub struct Parsed {
    pub file: PathBuf,
    model: InferenceModel,
    contract: Contract,
    /// Plan with tract's operators only (no [`super::fast_ops`] replacements).
    stock_ops: bool,
    /// Which replacements a plan applies (when `stock_ops` is off).
    fusions: fast_ops::Fusions,
}

/// tract errors come as chains; keep them all in one line for the user.
fn flat(e: anyhow::Error) -> anyhow::Error {
    anyhow!("{e:#}")
}

pub fn parse(file: &Path, bytes: &[u8], contract: Contract) -> Result<Parsed> {
    let t = Instant::now();
    let corrupt = || {
        format!(
            "cannot parse ONNX model {} (corrupt or truncated?)",
            file.display()
        )
    };
    let onnx = tract_onnx::onnx();
    let proto = onnx
        .proto_model_for_read(&mut &bytes[..])
        .map_err(flat)
        .with_context(corrupt)?;
    if let Some(graph) = &proto.graph {
        super::quant_check::check(file, &onnx, graph)?;
    }
    let model = onnx
        .model_for_proto_model(&proto)
        .map_err(flat)
        .with_context(corrupt)?;
    check_inputs(&model, file, &contract)?;
    log::debug!(
        "parsed {} in {:.0} ms",
        file.display(),
        t.elapsed().as_secs_f64() * 1e3
    );
    Ok(Parsed {
        file: file.to_path_buf(),
        model,
        contract,
        stock_ops: fast_ops::stock_ops_requested(),
        fusions: fast_ops::Fusions::from_env()?,
    })
}

impl Parsed {
    /// Plans made from here on use tract's stock operators only (`true`) or sonomask's faster
    /// replacements where they apply (`false`, the default unless `SONOMASK_STOCK_OPS` is set).
    pub fn with_stock_ops(mut self, stock: bool) -> Self {
        self.stock_ops = stock;
        self
    }

    /// Plans made from here on apply only the replacements `fusions` leaves on (by default
    /// those [`fast_ops::OWN_OPS_OFF_ENV`] leaves on).
    pub fn with_fusions(mut self, fusions: fast_ops::Fusions) -> Self {
        self.fusions = fusions;
        self
    }

    /// Pin every input to a concrete f32 shape, type-check, check outputs, optimize, plan.
    /// `shapes[i]` is the concrete shape of input `i`; symbolic contract dims take it from there.
    pub fn plan(&self, shapes: &[Vec<usize>]) -> Result<Plan> {
        self.plan_with_constants(shapes, Vec::new())
    }

    /// [`Parsed::plan`] with tract knobs (kernel-selection settings, `benches/knobs.rs`) set
    /// for this model's optimisation only.
    pub fn plan_with_knobs(&self, shapes: &[Vec<usize>], knobs: &[(&str, &str)]) -> Result<Plan> {
        if knobs.is_empty() {
            return self.plan(shapes);
        }
        let scope = tract_core::knobs::KnobScope::new(knobs.iter().copied())
            .map_err(flat)
            .context("internal: bad tract knob")?;
        scope.enter(|| self.plan(shapes))
    }

    /// [`Parsed::plan`] with some inputs fixed to constant values (`(input index, value)`): they
    /// are no longer inputs of the plan, and tract folds what depends on them alone at load.
    pub fn plan_with_constants(
        &self,
        shapes: &[Vec<usize>],
        constants: Vec<(usize, Tensor)>,
    ) -> Result<Plan> {
        let typed: Vec<(DatumType, Vec<usize>)> = shapes
            .iter()
            .map(|s| (f32::datum_type(), s.clone()))
            .collect();
        self.plan_inner(&typed, constants)
    }

    /// [`Parsed::plan`] with an element type per input (token ids are i64).
    pub fn plan_typed(&self, inputs: &[(DatumType, Vec<usize>)]) -> Result<Plan> {
        self.plan_inner(inputs, Vec::new())
    }

    fn plan_inner(
        &self,
        inputs: &[(DatumType, Vec<usize>)],
        constants: Vec<(usize, Tensor)>,
    ) -> Result<Plan> {
        let shapes: Vec<&Vec<usize>> = inputs.iter().map(|(_, s)| s).collect();
        let t = Instant::now();
        let file = &self.file;
        if shapes.len() != self.contract.inputs.len() {
            bail!(
                "internal: {} shapes for {} inputs",
                shapes.len(),
                self.contract.inputs.len()
            );
        }
        let mut model = self.model.clone();
        for (i, (dt, s)) in inputs.iter().enumerate() {
            model = model
                .with_input_fact(i, InferenceFact::dt_shape(*dt, s.as_slice()))
                .map_err(flat)
                .with_context(|| {
                    format!(
                        "{}: cannot pin input '{}' to {:?}",
                        file.display(),
                        self.contract.inputs[i].name,
                        s
                    )
                })?;
        }
        let typed = model.into_typed().map_err(flat).with_context(|| {
            format!(
                "{}: shape/type analysis failed (wrong model for this role?)",
                file.display()
            )
        })?;
        check_outputs(&typed, file, &self.contract)?;
        let typed = pin_inputs(typed, constants, file, &self.contract)?;
        let optimized = self.optimize(typed)?;
        let plan = optimized
            .into_runnable()
            .map_err(flat)
            .with_context(|| format!("{}: planning failed", file.display()))?;
        log::info!(
            "planned {} {:?} in {:.0} ms",
            file.display(),
            shapes.get(1).unwrap_or(&shapes[0]),
            t.elapsed().as_secs_f64() * 1e3
        );
        Ok(plan)
    }
}

impl Parsed {
    /// tract's declutter and code generation, with sonomask's own operators put in where they
    /// apply (convolutions between the two passes, the rest after) unless stock ops were asked.
    fn optimize(&self, mut model: TypedModel) -> Result<TypedModel> {
        let file = &self.file;
        let failed = || format!("{}: optimization failed", file.display());
        model.declutter().map_err(flat).with_context(failed)?;
        if self.stock_ops {
            model.optimize().map_err(flat).with_context(failed)?;
            return Ok(model);
        }
        let k = crate::simd::Kernel::best();
        let replace_failed = || format!("{}: operator replacement failed", file.display());
        let a = fast_ops::substitute_decluttered_with(&mut model, k, &self.fusions)
            .map_err(flat)
            .with_context(replace_failed)?;
        model.optimize().map_err(flat).with_context(failed)?;
        let b = fast_ops::substitute_with(&mut model, k, &self.fusions)
            .map_err(flat)
            .with_context(replace_failed)?;
        log::debug!(
            "{}: own operators: {} int8 linear layers ({} pairs passing u8), {} products ({} with bias, {} reading slices, {} attention pairs \
             fused, {} 1x1 kernel, {} linear kernel, {} small A, {} written heads first ({} with a few-keys attention)), {} 3x3 convs, {} 2x2 transposed convs, {} channels-last depthwise, {} layer norms, {} softmax, {} pad, \
             {} gelu, {} movement chains ({} with their add), {} fused MBConv blocks ({} with an int8 projection), {} fused patch embeddings, \
             {} sums",
            file.display(),
            a.int8_linear,
            b.int8_chain,
            a.gemm,
            a.gemm_bias,
            a.gemm_sliced,
            a.attention,
            a.gemm_direct,
            a.gemm_linear,
            a.gemm_small_a,
            a.heads_first,
            a.few_keys,
            a.depthwise,
            a.deconv,
            a.depthwise_nhwc,
            a.layer_norm,
            b.softmax,
            b.pad,
            b.gelu,
            b.movement,
            b.movement_add,
            b.mbconv,
            b.mbconv_int8,
            b.patch_embed,
            b.add
        );
        Ok(model)
    }
}

/// `model` with inputs `constants` (index in the contract, value) replaced by constants and
/// dropped from its inputs.
fn pin_inputs(
    mut model: TypedModel,
    constants: Vec<(usize, Tensor)>,
    file: &Path,
    contract: &Contract,
) -> Result<TypedModel> {
    if constants.is_empty() {
        return Ok(model);
    }
    let inputs = model.input_outlets().map_err(flat)?.to_vec();
    let mut pinned = Vec::new();
    for (i, value) in constants {
        let (Some(&outlet), Some(c)) = (inputs.get(i), contract.inputs.get(i)) else {
            bail!("internal: no input {i} to pin in {}", file.display());
        };
        let fact = model.outlet_fact(outlet).map_err(flat)?;
        if fact.datum_type != value.datum_type() || fact.shape.as_concrete() != Some(value.shape())
        {
            bail!(
                "internal: {}: input '{}' is {:?}, cannot pin it to {:?} {:?}",
                file.display(),
                c.name,
                fact,
                value.datum_type(),
                value.shape()
            );
        }
        let mut patch = TypedModelPatch::default();
        let k = patch
            .add_const(format!("{}.pinned", c.name), value)
            .map_err(flat)?;
        patch.shunt_outside(&model, outlet, k).map_err(flat)?;
        patch.apply(&mut model).map_err(flat)?;
        pinned.push(outlet);
    }
    let keep: Vec<OutletId> = inputs.into_iter().filter(|o| !pinned.contains(o)).collect();
    model.set_input_outlets(&keep).map_err(flat)?;
    Ok(model)
}

/// Read, verify (manifest size and sha256) and parse the model of `role` in `precision`.
pub fn parse_role(
    manifest: &super::Manifest,
    role: super::Role,
    precision: super::Precision,
    contract: Contract,
) -> Result<Parsed> {
    let entry = manifest.entry(role, precision)?;
    let bytes = manifest.read_verified(entry)?;
    parse(&manifest.path_of(entry), &bytes, contract)
}

/// Refuse a model output with NaN or infinity (a broken or mismatched model), naming it.
pub fn ensure_finite(values: &[f32], what: &str, file: &Path) -> Result<()> {
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        bail!(
            "{}: {what} contains a non-finite value ({} at index {i}); refusing to use it",
            file.display(),
            values[i]
        );
    }
    Ok(())
}

/// A runnable state of an optimized plan. Loading is over for this model by now: the one-off
/// large buffers of parsing and optimizing are handed back (see `heap::release_unused`).
pub fn spawn(plan: &Plan) -> Result<State> {
    let released = crate::heap::release_unused();
    if released > 0 {
        log::debug!(
            "model load: {} MiB of one-off buffers unmapped",
            released >> 20
        );
    }
    plan.spawn().map_err(flat)
}

/// Runs the plan once. Under a multi-thread executor the whole run happens on one of its pool's
/// workers: each operator's parallel section then starts on a worker that is already running
/// instead of waking the pool from outside and parking the caller until it is done (measured
/// faster at 2 threads: docs/BENCHMARKS.md, appendix, sixth step).
pub fn run(state: &mut State, inputs: TVec<TValue>, file: &Path) -> Result<TVec<TValue>> {
    let run = move || state.run(inputs);
    #[cfg(feature = "multithread-mm")]
    let out = {
        use tract_linalg::multithread::{
            Executor, current_tract_executor, multithread_tract_scope,
        };
        match current_tract_executor() {
            Executor::MultiThread(pool) => {
                let ex = Executor::MultiThread(pool.clone());
                pool.install(|| multithread_tract_scope(ex, run))
            }
            _ => run(),
        }
    };
    #[cfg(not(feature = "multithread-mm"))]
    let out = run();
    out.map_err(flat)
        .with_context(|| format!("running {} failed", file.display()))
}

/// Time spent per operator type in one run: (op name, total ms, node count), slowest first.
pub type OpProfile = Vec<(String, f64, usize)>;

/// One node's share of a profiled run.
#[derive(Debug, Clone)]
pub struct NodeTime {
    pub name: String,
    /// Operator name; matrix products carry the kernel tract picked ("OptMatMul with [...]").
    pub op: String,
    pub ms: f64,
    /// Multiply-adds by tract's own cost model (0 where the op reports none).
    pub fma: f64,
    /// Shape of the first output, for telling nodes apart.
    pub out_shape: Vec<usize>,
}

/// Sums a node profile by operator: (op, total ms, nodes), slowest first.
pub fn by_op(nodes: &[NodeTime]) -> OpProfile {
    let mut acc: std::collections::HashMap<&str, (f64, usize)> = std::collections::HashMap::new();
    for n in nodes {
        let e = acc.entry(n.op.as_str()).or_default();
        e.0 += n.ms;
        e.1 += 1;
    }
    let mut prof: OpProfile = acc
        .into_iter()
        .map(|(k, (ms, n))| (k.to_string(), ms, n))
        .collect();
    prof.sort_by(|a, b| b.1.total_cmp(&a.1));
    prof
}

/// [`run`], timing every node (for the speed work: where a model's time goes, which nodes run far
/// below the machine's multiply-add rate). Nodes come in execution order.
pub fn run_profiled(
    state: &mut State,
    inputs: TVec<TValue>,
    file: &Path,
) -> Result<(TVec<TValue>, Vec<NodeTime>)> {
    let mut nodes = Vec::new();
    let out = state
        .run_plan_with_eval(inputs, |ctx, op_state, node, inputs| {
            let facts: TVec<TypedFact> = inputs
                .iter()
                .map(|t| TypedFact::shape_and_dt_of(t))
                .collect();
            let t = Instant::now();
            let r = tract_core::plan::eval(ctx, op_state, node, inputs);
            let ms = t.elapsed().as_secs_f64() * 1e3;
            let mut op = node.op().name().to_string();
            if op.starts_with("OptMatMul")
                && let Some(k) = node.op().info().ok().and_then(|i| {
                    i.iter()
                        .find_map(|l| l.split_once(" with ").map(|x| x.1.to_string()))
                })
            {
                op = format!("{op} {k}");
            }
            let refs: TVec<&TypedFact> = facts.iter().collect();
            let fma = node
                .op
                .cost(&refs)
                .map(|c| {
                    c.iter()
                        .filter(|(k, _)| matches!(k, tract_core::ops::Cost::FMA(_)))
                        .filter_map(|(_, n)| n.to_i64().ok())
                        .sum::<i64>() as f64
                })
                .unwrap_or(0.0);
            let out_shape = r
                .as_ref()
                .ok()
                .and_then(|o| o.first().map(|t| t.shape().to_vec()))
                .unwrap_or_default();
            nodes.push(NodeTime {
                name: node.name.clone(),
                op,
                ms,
                fma,
                out_shape,
            });
            r
        })
        .map_err(flat)
        .with_context(|| format!("running {} failed", file.display()))?;
    Ok((out, nodes))
}

/// The f32 contents of a plain in-memory tensor.
pub fn f32s(t: &Tensor) -> Result<&[f32]> {
    fast_ops::f32s(t).map_err(flat)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::contract::TensorContract;

    /// `out = a + b` with `b` pinned: one input left, and the constant is what gets added.
    #[test]
    fn pinned_inputs_become_constants() {
        let mut m = TypedModel::default();
        let a = m.add_source("a", f32::fact([2])).unwrap();
        let b = m.add_source("b", f32::fact([2])).unwrap();
        let y = m
            .wire_node("sum", tract_core::ops::math::add(), &[a, b])
            .unwrap();
        m.select_output_outlets(&y).unwrap();
        let contract = Contract {
            inputs: vec![
                TensorContract::fixed("a", &[2]),
                TensorContract::fixed("b", &[2]),
            ],
            outputs: vec![TensorContract::fixed("sum", &[2])],
        };
        let file = Path::new("test.onnx");
        let b_value = tensor1(&[10f32, 20.0]);
        let pinned = pin_inputs(m.clone(), vec![(1, b_value)], file, &contract).unwrap();
        assert_eq!(pinned.input_outlets().unwrap().len(), 1);
        let plan = pinned.into_optimized().unwrap().into_runnable().unwrap();
        let out = plan
            .run(tvec!(tensor1(&[1f32, 2.0]).into_tvalue()))
            .unwrap();
        assert_eq!(f32s(&out[0]).unwrap(), &[11.0, 22.0]);
        // A value of the wrong shape is refused with the input's name.
        let err = pin_inputs(m, vec![(1, tensor1(&[1f32]))], file, &contract).unwrap_err();
        assert!(format!("{err:#}").contains("'b'"), "{err:#}");
    }
}
