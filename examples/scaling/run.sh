#!/usr/bin/env bash
# A micro IsoFLOP sweep of MDM and ARM on a real-text corpus (method.md §1), its fit and plot.
#
#   bash examples/scaling/run.sh [BUDGETS] [SIZES] [CORPUS]
#
# Defaults: budgets 1e11,3e11,1e12 FLOPs (C = 6·N·D, N non-embedding), sizes from 1 layer of
# width 16 (4k parameters) to 2 of width 64 (131k), context 64, batch 32. Small sizes because at
# this scale the compute-optimal model is small: a first CPU sweep (6e10-1.2e11 FLOPs) put the
# ARM's minima at 3k-10k parameters. CORPUS (default ../shared/data/corpus/train.jsonl.gz, about
# 26 MB of English; "builtin" for the built-in corpus) is large enough that no run repeats it more
# than about twice (the built-in corpus, 0.6M tokens, would be repeated up to 70 times).
# Writes work/scaling/ under the current directory: the sweep script, the runs, fit.json and
# fit.png. Rerunning resumes an interrupted sweep. Timing and results: docs/results.md.
# What a sweep this small can show: the mechanics (IsoFLOP minima, a frontier, a gap with its
# bootstrap interval); not the paper's numbers, which come from 1e18-1e20 FLOPs (docs/results.md).
set -euo pipefail
BUDGETS=${1:-1e11,3e11,1e12}
SIZES=${2:-1x16,2x16,2x24,2x32,2x48,2x64}
CORPUS=${3:-../shared/data/corpus/train.jsonl.gz}
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
mdmctl scaling plan --flops "$BUDGETS" --sizes "$SIZES" --data "$W/corpus" --batch-size 32 \
  --seq-len 64 --min-steps 100 --runs-dir "$W/runs" --extra "--config $W/sweep.toml --lr 3e-3" \
  --out "$W/sweep.sh"
bash "$W/sweep.sh"
mdmctl scaling fit "$W/runs" --out "$W/fit.json" --plot "$W/fit.png" | tee "$W/fit.txt"
