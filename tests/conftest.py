"""Shared fixtures: a tiny tokenizer and corpus, tiny model configs; hub access switched off."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"

SENTENCES = [
    "the cat sat on the mat.",
    "the dog ran to the park.",
    "birds sang in the tall green trees.",
    "a small boat sailed across the quiet lake.",
    "the sky was full of white clouds.",
    "children played near the old stone bridge.",
    "rain fell softly on the roof all night.",
    "she wrote a long letter to her brother.",
]


def make_docs(n: int, seed: int = 0) -> list[str]:
    """Documents of random sentences: structured text (a model can beat its unigram entropy)."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(SENTENCES) for _ in range(rng.randint(3, 12))) for _ in range(n)]


@pytest.fixture(autouse=True)
def _seed_and_dtype():
    import torch

    torch.manual_seed(0)
    dt = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dt)


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    p.write_text("".join(json.dumps({"text": d}) + "\n" for d in make_docs(400)))
    return p


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory, corpus_file) -> Path:
    """A tokenized tiny corpus (BPE 400 tokens)."""
    from mdmctl.data.readers import CorpusSpec
    from mdmctl.data.shards import TokenizeConfig, tokenize_corpus

    out = tmp_path_factory.mktemp("data") / "tiny"
    tokenize_corpus(
        TokenizeConfig(
            corpus=CorpusSpec(paths=(str(corpus_file),)),
            out=str(out),
            vocab_size=400,
            val_fraction=0.1,
        )
    )
    return out


@pytest.fixture
def tiny_cfg():
    from mdmctl.config import ModelConfig

    return ModelConfig.from_name("tiny", vocab_size=97, mask_id=96, seq_len=32)


runner = CliRunner()


def run(*args, code=0):
    """Invoke the CLI in-process; assert the exit code and that no traceback leaked."""
    from mdmctl.cli import app

    r = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in (r.stdout + r.stderr), r.stderr
    assert r.exit_code == code, f"exit {r.exit_code}: {r.stdout}\n{r.stderr}"
    return r


@pytest.fixture(scope="session")
def ckpts(tmp_path_factory, corpus_dir):
    """Tiny trained MDM and ARM checkpoints (4 steps each)."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for obj in ("mdm", "arm"):
        run(
            "pretrain",
            "--objective",
            obj,
            "--size",
            "tiny",
            "--seq-len",
            "32",
            "--steps",
            "4",
            "--batch-size",
            "4",
            "--val-every",
            "4",
            "--data",
            corpus_dir,
            "--out",
            root / obj,
            "--show-samples",
            "0",
            "--device",
            "cpu",
        )
        out[obj] = root / obj / "checkpoints" / "step-00000004"
    return out


@pytest.fixture
def mdmctl_log(caplog, monkeypatch):
    """caplog for the "mdmctl" logger at WARNING. Once a CLI test has set up logging, "mdmctl"
    no longer propagates to the root logger caplog listens on: its handler sits on "mdmctl"
    itself, whatever ran before."""
    import logging

    logger = logging.getLogger("mdmctl")
    monkeypatch.setattr(logger, "propagate", False)
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level("WARNING", logger="mdmctl"):
            yield caplog
    finally:
        logger.removeHandler(caplog.handler)
