"""Graph clean-ups needed before quantization."""

from __future__ import annotations

import onnx
from onnx import numpy_helper


def constants_to_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """torch's legacy exporter feeds some Conv weights/biases through Constant (and Identity) nodes;
    onnxruntime's quantize_static only quantizes weights that are initializers. Turn every
    Constant node into an initializer and short-circuit Identity nodes whose input is one."""
    g = model.graph
    inits = {i.name for i in g.initializer}
    keep = []
    for n in g.node:
        if n.op_type == "Constant" and len(n.attribute) == 1 and n.attribute[0].name == "value":
            t = numpy_helper.to_array(n.attribute[0].t)
            g.initializer.append(numpy_helper.from_array(t, n.output[0]))
            inits.add(n.output[0])
        else:
            keep.append(n)
    rename = {}
    final = []
    graph_outputs = {o.name for o in g.output}
    for n in keep:
        if n.op_type == "Identity" and n.input[0] in inits and n.output[0] not in graph_outputs:
            rename[n.output[0]] = n.input[0]
        else:
            final.append(n)
    for n in final:
        for i, name in enumerate(n.input):
            if name in rename:
                n.input[i] = rename[name]
    del g.node[:]
    g.node.extend(final)
    return model


def op_histogram(model: onnx.ModelProto) -> dict[str, int]:
    h: dict[str, int] = {}
    for n in model.graph.node:
        h[n.op_type] = h.get(n.op_type, 0) + 1
    return dict(sorted(h.items(), key=lambda kv: (-kv[1], kv[0])))


def max_weight_magnitude(model: onnx.ModelProto) -> int:
    """The largest |w| over the int8 weights of a QOperator model's QLinearMatMul / QLinearConv
    (0 without any): 64 or less means 7-bit weights, which AVX2's vpmaddubsw takes in one pass."""
    inits = {i.name: i for i in model.graph.initializer}
    widest = 0
    for n in model.graph.node:
        if n.op_type in ("QLinearMatMul", "QLinearConv") and n.input[3] in inits:
            w = numpy_helper.to_array(inits[n.input[3]])
            if w.dtype.name == "int8" and w.size:
                widest = max(widest, int(abs(w.astype("int16")).max()))
    return widest
