"""Where LiteMedSAM's int8 encoder loses on the non-ultrasound sets, and what calibration fixes:
quantize the encoder (the shipped scheme: MatMuls with constant weights, per-output-channel 8-bit
weights, u8 activations, MinMax) with different calibration frames and with groups of MatMuls kept
in fp32, and compare each one's embedding with fp32's on held-out frames of every labelled set.
The table it prints is in docs/ACCURACY.md ("int8").

usage: .venv/bin/python quantize/int8_modalities.py [--models models] [VARIANT ...]
       (about 2 minutes per variant on 2 cores)
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
from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import onnx_prep  # noqa: E402
import preprocess as P  # noqa: E402
from quantize_sam import _ListReader  # noqa: E402

SETS = ("busi", "hc18", "tg3k_thyroid_gland", "busbra_minitest", "shenzhen_cxr_lung", "kvasir_seg", "lgg_brain_mri_minitest")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=pathlib.Path, default=pathlib.Path(__file__).resolve().parent.parent / "models")
    ap.add_argument("--held-out-per-set", type=int, default=3)
    ap.add_argument("only", nargs="*", help="substrings of variant names")
    a = ap.parse_args()
    src = a.models / "sam_encoder.fp32.onnx"
    recipe = P.Recipe("lite_medsam", 256)
    us = P.calibration_set(P.SHARED, 8, sets=P.LITE_CALIBRATION_SETS)
    every = P.calibration_set(P.SHARED, 3, sets=P.LITE_CALIBRATION_SETS_ALL)
    used = {str(i) for i, _ in us + every}
    held = {}
    for s in SETS:  # evenly spaced frames with a ground truth that no variant calibrates on
        rest = [p for p in P.calibration_set(P.SHARED, 10**6, sets=(s,)) if str(p[0]) not in used]
        step = max(1, len(rest) // a.held_out_per_set)
        held[s] = rest[step // 2 :: step][: a.held_out_per_set]
    ref = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    hx = {s: [recipe.input(P.load_rgb(i)) for i, _ in f] for s, f in held.items()}
    refs = {s: [ref.run(None, {"image": x})[0] for x in xs] for s, xs in hx.items()}
    model = onnx_prep.constants_to_initializers(onnx.load(str(src)))
    mm = [n.name for n in model.graph.node if n.op_type == "MatMul"]
    group = {g: [n for n in mm if f"/{g}/" in n] for g in ("qkv", "proj", "fc1", "fc2")}
    tmp = pathlib.Path(tempfile.mkdtemp())
    prepped = tmp / "prepped.onnx"
    onnx.save(model, str(prepped))
    variants = {
        f"ultrasound calibration ({len(us)} frames: BUSI, HC18, TG3K; shipped before)": (us, []),
        f"every modality ({len(every)} frames, 3 per set)": (every, []),
        "every modality, fc2 (MLP out) kept fp32": (every, group["fc2"]),
        "every modality, fc1 (MLP in) kept fp32": (every, group["fc1"]),
        "every modality, qkv kept fp32": (every, group["qkv"]),
        "every modality, proj kept fp32": (every, group["proj"]),
        "ultrasound calibration, fc2 kept fp32": (us, group["fc2"]),
    }
    short = {"busi": "BUSI", "hc18": "HC18", "tg3k_thyroid_gland": "TG3K", "busbra_minitest": "BUS-BRA",
             "shenzhen_cxr_lung": "Shenzhen", "kvasir_seg": "Kvasir", "lgg_brain_mri_minitest": "LGG"}
    print(f"held out: {a.held_out_per_set} frames per set, none used for calibration; embedding cosine to fp32 (mean)")
    print("| calibration / fp32 layers | " + " | ".join(short[s] for s in SETS) + " |")
    print("|---|" + "---|" * len(SETS))
    for name, (cal, exclude) in variants.items():
        if a.only and not any(o in name for o in a.only):
            continue
        t = time.time()
        feeds = [{"image": recipe.input(P.load_rgb(i))} for i, _ in cal]
        dst = tmp / "q.onnx"
        quantize_static(
            str(prepped), str(dst), _ListReader(feeds), quant_format=QuantFormat.QOperator,
            op_types_to_quantize=["MatMul"], activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            per_channel=True, reduce_range=False, nodes_to_exclude=exclude, extra_options={"MatMulConstBOnly": True},
        )
        s = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
        cells = []
        for k in SETS:
            cos = []
            for x, r in zip(hx[k], refs[k]):
                y, r = s.run(None, {"image": x})[0].ravel().astype(np.float64), r.ravel().astype(np.float64)
                cos.append(float(y @ r / (np.linalg.norm(y) * np.linalg.norm(r))))
            cells.append(f"{np.mean(cos):.4f}")
        print(f"| {name} | " + " | ".join(cells) + f" |  <!-- {time.time() - t:.0f} s -->", flush=True)


if __name__ == "__main__":
    main()
