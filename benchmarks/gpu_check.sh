#!/usr/bin/env bash
# One-call GPU check (docs/benchmarks.md, "GPU"): CUDA-marked tests, xformers-vs-SDPA parity,
# sampling speed eager vs CUDA graphs (random 6M and 170M models), training throughput / MFU at
# 170M and 1028M with both attention kernels, and likelihood scoring (hellaswag-shaped requests,
# 128 MC samples) at 170M against the naive per-request loop. The CUDA tests include compiled
# sampling (torch.compile with Triton) and CUDA-graph sampling against eager. Prints a short
# table; full logs go to $OUT (or ./gpu-out). Sized by its timeouts to stay under 8 minutes; it
# has not run on a GPU yet.
#
# `bash benchmarks/gpu_check.sh sampling` runs instead the sampling table (`mdmctl bench sample`, the
# naive MDM sampler, mdmctl's settings, compiled and CUDA-graph rows and the ARM) on a pair prepared
# by benchmarks/gpu_sampling_pair.sh: carry [".gpu-wheels", ".gpu-carry"]. Without a pair trained
# on the CPU, `gpu_sampling_pair.sh --data-only` there and `gpu_check.sh sampling-train` here train
# it on the GPU and send it back under $OUT/pair: put that folder at .gpu-carry/pair and carry it.
# `bash benchmarks/gpu_check.sh arith` trains and benches benchmarks/arith_pair.sh's GSM8K-style
# pair on the GPU in one call (the pair whose MDM and ARM are equally accurate; nothing to carry).
#
# Prepare on the CPU machine (wheels the GPU image lacks; .gpu-wheels/ is git-ignored):
#   python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 -d .gpu-wheels xformers==0.0.35 nvidia-cuda-runtime-cu12
# then run with the device tool: carry [".gpu-wheels"], command "bash benchmarks/gpu_check.sh".
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
if ! python3 -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
  echo "no CUDA device: nothing to check"; exit 0
fi
if [ -d .gpu-wheels ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu-wheels/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
  # xformers' C extension links libcudart.so.12; a CUDA-13 torch does not ship it.
  cudart=$(ls /tmp/site/nvidia/cuda_runtime/lib/libcudart.so.12 2>/dev/null || true)
  [ -n "$cudart" ] && export LD_LIBRARY_PATH=$(dirname "$cudart"):${LD_LIBRARY_PATH:-}
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 - <<'PY' | tee -a "$OUT/gpu.txt"
import torch
from mdmctl.attention import _probe_xformers
print("torch", torch.__version__, "cuda", torch.version.cuda)
err = _probe_xformers(torch.device("cuda"))
print("xformers:", "runs" if err is None else f"cannot run ({err})")
PY
shims() {  # run.sh and arith_pair.sh call `mdmctl` and `python`; this image has python3 only
  mkdir -p /tmp/bin
  printf '#!/bin/sh\nexec python3 -m mdmctl "$@"\n' > /tmp/bin/mdmctl
  command -v python > /dev/null || ln -sf "$(command -v python3)" /tmp/bin/python
  chmod +x /tmp/bin/mdmctl
  export PATH=/tmp/bin:$PATH
}
if [ "${1:-core}" = arith ]; then  # the GSM8K-style pair: trained and benched here, nothing carried
  shims
  start=$(date +%s)
  DEVICE=cuda timeout 560 bash benchmarks/arith_pair.sh "$OUT/arith" > "$OUT/arith.log" 2>&1
  rc=$?
  grep -E "val loss|wall time" "$OUT/arith.log"
  sed -n '/sampling on test/,$p' "$OUT/arith.log" | cut -c1-220
  rm -rf "$OUT/arith"/{init-mdm,init-arm,mdm,arm,corpus}  # the weights need not come back
  echo "arith pair trained and benched in $(( $(date +%s) - start )) s (rc $rc)"
  exit $rc
fi
if [ "${1:-core}" = sampling-train ]; then
  shims
  start=$(date +%s)
  timeout 560 bash benchmarks/gpu_sampling_pair.sh --train .gpu-carry/pair/reversal_curse \
    "$OUT/pair" > "$OUT/train_pair.log" 2>&1
  rc=$?
  grep -E "step .*loss|wrote|finetune" "$OUT/train_pair.log" | tail -6
  echo "pair trained and exported in $(( $(date +%s) - start )) s (rc $rc)"
  exit $rc
fi
if [ "${1:-core}" = sampling ]; then
  if [ ! -d .gpu-carry/pair/mdm ] || [ ! -d .gpu-carry/pair/arm ]; then
    echo "no .gpu-carry/pair/{mdm,arm}: run benchmarks/gpu_sampling_pair.sh (or sampling-train)"
    exit 2
  fi
  for o in mdm arm; do
    python3 -m mdmctl import .gpu-carry/pair/$o --out "$OUT/pair-$o" --overwrite > /dev/null || exit 1
  done
  timeout 420 python3 -m mdmctl bench sample --mdm "$OUT/pair-mdm" --arm "$OUT/pair-arm" \
    --data-dir .gpu-carry/pair/reversal_curse --latency-prompts 32 --repeats 2 --device cuda \
    --json > "$OUT/bench_sample.json" 2> "$OUT/bench_sample.log"
  rc=$?
  rm -rf "$OUT/pair-mdm" "$OUT/pair-arm"  # the weights need not come back
  tail -20 "$OUT/bench_sample.log"
  python3 - "$OUT/bench_sample.json" <<'PY'
import json, sys
from mdmctl.bench import BenchRow, targets
rows = [BenchRow(**r) for r in json.load(open(sys.argv[1]))]
print(f"{'setting':48} {'prompts/s':>9} {'x naive':>7} {'x ARM':>6} {'lat s':>7} {'b1 x ARM':>8} "
      f"{'acc':>6} {'vs naive':>9} {'vs ARM':>9}")
for r in rows:
    print(f"{r.setting:48} {r.prompts_per_s:9.1f} {r.speedup:7.2f} {r.arm_tokens_ratio:6.2f} "
          f"{r.latency_s:7.4f} {r.arm_latency_tokens_ratio:8.2f} {r.accuracy:6.3f} "
          f"{100 * r.delta:+6.1f} pts {100 * r.vs_arm:+6.1f} pts")
print("\n".join(targets(rows)))
PY
  exit $rc
fi
# Every step has its timeout: together 120 + 2 x 40 + 2 x 90 + 90 = 470 s, under the 8 minutes.
timeout 120 python3 -m pytest -m cuda -q tests/test_attention.py tests/test_decoding.py 2>&1 \
  | tee "$OUT/pytest-cuda.txt" | tail -3
# Sampling speed by mode (eager vs CUDA graphs) on random 6M and 170M models: no trained pair needed.
for size in 6M 170M; do
  timeout 40 python3 benchmarks/sampling_speed.py --device cuda --size $size 2>&1 \
    | tee -a "$OUT/sampling_speed.txt"
done
# Training: every loss head and both objectives at 170M; at 1028M the MDM's full and chunked heads
# only, batch 2 (each variant holds its own weights, gradients and moments: ~18 GB at 1028M).
timeout 90 python3 benchmarks/train_throughput.py --device cuda --dtype bf16 --sizes 170M \
  --batch 4 --seq-len 2048 --vocab 32000 --iters 6 --warmup 2 --attention xformers sdpa \
  --json "$OUT/train_throughput.json" 2>&1 | tee "$OUT/train_throughput.txt"
timeout 90 python3 benchmarks/train_throughput.py --device cuda --dtype bf16 --sizes 1028M \
  --objectives mdm --heads full chunked --batch 2 --seq-len 2048 --vocab 32000 --iters 4 \
  --warmup 2 --attention xformers sdpa --json "$OUT/train_throughput_1028M.json" 2>&1 \
  | tee -a "$OUT/train_throughput.txt"
HS=../shared/data/benchmarks/hellaswag.jsonl.gz
LL_DATA=""
[ -f "$HS" ] && LL_DATA="--data $HS"
timeout 90 python3 benchmarks/likelihood.py --device cuda --size 170M --seq-len 256 --vocab 32000 \
  --requests 64 --batch-size 64 $LL_DATA 2>&1 | tee "$OUT/likelihood.txt"
