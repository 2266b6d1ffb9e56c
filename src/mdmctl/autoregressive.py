"""The ARM baseline objective: next-token cross-entropy on the shared transformer (causal mask)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def arm_loss(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean next-token CE. logits (B, L, V) from x (B, L); position i predicts x[i+1]."""
    return F.cross_entropy(logits[:, :-1].transpose(1, 2), x[:, 1:])


@torch.no_grad()
def arm_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Exact -log p(x_1..x_{L-1} | x_0) per row (B,), nats."""
    return F.cross_entropy(logits[:, :-1].transpose(1, 2), x[:, 1:], reduction="none").sum(1)
