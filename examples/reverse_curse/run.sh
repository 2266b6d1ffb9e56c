#!/usr/bin/env bash
# Reverse curse at small scale on a CPU (method.md §1.6, §6): train a small MDM and a same-size ARM
# from scratch on the 3,600 reversal-curse training prompts (each fact seen in one direction only),
# then evaluate both in the trained and the reverse direction.
#
#   bash examples/reverse_curse/run.sh [DATA_DIR] [EPOCHS]
#
# DATA_DIR defaults to ../shared/data/reversal_curse (relative to the repository root). Writes
# work/reverse_curse/ under the current directory. About 20 minutes on 2 CPU cores (measured
# numbers: docs/results.md).
set -euo pipefail
DATA=${1:-../shared/data/reversal_curse}
EPOCHS=${2:-30}
W=work/reverse_curse
mkdir -p "$W"

# 1. A text corpus of the training facts (prompt + completion), for the tokenizer and the init.
python - "$DATA/all_prompts_train.jsonl" "$W/facts.jsonl" <<'PY'
import json, sys
with open(sys.argv[1]) as f, open(sys.argv[2], "w") as out:
    for line in f:
        r = json.loads(line)
        out.write(json.dumps({"text": r["prompt"] + r["completion"]}) + "\n")
PY
mdmctl tokenize "$W/facts.jsonl" --vocab-size 2048 --val-fraction 0.02 --out "$W/corpus"

for objective in mdm arm; do
  # 2. A randomly initialised model with this tokenizer: one pretraining step at warm-up lr.
  mdmctl pretrain --objective "$objective" --size mini --seq-len 64 --steps 1 --batch-size 8 \
    --data "$W/corpus" --out "$W/init-$objective" --overwrite --show-samples 0
  # 3. Train on whole sequences (the MDM's unconditional loss; the ARM's next-token loss).
  mdmctl finetune --init "$W/init-$objective" --data "$DATA/all_prompts_train.jsonl" \
    --sft-objective unconditional --epochs "$EPOCHS" --batch-size 32 --lr 2e-3 \
    --val-every 1000 --save-every 100000 --out "$W/$objective" --overwrite
done

# 4. Evaluate with SMDM's settings (confidence sampler, 32 steps, total length 52, temperature 0;
#    CFG 0.8 for the MDM; an ARM has no CFG).
mdmctl eval reverse-curse --checkpoint "$W/mdm" --data-dir "$DATA" --out "$W/mdm-eval.jsonl"
mdmctl eval reverse-curse --checkpoint "$W/arm" --data-dir "$DATA" --cfg 0 --out "$W/arm-eval.jsonl"
