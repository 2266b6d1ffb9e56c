"""Every command line in README.md's and docs/cli.md's bash blocks runs as written.

Lines run in order in one working folder, as a user would type them, on the CPU, scaled down only
by documented flags (``--steps``, ``--batch-size``, ``--limit``, ``--mc-samples``, ...; see
``SCALE``). The folder holds what the lines name: ``my_corpus/``, ``data/builtin`` (so the Quick
start's first-use tokenization of the built-in corpus is skipped) and ``../shared/data``. The
local lm-eval task of docs/cli.md is written from the docs' own YAML and jsonl blocks. ``bash``
steps (the scaling sweep) and ``torchrun`` lines run in the ``slow`` test.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mdmctl.cli import app

from .conftest import SHARED, make_docs, run, runner

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "docs" / "cli.md"]

# Documented flags that scale a line down, by command. Values replace the line's own.
SCALE: dict[str, dict[str, str]] = {
    "pretrain": {"--steps": "2", "--batch-size": "2", "--val-every": "2", "--device": "cpu"},
    "finetune": {
        "--steps": "2",
        "--batch-size": "2",
        "--val-every": "2",
        "--val-fraction": "0.002",
        "--device": "cpu",
    },
    "sample": {"--length": "8", "--device": "cpu"},
    "eval ppl": {"--max-windows": "2", "--mc-samples": "2"},
    "eval gsm8k": {"--limit": "2", "--steps": "4"},
    "eval reverse-curse": {"--limit": "2"},
    "eval arc_easy": {"--limit": "2", "--mc-samples": "2"},
    "eval all": {"--limit": "2", "--mc-samples": "2"},
    "eval lm-eval": {"--limit": "2"},
}
# Lines whose documented outcome offline is a typed failure (hub tasks without network: exit 3).
OFFLINE_EXIT = {"eval lm-eval": 3}


def fenced(path: Path, lang: str | None = None) -> list[tuple[str, str]]:
    """(language, text) of each fenced block of a markdown file."""
    out, buf, cur = [], [], None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            if cur is None:
                cur = line[3:].strip()
            else:
                out.append((cur, "\n".join(buf)))
                cur, buf = None, []
            continue
        if cur is not None:
            buf.append(line)
    return [(lg, t) for lg, t in out if lang is None or lg == lang]


def doc_commands() -> list[list[str]]:
    """The ``mdmctl`` / ``torchrun`` / ``bash`` commands of the bash blocks, in order; ``pip
    install`` steps (the environment is already installed) are left out."""
    cmds = []
    for path in DOCS:
        for _, text in fenced(path, "bash"):
            for line in text.replace("\\\n", " ").splitlines():
                for part in line.split("#")[0].split("&&"):
                    argv = shlex.split(part)
                    if argv and argv[0] in ("mdmctl", "torchrun", "bash"):
                        cmds.append(argv)
    return cmds


def command_key(argv: list[str]) -> str:
    if argv[0] != "mdmctl":
        return argv[0]
    return " ".join(argv[1:3]) if argv[1] in ("eval", "scaling") else argv[1]


def scaled(argv: list[str]) -> list[str]:
    args = list(argv[1:])
    for opt, value in SCALE.get(command_key(argv), {}).items():
        if opt in args:
            args[args.index(opt) + 1] = value
        else:
            args += [opt, value]
    return args


def _workspace(tmp: Path, corpus_dir: Path, families: dict[str, Path]) -> Path:
    """The folder the lines run in (``../shared/data`` resolves next to it); ``models/`` holds
    tiny random LLaDA and Dream folders in their own layouts under the real models' names."""
    work = tmp / "work"
    (work / "my_corpus").mkdir(parents=True)
    for kind, name in (("llada", "LLaDA-8B-Instruct"), ("dream", "Dream-v0-Base-7B")):
        shutil.copytree(families[kind], work / "models" / name)
    # Real text for the tokenizer: GSM8K problems (the fine-tuning line's data must fit mini's
    # context of 256 tokens) and the test sentences.
    rows = [json.loads(x) for x in (SHARED / "gsm8k" / "train.jsonl").read_text().splitlines()]
    lines = [json.dumps({"text": r["question"] + "\n" + r["answer"]}) for r in rows[:1000]]
    (work / "my_corpus" / "gsm8k.jsonl").write_text("\n".join(lines) + "\n")
    (work / "my_corpus" / "notes.txt").write_text("\n\n".join(make_docs(200)))
    shutil.copytree(corpus_dir, work / "data" / "builtin")
    (tmp / "shared").symlink_to(SHARED.parent)
    tasks = work / "tasks"
    tasks.mkdir()
    yaml = [t for lg, t in fenced(DOCS[1], "yaml") if "task: my_arc" in t]
    rows_json = [t for lg, t in fenced(DOCS[1], "json") if '"gold"' in t]
    (tasks / "my_arc.yaml").write_text(yaml[0] + "\n")
    (tasks / "my_arc.jsonl").write_text(rows_json[0] + "\n")
    return work


@pytest.fixture
def workspace(tmp_path, corpus_dir, family_sources, monkeypatch):
    if not SHARED.is_dir():
        pytest.skip(f"shared data not found at {SHARED}: the documented lines read it")
    work = _workspace(tmp_path, corpus_dir, family_sources)
    monkeypatch.chdir(work)
    monkeypatch.setenv("MDMCTL_PROGRESS_EVERY", "3600")
    return work


def test_every_documented_command_runs(workspace):
    fast = [c for c in doc_commands() if c[0] == "mdmctl" and command_key(c) != "scaling fit"]
    assert len(fast) >= 15, "the docs' bash blocks were not found"
    for argv in fast:
        key = command_key(argv)
        code = OFFLINE_EXIT.get(key, 0) if "--include-path" not in argv else 0
        r = run(*scaled(argv), code=code)
        if code:
            assert "offline? run a local task" in r.stderr, " ".join(argv)
    # What the lines promise to leave behind.
    assert (workspace / "runs" / "mdm-mini-mine-sft-train" / "config.json").is_file()
    assert json.loads((workspace / "zero-shot.json").read_text())["results"]
    assert (workspace / "sweep.sh").is_file()


def test_readme_python_block_runs(tmp_path, corpus_dir, monkeypatch):
    """README's "From Python" block runs as written, with fewer steps."""
    blocks = [t for _, t in fenced(DOCS[0], "python")]
    assert len(blocks) == 1, "README's python block was not found"
    code = blocks[0].replace('"steps": 200', '"steps": 4')
    assert code != blocks[0]
    shutil.copytree(corpus_dir, tmp_path / "data" / "builtin")  # the built-in corpus, made
    monkeypatch.chdir(tmp_path)
    env = {**os.environ, "MDMCTL_PROGRESS_EVERY": "3600"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "runs" / "demo" / "checkpoints" / "step-00000004").is_dir()
    assert r.stdout.strip().split()[-1].isdigit()  # the forward passes, after the sample


@pytest.mark.slow
def test_documented_sweep_fit_and_torchrun(workspace):
    """The lines that take minutes: the scaling sweep and its fit, the torchrun launch."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for argv in doc_commands():
        key = command_key(argv)
        if key == "scaling plan":
            run(*scaled(argv))
        elif key == "bash":
            subprocess.run(argv, check=True, env=env, capture_output=True)
        elif key == "torchrun":
            i = argv.index("-m") + 2  # torchrun ... -m mdmctl pretrain ...
            cmd = argv[:i] + scaled(["mdmctl", *argv[i:]])
            subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=600)
        elif key == "scaling fit":
            # On the built-in corpus no budget of this CPU-sized sweep brackets its minimum and
            # the fit exits 2 saying so (docs/cli.md); on this test corpus the ARM's may. Either
            # is the documented behaviour; a crash or another code is not.
            r = runner.invoke(app, argv[1:])
            assert r.exit_code in (0, 2), r.output
            assert "IsoFLOP fit" in r.stdout if r.exit_code == 0 else "nothing to fit" in r.stderr
