from __future__ import annotations

import math

import pytest
import torch

from mdmctl.attention import attention, resolve_backend
from mdmctl.errors import ConfigError


def naive(q, k, v, causal, doc_ids=None):
    """Plain softmax attention. (B, L, H, D) layout."""
    B, L, H, D = q.shape
    s = torch.einsum("blhd,bmhd->bhlm", q, k) / math.sqrt(D)
    allowed = torch.ones(B, 1, L, L, dtype=torch.bool)
    if causal:
        allowed &= torch.ones(L, L, dtype=torch.bool).tril()
    if doc_ids is not None:
        allowed &= (doc_ids[:, :, None] == doc_ids[:, None, :])[:, None]
    s = s.masked_fill(~allowed, float("-inf"))
    return torch.einsum("bhlm,bmhd->blhd", s.softmax(-1), v)


@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_equals_naive(causal):
    q, k, v = (torch.randn(2, 10, 3, 8) for _ in range(3))
    torch.testing.assert_close(
        attention(q, k, v, causal=causal), naive(q, k, v, causal), atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("causal", [False, True])
def test_doc_mask_equals_each_document_alone(causal):
    q, k, v = (torch.randn(1, 12, 2, 8) for _ in range(3))
    doc = torch.tensor([[0] * 5 + [1] * 4 + [2] * 3])
    packed = attention(q, k, v, causal=causal, doc_ids=doc)
    torch.testing.assert_close(packed, naive(q, k, v, causal, doc), atol=1e-5, rtol=1e-5)
    for a, b in [(0, 5), (5, 9), (9, 12)]:
        alone = attention(q[:, a:b], k[:, a:b], v[:, a:b], causal=causal)
        torch.testing.assert_close(packed[:, a:b], alone, atol=1e-5, rtol=1e-5)


def test_kv_cache_alignment():
    """Causal with fewer queries than keys: queries are the last positions."""
    q, k, v = (torch.randn(1, 6, 2, 8) for _ in range(3))
    full = attention(q, k, v, causal=True)
    tail = attention(q[:, 4:], k, v, causal=True)
    torch.testing.assert_close(tail, full[:, 4:], atol=1e-5, rtol=1e-5)


def test_backend_choice_on_cpu():
    assert resolve_backend("auto", torch.device("cpu")) == "sdpa"
    assert resolve_backend("sdpa", torch.device("cpu")) == "sdpa"
    with pytest.raises(ConfigError, match="xformers cannot run on cpu"):
        resolve_backend("xformers", torch.device("cpu"))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("packed", [False, True])
def test_xformers_matches_sdpa_on_cuda(causal, packed):
    if resolve_backend("auto", torch.device("cuda")) != "xformers":
        pytest.skip("xformers cannot run on this GPU (auto fell back to SDPA; see log)")
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (
        torch.randn(
            2, 256, 4, 64, device="cuda", dtype=torch.bfloat16, generator=g, requires_grad=True
        )
        for _ in range(3)
    )
    doc = torch.tensor([[0] * 100 + [1] * 156, [0] * 256], device="cuda") if packed else None
    a = attention(q, k, v, causal=causal, doc_ids=doc, backend="xformers")
    b = attention(q, k, v, causal=causal, doc_ids=doc, backend="sdpa")
    torch.testing.assert_close(a, b, atol=2e-2, rtol=2e-2)
    ga = torch.autograd.grad(a.float().square().sum(), (q, k, v))
    gb = torch.autograd.grad(b.float().square().sum(), (q, k, v))
    for x, y in zip(ga, gb, strict=True):
        torch.testing.assert_close(x, y, atol=5e-2, rtol=5e-2)
