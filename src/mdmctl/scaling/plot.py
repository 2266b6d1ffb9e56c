"""``scaling fit --plot``: the IsoFLOP curves, each budget labelled, and a panel in the style of the
paper's Figure 2 (the frontier losses L*(C) of both objectives with their fitted curves, the gap
and the size ratio annotated with their intervals)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from mdmctl.errors import ConfigError
from mdmctl.scaling.isoflop import budget_key

COLORS = {"mdm": "tab:blue", "arm": "tab:orange"}


def plot(result: dict[str, Any], path: Path) -> None:
    """A PNG at ``path``. Needs matplotlib (``pip install 'mdmctl[plot]'``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError(
            "--plot needs matplotlib: pip install 'mdmctl[plot]' (the JSON fit is written anyway)"
        ) from None
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    for obj, fr in result["frontiers"].items():
        _isoflop_panel(ax, result["runs"], obj, fr)
        _frontier_panel(ax2, obj, fr)
    ax.set_xscale("log")
    ax.set_xlabel("non-embedding parameters N")
    ax.set_ylabel("validation loss (nats/token; MDM: ELBO bound)")
    ax.set_title("IsoFLOP curves (label: the budget C; star: N*, L*)")
    ax.legend(title="objective", fontsize=8)
    conv = "6·N·D" if result.get("flops_convention", "paper") == "paper" else "full count"
    ax2.set_xscale("log")
    ax2.set_xlabel(f"compute C (FLOPs, {conv})")
    ax2.set_ylabel("compute-optimal loss L*(C)")
    ax2.set_title(f"Frontiers ({result.get('frontier_form', 'saturating')} fit)")
    _annotate(ax2, result)
    ax2.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _isoflop_panel(ax, runs: list[dict], obj: str, fr: dict[str, Any]) -> None:
    color = COLORS.get(obj)
    for i, b in enumerate(fr["budgets"]):
        pts = [r for r in runs if r["objective"] == obj
               and budget_key(r["flops"]) == budget_key(b["flops"])]  # fmt: skip
        ax.scatter([r["n_params"] for r in pts], [r["val_loss"] for r in pts], color=color,
                   s=14, label=obj.upper() if i == 0 else None)  # fmt: skip
        lo, hi = min(r["n_params"] for r in pts), max(r["n_params"] for r in pts)
        xs = [lo * (hi / lo) ** (k / 40) for k in range(41)]
        a, bb, c = b["coef"]
        ys = [a * math.log(x) ** 2 + bb * math.log(x) + c for x in xs]
        ax.plot(xs, ys, color=color, lw=1, alpha=0.7)
        ax.scatter([b["n_opt"]], [b["loss_opt"]], color=color, marker="*", s=80)
        ax.annotate(f"{b['flops']:.2g}", (xs[-1], ys[-1]), fontsize=7, color=color,
                    xytext=(3, 0), textcoords="offset points")  # fmt: skip


def _frontier_panel(ax, obj: str, fr: dict[str, Any]) -> None:
    color = COLORS.get(obj)
    cs = [b["flops"] for b in fr["budgets"]]
    ax.scatter(cs, [b["loss_opt"] for b in fr["budgets"]], color=color)
    lo, hi = min(cs) / 4, max(cs) * 16  # the fitted curve, extended past the budgets
    grid = [lo * (hi / lo) ** (k / 60) for k in range(61)]
    loss = [fr["irreducible"] + math.exp(fr["loss_log_coef"] + fr["loss_exp"] * math.log(c))
            for c in grid]  # fmt: skip
    label = f"{obj.upper()}: N* ∝ C^{fr['n_exp']:.2f}"
    ax.plot(grid, loss, color=color, lw=1.2, label=label)


def _annotate(ax, result: dict[str, Any]) -> None:
    rows = result.get("comparison") or []
    boot = {a["flops"]: a for a in (result.get("bootstrap") or {}).get("at", [])}
    lines = []
    for c in rows:
        if c["compute_gap"] is None and c["size_ratio"] is None:
            continue
        text = f"C={c['flops']:.2g}:"
        b = boot.get(c["flops"], {})
        for key, name in (("compute_gap", "gap"), ("size_ratio", "N* ratio")):
            if c[key] is not None:
                iv = b.get(key)
                text += f" {name} {c[key]:.3g}" + (f" [{iv[0]:.3g}, {iv[2]:.3g}]" if iv else "")
        lines.append(text)
    if lines:
        ax.text(0.98, 0.84, "MDM vs ARM (95% interval)\n" + "\n".join(lines),
                transform=ax.transAxes, fontsize=7, va="top", ha="right",
                bbox={"facecolor": "white", "alpha": 0.8, "lw": 0})  # fmt: skip
