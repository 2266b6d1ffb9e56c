"""Cross-entropy through the output head, only where the loss scores and never over all logits.

The training losses are weighted sums of per-position cross-entropies, Σ_i w_i · CE(h_i W^T, y_i),
where the MDM scores only its masked positions and the ARM its next-token targets. Three ways to
compute them (``TrainConfig.loss_head``, docs/method.md §3):

- ``full``: the head and the CE at every position, (B, L, V) fp32 logits kept for backward; the
  reference, byte-identical to mdmctl before these paths existed.
- ``scored``: the head only at the scored positions, (N, V) logits.
- ``chunked``: ``scored`` with the head's matmul and the CE fused over chunks of rows
  (``linear_cross_entropy``): each chunk's gradients are formed in the forward pass while its
  logits are at hand, so at most one chunk of logits exists and nothing of size V is kept for
  backward. The same loss and gradients as ``scored`` up to floating-point summation order.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from mdmctl.config import LossHead

CHUNK_LOGITS = 2**22
"""Logits per chunk (16 MiB in fp32)..."""
MIN_CHUNK_ROWS = 256
"""...but never fewer rows than this: below it the head's matmul runs far under the machine's
rate (CPU, vocabulary 32,000: 8 rows 0.26x, 32 rows 0.66x, 256 rows 1.27x the unchunked speed;
``benchmarks/train_profile.py --chunks``, docs/benchmarks.md)."""


def chunk_rows(vocab_size: int) -> int:
    """Rows per chunk: about ``CHUNK_LOGITS`` logits, at least ``MIN_CHUNK_ROWS`` rows."""
    return max(MIN_CHUNK_ROWS, CHUNK_LOGITS // vocab_size)


class _LinearCrossEntropy(torch.autograd.Function):
    """Σ_i w_i · CE(h_i W^T, y_i); gradients are computed in forward (the loss is linear in w and
    the upstream gradient is a scalar), so backward only scales them."""

    @staticmethod
    def forward(ctx, h, weight, targets, row_weights, banned, rows):
        # h (N, D), weight (V, D), targets (N,) long, row_weights (N,) fp32
        ctx.weight_dtype = weight.dtype
        grad_h = torch.zeros_like(h) if ctx.needs_input_grad[0] else None
        grad_w = (
            torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            if ctx.needs_input_grad[1]
            else None
        )
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        for s in range(0, h.shape[0], rows):
            hc, y, w = h[s : s + rows], targets[s : s + rows], row_weights[s : s + rows]
            logits = (hc @ weight.t()).float()  # (n, V); bf16 matmul under CUDA autocast
            if banned is not None:
                logits[:, banned] = float("-inf")
            lse = torch.logsumexp(logits, dim=-1)  # (n,)
            ce = lse - logits.gather(1, y[:, None]).squeeze(1)  # (n,)
            total += (ce * w).sum()
            if grad_h is None and grad_w is None:
                continue
            # dCE/dlogits = softmax - onehot, scaled by the row's weight; in place over the logits.
            d = logits.sub_(lse[:, None]).exp_()
            d[torch.arange(len(y), device=d.device), y] -= 1.0
            if banned is not None:  # a constant column: no gradient, even for a banned target
                d[:, banned] = 0.0
            d.mul_(w[:, None])  # (n, V)
            if grad_h is not None:
                grad_h[s : s + rows] = d @ weight.to(d.dtype)  # (n, D)
            if grad_w is not None:
                grad_w += d.t() @ hc.to(d.dtype)  # (V, D)
        ctx.save_for_backward(grad_h, grad_w)
        return total

    @staticmethod
    def backward(ctx, g):
        grad_h, grad_w = ctx.saved_tensors
        gh = grad_h * g if grad_h is not None else None
        gw = (grad_w * g).to(ctx.weight_dtype) if grad_w is not None else None
        return gh, gw, None, None, None, None


def linear_cross_entropy(
    h: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    row_weights: torch.Tensor,
    *,
    banned: int | None = None,
    rows: int | None = None,
) -> torch.Tensor:
    """Σ_i row_weights_i · -log softmax(h_i W^T)[targets_i], a scalar, in chunks of ``rows``.

    h (N, D), weight (V, D) (the head's), targets (N,), row_weights (N,). ``banned``: a column
    forced to -inf (the MDM's mask id, which the head never predicts)."""
    rows = rows or chunk_rows(weight.shape[0])
    return _LinearCrossEntropy.apply(h, weight, targets, row_weights.float(), banned, rows)


ScoredModel = Callable[..., torch.Tensor]
"""The model as the losses call it: ``model(x)`` -> logits (B, L, V); ``model(x, select=...)``
-> (N, V); ``model(x, select=..., targets=..., weights=...)`` -> the weighted CE sum."""


def scored_ce(
    model: ScoredModel,
    x: torch.Tensor,
    select: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor,
    head: LossHead,
) -> torch.Tensor:
    """Σ weights · CE of ``targets`` at the ``select``ed positions of input x (B, L), the head run
    only there. select (B, L) bool; targets, weights (N,) in row-major order of select."""
    if head == "chunked":
        return model(x, select=select, targets=targets, weights=weights)
    logits = model(x, select=select)  # (N, V)
    return (F.cross_entropy(logits, targets, reduction="none") * weights).sum()
