"""Mean ± sd over seeds of every figure run.sh writes (work/reverse_curse[-seedN]/*.json).

python examples/reverse_curse/seeds_table.py 0 1 2
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


def load(seed: str) -> dict[str, dict[str, dict]]:
    w = Path("work/reverse_curse" + ("" if seed == "0" else f"-seed{seed}"))
    return {
        run: {r["split"]: r for r in json.loads((w / f"{run}.json").read_text())} for run in RUNS
    }


def cell(values: list[float], stderrs: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.3f} ± {sd:.3f} (se {statistics.mean(stderrs):.3f})"


def main(seeds: list[str]) -> None:
    runs = [load(s) for s in seeds]
    print(f"Seeds {', '.join(seeds)}: mean ± sd over seeds (se: mean per-run binomial stderr)\n")
    print("| file | direction | " + " | ".join(h for h, *_ in COLUMNS) + " | chance |")
    print("|---|---|" + "---|" * (len(COLUMNS) + 1))
    for split, first in runs[0]["mdm-cfg"].items():
        cells = [
            cell([r[run][split][key] for r in runs], [r[run][split][se] for r in runs])
            for _, run, key, se in COLUMNS
        ]
        chance = 1 / first["candidates"]
        print(f"| {split} | {first['direction']} | " + " | ".join(cells) + f" | {chance:.3f} |")


if __name__ == "__main__":
    main(sys.argv[1:] or ["0"])
