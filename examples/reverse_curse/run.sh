#!/usr/bin/env bash
# Reverse curse at small scale on a CPU (method.md §1.6, §6): train an MDM and a same-size ARM from
# scratch on the 3,600 reversal-curse training prompts (each fact seen in one direction only), then
# evaluate both in the trained and the reverse direction, by generation and by likelihood ranking.
#
#   [SEED=0] [MICRO=8] bash examples/reverse_curse/run.sh [DATA_DIR] [MDM_EPOCHS] [ARM_EPOCHS] [SIZE]
#
# Defaults: ../shared/data/reversal_curse, 60, 20, SMDM's 6M size (6 layers, d 256). SEED seeds
# the initialisation, the data order and every masking draw (pretrain/finetune --seed); MICRO is
# the micro-batch. Writes work/reverse_curse/ (work/reverse_curse-seedN/ for SEED other than 0)
# under the current directory and ends with a summary table (summary.md there); with TRAIN_ONLY=1
# it stops after training the two models (benchmarks/gpu_sampling_pair.sh --train), and with
# EVAL_ONLY=1 it evaluates the models a TRAIN_ONLY run left. About 65-70
# minutes on 2 CPU cores (docs/results.md); examples/reverse_curse/seeds.sh runs several seeds
# and tabulates mean ± sd.
#
# The recipe follows SMDM's sft/finetune_mdm_reverse.py: prompt + completion as one sequence,
# the unconditional loss on all of it, global batch 64 drawn at random, micro-batches each padded
# with eos to its longest row (the model learns where a fact ends), loss / (B * L). SMDM's
# micro-batch is 8: 8 devices share the 64 and its 16 for models up to 50M is capped at the
# per-device 8. SMDM
# fine-tunes a pretrained model at lr 2e-4 for 10 epochs; from scratch this needs more: lr 1e-3.
set -euo pipefail
DATA=${1:-../shared/data/reversal_curse}
MDM_EPOCHS=${2:-60}
ARM_EPOCHS=${3:-20}
SIZE=${4:-6M}
SEED=${SEED:-0}
MICRO=${MICRO:-8}
W=work/reverse_curse
[ "$SEED" = 0 ] || W=$W-seed$SEED
mkdir -p "$W"

if [ "${EVAL_ONLY:-0}" != 1 ]; then
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
  epochs=$MDM_EPOCHS; [ "$objective" = arm ] && epochs=$ARM_EPOCHS
  # 2. A randomly initialised model with this tokenizer: one pretraining step at warm-up lr.
  mdmctl pretrain --objective "$objective" --size "$SIZE" --seq-len 64 --steps 1 --batch-size 8 \
    --seed "$SEED" --data "$W/corpus" --out "$W/init-$objective" --overwrite --show-samples 0
  # 3. Train on whole sequences (the MDM's unconditional loss; the ARM's next-token loss).
  mdmctl finetune --init "$W/init-$objective" --data "$DATA/all_prompts_train.jsonl" \
    --sft-objective unconditional --epochs "$epochs" --batch-size 64 --micro-batch-size "$MICRO" \
    --seed "$SEED" --lr 1e-3 --val-every 100000 --save-every 100000 --out "$W/$objective" --overwrite
done
fi
[ "${TRAIN_ONLY:-0}" = 1 ] && exit 0

# 4. Evaluate every file (300 prompts each) with SMDM's settings: confidence sampler, 32 steps,
#    total length 52, temperature 0; the MDM with CFG 0.8 and without, the ARM without. Likelihood
#    ranking of each reference against 29 others (MDM: conditional ELBO, 8 stratified t per
#    candidate; ARM: exact): the other names, or one description of every other person (a
#    paraphrase of the same person's description is not a wrong answer).
mdmctl eval reverse-curse --checkpoint "$W/mdm" --data-dir "$DATA" --cfg 0.8 --rank --rank-mc 8 \
  --out "$W/mdm-cfg.jsonl" --json > "$W/mdm-cfg.json"
mdmctl eval reverse-curse --checkpoint "$W/mdm" --data-dir "$DATA" --cfg 0 \
  --out "$W/mdm-nocfg.jsonl" --json > "$W/mdm-nocfg.json"
mdmctl eval reverse-curse --checkpoint "$W/arm" --data-dir "$DATA" --cfg 0 --rank \
  --out "$W/arm.jsonl" --json > "$W/arm.json"

# 5. One table: accuracy ± standard error (binomial, n = 300 per file).
python - "$W" <<'PY' | tee "$W/summary.md"
import json, sys
from pathlib import Path
w = Path(sys.argv[1])
res = {k: {r["split"]: r for r in json.loads((w / f"{k}.json").read_text())}
       for k in ("mdm-cfg", "mdm-nocfg", "arm")}
f = lambda r, k="accuracy", s="stderr": f"{r[k]:.3f} ± {r[s]:.3f}"
print("| file | direction | MDM gen. CFG 0.8 | MDM gen. no CFG | ARM gen. "
      "| MDM rank | ARM rank | chance |")
print("|---|---|---|---|---|---|---|---|")
for split, m in res["mdm-cfg"].items():
    a = res["arm"][split]
    print(f"| {split} | {m['direction']} | {f(m)} | {f(res['mdm-nocfg'][split])} | {f(a)} "
          f"| {f(m, 'rank_accuracy', 'rank_stderr')} | {f(a, 'rank_accuracy', 'rank_stderr')} "
          f"| {1 / m['candidates']:.3f} |")
print()
print("SMDM's BLEU (characters) / word BLEU-4: " + "; ".join(
    f"{k} {s}: {r['bleu_smdm']:.1f} / {r['bleu']:.1f}"
    for k, rs in res.items() for s, r in rs.items() if s in ("p2d_same", "d2p_reverse")))
PY
