from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from mdmctl.config import ModelConfig, RunConfig, TrainConfig
from mdmctl.errors import CompatibilityError, ConfigError, DivergenceError
from mdmctl.train import lr_at, pretrain


def _run(corpus_dir, out, objective="mdm", **train):
    kw = dict(
        steps=6,
        batch_size=4,
        val_every=3,
        val_batches=1,
        val_mc=2,
        save_every=3,
        log_every=1,
        seed=3,
    )
    kw.update(train)
    return RunConfig(
        model=ModelConfig.from_name("tiny", objective=objective, seq_len=32),
        train=TrainConfig(**kw),
        data=str(corpus_dir),
        out=str(out),
        device="cpu",
    )


def test_lr_schedule():
    assert lr_at(0, 100, 10, 1.0, 0.1) == pytest.approx(0.1)
    assert lr_at(9, 100, 10, 1.0, 0.1) == pytest.approx(1.0)
    assert lr_at(100, 100, 10, 1.0, 0.1) == pytest.approx(0.1)
    assert lr_at(55, 100, 10, 1.0, 0.1) == pytest.approx(0.55)


@pytest.mark.parametrize("objective", ["mdm", "arm"])
def test_resume_is_bit_exact(tmp_path, corpus_dir, objective):
    full = pretrain(_run(corpus_dir, tmp_path / "a", objective), log=lambda m: None)

    def crash(step, total, record):
        if step == 4:  # after step 3 was checkpointed: simulate a crash mid-run
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain(_run(corpus_dir, tmp_path / "b", objective), on_step=crash, log=lambda m: None)
    resumed = pretrain(_run(corpus_dir, tmp_path / "b", objective), log=lambda m: None)
    assert resumed.resumed_from == 3 and resumed.steps == 6
    a = load_file(str(full.checkpoint / "model.safetensors"))
    b = load_file(str(resumed.checkpoint / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    model_bytes = [(r.checkpoint / "model.safetensors").read_bytes() for r in (full, resumed)]
    assert model_bytes[0] == model_bytes[1]  # byte-identical file, not just equal tensors
    oa = load_file(str(full.checkpoint / "optimizer.safetensors"))
    ob = load_file(str(resumed.checkpoint / "optimizer.safetensors"))
    assert oa.keys() == ob.keys() and all(torch.equal(oa[k], ob[k]) for k in oa)

    def records(run):
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        out = {}
        for line in lines:  # the crashed run logged step 4 once before the crash; keep the last
            r = json.loads(line)
            r.pop("tokens_per_s")
            out[r["step"]] = r
        return out

    assert records("a") == records("b")


def test_resume_refuses_changed_setup(tmp_path, corpus_dir):
    pretrain(_run(corpus_dir, tmp_path / "r", steps=3), log=lambda m: None)
    with pytest.raises(CompatibilityError, match="batch_size: checkpoint=4, requested=8"):
        pretrain(_run(corpus_dir, tmp_path / "r", batch_size=8), log=lambda m: None)


def test_never_refuses_non_empty_out(tmp_path, corpus_dir):
    pretrain(_run(corpus_dir, tmp_path / "r", steps=1), log=lambda m: None)
    with pytest.raises(ConfigError, match="refusing to write into non-empty run dir"):
        pretrain(_run(corpus_dir, tmp_path / "r", steps=1), resume="never", log=lambda m: None)


def test_nan_loss_stops_before_update(tmp_path, corpus_dir, monkeypatch):
    import mdmctl.train as tr

    calls = {"n": 0}
    real = tr.mdm_loss

    def flaky(*a, **k):
        calls["n"] += 1
        loss = real(*a, **k)
        return loss * float("nan") if calls["n"] == 5 else loss

    monkeypatch.setattr(tr, "mdm_loss", flaky)
    with pytest.raises(DivergenceError, match="step 5"):
        pretrain(_run(corpus_dir, tmp_path / "n", steps=8), log=lambda m: None)
    from mdmctl import checkpoint as ckpt

    assert [p.name for p in ckpt.list_steps(tmp_path / "n")] == ["step-00000003"]
    calls["n"] = 0
    r = pretrain(
        _run(corpus_dir, tmp_path / "s", steps=8, max_nonfinite_skips=1), log=lambda m: None
    )
    assert r.steps == 8


def test_training_reduces_loss_below_unigram(tmp_path, corpus_dir):
    """ARM on the tiny repetitive corpus learns well below the unigram entropy in 60 steps."""
    r = pretrain(
        _run(corpus_dir, tmp_path / "u", "arm", steps=60, val_every=60, lr=3e-3, save_every=60),
        log=lambda m: None,
    )
    assert r.val_loss < r.unigram_entropy - 0.3


def test_resume_from_older_step_with_newer_ones_is_refused(tmp_path, corpus_dir):
    pretrain(
        _run(corpus_dir, tmp_path / "r", steps=6, save_every=3, keep_last=3), log=lambda m: None
    )
    older = tmp_path / "r" / "checkpoints" / "step-00000003"
    with pytest.raises(ConfigError, match="newer than step-00000003"):
        pretrain(
            _run(corpus_dir, tmp_path / "r", steps=9, save_every=3, keep_last=3),
            resume=str(older),
            log=lambda m: None,
        )


def test_seed_bounds():
    with pytest.raises(ConfigError, match="seed"):
        TrainConfig(seed=-1)
