"""IsoFLOP scaling laws (docs/method.md §1: the paper's first result): plan a sweep, fit it.

- ``planning``: the runs of a sweep (budgets, sizes, the FLOPs convention) as a resumable script.
- ``runs``: the finished runs, as the fits read them.
- ``isoflop``: a parabola per budget and a frontier per objective (the paper's approach).
- ``law``: L(N, D) = E + A/N^α + B/D^β per objective (Chinchilla's third approach).
- ``compare``: the compute gap and the size ratio where they are measured, and their bootstrap.
- ``fit``: both estimators side by side; ``plot``: the figure.
"""

from mdmctl.scaling.compare import MAX_EXTRAPOLATION, Comparison, bootstrap, compare
from mdmctl.scaling.fit import fit
from mdmctl.scaling.isoflop import (
    FRONTIER_FORMS,
    BudgetFit,
    Frontier,
    Run,
    fit_budget,
    fit_frontier,
)
from mdmctl.scaling.law import Law, fit_law
from mdmctl.scaling.planning import PlannedRun, SweepShape, count, plan, shape_of, sweep_script
from mdmctl.scaling.plot import plot
from mdmctl.scaling.runs import read_run, read_runs

__all__ = [
    "FRONTIER_FORMS", "MAX_EXTRAPOLATION", "BudgetFit", "Comparison", "Frontier", "Law",
    "PlannedRun", "Run", "SweepShape", "bootstrap", "compare", "count", "fit", "fit_budget",
    "fit_frontier", "fit_law", "plan", "plot", "read_run", "read_runs", "shape_of",
    "sweep_script",
]  # fmt: skip
