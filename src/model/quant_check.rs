//! Load-time check of a quantized model's constant quantisation parameters. A scale that is not
//! a finite positive number (NaN, infinite, zero, negative, subnormal: its reciprocal is not
//! finite) makes every frame's quantised arithmetic garbage or NaN, in tract's operators and in
//! the own int8 kernels alike; a zero point of a non-integer type is not a zero point. Both are
//! refused when the file is parsed, naming the file, the node and the tensor, rather than found
//! as a wrong mask later. Parameters computed at run time (not initializers or `Constant`
//! nodes) are not constants to check.

use anyhow::{Result, anyhow, bail};
use std::collections::HashMap;
use std::path::Path;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::{GraphProto, TensorProto};

/// The quantizing operators: their scale inputs and zero-point inputs, by position (ONNX and
/// onnxruntime's `com.microsoft` operators, as onnxruntime's quantizer writes them).
const QUANT_OPS: &[(&str, &[usize], &[usize])] = &[
    ("QuantizeLinear", &[1], &[2]),
    ("DequantizeLinear", &[1], &[2]),
    ("QLinearMatMul", &[1, 4, 6], &[2, 5, 7]),
    ("QLinearConv", &[1, 4, 6], &[2, 5, 7]),
    ("QLinearAdd", &[1, 4, 6], &[2, 5, 7]),
    ("QLinearMul", &[1, 4, 6], &[2, 5, 7]),
    ("QLinearSigmoid", &[1, 3], &[2, 4]),
    ("QLinearLeakyRelu", &[1, 3], &[2, 4]),
    ("QLinearAveragePool", &[1, 3], &[2, 4]),
    ("QLinearGlobalAveragePool", &[1, 3], &[2, 4]),
    ("QLinearSoftmax", &[1, 3], &[2, 4]),
];

/// Zero points are integers of the quantized type (8 bits for the models sonomask writes; 16
/// and 32 bits are legal ONNX, e.g. an int32 bias's `DequantizeLinear`).
const ZERO_POINT_TYPES: &[DataType] = &[
    DataType::Uint8,
    DataType::Int8,
    DataType::Uint16,
    DataType::Int16,
    DataType::Int32,
];

/// Checks every constant scale and zero point of `graph`'s quantizing nodes (see the module
/// doc); `file` names the model in the error.
pub fn check(file: &Path, onnx: &tract_onnx::Onnx, graph: &GraphProto) -> Result<()> {
    let mut consts: HashMap<&str, &TensorProto> = graph
        .initializer
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    for n in graph.node.iter().filter(|n| n.op_type == "Constant") {
        if let (Some(out), Some(t)) = (
            n.output.first(),
            n.attribute
                .iter()
                .find(|a| a.name == "value")
                .and_then(|a| a.t.as_ref()),
        ) {
            consts.insert(out.as_str(), t);
        }
    }
    for node in &graph.node {
        let Some(&(_, scales, zeros)) = QUANT_OPS.iter().find(|(op, ..)| *op == node.op_type)
        else {
            continue;
        };
        let at = |name: &str| {
            let (n, op) = (&node.name, &node.op_type);
            format!("{}: node `{n}` ({op}), input `{name}`", file.display())
        };
        let constant = |i: usize| {
            node.input
                .get(i)
                .filter(|n| !n.is_empty())
                .and_then(|n| consts.get(n.as_str()).map(|t| (n.as_str(), *t)))
        };
        for (name, t) in scales.iter().filter_map(|&i| constant(i)) {
            let x = tract_onnx::tensor::load_tensor(&*onnx.provider, t, None)
                .map_err(|e| anyhow!("{}: {e}", at(name)))?;
            let x = x
                .cast_to::<f32>()
                .map_err(|e| anyhow!("{}: scale of type {:?}: {e}", at(name), x.datum_type()))?;
            let values = super::onnx::f32s(&x)?;
            if let Some((j, v)) = values
                .iter()
                .enumerate()
                .find(|(_, v)| !(v.is_normal() && **v > 0.0))
            {
                bail!(
                    "{}: scale value {v} at index {j} of {}; a quantisation scale must be a finite positive number (the file is corrupt, or was not written by quantize/)",
                    at(name),
                    values.len()
                );
            }
        }
        for (name, t) in zeros.iter().filter_map(|&i| constant(i)) {
            let dt = DataType::try_from(t.data_type).ok();
            if !dt.is_some_and(|d| ZERO_POINT_TYPES.contains(&d)) {
                bail!(
                    "{}: zero point of type {}; a zero point is an integer of the quantized type (uint8 or int8 here)",
                    at(name),
                    dt.map_or(format!("#{}", t.data_type), |d| format!("{d:?}"))
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use tract_onnx::prelude::Framework;

    fn fixture(name: &str) -> (PathBuf, tract_onnx::Onnx, tract_onnx::pb::ModelProto) {
        let file = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/models_tiny")
            .join(name);
        let onnx = tract_onnx::onnx();
        let bytes = std::fs::read(&file).unwrap();
        let proto = onnx.proto_model_for_read(&mut &bytes[..]).unwrap();
        (file, onnx, proto)
    }

    /// The first quantizing node's constant input at one of `positions`, as (node, tensor).
    fn first_constant(graph: &GraphProto, scale: bool) -> (String, String) {
        for node in &graph.node {
            if let Some(&(_, s, z)) = QUANT_OPS.iter().find(|(op, ..)| *op == node.op_type) {
                for &i in if scale { s } else { z } {
                    if let Some(n) = node.input.get(i)
                        && graph.initializer.iter().any(|t| &t.name == n)
                    {
                        return (node.name.clone(), n.clone());
                    }
                }
            }
        }
        panic!("no quantizing node with a constant input")
    }

    fn set_scale(graph: &mut GraphProto, name: &str, v: f32) {
        let t = graph
            .initializer
            .iter_mut()
            .find(|t| t.name == name)
            .unwrap();
        if t.raw_data.is_empty() {
            t.float_data.iter_mut().for_each(|x| *x = v);
        } else {
            let n = t.raw_data.len() / 4;
            t.raw_data = (0..n).flat_map(|_| v.to_le_bytes()).collect();
        }
    }

    #[test]
    fn the_shipped_int8_and_fp32_fixtures_pass() {
        for name in [
            "sam_encoder.int8.onnx",
            "sam_decoder.int8.onnx",
            "clip_image.int8.onnx",
            "clip_text.int8.onnx",
            "sam_decoder.fp32.onnx",
        ] {
            let (file, onnx, proto) = fixture(name);
            check(&file, &onnx, proto.graph.as_ref().unwrap()).unwrap();
        }
    }

    #[test]
    fn bad_scales_are_refused_naming_file_node_and_tensor() {
        for bad in [f32::NAN, f32::INFINITY, 0.0, -0.5, 1e-40] {
            let (file, onnx, mut proto) = fixture("sam_decoder.int8.onnx");
            let graph = proto.graph.as_mut().unwrap();
            let (node, tensor) = first_constant(graph, true);
            set_scale(graph, &tensor, bad);
            let err = check(&file, &onnx, graph).unwrap_err().to_string();
            assert!(err.contains("sam_decoder.int8.onnx"), "{err}");
            assert!(err.contains(&format!("`{node}`")), "{err}");
            assert!(err.contains(&format!("`{tensor}`")), "{err}");
            assert!(err.contains("finite positive"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_float_zero_point_is_refused() {
        let (file, onnx, mut proto) = fixture("sam_decoder.int8.onnx");
        let graph = proto.graph.as_mut().unwrap();
        let (node, tensor) = first_constant(graph, false);
        let t = graph
            .initializer
            .iter_mut()
            .find(|t| t.name == tensor)
            .unwrap();
        t.data_type = DataType::Float as i32;
        let err = check(&file, &onnx, graph).unwrap_err().to_string();
        assert!(err.contains(&format!("`{node}`")), "{err}");
        assert!(err.contains("zero point of type Float"), "{err}");
    }
}
