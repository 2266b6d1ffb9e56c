"""CUDA graphs for the samplers' forwards (``--cuda-graphs``): one graph per input shape, replayed.

A small model's forward at a small batch is a few hundred kernel launches of a few microseconds
each, so on a GPU the launches, not the arithmetic, set the time of a decoding step. A CUDA graph
records a forward's kernels once and replays them with one launch. It replays fixed memory: the
inputs are copied into static buffers, the outputs land in a static buffer (cloned out here, so
logits the sampler keeps are never overwritten by a later replay), and the KV cache's tensors
are written in place at the addresses they had when the graph was recorded.

So a graph is keyed by everything that fixes those addresses and shapes: the input shapes, which
optional inputs are given (``doc_ids``, the cache's window, write mask, decode column and left
padding), the cache's tensors and its host-side write offset. Caches come from a small pool at
fixed addresses (``new_cache``), so later batches of the same shape replay the same graphs; a
cache reallocated because rows left the batch gets new ones.

- MDM: the steps repeat a few shapes (the whole canvas at a block's first step, the block's
  window at the others), so most steps replay.
- ARM: the prefill runs as it is (once per batch). Each decode step runs at a cache column given
  as a tensor (``KVCache.column``) and attends over the whole cache with later columns masked,
  and the pool's ARM caches span the whole context, so one graph serves every step of every
  prompt of a batch size (gpt-fast's static cache).

Recording runs the forward twice on a side stream (lazy initialisation and torch.compile's
recompilations stay out of the graph), then once under capture. Each run writes the cache
exactly as the real forward does, and running a forward again on the same inputs writes the same
keys and values, so recording changes nothing.
Graphs record through SDPA: xformers' block-diagonal mask reads the padding's run lengths on the
host, which a graph cannot do. If recording fails all the same (an operation that cannot be
captured), the model runs eagerly from then on, with one warning: the run finishes, unsped.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from mdmctl.kv_cache import KVCache

log = logging.getLogger("mdmctl")

Replay = Callable[[], None]
Capture = Callable[[Callable[[], torch.Tensor], torch.device], tuple[Replay, torch.Tensor]]
CACHE_INPUTS = ("positions", "write", "column", "offset")
"""The cache's tensor fields a forward reads: static buffers of a graph, like its inputs."""


class CudaCapture:
    """Records ``fn`` as a CUDA graph on ``device``: (replay, its static output).

    Everything happens on the model's device, not the current one (``--device cuda:1``, or a
    torchrun rank): its own stream warms up and captures, and replays launch there. All graphs of
    a device share one memory pool, so N graphs hold one forward's scratch memory, not N. Sharing
    is safe here because nothing a graph reads lives in the pool (static inputs and caches are
    allocated before recording) and each replay's output is cloned before any other replay."""

    def __init__(self) -> None:
        self.streams: dict[torch.device, tuple[torch.cuda.Stream, tuple]] = {}

    def __call__(self, fn: Callable[[], torch.Tensor], device: torch.device):
        with torch.cuda.device(device):
            if device not in self.streams:
                self.streams[device] = (torch.cuda.Stream(), torch.cuda.graph_pool_handle())
            stream, pool = self.streams[device]
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                # Warm-up outside the graph (cuBLAS handles, autotuning, compiled code);
                # torch.compile may recompile on the second call, for a value seen twice.
                for _ in range(2):
                    fn()
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            # The stream is entered here as well: torch.cuda.graph leaves its own stream context
            # open when ending the capture raises, and a failed recording must hand the caller
            # back its stream to run eagerly on.
            with torch.cuda.stream(stream), torch.cuda.graph(graph, pool=pool, stream=stream):
                out = fn()

        def replay() -> None:
            with torch.cuda.device(device):
                graph.replay()

        return replay, out


@dataclass
class _Graph:
    inputs: dict[str, torch.Tensor]  # static buffers the replay reads
    cache: KVCache | None  # the cache as recorded: its tensors, kept alive, and host state
    replay: Replay | None = None
    out: torch.Tensor | None = None  # the graph's output buffer


class GraphedModel:
    """``model(idx, doc_ids=..., cache=...)`` replayed from recorded graphs; otherwise the model
    (attributes pass through). ``capture`` records a function on a device: ``CudaCapture`` by
    default (tests pass a stand-in with the same contract). At most ``max_graphs`` graphs (each
    holds its output buffer), output buffers of at most ``max_bytes`` together (a full canvas's
    logits at a large batch and vocabulary run to gigabytes; the newest graph is always kept) and
    ``max_caches`` pooled caches are kept, least recently used first out."""

    def __init__(
        self,
        model,
        capture: Capture | None = None,
        max_graphs: int = 64,
        max_caches: int = 4,
        max_bytes: int = 4 << 30,
    ) -> None:
        self.model, self.capture = model, capture or CudaCapture()
        self.max_graphs, self.max_caches, self.max_bytes = max_graphs, max_caches, max_bytes
        self.graphs: OrderedDict[tuple, _Graph] = OrderedDict()
        self.caches: OrderedDict[tuple, KVCache] = OrderedDict()
        self.recorded = self.replayed = 0
        self.failed: str | None = None  # why recording failed; then everything runs eagerly

    def __call__(
        self,
        idx: torch.Tensor,
        *,
        doc_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        select: torch.Tensor | None = None,
    ) -> torch.Tensor:
        arm = cache is not None and not cache.bidirectional
        if select is not None or (arm and idx.shape[1] != 1) or self.failed:
            # Scoring's selections and the ARM's prefill (once per batch) run as they are.
            return self.model(idx, doc_ids=doc_ids, cache=cache, select=select)
        if arm:
            if cache.length >= cache.k[0].shape[1]:  # a replay would write out of bounds
                raise ValueError(f"cache of {cache.k[0].shape[1]} columns is full")
            cache.column = torch.full((1,), cache.length, device=idx.device)
        inputs = {"idx": idx, "doc_ids": doc_ids}
        if cache is not None:
            inputs |= {n: getattr(cache, n) for n in CACHE_INPUTS}
        try:
            out = self._replay(inputs, cache)
        finally:
            if arm:
                cache.column = None
        if out is None:  # recording failed: this call and every later one run eagerly
            return self.model(idx, doc_ids=doc_ids, cache=cache)
        if cache is not None and cache.positions is None:
            cache.length += idx.shape[1]  # what the forward does on the host
        return out

    def _replay(self, inputs: dict[str, torch.Tensor | None], cache: KVCache | None):
        """The forward's output from its graph (recorded on first sight); None if recording
        failed."""
        key = (_key(inputs, cache), next(self.model.parameters()).data_ptr())  # weights moved
        g = self.graphs.get(key)
        if g is None:
            g = self._record(key, inputs, cache)
            if g is None:
                return None
        else:
            self.graphs.move_to_end(key)
            for name, t in inputs.items():
                if t is not None:
                    g.inputs[name].copy_(t)
        g.replay()
        self.replayed += 1
        return g.out.clone()

    def _record(self, key: tuple, inputs: dict[str, torch.Tensor | None], cache) -> _Graph | None:
        # What the graph runs on: its own static inputs, and the cache's tensors and host state
        # as they are now (a replay runs no Python: ``__call__`` advances the caller's cache).
        static = {n: t.clone() for n, t in inputs.items() if t is not None}
        recorded = None
        if cache is not None:
            recorded = KVCache(k=list(cache.k), v=list(cache.v), bidirectional=cache.bidirectional,
                               offset_min=cache.offset_min,
                               **{n: static.get(n) for n in CACHE_INPUTS})  # fmt: skip
        g, start = _Graph(static, recorded), None if cache is None else cache.length

        def forward() -> torch.Tensor:
            x, docs = static["idx"], static.get("doc_ids")
            if recorded is None:
                return self.model(x, doc_ids=docs)
            recorded.length = start  # each run starts where the recorded call did
            return self.model(x, doc_ids=docs, cache=recorded)

        try:
            with _sdpa(self.model):
                g.replay, g.out = self.capture(forward, next(self.model.parameters()).device)
        except RuntimeError as e:  # an operation that cannot be captured
            self.failed = (str(e).strip().splitlines() or [type(e).__name__])[0]
            log.warning("--cuda-graphs: recording failed (%s); running eagerly", self.failed)
            return None
        self.graphs[key] = g
        self.recorded += 1
        while len(self.graphs) > 1 and (
            len(self.graphs) > self.max_graphs or self.held_bytes() > self.max_bytes
        ):
            self.graphs.popitem(last=False)
        return g

    def held_bytes(self) -> int:
        """The kept graphs' output buffers, in bytes."""
        return sum(g.out.numel() * g.out.element_size() for g in self.graphs.values())

    def new_cache(self, batch: int, device, dtype: torch.dtype, length: int | None = None):
        """An empty cache from the pool: the same tensors for the same shape, so later batches
        replay the graphs earlier ones recorded. An ARM's spans at least the context, so its
        decode graphs serve every prompt length (a batch whose rows end past the context on its
        left padding gets a longer one)."""
        base = _base(self.model)
        length = max(length or 0, base.cfg.seq_len) if base.causal else length
        key = (batch, length, dtype, str(device))
        kept = self.caches.pop(key, None)
        if kept is None:
            kept = base.new_cache(batch, device, dtype, length)
        for t in (*kept.k, *kept.v):
            t.zero_()
        self.caches[key] = kept
        if len(self.caches) > self.max_caches:
            self.caches.popitem(last=False)
        return KVCache(k=list(kept.k), v=list(kept.v), bidirectional=kept.bidirectional)

    def __getattr__(self, name: str):
        return getattr(self.model, name)


def _key(inputs: dict[str, torch.Tensor | None], cache: KVCache | None) -> tuple:
    """What fixes a recorded forward: input shapes and dtypes, the cache's tensors (their
    addresses and shapes) and its host-side write offset (unless a column tensor gives it)."""
    key: tuple = tuple(
        (n, None) if t is None else (n, tuple(t.shape), t.dtype) for n, t in inputs.items()
    )
    if cache is not None:
        ptrs = tuple(t.data_ptr() for t in (*cache.k, *cache.v))
        key += (ptrs, tuple(cache.k[0].shape), cache.bidirectional)
        key += (cache.length,) if cache.column is None else ()
    return key


def _base(model):
    """The Transformer, also under a compiled wrapper."""
    return getattr(model, "model", model)


@contextmanager
def _sdpa(model):
    """Record through SDPA (xformers reads the padding's run lengths on the host)."""
    base = _base(model)
    backend, base.backend = base.backend, "sdpa"
    try:
        yield
    finally:
        base.backend = backend
