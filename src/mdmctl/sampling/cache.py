"""MDM KV caches (Fast-dLLM's prefix and dual, dKV-Cache's delayed) and what they approximate.

An MDM attends bidirectionally, so every position's keys and values at every layer depend on the
whole canvas, which changes at each step. A cache therefore reuses stale keys and values: it is an
approximation, never exact, and ``none`` (recompute the whole canvas every step) is the exact mode.

- ``prefix``: at the first step of each block the whole canvas runs and every layer's keys and
  values are kept; at the block's later steps only the block and everything after it run, and the
  positions before the block (prompt and finished blocks) use the kept keys and values. What is
  approximated: the prefix's keys and values do not see the tokens revealed since the block began.
- ``dual``: as ``prefix``, but only the block runs; the positions after it (still masked, later
  blocks) use kept keys and values too. Approximated as well: the suffix does not see the block's
  new tokens.
- ``dual`` with a ``window`` of W positions: the block and the W positions after it run at every
  step, and only the suffix beyond them uses kept keys and values (a near-suffix refresh in the
  spirit of dInfer's vicinity refresh). The positions right after the block continue its text,
  so they are the suffix positions the block's new tokens should inform first; a window as long
  as the canvas is the prefix cache exactly. How much a window buys back is measured, not
  assumed (docs/benchmarks.md, "The dual cache's window").
- ``delayed`` (dKV-Cache's delayed cache, blocks or not): after the refresh, each step runs only
  the positions that were masked at the previous forward: those still masked and those revealed
  since, whose keys and values are then computed once with their token and kept from then on.
  Prompt and decided tokens reuse kept keys and values. Approximated: a decided token's keys and
  values do not see the tokens revealed after the step that followed its own reveal, and the
  prompt's see the canvas of the refresh. As decoding advances fewer positions run; with blocks,
  the masked columns of later blocks run at every step too.

With a CFG scale the conditional and unconditional rows share one cache of 2B rows. Rows start
their generation at their own prompt length, so each row runs its own window: its block (prefix:
its block and what follows; dual with a window: its block and the W positions after it;
delayed: its masked columns), gathered into one (B, w) batch with per-row positions (w, the
widest row's window; a narrower row's contiguous window is moved left to fit the canvas, a
narrower delayed row runs other columns too). Each row writes fresh keys and values only for its
own window columns and keeps the cached ones elsewhere, so a row's sample
does not depend on its batch neighbours.

A model with shifted logits (Dream: position i's logits are position i-1's output) needs the
output of the column before each one it reads. The cached forwards return each column's own
output, kept in a canvas-wide buffer that is shifted by one when returned, and each window also
runs, as a query only (its kept keys and values stay), the column before each column it writes:
before the block (prefix, dual) or before each masked column (delayed). So the block's first
token reads a fresh output of the prompt's last token, not one from the block's first step.
"""

from __future__ import annotations

import torch

from mdmctl.kv_cache import KVCache
from mdmctl.model import Transformer
from mdmctl.sampling.decoding import CacheMode


class CachedMDM:
    """``model(x, doc_ids) -> logits`` with a cache refreshed at each block's first step.

    The sampler calls ``begin_block(own)`` (each row's columns of the block) before the block's
    steps. Logits at columns a forward does not run are older ones: the sampler reads only the
    block's masked columns, which every mode runs."""

    def __init__(
        self,
        model: Transformer,
        mode: CacheMode,
        window: int = 0,
        mask_id: int | None = None,
        width_multiple: int = 1,
        shift: bool = False,
    ) -> None:
        """``width_multiple``: the delayed cache's forwards run a multiple of this many columns
        (the extra ones write nothing), so CUDA graphs meet a few widths, not every one.
        ``shift``: the model's logits are shifted (``ModelConfig.shift_logits``, Dream)."""
        if mode == "delayed" and mask_id is None:
            raise ValueError("the delayed cache needs mask_id: it runs the masked positions")
        self.model, self.mode, self.window, self.mask_id = model, mode, window, mask_id
        self.width_multiple, self.shift = width_multiple, shift
        self.cache: KVCache | None = None
        self.positions: torch.Tensor | None = None  # (B, w) each row's window
        self.own: torch.Tensor | None = None  # (B, L) the columns each row writes
        self.refresh = True  # the next call runs the whole canvas and refills the cache
        self.forwards_full = self.forwards_window = 0

    def begin_block(self, own: torch.Tensor) -> None:
        """``own`` (B, L) bool: each row's columns of the block about to be decoded (contiguous)."""
        if self.mode == "delayed":  # the refresh decides what runs next (``_delay``)
            self.own, self.positions, self.refresh = own, None, True
            return
        L, has = own.shape[1], own.any(1)
        first = own.long().argmax(1)  # (B,) 0 for a row without a block
        last = L - 1 - own.flip(1).long().argmax(1)  # (B,)
        # What runs fresh at every step: prefix, the block and everything after it; dual, the
        # block and its window.
        last = torch.full_like(last, L - 1) if self.mode == "prefix" else last + self.window
        last = torch.where(has, last.clamp(max=L - 1), 0)
        cols = torch.arange(L, device=own.device)
        own = has[:, None] & (cols >= first[:, None]) & (cols <= last[:, None])  # (B, L)
        # Shifted logits: the column before the block runs too (a query; it writes nothing).
        run_first = (first - int(self.shift)).clamp(min=0)
        width = int((last - run_first + 1).clamp(min=1).max())
        start = run_first.clamp(max=L - width)  # (B,)
        self.own, self.refresh = own, True
        self.positions = start[:, None] + torch.arange(width, device=own.device)  # (B, w)

    def __call__(self, x: torch.Tensor, doc_ids: torch.Tensor | None) -> torch.Tensor:
        # The cache's rows no longer match (CFG's unconditional pass stops when only rows
        # without a prompt remain): refill it for these rows.
        stale = self.cache is None or self.cache.k[0].shape[0] != x.shape[0]
        nxt = self._delay(x)  # before the forward: its device sync waits on nothing queued
        if self.mode == "none" or self.own is None or self.refresh or stale:
            logits = self._full(x, doc_ids)
            self.positions, self.own = nxt or (self.positions, self.own)
            return logits
        pos, own = self.positions, self.own
        if x.shape[0] != pos.shape[0]:  # CFG: the unconditional rows follow the conditional
            pos, own = torch.cat([pos, pos]), torch.cat([own, own])
        self.cache.positions, self.cache.write = pos, own.gather(1, pos)
        try:
            part = self.model(x.gather(1, pos), doc_ids=doc_ids, cache=self.cache)  # (B, w, V)
        finally:
            self.cache.positions = self.cache.write = None
        self.forwards_window += 1
        # The refresh's logits buffer, updated in each row's window: no (B, L, V) allocation per
        # step. Elsewhere it holds older values, which the sampler does not read.
        self.logits.scatter_(1, pos[:, :, None].expand_as(part), part)
        self.positions, self.own = nxt or (self.positions, self.own)
        return self._shifted(self.logits)

    def _shifted(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, L, V) each column's logits: its own output, or with ``shift`` the one before
        (the first column keeps its own, as the model does)."""
        if not self.shift:
            return logits
        return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)

    def _delay(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Delayed cache: (positions, own) of the next forward, which runs the columns masked
        in this one's canvas ``x`` (its conditional rows under CFG: the unconditional rows'
        masked prompt is kept, as the other caches keep it). Revealed tokens run once more,
        then their keys and values stay. None in the other modes."""
        if self.mode != "delayed" or self.own is None:
            return None
        masked = x[: self.own.shape[0]] == self.mask_id  # (B, L)
        runs = masked.clone()
        if self.shift:  # and the column before each masked one, as a query
            runs[:, :-1] |= masked[:, 1:]
        width = max(int(runs.sum(1).max()), 1)
        width = min(-(-width // self.width_multiple) * self.width_multiple, masked.shape[1])
        # Each row's masked columns first, in order; a row with fewer fills the width with
        # other columns, which run but write nothing (their kept keys and values stay).
        order = torch.sort((~runs).to(torch.uint8), dim=1, stable=True).indices  # (B, L)
        return order[:, :width], masked  # (B, w), (B, L)

    def take(self, keep: torch.Tensor) -> None:
        """Keep only the rows where ``keep`` (B,) is true (finished rows leave the batch)."""
        self.own = self.own[keep]
        if self.positions is not None:
            self.positions = self.positions[keep]
        if self.cache is None:
            return
        rows = keep if self.cache.k[0].shape[0] == keep.shape[0] else torch.cat([keep, keep])
        self.cache.k = [t[rows] for t in self.cache.k]
        self.cache.v = [t[rows] for t in self.cache.v]
        self.logits = self.logits[rows]

    def _full(self, x: torch.Tensor, doc_ids: torch.Tensor | None) -> torch.Tensor:
        self.forwards_full += 1
        if self.mode == "none":
            return self.model(x, doc_ids=doc_ids)
        B, L = x.shape
        if self.cache is None or self.cache.k[0].shape[:2] != (B, L):
            self.cache = self.model.new_cache(B, x.device, self.model.tok_emb.weight.dtype, L)
        self.cache.length = 0
        self.refresh = False
        self.logits = self.model(x, doc_ids=doc_ids, cache=self.cache)  # (B, L, V)
        return self._shifted(self.logits)
