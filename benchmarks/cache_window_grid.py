"""The dual cache's near-suffix window (``--cache-window``) against the prefix and plain dual cache.

The dual cache keeps every position after the block at its keys and values from the block's
first step; ``--cache-window N`` runs the N positions right after the block fresh at every step as
well. This grid shows, on a fine-tuned reverse-curse MDM, what each window buys back in accuracy
and what it costs in throughput: for block lengths 8 and 16 and thresholds 0.9 and 0.99, the
prefix cache, then the dual cache with windows 0, 2, 4 and 8. Everything is timed once at batch
64 against the naive sampler in the same run (``mdmctl.bench``'s machinery: the same prompts,
SMDM's 52-token canvas, temperature 0), with accuracy differences as paired standard errors.

    python benchmarks/cache_window_grid.py --mdm work/reverse_curse/mdm \\
        --data-dir ../shared/data/reversal_curse

``examples/reverse_curse/run.sh`` trains such an MDM. Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import platform

import torch

from mdmctl.bench import NAIVE, bench_sample


def grid() -> dict[str, dict]:
    settings = {}
    for block in (8, 16):
        for threshold in (0.9, 0.99):
            base = {"block_length": block, "threshold": threshold}
            settings[f"blocks {block}, threshold {threshold}, prefix"] = {**base, "cache": "prefix"}
            for window in (0, 2, 4, 8):
                name = f"blocks {block}, threshold {threshold}, dual, window {window}"
                settings[name] = {**base, "cache": "dual", "cache_window": window}
    return settings


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mdm", required=True)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    rows = bench_sample(mdm=a.mdm, arm=None, data_dir=a.data_dir, batch_size=a.batch_size,
                        latency_prompts=1, compile=False, device=a.device,
                        settings=grid())  # fmt: skip
    naive = rows[0]
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; naive: {naive.prompts_per_s:.1f} prompts/s, "
          f"accuracy {naive.accuracy:.3f}")  # fmt: skip
    print("| setting | prompts/s | x naive | tokens/s x naive | accuracy | p2d / d2p | vs naive |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if r.setting == NAIVE:
            continue
        files = " / ".join(f"{v:.3f}" for v in r.accuracy_by_file.values())
        print(f"| {r.setting} | {r.prompts_per_s:.1f} | {r.speedup:.2f} | "
              f"{r.tokens_per_s / naive.tokens_per_s:.2f} | {r.accuracy:.3f} | {files} | "
              f"{100 * r.delta:+.1f} ± {100 * r.delta_stderr:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
