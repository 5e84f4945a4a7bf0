"""Static int8 quantization of the exported CLIP ONNX files (same rules as quantize_sam.py:
QOperator, Conv + MatMul against weights only, no Softmax/Gemm/com.microsoft ops), then the
agreement report against fp32 (models/reports/clip_int8.{json,md}).

The token-embedding table (a Gather, 49408 x width) stays f32: tract dequantizes large int8
weights on every run, so an int8 table would cost time on every text encoding.
Calibration: real ultrasound and X-ray frames from ../shared (CLIP-preprocessed as on the device),
and the MedCLIP-SAMv2 / SaLIP text prompts tokenized by open_clip.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np
import onnx
import onnxruntime as ort
import open_clip

import clip_prep
import onnx_prep
import preprocess
from quantize_sam import quantize_one


def reference_prompts(shared: pathlib.Path) -> list[str]:
    """Every distinct prompt in ../shared/data/prompts_reference (MedCLIP-SAMv2 and SaLIP)."""
    out: list[str] = []
    for p in sorted((shared / "data" / "prompts_reference").glob("*.json")):
        d = json.loads(p.read_text())
        for v in d.values():
            for s in v if isinstance(v, list) else [v]:
                if s not in out:
                    out.append(s)
    return out


def calibration(shared: pathlib.Path, per_set: int, size: int, ctx: int):
    frames = preprocess.calibration_set(shared, per_set)
    images = [{"image": clip_prep.clip_input(preprocess.load_rgb(f), size)} for f, _ in frames]
    prompts = reference_prompts(shared)
    step = max(1, len(prompts) // 32)
    texts = [{"tokens": open_clip.tokenize([t], context_length=ctx).numpy()} for t in prompts[::step]]
    return frames, images, texts


def cosine(a, b):
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def verify(models: pathlib.Path, images, texts, names) -> dict:
    def sess(f):
        return ort.InferenceSession(str(models / f), providers=["CPUExecutionProvider"])

    fi, qi = sess("clip_image.fp32.onnx"), sess("clip_image.int8.onnx")
    ft, qt = sess("clip_text.fp32.onnx"), sess("clip_text.int8.onnx")
    rows = []
    for name, feed in zip(names, images):
        (fp, fd), (qp, qd) = fi.run(None, feed), qi.run(None, feed)
        patch_cos = [cosine(fd[0, i], qd[0, i]) for i in range(fd.shape[1])]
        rows.append({"image": name, "pooled_cosine": cosine(fp, qp), "patch_cosine_mean": float(np.mean(patch_cos))})
    tcos = [cosine(ft.run(None, f)[0], qt.run(None, f)[0]) for f in texts]
    hist = {r: onnx_prep.op_histogram(onnx.load(str(models / f"clip_{r}.int8.onnx"))) for r in ("image", "text")}
    return {
        "precision": "int8",
        "summary": {
            "frames": len(rows),
            "pooled_cosine_mean": float(np.mean([r["pooled_cosine"] for r in rows])),
            "pooled_cosine_min": float(np.min([r["pooled_cosine"] for r in rows])),
            "patch_cosine_mean": float(np.mean([r["patch_cosine_mean"] for r in rows])),
            "texts": len(tcos),
            "text_cosine_mean": float(np.mean(tcos)),
            "text_cosine_min": float(np.min(tcos)),
        },
        "frames": rows,
        "op_histogram": hist,
    }


def write_report(rep: dict, out_dir: pathlib.Path, synthetic: bool) -> pathlib.Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "clip_int8.json").write_text(json.dumps(rep, indent=1))
    s = rep["summary"]
    md = ["# CLIP int8 vs fp32 (onnxruntime)", ""]
    if synthetic:
        md += ["**Synthetic (seeded random, untrained) weights**: agreement shows quantization fidelity only, never accuracy.", ""]
    md += [
        f"{s['frames']} frames: pooled embedding cosine mean {s['pooled_cosine_mean']:.5f} (min {s['pooled_cosine_min']:.5f}), "
        f"patch embedding cosine mean {s['patch_cosine_mean']:.5f}; {s['texts']} prompts: text embedding cosine mean "
        f"{s['text_cosine_mean']:.5f} (min {s['text_cosine_min']:.5f}).",
        "",
        "| frame | pooled cosine | patch cosine (mean) |",
        "|---|---|---|",
    ]
    md += [f"| {r['image']} | {r['pooled_cosine']:.5f} | {r['patch_cosine_mean']:.5f} |" for r in rep["frames"]]
    for role, h in rep["op_histogram"].items():
        md += ["", f"## clip_{role} op types", "", " ".join(f"{k}:{v}" for k, v in h.items())]
    p = out_dir / "clip_int8.md"
    p.write_text("\n".join(md) + "\n")
    return p


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="models", type=pathlib.Path)
    ap.add_argument("--shared", default=preprocess.SHARED, type=pathlib.Path)
    ap.add_argument("--frames-per-set", type=int, default=8)
    ap.add_argument("--synthetic", action="store_true")
    a = ap.parse_args()
    meta = json.loads((a.models / "clip_meta.json").read_text())
    frames, images, texts = calibration(a.shared, a.frames_per_set, meta["image_size"], meta["context_length"])
    print(f"calibrating CLIP on {len(images)} real frames and {len(texts)} reference prompts")
    quantize_one(a.models / "clip_image.fp32.onnx", a.models / "clip_image.int8.onnx", images)
    quantize_one(a.models / "clip_text.fp32.onnx", a.models / "clip_text.int8.onnx", texts)
    rep = verify(a.models, images, texts, [f.name for f, _ in frames])
    print(write_report(rep, a.models / "reports", a.synthetic))
    print(json.dumps(rep["summary"]))


if __name__ == "__main__":
    main()
