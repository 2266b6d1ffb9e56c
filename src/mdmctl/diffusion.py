"""Masked diffusion: forward masking, the MDM training loss and the ELBO (docs/method.md §3-4).

Forward process: each token of x0 is independently replaced by ``mask_id`` with probability t
(linear schedule, alpha_t = 1 - t). The loss, an upper bound on -log p(x0), is

    L = E_t [ (1/t) · Σ_{i masked} -log p_θ(x0_i | xt) ]

As in SMDM: per sequence t ~ U(0, 1), p = (1 - eps)·t + eps, mask with probability p, weight 1/p,
normalised by batch·length. All functions take an explicit ``torch.Generator``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from mdmctl.linear_ce import LossHead, ScoredModel, scored_ce

Logits = Callable[[torch.Tensor], torch.Tensor]  # xt (B, L) -> logits (B, L, V)


def forward_mask(
    x0: torch.Tensor, p: torch.Tensor, mask_id: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask each token independently with probability p. x0 (B, L), p (B,) -> (xt, masked)."""
    u = torch.rand(x0.shape, generator=generator, device=generator.device).to(x0.device)
    masked = u < p[:, None].to(x0.device)  # (B, L)
    xt = torch.where(masked, torch.full_like(x0, mask_id), x0)
    return xt, masked


def masked_ce_sum(logits: torch.Tensor, x0: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """Per-row sum of -log p(x0_i | xt) over masked positions. logits (B, L, V) -> (B,)."""
    B, L, V = logits.shape
    # Flattened (N, V) layout: much faster than cross_entropy over a transposed (B, V, L) view.
    ce = F.cross_entropy(logits.reshape(-1, V), x0.reshape(-1), reduction="none").view(B, L)
    # where, not multiply: an unmasked position can carry an inf CE (e.g. a literal mask id in
    # the data), and inf * 0 is nan.
    return torch.where(masked, ce, 0.0).sum(dim=1)


def masked_loss(
    model: ScoredModel,
    xt: torch.Tensor,
    x0: torch.Tensor,
    masked: torch.Tensor,
    p: torch.Tensor,
    denom: torch.Tensor | int,
    head: LossHead = "full",
) -> torch.Tensor:
    """Σ_b (Σ_{i masked in row b} -log p(x0_i | xt)) / p_b, divided by ``denom``: the training
    losses' common tail. ``head`` (``linear_ce.py``): ``full`` scores every position and keeps
    the masked ones (the reference); ``scored`` and ``chunked`` run the head only where masked."""
    if head == "full":
        return (masked_ce_sum(model(xt), x0, masked) / p).sum() / denom
    weights = (1.0 / (p * denom))[:, None].expand_as(masked)[masked]  # (N,) each row's 1/(p·denom)
    return scored_ce(model, xt, masked, x0[masked], weights, head)


def mdm_loss(
    model: ScoredModel,
    x0: torch.Tensor,
    mask_id: int,
    generator: torch.Generator,
    eps: float = 1e-3,
    head: LossHead = "full",
) -> torch.Tensor:
    """SMDM's pretraining loss: Σ_b Σ_masked CE / p_b, divided by B·L. x0 (B, L) -> scalar.

    ``model``: a logits function for ``head="full"``; the other heads pass it ``select=``
    (``masked_loss``)."""
    B, L = x0.shape
    t = torch.rand(B, generator=generator, device=generator.device).to(x0.device)
    p = (1 - eps) * t + eps  # (B,)
    xt, masked = forward_mask(x0, p, mask_id, generator)
    return masked_loss(model, xt, x0, masked, p, B * L, head)


def stratified_t(n: int, generator: torch.Generator, eps: float = 1e-3) -> torch.Tensor:
    """n stratified times t_i = (u + i/n) mod 1, mapped to [eps, 1]: one draw in each 1/n bin."""
    u = torch.rand(1, generator=generator, device=generator.device).item()
    t = (u + torch.arange(n, dtype=torch.float64) / n) % 1.0
    return ((1 - eps) * t + eps).float()


@torch.no_grad()
def mdm_elbo(
    logits_fn: Logits,
    x0: torch.Tensor,
    mask_id: int,
    n_mc: int,
    generator: torch.Generator,
    eps: float = 1e-3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Monte Carlo bound on -log p(x0) per row, with stratified t across the n_mc samples.

    Returns (mean over samples (B,), standard error of that mean (B,)), in nats per sequence.
    """
    B, L = x0.shape
    samples = []
    for t in stratified_t(n_mc, generator, eps):
        p = torch.full((B,), float(t), device=x0.device)
        xt, masked = forward_mask(x0, p, mask_id, generator)
        samples.append(masked_ce_sum(logits_fn(xt), x0, masked) / p)
    s = torch.stack(samples)  # (n_mc, B)
    se = s.std(dim=0, unbiased=True) / math.sqrt(n_mc) if n_mc > 1 else torch.zeros(B)
    return s.mean(dim=0), se


def mdm_sft_loss(
    model: ScoredModel,
    x0: torch.Tensor,
    prompt_mask: torch.Tensor,
    mask_id: int,
    generator: torch.Generator,
    *,
    eps: float = 1e-3,
    conditional: bool = True,
    cfg_dropout: float = 0.0,
    head: LossHead = "full",
) -> torch.Tensor:
    """Fine-tuning loss (docs/method.md §3). x0 (B, L) prompt + response + eos padding.

    conditional: the prompt is never masked; only the other positions are noised and the sum is
    normalised by their count. unconditional: the whole sequence, normalised by B·L (the reverse
    curse recipe). ``cfg_dropout``: with this probability a row's whole prompt is replaced by mask
    tokens (the standard-CFG baseline; unsupervised CFG needs none). ``head``: as ``mdm_loss``.
    """
    B, L = x0.shape
    t = torch.rand(B, generator=generator, device=generator.device).to(x0.device)
    p = (1 - eps) * t + eps  # (B,)
    noisable = ~prompt_mask if conditional else torch.ones_like(prompt_mask)
    u = torch.rand(x0.shape, generator=generator, device=generator.device).to(x0.device)
    masked = (u < p[:, None]) & noisable  # (B, L)
    xt = torch.where(masked, torch.full_like(x0, mask_id), x0)
    if cfg_dropout > 0:
        drop = (
            torch.rand(B, generator=generator, device=generator.device).to(x0.device) < cfg_dropout
        )
        xt = torch.where(drop[:, None] & prompt_mask, torch.full_like(x0, mask_id), xt)
    return masked_loss(model, xt, x0, masked, p, noisable.sum().clamp(min=1), head)


@torch.no_grad()
def mdm_conditional_elbo(
    logits_fn: Logits,
    x0: torch.Tensor,
    prompt_mask: torch.Tensor,
    mask_id: int,
    n_mc: int,
    generator: torch.Generator,
    eps: float = 1e-3,
) -> torch.Tensor:
    """Bound on -log p(response | prompt) per row (B,), stratified t over ``n_mc`` samples."""
    B, L = x0.shape
    total = torch.zeros(B, device=x0.device)
    for t in stratified_t(n_mc, generator, eps):
        u = torch.rand(x0.shape, generator=generator, device=generator.device).to(x0.device)
        masked = (u < float(t)) & ~prompt_mask
        xt = torch.where(masked, torch.full_like(x0, mask_id), x0)
        total += masked_ce_sum(logits_fn(xt), x0, masked) / float(t)
    return total / n_mc
