#!/usr/bin/env bash
# Everything mode's speed: a SaLIP frame against a box-prompted frame of the same image, with the
# native grid decoder (default) and the tract decoder (`--grid-decoder tract`, one graph run per
# prompt), at 1 and 2 threads, interleaved in rounds so that all figures share the machine's
# state. A frame's time is the sum of the per-stage latencies it pays (`sonomask::timing` log:
# every stage but model loading and output writing). Uses the models in models/ (the real
# LiteMedSAM from quantize/build_models.sh; CLIP is synthetic and only timed).
#
#   [PROFILE=release|iter] benches/salip_frame.sh [ROUNDS] [IMAGE]
# KERNELS="avx512 avx2" times each of those SIMD kernels (SONOMASK_KERNEL) in the same rounds;
# GRIDS=native skips the tract-grid and box-grid columns (the slow references).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
IMG=${2:-../shared/data/hc18/images/000_HC.png}
[ -f "$IMG" ] || { echo "missing $IMG (../shared/data is needed)" >&2; exit 1; }
[ -f models/manifest.toml ] || { echo "models/ not built: run quantize/build_models.sh" >&2; exit 1; }
PROFILE=${PROFILE:-release}
cargo build --profile "$PROFILE" --quiet
BIN=target/$PROFILE/sonomask
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
frame() {
  RUST_LOG=sonomask::timing=info "$BIN" "$@" -o "$WORK/m.png" 2>&1 |
    grep -E '^\[info\] [a-z_0-9]+: [0-9.]+ ms' | grep -vE '\] (load_|write_outputs)' |
    awk '{s += $3} END {printf "%.0f", s}'
}
SALIP=(segment "$IMG" --pipeline salip --text "fetal head")
BOXES=(--grid boxes --pred-iou 0.8 --stability 0.7)
KERNELS=${KERNELS:-default}
GRIDS=${GRIDS:-all}
if [ "$GRIDS" = native ]; then
  echo "round|kernel|threads|box frame ms|SaLIP native ms"
else
  echo "round|kernel|threads|box frame ms|SaLIP native ms|SaLIP tract ms|box-grid SaLIP native ms|box-grid SaLIP tract ms"
fi
for r in $(seq "$ROUNDS"); do
  for k in $KERNELS; do
    if [ "$k" = default ]; then unset SONOMASK_KERNEL; else export SONOMASK_KERNEL=$k; fi
    for t in 1 2; do
      row="$r|$k|$t|$(frame segment "$IMG" --box 100,100,500,400 --threads "$t")|$(frame "${SALIP[@]}" --threads "$t")"
      if [ "$GRIDS" != native ]; then
        row="$row|$(frame "${SALIP[@]}" --threads "$t" --grid-decoder tract)|$(frame "${SALIP[@]}" "${BOXES[@]}" --threads "$t")|$(frame "${SALIP[@]}" "${BOXES[@]}" --threads "$t" --grid-decoder tract)"
      fi
      echo "$row"
    done
  done
done
