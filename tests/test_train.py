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
        elapsed = [json.loads(line)["elapsed_s"] for line in lines]
        assert elapsed == sorted(elapsed)  # the run's seconds carry over a resume
        for line in lines:
            r = json.loads(line)
            for timing in ("tokens_per_s", "time", "elapsed_s"):
                assert timing in r
                r.pop(timing)
            assert r["step"] not in out  # the crashed run's step-4 record was dropped on resume
            out[r["step"]] = r
        return out

    assert records("a") == records("b")


def test_resume_refuses_changed_setup(tmp_path, corpus_dir):
    pretrain(_run(corpus_dir, tmp_path / "r", steps=3), log=lambda m: None)
    with pytest.raises(CompatibilityError, match="batch_size: checkpoint=4, requested=8"):
        pretrain(_run(corpus_dir, tmp_path / "r", batch_size=8), log=lambda m: None)


def test_changed_setup_error_names_the_folder_and_the_ways_out(tmp_path, corpus_dir):
    pretrain(_run(corpus_dir, tmp_path / "r", steps=3), log=lambda m: None)
    with pytest.raises(CompatibilityError, match=r"--out, or pass --overwrite") as e:
        pretrain(_run(corpus_dir, tmp_path / "r", batch_size=8), log=lambda m: None)
    assert str(tmp_path / "r") in str(e.value)


def test_config_json_records_the_values_used(tmp_path, corpus_dir):
    # steps from --tokens, the size's lr and the warm-up rule: none of them given explicitly.
    pretrain(_run(corpus_dir, tmp_path / "r", steps=None, tokens=4 * 32 * 5), log=lambda m: None)
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["train"]["steps"] is None and cfg["train"]["lr"] is None
    assert cfg["resolved"]["steps"] == 5
    assert cfg["resolved"]["lr"] == 3e-3
    assert cfg["resolved"]["warmup_steps"] == TrainConfig().resolve_warmup(5)
    assert (cfg["resolved"]["device"], cfg["resolved"]["micro_batch_size"]) == ("cpu", 4)


def test_never_refuses_non_empty_out(tmp_path, corpus_dir):
    pretrain(_run(corpus_dir, tmp_path / "r", steps=1), log=lambda m: None)
    with pytest.raises(ConfigError, match="refusing to write into non-empty run dir"):
        pretrain(_run(corpus_dir, tmp_path / "r", steps=1), resume="never", log=lambda m: None)


def test_nan_loss_stops_before_update(tmp_path, corpus_dir, monkeypatch):
    import mdmctl.train.pretraining as tr

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
    assert not (tmp_path / "n" / ".mdmctl.lock").exists()  # released on error too
    calls["n"] = 0
    r = pretrain(
        _run(corpus_dir, tmp_path / "s", steps=8, max_nonfinite_skips=1), log=lambda m: None
    )
    assert r.steps == 8 and r.nonfinite_skips == 1


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


def _dead_pid() -> int:
    import subprocess

    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid  # reaped: no process has this pid now (reuse this soon is vanishingly rare)


def test_run_dir_lock_refuses_a_live_owner_and_takes_over_a_dead_one(tmp_path, corpus_dir):
    import os
    import socket

    from mdmctl.errors import RunLockedError
    from mdmctl.train.lock import LOCK_NAME

    out = tmp_path / "r"
    out.mkdir()
    lock = out / LOCK_NAME
    held = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "token": "t"})
    lock.write_text(held)
    with pytest.raises(RunLockedError) as e:
        pretrain(_run(corpus_dir, out, steps=1), log=lambda m: None)
    msg = str(e.value)
    assert str(lock) in msg and f"pid {os.getpid()}" in msg and socket.gethostname() in msg
    assert e.value.exit_code == 2
    assert lock.read_text() == held  # the refused run left the owner's lock alone
    assert not (out / "config.json").exists() and not (out / "checkpoints").exists()

    lock.write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname()}))
    logs: list[str] = []
    r = pretrain(_run(corpus_dir, out, steps=1), log=logs.append)
    assert r.steps == 1
    assert any("recovered stale lock" in m for m in logs)
    assert not lock.exists()  # released on normal exit


def test_step_set_aside_twice_gets_a_fresh_name(tmp_path, corpus_dir):
    out = tmp_path / "r"
    pretrain(_run(corpus_dir, out, steps=6, keep_last=3), log=lambda m: None)
    root = out / "checkpoints"
    (root / "invalid-step-00000006").mkdir()  # set aside by an earlier resume
    (root / "invalid-step-00000006" / "model.safetensors").write_bytes(b"old")
    w = root / "step-00000006" / "model.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    logs: list[str] = []
    r = pretrain(_run(corpus_dir, out, steps=6, keep_last=3), log=logs.append)
    assert r.resumed_from == 3 and r.steps == 6
    assert (root / "invalid-step-00000006" / "model.safetensors").read_bytes() == b"old"
    assert (root / "invalid-step-00000006.1" / "model.safetensors").read_bytes() != data
    assert any("moved unverifiable step-00000006 to invalid-step-00000006.1" in m for m in logs)


def test_resume_auto_skips_unreadable_weights_with_a_matching_manifest(tmp_path, corpus_dir):
    from mdmctl.fileio import sha256_file

    out = tmp_path / "r"
    pretrain(_run(corpus_dir, out, steps=6), log=lambda m: None)
    step = out / "checkpoints" / "step-00000006"
    w = step / "model.safetensors"
    w.write_bytes(b"\xff" * 64)  # garbage that was hashed into the manifest as if it were good
    manifest = json.loads((step / "MANIFEST.json").read_text())
    manifest["files"]["model.safetensors"] = {"size": 64, "sha256": sha256_file(w)}
    (step / "MANIFEST.json").write_text(json.dumps(manifest))
    logs: list[str] = []
    r = pretrain(_run(corpus_dir, out, steps=6), log=logs.append)
    assert r.resumed_from == 3 and r.steps == 6
    assert any("skipping step-00000006" in m and "unreadable weights" in m for m in logs)


def _rewrite(step, name, data: bytes) -> None:
    """Replace a checkpoint file and record it in the manifest, as a foreign tool might."""
    from mdmctl.fileio import sha256_file

    (step / name).write_bytes(data)
    manifest = json.loads((step / "MANIFEST.json").read_text())
    manifest["files"][name] = {"size": len(data), "sha256": sha256_file(step / name)}
    (step / "MANIFEST.json").write_text(json.dumps(manifest))


def test_resume_auto_falls_back_past_a_train_state_without_its_loop(tmp_path, corpus_dir):
    out = tmp_path / "r"
    pretrain(_run(corpus_dir, out, steps=6), log=lambda m: None)
    step = out / "checkpoints" / "step-00000006"
    state = json.loads((step / "train_state.json").read_text())
    del state["loop"]
    _rewrite(step, "train_state.json", json.dumps(state).encode())
    logs: list[str] = []
    r = pretrain(_run(corpus_dir, out, steps=6), log=logs.append)
    assert r.resumed_from == 3 and r.steps == 6
    assert any("skipping step-00000006" in m and "missing 'loop'" in m for m in logs)
    assert (out / "checkpoints" / "invalid-step-00000006" / "train_state.json").is_file()


def test_resume_refuses_a_checkpoint_with_a_foreign_tokenizer(tmp_path, corpus_dir):
    from mdmctl.errors import CompatibilityError
    from mdmctl.tokenizer import prepare, train_bpe

    out = tmp_path / "r"
    pretrain(_run(corpus_dir, out, steps=3), log=lambda m: None)
    other = train_bpe(["quite another text, " * 20 + str(i) for i in range(50)], 300)
    prepare(other, add_missing=True)
    _rewrite(out / "checkpoints" / "step-00000003", "tokenizer.json", other.to_str().encode())
    with pytest.raises(CompatibilityError, match=r"tokenizer mismatch: .* \(tokenizer.json\)"):
        pretrain(_run(corpus_dir, out, steps=6), log=lambda m: None)


def test_resume_refuses_weights_whose_metadata_names_another_architecture(tmp_path, corpus_dir):
    from safetensors import safe_open
    from safetensors.torch import save

    from mdmctl.errors import CompatibilityError

    out = tmp_path / "r"
    pretrain(_run(corpus_dir, out, steps=3), log=lambda m: None)
    step = out / "checkpoints" / "step-00000003"
    with safe_open(str(step / "model.safetensors"), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = dict(f.metadata())
    info = json.loads(meta["mdmctl"])
    info["model_config"]["rope_base"] = 500.0
    meta["mdmctl"] = json.dumps(info, sort_keys=True)
    _rewrite(step, "model.safetensors", save(tensors, metadata=meta))
    with pytest.raises(CompatibilityError, match="rope_base: checkpoint=500.0"):
        pretrain(_run(corpus_dir, out, steps=6), log=lambda m: None)


def test_metrics_truncated_to_the_resumed_step(tmp_path):
    from mdmctl.log import truncate_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 7)))
    path.write_text(path.read_text() + '{"step": 7, "lo')  # torn by a kill mid-write
    assert truncate_metrics(path, 4, log=lambda m: None) == 3
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 2, 3, 4]
    assert truncate_metrics(path, 4, log=lambda m: None) == 0
    assert truncate_metrics(path, 0, log=lambda m: None) == 4 and path.read_text() == ""
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]  # no temp file left


def test_full_disk_at_start_leaves_no_half_written_config(tmp_path, corpus_dir, monkeypatch):
    import errno

    import mdmctl.fileio as fio
    from mdmctl.errors import OutputError

    def half_then_full(path, text):
        path.write_text(text[: len(text) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fio, "_write_text", half_then_full)
    out = tmp_path / "r"
    with pytest.raises(OutputError, match="no space left") as e:
        pretrain(_run(corpus_dir, out, steps=1), log=lambda m: None)
    assert e.value.exit_code == 4
    assert sorted(p.name for p in out.iterdir()) == []  # no config.json, no temp file, no lock


def test_sigterm_saves_and_releases_the_lock(tmp_path, corpus_dir):
    import os
    import signal

    from mdmctl.train import Interrupted

    def term(step, total, record):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # the handler only sets a flag

    out = tmp_path / "r"
    with pytest.raises(Interrupted) as e:
        pretrain(_run(corpus_dir, out, steps=6), on_step=term, log=lambda m: None)
    assert e.value.exit_code == 143
    assert (out / "checkpoints" / "step-00000002" / "MANIFEST.json").is_file()
    assert not (out / ".mdmctl.lock").exists()
