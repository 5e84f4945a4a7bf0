"""The PyTorch reference for docs/ACCURACY.md: LiteMedSAM with its official recipe
(`lite_medsam.segment_box`, the package's model code and verified checkpoint) on every labelled
set in ../shared/data, with the same oracle prompts as `sonomask eval` (quantize/oracle_prompts.py
mirrors src/prompting/oracle.rs). One encoder pass per image, one decoder pass per prompt mode.

usage: .venv/bin/python quantize/reference_eval.py --out eval_out/accuracy [--sets a,b] [--limit N]
Writes OUT/<set>/reference.csv: image, then Dice per mode (empty for an empty ground truth).
"""

from __future__ import annotations

import argparse
import os
import csv
import pathlib
import time

import numpy as np
import torch

import lite_medsam as L
import oracle_prompts as O
import preprocess as P

# (name, loose, jitter, point): the modes ACCURACY.md reports; sonomask eval's flags per mode
# are in quantize/accuracy.sh.
MODES = [
    ("box", 0.0, 0.0, False),
    ("loose10", 0.10, 0.0, False),
    ("loose20", 0.20, 0.0, False),
    ("jitter10", 0.0, 0.10, False),
    ("jitter20", 0.0, 0.20, False),
    ("point", 0.0, 0.0, True),
]
SEED = 0

LABELLED = [
    "busi",
    "hc18",
    "tg3k_thyroid_gland",
    "busbra_minitest",
    "bus_uc_malignant_minitest",
    "breast_lesions_usg_minitest",
    "shenzhen_cxr_lung",
    "kvasir_seg",
    "lgg_brain_mri_minitest",
    "medclipsam_example_brain_mri",
]


def dice(a, b):
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * np.logical_and(a, b).sum() / s)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=pathlib.Path, default=pathlib.Path("eval_out/accuracy"))
    ap.add_argument("--shared", type=pathlib.Path, default=P.SHARED)
    ap.add_argument("--sets", default=",".join(LABELLED))
    ap.add_argument("--limit", type=int)
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("THREADS", "1")))
    net = L.build()
    for name in a.sets.split(","):
        d = a.shared / "data" / name
        pairs = P.read_pairs(d)[: a.limit]
        out = a.out / name
        out.mkdir(parents=True, exist_ok=True)
        rows, t0 = [], time.time()
        for index, (img, masks) in enumerate(pairs):
            rgb = P.load_rgb(img)
            gt = P.load_mask(masks)
            hw = rgb.shape[:2]
            row = {"image": img.name}
            if gt.shape != hw:
                # sonomask eval records this pair as an error (ground truth and image sizes differ)
                print(f"{name}/{img.name}: ground truth {gt.shape[::-1]} vs image {hw[::-1]}: skipped", flush=True)
                rows.append(row)
                continue
            box = O.tight_box(gt)
            if box is not None:
                emb = net.image_encoder(torch.from_numpy(L.preprocess(rgb)))
                for mode, loose, jitter, point in MODES:
                    if point:
                        m = L.decode(net, emb, hw, point=O.interior_point(gt))
                    else:
                        b = O.adjust_box(box, hw[1], hw[0], loose, jitter, SEED, index)
                        m = L.decode(net, emb, hw, box=b)
                    row[mode] = f"{dice(m, gt):.6f}"
            rows.append(row)
        with open(out / "reference.csv", "w", newline="") as f:
            w = csv.DictWriter(f, ["image"] + [m[0] for m in MODES])
            w.writeheader()
            w.writerows(rows)
        scored = [float(r["box"]) for r in rows if "box" in r]
        box = f"{np.mean(scored):.4f}" if scored else "none scored"
        print(f"{name}: {len(rows)} images, box Dice {box} ({time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
