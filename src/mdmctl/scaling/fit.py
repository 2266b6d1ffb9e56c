"""``mdmctl scaling fit``'s result: both estimators side by side (docs/method.md §1).

1. IsoFLOP (the paper's approach): a parabola per budget, a frontier per objective
   (``isoflop.py``), the gap and the size ratio at the ARM's budgets with residual-bootstrap
   intervals (``compare.py``).
2. The L(N, D) law per objective (``law.py``), its own gap and size ratio at the same budgets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from mdmctl.errors import DataError
from mdmctl.scaling.compare import (
    MAX_EXTRAPOLATION,
    bootstrap,
    compare,
    comparison_budgets,
    outside,
)
from mdmctl.scaling.isoflop import Frontier, Run, fit_frontier
from mdmctl.scaling.law import Law, fit_law


def fit(
    runs: Sequence[Run], *, n_boot: int = 200, seed: int = 0, form: str = "saturating",
    max_extrapolation: float = MAX_EXTRAPOLATION, extrapolate: bool = False, law: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """Frontiers per objective; with both, the comparisons (and their bootstrap) and the law's."""
    conventions = {r.convention for r in runs}
    if len(conventions) > 1:
        raise DataError(
            f"the runs count FLOPs by different conventions ({', '.join(sorted(conventions))}): "
            "one sweep, one convention (pretrain --flops-convention)"
        )
    result: dict[str, Any] = {
        "runs": [asdict(r) for r in runs],
        "flops_convention": next(iter(conventions), "paper"),
        "frontier_form": form,
        "frontiers": {},
        "skipped": [],
    }
    fronts: dict[str, Frontier] = {}
    for obj in sorted({r.objective for r in runs}):
        try:
            fronts[obj] = fit_frontier(runs, obj, form)
        except ValueError as e:
            result["skipped"].append(str(e))
            continue
        result["frontiers"][obj] = asdict(fronts[obj])
        result["skipped"] += fronts[obj].skipped
    laws = _laws(runs, result) if law else {}
    if {"mdm", "arm"} <= fronts.keys():
        kw = dict(limit=max_extrapolation, extrapolate=extrapolate)
        budgets = comparison_budgets(fronts["mdm"], fronts["arm"])
        result["comparison"] = [asdict(compare(fronts["mdm"], fronts["arm"], c, **kw))
                                for c in budgets]  # fmt: skip
        result["bootstrap"] = (
            bootstrap(runs, budgets, n_boot=n_boot, seed=seed, form=form, **kw) if n_boot else None
        )
        if {"mdm", "arm"} <= laws.keys():
            result["law_comparison"] = [
                law_compare(laws["mdm"], laws["arm"], c, fronts, **kw) for c in budgets
            ]
    return result


def _laws(runs: Sequence[Run], result: dict[str, Any]) -> dict[str, Law]:
    laws = {}
    for obj in sorted({r.objective for r in runs}):
        try:
            laws[obj] = fit_law(runs, obj)
        except ValueError as e:
            result["skipped"].append(f"law: {e}")
            continue
        result.setdefault("laws", {})[obj] = {
            k: v for k, v in asdict(laws[obj]).items() if k != "per_token"
        }
    return laws


def law_compare(
    mdm: Law, arm: Law, c: float, fronts: dict[str, Frontier], *, limit: float,
    extrapolate: bool,
) -> dict[str, Any]:  # fmt: skip
    """The law's gap and size ratio at ``c``, flagged as the IsoFLOP ones are (the MDM's
    measured budgets bound where its law is read)."""
    n_arm, l_arm = arm.optimum(c)
    c_mdm = mdm.flops_for(l_arm, near=c)
    x = outside(c_mdm, fronts["mdm"].measured) if math.isfinite(c_mdm) else None
    gap = c_mdm / c if x is not None and (x <= limit or extrapolate) else None
    return {"flops": c, "compute_gap": gap, "gap_extrapolation": x,
            "size_ratio": mdm.optimum(c)[0] / n_arm}  # fmt: skip
