"""Which of LiteMedSAM's decoder products int8 may touch: quantize the decoder (the shipped
scheme: MatMuls with constant weights, per-channel 8-bit weights, u8 activations, MinMax,
calibrated on the ultrasound frames quantize_sam.py uses) with groups of products kept in fp32,
and score each one's box-prompt mask against the fp32 decoder's and against the ground truth on
held-out frames of every labelled set (fp32 encoder embeddings, onnxruntime). The table it prints
is in docs/ACCURACY.md ("int8").

usage: .venv/bin/python quantize/int8_decoder_sweep.py [--models models] [--per-set N]
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import onnx_prep  # noqa: E402
import preprocess as P  # noqa: E402
from quantize_sam import _ListReader, box_prompt, calibration_feeds  # noqa: E402

SETS = ("busi", "hc18", "tg3k_thyroid_gland", "shenzhen_cxr_lung", "kvasir_seg", "lgg_brain_mri_minitest")


def dice(a, b):
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else 2.0 * np.logical_and(a, b).sum() / s


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=pathlib.Path, default=pathlib.Path(__file__).resolve().parent.parent / "models")
    ap.add_argument("--per-set", type=int, default=8)
    a = ap.parse_args()
    recipe = P.Recipe("lite_medsam", 256)
    cal = P.calibration_set(P.SHARED, 8, sets=P.LITE_CALIBRATION_SETS)
    used = {str(i) for i, _ in cal}
    _, feeds = calibration_feeds(a.models / "sam_encoder.fp32.onnx", cal, recipe, 256)
    enc = ort.InferenceSession(str(a.models / "sam_encoder.fp32.onnx"), providers=["CPUExecutionProvider"])
    dec_src = a.models / "sam_decoder.fp32.onnx"
    dec = ort.InferenceSession(str(dec_src), providers=["CPUExecutionProvider"])
    held = {}
    for s in SETS:
        rest = [p for p in P.calibration_set(P.SHARED, 10**6, sets=(s,)) if str(p[0]) not in used]
        step = max(1, len(rest) // a.per_set)
        frames = rest[step // 2 :: step][: a.per_set]
        cases = []
        for img, masks in frames:
            rgb = P.load_rgb(img)
            gt = P.load_mask(masks)
            emb = enc.run(None, {"image": recipe.input(rgb)})[0]
            coords, labels = box_prompt(P.mask_box(gt), rgb.shape[:2], recipe)
            feed = {"image_embeddings": emb, "point_coords": coords, "point_labels": labels,
                    "mask_input": np.zeros((1, 1, 256, 256), np.float32), "has_mask_input": np.zeros(1, np.float32)}
            cases.append((feed, dec.run(None, feed)))
        held[s] = cases
    model = onnx_prep.constants_to_initializers(onnx.load(str(dec_src)))
    inits = {i.name for i in model.graph.initializer}
    mm = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits]
    pe = [n for n in mm if n.count("/") < 3]
    groups = {
        "all constant-weight MatMuls (shipped before)": [],
        "positional-encoding products kept fp32": pe,
        "PE + token self-attention kept fp32": pe + [n for n in mm if "self_attn" in n],
        "PE + final token-to-image attention kept fp32": pe + [n for n in mm if "final_attn" in n],
        "only the PE products quantized": [n for n in mm if n not in pe],
    }
    tmp = pathlib.Path(tempfile.mkdtemp())
    prepped = tmp / "prepped.onnx"
    onnx.save(model, str(prepped))
    print(f"held out: {a.per_set} frames per set (none used for calibration); int8-decoder mask Dice against the fp32 decoder's mask (low-res logits > 0)")
    print("| decoder int8 variant | " + " | ".join(SETS) + " |")
    print("|---|" + "---|" * len(SETS))
    for name, exclude in groups.items():
        dst = tmp / "q.onnx"
        quantize_static(str(prepped), str(dst), _ListReader(list(feeds)), quant_format=QuantFormat.QOperator,
                        op_types_to_quantize=["MatMul"], activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        per_channel=True, reduce_range=False, nodes_to_exclude=exclude,
                        extra_options={"MatMulConstBOnly": True})
        q = onnx.load(str(dst))
        del q.graph.value_info[:]
        onnx.save(q, str(dst))
        s = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
        cells = []
        for k in SETS:
            d = []
            for feed, ref in held[k]:
                out = s.run(None, feed)
                d.append(dice(out[0] > 0, ref[0] > 0))
            cells.append(f"{np.mean(d):.4f} (min {np.min(d):.3f})")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
