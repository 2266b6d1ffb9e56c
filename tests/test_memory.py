"""Memory planning: the micro-batch is chosen (or refused) before any tensor exists."""

from __future__ import annotations

import json

import pytest

from mdmctl import memory
from mdmctl.config import ModelConfig
from mdmctl.errors import ConfigError

from .conftest import run


def _cfg(**kw):
    return ModelConfig.from_name("mini", vocab_size=4096, mask_id=4095, **kw)


def test_estimate_grows_with_tokens_and_checkpointing_saves():
    cfg = _cfg()
    a, b = memory.estimate_training(cfg, 8), memory.estimate_training(cfg, 16)
    assert b.activations == 2 * a.activations and b.states == a.states
    ac = memory.estimate_training(cfg, 16, activation_checkpointing=True)
    assert ac.activations < b.activations / 2
    assert memory.estimate_training(cfg, 16, shards=2).states == b.states // 2


def test_the_chunked_loss_head_plans_one_chunk_of_logits():
    cfg = ModelConfig.from_name("small", vocab_size=32_000, mask_id=31_999)
    full = memory.estimate_training(cfg, 8)
    chunked = memory.estimate_training(cfg, 8, loss_head="chunked")
    assert memory.estimate_training(cfg, 8, loss_head="scored") == full  # t near 1 masks all
    assert chunked.activations == full.activations
    # 256 rows x 32,000 twice, plus the head's input and weight gradients (2048 + 32,000) x 192
    assert chunked.logits == (2 * 256 * 32_000 + (8 * 256 + 32_000) * 192) * 4
    assert chunked.logits < full.logits / 8


def test_auto_picks_the_largest_divisor_that_fits():
    cfg = _cfg()
    avail = int(memory.estimate_training(cfg, 16).total / memory.HEADROOM) + 1
    micro, est = memory.plan_micro_batch(cfg, 64, None, avail)
    assert micro == 16 and est.total <= avail
    micro, _ = memory.plan_micro_batch(cfg, 48, None, avail)  # 16 divides 48
    assert micro == 16


def test_a_requested_micro_batch_that_does_not_fit_fails_with_the_options():
    cfg = _cfg()
    avail = int(memory.estimate_training(cfg, 8).total / memory.HEADROOM) + 1
    with pytest.raises(ConfigError, match=r"--micro-batch-size 8 \(or auto\) would fit"):
        memory.plan_micro_batch(cfg, 64, 32, avail)
    with pytest.raises(ConfigError, match="even a micro-batch of 1 needs"):
        memory.plan_micro_batch(cfg, 64, None, 10 * 2**20)


def test_pretrain_chooses_or_refuses_before_training(tmp_path, corpus_dir, monkeypatch):
    # A machine with little memory: the tiny model's full batch does not fit, a quarter does.
    from mdmctl.data.shards import read_manifest, tokenizer_info

    vocab = tokenizer_info(read_manifest(corpus_dir)).vocab_size
    cfg = ModelConfig.from_name("tiny", seq_len=32, vocab_size=vocab, mask_id=vocab - 1)
    avail = int(memory.estimate_training(cfg, 4, loss_head="chunked").total / memory.HEADROOM) + 1
    monkeypatch.setattr(memory, "available_bytes", lambda *a: avail)
    common = ["--size", "tiny", "--seq-len", "32", "--steps", "1", "--batch-size", "16",
              "--data", corpus_dir, "--show-samples", "0", "--device", "cpu"]  # fmt: skip
    r = run("pretrain", *common, "--micro-batch-size", "16", "--out", tmp_path / "a", code=2)
    assert "memory: a micro-batch of 16 x 32 tokens needs about" in " ".join(r.stderr.split())
    assert not (tmp_path / "a" / "checkpoints").exists()
    run("pretrain", *common, "--out", tmp_path / "b")
    resolved = json.loads((tmp_path / "b" / "config.json").read_text())["resolved"]
    assert resolved["micro_batch_size"] == 4


def test_an_eval_batch_that_does_not_fit_fails_naming_one_that_does(ckpts, monkeypatch):
    from mdmctl.checkpoint import load_checkpoint

    mc = load_checkpoint(ckpts["mdm"]).model_cfg
    avail = int(memory.estimate_inference(mc, 4) / memory.HEADROOM) + 1
    monkeypatch.setattr(memory, "available_bytes", lambda *a: avail)
    r = run("sample", "--checkpoint", ckpts["mdm"], "--length", "4", "--batch-size", "8",
            "--num-samples", "8", code=2)  # fmt: skip
    assert "--batch-size 4 would fit" in " ".join(r.stderr.split())
    run("sample", "--checkpoint", ckpts["mdm"], "--length", "4", "--batch-size", "4")
    r = run("eval", "ppl", "--checkpoint", ckpts["mdm"], "--batch-size", "8", code=2)
    assert "--batch-size 4 would fit" in " ".join(r.stderr.split())


def _families_8b():
    """LLaDA 8B's and Dream 7B's shapes, read from their config.json fields."""
    from dataclasses import replace
    from pathlib import Path

    from mdmctl.interop import families

    llada = families.llada_config(
        {"d_model": 4096, "n_heads": 32, "n_kv_heads": 32, "n_layers": 32,
         "mlp_hidden_size": 12288, "rope_theta": 500000.0, "max_sequence_length": 4096,
         "mask_token_id": 126336}, Path("config.json"), None)  # fmt: skip
    dream = families.dream_config(
        {"hidden_size": 3584, "num_attention_heads": 28, "num_key_value_heads": 4,
         "num_hidden_layers": 28, "intermediate_size": 18944, "rope_theta": 1e6,
         "max_position_embeddings": 131072, "mask_token_id": 151666}, Path("config.json"),
        None)  # fmt: skip
    return replace(llada, vocab_size=126464), replace(dream, vocab_size=152064)


def test_7_to_8b_shapes_plan_in_bf16_and_a_cpu_says_what_it_cannot(monkeypatch):
    llada, dream = _families_8b()
    # Dream 7B is Qwen2.5-7B's network: 7,615,616,512 parameters, as Qwen publishes
    assert dream.n_params == 7_615_616_512
    assert 8.0e9 < llada.n_params < 8.05e9  # LLaDA 8B
    GiB = 2**30
    for cfg in (llada, dream):
        # bf16 halves the weights; the rest (fp32 logits at 4096 x 126-152k) is per row
        bf16, fp32 = (memory.estimate_inference(cfg, 1, act_bytes=b) for b in (2, 4))
        assert fp32 - bf16 > 14 * GiB
        monkeypatch.setattr(memory, "available_bytes", lambda *a: 80 * GiB)  # an H100
        memory.check_weights_fit(cfg, 2, "cuda")
        memory.check_eval_batch(cfg, 2, "cuda", weight_bytes=2)
        with pytest.raises(ConfigError, match=r"--batch-size \d+ would fit"):
            memory.check_eval_batch(cfg, 64, "cuda", weight_bytes=2)
        monkeypatch.setattr(memory, "available_bytes", lambda *a: 24 * GiB)
        with pytest.raises(ConfigError, match="--dtype bf16 would fit"):
            memory.check_weights_fit(cfg, 4, "cpu")
        monkeypatch.setattr(memory, "available_bytes", lambda *a: 8 * GiB)  # a laptop
        with pytest.raises(ConfigError, match=r"B parameters need .* run it on a GPU"):
            memory.check_weights_fit(cfg, 2, "cpu")
