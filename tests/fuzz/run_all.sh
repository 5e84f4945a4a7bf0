#!/usr/bin/env bash
# The long fuzz campaign (docs/RELIABILITY.md; not in CI, which has no nightly): every target
# for RUNS executions (default 10 million), JOBS at a time, from and into its corpus in
# tests/fuzz/corpus/<target>. Built without a sanitizer but with debug assertions and overflow
# checks (SANITIZER=address for ASan, about 10x slower). Prints one line per target:
# target, executions, seconds, and whether it crashed (artifacts in tests/fuzz/artifacts/).
#   cargo install cargo-fuzz; rustup toolchain install nightly
#   tests/fuzz/run_all.sh                 # all targets
#   RUNS=1000000 tests/fuzz/run_all.sh dicom_reader raw_stream
#   RUNS=-1 MAX_TIME=20 CORPUS_OUT=target/fuzz-new tests/fuzz/run_all.sh   # CI's bounded run
# Exits non-zero when any target crashed.
set -uo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-10000000}
JOBS=${JOBS:-2}
SANITIZER=${SANITIZER:-none}
# Optional cap in seconds per target (0: none); a capped target reports how far it got.
MAX_TIME=${MAX_TIME:-0}
# New inputs go to the committed corpus unless CORPUS_OUT names a scratch directory (CI: the
# committed corpus is then read, never written).
CORPUS_OUT=${CORPUS_OUT:-}
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(mask_decoder prompt_file board_file prompt_bank manifest raw_stream wire_receiver dicom_reader image_loader)
fi
cargo +nightly fuzz build --fuzz-dir tests/fuzz -O -a -s "$SANITIZER" || exit 1
logs=target/fuzz-logs
mkdir -p "$logs"
run_one() {
  local t=$1 start=$SECONDS
  local dirs=("tests/fuzz/corpus/$t")
  if [ -n "$CORPUS_OUT" ]; then
    mkdir -p "$CORPUS_OUT/$t"
    dirs=("$CORPUS_OUT/$t" "tests/fuzz/corpus/$t")
  fi
  cargo +nightly fuzz run --fuzz-dir tests/fuzz -O -a -s "$SANITIZER" "$t" "${dirs[@]}" -- \
    -runs="$RUNS" -max_total_time="$MAX_TIME" -print_final_stats=1 >"$logs/$t.log" 2>&1
  local rc=$?
  local execs
  execs=$(grep -m1 'stat::number_of_executed_units' "$logs/$t.log" | awk '{print $2}')
  echo "$t executions=${execs:-?} seconds=$((SECONDS - start)) $([ $rc = 0 ] && echo ok || echo "CRASH rc=$rc ($logs/$t.log)")"
  return $rc
}
export -f run_one
export RUNS SANITIZER MAX_TIME CORPUS_OUT logs
printf '%s\n' "${targets[@]}" | xargs -P "$JOBS" -I{} bash -c 'run_one {}'
