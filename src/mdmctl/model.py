"""The transformer shared by the MDM and the ARM (docs/method.md §2).

LLaMA-style: pre-norm RMSNorm, rotary embeddings (rotate-half, full head dim), SwiGLU MLP
``w3(silu(w1 x) * w2 x)``, no biases, untied embeddings, final RMSNorm. The two objectives differ
only in the attention mask (MDM bidirectional, ARM causal) and, for the MDM, the head never
predicting the mask id. Init follows SMDM (GPT-NeoX style). Off by default, for the open MDM
families (``ModelConfig``): grouped-query attention, q/k/v biases and shifted logits (Dream).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from mdmctl.attention import Backend, attention
from mdmctl.config import ModelConfig
from mdmctl.kv_cache import KVCache
from mdmctl.linear_ce import linear_cross_entropy


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 (bf16 mean of squares loses precision), return in the input dtype.
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).to(x.dtype)


def rope_cache(
    seq_len: int, head_dim: int, base: float, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (seq_len, head_dim/2): the rotate-half (LLaMA / SMDM) convention, in which
    both halves of a head share the same frequencies."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim))
    freqs = torch.outer(torch.arange(seq_len, device=device).float(), inv_freq)  # (L, Dh/2)
    return freqs.cos(), freqs.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE. x: (B, L, H, Dh); cos/sin: (L, H, Dh/2), contiguous.

    Written per half, [x1·c - x2·s, x2·c + x1·s], which equals x·cos + rotate_half(x)·sin without
    building rotate_half(x); cos/sin are expanded over heads so every product runs over one
    contiguous (L, H, Dh/2) block instead of broadcasting a stride-0 head dimension.
    """
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # no-op in fp32; q/k are bf16 under autocast
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def repeat_kv(t: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(B, L, Hkv, Dh) -> (B, L, n_heads, Dh): key/value head j serves query heads
    j·g .. (j+1)·g - 1, g = n_heads / Hkv (grouped-query attention, as Llama and Qwen2 order it)."""
    B, L, Hkv, Dh = t.shape
    return t[:, :, :, None].expand(B, L, Hkv, n_heads // Hkv, Dh).reshape(B, L, n_heads, Dh)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d, self.n_heads, self.head_dim = cfg.d_model, cfg.n_heads, cfg.head_dim
        self.kv_heads = cfg.kv_heads
        self.attn_norm = RMSNorm(d, cfg.norm_eps)
        # Rows: the queries (d), then the keys and the values (kv_heads · head_dim each).
        self.wqkv = nn.Linear(d, d + 2 * self.kv_heads * self.head_dim, bias=cfg.qkv_bias)
        self.wo = nn.Linear(d, d, bias=False)
        self.mlp_norm = RMSNorm(d, cfg.norm_eps)
        self.w1 = nn.Linear(d, cfg.d_ff, bias=False)
        self.w2 = nn.Linear(d, cfg.d_ff, bias=False)
        self.w3 = nn.Linear(cfg.d_ff, d, bias=False)

    def forward(
        self,
        x,
        cos,
        sin,
        *,
        causal,
        doc_ids,
        backend,
        cache: KVCache | None,
        layer: int,
        select: torch.Tensor | None = None,
    ):
        """x (B, L, D) -> (B, L, D); with ``select`` (B, L) bool, only those positions (N, D):
        keys and values still come from every position, the rest is skipped."""
        B, L, D = x.shape
        kv = self.kv_heads * self.head_dim
        q, k, v = self.wqkv(self.attn_norm(x)).split([D, kv, kv], dim=-1)
        q = q.view(B, L, self.n_heads, self.head_dim)  # (B, L, H, Dh)
        k, v = (t.view(B, L, self.kv_heads, self.head_dim) for t in (k, v))  # (B, L, Hkv, Dh)
        q = apply_rope(q, cos, sin)
        if self.kv_heads != self.n_heads:  # the tables are the same for every head
            cos, sin = cos[..., : self.kv_heads, :], sin[..., : self.kv_heads, :]
        k = apply_rope(k, cos, sin)
        kv_doc_ids = None
        if cache is not None:  # the cache's layout decides what is written and attended to
            k, v, doc_ids, kv_doc_ids = cache.store(layer, k, v, doc_ids)
        if self.kv_heads != self.n_heads:
            k, v = repeat_kv(k, self.n_heads), repeat_kv(v, self.n_heads)
        y = attention(
            q, k, v, causal=causal, doc_ids=doc_ids, kv_doc_ids=kv_doc_ids, backend=backend
        ).reshape(B, L, D)
        if select is not None:
            x, y = x[select], y[select]  # (N, D)
        x = x + self.wo(y)
        h = self.mlp_norm(x)
        return x + self.w3(F.silu(self.w1(h)) * self.w2(h))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig, *, backend: Backend = "sdpa") -> None:
        super().__init__()
        if cfg.vocab_size < 1:
            raise ValueError("ModelConfig.vocab_size must be set (from the tokenizer)")
        self.cfg, self.backend = cfg, backend
        self.causal = cfg.objective == "arm"
        self.activation_checkpointing = False
        """Training only: recompute each block in backward instead of keeping its activations."""
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        cos, sin = rope_cache(cfg.seq_len, cfg.head_dim, cfg.rope_base)  # (Lmax, Dh/2)
        # Expanded over heads once, so a slice [start:start+L] is a contiguous (L, H, Dh/2) block.
        shape = (cfg.seq_len, cfg.n_heads, cfg.head_dim // 2)
        self.register_buffer("rope_cos", cos[:, None].expand(shape).contiguous(), persistent=False)
        self.register_buffer("rope_sin", sin[:, None].expand(shape).contiguous(), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        d, n = self.cfg.d_model, self.cfg.n_layers
        std = math.sqrt(2.0 / (5 * d))
        for name, p in self.named_parameters():
            if name.endswith(".bias"):
                nn.init.zeros_(p)
            elif p.ndim == 1:
                nn.init.ones_(p)
            elif name.endswith(("wo.weight", "w3.weight")):
                nn.init.normal_(p, std=1.0 / (math.sqrt(d) * n))
            else:
                nn.init.normal_(p, std=std)

    def forward(
        self,
        idx: torch.Tensor,
        *,
        doc_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        select: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """idx (B, L) -> logits (B, L, V) in fp32. The MDM's mask column is -inf.

        With a cache, ``doc_ids`` may cover the cache's columns instead of the input's (MDM
        windows: the canvas; left-padded ARM rows: [0, length + L), built here from the offsets);
        the queries' ids are then taken from them.

        ``select`` (B, L) bool: return logits only at those positions, (N, V) in row-major order.
        Scoring needs a few positions of long rows; the head is skipped everywhere else.

        ``cfg.shift_logits`` (Dream): position i's logits come from position i-1's output. With
        a bidirectional (MDM canvas) cache each position's own output is returned unshifted: a
        window's first position reads a position the window may not hold, so the cache's owner
        (``sampling/cache.py``) shifts over the whole canvas."""
        B, L = idx.shape
        if self.cfg.shift_logits and cache is not None and self.causal:  # an ARM: left to right
            raise ValueError("a model with shifted logits (Dream) has no left-to-right KV cache")
        shift = self.cfg.shift_logits and cache is None
        span = L if cache is None else cache.span(L)
        if span > self.cfg.seq_len:
            raise ValueError(f"sequence of {span} tokens exceeds seq_len={self.cfg.seq_len}")
        if cache is None:
            cos, sin = self.rope_cos[:L], self.rope_sin[:L]
        else:  # positions (and, for left-padded rows, document ids) from the cache's layout
            cos, sin, doc_ids = cache.rope(
                self.rope_cos, self.rope_sin, B, L, doc_ids, self.cfg.seq_len
            )
        # cos, sin: (L, H, Dh/2), or per row (B, L, H, Dh/2)
        x = self.tok_emb(idx)  # (B, L, D)
        last = len(self.blocks) - 1
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        for i, block in enumerate(self.blocks):
            kwargs = dict(
                causal=self.causal,
                doc_ids=doc_ids,
                backend=self.backend,
                cache=cache,
                layer=i,
                # Scoring reads a few positions: the last block's output projection and MLP
                # (three quarters of its cost) run only there.
                select=select if i == last and not shift else None,
            )
            if recompute:
                # Non-reentrant: works with DDP and FSDP2 (whose hooks see the recomputation)
                # and keeps parameter names unchanged (no checkpoint-wrapper module).
                x = torch.utils.checkpoint.checkpoint(
                    block, x, cos, sin, use_reentrant=False, **kwargs
                )
            else:
                x = block(x, cos, sin, **kwargs)
            # x: (B, L, D); after the last block with select: (N, D)
        if cache is not None:
            cache.advance(L)
        if shift:  # each position reads the output before it; the first keeps its own
            x = torch.cat([x[:, :1], x[:, :-1]], dim=1)  # (B, L, D)
            x = x[select] if select is not None else x
        if targets is not None:
            banned = self.cfg.mask_id if self.cfg.objective == "mdm" else None
            h = self.norm(x).reshape(-1, self.cfg.d_model)  # (N, D)
            return linear_cross_entropy(h, self.head.weight, targets, weights, banned=banned)
        logits = self.head(self.norm(x)).float()  # (B, L, V) or (N, V); fp32 for log-softmax
        if self.cfg.objective == "mdm":
            # The mask is an input-only token: x0 never contains it, so the head never predicts it.
            logits[..., self.cfg.mask_id] = float("-inf")
        return logits

    def new_cache(
        self, batch: int, device, dtype: torch.dtype, length: int | None = None
    ) -> KVCache:
        """An empty cache of ``length`` positions (default: the context): left to right for an
        ARM, bidirectional (the MDM's canvas, sampling/cache.py) for an MDM."""
        shape = (batch, length or self.cfg.seq_len, self.cfg.kv_heads, self.cfg.head_dim)
        z = [torch.zeros(shape, device=device, dtype=dtype) for _ in self.blocks]
        return KVCache(k=z, v=[t.clone() for t in z], bidirectional=not self.causal)
