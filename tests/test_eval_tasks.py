from __future__ import annotations

import json
import time

import pytest

from mdmctl.errors import DataError
from mdmctl.evaluation.gsm8k import load_problems, rescore, score
from mdmctl.evaluation.gsm8k_grade import (
    extract_answer,
    normalize_number,
    smdm_correct,
    smdm_normalize,
    word_number,
)
from mdmctl.evaluation.reverse_curse import is_hit, sentence_bleu, smdm_bleu

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
        # issue 8's cases
        ("#### 12 #### 12 #### 1", "12"),  # the first '####' of stage 2, not the last
        ("#### 1/2", "0.5"),
        ("#### 3 1/2 cups", "3.5"),
        ("#### 1/3", "1/3"),
        ("#### 10-15 minutes", "10"),  # a range, not a minus
        ("so it takes 10-15", "15"),
        ("#### - 12 apples", "12"),  # a bullet, not a minus
        ("#### 1,2,3", "1"),  # not 123
        ("#### −7", "-7"),  # Unicode minus
        ("#### -$5.50", "-5.5"),
        ("x = 3-4", "4"),
        ("#### 1" + "0" * 20, "1" + "0" * 20),  # exact, no float rounding
        # issue 28's three, wrong by both rules before
        ("The answer is 18. Check: 18 / 2 = 9, 9 * 2 = 18 - 0", "18"),  # a check after it
        ("Answer: 18 apples. To check: 6 + 12 = 18, then 20 - 2", "18"),
        ("#### twelve", "12"),  # in words
        ("#### one hundred and five apples", "105"),
        ("#### Twenty-five", "25"),
        ("#### 8:30", "8:30"),  # a clock time: one value, never 8
        ("He leaves at 8:30", "8:30"),  # never the 30 of it
        ("#### 8:30 pm, 45 minutes later", "8:30"),
        ("3:2 ratio", "2"),  # a ratio of single digits stays two numbers
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    "raw,normal",
    [  # each checked against SMDM's eval/math_normalization.py (2026-12-07)
        ("72", "72"), ("1,200", "1200"), ("$18.00", "18.00"), ("18 dollars", "18"),
        ("x = 5", "5"), ("\\boxed{12}", "12"), ("\\frac12", "\\frac{1}{2}"), ("a 5", "5"),
        ("an apple 7", "apple7"), ("5 hours", "5"), ("12 (check: 3*4 = 12)", "12)"),
        ("3 * 6 = 18", "18"), ("twelve", "twelve"), ("8:30", "8:30"), ("50%", "50%"),
        ("1,000.5", "1,000.5"), ("\\text{ 5 }", "5"), ("", ""), ("$5$ cents", "5"),
        ("\\sqrt2", "\\sqrt{2}"), ("The answer is 18. Check: 18 / 2 = 9", "9"),
    ],
)  # fmt: skip
def test_smdm_normalisation(raw, normal):
    assert smdm_normalize(raw) == normal


@pytest.mark.parametrize(
    "text,target,smdm,mdmctl",
    [
        ("#### 18", "18", True, True),
        ("####18", "18", False, True),  # SMDM's marker needs the space
        ("#### 18\nCheck: 9 * 2 = 18", "18", False, True),  # not on the last line
        ("#### 18. Check: 18 / 2 = 9", "18", False, True),  # the text after its last '='
        ("#### 3 * 6 = 18", "18", True, False),  # the reverse
        ("#### 18.00 dollars", "18", True, True),  # values, not strings
        ("#### 1/2", "0.5", True, True),
        ("#### 5\n#### 7", "7", True, False),  # the last marker, not the first
        ("The answer is 18.", "18", False, True),  # no marker: nothing, for SMDM
        ("#### twelve", "12", False, True),
        ("#### 8:30", "8", False, False),
    ],
)
def test_the_two_graders(text, target, smdm, mdmctl):
    assert smdm_correct(text, target) is smdm
    assert (extract_answer(text) == normalize_number(target)) is mdmctl


def test_word_number_reads_only_a_leading_number():
    assert word_number(" forty two apples") == ["42"]
    assert word_number("three thousand and twelve") == ["3012"]
    assert word_number("apples: twelve") == [] and word_number("and") == []


def test_normalize_number():
    assert normalize_number("+4.") == "4" and normalize_number("abc") is None
    assert normalize_number("0.25") == "0.25" and normalize_number("1200.50") == "1200.5"
    # large numbers compare exactly (1e20 and 1e200 used to both become '1e+2')
    assert normalize_number("1e20") == "1" + "0" * 20 != normalize_number("1e200")
    assert normalize_number("1" + "0" * 200) == normalize_number("1e200")
    assert normalize_number("10000000000000001") != normalize_number("10000000000000000")
    assert normalize_number("0.1") == normalize_number(".10") == "0.1"


@pytest.mark.skipif(not (SHARED / "gsm8k").is_dir(), reason="../shared/data/gsm8k is absent")
def test_grader_agrees_with_every_human_written_reference():
    """All 8,792 GSM8K solutions: both graders read the number the dataset's README defines
    (the text after '#### ', commas removed) from the worked solution, reasoning included."""
    n = 0
    for name in ("train.jsonl", "test.jsonl"):
        for line in (SHARED / "gsm8k" / name).read_text().splitlines():
            ans = json.loads(line)["answer"]
            ref = ans.split("#### ")[-1].strip().replace(",", "")
            assert extract_answer(ans) == str(int(ref)) if ref.lstrip("-").isdigit() else ref
            assert smdm_correct(ans, ans.split("####")[-1].strip())  # SMDM's rule reads it too
            n += 1
    assert n == 8792


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
    assert [r["correct_smdm"] for r in rows] == [True, False, False]
    # two stages: SMDM's rule reads reasoning and answer as one decoded text
    rows = score(probs, ["", "1", "#### 2"], reasoning=["x #### 0", "x #### ", "x"])
    assert [r["correct_smdm"] for r in rows] == [True, True, True]
    pred = tmp_path / "p.jsonl"
    pred.write_text(
        "".join(
            json.dumps({"question": f"q{i}", "generation": f"#### {i}"}) + "\n" for i in range(3)
        )
    )
    assert rescore(probs, str(pred)) == (["#### 0", "#### 1", "#### 2"], None)
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


@pytest.mark.parametrize(
    "hyp,ref",
    [
        ("the acclaimed director of the film", " the acclaimed director of the film"),
        (
            " is understatement D J Journe Th Through Time.",
            "the acclaimed director of 'A Journey Through Time'",
        ),
        (
            "the acclaimed diretortor of the v reality masterpiece",
            "The acclaimed director of the virtual reality masterpiece",
        ),
        ("abc", "the acclaimed director"),  # unigram matches, no 4-gram: nltk's 1e-77
        ("zzz", "the acclaimed director"),  # no unigram match: 0
        ("Daphne", "Daphne Barrington"),  # short: brevity penalty
        ("", "Daphne Barrington"),
    ],
)
def test_smdm_bleu_equals_nltk_on_raw_strings(hyp, ref):
    """SMDM: sentence_bleu([ref], gen) on stripped lower-cased strings, i.e. over characters."""
    import warnings

    bleu = pytest.importorskip("nltk.translate.bleu_score")
    g, r = hyp.strip().lower(), ref.strip().lower()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = bleu.sentence_bleu([r], g) if g else 0.0
    assert smdm_bleu(hyp, ref) == pytest.approx(want, rel=1e-9, abs=1e-300)


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
    # format compliance is reported, per problem and overall
    assert all(isinstance(x["stopped"], bool) and "reasoning" in x for x in lines)
    c = res["compliance"]
    assert c["stopped"] == sum(x["stopped"] for x in lines) / 4
    assert c["answer_stopped"] == sum(x["answer_stopped"] for x in lines) / 4
    assert c["marker"] == sum("####" in x["generation"] for x in lines) / 4
    r = run("eval", "gsm8k", "--data", data, "--predictions", tmp_path / "o.jsonl", "--json")
    assert json.loads(r.stdout)["accuracy"] == res["accuracy"]
    # SMDM's canvas (--total-length 256) is capped at the context of 48: generations fill it
    r = run(
        "eval",
        "gsm8k",
        "--checkpoint",
        tmp_path / "m",
        "--data",
        data,
        "--steps",
        "4",
        "--one-stage",
        "--json",
        "--out",
        tmp_path / "o1.jsonl",
    )
    settings = json.loads(r.stdout)["settings"]
    assert settings["total_length"] == 256 and settings["two_stage"] is False
    assert settings["truncated_prompts"] == 0 and settings["nfe"] <= 4
    r = run("eval", "gsm8k", "--data", data, "--total-length", "64", "--length", "8", code=2)
    assert "--total-length" in r.stderr
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
        "--splits",
        "p2d_reverse",
    )
    assert [x["split"] for x in json.loads(r.stdout)] == ["p2d_reverse"]
    r = run("eval", "reverse-curse", "--data-dir", rc, "--splits", "p2d_backwards", code=2)
    assert "--splits" in r.stderr


def test_generation_tasks_on_an_arm_drop_the_mdm_recipe(tmp_path, ckpts):
    """The recipes' MDM defaults (CFG 0.1 / 0.8, steps, sampler) do not apply to an ARM: left
    at their defaults they are dropped silently; chosen, CFG is refused and steps / sampler are
    ignored with one warning (as ``sample`` does)."""
    from tests.conftest import run

    data = tmp_path / "g.jsonl"
    data.write_text(json.dumps({"question": "the cat sat", "answer": "#### 3"}) + "\n")
    gsm = ("eval", "gsm8k", "--checkpoint", ckpts["arm"], "--data", data, "--length", "4")
    r = run(*gsm, "--json")
    assert json.loads(r.stdout)["n"] == 1 and "apply only to MDM" not in r.stderr
    r = run(*gsm, "--steps", "8", "--sampler", "ancestral", "--json")
    assert "--steps, --sampler apply only to MDM checkpoints; ignored" in " ".join(r.stderr.split())
    assert "--cfg applies to objective 'mdm'" in run(*gsm, "--cfg", "0.5", code=2).stderr
    rc = tmp_path / "rc"
    rc.mkdir()
    (rc / "p2d_prompts_test.jsonl").write_text('{"prompt": "the cat", "completion": " sat"}\n')
    r = run("eval", "reverse-curse", "--checkpoint", ckpts["arm"], "--data-dir", rc,
            "--splits", "p2d_same", "--total-length", "12", "--json")  # fmt: skip
    assert json.loads(r.stdout)[0]["n"] == 1 and "apply only to MDM" not in r.stderr


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


def test_fit_to_context():
    from mdmctl.evaluation.gsm8k import fit_to_context

    ids, lengths, shortened, truncated = fit_to_context([[1] * 10, [2] * 200, [3] * 250], 128, 256)
    assert lengths == [128, 56, 32] and (shortened, truncated) == (1, 1)
    assert ids[0] == [1] * 10 and len(ids[2]) == 224  # cut from the left to fit 32 generated


def test_gsm8k_stage_contexts_are_prefixes_of_the_training_examples(tmp_path):
    """Decode as trained: for a training problem, stage 1's context is a token-for-token prefix
    of its first training example and stage 2's (question + the reasoning) of its second."""
    from mdmctl.data.sft import read_examples, tokenize_examples
    from mdmctl.evaluation.gsm8k import stage_contexts
    from mdmctl.tokenizer import EOS_TOKEN, train_bpe

    src = SHARED / "gsm8k" / "train.jsonl"
    lines = (
        src.read_text().splitlines()[:20]
        if src.is_file()
        else [
            json.dumps(
                {
                    "question": "Tom has 3 apples and buys 4. How many?",
                    "answer": "He has 3 + 4 = <<3+4=7>>7 apples.\n#### 7",
                }
            )
        ]
    )
    (tmp_path / "t.jsonl").write_text("\n".join(lines) + "\n")
    tok = train_bpe(iter(json.loads(x)["question"] + json.loads(x)["answer"] for x in lines), 400)
    eos = tok.token_to_id(EOS_TOKEN)
    examples, _ = tokenize_examples(read_examples(tmp_path / "t.jsonl"), tok, eos, 10_000)
    for i, line in enumerate(lines):
        row = json.loads(line)
        first, second = examples[2 * i], examples[2 * i + 1]
        # what the sampler returns when the model writes its stage-1 training target
        reasoning = tok.decode(first.response[:-1])
        assert reasoning == "Answer: " + row["answer"].split("####")[0]
        ctx1 = stage_contexts(tok, [row["question"]])[0]
        ctx2 = stage_contexts(tok, [row["question"]], [reasoning])[0]
        assert ctx1 == first.prompt and (first.prompt + first.response)[: len(ctx1)] == ctx1
        assert ctx2 == second.prompt and (second.prompt + second.response)[: len(ctx2)] == ctx2
        assert tok.decode(second.response[:-1]) == "####" + row["answer"].split("####")[1]


def test_rank_candidates_one_description_per_person():
    from mdmctl.evaluation.reverse_curse import persons_of, rank_candidates

    rows = [
        {"prompt": "Ann Lee was", "completion": " a chef."},
        {"prompt": "Known as Ann Lee,", "completion": " the chef."},
        {"prompt": "Bo Li was", "completion": " a pilot."},
        {"prompt": "Bo Li is", "completion": " a pilot."},
    ]
    persons = persons_of(rows, [" Ann Lee", " Bo Li"])
    assert persons == ["Ann Lee", "Ann Lee", "Bo Li", "Bo Li"]
    assert rank_candidates(rows, persons) == [
        [" a chef.", " a pilot."],
        [" the chef.", " a pilot."],  # never its own person's paraphrase
        [" a pilot.", " a chef."],  # Ann's tie between paraphrases: the first seen
        [" a pilot.", " a chef."],
    ]
    # Without persons: every distinct completion, the reference first.
    assert rank_candidates(rows[:3], None)[1] == [" the chef.", " a chef.", " a pilot."]
    assert persons_of(rows, [" Cy Wu"]) is None


@pytest.mark.skipif(
    not (SHARED / "reversal_curse").is_dir(), reason="../shared/data/reversal_curse is absent"
)
def test_description_files_rank_against_thirty_persons():
    """The shipped description files: every prompt names exactly one of the paired file's 30
    people, so each reference competes with 29 other people's descriptions (chance 1/30)."""
    from mdmctl.evaluation.generation import read_jsonl
    from mdmctl.evaluation.reverse_curse import PAIRED, SPLITS, persons_of, rank_candidates

    d = SHARED / "reversal_curse"
    for split, pair in PAIRED.items():
        rows = read_jsonl(d / SPLITS[split][0])
        names = [r["completion"] for r in read_jsonl(d / SPLITS[pair][0])]
        persons = persons_of(rows, names)
        assert persons is not None and len(set(persons)) == 30
        cands = rank_candidates(rows, persons)
        assert {len(c) for c in cands} == {30}
        assert all(c[0] == r["completion"] for c, r in zip(cands, rows, strict=True))


def test_reverse_curse_seeds_table(tmp_path, monkeypatch):
    """examples/reverse_curse/seeds_table.py: mean ± sample sd over seeds, mean stderr."""
    import runpy
    import sys
    from pathlib import Path

    for seed, acc in (("0", 0.2), ("1", 0.4), ("2", 0.6)):
        w = tmp_path / ("work/reverse_curse" + ("" if seed == "0" else f"-seed{seed}"))
        w.mkdir(parents=True)
        row = {"split": "p2d_reverse", "direction": "reverse", "accuracy": acc, "stderr": 0.01,
               "rank_accuracy": acc / 2, "rank_stderr": 0.03, "candidates": 30}  # fmt: skip
        for run in ("mdm-cfg", "mdm-nocfg", "arm"):
            (w / f"{run}.json").write_text(json.dumps([row]))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["seeds_table.py", "0", "1", "work/reverse_curse-seed2"])
    script = Path(__file__).parents[1] / "examples/reverse_curse/seeds_table.py"
    out = []
    monkeypatch.setattr("builtins.print", lambda *a: out.append(" ".join(map(str, a))))
    runpy.run_path(str(script), run_name="__main__")
    line = next(ln for ln in out if ln.startswith("| p2d_reverse"))
    assert "0.400 ± 0.200 (se 0.010)" in line and "0.200 ± 0.100 (se 0.030)" in line
    assert line.endswith("| 0.033 |")
    seed1 = next(ln for ln in out if ln.startswith("| seed 1 |"))  # the per-seed table
    assert seed1 == "| seed 1 | 0.400 | 0.400 | 0.200 | 0.200 |"
