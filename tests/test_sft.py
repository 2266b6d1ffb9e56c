from __future__ import annotations

import json

import pytest
import torch

from mdmctl.autoregressive import arm_sft_nll
from mdmctl.config import FinetuneConfig, ModelConfig, RunConfig, TrainConfig
from mdmctl.data.sft import Tokenized, collate, read_examples
from mdmctl.diffusion import mdm_sft_loss
from mdmctl.errors import ConfigError, DataError
from mdmctl.model import Transformer
from mdmctl.train import finetune, pretrain

from .conftest import SHARED


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_formats(tmp_path):
    pr = read_examples(_write(tmp_path / "a.jsonl", [{"prompt": "Q1", "completion": " A1"}]))
    assert (pr[0].prompt, pr[0].response) == ("Q1", " A1")
    g = read_examples(_write(tmp_path / "g.jsonl", [{"question": "2+2?", "answer": "4\n#### 4"}]))
    assert g[0].prompt == "2+2?\n" and g[0].response.endswith("#### 4")
    chat = read_examples(
        _write(
            tmp_path / "c.jsonl",
            [
                {
                    "messages": [
                        {"role": "user", "content": "hi"},
                        {"role": "assistant", "content": "hello"},
                    ]
                }
            ],
        )
    )
    assert chat[0].prompt == "USER: hi\nASSISTANT: " and chat[0].response == "hello"
    (tmp_path / "e.txt").write_text("What is 3*4?||<<3*4=12>> #### 12\n")
    eq = read_examples(tmp_path / "e.txt")
    assert eq[0].prompt == "What is 3*4?\n" and eq[0].response == "<<3*4=12>> #### 12"
    custom = read_examples(
        _write(tmp_path / "x.jsonl", [{"q": "a", "r": "b"}]), prompt_field="q", response_field="r"
    )
    assert custom[0].response == "b"


@pytest.mark.skipif(not (SHARED / "gsm8k").is_dir(), reason="../shared/data/gsm8k is absent")
def test_shared_gsm8k_and_reversal_files_parse():
    assert len(read_examples(SHARED / "gsm8k" / "train.jsonl")) == 7473
    assert len(read_examples(SHARED / "gsm8k" / "equations_train.txt")) > 1000
    rc = read_examples(SHARED / "reversal_curse" / "all_prompts_train.jsonl")
    assert len(rc) == 3600 and rc[0].response.startswith(" ")


def test_bad_lines(tmp_path):
    with pytest.raises(DataError, match=r"b\.jsonl:2: missing field 'response'"):
        read_examples(
            _write(tmp_path / "b.jsonl", [{"prompt": "a", "response": "b"}, {"prompt": "c"}])
        )
    with pytest.raises(DataError, match=r"e\.jsonl:1: empty response"):
        read_examples(_write(tmp_path / "e.jsonl", [{"prompt": "a", "response": "  "}]))


def test_collate_masks():
    b = collate([Tokenized([5, 6], [7, 0], "x"), Tokenized([5], [8, 9, 10, 0], "y")], eos_id=0)
    assert b.x0.tolist() == [[5, 6, 7, 0, 0], [5, 8, 9, 10, 0]]
    assert b.prompt_mask.tolist() == [[1, 1, 0, 0, 0], [1, 0, 0, 0, 0]]
    assert b.response_mask.tolist() == [[0, 0, 1, 1, 0], [0, 1, 1, 1, 1]]
    assert b.real_tokens == 9


def test_conditional_loss_never_masks_prompt_and_normalises(tiny_cfg):
    m = Transformer(tiny_cfg)
    x0 = torch.randint(0, 96, (3, 20))
    pm = torch.zeros(3, 20, dtype=torch.bool)
    pm[:, :7] = True
    seen = []

    def spy(xt):
        seen.append(xt.clone())
        return m(xt)

    loss = mdm_sft_loss(spy, x0, pm, 96, torch.Generator().manual_seed(0))
    assert torch.equal(seen[0][pm], x0[pm])  # prompt untouched
    # hand computation from the same draws
    g = torch.Generator().manual_seed(0)
    p = (1 - 1e-3) * torch.rand(3, generator=g) + 1e-3
    masked = (torch.rand(3, 20, generator=g) < p[:, None]) & ~pm
    logp = (
        torch.log_softmax(m(torch.where(masked, 96, x0)), -1).gather(-1, x0[..., None]).squeeze(-1)
    )
    torch.testing.assert_close(loss, (-(logp * masked).sum(1) / p).sum() / (~pm).sum())
    # prompt dropout 1.0 masks every prompt position in the model input
    mdm_sft_loss(spy, x0, pm, 96, torch.Generator().manual_seed(0), cfg_dropout=1.0)
    assert bool((seen[-1][pm] == 96).all())
    # unconditional may mask prompt positions
    mdm_sft_loss(spy, x0, pm, 96, torch.Generator().manual_seed(3), conditional=False)
    assert bool((seen[-1][:, :7] == 96).any())


def test_arm_sft_scores_only_response():
    cfg = ModelConfig.from_name("tiny", objective="arm", vocab_size=50, seq_len=32)
    m = Transformer(cfg)
    b = collate([Tokenized([5, 6, 7], [8, 9, 0], "x"), Tokenized([5], [8, 0], "y")], eos_id=0)
    logits = m(b.x0)
    nll = arm_sft_nll(logits, b.x0, b.response_mask)
    logp = torch.log_softmax(logits, -1)
    expect0 = -(logp[0, 2, 8] + logp[0, 3, 9] + logp[0, 4, 0])
    expect1 = -(logp[1, 0, 8] + logp[1, 1, 0])  # the eos padding after the first eos is not scored
    torch.testing.assert_close(nll, torch.stack([expect0, expect1]))


def test_finetune_runs_resumes_and_drops_overlong(tmp_path, corpus_dir):
    base = pretrain(
        RunConfig(
            model=ModelConfig.from_name("tiny", seq_len=32),
            train=TrainConfig(steps=2, batch_size=4, val_batches=1, val_mc=2),
            data=str(corpus_dir),
            out=str(tmp_path / "base"),
            device="cpu",
        ),
        log=lambda m: None,
    )
    rows = [
        {"prompt": f"the cat sat on the mat {i}", "completion": " the dog ran."} for i in range(40)
    ]
    rows.append({"prompt": "birds sang " * 30, "completion": " x"})  # longer than 32 tokens
    data = _write(tmp_path / "sft.jsonl", rows)
    logs = []
    cfg = FinetuneConfig(
        init=str(base.checkpoint),
        data=str(data),
        out=str(tmp_path / "ft"),
        train=TrainConfig(steps=4, batch_size=4, val_every=2, val_mc=2, save_every=2),
        device="cpu",
    )
    r = finetune(cfg, log=logs.append)
    assert r.steps == 4 and r.val_loss > 0 and "MDM conditional" in r.val_loss_kind
    assert any("dropped 1 of" in m for m in logs)
    r2 = finetune(
        FinetuneConfig(
            **{
                **{f: getattr(cfg, f) for f in cfg.__slots__},
                "train": TrainConfig(steps=6, batch_size=4, val_every=2, val_mc=2, save_every=2),
            }
        ),
        log=logs.append,
    )
    assert r2.resumed_from == 4 and r2.steps == 6
    with pytest.raises(DataError, match="prompt is .* tokens; model context is 32"):
        finetune(
            FinetuneConfig(
                **{
                    **{f: getattr(cfg, f) for f in cfg.__slots__},
                    "out": str(tmp_path / "ft2"),
                    "overlong": "error",
                }
            ),
            log=lambda m: None,
        )


def test_finetune_config_rules():
    with pytest.raises(ConfigError, match="--cfg-dropout"):
        FinetuneConfig(init="a", data="b", cfg_dropout=1.5)
    with pytest.raises(ConfigError, match="not both"):
        FinetuneConfig(init="a", data="b", epochs=1, train=TrainConfig(steps=3))
