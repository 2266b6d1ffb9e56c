"""The run folder's rules: what ``--resume`` / ``--overwrite`` do with it, which checkpoint a run
continues from, which changes a resume accepts, and the files written when a run starts.

Unverifiable steps newer than the one resumed are set aside (renamed ``invalid-<step>``), never
deleted; ``lock.py`` keeps a second process out of the folder while a run holds it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mdmctl import checkpoint as ckpt
from mdmctl.errors import CompatibilityError, ConfigError
from mdmctl.fileio import atomic_write_text
from mdmctl.log import truncate_metrics
from mdmctl.train import lock

# Fields that may change between a run and its resume (tunables); everything else must match.
RESUMABLE_CHANGES = {
    "steps",
    "tokens",
    "flops",
    "lr",
    "min_lr_ratio",
    "warmup_steps",
    "val_every",
    "val_batches",
    "val_mc",
    "save_every",
    "keep_last",
    "log_every",
    "max_nonfinite_skips",
    "micro_batch_size",
    # How the same maths is spread over processes (a run may resume at another world size) and
    # computed (equal up to floating-point summation order).
    "parallel",
    "activation_checkpointing",
    "loss_head",
    "compile",
}


def _prepare_run_dir(run_dir: Path, resume: str, overwrite: bool) -> bool:
    """Check or clear the (locked) ``run_dir``; returns whether it holds checkpoint steps."""
    # The lock file is ours: it neither makes the folder "non-empty" nor goes with --overwrite.
    contents = [p for p in run_dir.iterdir() if p.name != lock.LOCK_NAME]
    if resume == "never" and contents and not overwrite:
        raise ConfigError(
            f"refusing to write into non-empty run dir {run_dir}: pass --resume auto to continue, "
            "--overwrite to start over, or another --out"
        )
    if overwrite:
        import shutil

        for p in contents:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
    if (run_dir / "checkpoints").is_dir():
        ckpt.clean_stale_tmp(run_dir)
    return bool(ckpt.list_steps(run_dir))


def _set_aside(ckpt_root: Path, name: str) -> Path:
    """Rename an unverifiable step to a fresh ``invalid-<name>[.k]`` (never deleted, never
    clobbered: a step set aside before keeps its name, and a rename onto it would fail)."""
    aside = ckpt_root / f"invalid-{name}"
    k = 0
    while aside.exists():
        k += 1
        aside = ckpt_root / f"invalid-{name}.{k}"
    (ckpt_root / name).rename(aside)
    return aside


def check_resume(saved: dict[str, Any], current: dict[str, Any], run_dir: Path) -> None:
    diffs = []
    for section, fields in current.items():
        if not isinstance(fields, dict):
            continue
        for f, v in fields.items():
            if (
                section == "train"
                and f in RESUMABLE_CHANGES
                or (section == "model" and f == "name")
                or (section == "sft" and f in ("epochs", "device", "dtype", "attention"))
            ):
                continue
            old = saved.get(section, {}).get(f)
            if old != v:
                diffs.append(f"{section}.{f}: checkpoint={old}, requested={v}")
    if diffs:
        raise CompatibilityError(
            f"{run_dir} holds a run with another setup ({'; '.join(diffs)}): cannot resume it; "
            "train into another --out, or pass --overwrite to replace it"
        )


def select_resume(run_dir: Path, resume: str, overwrite: bool, log: Callable[[str], None]) -> str:
    """Check or clear ``run_dir`` and pick the checkpoint to resume from ("" for none)."""
    has_steps = _prepare_run_dir(run_dir, resume, overwrite)
    resume_dir: Path | None = None
    if resume not in ("auto", "never"):
        resume_dir = ckpt.resolve_checkpoint(resume, log=log)
    elif resume == "auto" and has_steps:
        resume_dir = ckpt.find_latest(run_dir, log=log, resumable=True)
    if resume_dir is None:
        return ""
    newer = [
        p.name
        for p in ckpt.list_steps(run_dir)
        if p.resolve().parent == resume_dir.resolve().parent and p.name > resume_dir.name
    ]
    if newer and resume == "auto":
        # Newer steps that failed verification: set them aside (never deleted) so retention,
        # which keeps the highest step numbers, cannot drop the new trajectory instead.
        for name in newer:
            aside = _set_aside(run_dir / "checkpoints", name)
            log(f"moved unverifiable {name} to {aside.name}")
    elif newer:
        # Retention keeps the highest step numbers: continuing from an older step here would
        # delete the new trajectory's checkpoints and keep the abandoned ones.
        raise ConfigError(
            f"{run_dir} has checkpoints newer than {resume_dir.name} ({', '.join(newer)}); "
            "resume into another --out, or delete them first"
        )
    return str(resume_dir)


def write_start_files(
    run_dir: Path,
    config_dict: dict[str, Any],
    resolved: dict[str, Any],
    start_step: int,
    log: Callable[[str], None],
) -> str:
    # "resolved": the values this run actually uses where the request left them to a default
    # (steps from --tokens/--flops, the size's lr, warm-up, device). Not part of the resume
    # check: those fields may legitimately change on resume.
    text = json.dumps({**config_dict, "resolved": resolved}, indent=2) + "\n"
    atomic_write_text(run_dir / "config.json", text)
    # Steps after the resumed one (or all, on a fresh start) were lost with the kill and are
    # trained again: drop their old records so every step appears once.
    truncate_metrics(run_dir / "metrics.jsonl", start_step, log)
    return ""
