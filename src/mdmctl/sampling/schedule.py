"""How many masked tokens a step of the confidence sampler reveals (docs/method.md §5.1).

Each rule is a reference's, exactly (``Decoding.schedule``; 10 tokens in 4 steps as the example):

- ``smdm``, SMDM's ``diff_sample`` (``alg='greddy'``, its GSM8K and reverse-curse evaluation):
  the grid is ``torch.linspace(1, 1e-5, steps + 1)`` in float32; step k (t -> s) reveals
  ``int(n * (1 - s/t))`` of the n tokens still masked (a float32 product, truncated) and the last
  step all that remain: 2, 2, 2, 4. SMDM counts n over its whole batch and picks the top tokens
  of all rows together, which makes a row depend on its neighbours; here n is per row, which is
  SMDM's at batch 1.
- ``llada``, LLaDA's ``get_num_transfer_tokens``: a block's n tokens over its k steps, n // k
  per step and one more in the first n % k: 3, 3, 2, 2.
- ``dream``, Dream's ``diffusion_generate`` (every ``alg`` but ``origin``): SMDM's rule on the
  grid ``torch.linspace(1, 1e-3, steps + 1)`` (its ``eps``); Dream also averages n over its
  batch, which is the per-row count at batch 1.
- ``rounded``: after step k, round(n · s) of the block's n tokens stay masked, on the grid from
  1 to 0 (half to even, as Python's round): 2, 3, 3, 2. mdmctl's rule before the others.
"""

from __future__ import annotations

from functools import cache

import torch

from mdmctl.sampling.decoding import Schedule

SMDM_EPS = 1e-5
"""The end of SMDM's time grid (``diff_sample``'s ``eps``): it never reaches t = 0."""
GRID_EPS = {"smdm": SMDM_EPS, "dream": 1e-3}
"""The end of each rule's grid (Dream's ``DreamGenerationConfig.eps``)."""


def reveal_counts(
    schedule: Schedule, k: int, masked: torch.Tensor, size: torch.Tensor, steps: torch.Tensor
) -> torch.Tensor:
    """(B,) tokens to reveal at step ``k`` of a block. ``masked`` (B,): the block's tokens still
    masked; ``size`` (B,): its length; ``steps`` (B,): its steps (0 for a row without this block).
    A row's last step (and any past it) reveals everything left."""
    if schedule == "llada":
        n = steps.clamp(min=1)
        plan = size // n + (k < size % n).long()
    elif schedule in GRID_EPS:
        fraction = smdm_fraction(k, steps, GRID_EPS[schedule])
        plan = (masked.float() * fraction).long()  # int(): truncation, as SMDM and Dream
    else:
        plan = masked - (size * linear_times(k, steps)[1]).round().long()
    return torch.where(k >= steps - 1, masked, plan).clamp(min=0)


def linear_times(k: int, steps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Step ``k``'s (t, s) per row (B,), t -> s on the grid from 1 to 0 in ``steps`` (B,) steps
    (float64, as Python's floats were); s = 0 for a row without a step ``k``."""
    n = steps.clamp(min=1).double()
    k = torch.full_like(n, k)  # tensor / tensor: ``k / n`` would multiply by 1 / n and round twice
    return (1.0 - k / n).clamp(min=0.0), (1.0 - (k + 1) / n).clamp(min=0.0)


def smdm_fraction(k: int, steps: torch.Tensor, eps: float = SMDM_EPS) -> torch.Tensor:
    """(B,) float32 1 - s/t of SMDM's step ``k`` (on the grid ending at ``eps``) for each row's
    step count (0 past a row's steps)."""
    out = torch.zeros(steps.shape, dtype=torch.float32)
    cpu = steps.cpu()
    for n in cpu.unique().tolist():
        if k < n:
            grid = smdm_grid(int(n), eps)
            out[cpu == n] = 1 - grid[k + 1] / grid[k]
    return out.to(steps.device)


@cache
def smdm_grid(steps: int, eps: float = SMDM_EPS) -> torch.Tensor:
    """SMDM's time grid: ``steps + 1`` float32 points from 1 down to ``eps``."""
    return torch.linspace(1, eps, steps + 1, dtype=torch.float32)
