"""The ARM baseline objective: next-token cross-entropy on the shared transformer (causal mask)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mdmctl.linear_ce import LossHead, ScoredModel, scored_ce


def _next_token_ce(logits: torch.Tensor, x: torch.Tensor, reduction: str) -> torch.Tensor:
    """Next-token CE over the flattened (B·L, V) logits.

    All L positions are scored with the targets shifted left and the last one ignored, so the
    logits are never sliced (slicing costs a full-size zero-fill and copy in backward), and the
    layout is (N, V) (cross_entropy over a transposed (B, V, L) view is several times slower)."""
    V = logits.shape[-1]
    target = F.pad(x[:, 1:], (0, 1), value=-100)  # (B, L); -100 = ignore_index
    return F.cross_entropy(logits.reshape(-1, V), target.reshape(-1), reduction=reduction)


def arm_loss(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean next-token CE. logits (B, L, V) from x (B, L); position i predicts x[i+1]."""
    return _next_token_ce(logits, x, "sum") / (x.shape[0] * (x.shape[1] - 1))


@torch.no_grad()
def arm_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Exact -log p(x_1..x_{L-1} | x_0) per row (B,), nats."""
    B, L = x.shape
    return _next_token_ce(logits, x, "none").view(B, L)[:, :-1].sum(1)


def arm_sft_nll(logits: torch.Tensor, x: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Sum of -log p over response tokens per row (B,). Position i predicts x[i+1]; it is scored
    when x[i+1] is a response token (the prompt and the eos padding after the first eos are not)."""
    target_is_response = F.pad(response_mask[:, 1:], (0, 1), value=False)  # (B, L)
    target = torch.where(target_is_response, F.pad(x[:, 1:], (0, 1), value=0), -100)
    V = logits.shape[-1]
    ce = F.cross_entropy(logits.reshape(-1, V), target.reshape(-1), reduction="none")
    return ce.view(x.shape).sum(1)


def arm_train_loss(
    model: ScoredModel,
    x: torch.Tensor,
    target_mask: torch.Tensor | None = None,
    head: LossHead = "full",
) -> torch.Tensor:
    """Mean next-token CE over the targets ``target_mask`` (B, L) marks (every one when None):
    position i predicts x[i+1] and is scored when ``target_mask[:, i+1]`` (fine-tuning: the
    response). ``head`` (``linear_ce.py``): ``full`` is ``arm_loss`` / ``arm_sft_nll`` on the
    full logits (the reference); ``scored`` and ``chunked`` run the head only at scored
    positions."""
    if head == "full":
        if target_mask is None:
            return arm_loss(model(x), x)
        return arm_sft_nll(model(x), x, target_mask).sum() / target_mask[:, 1:].sum().clamp(min=1)
    if target_mask is None:
        target_mask = torch.ones_like(x, dtype=torch.bool)
    select = F.pad(target_mask[:, 1:], (0, 1), value=False)  # (B, L)
    targets = x[:, 1:][target_mask[:, 1:]]  # (N,), in select's row-major order
    weights = torch.full(targets.shape, 1.0 / max(targets.numel(), 1), device=x.device)
    return scored_ce(model, x, select, targets, weights, head)
