"""The keys and values a sampler keeps between forwards, behind one interface for the model.

The model asks a cache four things, whatever its layout: ``span(L)`` (the positions a forward
of L tokens reaches, for the context check), ``rope(...)`` (the RoPE tables and document ids of
the forward's tokens), ``store(layer, k, v, doc_ids)`` (each layer: write this forward's keys and
values, return the ones to attend to) and ``advance(L)`` (after the forward). Its block has no
branch per layout.
The layouts (the samplers that use them: ``sampling/arm.py`` and ``sampling/cache.py``):

- left to right (ARM): a forward of L tokens writes columns [length, length + L), attends to
  [0, length + L) causally and advances ``length``; with ``offset``, rows are left-padded;
- one column (ARM decode under CUDA graphs): one token at ``column``, attending over the whole
  cache with the columns after it masked, so every step has the same shapes;
- bidirectional (MDM canvas): a forward from ``length`` 0 fills the whole canvas; a forward with
  ``positions`` runs each row's own window and its queries attend to every cached position.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class KVCache:
    """Per-layer keys and values (after RoPE). k, v: (B, Lmax, H, Dh)."""

    k: list[torch.Tensor] = field(default_factory=list)
    v: list[torch.Tensor] = field(default_factory=list)
    length: int = 0
    bidirectional: bool = False
    write: torch.Tensor | None = None
    """(B, L) bool: write only these positions of the next forward (the rest keep their cached
    keys and values), so each row of a batch refreshes only its own block."""
    positions: torch.Tensor | None = None
    """(B, L) the canvas position of each token of the next forward, per row (MDM windows)."""
    offset: torch.Tensor | None = None
    """(B,) left padding of each row (ARM batches of ragged prompts): a row's token at cache column
    c sits at position c - offset, and the padding columns are a segment no row attends to."""
    offset_min: int = 0
    """The least padded offset among the rows that may still write (sample_arm keeps it), as an
    int: the context check needs no device sync."""
    column: torch.Tensor | None = None
    """(1,) ARM decode of one token at this cache column, given as a tensor: the forward then
    attends over the whole cache with the columns after it masked, so every step runs the same
    kernels on the same shapes (CUDA graphs, sampling/graphs.py). ``length`` must equal it."""

    def pad_left(self, offset: torch.Tensor | None) -> None:
        """Set each row's left padding (``offset``); None: no row is padded."""
        self.offset, self.offset_min = offset, 0 if offset is None else int(offset.min())

    @property
    def windows(self) -> bool:
        """Per-row windows of a bidirectional canvas (``positions`` set)."""
        return self.positions is not None

    def span(self, L: int) -> int:
        """Positions a forward of ``L`` tokens reaches, for the model's context check."""
        if self.windows:
            return L  # positions within the cached canvas, which fits the context
        return self.length + L - (self.offset_min if self.offset is not None else 0)

    def rope(
        self,
        cos: torch.Tensor,
        sin: torch.Tensor,
        B: int,
        L: int,
        doc_ids: torch.Tensor | None,
        seq_len: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The RoPE tables of the next forward's tokens, (L, H, Dh/2) or per row (B, L, H, Dh/2),
        from the model's (Lmax, H, Dh/2) ones, and the document ids its attention uses."""
        if self.windows:
            return cos[self.positions], sin[self.positions], doc_ids
        if self.column is not None:
            return self._column_rope(cos, sin, B, seq_len)
        start = self.length
        if self.offset is None:
            return cos[start : start + L], sin[start : start + L], doc_ids
        # Each row from position 0 at its first real column; padding at 0.
        cols = torch.arange(start + L, device=self.offset.device)
        pos = cols[start:][None] - self.offset[:, None]  # (B, L)
        # past its end a row that stays in the batch runs on, unread
        pos = pos.clamp(min=0, max=seq_len - 1)
        # (B, start + L): 0 on the padding, 1 on the row; every layer's keys use them
        doc_ids = (cols[None] >= self.offset[:, None]).long()
        return cos[pos], sin[pos], doc_ids

    def _column_rope(
        self, cos: torch.Tensor, sin: torch.Tensor, B: int, seq_len: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """RoPE tables (B, 1, H, Dh/2) and the columns each row sees (B, Lmax) for a one-token
        ARM decode at ``column``, all from tensors (no host-side offsets)."""
        assert self.column is not None
        cols = torch.arange(self.k[0].shape[1], device=self.column.device)  # (Lmax,)
        offset = self.offset if self.offset is not None else cols.new_zeros(B)
        pos = (self.column - offset)[:, None]  # (B, 1): the row's own position
        pos = pos.clamp(max=seq_len - 1)  # a finished row runs on, unread
        sees = (cols[None] >= offset[:, None]) & (cols[None] <= self.column)  # (B, Lmax)
        return cos[pos], sin[pos], sees.long()

    def store(
        self, layer: int, k: torch.Tensor, v: torch.Tensor, doc_ids: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Write layer ``layer``'s keys and values k, v (B, L, H, Dh) of this forward; return the
        keys and values to attend to, and the queries' and the keys' document ids."""
        B, L, H, Dh = k.shape
        if self.windows:  # per-row windows of the canvas
            pos = self.positions  # (B, L)
            at = pos[:, :, None, None].expand(B, L, H, Dh)
            if self.write is not None:
                keep = ~self.write[:, :, None, None]  # (B, L, 1, 1)
                k = torch.where(keep, self.k[layer].gather(1, at), k)
                v = torch.where(keep, self.v[layer].gather(1, at), v)
            self.k[layer].scatter_(1, at, k)
            self.v[layer].scatter_(1, at, v)
            if doc_ids is not None:  # doc_ids cover the canvas: the queries' are gathered
                return self.k[layer], self.v[layer], doc_ids.gather(1, pos), doc_ids
            return self.k[layer], self.v[layer], None, None
        if self.column is not None:  # one column, the whole cache
            for buf, new in ((self.k[layer], k), (self.v[layer], v)):
                buf.index_copy_(1, self.column, new)
            # doc_ids (B, Lmax): 1 on the columns this row sees; the query sees them
            return self.k[layer], self.v[layer], torch.ones_like(doc_ids[:, :L]), doc_ids
        start = self.length
        self.k[layer][:, start : start + L] = k
        self.v[layer][:, start : start + L] = v
        end = self.k[layer].shape[1] if self.bidirectional else start + L
        k, v = self.k[layer][:, :end], self.v[layer][:, :end]
        if doc_ids is not None and doc_ids.shape[1] != L:  # ids of the cached columns
            return k, v, doc_ids[:, start : start + L], doc_ids
        return k, v, doc_ids, None

    def advance(self, L: int) -> None:
        """After a forward of ``L`` tokens: left to right, the next one starts after them."""
        if not self.windows:
            self.length += L
