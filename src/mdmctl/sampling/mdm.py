"""MDM samplers on a fixed canvas (method.md §5): prompt, then ``length`` mask tokens.

The time grid runs from t = 1 to 0 in ``steps`` steps. At step k (t -> s):
- ``ancestral`` (the true reverse process): each masked position is revealed with probability
  (t - s)/t, its token drawn from the model; at the last step everything left is revealed.
- ``confidence`` (MaskGIT-style): a candidate is drawn for every masked position and the
  n_masked·(1 - s/t) most confident are revealed; the rest stay masked.

Unsupervised CFG: guided = uncond + (w + 1)(cond - uncond) with the prompt replaced by mask tokens
in the unconditional pass; both passes run as one batched forward. Ragged prompts are right-padded
and the padding is its own attention segment, so it is never attended and never generated: a row's
sample does not depend on its batch neighbours. The model is time-agnostic, so a step in which no
token changed reuses the previous logits (MDLM's cache) without a forward pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from mdmctl.sampling.select import gumbel_argmax, token_confidence

Sampler = Literal["ancestral", "confidence"]
ModelFn = Callable[
    [torch.Tensor, torch.Tensor], torch.Tensor
]  # (x (B, L), doc_ids (B, L)) -> logits


@dataclass
class MDMSampleOutput:
    tokens: torch.Tensor  # (B, length) generated ids
    nfe: int  # forward passes (a CFG step counts one batched pass)


def cfg_logits(
    model: ModelFn,
    x: torch.Tensor,
    doc_ids: torch.Tensor | None,
    prompt_mask: torch.Tensor,
    mask_id: int,
    cfg: float,
) -> torch.Tensor:
    """Guided logits (B, L, V). ``prompt_mask`` (B, L) marks prompt positions (masked in the
    unconditional pass). cfg = 0 is one plain conditional pass."""
    if cfg == 0 or not bool(prompt_mask.any()):
        return model(x, doc_ids)
    uncond = torch.where(prompt_mask, torch.full_like(x, mask_id), x)
    docs = None if doc_ids is None else torch.cat([doc_ids, doc_ids])
    both = model(torch.cat([x, uncond]), docs)  # (2B, L, V)
    cond, unc = both.chunk(2)
    guided = unc + (cfg + 1.0) * (cond - unc)
    # -inf - -inf is nan at the mask column: keep it -inf (never predicted).
    return torch.where(torch.isinf(cond) & (cond < 0), cond, guided)


@torch.no_grad()
def sample_mdm(
    model: ModelFn,
    prompts: list[list[int]],
    *,
    length: int,
    steps: int,
    mask_id: int,
    pad_id: int,
    generator: torch.Generator,
    sampler: Sampler = "confidence",
    temperature: float = 0.0,
    cfg: float = 0.0,
    device: torch.device | str = "cpu",
) -> MDMSampleOutput:
    """Generate ``length`` tokens after each prompt; returns the generated ids and the NFE."""
    B = len(prompts)
    plens = torch.tensor([len(p) for p in prompts])
    total = int(plens.max()) + length
    x = torch.full((B, total), pad_id, dtype=torch.long)
    gen_pos = torch.zeros(B, total, dtype=torch.bool)
    for b, p in enumerate(prompts):
        x[b, : len(p)] = torch.tensor(p, dtype=torch.long)
        x[b, len(p) : len(p) + length] = mask_id
        gen_pos[b, len(p) : len(p) + length] = True
    pos = torch.arange(total)
    real = pos[None, :] < (plens + length)[:, None]  # (B, total)
    # Padding is its own attention segment. Without padding no mask is built at all, which keeps
    # the attention kernel on its fast maskless path.
    doc_ids = (~real).long() if bool((~real).any()) else None
    prompt_mask = pos[None, :] < plens[:, None]
    x, prompt_mask, gen_pos = (t.to(device) for t in (x, prompt_mask, gen_pos))
    if doc_ids is not None:
        doc_ids = doc_ids.to(device)

    nfe = 0
    logits = None
    changed = True
    for k in range(steps):
        t, s = 1.0 - k / steps, 1.0 - (k + 1) / steps
        masked = x == mask_id  # (B, total); pads and prompt are never mask_id
        if not bool(masked.any()):
            break
        if changed or logits is None:
            logits = cfg_logits(model, x, doc_ids, prompt_mask, mask_id, cfg)
            nfe += 1
        idx = masked.nonzero(as_tuple=True)
        cand = gumbel_argmax(logits[idx], temperature, generator)  # (N,) candidates at masked slots
        if sampler == "ancestral":
            if k == steps - 1:
                reveal = torch.ones_like(cand, dtype=torch.bool)
            else:
                u = torch.rand(cand.shape, generator=generator, device=generator.device)
                reveal = u.to(cand.device) < (t - s) / t
        else:
            conf = torch.full(x.shape, -1.0, device=x.device)
            conf[idx] = token_confidence(logits[idx], cand)
            n_masked = masked.sum(1)  # (B,)
            # Remaining after this step follows the schedule: round(length · s) of the gen slots.
            n_reveal = (n_masked - round(length * s)).clamp(min=0)
            order = conf.argsort(dim=1, descending=True)  # masked slots first (conf >= 0)
            rank = torch.empty_like(order)
            rank.scatter_(1, order, torch.arange(total, device=x.device).expand(B, total))
            chosen = (rank < n_reveal[:, None]) & masked  # (B, total)
            reveal = chosen[idx]
        new = x.clone()
        new[idx[0][reveal], idx[1][reveal]] = cand[reveal]
        changed = bool(reveal.any())
        x = new
    # A schedule with steps < 1 per token never leaves masks: the last step reveals all.
    out = torch.stack([x[b, gen_pos[b]] for b in range(B)])  # (B, length)
    return MDMSampleOutput(out.cpu(), nfe)
