#!/usr/bin/env bash
# Prepare `bash benchmarks/gpu_check.sh sampling`: a fine-tuned MDM and ARM pair (fp32, Hugging
# Face layout: weights, config and tokenizer, no optimizer state) and the reversal-curse files
# `bench sample` and the training read, in .gpu-carry/pair/, which git ignores and the device tool
# carries (about 59 MB for the 6M pair of examples/reverse_curse/run.sh; the carry limit is 64 MiB
# in all, wheels included).
#
#   bash benchmarks/gpu_sampling_pair.sh [MDM] [ARM] [DATA_DIR]   export a pair trained here
#   bash benchmarks/gpu_sampling_pair.sh --data-only [DATA_DIR]    only the files (a few MB)
#   bash benchmarks/gpu_sampling_pair.sh --train [DATA_DIR] [OUT]  train the pair, then export it
#
# Defaults: work/reverse_curse/{mdm,arm} (what run.sh writes), ../shared/data/reversal_curse and
# .gpu-carry/pair. --train runs run.sh's training commands (TRAIN_ONLY=1) in a temporary folder,
# on the GPU when there is one (gpu_check.sh sampling-train; MDM_EPOCHS, default 120, and
# ARM_EPOCHS, default 20, as for the CPU table in docs/benchmarks.md).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
MODE=export
case "${1:-}" in --data-only | --train) MODE=${1#--}; shift ;; esac
if [ "$MODE" = export ]; then
  MDM=${1:-work/reverse_curse/mdm}
  ARM=${2:-work/reverse_curse/arm}
  DATA=${3:-../shared/data/reversal_curse}
else
  DATA=${1:-../shared/data/reversal_curse}
fi
OUT=.gpu-carry/pair
[ "$MODE" = train ] && OUT=${2:-$OUT}
mkdir -p "$OUT/reversal_curse"
DATA=$(cd "$DATA" && pwd)
OUT=$(cd "$OUT" && pwd)
if [ ! "$DATA" -ef "$OUT/reversal_curse" ]; then
  for f in p2d_prompts_test d2p_prompts_test all_prompts_train; do
    install -m 0644 "$DATA/$f.jsonl" "$OUT/reversal_curse/"
  done
fi
if [ "$MODE" = train ]; then
  WORK=$(mktemp -d)
  trap 'rm -rf "$WORK"' EXIT
  (cd "$WORK" && TRAIN_ONLY=1 bash "$REPO/examples/reverse_curse/run.sh" "$OUT/reversal_curse" \
    "${MDM_EPOCHS:-120}" "${ARM_EPOCHS:-20}")
  MDM=$WORK/work/reverse_curse/mdm
  ARM=$WORK/work/reverse_curse/arm
fi
if [ "$MODE" != data-only ]; then
  mdmctl export --checkpoint "$MDM" --out "$OUT/mdm" --dtype float32 --overwrite
  mdmctl export --checkpoint "$ARM" --out "$OUT/arm" --dtype float32 --overwrite
fi
du -sh "$OUT"
