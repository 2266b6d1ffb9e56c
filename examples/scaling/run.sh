#!/usr/bin/env bash
# A micro IsoFLOP sweep of MDM and ARM on a real-text corpus (method.md §1), its fit and plot.
#
#   bash examples/scaling/run.sh [MDM_BUDGETS] [ARM_BUDGETS] [SIZES] [CORPUS]
#
# Defaults: MDM budgets 1e12,3e12,1e13 FLOPs, ARM 3e11,1e12,3e12, counted in full
# (--flops-convention full: 6·(N + V·d) + 12·L·d·T per token, N non-embedding; at this scale the
# output head alone costs more than the blocks, so 6·N·D would make "IsoFLOP" curves unequal in
# compute). Sizes from 1 layer of width 8 (1.0k non-embedding parameters) to 4 of width 96
# (591k), of which each budget keeps those nearest the expected optimum (--centre: the MDM 5
# around N* = 0.00827·C^0.5, the ARM 7 around 2.8e-8·C; both from the minima of an earlier sweep
# at 1e11-1e12, MDM_CENTRE / ARM_CENTRE to change), context 64, batch 32, at least 100 and at
# most 30,000 steps per run; three budgets per objective (the saturating frontier needs 3). With
# compute counted in full the MDM has no IsoFLOP minimum below 1e12 at this scale, and the ARM's
# at 1e11 lies below 1k parameters. CORPUS (default ../shared/data/corpus/train.jsonl.gz, about
# 26 MB of English, 10.9M tokens with BPE 1024; "builtin" for the built-in corpus, 0.58M tokens).
# Writes work/scaling/ under the current directory: the sweep scripts, the runs, fit.json and
# fit.png; rerunning resumes. examples/scaling/keep_runs.py keeps each finished run's config and
# final validation (docs/runs/scaling/), so a sweep spread over sessions fits as one. Timing and
# results: docs/results.md.
# What a sweep this small can show: the mechanics (IsoFLOP minima, a frontier, a gap with its
# bootstrap interval); not the paper's numbers, which come from 1e18-1e20 FLOPs.
set -euo pipefail
MDM_BUDGETS=${1:-1e12,3e12,1e13}
ARM_BUDGETS=${2:-3e11,1e12,3e12}
SIZES=${3:-1x8,2x8,1x16,2x16,2x24,2x32,2x48,2x64,3x64,4x96}
MDM_CENTRE=${MDM_CENTRE:-0.00827,0.5}
ARM_CENTRE=${ARM_CENTRE:-2.8e-8,1.0}
CORPUS=${4:-../shared/data/corpus/train.jsonl.gz}
W=work/scaling
mkdir -p "$W"
if [ ! -f "$W/corpus/corpus.json" ]; then
  if [ "$CORPUS" = builtin ]; then
    mdmctl tokenize --vocab-size 1024 --out "$W/corpus"
  else
    mdmctl tokenize "$CORPUS" --vocab-size 1024 --out "$W/corpus"
  fi
fi
# One validation, at the end, on 32 batches of 32 (the final loss is the fit's y: the default 4
# batches is noisy, and validating every 200 steps would cost more than some runs' training).
printf '[train]\nval_batches = 32\nval_mc = 8\nval_every = 1000000\n' > "$W/sweep.toml"
for objective in mdm arm; do
  budgets=$MDM_BUDGETS centre=$MDM_CENTRE keep=5
  [ "$objective" = arm ] && budgets=$ARM_BUDGETS centre=$ARM_CENTRE keep=7
  mdmctl scaling plan --objective "$objective" --flops "$budgets" --sizes "$SIZES" \
    --centre "$centre" --per-budget "$keep" \
    --data "$W/corpus" --batch-size 32 --seq-len 64 --min-steps 100 --max-steps 30000 \
    --flops-convention full \
    --runs-dir "$W/runs" --extra "--config $W/sweep.toml --lr 3e-3" --out "$W/sweep-$objective.sh"
  bash "$W/sweep-$objective.sh"
done
mdmctl scaling fit "$W/runs" --out "$W/fit.json" --plot "$W/fit.png" | tee "$W/fit.txt"
