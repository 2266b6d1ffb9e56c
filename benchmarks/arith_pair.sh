#!/usr/bin/env bash
# The sampling benchmark on a pair both objectives learn: an MDM and a same-size ARM fine-tuned
# from scratch on synthetic GSM8K-style problems (benchmarks/arith_problems.py), then `mdmctl bench
# sample` on 600 held-out problems. It asks issue 11's second question (the ARM's tokens/s at equal
# quality) where the two models are equally accurate, which the reversal-curse pair is not
# (docs/benchmarks.md).
#
#   bash benchmarks/arith_pair.sh [OUT] [MDM_STEPS] [ARM_STEPS] [SIZE]
#
# Defaults: work/arith, 1500, 1000, mini (4 layers, d 128). Writes OUT/{data,corpus,mdm,arm} and
# OUT/bench.txt; with TRAIN_ONLY=1 it stops after training; DIGITS=2 asks two-digit problems
# (arith_problems.py --digits). Training runs on the default device
# (CUDA when there is one); the bench on DEVICE (default cpu; gpu_check.sh arith sets cuda).
#
# The recipe is the GSM8K one at small scale: the conditional SFT loss (the MDM never masks the
# question; the ARM's cross-entropy on the answer), every row padded with eos to bench sample's
# 52-token canvas (SMDM pads GSM8K to its generation canvas, so the MDM learns where an answer
# stops at every position it will decode), global batch 64, the CPU sizes' lr 3e-3.
set -euo pipefail
W=${1:-work/arith}
MDM_STEPS=${2:-1500}
ARM_STEPS=${3:-1000}
SIZE=${4:-mini}
HERE=$(dirname "$0")
mkdir -p "$W"

python "$HERE/arith_problems.py" "$W/data" --digits "${DIGITS:-1}"
mdmctl tokenize "$W/data/text.jsonl" --vocab-size 1024 --val-fraction 0.02 --out "$W/corpus"

for objective in mdm arm; do
  steps=$MDM_STEPS; [ "$objective" = arm ] && steps=$ARM_STEPS
  # A randomly initialised model with this tokenizer: one pretraining step at warm-up lr.
  mdmctl pretrain --objective "$objective" --size "$SIZE" --seq-len 64 --steps 1 --batch-size 8 \
    --data "$W/corpus" --out "$W/init-$objective" --overwrite --show-samples 0
  mdmctl finetune --init "$W/init-$objective" --data "$W/data/train.jsonl" --steps "$steps" \
    --batch-size 64 --pad-to 52 --val-every 500 --save-every 100000 --out "$W/$objective" \
    --overwrite
done
[ "${TRAIN_ONLY:-0}" = 1 ] && exit 0

mdmctl bench sample --mdm "$W/mdm" --arm "$W/arm" --data-dir "$W/data" --split test.jsonl \
  --latency-prompts 32 --repeats 3 --device "${DEVICE:-cpu}" | tee "$W/bench.txt"
