#!/usr/bin/env bash
# A micro IsoFLOP sweep of MDM and ARM on the built-in corpus (method.md §1), its fit and plot.
#
#   bash examples/scaling/run.sh [BUDGETS] [SIZES]
#
# Defaults: budgets 3e11,1e12,3e12 FLOPs (C = 6·N·D, N non-embedding), sizes from 2 layers of
# width 32 to 4 of 128, context 64, batch 32. Writes work/scaling/ under the current directory:
# the sweep script, the runs, fit.json and fit.png. Rerunning resumes an interrupted sweep.
# What a sweep this small can show: the mechanics (IsoFLOP minima, a frontier, a gap with its
# bootstrap interval); not the paper's numbers, which come from 1e18-1e20 FLOPs (docs/results.md).
set -euo pipefail
BUDGETS=${1:-3e11,1e12,3e12}
SIZES=${2:-2x32,2x48,2x64,3x80,4x96,4x128}
W=work/scaling
mkdir -p "$W"
[ -f "$W/corpus/corpus.json" ] || mdmctl tokenize --vocab-size 1024 --out "$W/corpus"
# Validation on 32 batches of 32 (the final loss is the fit's y: the default 4 batches is noisy).
printf '[train]\nval_batches = 32\nval_mc = 8\n' > "$W/sweep.toml"
mdmctl scaling plan --flops "$BUDGETS" --sizes "$SIZES" --data "$W/corpus" --batch-size 32 \
  --seq-len 64 --min-steps 100 --runs-dir "$W/runs" --extra "--config $W/sweep.toml --lr 3e-3" \
  --out "$W/sweep.sh"
bash "$W/sweep.sh"
mdmctl scaling fit "$W/runs" --out "$W/fit.json" --plot "$W/fit.png" | tee "$W/fit.txt"
