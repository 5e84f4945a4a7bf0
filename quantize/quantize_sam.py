"""Static int8 quantization of the exported MobileSAM ONNX files, in the form tract executes as int8.

QOperator format (QLinearConv / QLinearMatMul), only Conv and MatMul quantized (`--ops`; the real
LiteMedSAM quantizes its MatMuls only, per channel, 8-bit: build_models.sh and docs/ACCURACY.md):
* tract runs QDQ graphs in f32 plus overhead, so QDQ would be slower, not faster;
* Softmax is never quantized (tract 0.23.9 computes a quantized Softmax wrongly);
* no Gemm and no com.microsoft ops (QGemm, QLinearAdd): tract 0.23.9 cannot load them;
* MatMulConstBOnly: only matmuls against weights; activation x activation matmuls (attention
  scores) stay f32 for accuracy.
Calibration: real ultrasound frames from ../shared/data (BUSI + HC18), preprocessed exactly as at
run time; decoder calibrated with the fp32 encoder's embeddings and the GT box of each frame.
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

import onnx_prep
import preprocess


class _ListReader(CalibrationDataReader):
    def __init__(self, feeds):
        self._it = iter(feeds)

    def get_next(self):
        return next(self._it, None)


def box_prompt(box, orig_hw, recipe: preprocess.Recipe):
    return recipe.box(box, orig_hw).astype(np.float32), np.array([[2.0, 3.0]], np.float32)


def calibration_feeds(enc_fp32: pathlib.Path, frames, recipe: preprocess.Recipe, low_res: int):
    sess = ort.InferenceSession(str(enc_fp32), providers=["CPUExecutionProvider"])
    enc_feeds, dec_feeds = [], []
    for img_path, mask_paths in frames:
        rgb = preprocess.load_rgb(img_path)
        x = recipe.input(rgb)
        enc_feeds.append({"image": x})
        emb = sess.run(None, {"image": x})[0]
        box = preprocess.mask_box(preprocess.load_mask(mask_paths))
        coords, labels = box_prompt(box, rgb.shape[:2], recipe)
        dec_feeds.append(
            {
                "image_embeddings": emb,
                "point_coords": coords,
                "point_labels": labels,
                "mask_input": np.zeros((1, 1, low_res, low_res), np.float32),
                "has_mask_input": np.zeros(1, np.float32),
            }
        )
    return enc_feeds, dec_feeds


def quantize_one(
    src: pathlib.Path,
    dst: pathlib.Path,
    feeds,
    ops=("Conv", "MatMul"),
    per_channel: bool = False,
    full_range: bool = False,
    convs: tuple[str, ...] | None = None,
) -> None:
    model = onnx_prep.constants_to_initializers(onnx.load(str(src)))
    # Only the convolutions named (substrings of node names) when given: the rest stay fp32.
    unnamed = [n.name for n in model.graph.node
               if n.op_type == "Conv" and convs is not None and not any(c in n.name for c in convs)]
    # The prompt encoder's random Fourier features (coordinates times a Gaussian matrix, then
    # sin/cos) stay fp32: an 8-bit coordinate is a pixel of phase error at the highest
    # frequencies, and it moved LiteMedSAM's masks by up to 11% Dice (Kvasir; with them fp32 the
    # int8 decoder's masks agree with fp32's to 0.99-1.00 on every set: int8_decoder_sweep.py).
    fourier = [n.name for n in model.graph.node
               if n.op_type == "MatMul" and any("positional_encoding_gaussian_matrix" in i for i in n.input)]
    with tempfile.TemporaryDirectory() as tmp:
        prepped = pathlib.Path(tmp) / "prepped.onnx"
        onnx.save(model, str(prepped))
        quantize_static(
            str(prepped),
            str(dst),
            _ListReader(feeds),
            quant_format=QuantFormat.QOperator,
            op_types_to_quantize=list(ops),
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
            nodes_to_exclude=fourier + unnamed,
            # 7-bit weights by default: onnxruntime's u8s8 kernels on x86 without VNNI
            # (vpmaddubsw) saturate 16-bit pair sums with full-range weights, so its output would
            # not be the exact integer result that tract (and ARM SDOT/SMLAL) computes. Real
            # weights need the 8th bit (LiteMedSAM: embedding cosine 0.973 -> 0.994 with
            # per-channel scales, docs/ACCURACY.md "int8"); tract computes exactly.
            reduce_range=not full_range,
            # MinMax calibration keeps only per-tensor ReduceMin/Max per frame: memory stays small.
            extra_options={"MatMulConstBOnly": True},
        )
    q = onnx.load(str(dst))
    # The quantizer's shape inference leaves value_info naming the symbolic prompt count; tract
    # would then refuse to pin it per call. Intermediate shapes are optional: drop them.
    del q.graph.value_info[:]
    onnx.save(q, str(dst))
    hist = onnx_prep.op_histogram(q)
    bad = [op for op in hist if op in ("QGemm", "QLinearAdd", "QLinearSoftmax", "QLinearMul", "QAttention")]
    if bad:
        raise SystemExit(f"{dst}: ops tract cannot run as int8: {bad}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="models", type=pathlib.Path)
    ap.add_argument("--shared", default=preprocess.SHARED, type=pathlib.Path)
    ap.add_argument("--frames-per-set", type=int, default=8)
    ap.add_argument("--image-size", type=int, default=1024)
    ap.add_argument("--family", default="mobilesam", choices=["mobilesam", "lite_medsam"])
    ap.add_argument("--low-res", type=int, help="decoder mask size (default image size / 4)")
    ap.add_argument("--sets", default=",".join(preprocess.CALIBRATION_SETS))
    ap.add_argument("--ops", default="Conv,MatMul", help="op types to quantize (the rest stay fp32)")
    ap.add_argument("--convs", help="comma-separated substrings of the Conv nodes to quantize (default: every Conv)")
    ap.add_argument("--per-channel", action="store_true", help="per-output-channel weight scales")
    ap.add_argument("--full-range", action="store_true", help="8-bit weights (default 7-bit, see quantize_one)")
    ap.add_argument("--w7-variant", action="store_true",
                    help="with --full-range, also write the 7-bit-weight variant (*.int8w7.onnx) that "
                         "sonomask loads where its int8 kernel is AVX2 without VNNI")
    a = ap.parse_args()
    ap_sets = a.sets.split(",")
    frames = preprocess.calibration_set(a.shared, a.frames_per_set, sets=ap_sets)
    print(f"calibrating on {len(frames)} real ultrasound frames ({', '.join(ap_sets)})")
    recipe = preprocess.Recipe(a.family, a.image_size)
    enc_feeds, dec_feeds = calibration_feeds(a.models / "sam_encoder.fp32.onnx", frames, recipe, a.low_res or a.image_size // 4)
    q = dict(ops=a.ops.split(","), per_channel=a.per_channel, full_range=a.full_range,
             convs=tuple(a.convs.split(",")) if a.convs else None)
    print(f"int8: {q}")
    quantize_one(a.models / "sam_encoder.fp32.onnx", a.models / "sam_encoder.int8.onnx", enc_feeds, **q)
    quantize_one(a.models / "sam_decoder.fp32.onnx", a.models / "sam_decoder.int8.onnx", dec_feeds, **q)
    if a.w7_variant and a.full_range:
        # The same recipe with weights in [-64, 64] (onnxruntime's reduce_range): AVX2's
        # vpmaddubsw adds two u8 x s8 products into an i16 with saturation, so 8-bit weights cost
        # it two passes (docs/BENCHMARKS.md, issue 22); 7-bit ones run in one, exactly.
        q7 = dict(q, full_range=False)
        print(f"int8, 7-bit weights: {q7}")
        # manifest.py reads each file's weight width and refuses a 7-bit variant that is not.
        for role, feeds in (("sam_encoder", enc_feeds), ("sam_decoder", dec_feeds)):
            quantize_one(a.models / f"{role}.fp32.onnx", a.models / f"{role}.int8w7.onnx", feeds, **q7)


if __name__ == "__main__":
    main()
