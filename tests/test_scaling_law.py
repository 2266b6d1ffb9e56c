"""The scaling estimators against sweeps drawn from a known Chinchilla law (issue 29): the gap and
size ratio recovered without noise, intervals that cover at 1% loss noise, and the failures
named."""

from __future__ import annotations

import json
import math
import random

import pytest

from mdmctl.scaling import Run, compare, fit, fit_frontier

# The ARM follows Hoffmann et al.'s fitted law; the MDM is the ARM with N counted 1.75x and D
# 16/1.75x too large, so at every C it needs exactly 16x the compute, and its optimal size is
# 1.75 · 16^(-β/(α+β)) = 0.500 of the ARM's.
E, A, ALPHA, B, BETA = 1.69, 406.4, 0.34, 410.7, 0.28
S_N, GAP = 1.75, 16.0
RATIO = S_N * GAP ** (-BETA / (ALPHA + BETA))
ARM_BUDGETS = (1e18, 3e18, 1e19, 3e19)
MDM_BUDGETS = (1e18, 3e18, 1e19, 3e19, 1e20, 3e20)


def true_loss(objective: str, n: float, d: float) -> float:
    if objective == "mdm":
        n, d = n / S_N, d / (GAP / S_N)
    return E + A / n**ALPHA + B / d**BETA


def true_n_opt(objective: str, c: float) -> float:
    g = (ALPHA * A / (BETA * B)) ** (1 / (ALPHA + BETA))
    n_arm = lambda c: g * (c / 6) ** (BETA / (ALPHA + BETA))  # noqa: E731
    return S_N * n_arm(c / GAP) if objective == "mdm" else n_arm(c)


def sweep(noise: float = 0.0, seed: int = 0, sizes: int = 7) -> list[Run]:
    """Each budget: ``sizes`` models 2^k apart around the true optimum, each trained on
    D = C / (6N) tokens, its loss times (1 + noise · a standard normal)."""
    rng = random.Random(seed)
    runs = []
    for obj, budgets in (("mdm", MDM_BUDGETS), ("arm", ARM_BUDGETS)):
        for c in budgets:
            for k in range(sizes):
                n = true_n_opt(obj, c) * 2 ** (k - (sizes - 1) / 2)
                d = c / (6 * n)
                loss = true_loss(obj, n, d) * (1 + noise * rng.gauss(0, 1))
                runs.append(Run(f"{obj}-{c:.0e}-{k}", obj, round(n), c, loss, d))
    return runs


def test_noiseless_sweep_gives_the_true_gap_and_ratio():
    res = fit(sweep(), n_boot=0, law=True)
    for row in res["comparison"]:
        assert row["compute_gap"] == pytest.approx(GAP, rel=0.05), row
        if row["size_ratio"] is not None:
            assert row["size_ratio"] == pytest.approx(RATIO, rel=0.05), row
    for row in res["law_comparison"]:
        assert row["compute_gap"] == pytest.approx(GAP, rel=0.01), row
        assert row["size_ratio"] == pytest.approx(RATIO, rel=0.01), row
    law = res["laws"]["arm"]
    assert (law["E"], law["alpha"], law["beta"]) == pytest.approx((E, ALPHA, BETA), rel=0.02)


def test_the_papers_power_law_frontier_is_biased_where_the_saturating_one_is_not():
    """A pure power law L* = l0·C^b cannot follow the irreducible loss: on the same noiseless
    sweep it misreads the gap by more than 5% somewhere (the old fit: -47% at 1e20)."""
    runs = sweep()
    power = [compare(fit_frontier(runs, "mdm", "power"), fit_frontier(runs, "arm", "power"), c)
             for c in ARM_BUDGETS]  # fmt: skip
    assert max(abs(p.compute_gap / GAP - 1) for p in power if p.compute_gap) > 0.05


def test_extrapolation_is_marked_and_refused_past_the_limit():
    runs = [r for r in sweep() if r.objective == "arm" or r.flops <= 3e19]
    res = fit(runs, n_boot=0, law=False)
    far = res["comparison"][-1]  # the ARM's 3e19 needs the MDM at 4.8e20, 16x past 3e19
    assert far["compute_gap"] is None and far["gap_extrapolation"] > 10
    assert "--extrapolate" in far["note"]
    near = res["comparison"][0]  # 1e18 -> 1.6e19, inside the MDM's budgets
    assert near["gap_extrapolation"] == 1.0 and near["compute_gap"] == pytest.approx(GAP, rel=0.05)
    anyway = fit(runs, n_boot=0, law=False, extrapolate=True)["comparison"][-1]
    assert anyway["compute_gap"] is not None


@pytest.mark.slow  # 300 sweeps x 200 bootstrap draws: about 70 s on 2 cores
def test_bootstrap_intervals_cover_the_truth_at_1_percent_noise():
    """300 seeded sweeps at 1% loss noise, the default 200 draws: the 95% interval contains the
    true gap and the true size ratio in at least 90% of the sweeps at every ARM budget. 300, not
    100: a rate near 93% measured on 100 sweeps has a binomial standard error of 2.6 points, so
    100 sweeps cannot tell 88% from 93% (the first 100 seeds gave the ratio 88% at 3e19, the next
    200 gave 94%)."""
    hits: dict[tuple[str, float], list[bool]] = {}
    for seed in range(300):
        res = fit(sweep(noise=0.01, seed=seed), n_boot=200, seed=seed, law=False)
        for at in res["bootstrap"]["at"]:
            for key, truth in (("compute_gap", GAP), ("size_ratio", RATIO)):
                if at[key] is not None:
                    hits.setdefault((key, at["flops"]), []).append(
                        at[key][0] <= truth <= at[key][2]
                    )
    rates = {k: sum(v) / len(v) for k, v in hits.items()}
    print("coverage:", {f"{key} {c:.0e}": round(r, 3) for (key, c), r in rates.items()})
    assert len(rates) == 8 and all(len(v) == 300 for v in hits.values()), rates
    assert all(r >= 0.90 for r in rates.values()), rates


def test_a_flat_frontier_gets_no_gap_and_no_traceback():
    runs = sweep()
    flat = [r if r.objective == "arm" else Run(r.path, r.objective, r.n_params, r.flops,
            3.0 + 0.05 * (math.log(r.n_params) - math.log(true_n_opt("mdm", r.flops))) ** 2,
            r.tokens) for r in runs]  # fmt: skip
    res = fit(flat, n_boot=20, law=False)
    assert "mdm" not in res["frontiers"] and "comparison" not in res
    assert any("does not fall with C" in s for s in res["skipped"])
    assert json.loads(json.dumps(res, allow_nan=False))  # strict JSON: no NaN or inf


def test_too_few_budgets_names_each_budgets_reason():
    runs = [r for r in sweep(sizes=2) if r.objective == "arm"]
    with pytest.raises(ValueError, match=r"C=1e\+18: 2 model sizes \(a parabola needs 3\)"):
        fit_frontier(runs, "arm")
