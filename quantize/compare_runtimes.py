"""Time tract (the sonomask binary) and onnxruntime on the same ONNX files, same thread count, in
one run, and write the table into docs/BENCHMARKS.md (between the compare-runtimes markers).

usage: .venv/bin/python quantize/compare_runtimes.py [--models models[,DIR...]] [--runs 5] [--rounds 1]
    [--precisions fp32,int8] [--stock]
Several model directories (e.g. the real LiteMedSAM in models/ and a synthetic MobileSAM built with
`OUT=models_mobilesam quantize/build_models.sh --synthetic`) are timed in the same run, each with
its family's input recipe (read from its manifest), one row per family.
Builds target/release/sonomask with cargo first (multithread-mm is a default feature; --threads
picks 1 or 2). --rounds N interleaves the runtimes: each round times --runs passes of onnxruntime
(sessions kept), then of each tract build (a fresh process, warm-up first), and the medians are
over every round's runs; on a shared machine whose speed drifts by tens of percent within
minutes, this keeps a slow spell from landing on one runtime only. --stock adds rows for the same binary with tract's stock operators and glibc's
default allocator (SONOMASK_STOCK_OPS=1 SONOMASK_STOCK_HEAP=1): the before/after of the speed
work in one run. Each 1-thread round also times the machine's single-thread sgemm (numpy's BLAS, in
a fresh process) for the issue's second bar, the encoder's rate against it.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time
import tomllib

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import preprocess  # noqa: E402
from quantize_sam import box_prompt  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Per encoder pass: 40.9 G multiply-adds by tract's cost model (`FP32_ONLY=1 cargo bench --bench
# op_profile`), 2 FLOP each. LiteMedSAM: the same TinyViT from stage 0 on; its 1x1 patch
# embedding at 256x256 (3->32->64: 0.14 G multiply-adds) replaces MobileSAM's two 3x3 stride-2
# convolutions (1.43 G), so 39.6 G.
ENCODER_GFLOP = {"mobilesam": 81.8, "lite_medsam": 79.2}
IMAGE = "busi/images/benign (1).png"
MASK = "busi/masks/benign (1)_mask.png"


def machine() -> str:
    cpu = "unknown CPU"
    flags = set()
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name") and cpu == "unknown CPU":
            cpu = line.split(":", 1)[1].strip()
        if line.startswith("flags") and not flags:
            flags = set(line.split(":", 1)[1].split())
    feats = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni") if f in flags]
    return f"{cpu}, {os.cpu_count()} cores, {platform.machine()}, features: {' '.join(feats) or 'none'}"


def ort_session(path, threads):
    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.inter_op_num_threads = 1
    o.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])


def ort_times(s, feeds, runs, warmup):
    out, ts = None, []
    for i in range(warmup + runs):
        t = time.perf_counter()
        out = s.run(None, feeds)
        if i >= warmup:
            ts.append((time.perf_counter() - t) * 1e3)
    return ts, out


STOCK_ENV = {"SONOMASK_STOCK_OPS": "1", "SONOMASK_STOCK_HEAP": "1"}


def tract_times(binary, models, image, box, precision, threads, runs, warmup, stock=False):
    cmd = [str(binary), "bench", str(image), "--box", box, "--models", str(models), "--precision", precision,
           "--threads", str(threads), "--runs", str(runs), "--warmup", str(warmup)]
    env = {**os.environ, "SONOMASK_LOG": "warn", **(STOCK_ENV if stock else {})}
    for k in STOCK_ENV:
        if not stock:
            env.pop(k, None)
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr}")
    return json.loads(r.stdout)


# The machine's single-thread sgemm rate, timed in a fresh process (the BLAS reads its thread
# count at load): numpy's BLAS (OpenBLAS in the venv) on a 2048^3 f32 product, best of 5.
SGEMM_N = 2048
SGEMM = """
import sys, time
import numpy as np
n, reps = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(0)
a = rng.random((n, n), dtype=np.float32)
b = rng.random((n, n), dtype=np.float32)
a @ b
best = min((lambda t: (a @ b, time.perf_counter() - t)[1])(time.perf_counter()) for _ in range(reps))
print(2 * n**3 / best / 1e9)
"""


def sgemm_gflops(reps=5):
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", SGEMM, str(SGEMM_N), str(reps)], env=env,
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def build():
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    return ROOT / "target/release/sonomask"


def sgemm_line(rows, sgemm):
    """The issue's second bar: sonomask's 1-thread fp32 encoder against the sgemm rate."""
    rate = statistics.median(sgemm)
    line = (f"Single-thread sgemm in the same run (numpy's BLAS, {SGEMM_N}^3 f32, best of 5, once per "
            f"1-thread round, median of {len(sgemm)}): {rate:.1f} GFLOP/s")
    for r in rows:
        if r["model"] == "encoder" and r["threads"] == 1 and r["precision"] == "fp32" and r["tract"].startswith("sonomask"):
            gf = ENCODER_GFLOP[r["family"]] / (r["tract_median"] / 1e3)
            line += f"; sonomask's 1-thread fp32 {r['family']} encoder runs at {gf:.1f} GFLOP/s, {100 * gf / rate:.0f}% of it"
    return line + "."


def model_set(models: pathlib.Path, rgb, gt):
    """(family, weights label, encoder input, decoder coords and labels, low-res size) of a model dir."""
    m = tomllib.loads((models / "manifest.toml").read_text())["sam"]
    family = m.get("family", "mobilesam")
    recipe = preprocess.Recipe(family, m["image_size"])
    coords, labels = box_prompt(gt, rgb.shape[:2], recipe)
    weights = "synthetic" if m["synthetic"] else "real"
    return family, weights, recipe.input(rgb), coords, labels, m["low_res_size"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=str(ROOT / "models"), help="model dir(s), comma-separated")
    ap.add_argument("--shared", default=preprocess.SHARED, type=pathlib.Path)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=1, help="interleaved rounds of --runs passes per runtime")
    ap.add_argument("--doc", default=ROOT / "docs" / "BENCHMARKS.md", type=pathlib.Path)
    ap.add_argument("--precisions", default="fp32,int8", help="comma-separated (int8 on x86 takes minutes)")
    ap.add_argument("--stock", action="store_true", help="also time tract's stock operators and allocator")
    ap.add_argument("--marker", default="compare-runtimes", help="the doc block to (re)write: <!-- MARKER:begin/end -->")
    ap.add_argument("--binary", type=pathlib.Path, help="a sonomask binary already built (default: cargo build --release)")
    a = ap.parse_args()
    binary = a.binary or build()
    image = a.shared / "data" / IMAGE
    rgb = preprocess.load_rgb(image)
    gt = preprocess.mask_box(preprocess.load_mask([a.shared / "data" / MASK]))
    box = ",".join(str(int(v)) for v in gt)
    sets = [pathlib.Path(d) for d in a.models.split(",")]
    infos = {d: model_set(d, rgb, gt) for d in sets}

    rows = []
    def row(family, model, precision, threads, tract_label, ort_ms, tract_ms):
        t_med, o_med = statistics.median(tract_ms), statistics.median(ort_ms)
        rows.append({
            "family": family, "weights": infos_by_family[family],
            "model": model, "precision": precision, "threads": threads, "tract": tract_label,
            "tract_median": t_med, "tract_mean": statistics.mean(tract_ms),
            "ort_median": o_med, "ort_mean": statistics.mean(ort_ms), "ratio": t_med / o_med,
        })
        print(json.dumps(rows[-1]), flush=True)

    infos_by_family = {v[0]: v[1] for v in infos.values()}
    builds = [True, False] if a.stock else [False]
    sgemm = []
    for models_dir, precision in [(d, p) for p in a.precisions.split(",") for d in sets]:
        family, _, x, coords, labels, low = infos[models_dir]
        enc = models_dir / f"sam_encoder.{precision}.onnx"
        dec = models_dir / f"sam_decoder.{precision}.onnx"
        for threads in (1, 2):
            enc_s, dec_s = ort_session(enc, threads), ort_session(dec, threads)
            ort_ms = {"encoder": [], "decoder": []}
            tract_ms = {(b, m): [] for b in builds for m in ("encoder", "decoder")}
            for _ in range(a.rounds):
                if threads == 1 and models_dir == sets[0]:
                    sgemm.append(sgemm_gflops())
                    print(json.dumps({"sgemm_1thread_gflops": sgemm[-1]}), flush=True)
                enc_ms, (emb,) = ort_times(enc_s, {"image": x}, a.runs, a.warmup)
                feeds = {"image_embeddings": emb, "point_coords": coords, "point_labels": labels,
                         "mask_input": np.zeros((1, 1, low, low), np.float32), "has_mask_input": np.zeros(1, np.float32)}
                dec_ms, _ = ort_times(dec_s, feeds, a.runs, a.warmup)
                ort_ms["encoder"] += enc_ms
                ort_ms["decoder"] += dec_ms
                for stock in builds:
                    tr = tract_times(binary, models_dir, image, box, precision, threads, a.runs, a.warmup, stock)
                    tract_ms[(stock, "encoder")] += tr["encoder_ms"]["times"]
                    tract_ms[(stock, "decoder")] += tr["decoder_ms"]["times"]
            for stock in builds:
                label = "tract stock ops + glibc heap" if stock else "sonomask (own ops, heap kept)"
                for model in ("encoder", "decoder"):
                    row(family, model, precision, threads, label, ort_ms[model], tract_ms[(stock, model)])

    lines = [
        f"<!-- {a.marker}:begin (written by quantize/compare_runtimes.py) -->",
        f"Machine: {machine()}. onnxruntime {ort.__version__}; tract 0.23.9. Frame: `{IMAGE}` (real BUSI), "
        f"box prompt from its ground-truth mask; {a.rounds} interleaved round(s) of {a.runs} timed runs per runtime, "
        f"each after {a.warmup} warm-up, medians and means over all rounds, measured {time.strftime('%Y-%m-%d')} by "
        f"`.venv/bin/python quantize/compare_runtimes.py --models {a.models} --runs {a.runs} --rounds {a.rounds} "
        f"--precisions {a.precisions}{' --stock' if a.stock else ''}`. GFLOP/s: 81.8 GFLOP per MobileSAM encoder pass, "
        "79.2 per LiteMedSAM pass.",
        sgemm_line(rows, sgemm),
        "Weights: " + ", ".join(f"{f} {w}" for f, w in infos_by_family.items())
        + " (synthetic = seeded random, untrained; speed does not depend on weight values).",
        "",
        "| family | model | precision | threads | tract build | tract median ms | tract mean ms | onnxruntime median ms | onnxruntime mean ms | tract / onnxruntime | tract GFLOP/s | onnxruntime GFLOP/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        gf = lambda ms: f"{ENCODER_GFLOP[r['family']] / (ms / 1e3):.1f}" if r["model"] == "encoder" else ""
        lines.append(
            f"| {r['family']} ({r['weights']}) | {r['model']} | {r['precision']} | {r['threads']} | {r['tract']} | {r['tract_median']:.1f} | {r['tract_mean']:.1f} | "
            f"{r['ort_median']:.1f} | {r['ort_mean']:.1f} | {r['ratio']:.2f}x | {gf(r['tract_median'])} | {gf(r['ort_median'])} |"
        )
    lines.append(f"<!-- {a.marker}:end -->")
    block = "\n".join(lines)
    doc = a.doc.read_text() if a.doc.exists() else ""
    if f"<!-- {a.marker}:begin" in doc:
        pre = doc.split(f"<!-- {a.marker}:begin")[0]
        post = doc.split(f"<!-- {a.marker}:end -->")[1]
        doc = pre + block + post
    else:
        doc += "\n" + block + "\n"
    a.doc.parent.mkdir(parents=True, exist_ok=True)
    a.doc.write_text(doc)
    print(block)


if __name__ == "__main__":
    main()
