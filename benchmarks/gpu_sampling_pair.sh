#!/usr/bin/env bash
# Prepare `bash benchmarks/gpu_check.sh sampling` (run on the CPU machine): export a fine-tuned MDM
# and ARM pair (fp32, Hugging Face layout: weights, config and tokenizer, no optimizer state) and
# the two reversal-curse test files `bench sample` reads into .gpu-carry/pair/, which git ignores
# and the device tool carries (about 59 MB for the 6M pair of examples/reverse_curse/run.sh; the
# carry limit is 64 MiB in all, wheels included).
#
#   bash benchmarks/gpu_sampling_pair.sh [MDM] [ARM] [DATA_DIR]
#
# Defaults: work/reverse_curse/{mdm,arm} (what run.sh writes) and ../shared/data/reversal_curse.
set -euo pipefail
MDM=${1:-work/reverse_curse/mdm}
ARM=${2:-work/reverse_curse/arm}
DATA=${3:-../shared/data/reversal_curse}
OUT=.gpu-carry/pair
mkdir -p "$OUT/reversal_curse"
mdmctl export --checkpoint "$MDM" --out "$OUT/mdm" --dtype float32 --overwrite
mdmctl export --checkpoint "$ARM" --out "$OUT/arm" --dtype float32 --overwrite
cp "$DATA/p2d_prompts_test.jsonl" "$DATA/d2p_prompts_test.jsonl" "$OUT/reversal_curse/"
du -sh "$OUT"
