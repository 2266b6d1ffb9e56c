"""The second estimator (Chinchilla's third approach, Hoffmann et al. 2022): one law
L(N, D) = E + A/N^α + B/D^β per objective, fitted to all of its runs at once, with a Huber loss
on ln L (δ = 1e-3: a few outlying runs do not pull it) by L-BFGS from the best points of a grid
of exponents (``starts``). Its compute-optimal frontier minimises L over N at fixed C, with
D = C / (FLOPs per token of N), so the gap and the size ratio follow without a parabola per
budget.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mdmctl.scaling.isoflop import Run

HUBER_DELTA = 1e-3


@dataclass
class Law:
    objective: str
    E: float
    A: float
    alpha: float
    B: float
    beta: float
    n_runs: int
    per_token: list[tuple[float, float]]
    """(ln N, ln FLOPs per token / N) of the runs, sorted: D = C / per-token FLOPs at any N."""

    def loss(self, n: float, d: float) -> float:
        return self.E + self.A / n**self.alpha + self.B / d**self.beta

    def flops_per_token(self, n: float) -> float:
        xs, ys = zip(*self.per_token, strict=True)
        return n * math.exp(float(np.interp(math.log(n), xs, ys)))

    def optimum(self, c: float) -> tuple[float, float]:
        """(N*, L*) at compute ``c``: a grid over ln N, refined by a parabola through the best
        three points."""
        lo, hi = self.per_token[0][0] - 5.0, self.per_token[-1][0] + 5.0
        xs = np.linspace(lo, hi, 801)
        ls = [self.loss(math.exp(x), c / self.flops_per_token(math.exp(x))) for x in xs]
        k = int(np.clip(np.argmin(ls), 1, len(xs) - 2))
        x1, (y0, y1, y2) = xs[k], ls[k - 1 : k + 2]
        den = y0 - 2 * y1 + y2
        x = x1 + 0.5 * (xs[1] - xs[0]) * (y0 - y2) / den if den > 0 else x1
        n = math.exp(x)
        return n, self.loss(n, c / self.flops_per_token(n))

    def flops_for(self, loss: float, near: float) -> float:
        """The compute at which the frontier reaches ``loss`` (bisection in ln C around
        ``near``); inf where it never does."""
        if loss <= self.E:
            return math.inf
        lo, hi = math.log(near) - 12.0, math.log(near) + 16.0
        if self.optimum(math.exp(hi))[1] > loss:
            return math.inf
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if self.optimum(math.exp(mid))[1] > loss else (lo, mid)
        return math.exp(0.5 * (lo + hi))


def starts(ln_n: np.ndarray, ln_d: np.ndarray, ln_l: np.ndarray, k: int = 3) -> list[list[float]]:
    """The ``k`` best starting points (ln E, ln A, ln B, α, β): for fixed exponents the law is
    linear in (E, A, B), so a grid of α and β with a least-squares solve each (one batched call)
    finds the basin that Hoffmann et al.'s grid of L-BFGS starts searches for, at a fraction of
    the cost."""
    grid = np.linspace(0.05, 1.5, 30)
    alpha, beta = (g.ravel() for g in np.meshgrid(grid, grid))  # (G,)
    x = np.stack([np.ones((len(alpha), len(ln_n))), np.exp(-alpha[:, None] * ln_n[None, :]),
                  np.exp(-beta[:, None] * ln_d[None, :])], axis=2)  # (G, runs, 3)  # fmt: skip
    y = np.exp(ln_l)
    xtx = np.einsum("gri,grj->gij", x, x) + 1e-12 * np.eye(3)
    coef = np.linalg.solve(xtx, np.einsum("gri,r->gi", x, y)[..., None])[..., 0]  # (G, 3)
    coef = np.clip(coef, 1e-6, None)  # E, A, B > 0: the law's terms are losses
    pred = np.einsum("gri,gi->gr", x, coef)
    sse = ((np.log(pred) - ln_l[None, :]) ** 2).sum(1)
    best = np.argsort(sse)[:k]
    return [[*np.log(coef[g]).tolist(), float(alpha[g]), float(beta[g])] for g in best]


def fit_law(runs: Sequence[Run], objective: str) -> Law:
    """ValueError when the objective has fewer runs than the law's five parameters (or no
    training tokens recorded)."""
    import torch

    rs = [r for r in runs if r.objective == objective and r.tokens > 0]
    if len(rs) < 6:
        raise ValueError(f"{objective}: {len(rs)} runs with tokens; the L(N, D) law needs 6")
    dt = torch.float64
    ln_n = torch.tensor([math.log(r.n_params) for r in rs], dtype=dt)
    ln_d = torch.tensor([math.log(r.tokens) for r in rs], dtype=dt)
    ln_l = torch.tensor([math.log(r.val_loss) for r in rs], dtype=dt)

    def objective_fn(p: torch.Tensor) -> torch.Tensor:
        e, a, b, alpha, beta = p
        pred = torch.logsumexp(torch.stack([e.expand_as(ln_n), a - alpha * ln_n,
                                            b - beta * ln_d]), dim=0)  # fmt: skip
        return torch.nn.functional.huber_loss(pred, ln_l, delta=HUBER_DELTA, reduction="sum")

    best = (math.inf, None)
    for start in starts(ln_n.numpy(), ln_d.numpy(), ln_l.numpy()):
        p = torch.tensor(start, dtype=dt, requires_grad=True)
        opt = torch.optim.LBFGS([p], lr=1.0, max_iter=500, tolerance_grad=1e-12,
                                tolerance_change=1e-15, line_search_fn="strong_wolfe")  # fmt: skip

        def closure(p=p, opt=opt) -> torch.Tensor:
            opt.zero_grad()
            loss = objective_fn(p)
            loss.backward()
            return loss

        opt.step(closure)
        q = p.detach()
        v = float(objective_fn(q))
        if math.isfinite(v) and v < best[0] and 0 < float(q[3]) < 3 and 0 < float(q[4]) < 3:
            best = (v, q.tolist())
    if best[1] is None:
        raise ValueError(f"{objective}: the L(N, D) law did not converge")
    e, a, b, alpha, beta = best[1]
    per_token = sorted({(math.log(r.n_params), math.log(r.flops / r.tokens / r.n_params))
                        for r in rs})  # fmt: skip
    return Law(objective, math.exp(e), math.exp(a), alpha, math.exp(b), beta, len(rs), per_token)
