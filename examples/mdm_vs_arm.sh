#!/usr/bin/env bash
# Train a tiny MDM and the same-size ARM on the built-in corpus, then compare held-out likelihood
# and samples. About 5 minutes on 2 CPU cores. Run from the repository root (or anywhere: it writes
# data/ and runs/ under the current directory).
set -euo pipefail

mdmctl tokenize --vocab-size 1024 --out data/builtin-1k
for objective in mdm arm; do
  mdmctl pretrain --objective "$objective" --size tiny --seq-len 64 --batch-size 64 --steps 800 \
    --lr 3e-3 --data data/builtin-1k --out "runs/example-$objective" --show-samples 0
done
echo "MDM (upper bound on perplexity):"
mdmctl eval ppl --checkpoint runs/example-mdm --mc-samples 32
echo "ARM (exact perplexity):"
mdmctl eval ppl --checkpoint runs/example-arm
mdmctl sample --checkpoint runs/example-mdm --prompt "Return the" --length 24 --steps 24 --cfg 1.0
mdmctl sample --checkpoint runs/example-arm --prompt "Return the" --length 24
