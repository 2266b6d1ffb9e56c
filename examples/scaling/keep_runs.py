"""Keep a sweep's finished runs as the small records `mdmctl scaling fit` reads.

python examples/scaling/keep_runs.py work/scaling/runs docs/runs/scaling

For every run under RUNS that has a final validation, OUT/<run>/ gets its config.json and the
last line of its metrics.jsonl (the step reached and the validation loss): a few hundred bytes a
run instead of checkpoints, so a sweep spread over several sessions or machines is fitted as one
(`mdmctl scaling fit OUT work/scaling/runs`). Runs already kept are overwritten.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def last_record(metrics: Path) -> str | None:
    """The last complete metrics line, if it carries a validation loss (a finished run's does)."""
    for line in reversed(metrics.read_text().splitlines()):
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a torn last line after a kill
        return line if rec.get("val_loss") is not None else None
    return None


def keep(runs: Path, out: Path) -> list[str]:
    kept = []
    for cfg in sorted(runs.glob("*/config.json")):
        metrics = cfg.parent / "metrics.jsonl"
        line = last_record(metrics) if metrics.is_file() else None
        if line is None:
            continue  # unfinished: nothing a fit could use
        dest = out / cfg.parent.name
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "config.json").write_text(cfg.read_text())
        (dest / "metrics.jsonl").write_text(line + "\n")
        kept.append(cfg.parent.name)
    return kept


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    names = keep(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"kept {len(names)} runs in {sys.argv[2]}")
