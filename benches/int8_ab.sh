#!/bin/bash
# The int8 encoder and decoder against fp32 and against tract's own int8 chain, interleaved in one
# run: rounds of fp32 (own operators), int8 (own Int8Linear), int8 with Int8Linear off
# (SONOMASK_OWN_OPS_OFF=int8_linear); sonomask bench medians, then the medians over rounds.
#   THREADS=1 ROUNDS=5 [B=target/release/sonomask] benches/int8_ab.sh
# BEFORE=BIN [BEFORE_MODELS=DIR] adds that build's fp32 and int8 (on its own models, e.g. an earlier
# int8 artifact) to every round, for a before/after in the same run; TRACT=0 leaves out tract's
# int8 chain (slow: it dominates the run's time).
set -euo pipefail
cd "$(dirname "$0")/.."
B=${B:-target/release/sonomask}
T=${THREADS:-1}; R=${ROUNDS:-5}
img="../shared/data/busi/images/benign (1).png"
out=$(mktemp -d)
cfgs=("fp32 none" "int8 none")
[ "${TRACT:-1}" != 0 ] && cfgs+=("int8 int8_linear")
[ -n "${BEFORE:-}" ] && cfgs+=("fp32 before" "int8 before")
for r in $(seq $R); do
  for cfg in "${cfgs[@]}"; do
    set -- $cfg
    bin=$B; off=""; models=()
    case $2 in
      none) ;;
      before) bin=$BEFORE; [ -n "${BEFORE_MODELS:-}" ] && models=(--models "$BEFORE_MODELS");;
      *) off=$2;;
    esac
    SONOMASK_LOG=warn SONOMASK_OWN_OPS_OFF=$off $bin bench "$img" "${models[@]}" --box 100,100,300,250 --runs 5 --warmup 1 --threads $T --precision $1 --decoder-precision $1 >> $out/$1-$2.jsonl
  done
  echo "round $r done" >&2
done
python3 - "$out" <<'PY'
import json,sys,statistics,glob,os
d=sys.argv[1]
rows={}
for f in sorted(glob.glob(d+'/*.jsonl')):
    js=[json.loads(l) for l in open(f)]
    e=statistics.median(j['encoder_ms']['median'] for j in js); dd=statistics.median(j['decoder_ms']['median'] for j in js)
    rows[os.path.basename(f)[:-6]]=(e,dd)
print('| configuration | encoder ms | decoder ms | encoder vs fp32 | decoder vs fp32 |')
print('|---|---|---|---|---|')
for k in ['fp32-none','int8-none','int8-int8_linear','fp32-before','int8-before']:
    if k not in rows: continue
    # Each build against its own fp32 (the before build's int8 against the before fp32).
    fe,fd=rows['fp32-before' if k.endswith('before') else 'fp32-none']
    e,dd=rows[k]; print(f'| {k} | {e:.1f} | {dd:.2f} | {e/fe:.3f}x | {dd/fd:.3f}x |')
# Per round (encoder medians), to judge the noise.
for f in sorted(glob.glob(d+'/*.jsonl')):
    js=[json.loads(l) for l in open(f)]
    print(os.path.basename(f)[:-6], 'encoder per round:', ' '.join(f"{j['encoder_ms']['median']:.0f}" for j in js))
PY
