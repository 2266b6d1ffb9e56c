"""MDM against ARM (docs/method.md §1): the compute gap and the size ratio, where they are measured,
with intervals from a residual bootstrap.

- The **compute gap** at an ARM budget C: how many times C the MDM needs to reach the ARM's L*(C),
  read off the MDM's frontier at the compute C' where it reaches that loss. C' outside the MDM's
  measured budgets is an extrapolation: its factor is reported, and beyond ``max_extrapolation``
  the gap is refused (None, with the reason) unless ``extrapolate``.
- The **size ratio** N*_MDM(C) / N*_ARM(C), at the budgets both objectives measured, and flagged
  likewise elsewhere.
- **Intervals**: what is random in a sweep is each run's loss, so each bootstrap draw keeps every
  run where it is and gives it its fitted IsoFLOP loss times one relative residual drawn from its
  objective's pool (residuals standardised by their leverage, ``fitted_runs``), then refits
  everything. Resampling whole runs instead drops sizes from a parabola of 5-9 points, which
  biases its vertex; the intervals it gave covered a known gap in 0 of 40 sweeps (issue 29).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from mdmctl.scaling.isoflop import (
    Frontier,
    Run,
    fit_budget,
    fit_frontier,
    group_by_budget,
    lstsq_solve,
)

MAX_EXTRAPOLATION = 2.0
"""How far past its measured budgets a frontier is read without ``extrapolate``: a factor in C."""


@dataclass
class Comparison:
    flops: float
    compute_gap: float | None
    """C_MDM / C: how many times C the MDM needs to reach the ARM's L*(C); None: refused."""
    gap_extrapolation: float | None
    """How far C_MDM lies outside the MDM's measured budgets (1: inside; None: never reached)."""
    size_ratio: float | None
    """N*_MDM(C) / N*_ARM(C)."""
    ratio_extrapolation: float
    """How far C lies outside the budgets of the objective that did not measure it (1: inside)."""
    note: str = ""


def outside(c: float, measured: tuple[float, float]) -> float:
    """The factor by which ``c`` lies outside [lo, hi] (1 inside)."""
    lo, hi = measured
    return max(1.0, lo / c, c / hi)


def compare(
    mdm: Frontier, arm: Frontier, c: float, *, limit: float = MAX_EXTRAPOLATION,
    extrapolate: bool = False,
) -> Comparison:  # fmt: skip
    """Gap and size ratio at budget ``c``."""
    c_mdm = mdm.flops_for(arm.loss_opt(c))
    gap_x = outside(c_mdm, mdm.measured) if math.isfinite(c_mdm) else None
    ratio_x = max(outside(c, mdm.measured), outside(c, arm.measured))
    gap, ratio, notes = c_mdm / c, mdm.n_opt(c) / arm.n_opt(c), []
    if not math.isfinite(c_mdm):
        gap = None
        notes.append("the MDM's frontier never reaches the ARM's loss")
    elif gap_x is not None and gap_x > limit and not extrapolate:
        gap = None
        notes.append(f"the gap needs the MDM's frontier {gap_x:.3g}x past its budgets")
    if ratio_x > limit and not extrapolate:
        ratio = None
        notes.append(f"the size ratio needs a frontier {ratio_x:.3g}x past its budgets")
    if notes and not extrapolate:
        notes[-1] += f" (limit {limit:g}x; --extrapolate to read it anyway)"
    return Comparison(c, gap, gap_x, ratio, ratio_x, "; ".join(notes))


def comparison_budgets(mdm: Frontier, arm: Frontier) -> list[float]:
    """The ARM's measured budgets: where its L*(C), the gap's target, is measured."""
    return [b.flops for b in arm.budgets]


def fitted_runs(runs: Sequence[Run], objective: str) -> tuple[list[Run], list[float], list[float]]:
    """The runs on a fitted IsoFLOP parabola, their fitted losses, and their relative residuals
    standardised by leverage (r / sqrt(1 - h)): a parabola's end points pull the fit towards
    themselves, so their raw residuals understate the noise that moves its vertex."""
    kept, fitted, resid = [], [], []
    for group in group_by_budget(runs, objective).values():
        try:
            a, b, c = fit_budget(group).coef
        except ValueError:
            continue
        for r, h in zip(group, leverages([math.log(r.n_params) for r in group]), strict=True):
            x = math.log(r.n_params)
            y = a * x * x + b * x + c
            kept.append(r)
            fitted.append(y)
            resid.append((r.val_loss / y - 1.0) / math.sqrt(max(1.0 - h, 1e-6)))
    mean = sum(resid) / len(resid) if resid else 0.0
    # The noise level is itself estimated from these few residuals: widen as Student's t widens
    # a normal interval for the same degrees of freedom (1.08x at 16).
    widen = t_factor(len(kept) - 3 * len({r.flops for r in kept}))
    return kept, fitted, [(e - mean) * widen for e in resid]


def t_factor(dof: int, z: float = 1.959964) -> float:
    """t(0.975, dof) / z(0.975), by the Cornish-Fisher expansion (within 0.1% from 5 dof)."""
    if dof < 1:
        return 1.0
    t = z + (z**3 + z) / (4 * dof) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * dof**2)
    return t / z


def leverages(xs: list[float]) -> list[float]:
    """The diagonal of a quadratic fit's hat matrix at ``xs``."""
    x0 = sum(xs) / len(xs)
    rows = [[(x - x0) ** 2, x - x0, 1.0] for x in xs]
    xtx = [[sum(r[i] * r[j] for r in rows) for j in range(3)] for i in range(3)]
    out = []
    for r in rows:  # h = r (XᵀX)⁻¹ rᵀ, solving XᵀX v = rᵀ
        v = lstsq_solve(xtx, r)
        out.append(sum(a * b for a, b in zip(r, v, strict=True)))
    return out


def bootstrap(
    runs: Sequence[Run], budgets: Sequence[float], *, n_boot: int, seed: int, form: str,
    limit: float = MAX_EXTRAPOLATION, extrapolate: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Percentile intervals (2.5, 50, 97.5) of the gap and size ratio at each budget from a
    residual bootstrap; draws in which a fit fails are counted and left out."""
    rng = random.Random(seed)
    worlds = []
    for obj in ("mdm", "arm"):
        worlds.append(fitted_runs(runs, obj))
    draws: dict[float, list[Comparison]] = {c: [] for c in budgets}
    failed = 0
    for _ in range(n_boot):
        sample = [
            replace(r, val_loss=y * (1.0 + rng.choice(pool)))
            for kept, fitted, pool in worlds
            for r, y in zip(kept, fitted, strict=True)
        ]
        try:
            mdm, arm = fit_frontier(sample, "mdm", form), fit_frontier(sample, "arm", form)
        except ValueError:
            failed += 1
            continue
        for c in budgets:
            draws[c].append(compare(mdm, arm, c, limit=limit, extrapolate=extrapolate))
    at = []
    for c in budgets:
        gaps = sorted(d.compute_gap for d in draws[c] if d.compute_gap is not None)
        ratios = sorted(d.size_ratio for d in draws[c] if d.size_ratio is not None)
        at.append({"flops": c, "compute_gap": percentiles(gaps), "size_ratio": percentiles(ratios)})
    return {"n_boot": n_boot, "failed": failed, "method": "residual", "at": at}


def percentiles(v: list[float]) -> list[float] | None:
    if not v:
        return None
    return [v[min(len(v) - 1, int(q * len(v)))] for q in (0.025, 0.5, 0.975)]
