#!/usr/bin/env bash
# Several builds of sonomask (e.g. differing only in everything.rs's GRID_BATCH) on the issue's
# SaLIP frame, interleaved in rounds at 1 and 2 threads: the grid decoder's stage time and the
# frame's (the sum of its stage latencies, model loading and output writing excluded).
#
#   benches/grid_batch_ab.sh BINARY... (ROUNDS=3, IMAGE=../shared/data/hc18/images/000_HC.png)
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: $0 BINARY..." >&2; exit 2; }
ROUNDS=${ROUNDS:-3}
IMG=${IMAGE:-../shared/data/hc18/images/000_HC.png}
[ -f "$IMG" ] || { echo "missing $IMG (../shared/data is needed)" >&2; exit 1; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
echo "round|build|threads|decoder_grid ms|SaLIP frame ms"
for r in $(seq "$ROUNDS"); do
  for t in 1 2; do
    for bin in "$@"; do
      out=$(RUST_LOG=sonomask::timing=info "$bin" segment "$IMG" --pipeline salip --text "fetal head" --threads "$t" -o "$WORK/m.png" 2>&1)
      grid=$(echo "$out" | grep -E '\] decoder_grid:' | awk '{print $3}')
      tot=$(echo "$out" | grep -E '^\[info\] [a-z_0-9]+: [0-9.]+ ms' | grep -vE '\] (load_|write_outputs)' | awk '{s += $3} END {printf "%.0f", s}')
      echo "$r|$bin|$t|$grid|$tot"
    done
  done
done
