"""Per-variant verification report, computed with onnxruntime: op-type histogram, agreement with
the fp32 models (embedding cosine; mask IoU of the final box-prompted mask at the original image
size) and, for real weights, Dice against the ground truth of each frame (GT box prompt). With
`--held-out` the frames are disjoint from the calibration frames. Writes
models/reports/sam_<variant>.{json,md}."""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F

import onnx_prep
import preprocess
from quantize_sam import box_prompt


def postprocess(low_res: np.ndarray, input_hw, orig_hw, size: int) -> np.ndarray:
    """The official SAM mask post-processing (Sam.postprocess_masks)."""
    m = torch.from_numpy(low_res)
    m = F.interpolate(m, (size, size), mode="bilinear", align_corners=False)
    m = m[..., : input_hw[0], : input_hw[1]]
    m = F.interpolate(m, tuple(orig_hw), mode="bilinear", align_corners=False)
    return m.numpy()


def resized_hw(orig_hw, size):
    scale = size / max(orig_hw)
    return int(orig_hw[0] * scale + 0.5), int(orig_hw[1] * scale + 0.5)


class Pipeline:
    def __init__(self, models: pathlib.Path, precision: str, recipe: preprocess.Recipe, low_res: int):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 2
        self.enc = ort.InferenceSession(str(models / f"sam_encoder.{precision}.onnx"), opts, providers=["CPUExecutionProvider"])
        self.dec = ort.InferenceSession(str(models / f"sam_decoder.{precision}.onnx"), opts, providers=["CPUExecutionProvider"])
        self.recipe, self.low = recipe, low_res

    def embed(self, rgb):
        return self.enc.run(None, {"image": self.recipe.input(rgb)})[0]

    def decode(self, emb, coords, labels):
        low = self.low
        return self.dec.run(
            None,
            {
                "image_embeddings": emb,
                "point_coords": coords,
                "point_labels": labels,
                "mask_input": np.zeros((1, 1, low, low), np.float32),
                "has_mask_input": np.zeros(1, np.float32),
            },
        )


def iou(a, b):
    u = np.logical_or(a, b).sum()
    return 1.0 if u == 0 else float(np.logical_and(a, b).sum() / u)


def cosine(a, b):
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def dice(a, b):
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * np.logical_and(a, b).sum() / s)


def verify(models: pathlib.Path, precision: str, frames, recipe: preprocess.Recipe, low_res: int) -> dict:
    ref, cand = Pipeline(models, "fp32", recipe, low_res), Pipeline(models, precision, recipe, low_res)
    size = recipe.size
    rows = []
    for img_path, mask_paths in frames:
        rgb = preprocess.load_rgb(img_path)
        hw = rgb.shape[:2]
        gt = preprocess.load_mask(mask_paths)
        coords, labels = box_prompt(preprocess.mask_box(gt), hw, recipe)
        e_ref, e_c = ref.embed(rgb), cand.embed(rgb)
        masks = []
        for pipe, e in ((ref, e_ref), (cand, e_c)):
            low, _ = pipe.decode(e, coords, labels)
            masks.append(postprocess(low[:, :1], resized_hw(hw, size), hw, size)[0, 0] > 0.0)
        rows.append(
            {
                "image": str(img_path.relative_to(img_path.parents[2])),
                "embedding_cosine": cosine(e_ref, e_c),
                "mask_iou": iou(*masks),
                "dice_fp32_gt": dice(masks[0], gt),
                "dice_gt": dice(masks[1], gt),
                "dice_vs_fp32": dice(masks[1], masks[0]),
            }
        )
    cos = [r["embedding_cosine"] for r in rows]
    ious = [r["mask_iou"] for r in rows]
    return {
        "precision": precision,
        "family": recipe.family,
        "op_histogram": {
            "sam_encoder": onnx_prep.op_histogram(onnx.load(str(models / f"sam_encoder.{precision}.onnx"))),
            "sam_decoder": onnx_prep.op_histogram(onnx.load(str(models / f"sam_decoder.{precision}.onnx"))),
        },
        "frames": rows,
        "summary": {
            "frames": len(rows),
            "embedding_cosine_mean": float(np.mean(cos)),
            "embedding_cosine_min": float(np.min(cos)),
            "mask_iou_mean": float(np.mean(ious)),
            "mask_iou_min": float(np.min(ious)),
            "dice_gt_mean": float(np.mean([r["dice_gt"] for r in rows])),
            "dice_fp32_gt_mean": float(np.mean([r["dice_fp32_gt"] for r in rows])),
            "dice_vs_fp32_mean": float(np.mean([r["dice_vs_fp32"] for r in rows])),
        },
    }


def write_report(report: dict, out_dir: pathlib.Path, synthetic: bool, held_out: bool) -> pathlib.Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    p = report["precision"]
    (out_dir / f"sam_{p}.json").write_text(json.dumps(report, indent=1))
    s = report["summary"]
    name = {"mobilesam": "MobileSAM", "lite_medsam": "LiteMedSAM"}[report["family"]]
    md = [f"# {name} {p} vs fp32 (onnxruntime)", ""]
    which = "held-out frames (not used for calibration)" if held_out else "calibration frames"
    if synthetic:
        md += ["**Synthetic (seeded random, untrained) weights**: agreement shows quantization fidelity only, never accuracy;", "the Dice columns measure nothing.", ""]
    else:
        md += ["Real trained weights. Dice: the mask from the ground truth's box against the ground truth.", ""]
    md += [
        f"{s['frames']} {which}: embedding cosine mean {s['embedding_cosine_mean']:.5f} (min {s['embedding_cosine_min']:.5f}); "
        f"box-prompt mask IoU vs fp32 mean {s['mask_iou_mean']:.4f} (min {s['mask_iou_min']:.4f}); "
        f"Dice vs GT {p} {s['dice_gt_mean']:.4f}, fp32 {s['dice_fp32_gt_mean']:.4f}; Dice {p} vs fp32 {s['dice_vs_fp32_mean']:.4f}.",
        "",
        "| frame | embedding cosine | mask IoU vs fp32 | Dice vs GT (fp32) | Dice vs GT |",
        "|---|---|---|---|---|",
    ]
    md += [
        f"| {r['image']} | {r['embedding_cosine']:.5f} | {r['mask_iou']:.4f} | {r['dice_fp32_gt']:.4f} | {r['dice_gt']:.4f} |"
        for r in report["frames"]
    ]
    for role, h in report["op_histogram"].items():
        md += ["", f"## {role} op types", "", " ".join(f"{k}:{v}" for k, v in h.items())]
    path = out_dir / f"sam_{p}.md"
    path.write_text("\n".join(md) + "\n")
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", default="models", type=pathlib.Path)
    ap.add_argument("--shared", default=preprocess.SHARED, type=pathlib.Path)
    ap.add_argument("--frames-per-set", type=int, default=8)
    ap.add_argument("--image-size", type=int, default=1024)
    ap.add_argument("--family", default="mobilesam", choices=["mobilesam", "lite_medsam"])
    ap.add_argument("--low-res", type=int, help="decoder mask size (default image size / 4)")
    ap.add_argument("--precision", default="int8")
    ap.add_argument("--synthetic", action="store_true")
    ap.add_argument("--held-out", action="store_true", help="frames disjoint from the calibration frames")
    ap.add_argument("--sets", default=",".join(preprocess.CALIBRATION_SETS))
    a = ap.parse_args()
    frames = preprocess.calibration_set(a.shared, a.frames_per_set, held_out=a.held_out, sets=a.sets.split(","))
    recipe = preprocess.Recipe(a.family, a.image_size)
    rep = verify(a.models, a.precision, frames, recipe, a.low_res or a.image_size // 4)
    print(write_report(rep, a.models / "reports", a.synthetic, a.held_out))
    print(json.dumps(rep["summary"]))


if __name__ == "__main__":
    main()
