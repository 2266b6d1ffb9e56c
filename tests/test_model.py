from __future__ import annotations

import torch

from mdmctl.config import ModelConfig
from mdmctl.model import Transformer


def test_shapes_and_mask_never_predicted(tiny_cfg):
    m = Transformer(tiny_cfg)
    x = torch.randint(0, 96, (2, 32))
    logits = m(x)
    assert logits.shape == (2, 32, 97) and logits.dtype == torch.float32
    assert torch.isneginf(logits[..., 96]).all()
    assert torch.isfinite(logits[..., :96]).all()


def test_parameter_count_matches_formula(tiny_cfg):
    m = Transformer(tiny_cfg)
    total = sum(p.numel() for p in m.parameters())
    emb = m.tok_emb.weight.numel() + m.head.weight.numel()
    assert total - emb == tiny_cfg.n_params_non_embedding
    assert total == tiny_cfg.n_params


def test_arm_is_causal_and_mdm_is_not(tiny_cfg):
    x = torch.randint(0, 96, (1, 32))
    y = x.clone()
    y[0, 20] = (y[0, 20] + 1) % 96
    arm = Transformer(ModelConfig.from_name("tiny", objective="arm", vocab_size=97, seq_len=32))
    torch.testing.assert_close(arm(x)[:, :20], arm(y)[:, :20])
    mdm = Transformer(tiny_cfg)
    assert not torch.allclose(mdm(x)[:, :20], mdm(y)[:, :20])


def test_kv_cache_matches_full_forward():
    cfg = ModelConfig.from_name("tiny", objective="arm", vocab_size=50, seq_len=32)
    m = Transformer(cfg).eval()
    x = torch.randint(0, 50, (2, 12))
    full = m(x)
    cache = m.new_cache(2, "cpu", torch.float32)
    parts = [m(x[:, :7], cache=cache)] + [m(x[:, i : i + 1], cache=cache) for i in range(7, 12)]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)


def test_init_scales(tiny_cfg):
    m = Transformer(tiny_cfg)
    d, n = tiny_cfg.d_model, tiny_cfg.n_layers
    assert abs(m.blocks[0].wqkv.weight.std().item() - (2 / (5 * d)) ** 0.5) < 0.02
    assert abs(m.blocks[0].wo.weight.std().item() - 1 / (d**0.5 * n)) < 0.01
    assert torch.equal(m.norm.weight, torch.ones(d))
