"""Planning an IsoFLOP sweep (docs/method.md §1): for each budget C and objective, the model sizes
along the IsoFLOP curve and the tokens each gets, as ``mdmctl pretrain ... --flops C`` runs them
(a resumable shell script).

Compute is counted by one convention for the whole sweep (``TrainConfig.flops_convention``):
``paper``, 6·N·D with N the non-embedding parameters (the paper's and SMDM's), or ``full``, which
adds the output head and the attention scores (``ModelConfig.flops_per_token``): at micro scale
the head alone can cost several times the non-embedding count, and curves "equal" by 6·N·D are
not. ``plan``, ``pretrain --flops`` and ``fit`` all read the run's convention.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from mdmctl.config import MODEL_SIZES, ModelConfig
from mdmctl.errors import ConfigError


@dataclass(frozen=True)
class PlannedRun:
    objective: str
    flops: float
    size: str
    """A named size, or ``LxD`` (see :func:`shape_of`)."""
    n_params: int
    """Non-embedding parameters N."""
    tokens: float
    """D = C / (FLOPs per token), 6·N per token by the paper's count."""
    steps: int
    out: str


def shape_of(size: str, seq_len: int, vocab_size: int = 0) -> ModelConfig:
    """A named size (``mini``, SMDM's ``6M``...) or a custom ``LxD`` shape: L layers of width D,
    d_ff = 4·D, heads of 64 dims (at least one), named ``LxD``; the ladders of a micro sweep
    need widths between the presets."""
    # Counted as an ARM: the shape is what matters, and an MDM's mask id needs a vocabulary.
    if size in MODEL_SIZES:
        return ModelConfig.from_name(size, seq_len=seq_len, vocab_size=vocab_size, objective="arm")
    try:
        n_layers, d_model = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise ConfigError(
            f"--sizes: {size!r} is neither a named size nor LxD (e.g. 4x128)"
        ) from None
    if n_layers < 1 or d_model < 8 or d_model % 8:
        raise ConfigError(f"--sizes: {size!r}: need L >= 1 and D a multiple of 8")
    heads = max(1, d_model // 64)
    while d_model % heads:
        heads -= 1
    return ModelConfig(name=f"{n_layers}x{d_model}", n_layers=n_layers, d_model=d_model,
                       n_heads=heads, d_ff=4 * d_model, seq_len=seq_len,
                       vocab_size=vocab_size, objective="arm")  # fmt: skip


def count(n: float) -> str:
    """Parameters as they are: 4.1k, 131k, 6.29M, 1.03B."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.0f}"


@dataclass(frozen=True)
class SweepShape:
    """What every run of the sweep shares."""

    batch_size: int
    seq_len: int
    vocab_size: int = 0
    convention: str = "paper"
    min_steps: int = 50
    max_steps: int | None = None
    centre: tuple[float, float] | None = None
    """(n0, a): keep the ``per_budget`` sizes nearest N*(C) = n0·C^a in ln N."""
    per_budget: int = 7
    dn_window: tuple[float, float] | None = None
    """Keep sizes whose D/N lies inside (lo, hi)."""


def plan(
    budgets: Sequence[float], objectives: Sequence[str], sizes: Sequence[str], shape: SweepShape,
    out_root: str,
) -> tuple[list[PlannedRun], list[str], list[str]]:  # fmt: skip
    """(runs, left out with the reason, warnings). A size is left out with fewer than
    ``min_steps`` optimizer steps (too big for the budget: not on the curve), more than
    ``max_steps`` (a tiny model at a large budget, far from its minimum), outside the D/N window,
    or (with ``centre``) not among the sizes nearest the expected optimum. A budget left with
    fewer than 3 sizes can never be fitted: a warning says so."""
    if shape.convention == "full" and not shape.vocab_size:
        raise ConfigError("--flops-convention full counts the output head: give --vocab-size "
                          "(or a --data corpus whose corpus.json has it)")  # fmt: skip
    runs, skipped, warnings = [], [], []
    for objective in objectives:
        for c in budgets:
            kept = _sizes_for(c, sizes, shape, skipped, f"{objective} C={c:.3g}")
            for size, m in kept:
                per_token = m.train_flops_per_token(shape.convention)
                steps = int(c // (per_token * shape.batch_size * shape.seq_len))
                out = f"{out_root}/{objective}-C{c:.3g}-{size}"
                n = m.n_params_non_embedding
                runs.append(PlannedRun(objective, c, size, n, c / per_token, steps, out))
            if len(kept) < 3:
                sizes_kept = f"{len(kept)} size{'' if len(kept) == 1 else 's'}"
                warnings.append(f"{objective} C={c:.3g}: {sizes_kept}; an IsoFLOP parabola "
                                "needs 3 (add sizes, or change the budget)")  # fmt: skip
    return runs, skipped, warnings


def _sizes_for(
    c: float, sizes: Sequence[str], shape: SweepShape, skipped: list[str], where: str
) -> list[tuple[str, ModelConfig]]:
    kept = []
    for size in sizes:
        m = shape_of(size, shape.seq_len, shape.vocab_size)
        per_token = m.train_flops_per_token(shape.convention)
        steps = int(c // (per_token * shape.batch_size * shape.seq_len))
        dn = c / per_token / m.n_params_non_embedding
        if steps < shape.min_steps:
            skipped.append(f"{where} {size}: {steps} steps < {shape.min_steps} (too big)")
        elif shape.max_steps is not None and steps > shape.max_steps:
            skipped.append(f"{where} {size}: {steps} steps > {shape.max_steps} (too small)")
        elif shape.dn_window and not shape.dn_window[0] <= dn <= shape.dn_window[1]:
            skipped.append(f"{where} {size}: D/N {dn:.3g} outside {shape.dn_window}")
        else:
            kept.append((size, m))
    if shape.centre:
        n0, a = shape.centre
        target = math.log(n0) + a * math.log(c)
        near = sorted(kept, key=lambda s: abs(math.log(s[1].n_params_non_embedding) - target))
        for size, _ in near[shape.per_budget :]:
            skipped.append(f"{where} {size}: not among the {shape.per_budget} sizes nearest "
                           f"N* = {count(math.exp(target))}")  # fmt: skip
        kept = [s for s in kept if s in near[: shape.per_budget]]
    return kept


def sweep_script(runs: Sequence[PlannedRun], data: str, extra: Sequence[str]) -> str:
    """A bash script that runs the sweep in order. Each run uses ``--resume auto``: after an
    interruption, running the script again continues the unfinished run and only re-validates
    the finished ones."""
    lines = [
        "#!/usr/bin/env bash",
        "# IsoFLOP sweep written by `mdmctl scaling plan`; rerun to resume after an interruption.",
        "set -euo pipefail",
    ]
    for r in runs:
        args = ["mdmctl", "pretrain", "--objective", r.objective, "--flops", f"{r.flops:.6g}"]
        args += size_args(r.size) + ["--data", data, "--out", r.out, "--resume", "auto"]
        args += ["--show-samples", "0", *extra]
        lines.append(shlex.join(args))
    return "\n".join(lines) + "\n"


def size_args(size: str) -> list[str]:
    if size in MODEL_SIZES:
        return ["--size", size]
    m = shape_of(size, 64)
    return ["--n-layers", str(m.n_layers), "--d-model", str(m.d_model), "--n-heads",
            str(m.n_heads), "--d-ff", str(m.d_ff)]  # fmt: skip
