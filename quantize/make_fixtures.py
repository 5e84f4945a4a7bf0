"""Regenerate the committed test fixtures (tests/fixtures/). Needs ../shared for calibration frames.

models_tiny/: the `tiny` config (same graph structure as MobileSAM, reduced widths, 256 px input),
  seeded synthetic weights (NOT trained), exported and quantized by the same code as the full
  models, with onnxruntime reference outputs on a generated input image:
    input.png                      deterministic generated frame (no shared data is copied)
    ref_<prec>_embedding.f32       encoder output on the Python-preprocessed input
    ref_<prec>_<case>_low_res.f32  decoder low_res_masks [1,4,L,L], fed the same precision's ref embedding
    ref_<prec>_<case>_iou.f32      decoder iou_predictions [1,4]
    ref_fp32_box_upscaled.f32      official Sam.postprocess_masks of token 0 (original image size)
  cases.toml lists the prompts (original-image pixels), exactly as the Rust test encodes them.
preprocess_reference.toml: sha256 of PIL/ResizeLongestSide-resized uint8 buffers of real images
  in ../shared/data, so the Rust port of the resampler is checked bit-exactly without copying data.
"""

from __future__ import annotations

import hashlib
import pathlib
import shutil
import sys

import numpy as np
from PIL import Image

import export_sam
import manifest
import preprocess
import quantize_sam
import sam_arch
from verify_sam import Pipeline, postprocess, resized_hw

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"

CASES = {
    # name: (box or None, [(x, y, label)])
    "box": ([40.0, 30.0, 150.0, 120.0], []),
    "point": (None, [(100.0, 80.0, 1)]),
    "box_points": ([20.0, 20.0, 180.0, 140.0], [(90.0, 70.0, 1), (30.0, 130.0, 0)]),
}


def make_input() -> np.ndarray:
    """A 200x150 frame with ultrasound-like structure: speckle, a dark ellipse, a bright rim."""
    rng = np.random.default_rng(7)
    h, w = 150, 200
    yy, xx = np.mgrid[0:h, 0:w]
    base = 90 + 40 * np.sin(xx / 17.0) * np.cos(yy / 23.0) + rng.normal(0, 18, (h, w))
    inside = ((xx - 95) / 45.0) ** 2 + ((yy - 75) / 30.0) ** 2 < 1.0
    rim = np.abs(((xx - 95) / 45.0) ** 2 + ((yy - 75) / 30.0) ** 2 - 1.0) < 0.12
    base[inside] -= 55
    base[rim] += 70
    g = np.clip(base, 0, 255).astype(np.uint8)
    return np.stack([g, g, np.clip(g.astype(int) + 3, 0, 255).astype(np.uint8)], axis=2)


def encode_case(box, points, hw, size):
    coords, labels = [], []
    for x, y, l in points:
        coords.append([x, y])
        labels.append(float(l))
    if box is not None:
        coords += [[box[0], box[1]], [box[2], box[3]]]
        labels += [2.0, 3.0]
    else:
        coords.append([0.0, 0.0])
        labels.append(-1.0)
    c = preprocess.transform_coords(np.array(coords, np.float32), hw, size)
    if box is None:
        c[-1] = [0.0, 0.0]  # the padding point is not transformed
    return c[None].astype(np.float32), np.array([labels], np.float32)


def save_f32(path: pathlib.Path, a: np.ndarray) -> None:
    path.write_bytes(np.ascontiguousarray(a, dtype="<f4").tobytes())


def models_tiny() -> None:
    out = FIX / "models_tiny"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    cfg = sam_arch.CONFIGS["tiny"]
    model = sam_arch.build("tiny", seed=0)
    export_sam.export(model, cfg, out)
    frames = preprocess.calibration_set(preprocess.SHARED, 4)
    enc_feeds, dec_feeds = quantize_sam.calibration_feeds(out / "sam_encoder.fp32.onnx", frames, cfg.image_size, cfg.low_res_size)
    quantize_sam.quantize_one(out / "sam_encoder.fp32.onnx", out / "sam_encoder.int8.onnx", enc_feeds)
    quantize_sam.quantize_one(out / "sam_decoder.fp32.onnx", out / "sam_decoder.int8.onnx", dec_feeds)
    manifest.write(out, "tiny", "synthetic seed 0, tiny fixture config of the official architecture", True, 0)

    rgb = make_input()
    Image.fromarray(rgb).save(out / "input.png")
    rgb = preprocess.load_rgb(out / "input.png")
    hw = rgb.shape[:2]
    lines = ["# Prompts of the reference cases, original-image pixels (label 1 fg, 0 bg)."]
    for name, (box, pts) in CASES.items():
        lines += [f"[{name}]", f"box = {box if box else []}", f"points = {[list(p) for p in pts]}", ""]
    (out / "cases.toml").write_text("\n".join(lines))
    for prec in ("fp32", "int8"):
        pipe = Pipeline(out, prec, cfg.image_size)
        emb = pipe.embed(rgb)
        save_f32(out / f"ref_{prec}_embedding.f32", emb)
        for name, (box, pts) in CASES.items():
            coords, labels = encode_case(box, pts, hw, cfg.image_size)
            low, iou = pipe.decode(emb, coords, labels)
            save_f32(out / f"ref_{prec}_{name}_low_res.f32", low)
            save_f32(out / f"ref_{prec}_{name}_iou.f32", iou)
            if prec == "fp32" and name == "box":
                up = postprocess(low[:, :1], resized_hw(hw, cfg.image_size), hw, cfg.image_size)
                save_f32(out / "ref_fp32_box_upscaled.f32", up)


def preprocess_reference() -> None:
    # PNG only: JPEG decoders (libjpeg in PIL, zune-jpeg in Rust) differ by a level or two in
    # IDCT/upsampling rounding; that is a decoder difference, not a preprocessing one.
    def first_png(d):
        return d + "/images/" + sorted(p.name for p in (preprocess.SHARED / "data" / d / "images").iterdir() if p.suffix == ".png")[0]

    picks = [
        "busi/images/benign (1).png",
        "busi/images/malignant (7).png",
        "busi/images/normal (3).png",
        first_png("hc18"),
        "busi/images/benign (42).png",
        first_png("medclipsam_example_brain_mri"),
        first_png("breast_lesions_usg_minitest"),
        first_png("busbra_minitest"),
    ]
    lines = ["# sha256 of the SAM-resized uint8 RGB buffer (ResizeLongestSide = PIL bilinear), per image and size."]
    for rel in picks:
        rgb = preprocess.load_rgb(preprocess.SHARED / "data" / rel)
        for size in (1024, 256):
            r = np.ascontiguousarray(preprocess.resize_uint8(rgb, size))
            lines += [
                "[[image]]",
                f'path = "{rel}"',
                f"size = {size}",
                f"resized = [{r.shape[1]}, {r.shape[0]}]",
                f'sha256 = "{hashlib.sha256(r.tobytes()).hexdigest()}"',
                "",
            ]
    (FIX / "preprocess_reference.toml").write_text("\n".join(lines))


def state_dict_list() -> None:
    """The synthetic vit_t state dict's key/shape/dtype list, for tests/state_dict_keys.rs."""
    from test_sam_arch import state_dict_rows

    rows = ["key\tshape\tdtype"] + [f"{k}\t{s}\t{d}" for k, s, d in state_dict_rows()]
    (FIX / "mobilesam_synthetic_state_dict.tsv").write_text("\n".join(rows) + "\n")


if __name__ == "__main__":
    if not (preprocess.SHARED / "data").is_dir():
        sys.exit(f"{preprocess.SHARED}/data is missing: fixtures are calibrated on shared ultrasound frames")
    FIX.mkdir(parents=True, exist_ok=True)
    models_tiny()
    preprocess_reference()
    state_dict_list()
    print("fixtures written to", FIX)
