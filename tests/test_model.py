from __future__ import annotations

import pytest
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


def test_matches_hf_llama_with_the_same_weights():
    """Architecture check against transformers' LlamaForCausalLM (RoPE rotate-half, RMSNorm,
    SwiGLU, untied head): same weights, same logits."""
    pytest.importorskip("transformers")
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from train_throughput import hf_llama

    cfg = ModelConfig.from_name("tiny", objective="arm", vocab_size=120, seq_len=32)
    ours = Transformer(cfg).eval()
    hf = hf_llama(cfg).eval()
    d = cfg.d_model
    state = {
        "model.embed_tokens.weight": ours.tok_emb.weight,
        "lm_head.weight": ours.head.weight,
        "model.norm.weight": ours.norm.weight,
    }
    for i, b in enumerate(ours.blocks):
        p = f"model.layers.{i}."
        q, k, v = b.wqkv.weight.split(d)
        state.update(
            {
                p + "self_attn.q_proj.weight": q,
                p + "self_attn.k_proj.weight": k,
                p + "self_attn.v_proj.weight": v,
                p + "self_attn.o_proj.weight": b.wo.weight,
                p + "mlp.gate_proj.weight": b.w1.weight,
                p + "mlp.up_proj.weight": b.w2.weight,
                p + "mlp.down_proj.weight": b.w3.weight,
                p + "input_layernorm.weight": b.attn_norm.weight,
                p + "post_attention_layernorm.weight": b.mlp_norm.weight,
            }
        )
    hf.load_state_dict(state, strict=True)
    x = torch.randint(0, 120, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf(input_ids=x).logits, atol=1e-4, rtol=1e-4)


def test_select_returns_the_full_forward_at_those_positions(tiny_cfg):
    """Scoring's shortcut (the last block's projection and MLP only at selected positions)
    changes nothing at the selected positions, also with a padding segment."""
    import torch

    from mdmctl.model import Transformer

    m = Transformer(tiny_cfg).eval()
    x = torch.randint(0, 90, (3, 12))
    docs = torch.zeros_like(x)
    docs[0, 9:] = 1
    select = torch.rand(3, 12) < 0.3
    select[1, 4] = True
    with torch.no_grad():
        full = m(x, doc_ids=docs)
        part = m(x, doc_ids=docs, select=select)
    assert part.shape == (int(select.sum()), tiny_cfg.vocab_size)
    torch.testing.assert_close(part, full[select], atol=1e-5, rtol=1e-5)
