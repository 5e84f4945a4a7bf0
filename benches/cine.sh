#!/usr/bin/env bash
# Cine mode speed: frames per second with and without embedding reuse on the 30-frame YBR cine
# in ../shared/data/dicom_us, and on a 120-frame loop made of it (the file four times in a row,
# so the loop restarts, a real scene cut, every 30 frames). Uses the models in models/ (built by
# quantize/build_models.sh; synthetic weights measure speed only) and prints a markdown table.
#
#   benches/cine.sh [--precision fp32|int8] [extra segment options]
set -euo pipefail
cd "$(dirname "$0")/.."
DCM=../shared/data/dicom_us/examples_ybr_color.dcm
[ -f "$DCM" ] || { echo "missing $DCM (../shared/data is needed)" >&2; exit 1; }
[ -f models/manifest.toml ] || { echo "models/ not built: run quantize/build_models.sh" >&2; exit 1; }
cargo build --release --quiet
BIN=target/release/sonomask
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/loop"
for k in 1 2 3 4; do ln -s "$(realpath "$DCM")" "$WORK/loop/cine_$k.dcm"; done
EXTRA=("--precision" "fp32" "$@")
BOX=100,60,220,180
row() { # name source mode
  local out="$WORK/out_$1_$3" flags=()
  [ "$3" = "every-frame" ] && flags=(--no-reuse)
  SONOMASK_LOG=warn "$BIN" segment "$2" --box "$BOX" --json -o "$out" "${EXTRA[@]}" "${flags[@]}" > "$WORK/$1_$3.json"
  python3 - "$WORK/$1_$3.json" "$1" "$3" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
print(f"{sys.argv[2]}|{sys.argv[3]}|{j['frames']}|{j['encoder_runs']}|{j['encoder_fraction']:.3f}|{j['fps']:.3f}|{j['seconds']:.1f}")
PY
}
{
  row cine30 "$DCM" every-frame
  row cine30 "$DCM" reuse
  row loop120 "$WORK/loop" every-frame
  row loop120 "$WORK/loop" reuse
} > "$WORK/rows"
echo "| source | mode | frames | encoder runs | encoder fraction | fps | seconds | speed-up vs every-frame |"
echo "|---|---|---|---|---|---|---|---|"
python3 - "$WORK/rows" <<'PY'
import sys
rows = [l.strip().split("|") for l in open(sys.argv[1]) if l.strip()]
base = {r[0]: float(r[5]) for r in rows if r[1] == "every-frame"}
for r in rows:
    print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} | {r[5]} | {r[6]} | {float(r[5]) / base[r[0]]:.2f}x |")
PY
