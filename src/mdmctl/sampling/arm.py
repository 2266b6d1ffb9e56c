"""ARM baseline sampling: left to right with a KV cache (the fair speed comparison, method.md §5).

Rows are grouped by prompt length so no padding is needed and a row's sample does not depend on its
batch neighbours. Each prompt is preceded by eos, the document separator the model saw in training.
"""

from __future__ import annotations

import torch

from mdmctl.model import Transformer
from mdmctl.sampling.select import filter_logits, gumbel_argmax


@torch.no_grad()
def sample_arm(
    model: Transformer,
    prompts: list[list[int]],
    *,
    length: int,
    eos_id: int,
    generator: torch.Generator,
    temperature: float = 0.0,
    device: torch.device | str = "cpu",
    stop_at_eos: bool = True,
    top_k: int | None = None,
    top_p: float | None = None,
    min_length: int = 0,
) -> tuple[list[list[int]], int]:
    """Generated ids per prompt (up to ``length``) and the number of forward passes. ``top_k`` /
    ``top_p`` filter each distribution; eos is not sampled before ``min_length`` tokens."""
    out: list[list[int]] = [[] for _ in prompts]
    nfe = 0
    by_len: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_len.setdefault(len(p), []).append(i)
    for plen, rows in sorted(by_len.items()):
        x = torch.tensor([[eos_id] + prompts[i] for i in rows], dtype=torch.long, device=device)
        cache = model.new_cache(len(rows), device, model.tok_emb.weight.dtype)
        logits = model(x, cache=cache)[:, -1]  # prefill: (B, V)
        nfe += 1
        done = torch.zeros(len(rows), dtype=torch.bool, device=device)
        gen = []
        for k in range(length):
            if k < min_length:
                logits[:, eos_id] = float("-inf")
            logits = filter_logits(logits, top_k, top_p)
            nxt = gumbel_argmax(logits, temperature, generator)  # (B,)
            gen.append(nxt)
            done |= nxt == eos_id
            if (stop_at_eos and bool(done.all())) or k == length - 1:
                break
            logits = model(nxt[:, None], cache=cache)[:, -1]
            nfe += 1
        ids = torch.stack(gen, dim=1).cpu()  # (B, n)
        for j, i in enumerate(rows):
            out[i] = ids[j].tolist()
    return out, nfe
