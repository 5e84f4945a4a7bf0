#!/usr/bin/env bash
# Two builds of sonomask on the SaLIP frame and the box frame of the same image (as
# benches/salip_frame.sh: a frame's time is the sum of the per-stage latencies it pays, model
# loading and output writing excluded), interleaved in rounds so that both builds share the
# machine's state; the SaLIP / box ratio is taken per round and build.
#
#   benches/salip_ab.sh BEFORE_BINARY AFTER_BINARY [ROUNDS] [IMAGE]
# e.g. `git worktree add /tmp/b REV && (cd /tmp/b && cargo build --profile iter)`, then
# `benches/salip_ab.sh /tmp/b/target/iter/sonomask target/iter/sonomask 3`. PRECISION=fp32|int8
# passes --precision to both frames (default: auto, which differs between CPU classes and builds).
# BEFORE_MODELS=DIR runs the before build on other models (an earlier int8 artifact).
set -euo pipefail
cd "$(dirname "$0")/.."
BEFORE=${1:?before binary}
AFTER=${2:?after binary}
ROUNDS=${3:-3}
IMG=${4:-../shared/data/hc18/images/000_HC.png}
[ -f "$IMG" ] || { echo "missing $IMG (../shared/data is needed)" >&2; exit 1; }
[ -f models/manifest.toml ] || { echo "models/ not built: run quantize/build_models.sh" >&2; exit 1; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
frame() {
  local bin=$1
  shift
  RUST_LOG=sonomask::timing=info "$bin" "$@" -o "$WORK/m.png" 2>&1 |
    grep -E '^\[info\] [a-z_0-9]+: [0-9.]+ ms' | grep -vE '\] (load_|write_outputs)' |
    awk '{s += $3} END {printf "%.0f", s}'
}
echo "round|build|threads|box frame ms|SaLIP ms|SaLIP / box"
for r in $(seq "$ROUNDS"); do
  for t in 1 2; do
    for b in before after; do
      bin=$BEFORE
      models=${BEFORE_MODELS:-models}
      [ "$b" = after ] && bin=$AFTER && models=models
      box=$(frame "$bin" segment "$IMG" --models "$models" --box 100,100,500,400 --threads "$t" ${PRECISION:+--precision "$PRECISION"})
      salip=$(frame "$bin" segment "$IMG" --models "$models" --pipeline salip --text "fetal head" --threads "$t" ${PRECISION:+--precision "$PRECISION"})
      echo "$r|$b|$t|$box|$salip|$(awk -v a="$salip" -v b="$box" 'BEGIN {printf "%.2f", a / b}')"
    done
  done
done
