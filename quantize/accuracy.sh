#!/usr/bin/env bash
# Regenerate docs/ACCURACY.md: LiteMedSAM (real weights, models/) through sonomask on every
# labelled set in ../shared/data, beside the PyTorch reference (official recipe) on the same
# images and prompts.
#   1. the PyTorch reference, every set, every prompt mode (quantize/reference_eval.py);
#   2. `sonomask eval --prompt oracle-box` per set in fp32 and int8;
#   3. loose, jittered and point prompts in fp32 on the first NOISE_LIMIT (40) images of
#      NOISE_SETS (BUSI, HC18, TG3K); int8 on the first INT8_LIMIT images of each set (all);
#      SaLIP's bound on BOUND_LIMIT (10) images of BOUND_SETS (BUSI, HC18, TG3K);
#   4. quantize/accuracy_report.py writes the tables.
# usage: quantize/accuracy.sh          (about an hour on 2 cores; REUSE=1 keeps finished parts)
# env:   SHARED=DIR (default ../shared), OUT=DIR (default eval_out/accuracy), THREADS=N,
#        BIN=PATH (a sonomask binary already built; default: cargo build --release),
#        SKIP_REFERENCE=1 (the PyTorch part was run on its own), SKIP_REPORT=1
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
shared="${SHARED:-$root/../shared}"
out="${OUT:-eval_out/accuracy}"
threads="${THREADS:-2}"
[ -f models/manifest.toml ] || { echo "error: build the models first (quantize/build_models.sh)" >&2; exit 1; }
grep -q 'family = "lite_medsam"' models/manifest.toml || { echo "error: models/ is not LiteMedSAM (quantize/build_models.sh without arguments builds it)" >&2; exit 1; }
sets=(busi hc18 tg3k_thyroid_gland busbra_minitest bus_uc_malignant_minitest breast_lesions_usg_minitest
      shenzhen_cxr_lung kvasir_seg lgg_brain_mri_minitest medclipsam_example_brain_mri)
read -r -a noisy <<< "${NOISE_SETS:-busi hc18 tg3k_thyroid_gland}"
limit="${NOISE_LIMIT:-40}"
int8_limit="${INT8_LIMIT:-100000}"
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet
fi
bin="${BIN:-target/release/sonomask}"
if [ -z "${SKIP_REFERENCE:-}" ] && { [ -z "${REUSE:-}" ] || [ ! -f "$out/medclipsam_example_brain_mri/reference.csv" ]; }; then
  (cd quantize && "$root/.venv/bin/python" -W ignore reference_eval.py --out "$root/$out" --shared "$shared")
fi
run() { # set mode dir args...
  local set="$1" dir="$out/$1/$2"; shift 2
  if [ -n "${REUSE:-}" ] && [ -f "$dir/eval.json" ]; then return; fi
  SONOMASK_LOG=warn "$bin" eval --pairs "$shared/data/$set/pairs.csv" --threads "$threads" --out-dir "$dir" "$@"
}
for set in "${sets[@]}"; do
  run "$set" fp32-box --prompt oracle-box --precision fp32
done
for set in "${noisy[@]}"; do
  run "$set" fp32-loose10 --prompt oracle-box --loose 0.1 --precision fp32 --limit "$limit"
  run "$set" fp32-loose20 --prompt oracle-box --loose 0.2 --precision fp32 --limit "$limit"
  run "$set" fp32-jitter10 --prompt jittered-box --jitter 0.1 --seed 0 --precision fp32 --limit "$limit"
  run "$set" fp32-jitter20 --prompt jittered-box --jitter 0.2 --seed 0 --precision fp32 --limit "$limit"
  run "$set" fp32-point --prompt oracle-point --precision fp32 --limit "$limit"
done
# int8 last: tract's int8 encoder is the slow one on x86 (docs/BENCHMARKS.md)
for set in "${sets[@]}"; do
  run "$set" int8-box --prompt oracle-box --precision int8 --limit "$int8_limit"
done
# SaLIP's bound (slow: 256-512 decoder calls per image): BOUND_LIMIT images of three sets
blimit="${BOUND_LIMIT:-10}"
read -r -a bound_sets <<< "${BOUND_SETS:-busi hc18 tg3k_thyroid_gland}"
for set in "${bound_sets[@]}"; do
  for grid in points boxes; do
    run "$set" "bound-$grid-official" --prompt everything-bound --grid "$grid" --precision fp32 --limit "$blimit"
    run "$set" "bound-$grid" --prompt everything-bound --grid "$grid" --pred-iou 0 --stability 0 --precision fp32 --limit "$blimit"
  done
done
[ -n "${SKIP_REPORT:-}" ] || .venv/bin/python quantize/accuracy_report.py --out "$out" --doc docs/ACCURACY.md
