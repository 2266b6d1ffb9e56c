"""One attention function for the whole package.

Backends: xformers ``memory_efficient_attention`` on CUDA (packed documents become a
``BlockDiagonalMask`` over the flattened batch), PyTorch ``scaled_dot_product_attention`` everywhere
else. ``auto`` picks xformers only on CUDA and only after a tiny probe call succeeds: xformers can
import fine and still refuse every CUDA input (e.g. its C extension built against another CUDA
runtime). The choice is made once per device and logged in one line.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
import torch.nn.functional as F

from mdmctl.errors import ConfigError

Backend = Literal["xformers", "sdpa"]
log = logging.getLogger("mdmctl")

_resolved: dict[tuple[str, str], Backend] = {}
_probe_error: dict[str, str] = {}


def _probe_xformers(device: torch.device) -> str | None:
    """None if xformers runs on ``device``; otherwise the reason it does not."""
    if device.type != "cuda":
        return "xformers needs a CUDA device"
    try:
        import xformers.ops as xops  # noqa: PLC0415 (lazy: optional fast path)

        q = torch.randn(1, 8, 2, 64, device=device, dtype=torch.bfloat16)
        xops.memory_efficient_attention(q, q, q)
        return None
    except Exception as e:  # ImportError, NotImplementedError, RuntimeError: all mean "cannot run"
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"


def resolve_backend(requested: str, device: torch.device) -> Backend:
    """Pick the kernel for ``device`` once; 'xformers' that cannot run is a ConfigError."""
    key = (requested, device.type)
    if key in _resolved:
        return _resolved[key]
    if requested not in ("auto", "xformers", "sdpa"):
        raise ConfigError(f"--attention: expected auto|xformers|sdpa, got {requested!r}")
    if requested == "sdpa":
        choice: Backend = "sdpa"
    else:
        err = _probe_xformers(device)
        if err is None:
            choice = "xformers"
        elif requested == "xformers":
            raise ConfigError(f"--attention xformers cannot run on {device.type}: {err}")
        else:
            choice = "sdpa"
            if device.type == "cuda":
                log.warning("attention: xformers unavailable (%s); using PyTorch SDPA", err)
    log.info("attention: %s on %s", choice, device.type)
    _resolved[key] = choice
    return choice


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool,
    doc_ids: torch.Tensor | None = None,
    kv_doc_ids: torch.Tensor | None = None,
    backend: Backend = "sdpa",
) -> torch.Tensor:
    """Multi-head attention. q: (B, Lq, H, Dh); k, v: (B, Lk, H, Dh) -> (B, Lq, H, Dh).

    ``doc_ids`` (B, L), contiguous runs of equal ids: tokens attend only within their run (packed
    documents). ``causal`` with Lq < Lk aligns the queries to the end of the keys (KV-cache decode).
    ``kv_doc_ids`` (B, Lk): the keys' ids when they differ from the queries' (an MDM window over a
    cached canvas); then ``doc_ids`` are the queries' (B, Lq).
    """
    if kv_doc_ids is not None:
        # A query window against the whole canvas: a dense mask, which xformers' block-diagonal
        # biases cannot express, so SDPA on every device.
        return _sdpa(q, k, v, causal=causal, doc_ids=doc_ids, kv_doc_ids=kv_doc_ids)
    if backend == "xformers":
        return _xformers(q, k, v, causal=causal, doc_ids=doc_ids)
    return _sdpa(q, k, v, causal=causal, doc_ids=doc_ids)


def _sdpa(q, k, v, *, causal: bool, doc_ids, kv_doc_ids=None) -> torch.Tensor:
    Lq, Lk = q.shape[1], k.shape[1]
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, L, H, Dh) -> (B, H, L, Dh)
    mask = None
    if doc_ids is not None:
        keys = doc_ids if kv_doc_ids is None else kv_doc_ids
        mask = (doc_ids[:, :, None] == keys[:, None, :])[:, None]  # (B, 1, Lq, Lk)
    if causal and (mask is not None or Lq != Lk):
        tri = torch.ones(Lq, Lk, dtype=torch.bool, device=q.device).tril(Lk - Lq)  # (Lq, Lk)
        mask = tri if mask is None else mask & tri
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None)
    return y.transpose(1, 2)  # (B, H, Lq, Dh) -> (B, Lq, H, Dh)


def _xformers(q, k, v, *, causal: bool, doc_ids: torch.Tensor | None) -> torch.Tensor:
    import xformers.ops as xops
    from xformers.ops import fmha

    B, Lq, H, Dh = q.shape
    if doc_ids is None:
        bias = None
        if causal:
            bias = (
                fmha.attn_bias.LowerTriangularFromBottomRightMask()
                if Lq != k.shape[1]
                else (fmha.attn_bias.LowerTriangularMask())
            )
        return xops.memory_efficient_attention(q, k, v, attn_bias=bias)
    if Lq != k.shape[1]:
        raise ValueError("doc_ids with a KV cache is not supported")
    # Run lengths per row -> one block-diagonal mask over the flattened (1, B·L) sequence.
    change = torch.ones_like(doc_ids, dtype=torch.bool)
    change[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    starts = change.flatten().nonzero().flatten()
    seqlens = torch.diff(torch.cat([starts, starts.new_tensor([B * Lq])])).tolist()
    cls = fmha.attn_bias.BlockDiagonalCausalMask if causal else fmha.attn_bias.BlockDiagonalMask
    bias = cls.from_seqlens(seqlens)
    flat = [t.reshape(1, B * Lq, H, Dh) for t in (q, k, v)]
    return xops.memory_efficient_attention(*flat, attn_bias=bias).reshape(B, Lq, H, Dh)
