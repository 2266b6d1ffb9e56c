from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path

import pytest
import torch

from mdmctl import checkpoint as ckpt
from mdmctl.errors import CheckpointError, CompatibilityError
from mdmctl.fileio import atomic_write_text
from mdmctl.model import Transformer
from mdmctl.tokenizer import train_bpe

from .conftest import make_docs


@pytest.fixture
def tok_path(tmp_path):
    p = tmp_path / "tokenizer.json"
    train_bpe(make_docs(20), 320).save(str(p))
    return p


def _save(run, step, model, cfg, tok_path, **kw):
    return ckpt.save_checkpoint(
        run,
        step,
        model=model,
        model_cfg=cfg,
        tokenizer_path=tok_path,
        tokenizer_sha256="abc",
        train_state={"loop": {"step": step}},
        optimizer={"exp_avg/x": torch.ones(3)},
        **kw,
    )


def test_round_trip_bit_identical(tmp_path, tiny_cfg, tok_path):
    m = Transformer(tiny_cfg)
    d = _save(tmp_path, 10, m, tiny_cfg, tok_path)
    assert d.name == "step-00000010"
    assert sorted(p.name for p in d.iterdir()) == [
        "MANIFEST.json",
        "model.safetensors",
        "optimizer.safetensors",
        "tokenizer.json",
        "train_state.json",
    ]
    loaded = ckpt.load_checkpoint(d)
    assert loaded.model_cfg == tiny_cfg
    for k, v in m.state_dict().items():
        assert torch.equal(loaded.state_dict[k], v)


def test_files_follow_the_umask(tmp_path, tiny_cfg, tok_path):
    # safetensors creates 0600 files; a run folder shared with a group must stay readable.
    old = os.umask(0o022)
    try:
        d = _save(tmp_path, 1, Transformer(tiny_cfg), tiny_cfg, tok_path)
        atomic_write_text(tmp_path / "x.json", "{}")
    finally:
        os.umask(old)
    for f in [*d.iterdir(), tmp_path / "x.json"]:
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f.name


def test_truncated_and_flipped_and_missing_manifest(tmp_path, tiny_cfg, tok_path):
    m = Transformer(tiny_cfg)
    d10 = _save(tmp_path, 10, m, tiny_cfg, tok_path)
    d20 = _save(tmp_path, 20, m, tiny_cfg, tok_path)
    w = d20 / "model.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        ckpt.load_checkpoint(d20)
    logs = []
    assert ckpt.find_latest(tmp_path, log=logs.append) == d10
    assert "step-00000020" in logs[0]
    w.write_bytes(data[:-10] + bytes([data[-10] ^ 0xFF]) + data[-9:])
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        ckpt.verify(d20)
    (d20 / "MANIFEST.json").unlink()
    with pytest.raises(CheckpointError, match="no MANIFEST.json"):
        ckpt.resolve_checkpoint(d20)  # an explicit path never falls back
    assert ckpt.resolve_checkpoint(tmp_path) == d10


def test_crash_mid_save_keeps_previous(tmp_path, tiny_cfg, tok_path, monkeypatch):
    m = Transformer(tiny_cfg)
    d10 = _save(tmp_path, 10, m, tiny_cfg, tok_path)
    import shutil as _sh

    def boom(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.shutil, "copyfile", boom)
    with pytest.raises(CheckpointError, match="no space left.*step-00000010 is intact"):
        _save(tmp_path, 20, m, tiny_cfg, tok_path)
    monkeypatch.setattr(ckpt.shutil, "copyfile", _sh.copyfile)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000010"]
    ckpt.verify(d10)


def test_preflight_disk_check_writes_nothing(tmp_path, tiny_cfg, tok_path, monkeypatch):
    m = Transformer(tiny_cfg)
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda p: type("U", (), {"free": 1024})())
    with pytest.raises(CheckpointError, match="no space left"):
        _save(tmp_path, 5, m, tiny_cfg, tok_path)
    assert list((tmp_path / "checkpoints").iterdir()) == []


def test_retention_keeps_newest(tmp_path, tiny_cfg, tok_path):
    m = Transformer(tiny_cfg)
    for s in (1, 2, 3, 4):
        _save(tmp_path, s, m, tiny_cfg, tok_path, keep_last=2)
    assert [p.name for p in ckpt.list_steps(tmp_path)] == ["step-00000004", "step-00000003"]


def test_pickle_files_refused(tmp_path):
    p = tmp_path / "model.pt"
    p.write_bytes(b"not opened")
    with pytest.raises(CheckpointError, match="never unpickles"):
        ckpt.verify(p)


def test_non_finite_state_refused(tmp_path, tiny_cfg, tok_path):
    m = Transformer(tiny_cfg)
    with pytest.raises(ValueError):
        ckpt.save_checkpoint(
            tmp_path,
            1,
            model=m,
            model_cfg=tiny_cfg,
            tokenizer_path=tok_path,
            tokenizer_sha256="a",
            train_state={"loss": float("nan")},
        )
    assert ckpt.list_steps(tmp_path) == []
    d = _save(tmp_path, 2, m, tiny_cfg, tok_path)
    (d / "train_state.json").write_text('{"loss": Infinity}')
    with pytest.raises(CheckpointError, match="non-finite"):
        ckpt.read_train_state(d)


def test_architecture_and_key_mismatch(tiny_cfg):
    from dataclasses import replace

    with pytest.raises(CompatibilityError, match="n_layers: checkpoint=2, requested=3"):
        ckpt.check_compatible(tiny_cfg, replace(tiny_cfg, n_layers=3))
    m = Transformer(tiny_cfg)
    state = dict(m.state_dict())
    state.pop("norm.weight")
    with pytest.raises(CompatibilityError, match=r"missing keys \(1\): \['norm.weight'\]"):
        ckpt.load_weights(m, state, Path("x"))


def test_no_pickle_in_source():
    src = Path(__file__).resolve().parents[1] / "src"
    pattern = re.compile(r"torch\.load|torch\.save|import pickle|weights_only")
    for f in src.rglob("*.py"):
        code = "\n".join(line.split("#")[0] for line in f.read_text().splitlines())
        assert not pattern.search(code), f"{f} uses pickle-based I/O"


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        # what safetensors really raises on a full disk: not an OSError
        "SafetensorError",
    ],
)
def test_full_disk_while_writing_weights(tmp_path, tiny_cfg, tok_path, monkeypatch, error):
    from safetensors import SafetensorError

    if error == "SafetensorError":
        error = SafetensorError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No '
            'space left on device" })'
        )
    m = Transformer(tiny_cfg)
    d10 = _save(tmp_path, 10, m, tiny_cfg, tok_path)

    def full(*a, **k):
        raise error

    monkeypatch.setattr(ckpt, "save_file", full)
    with pytest.raises(CheckpointError, match="no space left.*step-00000010 is intact") as e:
        _save(tmp_path, 20, m, tiny_cfg, tok_path)
    assert e.value.exit_code == 4
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000010"]
    ckpt.verify(d10)


def test_find_latest_skips_unreadable_weights_with_matching_manifest(tmp_path, tiny_cfg, tok_path):
    import json

    m = Transformer(tiny_cfg)
    d10 = _save(tmp_path, 10, m, tiny_cfg, tok_path)
    d20 = _save(tmp_path, 20, m, tiny_cfg, tok_path)
    w = d20 / "model.safetensors"
    w.write_bytes(b"\x00" * 100)  # garbage, hashed into the manifest as if it were good
    manifest = json.loads((d20 / "MANIFEST.json").read_text())
    manifest["files"]["model.safetensors"] = {"size": 100, "sha256": ckpt.sha256_file(w)}
    (d20 / "MANIFEST.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="unreadable weights"):
        ckpt.verify(d20)
    logs: list[str] = []
    assert ckpt.find_latest(tmp_path, log=logs.append) == d10
    assert "step-00000020" in logs[0] and "unreadable weights" in logs[0]
