"""Data-parallel scaling on CPU: 2 gloo processes (torchrun, DDP or FSDP2) vs 1 process.

Every configuration trains the same model on the same corpus with the same global batch and
micro-batch size (so each of the 2 ranks computes half of every step), through the real CLI:

    1 process,  1 thread    the per-worker baseline
    1 process,  N threads   one process using all N = nproc_per_node cores
    N processes, 1 thread   torchrun --nproc_per_node N --parallel {ddp,fsdp}

Throughput is the median tokens/s of the steps logged to ``metrics.jsonl`` (every 10th step, so
the first, warm-up step is never counted). Configurations alternate for ``--repeats`` rounds so
machine noise is shared; the script prints tokens/s and, as ratios in the same run, the speedup
over the 1-thread process, the scaling efficiency (speedup / N) and the ratio to the N-thread
process.

    python benchmarks/distributed_cpu.py                       # tiny model, DDP, 2 processes
    python benchmarks/distributed_cpu.py --size mini --parallel ddp fsdp --repeats 3

Needs a tokenized corpus (``--data``; default: data/builtin, made by a first ``mdmctl pretrain``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def train_cmd(args: argparse.Namespace, out: Path) -> list[str]:
    return [
        "pretrain",
        "--size",
        args.size,
        "--data",
        str(args.data),
        "--out",
        str(out),
        "--steps",
        str(args.steps),
        "--batch-size",
        str(args.batch_size),
        "--micro-batch-size",
        str(args.batch_size // args.nproc),
        "--val-every",
        "100000",
        "--save-every",
        "100000",
        "--device",
        "cpu",
        "--show-samples",
        "0",
        "--json",
    ]


def measure(args: argparse.Namespace, procs: int, threads: int, parallel: str) -> float:
    """Median logged tokens/s of one run (global tokens per second over all processes)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "mdmctl", *train_cmd(args, out)]
        if procs > 1:
            launcher = ["-m", "torch.distributed.run", "--standalone"]
            launcher += ["--nproc_per_node", str(procs)]
            cmd = [sys.executable, *launcher, "-m", "mdmctl", *train_cmd(args, out)]
            cmd += ["--parallel", parallel]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
        records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        return statistics.median(r["tokens_per_s"] for r in records if r["step"] > 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--data", type=Path, default=Path("data/builtin"))
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--parallel", nargs="+", default=["ddp"], choices=["ddp", "fsdp"])
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    if not (args.data / "corpus.json").is_file():
        sys.exit(f"{args.data}: no corpus.json; run 'mdmctl tokenize' or 'mdmctl pretrain' first")
    configs = [("1 process, 1 thread", 1, 1, "none")]
    configs.append((f"1 process, {args.nproc} threads", 1, args.nproc, "none"))
    configs += [
        (f"{args.nproc} processes ({p}), 1 thread", args.nproc, 1, p) for p in args.parallel
    ]
    runs: dict[str, list[float]] = {name: [] for name, *_ in configs}
    for _ in range(args.repeats):
        for name, procs, threads, parallel in configs:
            runs[name].append(measure(args, procs, threads, parallel))
    tps = {name: statistics.median(v) for name, v in runs.items()}
    base, wide = tps[configs[0][0]], tps[configs[1][0]]
    import torch

    print(
        f"{args.size}, batch {args.batch_size} (micro {args.batch_size // args.nproc}), "
        f"{args.steps} steps, median of {args.repeats} round(s); {os.cpu_count()} CPUs "
        f"({platform.processor() or platform.machine()}), torch {torch.__version__}"
    )
    print(f"{'configuration':34} {'tokens/s':>10} {'speedup':>8} {'efficiency':>10} {'vs wide':>8}")
    for name, procs, _, _ in configs:
        speedup = tps[name] / base
        eff = f"{speedup / procs:10.2f}" if procs > 1 else f"{'':10}"
        print(f"{name:34} {tps[name]:10,.0f} {speedup:8.2f} {eff} {tps[name] / wide:8.2f}")


if __name__ == "__main__":
    main()
