"""A frozen reference: mdmctl's MDM sampler as it was before blocks, remasking orders, parallel
decoding and caches (one canvas, the whole canvas every step), kept as plain as possible.

Tests compare today's sampler against it token for token (issue 11: "with one block and
low-confidence remasking the block sampler equals today's confidence sampler"). It draws its
random numbers from one ``torch.Generator`` in the same order the sampler does with one stream:
per step, float64 Gumbel noise for every masked position (row-major), then (ancestral) one
uniform per masked position. Ties in confidence go to the earlier position.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def reference_sample(model, prompts, *, length, steps, mask_id, pad_id, generator,
                     sampler="confidence", temperature=0.0, cfg=0.0):  # fmt: skip
    """(B, length) generated ids and the forward passes. ``model(x, doc_ids)`` -> logits."""
    B, total = len(prompts), max(len(p) for p in prompts) + length
    x = torch.full((B, total), pad_id)
    for b, p in enumerate(prompts):
        x[b, : len(p)] = torch.tensor(p)
        x[b, len(p) : len(p) + length] = mask_id
    pos = torch.arange(total)
    plens = torch.tensor([len(p) for p in prompts])
    pad = pos[None, :] >= (plens + length)[:, None]
    docs = pad.long() if bool(pad.any()) else None
    in_prompt = pos[None, :] < plens[:, None]
    gen = ~in_prompt & ~pad
    nfe, logits = 0, None
    for k in range(steps):
        t, s = 1.0 - k / steps, 1.0 - (k + 1) / steps
        masked = x == mask_id
        if not bool(masked.any()):
            break
        if logits is None:
            logits = _guided(model, x, docs, in_prompt, mask_id, cfg)
            nfe += 1
        idx = masked.nonzero(as_tuple=True)
        lg = logits[idx].double()  # (N, V)
        if temperature > 0:
            u = torch.rand(lg.shape, generator=generator, dtype=torch.float64)
            cand = (lg / temperature - torch.log(-torch.log(u.clamp_min(1e-300)))).argmax(-1)
        else:
            cand = lg.argmax(-1)
        if sampler == "ancestral":
            if k == steps - 1:
                reveal = torch.ones_like(cand, dtype=torch.bool)
            else:
                reveal = torch.rand(cand.shape, generator=generator) < (t - s) / t
        else:
            conf = torch.full(x.shape, -1.0)
            conf[idx] = logits[idx].float().log_softmax(-1).gather(-1, cand[:, None])[:, 0].exp()
            n_reveal = masked.sum(1) - round(length * s)  # (B,) the schedule's remainder
            order = conf.argsort(dim=1, descending=True, stable=True)
            rank = torch.empty_like(order).scatter_(1, order, pos.expand(B, total))
            reveal = ((rank < n_reveal[:, None]) & masked)[idx]
        if bool(reveal.any()):
            x = x.clone()
            x[idx[0][reveal], idx[1][reveal]] = cand[reveal]
            logits = None  # a step that revealed nothing reuses the logits
    return torch.stack([x[b, gen[b]] for b in range(B)]), nfe


def _guided(model, x, docs, in_prompt, mask_id, cfg):
    """Unsupervised CFG: uncond + (cfg + 1)(cond - uncond), prompt masked in the uncond pass."""
    if cfg == 0 or not bool(in_prompt.any()):
        return model(x, docs)
    uncond = torch.where(in_prompt, mask_id, x)
    cond, unc = model(torch.cat([x, uncond]), None if docs is None else docs.repeat(2, 1)).chunk(2)
    return torch.where(torch.isneginf(cond), cond, unc + (cfg + 1.0) * (cond - unc))
