"""What is in a runs folder: one summary per run (``mdmctl runs``) and a run's loss-curve PNG.

Reads only ``config.json``, ``metrics.jsonl`` and the checkpoint folder names, so listing stays
fast (no torch import, no hashing); ``mdmctl sample`` and ``eval`` verify a checkpoint when they
load it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mdmctl.errors import ConfigError

STEP_PREFIX = "step-"  # the checkpoint folder names (checkpoint.step_dir_name)


@dataclass(frozen=True)
class RunSummary:
    path: str
    kind: str  # "pretrain", "finetune" or "import"
    objective: str
    size: str
    n_params_non_embedding: int | None
    steps_done: int  # the last step in metrics.jsonl
    steps_total: int | None  # config.json's resolved steps (None for runs made before it)
    best_val_loss: float | None
    best_val_step: int | None
    newest_checkpoint: str | None
    updated: float  # mtime of metrics.jsonl (else config.json), seconds since the epoch
    problem: str | None = None
    """Why the run's config could not be read (the run is listed all the same)."""


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl``; a torn last line (a kill mid-write) is skipped."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def summarize_run(run_dir: Path) -> RunSummary | None:
    """A run folder's summary; None when ``run_dir`` holds no mdmctl run (a config.json without
    a model section and no metrics or checkpoints, e.g. a Hugging Face export). A run whose
    config.json is missing or unreadable is listed with its ``problem``."""
    problem = None
    try:
        cfg = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        cfg, problem = {}, "no config.json"
    except (OSError, ValueError) as e:
        cfg, problem = {}, f"config.json unreadable ({type(e).__name__})"
    model = cfg.get("model") if isinstance(cfg, dict) else None
    if not isinstance(model, dict):
        has_run_files = (run_dir / "metrics.jsonl").is_file() or any(
            (run_dir / "checkpoints").glob(f"{STEP_PREFIX}*")
        )
        if not has_run_files:
            return None
        cfg, model, problem = {}, {}, problem or "config.json has no model section"
    from mdmctl.config import ModelConfig

    try:
        n_params: int | None = (
            ModelConfig.from_dict(model).n_params_non_embedding if model else None
        )
    except (ConfigError, TypeError):  # another version's config: list it, leave N blank
        n_params = None
    records = read_metrics(run_dir)
    vals = [(r["val_loss"], r["step"]) for r in records if _finite(r.get("val_loss"))]
    best = min(vals) if vals else (None, None)
    steps = sorted((run_dir / "checkpoints").glob(f"{STEP_PREFIX}*"))
    stamp = run_dir / "metrics.jsonl" if (run_dir / "metrics.jsonl").exists() else run_dir
    return RunSummary(
        path=str(run_dir),
        kind="?"
        if problem
        else "import"
        if "import" in cfg
        else "finetune"
        if "sft" in cfg
        else "pretrain",
        objective=str(model.get("objective", "?")),
        size=str(model.get("name", "?")),
        n_params_non_embedding=n_params,
        steps_done=max((int(r.get("step", 0)) for r in records), default=0),
        steps_total=(cfg.get("resolved") or {}).get("steps"),
        best_val_loss=best[0],
        best_val_step=best[1],
        newest_checkpoint=str(steps[-1]) if steps else None,
        updated=stamp.stat().st_mtime,
        problem=problem,
    )


def find_runs(root: Path) -> list[RunSummary]:
    """Every run folder at or below ``root`` (a folder with a ``config.json``, a
    ``metrics.jsonl`` or checkpoints), newest first."""
    if not root.exists():
        raise ConfigError(f"{root}: no such folder (runs are written to runs/ by default)")
    if not root.is_dir():
        raise ConfigError(f"{root}: not a folder")
    dirs = (
        {m.parent for m in root.glob("**/config.json")}
        | {m.parent for m in root.glob("**/metrics.jsonl")}
        | {m.parent.parent for m in root.glob(f"**/checkpoints/{STEP_PREFIX}*")}
    )
    found = [summarize_run(d) for d in sorted(dirs)]
    return sorted((r for r in found if r is not None), key=lambda r: r.updated, reverse=True)


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


def plot_loss_curve(run_dir: Path, out: Path | None = None) -> Path:
    """Training loss (and validation loss) against step, as ``loss.png`` beside
    ``metrics.jsonl``. Needs matplotlib (``pip install 'mdmctl[plot]'``): ``ConfigError``
    without it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("the loss curve needs matplotlib: pip install 'mdmctl[plot]'") from None
    from mdmctl.fileio import atomic_write

    records = read_metrics(run_dir)
    train = [(r["step"], r["loss"]) for r in records if _finite(r.get("loss"))]
    val = [(r["step"], r["val_loss"]) for r in records if _finite(r.get("val_loss"))]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train, strict=True), lw=1, label="train loss")
    if val:
        ax.plot(*zip(*val, strict=True), marker="o", ms=3, label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("nats per token")
    ax.set_title(run_dir.name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = out or run_dir / "loss.png"
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        plt.close(fig)
    return path
