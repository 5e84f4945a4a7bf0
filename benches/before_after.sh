#!/usr/bin/env bash
# Encoder and decoder times of two sonomask binaries (a change's before and after), and of the
# after binary on another SIMD kernel, interleaved in one run: `sonomask bench` on one image,
# ROUNDS rounds of (before, after with SONOMASK_KERNEL=$KERNEL, after), each RUNS timed runs,
# medians of the rounds' medians per configuration. Timings on a shared VM drift: only the
# ratios within one run mean anything.
#   benches/before_after.sh BEFORE_BIN AFTER_BIN [IMAGE]
#   ROUNDS=5 RUNS=5 THREADS=1 KERNEL=avx2 MODELS=models
set -euo pipefail
before=$1
after=$2
image=${3:-"../shared/data/busi/images/benign (1).png"}
ROUNDS=${ROUNDS:-5}
RUNS=${RUNS:-5}
THREADS=${THREADS:-1}
KERNEL=${KERNEL:-avx2}
MODELS=${MODELS:-models}
out=$(mktemp -d)
run() { # name, env..., binary
  local name=$1
  shift
  env SONOMASK_LOG=warn "$@" bench "$image" --box 100,100,300,250 --runs "$RUNS" --warmup 1 \
    --threads "$THREADS" --models "$MODELS" >>"$out/$name.jsonl"
}
for r in $(seq "$ROUNDS"); do
  run before "$before"
  run "after-$KERNEL" SONOMASK_KERNEL="$KERNEL" "$after"
  run after "$after"
  echo "round $r of $ROUNDS done" >&2
done
python3 - "$out" "$KERNEL" <<'EOF'
import json, statistics, sys
out, kernel = sys.argv[1], sys.argv[2]
names = ["before", f"after-{kernel}", "after"]
med = {}
for n in names:
    rows = [json.loads(l) for l in open(f"{out}/{n}.jsonl")]
    med[n] = {s: statistics.median(r[f"{s}_ms"]["median"] for r in rows) for s in ("encoder", "decoder")}
print("| configuration | encoder ms | decoder ms | encoder vs before | decoder vs before |")
print("|---|---|---|---|---|")
for n in names:
    e, d = med[n]["encoder"], med[n]["decoder"]
    print(f"| {n} | {e:.1f} | {d:.2f} | {e / med['before']['encoder']:.3f}x | {d / med['before']['decoder']:.3f}x |")
EOF
