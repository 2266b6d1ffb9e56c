"""The model features the open MDM families need (issue 31): grouped-query attention and q/k/v
biases (Dream), shifted logits (Dream), checked against a reference block written here; the
default configuration's path unchanged."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from mdmctl.config import ModelConfig
from mdmctl.diffusion import masked_loss
from mdmctl.errors import ConfigError
from mdmctl.model import Transformer, repeat_kv

V = 61


def _cfg(**kw) -> ModelConfig:
    base = dict(objective="mdm", n_layers=2, d_model=48, n_heads=6, d_ff=96, seq_len=24,
                vocab_size=V, mask_id=V - 1)  # fmt: skip
    return ModelConfig(**{**base, **kw})


def _model(cfg: ModelConfig, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    m = Transformer(cfg).eval()
    with torch.no_grad():  # biases are zero at init; give them values the test can see
        for name, p in m.named_parameters():
            if name.endswith(".bias"):
                p.normal_(std=0.5)
    return m


def _reference_block(block, x, cfg: ModelConfig) -> torch.Tensor:
    """One block written out: separate q/k/v projections with biases, rotate-half RoPE at the
    configured base, each query head reading key/value head h // (H / Hkv), softmax attention
    over every position (bidirectional), SwiGLU."""
    B, L, D = x.shape
    H, Hkv, Dh = cfg.n_heads, cfg.kv_heads, cfg.head_dim
    W = block.wqkv.weight
    b = block.wqkv.bias if block.wqkv.bias is not None else torch.zeros(W.shape[0])
    h = block.attn_norm(x)
    q = (h @ W[:D].t() + b[:D]).view(B, L, H, Dh)
    k = (h @ W[D : D + Hkv * Dh].t() + b[D : D + Hkv * Dh]).view(B, L, Hkv, Dh)
    v = (h @ W[D + Hkv * Dh :].t() + b[D + Hkv * Dh :]).view(B, L, Hkv, Dh)
    inv = 1.0 / cfg.rope_base ** (torch.arange(0, Dh, 2).float() / Dh)
    ang = torch.arange(L).float()[:, None] * inv  # (L, Dh/2)
    cos, sin = torch.cat([ang.cos(), ang.cos()], -1), torch.cat([ang.sin(), ang.sin()], -1)

    def rope(t):
        t1, t2 = t[..., : Dh // 2], t[..., Dh // 2 :]
        return t * cos[:, None] + torch.cat([-t2, t1], -1) * sin[:, None]

    q, k = rope(q), rope(k)
    out = torch.empty(B, L, H, Dh)
    for head in range(H):
        kv = head // (H // Hkv)
        s = q[:, :, head] @ k[:, :, kv].transpose(1, 2) / math.sqrt(Dh)  # (B, L, L)
        out[:, :, head] = s.softmax(-1) @ v[:, :, kv]
    x = x + block.wo(out.reshape(B, L, D))
    m = block.mlp_norm(x)
    return x + block.w3(F.silu(block.w1(m)) * block.w2(m))


@pytest.mark.parametrize("kv_heads,bias", [(None, False), (2, False), (1, True), (3, True)])
def test_block_matches_the_reference(kv_heads, bias):
    cfg = _cfg(n_kv_heads=kv_heads, qkv_bias=bias, rope_base=500_000.0)
    m = _model(cfg)
    x = torch.randn(2, 24, 48, generator=torch.Generator().manual_seed(1))
    block = m.blocks[0]
    ours = block(x, m.rope_cos[:24], m.rope_sin[:24], causal=False, doc_ids=None,
                 backend="sdpa", cache=None, layer=0)  # fmt: skip
    torch.testing.assert_close(ours, _reference_block(block, x, cfg), atol=1e-5, rtol=1e-5)


def test_parameter_shapes_and_count():
    cfg = _cfg(n_kv_heads=2, qkv_bias=True)
    m = Transformer(cfg)
    assert m.blocks[0].wqkv.weight.shape == (48 + 2 * 2 * 8, 48)
    assert m.blocks[0].wqkv.bias.shape == (48 + 2 * 2 * 8,)
    assert torch.equal(Transformer(cfg).blocks[0].wqkv.bias, torch.zeros(80))  # zero at init
    n = sum(p.numel() for p in m.parameters()) - 2 * V * 48
    assert n == cfg.n_params_non_embedding
    plain = _cfg()
    assert plain.kv_heads == 6 and Transformer(plain).blocks[0].wqkv.bias is None
    assert Transformer(plain).blocks[0].wqkv.weight.shape == (3 * 48, 48)


def test_default_and_explicit_full_heads_give_the_same_model():
    a, b = _model(_cfg()), _model(_cfg(n_kv_heads=6))
    x = torch.randint(0, V - 1, (2, 24), generator=torch.Generator().manual_seed(2))
    assert torch.equal(a(x), b(x))


def test_bad_key_value_heads_are_refused():
    with pytest.raises(ConfigError, match="model.n_kv_heads: 4 must be >= 1 and divide"):
        _cfg(n_kv_heads=4)
    with pytest.raises(ConfigError, match="model.n_kv_heads"):
        _cfg(n_kv_heads=0)


def test_kv_cache_with_grouped_query_attention():
    cfg = _cfg(objective="arm", mask_id=-1, n_kv_heads=2, qkv_bias=True)
    m = _model(cfg)
    x = torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(3))
    full = m(x)
    cache = m.new_cache(2, "cpu", torch.float32)
    assert cache.k[0].shape[2] == 2  # key/value heads, not query heads
    parts = [m(x[:, :7], cache=cache)] + [m(x[:, i : i + 1], cache=cache) for i in range(7, 12)]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)


def test_shifted_logits_read_the_previous_position():
    plain, shifted = _model(_cfg(n_kv_heads=2)), _model(_cfg(n_kv_heads=2, shift_logits=True))
    shifted.load_state_dict(plain.state_dict())
    x = torch.randint(0, V - 1, (2, 24), generator=torch.Generator().manual_seed(4))
    a, b = plain(x), shifted(x)
    assert torch.equal(b[:, 1:], a[:, :-1]) and torch.equal(b[:, 0], a[:, 0])
    select = torch.rand(2, 24, generator=torch.Generator().manual_seed(5)) < 0.4
    torch.testing.assert_close(shifted(x, select=select), b[select])
    arm = _model(_cfg(objective="arm", mask_id=-1, shift_logits=True))
    with pytest.raises(ValueError, match="no left-to-right KV cache"):
        arm(x, cache=arm.new_cache(2, "cpu", torch.float32))


@pytest.mark.parametrize("mode", ["prefix", "dual", "delayed"])
def test_kv_cache_with_shifted_logits_reads_the_column_before(mode):
    """Right after a refresh the kept keys and values are the fresh ones, so a cached forward of
    the same canvas gives the uncached logits at every column the sampler reads: the block's
    masked columns, the first of which reads the prompt's last output (run as a query)."""
    from mdmctl.sampling.cache import CachedMDM

    m = _model(_cfg(n_kv_heads=2, qkv_bias=True, shift_logits=True))
    g = torch.Generator().manual_seed(7)
    x = torch.randint(0, V - 1, (2, 20), generator=g)
    x[:, 8:] = V - 1  # prompt 8 tokens, then the masked generation
    x[1, 13] = 5  # a token revealed inside the block
    own = torch.zeros(2, 20, dtype=torch.bool)
    own[:, 8:14] = True  # the block: columns 8..13
    cached = CachedMDM(m, mode, mask_id=V - 1, shift=True)
    cached.begin_block(own)
    want = m(x)  # (B, L, V) shifted by the model itself
    first = cached(x, None)
    torch.testing.assert_close(first, want, atol=1e-5, rtol=1e-5)
    again = cached(x, None)  # a window forward on kept keys and values
    assert cached.forwards_window == 1
    read = (x == V - 1) & own
    torch.testing.assert_close(again[read], want[read], atol=1e-5, rtol=1e-5)
    plain = CachedMDM(m, mode, mask_id=V - 1, shift=False)  # without the shift: wrong logits
    plain.begin_block(own)
    plain(x, None)
    assert not torch.allclose(plain(x, None)[read], want[read], atol=1e-3)


@pytest.mark.parametrize("kw", [dict(n_kv_heads=2, qkv_bias=True), dict(shift_logits=True)])
def test_loss_heads_agree_on_the_new_features(kw):
    m = _model(replace(_cfg(), **kw))
    g = torch.Generator().manual_seed(6)
    x0 = torch.randint(0, V - 1, (3, 24), generator=g)
    masked = torch.rand(3, 24, generator=g) < 0.5
    p = torch.tensor([0.3, 0.5, 0.9])
    xt = torch.where(masked, V - 1, x0)
    out = {}
    for head in ("full", "chunked"):
        m.zero_grad(set_to_none=True)
        loss = masked_loss(m, xt, x0, masked, p, x0.numel(), head)
        loss.backward()
        out[head] = (loss.detach(), [q.grad.clone() for q in m.parameters()])
    torch.testing.assert_close(out["chunked"][0], out["full"][0])
    for g_full, g_chunked in zip(out["full"][1], out["chunked"][1], strict=True):
        torch.testing.assert_close(g_chunked, g_full, atol=1e-6, rtol=1e-4)


def test_repeat_kv_order():
    t = torch.arange(2 * 3).float().view(1, 1, 2, 3)  # two key/value heads
    r = repeat_kv(t, 4)
    assert [int(r[0, 0, h, 0]) for h in range(4)] == [0, 0, 3, 3]
