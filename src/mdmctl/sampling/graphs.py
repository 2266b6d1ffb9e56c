"""CUDA graphs for the MDM's forwards (``--cuda-graphs``): one graph per input shape, replayed.

A small model's forward at a small batch is a few hundred kernel launches of a few microseconds
each, so on a GPU the launches, not the arithmetic, set the time of a decoding step. A CUDA graph
records a forward's kernels once and replays them with one launch. It replays fixed memory: the
inputs are copied into static buffers, the outputs land in a static buffer (cloned out here, so
logits the sampler keeps are never overwritten by a later replay), and the KV cache's tensors
are written in place at the addresses they had when the graph was recorded.

So a graph is keyed by everything that fixes those addresses and shapes: the input shapes,
whether there are ``doc_ids``, the cache's tensors (a cache reallocated when rows leave the batch
gets new graphs) and the cache's Python-side state (its write offset, window shape). The MDM's
steps repeat a few shapes (the whole canvas at a block's first step, the block's window at the
others), so most steps replay. The ARM's cache grows by one column per step, which would record
a graph per step: ``--cuda-graphs`` is an MDM option.

Recording runs the forward once on a side stream (lazy initialisation stays out of the graph),
then once under capture. Both write the cache exactly as the real forward does, and running a
forward twice on the same inputs writes the same keys and values, so recording changes nothing.
xformers' block-diagonal mask reads the padding's run lengths on the host, which a graph cannot
do: forwards with ``doc_ids`` (ragged batches) record through SDPA's dense mask instead.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from mdmctl.model import KVCache

Replay = Callable[[], None]
Capture = Callable[[Callable[[], torch.Tensor]], tuple[Replay, torch.Tensor]]


def cuda_capture(fn: Callable[[], torch.Tensor]) -> tuple[Replay, torch.Tensor]:
    """Record ``fn`` as a CUDA graph: (replay, its static output)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()  # warm-up outside the graph: cuBLAS handles, autotuning, compiled code
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph.replay, out


@dataclass
class _Graph:
    inputs: dict[str, torch.Tensor]  # static buffers the replay reads
    cache: KVCache | None  # the calling cache: its tensors sit where the graph writes
    replay: Replay | None = None
    out: torch.Tensor | None = None  # the graph's output buffer


class GraphedModel:
    """``model(idx, doc_ids=..., cache=...)`` replayed from recorded graphs; otherwise the model
    (attributes pass through). ``capture`` records a function: CUDA graphs by default (tests
    pass a stand-in with the same contract). At most ``max_graphs`` are kept, least recently
    used first out, since each holds its own activation memory."""

    def __init__(self, model, capture: Capture = cuda_capture, max_graphs: int = 32) -> None:
        self.model, self.capture, self.max_graphs = model, capture, max_graphs
        self.graphs: OrderedDict[tuple, _Graph] = OrderedDict()
        self.recorded = self.replayed = 0

    def __call__(
        self,
        idx: torch.Tensor,
        *,
        doc_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        select: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if select is not None or (cache is not None and cache.offset is not None):
            # Scoring's ragged selections and the ARM's left-padded cache are not steps of the
            # MDM sampler: run them as they are.
            return self.model(idx, doc_ids=doc_ids, cache=cache, select=select)
        inputs = {"idx": idx, "doc_ids": doc_ids}
        if cache is not None:
            inputs |= {"positions": cache.positions, "write": cache.write}
        key = _key(inputs, cache)
        g = self.graphs.get(key)
        if g is None:
            g = self._record(key, inputs, cache)
        else:
            self.graphs.move_to_end(key)
            g.cache = cache  # the same tensor addresses (the key), maybe another KVCache
            for name, t in inputs.items():
                if t is not None:
                    g.inputs[name].copy_(t)
        g.replay()
        self.replayed += 1
        if cache is not None and cache.positions is None:
            cache.length += idx.shape[1]  # what the forward does on the host
        return g.out.clone()

    def _record(self, key: tuple, inputs: dict[str, Any], cache: KVCache | None) -> _Graph:
        g = _Graph({n: t.clone() for n, t in inputs.items() if t is not None}, cache)

        def forward() -> torch.Tensor:
            x, docs, c = g.inputs["idx"], g.inputs.get("doc_ids"), g.cache
            if c is None:
                return self.model(x, doc_ids=docs)
            saved = c.positions, c.write, c.length
            c.positions, c.write = g.inputs.get("positions"), g.inputs.get("write")
            try:
                return self.model(x, doc_ids=docs, cache=c)
            finally:
                # Host-side state as before the run: a replay does not run this code, so the
                # caller advances the cache (``__call__``) for recording and replay alike.
                c.positions, c.write, c.length = saved

        with _dense_mask(self.model, inputs["doc_ids"] is not None):
            g.replay, g.out = self.capture(forward)
        self.graphs[key] = g
        self.recorded += 1
        if len(self.graphs) > self.max_graphs:
            self.graphs.popitem(last=False)
        return g

    def __getattr__(self, name: str):
        return getattr(self.model, name)


def _key(inputs: dict[str, torch.Tensor | None], cache: KVCache | None) -> tuple:
    """What fixes a recorded forward: input shapes and dtypes, the cache's tensors (their
    addresses and shapes) and its host-side state."""
    key: tuple = tuple(
        (n, None) if t is None else (n, tuple(t.shape), t.dtype) for n, t in inputs.items()
    )
    if cache is not None:
        ptrs = tuple(t.data_ptr() for t in (*cache.k, *cache.v))
        key += (ptrs, tuple(cache.k[0].shape), cache.length, cache.bidirectional)
    return key


@contextmanager
def _dense_mask(model, needed: bool):
    """Record through SDPA where xformers would read the padding's run lengths on the host."""
    base = getattr(model, "model", model)  # under a compiled wrapper
    backend = base.backend
    if needed:
        base.backend = "sdpa"
    try:
        yield
    finally:
        base.backend = backend
