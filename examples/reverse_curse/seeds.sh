#!/usr/bin/env bash
# The reverse-curse example over several seeds (issue 28): run.sh for each seed at SMDM's
# micro-batch of 8, then one table of every figure as mean ± standard deviation over the seeds,
# next to the mean of the per-run binomial standard errors.
#
#   SEEDS="0 1 2" bash examples/reverse_curse/seeds.sh [DATA_DIR]
#
# About 65-70 minutes per seed on 2 CPU cores. Seeds whose summary.md exists are not rerun
# (EVAL_ONLY=1 evaluates models a TRAIN_ONLY run left). Writes work/reverse_curse-seeds.md.
set -euo pipefail
DATA=${1:-../shared/data/reversal_curse}
SEEDS=${SEEDS:-0 1 2}
here=$(dirname "$0")
for seed in $SEEDS; do
  W=work/reverse_curse; [ "$seed" = 0 ] || W=$W-seed$seed
  [ -f "$W/summary.md" ] || SEED=$seed bash "$here/run.sh" "$DATA"
done
python "$here/seeds_table.py" $SEEDS | tee work/reverse_curse-seeds.md
