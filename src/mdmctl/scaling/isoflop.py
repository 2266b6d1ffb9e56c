"""IsoFLOP estimates (docs/method.md §1, the paper's approach): a parabola in ln N per budget, its
vertex the compute-optimal size N*(C) and loss L*(C); across budgets a frontier.

Frontier forms (``form``): N*(C) = n0·C^a always; L*(C) either ``saturating``, E + K·C^(-b) (the
default: a loss with an irreducible part, which the Chinchilla law L = E + A/N^α + B/D^β gives
exactly along its compute-optimal path), or ``power``, l0·C^b (the paper's and SMDM's fit, which
cannot follow an irreducible loss and bends the gap when it is read far from the measured
budgets). Pure Python and numpy: a fit of a hundred runs takes milliseconds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np

from mdmctl.errors import ConfigError

FrontierForm = Literal["saturating", "power"]
FRONTIER_FORMS: tuple[str, ...] = get_args(FrontierForm)
LOG_MAX = 700.0  # exp() of more overflows a float: such a value is infinite here


@dataclass(frozen=True)
class Run:
    """One finished pretraining run: what the fits need."""

    path: str
    objective: str
    n_params: int
    """Non-embedding parameters N."""
    flops: float
    """The run's budget C, in its convention (``TrainConfig.flops_convention``)."""
    val_loss: float
    tokens: float = 0.0
    """Training tokens D (steps · batch · context); 0 when unknown."""
    convention: str = "paper"
    """How ``flops`` counts compute (``TrainConfig.flops_convention``)."""


@dataclass
class BudgetFit:
    flops: float
    n_runs: int
    coef: tuple[float, float, float]
    """L = a·x² + b·x + c with x = ln N."""
    n_opt: float
    loss_opt: float


def lstsq(xs: list[list[float]], ys: list[float]) -> list[float]:
    """Least squares by the normal equations (2-3 unknowns, well conditioned after centring)."""
    k = len(xs[0])
    a = [[sum(r[i] * r[j] for r in xs) for j in range(k)] for i in range(k)]
    b = [sum(r[i] * y for r, y in zip(xs, ys, strict=True)) for i in range(k)]
    return lstsq_solve(a, b)


def lstsq_solve(a: list[list[float]], b: list[float]) -> list[float]:
    """x with a·x = b for a small square system: Gauss-Jordan with partial pivoting."""
    a, b, k = [row[:] for row in a], b[:], len(b)
    for i in range(k):
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
    """The IsoFLOP parabola of one budget; ValueError (the reason) without a minimum inside the
    sizes tried."""
    if len({r.n_params for r in runs}) < 3:
        raise ValueError(f"{len({r.n_params for r in runs})} model sizes (a parabola needs 3)")
    x0 = sum(math.log(r.n_params) for r in runs) / len(runs)  # centre: conditioning
    xs = [[(math.log(r.n_params) - x0) ** 2, math.log(r.n_params) - x0, 1.0] for r in runs]
    a, b, c = lstsq(xs, [r.val_loss for r in runs])
    if a <= 0:
        raise ValueError("the losses do not curve upwards (no minimum)")
    v = -b / (2 * a)
    lo, hi = min(r.n_params for r in runs), max(r.n_params for r in runs)
    if not math.log(lo) <= x0 + v <= math.log(hi):
        # An extrapolated vertex is a guess about sizes nobody trained: bracket the minimum.
        n = math.exp(min(x0 + v, LOG_MAX))
        raise ValueError(
            f"the minimum (N = {n:.3g}) lies outside the sizes tried ({lo:.3g}-{hi:.3g}); "
            "add sizes on that side"
        )
    # Back to uncentred ln N: a(x - x0)² + b(x - x0) + c.
    coef = (a, b - 2 * a * x0, a * x0 * x0 - b * x0 + c)
    return BudgetFit(runs[0].flops, len(runs), coef, math.exp(x0 + v), c - b * b / (4 * a))


@dataclass
class Frontier:
    """One objective's compute-optimal frontier over its budgets."""

    objective: str
    form: str
    budgets: list[BudgetFit]
    n_exp: float
    """a in N*(C) = n0·C^a."""
    n_log_coef: float
    loss_exp: float
    """-b in L*(C) = E + K·C^(-b) (saturating), or b in l0·C^b (power)."""
    loss_log_coef: float
    """ln K, or ln l0."""
    irreducible: float = 0.0
    """E (0 for the power form)."""
    skipped: list[str] = field(default_factory=list)

    @property
    def measured(self) -> tuple[float, float]:
        """The smallest and largest budget fitted."""
        return self.budgets[0].flops, self.budgets[-1].flops

    def n_opt(self, c: float) -> float:
        return math.exp(min(self.n_log_coef + self.n_exp * math.log(c), LOG_MAX))

    def loss_opt(self, c: float) -> float:
        return self.irreducible + math.exp(
            min(self.loss_log_coef + self.loss_exp * math.log(c), LOG_MAX)
        )

    def flops_for(self, loss: float) -> float:
        """The compute at which this frontier reaches ``loss``; inf where it never does."""
        if loss <= self.irreducible:
            return math.inf
        x = (math.log(loss - self.irreducible) - self.loss_log_coef) / self.loss_exp
        return math.exp(x) if x < LOG_MAX else math.inf


def group_by_budget(runs: Sequence[Run], objective: str) -> dict[float, list[Run]]:
    by_c: dict[float, list[Run]] = {}
    for r in runs:
        if r.objective == objective:
            by_c.setdefault(budget_key(r.flops), []).append(r)
    return dict(sorted(by_c.items()))


def fit_frontier(runs: Sequence[Run], objective: str, form: str = "saturating") -> Frontier:
    """ValueError naming every budget that could not be fitted and why, when too few are left."""
    if form not in FRONTIER_FORMS:
        raise ConfigError(f"--frontier: expected one of {', '.join(FRONTIER_FORMS)}, got {form!r}")
    fits, skipped = [], []
    for c, group in group_by_budget(runs, objective).items():
        try:
            fits.append(fit_budget(group))
        except ValueError as e:
            skipped.append(f"{objective} C={c:.3g}: {e}")
    need = 3 if form == "saturating" else 2
    if len(fits) < need:
        why = f" ({'; '.join(skipped)})" if skipped else ""
        raise ValueError(
            f"{objective}: {len(fits)} budgets with an IsoFLOP minimum, the {form} frontier needs "
            f"{need}{' (--frontier power fits 2)' if form == 'saturating' else ''}{why}"
        )
    cs = [f.flops for f in fits]
    n_exp, n0 = lstsq([[math.log(c), 1.0] for c in cs], [math.log(f.n_opt) for f in fits])
    losses = [f.loss_opt for f in fits]
    if form == "power":
        l_exp, l0 = lstsq([[math.log(c), 1.0] for c in cs], [math.log(v) for v in losses])
        e = 0.0
    else:
        e, l0, l_exp = fit_saturating(cs, losses)
    if l_exp >= 0:
        raise ValueError(f"{objective}: L* does not fall with C (exponent {l_exp:.3g})")
    return Frontier(objective, form, fits, n_exp, n0, l_exp, l0, e, skipped)


def fit_saturating(cs: Sequence[float], losses: Sequence[float]) -> tuple[float, float, float]:
    """(E, ln K, -b) of L = E + K·C^(-b), least squares in ln L: for each E on a grid below the
    smallest loss the rest is a line in ln C, so the search is one vectorised pass, refined once
    around the best E."""
    x, y = np.log(np.asarray(cs)), np.asarray(losses, dtype=np.float64)
    lo, hi = 0.0, float(y.min()) * (1 - 1e-9)
    best = (math.inf, 0.0, 0.0, 0.0)
    for _ in range(3):  # a coarse grid, then twice a finer one around the best E
        grid = np.linspace(lo, hi, 257)
        z = np.log(y[None, :] - grid[:, None])  # (E, budgets)
        xc = x - x.mean()
        slope = (z - z.mean(1, keepdims=True)) @ xc / (xc @ xc)
        icpt = z.mean(1) - slope * x.mean()
        pred = grid[:, None] + np.exp(icpt[:, None] + slope[:, None] * x[None, :])
        sse = ((np.log(pred) - np.log(y)[None, :]) ** 2).sum(1)
        k = int(np.argmin(sse))
        if sse[k] < best[0]:
            best = (float(sse[k]), float(grid[k]), float(icpt[k]), float(slope[k]))
        step = (hi - lo) / 256
        lo, hi = max(0.0, grid[k] - step), min(hi, grid[k] + step)
    return best[1], best[2], best[3]


def budget_key(c: float) -> float:
    """Budgets equal to 4 significant digits are one curve (steps are rounded down)."""
    return float(f"{c:.4g}")
