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


LLAMA3_CHAT = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>"
    "\n\n{{ m['content'] }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}"
    "<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)  # LLaDA Instruct's template, in shape


@pytest.fixture(scope="session")
def family_runs(tmp_path_factory) -> dict[str, Path]:
    """Tiny random LLaDA and Dream models saved in their own layouts (names, config.json, a
    tokenizer with the family's special tokens, a chat template), imported: the step dirs."""
    import dataclasses

    import torch
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, models, pre_tokenizers

    from mdmctl.interop import families
    from mdmctl.interop.convert import import_model
    from mdmctl.model import Transformer

    words = sorted(
        {w for s in SENTENCES for w in s.replace(".", " .").split()} | {"user", "assistant"}
    )
    specials = ["<|endoftext|>", "<|startoftext|>", "<|start_header_id|>", "<|end_header_id|>",
                "<|eot_id|>"]  # fmt: skip
    root, out = tmp_path_factory.mktemp("families"), {}
    for kind, mask in (("llada", "<|mdm_mask|>"), ("dream", "<|mask|>")):
        # Special tokens only as added tokens: their text typed by a user is not one of them.
        vocab = {w: i for i, w in enumerate(["<unk>", *words])}
        tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tok.add_special_tokens([*specials, mask])  # the mask last: id V - 1
        V, folder = tok.get_vocab_size(with_added_tokens=True), root / kind
        folder.mkdir()
        tok.save(str(folder / "tokenizer.json"))
        if kind == "llada":
            conf = {"model_type": "llada", "architectures": ["LLaDAModelLM"], "d_model": 48,
                    "n_heads": 4, "n_kv_heads": 4, "n_layers": 2, "mlp_hidden_size": 96,
                    "embedding_size": V, "vocab_size": V, "rope_theta": 500000.0,
                    "max_sequence_length": 64, "mask_token_id": V - 1}  # fmt: skip
            cfg = families.llada_config(conf, folder, None)
        else:
            conf = {"model_type": "Dream", "architectures": ["DreamModel"], "hidden_size": 48,
                    "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2,
                    "intermediate_size": 96, "vocab_size": V, "rope_theta": 1000000.0,
                    "max_position_embeddings": 64, "mask_token_id": V - 1}  # fmt: skip
            cfg = families.dream_config(conf, folder, None)
        torch.manual_seed(31)
        model = Transformer(dataclasses.replace(cfg, vocab_size=V))
        state = {k: v + 0.05 * torch.randn_like(v) if k.endswith(".bias") else v
                 for k, v in model.state_dict().items()}  # fmt: skip
        save_file(families.write(kind, state, cfg.n_layers), str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps(conf))
        tok_conf = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                    "chat_template": LLAMA3_CHAT}  # fmt: skip
        (folder / "tokenizer_config.json").write_text(json.dumps(tok_conf))
        out[kind] = import_model(folder, root / f"run-{kind}").step_dir
    return out


@pytest.fixture(scope="session")
def family_sources(family_runs) -> dict[str, Path]:
    """The LLaDA and Dream folders in their own layouts that ``family_runs`` imported."""
    return {kind: step.parents[2] / kind for kind, step in family_runs.items()}
