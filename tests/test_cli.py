"""CLI: frozen command set, the bad-input matrix (exit code + message, no traceback), and one
end-to-end run tokenize -> pretrain -> sample -> eval ppl in a real subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from .conftest import run, runner  # noqa: F401


def test_command_set_is_frozen():
    r = run("--help")
    for cmd in ("tokenize", "pretrain", "sample", "eval"):
        assert cmd in r.stdout
    assert "ppl" in run("eval", "--help").stdout


def test_help_does_not_import_torch():
    code = (
        "import sys; from mdmctl.cli import app; from typer.testing import CliRunner; "
        "CliRunner().invoke(app, ['pretrain', '--help']); assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- bad input matrix
def test_missing_and_empty_corpus(tmp_path):
    r = run("tokenize", tmp_path / "nope.jsonl", "--out", tmp_path / "o", code=3)
    assert "no such file" in r.stderr
    (tmp_path / "e.jsonl").write_text("")
    r = run(
        "tokenize", tmp_path / "e.jsonl", "--out", tmp_path / "o", "--vocab-size", "300", code=3
    )
    assert "corpus is empty" in r.stderr


def test_undecodable_line(tmp_path):
    (tmp_path / "b.jsonl").write_bytes(b'{"text": "fine"}\n{"text": "\xff"}\n')
    r = run("tokenize", tmp_path / "b.jsonl", "--out", tmp_path / "o", code=3)
    assert "b.jsonl:2: invalid UTF-8" in r.stderr


def test_tokenizer_without_eos(tmp_path, corpus_file):
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")).save(
        str(tmp_path / "t.json")
    )
    r = run(
        "tokenize", corpus_file, "--tokenizer", tmp_path / "t.json", "--out", tmp_path / "o", code=3
    )
    assert "no end-of-text token" in r.stderr


def test_unknown_size_and_config_key(tmp_path, corpus_dir):
    r = run("pretrain", "--size", "170m", "--data", corpus_dir, "--out", tmp_path / "r", code=2)
    assert "did you mean '170M'" in r.stderr
    (tmp_path / "c.toml").write_text("[train]\nlearning_rate = 1e-3\n")
    r = run("pretrain", "--config", tmp_path / "c.toml", "--data", corpus_dir, code=2)
    assert "unknown key 'train.learning_rate'" in r.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("pretrain", "--steps", "0"),
        ("pretrain", "--batch-size", "-1"),
        ("sample", "--length", "0"),
        ("sample", "--steps", "0"),
        ("sample", "--batch-size", "0"),
        ("sample", "--cfg", "-1"),
        ("sample", "--temperature", "-0.5"),
    ],
)
def test_non_positive_and_negative_values(args):
    r = run(*args, code=2)
    assert "Invalid value" in r.stderr


def test_prompt_longer_than_context(ckpts):
    r = run(
        "sample", "--checkpoint", ckpts["mdm"], "--prompt", "the cat " * 40, "--length", "8", code=2
    )
    assert "model context is 32" in r.stderr


def test_sample_default_length_fits_the_context_after_the_prompt(ckpts):
    # Context 32: a prompt of n tokens leaves 32 - n; the old fixed default (64) did not fit.
    r = run("sample", "--checkpoint", ckpts["mdm"], "--prompt", "the cat", "--json")
    (row,) = [json.loads(ln) for ln in r.stdout.splitlines()]
    said = " ".join(r.stderr.split())  # log lines wrap at the console width
    assert "--length not given: generating up to" in said
    n_prompt = int(said.split("after the prompt (")[1].split(" ")[0])
    assert len(row["token_ids"]) <= 32 - n_prompt
    r = run("sample", "--checkpoint", ckpts["mdm"], "--length", "4", "--steps", "50")
    assert "--steps 50 exceeds the 4 tokens to generate" in " ".join(r.stderr.split())


def test_cfg_on_arm_checkpoint(ckpts):
    r = run("sample", "--checkpoint", ckpts["arm"], "--cfg", "1.0", code=2)
    assert "--cfg applies to objective 'mdm'" in r.stderr


def test_checkpoint_from_other_architecture(tmp_path, ckpts, corpus_dir):
    r = run(
        "pretrain",
        "--size",
        "tiny",
        "--seq-len",
        "32",
        "--n-layers",
        "3",
        "--steps",
        "5",
        "--batch-size",
        "4",
        "--data",
        corpus_dir,
        "--out",
        tmp_path / "x",
        "--resume",
        ckpts["mdm"],
        "--device",
        "cpu",
        code=4,
    )
    assert "model.n_layers: checkpoint=2, requested=3" in r.stderr


def test_checkpoint_with_other_tokenizer(tmp_path, ckpts):
    from mdmctl.tokenizer import train_bpe

    from .conftest import make_docs

    bad = tmp_path / "step-00000004"
    shutil.copytree(ckpts["mdm"], bad)
    train_bpe(make_docs(30), 333).save(str(bad / "tokenizer.json"))
    manifest = json.loads((bad / "MANIFEST.json").read_text())
    from mdmctl.checkpoint import sha256_file

    f = bad / "tokenizer.json"
    manifest["files"]["tokenizer.json"] = {"size": f.stat().st_size, "sha256": sha256_file(f)}
    (bad / "MANIFEST.json").write_text(json.dumps(manifest))
    r = run("sample", "--checkpoint", bad, code=4)
    assert "is not the tokenizer the weights were trained with" in r.stderr


def test_truncated_and_corrupt_checkpoint(tmp_path, ckpts):
    bad = tmp_path / "step-00000004"
    shutil.copytree(ckpts["mdm"], bad)
    w = bad / "model.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) - 100])
    assert "truncated" in run("sample", "--checkpoint", bad, code=4).stderr
    w.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert "sha256 mismatch" in run("eval", "ppl", "--checkpoint", bad, code=4).stderr


def test_sample_json_and_eval_ppl_labels(ckpts, corpus_dir):
    r = run(
        "sample",
        "--checkpoint",
        ckpts["mdm"],
        "--prompt",
        "the cat",
        "--num-samples",
        "2",
        "--length",
        "8",
        "--steps",
        "4",
        "--json",
        "--cfg",
        "1.0",
    )
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(lines) == 2 and lines[0]["prompt"] == "the cat"
    assert "forward passes" in r.stderr and "tokens/s" in r.stderr
    mdm = json.loads(
        run("eval", "ppl", "--checkpoint", ckpts["mdm"], "--mc-samples", "4", "--json").stdout
    )
    arm = json.loads(run("eval", "ppl", "--checkpoint", ckpts["arm"], "--json").stdout)
    assert mdm["kind"] == "upper bound" and mdm["stderr"] > 0
    assert arm["kind"] == "exact" and arm["mc_samples"] is None
    assert mdm["tokens"] > 0 and arm["perplexity"] > 1


@pytest.mark.slow
def test_end_to_end_subprocess(tmp_path, corpus_file):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")

    def cli(*args):
        p = subprocess.run(
            [sys.executable, "-m", "mdmctl", *map(str, args)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert p.returncode == 0, p.stderr
        return p

    cli("tokenize", corpus_file, "--vocab-size", "400", "--out", "data/tiny")
    cli(
        "pretrain",
        "--size",
        "tiny",
        "--seq-len",
        "32",
        "--steps",
        "5",
        "--batch-size",
        "4",
        "--data",
        "data/tiny",
        "--show-samples",
        "1",
    )
    out = cli("sample", "--prompt", "the cat", "--length", "8", "--steps", "8").stdout
    assert out.startswith("the cat")
    ppl = json.loads(cli("eval", "ppl", "--mc-samples", "4", "--json").stdout)
    assert ppl["kind"] == "upper bound" and ppl["perplexity"] > 1


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_signal_saves_and_resume_matches_uninterrupted(tmp_path, corpus_dir, sig, code):
    import signal
    import time

    from safetensors.torch import load_file

    from mdmctl import checkpoint as ckpt

    args = [
        "pretrain",
        "--size",
        "tiny",
        "--seq-len",
        "32",
        "--steps",
        "120",
        "--batch-size",
        "4",
        "--data",
        corpus_dir,
        "--val-every",
        "1000",
        "--save-every",
        "1000",
        "--show-samples",
        "0",
        "--device",
        "cpu",
    ]
    cmd = [sys.executable, "-m", "mdmctl", *map(str, args)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.Popen(
        cmd + ["--out", str(tmp_path / "a")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = tmp_path / "a" / "metrics.jsonl"
    deadline = time.time() + 120
    while (
        not (metrics.exists() and metrics.read_text().count("\n") >= 2) and time.time() < deadline
    ):
        time.sleep(0.05)
    p.send_signal(getattr(signal, sig))
    _, err = p.communicate(timeout=120)
    assert p.returncode == code, err
    assert "checkpoint saved" in err and "Traceback" not in err
    stopped = ckpt.find_latest(tmp_path / "a")
    step = int(stopped.name.split("-")[1])
    assert 20 <= step < 120
    ckpt.verify(stopped)
    subprocess.run(cmd + ["--out", str(tmp_path / "a")], env=env, check=True, capture_output=True)
    subprocess.run(cmd + ["--out", str(tmp_path / "b")], env=env, check=True, capture_output=True)
    a = load_file(str(tmp_path / "a" / "checkpoints" / "step-00000120" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "checkpoints" / "step-00000120" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "args",
    [
        ("pretrain", "--lr", "inf"),
        ("pretrain", "--flops", "nan"),
        ("pretrain", "--eps", "-inf"),
        ("sample", "--cfg", "inf"),
        ("sample", "--temperature", "inf"),
        ("finetune", "--init", "x", "--data", "y", "--cfg-dropout", "nan"),
        ("finetune", "--init", "x", "--data", "y", "--lr", "inf"),
        ("tokenize", "--val-fraction", "inf"),
        ("eval", "gsm8k", "--answer-cfg", "inf"),
        ("eval", "arc_easy", "--cfg", "nan"),
        ("eval", "lm-eval", "--tasks", "x", "--limit", "inf"),
    ],
    ids=lambda a: " ".join(a),
)
def test_non_finite_float_options(args):
    r = run(*args, code=2)
    assert "must be a finite number" in r.stderr


def test_config_folder_and_out_file(tmp_path, corpus_dir):
    r = run("pretrain", "--config", tmp_path, "--data", corpus_dir, code=2)
    assert "is a folder; expected a TOML run file" in r.stderr
    f = tmp_path / "afile"
    f.write_text("x")
    args = ("--steps", "1", "--batch-size", "4", "--seq-len", "32", "--device", "cpu")
    r = run("pretrain", "--data", corpus_dir, "--out", f, *args, code=2)
    assert f"--out {f}: exists and is not a folder" in r.stderr.replace("\n", "")
    r = run("tokenize", "--out", f, code=2)
    assert "exists and is not a folder" in r.stderr
    assert f.read_text() == "x"


def test_run_dir_in_use_exits_2(tmp_path, corpus_dir):
    import socket

    out = tmp_path / "r"
    out.mkdir()
    (out / ".mdmctl.lock").write_text(
        json.dumps({"pid": os.getpid(), "host": socket.gethostname()})
    )
    r = run("pretrain", "--data", corpus_dir, "--out", out, "--steps", "1", code=2)
    assert "is in use by another run" in r.stderr and ".mdmctl.lock" in r.stderr


def test_verify_data_catches_out_of_vocabulary_ids(tmp_path, corpus_dir):
    from .test_data import _copy_corpus, _rewrite_shard

    data = _copy_corpus(corpus_dir, tmp_path)
    _rewrite_shard(data / "train-00000.safetensors", lambda t: t.__setitem__(2, 65000))
    args = ("--steps", "1", "--batch-size", "4", "--seq-len", "32", "--device", "cpu")
    r = run("pretrain", "--data", data, "--out", tmp_path / "r", "--verify-data", *args, code=4)
    assert "train-00000.safetensors: token id 65000" in r.stderr.replace("\n", "")


def test_out_of_vocabulary_id_past_the_last_window_is_a_typed_error(tmp_path, corpus_dir):
    """Without --verify-data, an id no training window holds (the shard's tail) reaches only the
    summary's unigram count: a typed corpus error (exit 4), not a shape-mismatch traceback."""
    from .test_data import _copy_corpus, _rewrite_shard

    data = _copy_corpus(corpus_dir, tmp_path)
    _rewrite_shard(data / "train-00000.safetensors", lambda t: t.__setitem__(-1, 65000))
    args = ("--steps", "1", "--batch-size", "4", "--seq-len", "32", "--device", "cpu")
    r = run("pretrain", "--data", data, "--out", tmp_path / "r", "--show-samples", "0", *args,
            code=4)  # fmt: skip
    assert "train-00000.safetensors: token id 65000" in r.stderr.replace("\n", "")
    assert "Traceback" not in r.stderr


def test_foreign_tokenizer_in_a_corpus_folder_is_refused(tmp_path, corpus_dir):
    """A tokenizer.json swapped into a corpus folder (corpus.json untouched) no longer trains a
    checkpoint that only sampling refuses later: pretrain stops before training (exit 4)."""
    from mdmctl.tokenizer import prepare, train_bpe

    from .test_data import _copy_corpus

    data = _copy_corpus(corpus_dir, tmp_path)
    other = train_bpe(["another corpus altogether, " * 20 + str(i) for i in range(50)], 300)
    prepare(other, add_missing=True)
    other.save(str(data / "tokenizer.json"))
    args = ("--steps", "1", "--batch-size", "4", "--seq-len", "32", "--device", "cpu")
    r = run("pretrain", "--data", data, "--out", tmp_path / "r", *args, code=4)
    assert "not the tokenizer the shards were written with" in r.stderr.replace("\n", " ")
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_eval_ppl_hashes_the_split_it_scores(tmp_path, ckpts, corpus_dir):
    from .test_data import _copy_corpus

    data = _copy_corpus(corpus_dir, tmp_path)
    shard = (
        data / json.loads((data / "corpus.json").read_text())["splits"]["val"]["shards"][0]["file"]
    )
    raw = bytearray(shard.read_bytes())
    raw[-3] ^= 0x01  # a flipped bit in the tokens, corpus.json untouched
    shard.write_bytes(bytes(raw))
    r = run("eval", "ppl", "--checkpoint", ckpts["mdm"], "--data", data, "--mc-samples", "2",
            code=4)  # fmt: skip
    assert "sha256 mismatch" in r.stderr


def test_failed_tokenize_leaves_no_folder_behind(tmp_path, corpus_dir):
    """A bad line found while writing shards (the tokenizer given, so writing starts at once):
    a folder the run created is removed; a folder that was there keeps what it held."""
    bad = tmp_path / "mixed.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": 5}\n')
    tok = corpus_dir / "tokenizer.json"
    r = run("tokenize", bad, "--tokenizer", tok, "--out", tmp_path / "new", code=3)
    assert "mixed.jsonl:2" in r.stderr and not (tmp_path / "new").exists()
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "notes.txt").write_text("mine")
    run("tokenize", bad, "--tokenizer", tok, "--out", tmp_path / "old", code=3)
    assert [p.name for p in (tmp_path / "old").iterdir() if p.suffix != ".json"] == ["notes.txt"]


def test_tokenize_on_a_full_disk(tmp_path, corpus_file, monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError

    real = safetensors.torch.save_file
    calls = []

    def fills_up(*a, **k):
        calls.append(1)
        if len(calls) == 2:  # the first shard lands, the second finds the disk full
            raise SafetensorError("Error while serializing: IoError(No space left on device)")
        return real(*a, **k)

    monkeypatch.setattr(safetensors.torch, "save_file", fills_up)
    out = tmp_path / "o"
    r = run("tokenize", corpus_file, "--vocab-size", "300", "--out", out, code=4)
    assert "no space left" in r.stderr and len(calls) == 2
    # No corpus.json, no orphan shard, no temp file: the folder this run created is gone.
    assert not out.exists()


def test_arm_sample_warns_about_mdm_only_options(ckpts):
    r = run("sample", "--checkpoint", ckpts["arm"], "--length", "4", "--steps", "8")
    r2 = run("sample", "--checkpoint", ckpts["arm"], "--length", "4", "--sampler", "ancestral")
    said = [" ".join(x.stderr.split()) for x in (r, r2)]  # the log may wrap a line
    for text, opt in zip(said, ("--steps", "--sampler"), strict=True):
        assert text.count(f"{opt} applies only to MDM checkpoints; ignored for this ARM") == 1
    for args in (("--checkpoint", ckpts["arm"]), ("--checkpoint", ckpts["mdm"], "--steps", "4")):
        r = run("sample", *args, "--length", "4")
        assert "only to MDM checkpoints" not in " ".join(r.stderr.split())


def test_summary_reports_skipped_non_finite_steps(capsys, tmp_path):
    from types import SimpleNamespace

    from mdmctl.cli import render_train_summary

    r = SimpleNamespace(
        run_dir=tmp_path,
        checkpoint=None,
        steps=8,
        tokens=1024,
        val_loss=3.0,
        val_loss_kind="MDM ELBO bound",
        unigram_entropy=None,
        train_loss=3.1,
        tokens_per_s=100.0,
        seconds=1.0,
        peak_rss_mb=10.0,
        n_params_non_embedding=1,
        device="cpu",
        attention="sdpa",
        resumed_from=None,
        nonfinite_skips=2,
    )
    render_train_summary(r, [], json_out=True)
    assert json.loads(capsys.readouterr().out)["nonfinite_skips"] == 2
    render_train_summary(r, [], json_out=False)
    assert "non-finite steps skipped" in capsys.readouterr().out
    render_train_summary(SimpleNamespace(**{**vars(r), "nonfinite_skips": 0}), [], False)
    assert "non-finite" not in capsys.readouterr().out


def test_results_on_stdout_whole_when_redirected(tmp_path, corpus_dir):
    # stdout is not a terminal here (as with `> results.txt`): the summary table goes there, with
    # the full run path and no wrapping; stderr carries only logs and progress.
    out = tmp_path / ("a-run-folder-with-a-long-name-" * 3)
    r = run(
        "pretrain", "--size", "tiny", "--seq-len", "32", "--steps", "2", "--batch-size", "4",
        "--data", corpus_dir, "--out", out, "--show-samples", "1", "--device", "cpu",
    )  # fmt: skip
    assert "training summary" in r.stdout and "training summary" not in r.stderr
    assert any(str(out) in ln for ln in r.stdout.splitlines()), r.stdout
    assert "sample 1:" in r.stdout and "…" not in r.stdout


def test_runs_lists_each_run_with_its_progress_and_best_loss(ckpts, tmp_path):
    root = ckpts["mdm"].parents[2]  # the folder holding the mdm and arm runs
    rows = json.loads(run("runs", root, "--json").stdout)
    assert sorted(r["objective"] for r in rows) == ["arm", "mdm"]
    for r in rows:
        assert (r["kind"], r["size"]) == ("pretrain", "tiny")
        assert (r["steps_done"], r["steps_total"]) == (4, 4)
        assert r["best_val_step"] == 4 and r["best_val_loss"] > 0
        assert r["newest_checkpoint"].endswith("step-00000004")
    assert "tiny" in run("runs", root).stdout
    assert "no such folder" in run("runs", tmp_path / "nope", code=2).stderr


def test_runs_lists_a_run_whose_config_is_missing_or_unreadable(ckpts, tmp_path):
    import shutil

    for name, damage in (("gone", "unlink"), ("torn", "{")):
        run_dir = tmp_path / "runs" / name
        shutil.copytree(ckpts["mdm"].parents[1], run_dir)
        cfg = run_dir / "config.json"
        cfg.unlink() if damage == "unlink" else cfg.write_text(damage)
    (tmp_path / "runs" / "export-hf").mkdir()  # a config.json that is no run: not listed
    (tmp_path / "runs" / "export-hf" / "config.json").write_text('{"model_type": "llama"}')
    rows = json.loads(run("runs", tmp_path / "runs", "--json").stdout)
    got = {r["path"].rsplit("/", 1)[-1]: (r["kind"], r["problem"], r["steps_done"]) for r in rows}
    assert got == {"gone": ("?", "no config.json", 4),
                   "torn": ("?", "config.json unreadable (JSONDecodeError)", 4)}  # fmt: skip
    assert "no config.json" in run("runs", tmp_path / "runs").stdout.replace("\n", " ")


def test_loss_curve_png(ckpts, tmp_path):
    pytest.importorskip("matplotlib")
    from mdmctl.run_summary import plot_loss_curve

    path = plot_loss_curve(ckpts["mdm"].parents[1], tmp_path / "loss.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_config_file_objective_counts_unless_the_flag_is_given(tmp_path, corpus_dir):
    toml = tmp_path / "run.toml"
    toml.write_text('[model]\nobjective = "arm"\n')
    common = ["--seq-len", "32", "--steps", "1", "--batch-size", "2", "--data", corpus_dir,
              "--show-samples", "0", "--device", "cpu", "--config", toml, "--json"]  # fmt: skip
    r = run("pretrain", "--out", tmp_path / "a", *common)
    assert json.loads((tmp_path / "a" / "config.json").read_text())["model"]["objective"] == "arm"
    assert "ARM cross-entropy" in r.stdout
    run("pretrain", "--out", tmp_path / "m", "--objective", "mdm", *common)
    assert json.loads((tmp_path / "m" / "config.json").read_text())["model"]["objective"] == "mdm"


def test_default_run_folders_name_objective_size_and_data(tmp_path, corpus_dir, monkeypatch):
    # Two natural runs on different data get different folders (no "changed setup" clash).
    monkeypatch.chdir(tmp_path)
    other = tmp_path / "other"
    shutil.copytree(corpus_dir, other)
    common = ["--seq-len", "32", "--steps", "1", "--batch-size", "2", "--show-samples", "0",
              "--device", "cpu"]  # fmt: skip
    run("pretrain", "--data", corpus_dir, *common)
    run("pretrain", "--data", other, "--objective", "arm", *common)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [
        f"arm-tiny-{other.name}",
        f"mdm-tiny-{corpus_dir.name}",
    ]
