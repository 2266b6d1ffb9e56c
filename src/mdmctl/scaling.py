"""IsoFLOP scaling laws (docs/method.md §1: the paper's first result): plan a sweep, fit it.

Compute is counted as the paper counts it, C = 6·N·D with N the non-embedding parameters and D the
training tokens (``TrainConfig.resolve_steps`` turns ``--flops C`` into steps the same way).

- :func:`plan`: for each budget C and objective, the model sizes along the IsoFLOP curve and the
  tokens each gets, as ``mdmctl pretrain ... --flops C`` runs (a resumable shell script).
- :func:`fit`: per (objective, C), a quadratic in ln N through the final validation losses; its
  vertex is the compute-optimal size N*(C) and loss L*(C). Across budgets, power laws
  N*(C) = n0·C^a and L*(C) = l0·C^b. With both objectives: the compute gap (how many times more
  compute the MDM needs to reach the ARM's L*(C)) and the size ratio N*_MDM(C) / N*_ARM(C), with
  percentile intervals from a bootstrap over runs (runs resampled within each budget).

No torch here: plain floats, so a fit of a hundred runs is instant and the CLI stays light.
"""

from __future__ import annotations

import json
import math
import random
import shlex
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mdmctl.config import MODEL_SIZES, ModelConfig
from mdmctl.errors import ConfigError, DataError

# ------------------------------------------------------------------------------------------ plan


@dataclass(frozen=True)
class PlannedRun:
    objective: str
    flops: float
    size: str
    """A named size, or ``LxD`` (see :func:`shape_of`)."""
    n_params: int
    """Non-embedding parameters N."""
    tokens: float
    """D = C / (6·N)."""
    steps: int
    out: str


def shape_of(size: str, seq_len: int) -> ModelConfig:
    """A named size (``mini``, SMDM's ``6M``...) or a custom ``LxD`` shape: L layers of width D,
    d_ff = 4·D, heads of 64 dims (at least one); the ladders of a micro sweep need widths between
    the presets."""
    if size in MODEL_SIZES:
        return ModelConfig.from_name(size, seq_len=seq_len)
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
    return ModelConfig(
        name=size,
        n_layers=n_layers,
        d_model=d_model,
        n_heads=heads,
        d_ff=4 * d_model,
        seq_len=seq_len,
    )


def plan(
    budgets: Sequence[float],
    objectives: Sequence[str],
    sizes: Sequence[str],
    *,
    batch_size: int,
    seq_len: int,
    out_root: str,
    min_steps: int = 50,
    max_steps: int | None = None,
) -> tuple[list[PlannedRun], list[str]]:
    """Every (objective, budget, size) with at least ``min_steps`` optimizer steps (a smaller
    model than that budget allows would not be on the curve) and at most ``max_steps`` (a tiny
    model at a large budget costs many small, slow steps, far from where that budget's minimum
    lies); also the skipped ones, explained."""
    runs, skipped = [], []
    for objective in objectives:
        for c in budgets:
            for size in sizes:
                n = shape_of(size, seq_len).n_params_non_embedding
                steps = int(c // (6.0 * n * batch_size * seq_len))
                if steps < min_steps:
                    skipped.append(
                        f"{objective} C={c:.3g} {size}: {steps} steps < {min_steps} (too big)"
                    )
                    continue
                if max_steps is not None and steps > max_steps:
                    skipped.append(
                        f"{objective} C={c:.3g} {size}: {steps} steps > {max_steps} (too small)"
                    )
                    continue
                out = f"{out_root}/{objective}-C{c:.3g}-{size}"
                runs.append(PlannedRun(objective, c, size, n, c / (6.0 * n), steps, out))
    return runs, skipped


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
        args += _size_args(r.size) + ["--data", data, "--out", r.out, "--resume", "auto"]
        args += ["--show-samples", "0", *extra]
        lines.append(shlex.join(args))
    return "\n".join(lines) + "\n"


def _size_args(size: str) -> list[str]:
    if size in MODEL_SIZES:
        return ["--size", size]
    m = shape_of(size, 64)
    return ["--n-layers", str(m.n_layers), "--d-model", str(m.d_model), "--n-heads",
            str(m.n_heads), "--d-ff", str(m.d_ff)]  # fmt: skip


# ------------------------------------------------------------------------------------------- fit


@dataclass(frozen=True)
class Run:
    """One finished pretraining run: what the fit needs."""

    path: str
    objective: str
    n_params: int
    flops: float
    val_loss: float


def read_runs(paths: Sequence[Path]) -> list[Run]:
    """Finished runs under ``paths`` (run folders, or folders holding them): N and the objective
    from config.json, C from ``train.flops`` (else 6·N·steps·batch·seq_len), the loss from the
    last validation in metrics.jsonl. Folders without a validation are skipped, not guessed."""
    runs = []
    for root in paths:
        if not root.exists():
            raise DataError(f"{root}: no such run folder")
        for cfg_path in sorted(root.glob("**/config.json")):
            run = _read_run(cfg_path.parent)
            if run is not None:
                runs.append(run)
    return runs


def _read_run(d: Path) -> Run | None:
    try:
        cfg = json.loads((d / "config.json").read_text())
        model = ModelConfig.from_dict(cfg["model"])
        train = cfg["train"]
    except (ValueError, KeyError, TypeError, OSError) as e:
        raise DataError(f"{d / 'config.json'}: not an mdmctl run config ({e})") from None
    if "sft" in cfg:
        return None  # a fine-tune: not on a pretraining IsoFLOP curve
    loss, steps = None, 0
    metrics = d / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a torn last line after a kill
            steps = max(steps, int(rec.get("step", 0)))
            if rec.get("val_loss") is not None:
                loss = float(rec["val_loss"])
    if loss is None or not math.isfinite(loss):
        return None
    n = model.n_params_non_embedding
    c = train.get("flops") or 6.0 * n * steps * train["batch_size"] * model.seq_len
    return Run(str(d), model.objective, n, float(c), loss)


@dataclass
class BudgetFit:
    flops: float
    n_runs: int
    coef: tuple[float, float, float]
    """L = a·x² + b·x + c with x = ln N."""
    n_opt: float
    loss_opt: float


@dataclass
class Frontier:
    objective: str
    budgets: list[BudgetFit]
    n_exp: float
    """a in N*(C) = n0·C^a."""
    n_log_coef: float
    loss_exp: float
    """b in L*(C) = l0·C^b."""
    loss_log_coef: float
    skipped: list[str] = field(default_factory=list)

    def n_opt(self, c: float) -> float:
        return math.exp(self.n_log_coef + self.n_exp * math.log(c))

    def loss_opt(self, c: float) -> float:
        return math.exp(self.loss_log_coef + self.loss_exp * math.log(c))

    def flops_for(self, loss: float) -> float:
        """The compute at which this frontier reaches ``loss``."""
        return math.exp((math.log(loss) - self.loss_log_coef) / self.loss_exp)


def _lstsq(xs: list[list[float]], ys: list[float]) -> list[float]:
    """Least squares by the normal equations (2-3 unknowns, well conditioned after centring)."""
    k = len(xs[0])
    a = [[sum(r[i] * r[j] for r in xs) for j in range(k)] for i in range(k)]
    b = [sum(r[i] * y for r, y in zip(xs, ys, strict=True)) for i in range(k)]
    for i in range(k):  # Gauss-Jordan with partial pivoting
        p = max(range(i, k), key=lambda r: abs(a[r][i]))
        a[i], a[p], b[i], b[p] = a[p], a[i], b[p], b[i]
        if abs(a[i][i]) < 1e-300:
            raise ValueError("singular fit")
        for r in range(k):
            if r != i:
                f = a[r][i] / a[i][i]
                a[r] = [v - f * w for v, w in zip(a[r], a[i], strict=True)]
                b[r] -= f * b[i]
    return [b[i] / a[i][i] for i in range(k)]


def fit_budget(runs: Sequence[Run]) -> BudgetFit:
    """The IsoFLOP parabola of one budget; raises ValueError without a minimum inside."""
    if len({r.n_params for r in runs}) < 3:
        raise ValueError("fewer than 3 model sizes")
    x0 = sum(math.log(r.n_params) for r in runs) / len(runs)  # centre: conditioning
    xs = [[(math.log(r.n_params) - x0) ** 2, math.log(r.n_params) - x0, 1.0] for r in runs]
    a, b, c = _lstsq(xs, [r.val_loss for r in runs])
    if a <= 0:
        raise ValueError("the losses do not curve upwards (no minimum)")
    v = -b / (2 * a)
    lo, hi = min(r.n_params for r in runs), max(r.n_params for r in runs)
    if not lo <= math.exp(x0 + v) <= hi:
        # An extrapolated vertex is a guess about sizes nobody trained: bracket the minimum.
        raise ValueError(
            f"the minimum (N = {math.exp(x0 + v):.3g}) lies outside the sizes tried "
            f"({lo:.3g}-{hi:.3g}); add sizes on that side"
        )
    # Back to uncentred ln N: a(x - x0)² + b(x - x0) + c.
    coef = (a, b - 2 * a * x0, a * x0 * x0 - b * x0 + c)
    return BudgetFit(runs[0].flops, len(runs), coef, math.exp(x0 + v), c - b * b / (4 * a))


def fit_frontier(runs: Sequence[Run], objective: str) -> Frontier:
    by_c: dict[float, list[Run]] = {}
    for r in runs:
        if r.objective == objective:
            by_c.setdefault(_budget_key(r.flops), []).append(r)
    fits, skipped = [], []
    for c, group in sorted(by_c.items()):
        try:
            fits.append(fit_budget(group))
        except ValueError as e:
            skipped.append(f"{objective} C={c:.3g}: {e}")
    if len(fits) < 2:
        raise ValueError(f"{objective}: fewer than 2 budgets with an IsoFLOP minimum")
    lc = [[math.log(f.flops), 1.0] for f in fits]
    n_exp, n0 = _lstsq(lc, [math.log(f.n_opt) for f in fits])
    l_exp, l0 = _lstsq(lc, [math.log(f.loss_opt) for f in fits])
    return Frontier(objective, fits, n_exp, n0, l_exp, l0, skipped)


def _budget_key(c: float) -> float:
    """Budgets equal to 4 significant digits are one curve (steps are rounded down)."""
    return float(f"{c:.4g}")


@dataclass
class Comparison:
    flops: float
    compute_gap: float
    """C_MDM / C: how many times C the MDM needs to reach the ARM's L*(C)."""
    size_ratio: float
    """N*_MDM(C) / N*_ARM(C)."""


def compare(mdm: Frontier, arm: Frontier, c: float) -> Comparison:
    return Comparison(c, mdm.flops_for(arm.loss_opt(c)) / c, mdm.n_opt(c) / arm.n_opt(c))


def bootstrap(
    runs: Sequence[Run], budgets: Sequence[float], n_boot: int, seed: int
) -> dict[str, Any]:
    """Percentile intervals (2.5, 50, 97.5) of the gap and size ratio at each budget, resampling
    runs with replacement within each (objective, budget) group; resamples that lose a minimum
    are counted and left out."""
    rng = random.Random(seed)
    groups: dict[tuple[str, float], list[Run]] = {}
    for r in runs:
        groups.setdefault((r.objective, _budget_key(r.flops)), []).append(r)
    draws: dict[float, list[Comparison]] = {c: [] for c in budgets}
    failed = 0
    for _ in range(n_boot):
        sample = [rng.choice(g) for g in groups.values() for _ in g]
        try:
            mdm, arm = fit_frontier(sample, "mdm"), fit_frontier(sample, "arm")
        except ValueError:
            failed += 1
            continue
        for c in budgets:
            draws[c].append(compare(mdm, arm, c))
    out = {"n_boot": n_boot, "failed": failed, "at": []}
    for c in budgets:
        gaps = sorted(d.compute_gap for d in draws[c])
        ratios = sorted(d.size_ratio for d in draws[c])
        out["at"].append(
            {"flops": c, "compute_gap": _percentiles(gaps), "size_ratio": _percentiles(ratios)}
        )
    return out


def _percentiles(v: list[float]) -> list[float] | None:
    if not v:
        return None
    return [v[min(len(v) - 1, int(q * len(v)))] for q in (0.025, 0.5, 0.975)]


def fit(runs: Sequence[Run], *, n_boot: int = 200, seed: int = 0) -> dict[str, Any]:
    """Frontiers per objective; with both, the comparison at each budget (and its bootstrap)."""
    result: dict[str, Any] = {"runs": [asdict(r) for r in runs], "frontiers": {}, "skipped": []}
    fronts = {}
    for obj in sorted({r.objective for r in runs}):
        try:
            fronts[obj] = fit_frontier(runs, obj)
        except ValueError as e:
            result["skipped"].append(str(e))
            continue
        result["frontiers"][obj] = asdict(fronts[obj])
        result["skipped"] += fronts[obj].skipped
    if {"mdm", "arm"} <= fronts.keys():
        budgets = sorted(
            {f.flops for f in fronts["mdm"].budgets} | {f.flops for f in fronts["arm"].budgets}
        )
        result["comparison"] = [asdict(compare(fronts["mdm"], fronts["arm"], c)) for c in budgets]
        result["bootstrap"] = bootstrap(runs, budgets, n_boot, seed) if n_boot else None
    return result


def plot(result: dict[str, Any], path: Path) -> None:
    """IsoFLOP curves (loss against N per budget, the fitted parabolas) and each objective's
    frontier N*(C), as a PNG. Needs matplotlib (``pip install 'mdmctl[plot]'``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError(
            "--plot needs matplotlib: pip install 'mdmctl[plot]' (the JSON fit is written anyway)"
        ) from None
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    colors = {"mdm": "tab:blue", "arm": "tab:orange"}
    for obj, fr in result["frontiers"].items():
        for b in fr["budgets"]:
            pts = [r for r in result["runs"] if r["objective"] == obj
                   and _budget_key(r["flops"]) == _budget_key(b["flops"])]  # fmt: skip
            ax.scatter([r["n_params"] for r in pts], [r["val_loss"] for r in pts],
                       color=colors.get(obj), s=14)  # fmt: skip
            lo = min(r["n_params"] for r in pts)
            hi = max(r["n_params"] for r in pts)
            xs = [lo * (hi / lo) ** (i / 40) for i in range(41)]
            a, bb, c = b["coef"]
            ax.plot(xs, [a * math.log(x) ** 2 + bb * math.log(x) + c for x in xs],
                    color=colors.get(obj), lw=1, alpha=0.7)  # fmt: skip
            ax.scatter([b["n_opt"]], [b["loss_opt"]], color=colors.get(obj), marker="*", s=80)
        cs = [b["flops"] for b in fr["budgets"]]
        ax2.scatter(cs, [b["n_opt"] for b in fr["budgets"]], color=colors.get(obj))
        ax2.plot(cs, [math.exp(fr["n_log_coef"] + fr["n_exp"] * math.log(c)) for c in cs],
                 color=colors.get(obj), label=f"{obj}: N* ∝ C^{fr['n_exp']:.2f}")  # fmt: skip
    for a_, xl, yl in ((ax, "non-embedding parameters N", "validation loss (nats/token)"),
                       (ax2, "compute C = 6·N·D (FLOPs)", "compute-optimal N*")):  # fmt: skip
        a_.set_xscale("log")
        a_.set_xlabel(xl)
        a_.set_ylabel(yl)
    ax2.set_yscale("log")
    ax2.legend()
    ax.set_title("IsoFLOP curves (MDM: ELBO bound; ARM: exact)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
