from __future__ import annotations

import json
import time

import pytest

from mdmctl.errors import DataError
from mdmctl.evaluation.gsm8k import extract_answer, load_problems, normalize_number, rescore, score
from mdmctl.evaluation.reverse_curse import is_hit, sentence_bleu

from .conftest import SHARED


@pytest.mark.parametrize(
    "text,expected",
    [
        ("She pays 3 + 4 = 7 dollars.\n#### 7", "7"),
        ("#### 1,200", "1200"),
        ("the total is $1,200.00.", "1200"),
        ("so x = -3.50", "-3.5"),
        ("answer: 12.0 apples", "12"),
        ("#### 50%", "50"),
        ("first 5 then #### 8 later 9", "8"),
        ("no number here", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_normalize_number():
    assert normalize_number("+4.") == "4" and normalize_number("abc") is None
    assert normalize_number("0.25") == "0.25"


def test_score_and_rescore(tmp_path):
    data = tmp_path / "g.jsonl"
    data.write_text(
        "".join(
            json.dumps({"question": f"q{i}", "answer": f"x\n#### {i}"}) + "\n" for i in range(3)
        )
    )
    probs = load_problems(str(data))
    rows = score(probs, ["#### 0", "it is 1.", "#### 5"])
    assert [r["correct"] for r in rows] == [True, True, False]
    pred = tmp_path / "p.jsonl"
    pred.write_text(
        "".join(
            json.dumps({"question": f"q{i}", "generation": f"#### {i}"}) + "\n" for i in range(3)
        )
    )
    assert rescore(probs, str(pred)) == ["#### 0", "#### 1", "#### 2"]
    pred.write_text(json.dumps({"generation": "1"}) + "\n")
    with pytest.raises(DataError, match="1 lines but the problem set has 3"):
        rescore(probs, str(pred))
    pred.write_text(
        "".join(json.dumps({"question": "other", "generation": "1"}) + "\n" for _ in range(3))
    )
    with pytest.raises(DataError, match="question does not match"):
        rescore(probs, str(pred))
    data.write_text(json.dumps({"question": "q"}) + "\n")
    with pytest.raises(DataError, match=r"g\.jsonl:1: missing field 'answer'"):
        load_problems(str(data))


def test_hub_offline_fails_fast_with_a_hint():
    t0 = time.perf_counter()
    with pytest.raises(DataError, match="pass --data"):
        load_problems(None)
    assert time.perf_counter() - t0 < 5  # generous bound; the check itself is immediate offline


@pytest.mark.skipif(not (SHARED / "gsm8k").is_dir(), reason="../shared/data/gsm8k is absent")
def test_shared_gsm8k_references_extract():
    probs = load_problems(str(SHARED / "gsm8k" / "test.jsonl"))
    assert len(probs) == 1319 and all(p.answer is not None for p in probs)
    assert probs[0].answer == extract_answer(
        json.loads((SHARED / "gsm8k" / "test.jsonl").read_text().splitlines()[0])["answer"]
    )


def test_reverse_curse_scoring():
    assert is_hit("It was Daphne Barrington, of course", " Daphne Barrington")
    assert not is_hit("It was Daphne", " Daphne Barrington")
    assert sentence_bleu("the acclaimed director", "the acclaimed director") == pytest.approx(1.0)
    assert sentence_bleu("zzz", "the acclaimed director") == 0.0
    assert 0 < sentence_bleu("the acclaimed writer of books", "the acclaimed director") < 1


def test_cli_gsm8k_and_reverse_curse(tmp_path, corpus_dir):
    from typer.testing import CliRunner

    from mdmctl.cli import app

    runner = CliRunner()

    def run(*args, code=0):
        r = runner.invoke(app, [str(a) for a in args])
        assert r.exit_code == code, r.stdout + r.stderr
        assert "Traceback" not in r.stderr
        return r

    run(
        "pretrain",
        "--size",
        "tiny",
        "--seq-len",
        "48",
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--data",
        corpus_dir,
        "--out",
        tmp_path / "m",
        "--show-samples",
        "0",
        "--device",
        "cpu",
    )
    data = tmp_path / "g.jsonl"
    data.write_text(
        "".join(
            json.dumps({"question": "the cat sat", "answer": f"#### {i}"}) + "\n" for i in range(4)
        )
    )
    r = run(
        "eval",
        "gsm8k",
        "--checkpoint",
        tmp_path / "m",
        "--data",
        data,
        "--length",
        "8",
        "--steps",
        "4",
        "--out",
        tmp_path / "o.jsonl",
        "--json",
    )
    res = json.loads(r.stdout)
    assert res["n"] == 4 and 0 <= res["accuracy"] <= 1 and res["seconds_per_problem"] > 0
    lines = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and res["settings"]["two_stage"] is True
    # two-stage: stage 2 always continues after the answer marker
    assert all("\n#### " in x["generation"] or " #### " in x["generation"] for x in lines)
    r = run("eval", "gsm8k", "--data", data, "--predictions", tmp_path / "o.jsonl", "--json")
    assert json.loads(r.stdout)["accuracy"] == res["accuracy"]
    # the default length 256 does not fit a context of 48: generation is shortened to fit
    r = run("eval", "gsm8k", "--checkpoint", tmp_path / "m", "--data", data, "--steps", "4",
            "--one-stage", "--json")
    settings = json.loads(r.stdout)["settings"]
    assert settings["shortened_generations"] == 4 and settings["two_stage"] is False
    assert "--cfg" in run("eval", "gsm8k", "--data", data, "--cfg", "-1", code=2).stderr
    rc = tmp_path / "rc"
    rc.mkdir()
    for name in (
        "p2d_prompts_test",
        "p2d_reverse_prompts_test",
        "d2p_prompts_test",
        "d2p_reverse_prompts_test",
    ):
        (rc / f"{name}.jsonl").write_text(
            json.dumps({"prompt": "the cat", "completion": " sat"})
            + "\n"
            + json.dumps({"prompt": "the dog", "completion": " ran"})
            + "\n"
        )
    r = run(
        "eval",
        "reverse-curse",
        "--checkpoint",
        tmp_path / "m",
        "--data-dir",
        rc,
        "--total-length",
        "16",
        "--steps",
        "4",
        "--json",
        "--rank",
        "--rank-mc",
        "2",
    )
    res = json.loads(r.stdout)
    assert [x["split"] for x in res] == ["p2d_same", "p2d_reverse", "d2p_same", "d2p_reverse"]
    assert all(x["candidates"] == 2 and 0 <= x["rank_accuracy"] <= 1 for x in res)
    r = run("eval", "reverse-curse", "--checkpoint", tmp_path / "m", "--data-dir", rc,
            "--total-length", "16", "--steps", "4", "--json", "--splits", "p2d_reverse")
    assert [x["split"] for x in json.loads(r.stdout)] == ["p2d_reverse"]
    r = run("eval", "reverse-curse", "--data-dir", rc, "--splits", "p2d_backwards", code=2)
    assert "--splits" in r.stderr


def test_rank_accuracy_prefers_the_likely_completion():
    """A fake model that always gives token 7 probability ~1: the candidate '7 7' wins for every
    prompt, so exactly the rows whose reference is '7 7' are ranked right (both estimators)."""
    import torch

    from mdmctl.config import ModelConfig
    from mdmctl.evaluation.reverse_curse import rank_accuracy

    class Tok:
        def encode(self, text, add_special_tokens=False):
            return type("E", (), {"ids": [int(c) for c in text.split()]})()

    class Info:
        eos_id = 0

    for objective, mask_id in (("arm", -1), ("mdm", 11)):
        cfg = ModelConfig.from_name(
            "tiny", objective=objective, vocab_size=12, mask_id=mask_id, seq_len=16
        )

        class Fake:
            def __init__(self):
                self.cfg = cfg

            def __call__(self, x, doc_ids=None, select=None):
                logits = torch.zeros(*x.shape, 12)
                logits[..., 7] = 10.0
                if mask_id >= 0:
                    logits[..., mask_id] = float("-inf")
                return logits if select is None else logits[select]

        rows = [
            {"prompt": "1 2", "completion": "7 7"},
            {"prompt": "3", "completion": "7 7"},
            {"prompt": "4", "completion": "5 6"},
        ]
        acc, n = rank_accuracy(Fake(), Tok(), Info(), rows, "cpu", n_mc=4, batch_size=8, seed=0)
        assert n == 2 and acc == pytest.approx(2 / 3)


def test_answer_marker_follows_the_sft_formats():
    from mdmctl.evaluation.gsm8k import answer_marker

    assert answer_marker("<<2*3=6>> <<6+1=7>>") == " #### "
    assert answer_marker("She has 2 * 3 = 6 apples.") == "\n#### "


def test_fit_to_context():
    from mdmctl.evaluation.gsm8k import fit_to_context

    ids, lengths, shortened, truncated = fit_to_context([[1] * 10, [2] * 200, [3] * 250], 128, 256)
    assert lengths == [128, 56, 32] and (shortened, truncated) == (1, 1)
    assert ids[0] == [1] * 10 and len(ids[2]) == 224  # cut from the left to fit 32 generated
