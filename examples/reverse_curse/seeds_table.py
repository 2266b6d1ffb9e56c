"""Mean ± sd over seeds of every figure run.sh writes, then each seed's reverse-direction figures.

python examples/reverse_curse/seeds_table.py 0 1 2
python examples/reverse_curse/seeds_table.py docs/runs/reverse_curse/seed0 work/reverse_curse-seed2

Each argument is a seed (its run.sh folder, work/reverse_curse[-seedN]) or a folder holding
run.sh's mdm-cfg.json, mdm-nocfg.json and arm.json (docs/runs/reverse_curse/ keeps the recorded
seeds' files).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

RUNS = ("mdm-cfg", "mdm-nocfg", "arm")
COLUMNS = [  # (header, run, value key, stderr key)
    ("MDM gen. CFG 0.8", "mdm-cfg", "accuracy", "stderr"),
    ("MDM gen. no CFG", "mdm-nocfg", "accuracy", "stderr"),
    ("ARM gen.", "arm", "accuracy", "stderr"),
    ("MDM rank", "mdm-cfg", "rank_accuracy", "rank_stderr"),
    ("ARM rank", "arm", "rank_accuracy", "rank_stderr"),
]


def folder(arg: str) -> Path:
    """A seed's run.sh folder, or the folder given."""
    if not arg.isdigit():
        return Path(arg)
    return Path("work/reverse_curse" + ("" if arg == "0" else f"-seed{arg}"))


def label(arg: str) -> str:
    return f"seed {arg}" if arg.isdigit() else folder(arg).name


def load(arg: str) -> dict[str, dict[str, dict]]:
    w = folder(arg)
    return {
        run: {r["split"]: r for r in json.loads((w / f"{run}.json").read_text())} for run in RUNS
    }


def cell(values: list[float], stderrs: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.3f} ± {sd:.3f} (se {statistics.mean(stderrs):.3f})"


def main(seeds: list[str]) -> None:
    runs = [load(s) for s in seeds]
    names = ", ".join(label(s) for s in seeds)
    print(f"{names}: mean ± sd over seeds (se: mean per-run binomial stderr)\n")
    print("| file | direction | " + " | ".join(h for h, *_ in COLUMNS) + " | chance |")
    print("|---|---|" + "---|" * (len(COLUMNS) + 1))
    for split, first in runs[0]["mdm-cfg"].items():
        cells = [
            cell([r[run][split][key] for r in runs], [r[run][split][se] for r in runs])
            for _, run, key, se in COLUMNS
        ]
        chance = 1 / first["candidates"]
        print(f"| {split} | {first['direction']} | " + " | ".join(cells) + f" | {chance:.3f} |")
    per_seed(seeds, runs)


def per_seed(seeds: list[str], runs: list[dict[str, dict[str, dict]]]) -> None:
    """One row per seed: the reverse files' rankings and generations, where seeds differ most."""
    splits = [s for s in ("p2d_reverse", "d2p_reverse") if s in runs[0]["mdm-cfg"]]
    cols = [(split, h, run, key) for split in splits
            for h, run, key, _ in COLUMNS if run != "mdm-nocfg"]  # fmt: skip
    print("\n| seed | " + " | ".join(f"{split}: {h}" for split, h, *_ in cols) + " |")
    print("|---|" + "---|" * len(cols))
    for s, r in zip(seeds, runs, strict=True):
        vals = [f"{r[run][split][key]:.3f}" for split, _, run, key in cols]
        print(f"| {label(s)} | " + " | ".join(vals) + " |")


if __name__ == "__main__":
    main(sys.argv[1:] or ["0"])
