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
area_reference.toml: the same for OpenCV INTER_AREA (LiteMedSAM's recipe) on real PNG frames and
  on generated patterns (`pattern`: integer factors, enlarging), plus LiteMedSAM's min-max input
  tensor hashes; the enlarging cases record OpenCV's bytes so the test can bound the difference.

usage: .venv/bin/python quantize/make_fixtures.py [models_tiny|models_tiny_lite|preprocess|area|clip ...]
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


def encode_case(box, points, hw, size, family="mobilesam"):
    if family == "lite_medsam":
        import lite_medsam

        ratio = size / max(hw)
        coords = [[np.float32(x * ratio), np.float32(y * ratio)] for x, y, _ in points]
        labels = [float(l) for _, _, l in points]
        if box is not None:
            coords += lite_medsam.box_to_model(box, hw, size).reshape(2, 2).tolist()
            labels += [2.0, 3.0]
        else:
            coords.append([0.0, 0.0])
            labels.append(-1.0)
        return np.array([coords], np.float32), np.array([labels], np.float32)
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


def models_tiny(config: str = "tiny", dirname: str = "models_tiny") -> None:
    out = FIX / dirname
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    cfg = sam_arch.CONFIGS[config]
    family = sam_arch.FAMILY[config]
    recipe = preprocess.Recipe(family, cfg.image_size)
    model = sam_arch.build(config, seed=0)
    export_sam.export(model, cfg, out)
    frames = preprocess.calibration_set(preprocess.SHARED, 4)
    enc_feeds, dec_feeds = quantize_sam.calibration_feeds(out / "sam_encoder.fp32.onnx", frames, recipe, cfg.low_res_size)
    quantize_sam.quantize_one(out / "sam_encoder.fp32.onnx", out / "sam_encoder.int8.onnx", enc_feeds)
    quantize_sam.quantize_one(out / "sam_decoder.fp32.onnx", out / "sam_decoder.int8.onnx", dec_feeds)
    what = "LiteMedSAM-shaped (1x1 patch embedding, min-max, INTER_AREA)" if family == "lite_medsam" else "official"
    manifest.write(out, config, f"synthetic seed 0, tiny fixture config of the {what} architecture", True, 0)

    rgb = make_input()
    Image.fromarray(rgb).save(out / "input.png")
    rgb = preprocess.load_rgb(out / "input.png")
    hw = rgb.shape[:2]
    lines = ["# Prompts of the reference cases, original-image pixels (label 1 fg, 0 bg)."]
    for name, (box, pts) in CASES.items():
        lines += [f"[{name}]", f"box = {box if box else []}", f"points = {[list(p) for p in pts]}", ""]
    (out / "cases.toml").write_text("\n".join(lines))
    for prec in ("fp32", "int8"):
        pipe = Pipeline(out, prec, recipe, cfg.low_res_size)
        emb = pipe.embed(rgb)
        save_f32(out / f"ref_{prec}_embedding.f32", emb)
        for name, (box, pts) in CASES.items():
            coords, labels = encode_case(box, pts, hw, cfg.image_size, family)
            low, iou = pipe.decode(emb, coords, labels)
            save_f32(out / f"ref_{prec}_{name}_low_res.f32", low)
            save_f32(out / f"ref_{prec}_{name}_iou.f32", iou)
            if prec == "fp32" and name == "box":
                up = postprocess(low[:, :1], resized_hw(hw, cfg.image_size), hw, cfg.image_size)
                save_f32(out / "ref_fp32_box_upscaled.f32", up)


def models_tiny_lite() -> None:
    models_tiny("tiny_lite", "models_tiny_lite")


def pattern(w: int, h: int) -> np.ndarray:
    """A deterministic RGB test pattern (tests/preprocess_reference.rs generates the same)."""
    y, x, c = np.meshgrid(np.arange(h), np.arange(w), np.arange(3), indexing="ij")
    return ((x * 7 + y * 13 + c * 29 + (x * y) % 17) % 256).astype(np.uint8)


def area_reference() -> None:
    import cv2

    import lite_medsam

    def pngs(d, n):
        files = sorted(p.name for p in (preprocess.SHARED / "data" / d / "images").iterdir() if p.suffix == ".png")
        return [d + "/images/" + f for f in files[:: max(1, len(files) // n)][:n]]

    picks = pngs("busi", 6) + pngs("hc18", 4) + pngs("busbra_minitest", 3) + pngs("breast_lesions_usg_minitest", 3)
    picks += pngs("medclipsam_example_brain_mri", 1)
    lines = [
        f"# OpenCV {cv2.__version__} cv2.resize(INTER_AREA) to LiteMedSAM's longest side 256: sha256 of the",
        "# uint8 RGB buffer, and of LiteMedSAM's f32 input tensor (min-max, zero padded, little endian).",
    ]
    for rel in picks:
        rgb = preprocess.load_rgb(preprocess.SHARED / "data" / rel)
        r = np.ascontiguousarray(lite_medsam.resize_area(rgb))
        x = np.ascontiguousarray(lite_medsam.preprocess(rgb), dtype="<f4")
        lines += [
            "[[image]]",
            f'path = "{rel}"',
            f"resized = [{r.shape[1]}, {r.shape[0]}]",
            f'sha256 = "{hashlib.sha256(r.tobytes()).hexdigest()}"',
            f'input_sha256 = "{hashlib.sha256(x.tobytes()).hexdigest()}"',
            "",
        ]
    # generated patterns: (w, h, out_w, out_h); exact = bit-exact expected
    for w, h, ow, oh in [(512, 384, 256, 192), (768, 768, 256, 256), (768, 512, 256, 171), (300, 200, 256, 171),
                         (1000, 10, 256, 3), (30, 20, 45, 30), (50, 40, 64, 51), (37, 256, 37, 256), (40, 300, 34, 256)]:
        src = pattern(w, h)
        r = np.ascontiguousarray(cv2.resize(src, (ow, oh), interpolation=cv2.INTER_AREA))
        enlarging = ow > w or oh > h
        lines += ["[[pattern]]", f"size = [{w}, {h}]", f"out = [{ow}, {oh}]", f'sha256 = "{hashlib.sha256(r.tobytes()).hexdigest()}"']
        if enlarging:
            lines.append(f'bytes_hex = "{r.tobytes().hex()}"')
        lines.append("")
    (FIX / "area_reference.toml").write_text("\n".join(lines))


def oracle_reference() -> None:
    """Prompts quantize/oracle_prompts.py draws from real ground truths, for tests/oracle_prompts.rs."""
    import oracle_prompts as O

    picks = []
    for d in ("busi", "hc18", "tg3k_thyroid_gland", "kvasir_seg"):
        pairs = preprocess.read_pairs(preprocess.SHARED / "data" / d)
        picks += [(d, i, pairs[i]) for i in range(0, len(pairs), max(1, len(pairs) // 4))][:4]
    lines = ["# Oracle prompts drawn by quantize/oracle_prompts.py (seed 3), per ground truth and pairs.csv row."]
    for d, i, (img, masks) in picks:
        gt = preprocess.load_mask(masks)
        box = O.tight_box(gt)
        if box is None:
            continue
        h, w = gt.shape
        lines += [
            "[[case]]",
            f'masks = {[str(m.relative_to(preprocess.SHARED / "data")) for m in masks]}',
            f"index = {i}",
            f"tight = {O.adjust_box(box, w, h)}",
            f"loose20 = {O.adjust_box(box, w, h, loose=0.2)}",
            f"jitter10 = {O.adjust_box(box, w, h, jitter=0.1, seed=3, index=i)}",
            f"loose10_jitter20 = {O.adjust_box(box, w, h, loose=0.1, jitter=0.2, seed=3, index=i)}",
            f"point = {O.interior_point(gt)}",
            "",
        ]
    (FIX / "oracle_reference.toml").write_text("\n".join(lines))


def preprocess_reference() -> None:
    # PNG only: JPEG decoding has its own reference (jpeg_reference).
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


def jpeg_reference() -> None:
    """Real JPEG frames decoded by Pillow and by OpenCV (both libjpeg-turbo; checked equal here):
    sha256 of the RGB buffer and of LiteMedSAM's input tensor, for tests/jpeg_reference.rs."""
    import cv2
    from PIL import Image

    import lite_medsam

    def jpegs(d, sub, n):
        files = sorted(p.name for p in (preprocess.SHARED / "data" / d / sub).iterdir() if p.suffix == ".jpg")
        return [d + f"/{sub}/" + f for f in files[:: max(1, len(files) // n)][:n]]

    picks = []
    for d in ("lgg_brain_mri_minitest", "kvasir_seg", "shenzhen_cxr_lung", "tg3k_thyroid_gland", "bus_uc_malignant_minitest"):
        picks += jpegs(d, "images", 4)
    picks += ["lgg_brain_mri_minitest/images/TCGA_CS_5396_20010302_12.jpg"] + jpegs("lgg_brain_mri_minitest", "masks", 3)
    lines = [
        f"# Pillow {Image.__version__} and OpenCV {cv2.__version__} decode of real JPEG frames (identical): sha256",
        "# of the RGB8 buffer, and of LiteMedSAM's f32 input tensor (INTER_AREA, min-max, padded, little endian).",
    ]
    for rel in picks:
        path = preprocess.SHARED / "data" / rel
        rgb = np.asarray(Image.open(path).convert("RGB"))
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        assert bgr is not None and np.array_equal(rgb, bgr[:, :, ::-1]), f"Pillow and OpenCV differ on {rel}"
        x = np.ascontiguousarray(lite_medsam.preprocess(rgb), dtype="<f4")
        lines += [
            "[[image]]",
            f'path = "{rel}"',
            f"size = [{rgb.shape[1]}, {rgb.shape[0]}]",
            f'sha256 = "{hashlib.sha256(np.ascontiguousarray(rgb).tobytes()).hexdigest()}"',
            f'input_sha256 = "{hashlib.sha256(x.tobytes()).hexdigest()}"',
            "",
        ]
    (FIX / "jpeg_reference.toml").write_text("\n".join(lines))


def state_dict_list() -> None:
    """The synthetic vit_t state dict's key/shape/dtype list, for tests/state_dict_keys.rs."""
    from test_sam_arch import state_dict_rows

    rows = ["key\tshape\tdtype"] + [f"{k}\t{s}\t{d}" for k, s, d in state_dict_rows()]
    (FIX / "mobilesam_synthetic_state_dict.tsv").write_text("\n".join(rows) + "\n")


if __name__ == "__main__":
    if not (preprocess.SHARED / "data").is_dir():
        sys.exit(f"{preprocess.SHARED}/data is missing: fixtures are calibrated on shared ultrasound frames")
    FIX.mkdir(parents=True, exist_ok=True)
    parts = {
        "models_tiny": models_tiny,
        "models_tiny_lite": models_tiny_lite,
        "preprocess": preprocess_reference,
        "area": area_reference,
        "oracle": oracle_reference,
        "jpeg": jpeg_reference,
        "state_dict": state_dict_list,
    }
    for name in sys.argv[1:] or ["models_tiny", "preprocess", "state_dict"]:
        if name not in parts:
            sys.exit(f"unknown part {name!r} (known: {', '.join(parts)})")
        parts[name]()
    print("fixtures written to", FIX)
