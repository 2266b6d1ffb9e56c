"""Training and validation batches from token shards.

The token stream of each shard is cut into non-overlapping ``seq_len`` windows (N in all; windows
never span shards). Epoch e visits them in ``randperm(N)`` seeded by ``mix(seed, e)``; global batch g
is ``perm[g·G:(g+1)·G]`` and the tail is dropped. Loader state is ``(epoch, batches consumed in
epoch)``, so resume never replays data. Shards are read lazily through ``safe_open`` slices.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch
from safetensors import safe_open

from mdmctl.data.shards import CorpusManifest
from mdmctl.errors import CorpusIntegrityError, DataError


def mix(*ints: int) -> int:
    """Stable 63-bit seed from integers (blake2b; Python's hash() is salted per process)."""
    h = hashlib.blake2b(
        b"".join(int(i).to_bytes(8, "little", signed=True) for i in ints), digest_size=8
    )
    return int.from_bytes(h.digest(), "little") & ((1 << 63) - 1)


@dataclass
class Batch:
    x0: torch.Tensor  # (B, L) int64 token ids
    doc_ids: torch.Tensor  # (B, L) int64 document index within the window (0, 0, 1, 1, 1, ...)


class TokenWindows:
    """Random access to the ``seq_len`` windows of one split."""

    def __init__(self, manifest: CorpusManifest, split: str, seq_len: int) -> None:
        self.seq_len = seq_len
        self.vocab_size = int(manifest.meta["tokenizer"]["vocab_size"])
        self._names = [manifest.path / s["file"] for s in manifest.meta["splits"][split]["shards"]]
        self._files = []
        self._index: list[tuple[int, int]] = []  # window -> (shard, start)
        self._offsets: list[torch.Tensor] = []
        for si, shard in enumerate(manifest.meta["splits"][split]["shards"]):
            f = safe_open(str(manifest.path / shard["file"]), framework="pt")
            self._files.append(f.get_slice("tokens"))
            self._offsets.append(f.get_tensor("doc_offsets"))
            n = shard["tokens"] // seq_len
            self._index.extend((si, i * seq_len) for i in range(n))

    def __len__(self) -> int:
        return len(self._index)

    def token_counts(self, chunk: int = 1 << 22) -> torch.Tensor:
        """(vocab_size,) float64 count of every token id of the split (all of it, not only the
        whole windows), read ``chunk`` tokens at a time."""
        counts = torch.zeros(self.vocab_size, dtype=torch.float64)
        for name, f in zip(self._names, self._files, strict=True):
            for s in range(0, f.get_shape()[0], chunk):
                x = f[s : s + chunk].to(torch.int64)
                if len(x) and int(x.max()) >= self.vocab_size:
                    raise CorpusIntegrityError(
                        f"{name}: token id {int(x.max())} near position {s} is outside the "
                        f"vocabulary (size {self.vocab_size}); 'mdmctl pretrain --verify-data' "
                        "checks every shard up front"
                    )
                counts += torch.bincount(x, minlength=self.vocab_size).double()
        return counts

    def window(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens (L,), doc_ids (L,)) of window i."""
        b = self.batch([i])
        return b.x0[0], b.doc_ids[0]

    def batch(self, indices: list[int]) -> Batch:
        """The windows ``indices``, stacked. The checks and document ids run once per batch (per
        shard for the ids), not once per window: a per-window loop cost the built-in run about
        a tenth of its step time (docs/benchmarks.md, "Where a step's time goes")."""
        L = self.seq_len
        where = [self._index[i] for i in indices]  # (shard, start) per row
        x = torch.stack([self._files[si][start : start + L] for si, start in where]).long()
        bad = x.max(dim=1).values >= self.vocab_size  # (B,)
        if bool(bad.any()):
            # An embedding lookup would fail with a bare IndexError (or a CUDA assert) instead.
            row = int(bad.nonzero()[0])
            si, start = where[row]
            raise CorpusIntegrityError(
                f"{self._names[si]}: token id {int(x[row].max())} near position {start} is outside "
                f"the vocabulary (size {self.vocab_size}); 'mdmctl pretrain --verify-data' checks "
                "every shard up front"
            )
        shard = torch.tensor([si for si, _ in where])  # (B,)
        pos = torch.tensor([start for _, start in where])[:, None] + torch.arange(L)  # (B, L)
        doc = torch.empty_like(pos)
        for si in shard.unique().tolist():
            rows = shard == si
            doc[rows] = torch.searchsorted(self._offsets[si], pos[rows], right=True)
        return Batch(x, doc - doc[:, :1])


class TrainLoader:
    """Deterministic epoch-permuted global batches with an exact, replay-free ``state_dict``."""

    def __init__(self, windows: TokenWindows, global_batch: int, seed: int) -> None:
        if len(windows) < global_batch:
            raise DataError(
                f"training split has {len(windows)} windows of {windows.seq_len} tokens, fewer than "
                f"one global batch of {global_batch}; use a smaller --batch-size or --seq-len"
            )
        self.windows, self.global_batch, self.seed = windows, global_batch, seed
        self.epoch, self.consumed = 0, 0
        self._perm = self._permutation(0)

    def _permutation(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(mix(self.seed, epoch))
        return torch.randperm(len(self.windows), generator=g)

    @property
    def batches_per_epoch(self) -> int:
        return len(self.windows) // self.global_batch

    def next_indices(self) -> list[int]:
        if self.consumed >= self.batches_per_epoch:
            self.epoch, self.consumed = self.epoch + 1, 0
            self._perm = self._permutation(self.epoch)
        g = self.consumed
        self.consumed += 1
        return self._perm[g * self.global_batch : (g + 1) * self.global_batch].tolist()

    def next_batch(self) -> Batch:
        return self.windows.batch(self.next_indices())

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "consumed": self.consumed,
            "seed": self.seed,
            "global_batch": self.global_batch,
            "windows": len(self.windows),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("windows") != len(self.windows):
            from mdmctl.errors import CompatibilityError

            raise CompatibilityError(
                f"cannot resume: the checkpoint's corpus had {state.get('windows')} training windows, "
                f"this corpus has {len(self.windows)}"
            )
        self.epoch, self.consumed = int(state["epoch"]), int(state["consumed"])
        self._perm = self._permutation(self.epoch)
