#!/usr/bin/env bash
# GSM8K recipe (method.md §6): a tokenizer, a base model, SFT on the training split, evaluation.
#
#   bash examples/gsm8k/run.sh [DATA_DIR] [SIZE] [EPOCHS] [LIMIT]
#
# Defaults (DATA_DIR=../shared/data/gsm8k, SIZE=mini, EPOCHS=1, LIMIT=50) are a CPU smoke run of
# the whole path (17 minutes on 2 CPU cores, docs/results.md). A tiny model trained from scratch
# scores about 0 on GSM8K; the format compliance line of step 4 shows whether it stops and writes
# the '####' marker (in that run it stopped, but wrote almost nothing).
# Everything follows SMDM: two examples per problem, rows padded with eos to the context (256),
# two-stage decoding with each stage's canvas 256 tokens (prompt + generation), 256 steps,
# temperature 0.1, CFG 0.1 (docs/cli.md maps every option to SMDM's). The paper's setting is a
# pretrained 1.1B MDM (SMDM's 1028M size) fine-tuned for 40 epochs at batch 256, lr 2e-4, on the
# augmented equation-style data (`equations_train.txt` is the unaugmented one): replace steps 1-2
# with your pretrained checkpoint (same tokenizer) and use a GPU.
set -euo pipefail
DATA=${1:-../shared/data/gsm8k}
SIZE=${2:-mini}
EPOCHS=${3:-1}
LIMIT=${4:-50}
W=work/gsm8k
mkdir -p "$W"

# 1. Tokenizer and a corpus from the training problems (question + answer as one document).
python - "$DATA/train.jsonl" "$W/problems.jsonl" <<'PY'
import json, sys
with open(sys.argv[1]) as f, open(sys.argv[2], "w") as out:
    for line in f:
        r = json.loads(line)
        out.write(json.dumps({"text": r["question"] + "\n" + r["answer"]}) + "\n")
PY
mdmctl tokenize "$W/problems.jsonl" --vocab-size 4096 --out "$W/corpus"
# 2. A base model (here: brief pretraining on the same text; use a real pretrained model instead).
mdmctl pretrain --size "$SIZE" --seq-len 256 --steps 200 --batch-size 16 --data "$W/corpus" \
  --out "$W/base" --overwrite --show-samples 0
# 3. Conditional SFT (the prompt is never masked): SMDM's two examples per problem, padded with eos
#    to SMDM's 256 tokens (--pad-to auto), longer problems dropped. With a 2048-context checkpoint
#    (SMDM-size, or imported) the rows are still cut at 256, as SMDM's finetune_mdm_gsm8k.py does;
#    --pad-to context would pad them to 2048 instead (another objective: ~1,900 eos per row).
mdmctl finetune --init "$W/base" --data "$DATA/train.jsonl" --epochs "$EPOCHS" --batch-size 32 \
  --lr 1e-3 --out "$W/sft" --overwrite
# 4. Evaluate on the test split with SMDM's settings (generations and verdicts in $W/eval.jsonl),
#    then re-score them.
mdmctl eval gsm8k --checkpoint "$W/sft" --data "$DATA/test.jsonl" --limit "$LIMIT" \
  --out "$W/eval.jsonl"
mdmctl eval gsm8k --data "$DATA/test.jsonl" --limit "$LIMIT" --predictions "$W/eval.jsonl"
