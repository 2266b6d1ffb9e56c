"""Vectorised token choice: float64 Gumbel-max sampling and confidence scores.

Gumbel noise is drawn in float64 and only for the rows being decided: float32 Gumbel measurably
lowers sample diversity (arXiv 2409.02908). Temperature 0 is argmax.

Random numbers come from a ``torch.Generator`` (one stream for the batch) or from ``RowStreams``
(one stream per sequence, as ``mdmctl.sampling.generate`` uses): then a sequence's draws depend
only on its own seed and its own decoding, never on its batch neighbours, the batch size or when
the other rows finish.
"""

from __future__ import annotations

import torch


class RowStreams:
    """One random stream per batch row. A draw for N items, each of a row (``rows`` (N,), which
    must be ascending, as ``nonzero`` gives them), takes each row's share from that row's
    generator, in order: what a row draws is what it would draw alone."""

    def __init__(self, generators: list[torch.Generator]) -> None:
        self.generators = generators

    @classmethod
    def seeded(cls, seeds: list[int], device: torch.device | str) -> RowStreams:
        """Generators on ``device``: noise is drawn where the logits are (a CPU generator would
        draw a CUDA step's (N, V) float64 noise on the host and copy it over)."""
        dev = torch.device(device)
        return cls([torch.Generator(device=dev).manual_seed(s) for s in seeds])

    def take(self, keep: torch.Tensor) -> RowStreams:
        """The streams of the rows where ``keep`` (B,) is true."""
        return RowStreams([g for g, k in zip(self.generators, keep.tolist(), strict=True) if k])

    def shares(self, rows: torch.Tensor) -> list[tuple[torch.Generator, slice]]:
        """Each row's generator and its items' slice, for the rows with items."""
        counts = torch.bincount(rows, minlength=len(self.generators)).tolist()
        out, start = [], 0
        for g, n in zip(self.generators, counts, strict=True):
            if n:
                out.append((g, slice(start, start + n)))
                start += n
        return out

    def rand(self, rows: torch.Tensor, tail: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """Uniform [0, 1) of shape (N, *tail), row ``rows[i]``'s stream for item i."""
        out = draw(self.shares(rows), len(rows), tail, dtype, self.generators[0].device)
        return out.to(rows.device)


def draw(shares, n: int, tail: tuple[int, ...], dtype: torch.dtype, device, first: int = 0):
    """(n, *tail) uniforms for the items of ``shares`` (``RowStreams.shares``; the first item is
    ``first``), each row's written in place from its generator: no copy to join them."""
    out = torch.empty((n, *tail), dtype=dtype, device=device)
    for g, items in shares:
        part = out[items.start - first : items.stop - first]
        torch.rand(part.shape, generator=g, dtype=dtype, out=part)
    return out


Streams = torch.Generator | RowStreams


def uniform(
    streams: Streams, rows: torch.Tensor, tail: tuple[int, ...] = (), dtype=torch.float32
) -> torch.Tensor:
    """(N, *tail) uniform draws for N items of batch rows ``rows`` (N,, ascending), on ``rows``'
    device."""
    if isinstance(streams, RowStreams):
        return streams.rand(rows, tail, dtype)
    u = torch.rand((len(rows), *tail), generator=streams, dtype=dtype, device=streams.device)
    return u.to(rows.device)


def gumbel_argmax(
    logits: torch.Tensor, temperature: float, streams: Streams, rows: torch.Tensor | None = None
) -> torch.Tensor:
    """Sample from softmax(logits / temperature) per row. logits (N, V) -> ids (N,); ``rows``
    (N,), ascending: the batch row of each (default: row i is item i)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    if rows is None:
        rows = torch.arange(logits.shape[0], device=logits.device)
    if not isinstance(streams, RowStreams):
        u = uniform(streams, rows, (logits.shape[-1],), torch.float64)
        return _perturbed(logits, u, temperature).argmax(dim=-1)
    # In groups of rows: float64 noise and logits for at most GUMBEL_CHUNK entries at a time,
    # never (N, V) of them (gigabytes at a large batch and vocabulary); one reduction per group,
    # not per row (on a GPU, launches).
    ids = torch.empty(len(rows), dtype=torch.long, device=logits.device)
    V, device = logits.shape[-1], streams.generators[0].device
    for group in _groups(streams.shares(rows), max(1, GUMBEL_CHUNK // V)):
        a, b = group[0][1].start, group[-1][1].stop
        u = draw(group, b - a, (V,), torch.float64, device, first=a).to(logits.device)
        ids[a:b] = _perturbed(logits[a:b], u, temperature).argmax(dim=-1)
    return ids


GUMBEL_CHUNK = 1 << 24
"""Entries of float64 noise per group of rows (128 MiB): a row with more is a group alone."""


def _groups(shares: list, cap: int):
    """Consecutive shares in groups of at most ``cap`` items (a larger share alone)."""
    group, n = [], 0
    for g, items in shares:
        size = items.stop - items.start
        if group and n + size > cap:
            yield group
            group, n = [], 0
        group.append((g, items))
        n += size
    if group:
        yield group


def _perturbed(logits: torch.Tensor, u: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits / temperature plus Gumbel noise from uniforms ``u``, in float64. (n, V)."""
    return logits.double() / temperature - torch.log(-torch.log(u.clamp_min(1e-300)))


def token_confidence(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Model probability of the chosen ids (fp32). logits (N, V), ids (N,) -> (N,)."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, ids[:, None]).squeeze(-1).exp()


def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Keep the ``top_k`` largest and the smallest set whose probability reaches ``top_p`` (the
    most likely token always stays); the rest become -inf. logits (N, V) -> (N, V)."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # (N, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.float().softmax(-1)
        # Drop a token when the tokens ranked above it already reach top_p.
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def remask_score(
    logits: torch.Tensor,
    ids: torch.Tensor,
    kind: str,
    streams: Streams,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """How sure the model is of each candidate, higher first revealed. logits (N, V), ids (N,);
    ``rows`` (N,) as for ``gumbel_argmax`` (random draws only).

    low-confidence: p(chosen) (LLaDA, MaskGIT); margin: p(top1) - p(top2) (Dream's topk_margin);
    entropy: minus the entropy of the position's distribution (Dream's entropy); random: uniform
    (LLaDA's random remasking)."""
    if kind == "random":
        return uniform(streams, torch.arange(len(ids), device=ids.device) if rows is None else rows)
    if kind == "low-confidence":
        return token_confidence(logits, ids)
    logp = torch.log_softmax(logits.float(), dim=-1)  # fp32, masked positions only
    if kind == "margin":
        top2 = logp.topk(2, dim=-1).values.exp()
        return top2[:, 0] - top2[:, 1]
    if kind == "entropy":
        p = logp.exp()
        return (p * logp.masked_fill(p == 0, 0.0)).sum(-1)  # -H
    raise ValueError(f"unknown remasking {kind!r}")
