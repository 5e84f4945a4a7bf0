"""Export-time rewrites of the MobileSAM encoder that keep its function identical but suit
tract's kernels better (the speed issue). Each rewrite is checked with onnxruntime against the
original graph on real frames before it is kept; benches/encoder_ab.rs then times the two files
in tract, interleaved in one process.

softmax_rows: a Softmax over a last axis whose length is not a multiple of 4 (TinyViT's 7x7
  windows: 49) misses tract's vectorised rows kernel. Pad the scores on that axis with a large
  negative value up to the next multiple of 4 (exp(-1e30 - max) is exactly 0 in f32, so the
  probabilities are unchanged), take the Softmax, slice the padding off.

usage: .venv/bin/python quantize/graph_rewrites.py IN.onnx OUT.onnx [--shared DIR]
"""

from __future__ import annotations

import argparse
import pathlib

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper, shape_inference

import preprocess


def softmax_rows(model: onnx.ModelProto, multiple: int = 4) -> tuple[onnx.ModelProto, int]:
    m = shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in m.graph.value_info}
    g = model.graph
    nodes, changed = [], 0
    for n in g.node:
        shape = shapes.get(n.input[0]) if n.op_type == "Softmax" else None
        axis = next((a.i for a in n.attribute if a.name == "axis"), -1)
        if not shape or axis not in (-1, len(shape) - 1) or shape[-1] % multiple == 0 or 0 in shape:
            nodes.append(n)
            continue
        length = shape[-1]
        pad = (-length) % multiple
        rank = len(shape)
        tag = n.name.replace("/", "_") or f"softmax{changed}"
        pads = numpy_helper.from_array(np.array([0] * (2 * rank - 1) + [pad], np.int64), f"{tag}_pads")
        value = numpy_helper.from_array(np.array(-1e30, np.float32), f"{tag}_padvalue")
        starts = numpy_helper.from_array(np.array([0], np.int64), f"{tag}_starts")
        ends = numpy_helper.from_array(np.array([length], np.int64), f"{tag}_ends")
        axes = numpy_helper.from_array(np.array([rank - 1], np.int64), f"{tag}_axes")
        g.initializer.extend([pads, value, starts, ends, axes])
        padded, soft = f"{tag}_padded", f"{tag}_soft"
        nodes.append(helper.make_node("Pad", [n.input[0], pads.name, value.name], [padded], name=f"{tag}_pad", mode="constant"))
        nodes.append(helper.make_node("Softmax", [padded], [soft], name=n.name, axis=-1))
        nodes.append(helper.make_node("Slice", [soft, starts.name, ends.name, axes.name], [n.output[0]], name=f"{tag}_slice"))
        changed += 1
    del g.node[:]
    g.node.extend(nodes)
    return model, changed


def check(original: pathlib.Path, rewritten: pathlib.Path, shared: pathlib.Path, frames: int = 2) -> float:
    a = ort.InferenceSession(str(original), providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(str(rewritten), providers=["CPUExecutionProvider"])
    worst = 0.0
    for img, _ in preprocess.calibration_set(shared, frames)[:frames]:
        x = preprocess.preprocess(preprocess.load_rgb(img), 1024)
        ya, yb = a.run(None, {"image": x})[0], b.run(None, {"image": x})[0]
        worst = max(worst, float(np.abs(ya - yb).max()))
    return worst


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", type=pathlib.Path)
    ap.add_argument("dst", type=pathlib.Path)
    ap.add_argument("--shared", type=pathlib.Path, default=preprocess.SHARED)
    a = ap.parse_args()
    model, n = softmax_rows(onnx.load(str(a.src)))
    onnx.save(model, str(a.dst))
    worst = check(a.src, a.dst, a.shared)
    print(f"{a.dst}: {n} Softmax node(s) padded; onnxruntime max |diff| vs original {worst:.2e}")


if __name__ == "__main__":
    main()
