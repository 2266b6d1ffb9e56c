"""ARM baseline sampling: left to right with a KV cache (the fair speed comparison,
docs/method.md §5.6).

Each prompt is preceded by eos, the document separator the model saw in training. Rows of any
prompt and generation length share one batch: shorter prompts are padded on the left, each row's
positions start at 0 at its own first token and the padding is an attention segment of its own,
so a row sees exactly what it sees alone; with a random stream per row (``RowStreams``, as
``generate`` samples) it draws what it draws alone too. A row that has finished (its eos, or its
length reached) leaves the batch where that changes no other row's draws: with a stream per row
or at temperature 0 (unless ``keep_batch``: CUDA graphs replay fixed shapes); with one stream for
the batch at a temperature the batch runs until every row has finished. A finished row that
stays runs on past its end, even past the context (its positions held at the last), and nothing
of it is read.
"""

from __future__ import annotations

import torch

from mdmctl.model import Transformer
from mdmctl.sampling.select import RowStreams, Streams, filter_logits, gumbel_argmax


@torch.no_grad()
def sample_arm(
    model: Transformer,
    prompts: list[list[int]],
    *,
    length: int | list[int],
    eos_id: int,
    generator: Streams,
    temperature: float = 0.0,
    device: torch.device | str = "cpu",
    stop_at_eos: bool = True,
    top_k: int | None = None,
    top_p: float | None = None,
    min_length: int = 0,
    keep_batch: bool = False,
) -> tuple[list[list[int]], int]:
    """Generated ids per prompt and the number of forward passes. ``length``: tokens to generate,
    one for all rows or one per row; with ``stop_at_eos`` a row ends at its first eos (kept).
    ``top_k`` / ``top_p`` filter each distribution; eos is not sampled before ``min_length``.
    ``keep_batch``: finished rows stay in the batch even where they could leave it (fixed shapes
    for CUDA graphs; the same output). ``generator``: one stream for the batch, or
    ``RowStreams`` (one per row)."""
    B = len(prompts)
    lengths = [length] * B if isinstance(length, int) else list(length)
    n = torch.tensor(lengths, device=device)  # (B,)
    rows = [[eos_id] + p for p in prompts]
    for r, m in zip(rows, lengths, strict=True):  # the last token is never fed back
        if len(r) + m - 1 > model.cfg.seq_len:
            raise ValueError(f"{len(r)} + {m} - 1 tokens exceed seq_len={model.cfg.seq_len}")
    width = max(len(r) for r in rows)
    x = torch.tensor([[eos_id] * (width - len(r)) + r for r in rows], device=device)  # (B, P)
    cache = model.new_cache(B, device, model.tok_emb.weight.dtype, width + max(lengths) - 1)
    offsets = [width - len(r) for r in rows]  # each row's left padding
    offset = torch.tensor(offsets, device=device)
    cache.pad_left(offset if any(offsets) else None)  # equal prompts: no mask needed
    logits = model(x, cache=cache)[:, -1]  # prefill: (B, V)
    nfe = 1
    out = torch.full((B, int(n.max())), eos_id, dtype=torch.long, device=device)
    produced = n.clone()  # (B,) tokens each row returns
    live = torch.arange(B, device=device)  # batch row -> prompt
    # a finished row's absence changes no other row's draws
    leave = (temperature == 0 or isinstance(generator, RowStreams)) and not keep_batch
    for k in range(int(n.max())):
        if k < min_length:
            logits[:, eos_id] = float("-inf")
        logits = filter_logits(logits, top_k, top_p)
        nxt = gumbel_argmax(logits, temperature, generator)  # (b,)
        out[live, k] = nxt
        if stop_at_eos:  # a row still writing ends at its eos
            produced[live[(nxt == eos_id) & (produced[live] > k)]] = k + 1
        finished = produced[live] <= k + 1  # (b,)
        n_finished = int(finished.sum())  # one device sync per step
        if n_finished == len(live):
            break
        if leave and n_finished:
            live, nxt = live[~finished], nxt[~finished]
            _keep_rows(cache, ~finished)
            if isinstance(generator, RowStreams):
                generator = generator.take(~finished)
        if not leave and cache.offset is not None:
            # Finished rows stay: the context check is for the rows that may still write.
            cache.offset_min = min(o for o, m in zip(offsets, lengths, strict=True) if m > k + 1)
        logits = model(nxt[:, None], cache=cache)[:, -1]
        nfe += 1
    out_rows = out.cpu().tolist()
    return [r[:m] for r, m in zip(out_rows, produced.tolist(), strict=True)], nfe


def _keep_rows(cache, keep: torch.Tensor) -> None:
    """Drop the cache rows where ``keep`` (b,) is false."""
    cache.k = [t[keep] for t in cache.k]
    cache.v = [t[keep] for t in cache.v]
    if cache.offset is not None:
        cache.pad_left(cache.offset[keep])
