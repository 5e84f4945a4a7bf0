"""Which int8 scheme LiteMedSAM's encoder survives: quantize it several ways (onnxruntime
QOperator, calibrated on real frames) and compare each one's embedding with fp32's on held-out
frames. The table it prints is in docs/ACCURACY.md ("int8").

usage: .venv/bin/python quantize/int8_sweep.py [--models models] [VARIANT ...]   (default: all,
about 2 minutes each on 2 cores)
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import onnx_prep  # noqa: E402
import preprocess as P  # noqa: E402
from quantize_sam import _ListReader  # noqa: E402


def attr(n, k, d=None):
    for a in n.attribute:
        if a.name == k:
            return onnx.helper.get_attribute_value(a)
    return d


def variants(model):
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    pe = [c for c in convs if "patch_embed" in c]
    l0 = [c for c in convs if "layers.0" in c]
    rest = [c for c in convs if c not in pe and c not in l0]
    dw = [n.name for n in model.graph.node if n.op_type == "Conv" and attr(n, "group", 1) > 1]
    conv = dict(op_types_to_quantize=["Conv"])
    mm = dict(op_types_to_quantize=["MatMul"])
    shipped = dict(op_types_to_quantize=["Conv", "MatMul"], per_channel=True, reduce_range=False)
    neck = [c for c in convs if "neck" in c]
    neck3 = [c for c in neck if "neck.2" in c]
    l0_1x1 = [c for c in l0 if c not in dw and "blocks" in c]
    l0_c3 = [c for c in l0_1x1 if "conv3" in c]

    def but(keep):
        return [c for c in convs if c not in keep]

    return {
        "all, per-tensor, 7-bit weights (MobileSAM's recipe)": {},
        "all, per-channel, 7-bit": dict(per_channel=True),
        "all, per-channel, 8-bit": dict(per_channel=True, reduce_range=False),
        "Conv only, per-tensor, 7-bit": conv,
        "Conv only but depthwise, per-tensor, 7-bit": dict(conv, nodes_to_exclude=dw),
        "Conv only but depthwise, per-channel, 7-bit": dict(conv, nodes_to_exclude=dw, per_channel=True),
        "patch-embedding Convs only, per-channel, 7-bit": dict(conv, nodes_to_exclude=l0 + rest, per_channel=True),
        "stage-0 (MBConv) Convs only, per-channel, 7-bit": dict(conv, nodes_to_exclude=pe + rest, per_channel=True),
        "other Convs only (merging, local, neck), per-channel, 7-bit": dict(conv, nodes_to_exclude=pe + l0, per_channel=True),
        "MatMul only, per-tensor, 7-bit": mm,
        "MatMul only, per-tensor, 8-bit": dict(mm, reduce_range=False),
        "MatMul only, per-tensor, 7-bit, percentile 99.99 calibration": dict(
            mm, calibrate_method=CalibrationMethod.Percentile, extra_options={"MatMulConstBOnly": True, "CalibPercentile": 99.99}
        ),
        "MatMul only, per-channel, 8-bit (shipped)": dict(mm, per_channel=True, reduce_range=False),
        # The shipped recipe plus one group of convolutions each (issue 22: which convolutions
        # int8 can take over without the loss the isolated rows above show).
        "shipped + the neck's 3x3 Conv, per-channel, 8-bit": dict(shipped, nodes_to_exclude=but(neck3)),
        "shipped + the neck's two Convs, per-channel, 8-bit": dict(shipped, nodes_to_exclude=but(neck)),
        "shipped + stage-0 MBConv 1x1 Convs, per-channel, 8-bit": dict(shipped, nodes_to_exclude=but(l0_1x1)),
        "shipped + stage-0 MBConv last 1x1 Convs (conv3), per-channel, 8-bit": dict(shipped, nodes_to_exclude=but(l0_c3)),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=pathlib.Path, default=pathlib.Path(__file__).resolve().parent.parent / "models")
    ap.add_argument("--calibration-per-set", type=int, default=3)
    ap.add_argument("--held-out-per-set", type=int, default=2)
    ap.add_argument("only", nargs="*", help="substrings of variant names")
    a = ap.parse_args()
    src = a.models / "sam_encoder.fp32.onnx"
    recipe = P.Recipe("lite_medsam", 256)
    sets = P.LITE_CALIBRATION_SETS
    cal = P.calibration_set(P.SHARED, a.calibration_per_set, sets=sets)
    held = P.calibration_set(P.SHARED, a.held_out_per_set, held_out=True, sets=sets)
    feeds = [{"image": recipe.input(P.load_rgb(i))} for i, _ in cal]
    hx = [recipe.input(P.load_rgb(i)) for i, _ in held]
    ref = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    refs = [ref.run(None, {"image": x})[0] for x in hx]
    model = onnx_prep.constants_to_initializers(onnx.load(str(src)))
    tmp = pathlib.Path(tempfile.mkdtemp())
    prepped = tmp / "prepped.onnx"
    onnx.save(model, str(prepped))
    print(f"{len(cal)} calibration frames, {len(held)} held-out frames ({', '.join(sets)})")
    print("| int8 variant (QOperator, u8 activations, s8 weights) | embedding cosine to fp32, mean | min |")
    print("|---|---|---|")
    for name, kw in variants(model).items():
        if a.only and not any(o in name for o in a.only):
            continue
        t = time.time()
        opts = dict(
            quant_format=QuantFormat.QOperator, op_types_to_quantize=["Conv", "MatMul"], activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8, per_channel=False, reduce_range=True, extra_options={"MatMulConstBOnly": True},
        )
        opts.update(kw)
        dst = tmp / "q.onnx"
        quantize_static(str(prepped), str(dst), _ListReader(list(feeds)), **opts)
        s = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
        cos = []
        for x, r in zip(hx, refs):
            y, r = s.run(None, {"image": x})[0].ravel().astype(np.float64), r.ravel().astype(np.float64)
            cos.append(float(y @ r / (np.linalg.norm(y) * np.linalg.norm(r))))
        print(f"| {name} | {np.mean(cos):.4f} | {np.min(cos):.4f} |  <!-- {time.time() - t:.0f} s -->", flush=True)


if __name__ == "__main__":
    main()
