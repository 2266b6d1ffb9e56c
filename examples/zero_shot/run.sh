#!/usr/bin/env bash
# Zero-shot benchmarks for a small MDM and the same-size ARM (method.md §4): pretrain both on the
# shared real-text corpus, then run the lm-eval-formatted suite on each with the paper's per-task
# estimator and CFG defaults, and write one results file per model.
#
#   bash examples/zero_shot/run.sh [DATA_ROOT] [STEPS] [LIMIT]
#
# DATA_ROOT defaults to ../shared/data (corpus/ and benchmarks/ under it). Writes work/zero_shot/
# under the current directory. Models this small score near chance on these tasks: the example
# checks the pipeline end to end and gives the MDM-vs-ARM comparison at equal compute, nothing
# more. Measured numbers and timings: docs/results.md.
set -euo pipefail
DATA=${1:-../shared/data}
STEPS=${2:-800}
LIMIT=${3:-100}
W=work/zero_shot
mkdir -p "$W"

mdmctl tokenize "$DATA/corpus/train.jsonl.gz" --vocab-size 4096 --val-fraction 0.01 \
  --out "$W/corpus"
for objective in mdm arm; do
  mdmctl pretrain --objective "$objective" --size mini --seq-len 256 --batch-size 16 \
    --steps "$STEPS" --data "$W/corpus" --out "$W/$objective" --show-samples 0
  mdmctl eval all --checkpoint "$W/$objective" --data "$DATA/benchmarks" --limit "$LIMIT" \
    --out "$W/$objective-results.json"
done
