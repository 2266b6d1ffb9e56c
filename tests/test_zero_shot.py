"""Zero-shot tasks: formatters against the shared lm-eval files, metrics, the CLI, lm-eval."""

from __future__ import annotations

import json
import os
import textwrap

import pytest

from mdmctl.errors import ConfigError, DataError
from mdmctl.evaluation import zero_shot
from mdmctl.evaluation.benchmarks import TASKS, Doc
from mdmctl.evaluation.likelihood import Score
from mdmctl.evaluation.zero_shot import ZeroShotConfig, load_docs, score_task

from .conftest import SHARED, run

BENCH = SHARED / "benchmarks"


@pytest.mark.parametrize("name", [n for n in TASKS if n != "race"])
def test_formatter_reproduces_the_shared_lm_eval_rows(name):
    """Each hub-row formatter gives exactly lm-eval 0.4.13's context / choices / gold."""
    task = TASKS[name]
    path = BENCH / task.file
    if not path.is_file():
        pytest.skip(f"{path} absent (shared data not mounted)")
    from mdmctl.evaluation.generation import read_jsonl

    rows = read_jsonl(path)
    assert rows
    for i, r in enumerate(rows):
        d = task.format(r["raw"], i)
        want = (r["context"], r["choices"], r["gold"], r.get("contexts"), r.get("continuation"))
        assert (d.context, d.choices, d.gold, d.contexts, d.continuation) == want, r["_line"]


def test_race_formatter_matches_lm_eval():
    pytest.importorskip("lm_eval")
    import importlib

    pre = importlib.import_module("lm_eval.tasks.race.preprocess_race")
    problems = [
        {
            "question": "Where did Tom go?",
            "options": ["home", "school", "park", "shop"],
            "answer": "B",
        },
        {
            "question": "He went there by  _  .",
            "options": ["bus", "car", "bike", "foot"],
            "answer": "A",
        },
        {
            "question": "What did Tom eat?",
            "options": ["rice", "bread", "soup", "fish"],
            "answer": "D",
        },
    ]
    doc = {"article": "Tom went to school by bus.", "problems": repr(problems)}
    d = TASKS["race"].format(doc, 0)
    assert d.context == pre.doc_to_text(doc)
    assert d.choices == [" " + c for c in pre.doc_to_choice(doc)]
    assert d.gold == pre.doc_to_target(doc) == 3


def _fake_scores(values):
    it = iter(values)

    def fake(model, reqs, cfg, *, eos_id, device):
        return [Score(next(it), 0.0, True, len(x), False) for _, x in reqs]

    return fake


class _Obj:
    def __init__(self, **kw):
        self.__dict__.update(kw)


def _fake_model(objective="mdm"):
    return _Obj(cfg=_Obj(objective=objective, seq_len=64))


class _Tok:
    def encode(self, text, add_special_tokens=False):
        return _Obj(ids=[ord(c) for c in text])


def test_acc_and_acc_norm_follow_lm_eval(monkeypatch):
    """acc: argmax of the log-likelihood; acc_norm: of log-likelihood per character of the
    choice without its delimiter space."""
    docs = [Doc(0, "q", [" a", " bbbbbbbbb"], 1), Doc(1, "q", [" a", " bbbbbbbbb"], 0)]
    # doc 0: -2 vs -3 -> acc picks 0 (wrong); per char -2/1 vs -3/9 -> acc_norm picks 1 (right)
    # doc 1: -1 vs -12 (per char -1 vs -1.33) -> both pick 0 (right)
    monkeypatch.setattr(zero_shot, "loglikelihood", _fake_scores([-2.0, -3.0, -1.0, -12.0]))
    r = score_task(
        _fake_model(),
        _Tok(),
        _Obj(eos_id=0),
        TASKS["arc_easy"],
        docs,
        ZeroShotConfig(),
        "cpu",
        "ckpt",
        "mem",
    )
    assert r.metrics == {"acc": 0.5, "acc_norm": 1.0}
    assert r.stderr["acc"] == pytest.approx(0.5)  # sqrt(p(1-p)/(n-1)), p = 0.5, n = 2
    assert r.estimator == "mc" and r.cfg == 0.6  # arc_easy's paper defaults
    assert [d["pred"] for d in r.docs] == [0, 0] and [d["pred_norm"] for d in r.docs] == [1, 0]


def test_lambada_is_greedy_accuracy_and_perplexity(monkeypatch):
    docs = [Doc(0, "a b", [" c"], 0), Doc(1, "d e", [" f"], 0)]
    monkeypatch.setattr(zero_shot, "loglikelihood", _fake_scores([-1.0, -3.0]))
    r = score_task(
        _fake_model(),
        _Tok(),
        _Obj(eos_id=0),
        TASKS["lambada"],
        docs,
        ZeroShotConfig(estimator="mc"),
        "cpu",
        "ckpt",
        "mem",
    )
    assert r.metrics["acc"] == 1.0
    assert r.metrics["perplexity"] == pytest.approx(2.718281828**2)


def test_winogrande_scores_the_shared_continuation(monkeypatch):
    seen = []

    def fake(model, reqs, cfg, *, eos_id, device):
        seen.extend(reqs)
        return [Score(-float(i), 0.0, None, 1, False) for i in range(len(reqs))]

    monkeypatch.setattr(zero_shot, "loglikelihood", fake)
    d = Doc(0, "A so ", ["X", "Y"], 0, contexts=["A so X", "A so Y"], continuation=" went.")
    r = score_task(
        _fake_model(),
        _Tok(),
        _Obj(eos_id=0),
        TASKS["winogrande"],
        [d],
        ZeroShotConfig(),
        "cpu",
        "ckpt",
        "mem",
    )
    # "A so X" + " went." -> the continuation's tokens are " went." in both requests
    assert [bytes(x).decode() for _, x in seen] == [" went.", " went."]
    assert [bytes(c).decode() for c, _ in seen] == ["A so X", "A so Y"]
    assert r.metrics == {"acc": 1.0}


def test_bad_task_files(tmp_path):
    f = tmp_path / "arc_easy.jsonl"
    f.write_text(json.dumps({"context": "q", "choices": [" a"], "gold": 3}) + "\n")
    with pytest.raises(DataError, match=r"arc_easy.jsonl:1: 'gold' must be an index"):
        load_docs(TASKS["arc_easy"], str(f), None)
    f.write_text(json.dumps({"context": "q", "gold": 0}) + "\n")
    with pytest.raises(DataError, match=r":1: missing field 'choices'"):
        load_docs(TASKS["arc_easy"], str(f), None)
    with pytest.raises(DataError, match="no piqa.jsonl"):
        load_docs(TASKS["piqa"], str(tmp_path), None)
    t0 = __import__("time").perf_counter()
    with pytest.raises(DataError, match="pass --data"):
        load_docs(TASKS["piqa"], None, None)  # offline (HF_HUB_OFFLINE=1 in conftest)
    assert __import__("time").perf_counter() - t0 < 1.0
    with pytest.raises(ConfigError, match="--cfg"):
        ZeroShotConfig(cfg=-0.5)
    with pytest.raises(ConfigError, match="unknown task 'arc_eazy'"):
        zero_shot.resolve_tasks(["arc_eazy"])


def _task_files(tmp_path):
    d = tmp_path / "bench"
    d.mkdir()
    rows = [
        {"context": f"the cat sat on the {w}", "choices": [" mat.", " dog ran."], "gold": i % 2}
        for i, w in enumerate(["mat", "rug", "bed", "sofa"])
    ]
    (d / "piqa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    lam = [{"context": "the dog ran to the", "choices": [" park."], "gold": 0}] * 3
    (d / "lambada_openai.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lam))
    return d


def test_cli_task_and_all(tmp_path, ckpts):
    d = _task_files(tmp_path)
    r = run(
        "eval",
        "piqa",
        "--checkpoint",
        ckpts["mdm"],
        "--data",
        d,
        "--estimator",
        "mc",
        "--mc-samples",
        "4",
        "--json",
        "--out",
        tmp_path / "piqa.jsonl",
    )
    (res,) = json.loads(r.stdout)
    assert res["task"] == "piqa" and res["n"] == 4 and res["mc_samples"] == 4
    assert 0 <= res["metrics"]["acc"] <= 1 and set(res["metrics"]) == {"acc", "acc_norm"}
    assert len((tmp_path / "piqa.jsonl").read_text().splitlines()) == 4
    r = run(
        "eval",
        "all",
        "--checkpoint",
        ckpts["arm"],
        "--data",
        d,
        "--out",
        tmp_path / "all.json",
        "--json",
    )
    names = [x["task"] for x in json.loads(r.stdout)]
    assert names == ["piqa", "lambada"]  # the tasks with a file in the folder, suite order
    saved = json.loads((tmp_path / "all.json").read_text())
    assert [x["task"] for x in saved["results"]] == names
    assert saved["results"][1]["estimator"] == "exact" and len(saved["samples"]["lambada"]) == 3
    run("eval", "piqa", "--checkpoint", ckpts["arm"], "--data", d, "--cfg", "1", code=2)
    run("eval", "piqa", "--checkpoint", ckpts["mdm"], "--data", d / "nope.jsonl", code=3)
    r = run("eval", "all", "--checkpoint", ckpts["mdm"], "--data", d / "piqa.jsonl", code=2)
    assert "not a folder" in r.stderr


def test_lm_eval_adapter_runs_real_tasks_offline(tmp_path, ckpts):
    """A real lm-eval run over local jsonl tasks: loglikelihood (multiple choice and lambada
    style), loglikelihood_rolling and generate_until through the registered model."""
    pytest.importorskip("lm_eval")
    data = tmp_path / "docs.jsonl"
    rows = [
        {
            "question": f"the cat sat on the {w}",
            "choices": [" mat.", " dog."],
            "gold": i % 2,
            "answer": "mat",
            "text": f"the dog ran to the park. {w} " * 3,
        }
        for i, w in enumerate(["mat", "rug", "bed"])
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    head = f"""
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {data}
        test_split: test
    """
    specs = {
        "t_mc": """
            output_type: multiple_choice
            doc_to_text: "{{question}}"
            doc_to_choice: "{{choices}}"
            doc_to_target: gold
            metric_list: [{metric: acc}, {metric: acc_norm}]
        """,
        "t_ll": """
            output_type: loglikelihood
            doc_to_text: "{{question}}"
            doc_to_target: " mat."
            metric_list: [{metric: perplexity}, {metric: acc}]
        """,
        "t_roll": """
            output_type: loglikelihood_rolling
            doc_to_text: ""
            doc_to_target: "{{text}}"
            metric_list: [{metric: word_perplexity}, {metric: bits_per_byte}]
        """,
        "t_gen": """
            output_type: generate_until
            doc_to_text: "{{question}}"
            doc_to_target: "{{answer}}"
            generation_kwargs: {until: ["."], max_gen_toks: 6}
            metric_list: [{metric: exact_match}]
        """,
    }
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    for name, body in specs.items():
        (tasks / f"{name}.yaml").write_text(
            f"task: {name}\n" + textwrap.dedent(head) + textwrap.dedent(body)
        )
    env = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    assert all(os.environ.get(k) == v for k, v in env.items())
    for obj in ("mdm", "arm"):
        out = tmp_path / f"{obj}.json"
        r = run(
            "eval",
            "lm-eval",
            "--checkpoint",
            ckpts[obj],
            "--tasks",
            ",".join(n.replace("_", "-") if n == "t_mc" else n for n in specs),  # t-mc = t_mc
            "--include-path",
            tasks,
            "--model-args",
            "mc_num=4,steps=3",
            "--output",
            out,
            "--bootstrap-iters",
            "10",
            "--json",
        )
        res = json.loads(r.stdout[r.stdout.index("{") :])
        assert set(res) == set(specs), r.stdout[:300]
        assert 0 <= res["t_mc"]["acc,none"] <= 1
        assert res["t_ll"]["perplexity,none"] > 1
        assert res["t_roll"]["word_perplexity,none"] > 1
        assert res["t_gen"]["exact_match,none"] in (0.0, 1 / 3, 2 / 3, 1.0)
        assert json.loads(out.read_text())["results"].keys() == res.keys()
    r = run(
        "eval",
        "lm-eval",
        "--checkpoint",
        ckpts["mdm"],
        "--tasks",
        "no_such_task",
        "--include-path",
        tasks,
        code=2,
    )
    assert "unknown lm-eval task" in r.stderr
    r = run(
        "eval",
        "lm-eval",
        "--checkpoint",
        ckpts["mdm"],
        "--tasks",
        "t_mc",
        "--include-path",
        tasks,
        "--model-args",
        "mc_nmu=4",
        code=2,
    )
    assert "--model-args" in r.stderr and "mc_nmu" in r.stderr
    r = run(
        "eval",
        "lm-eval",
        "--checkpoint",
        ckpts["arm"],
        "--tasks",
        "t_mc",
        "--include-path",
        tasks,
        "--model-args",
        "cfg=1",
        code=2,
    )
    assert "cfg applies to objective 'mdm'" in r.stderr


def test_lm_eval_hub_task_offline_is_one_typed_line(ckpts):
    # piqa's data lives on the hub; with HF_DATASETS_OFFLINE=1 (conftest) lm-eval cannot fetch it.
    pytest.importorskip("lm_eval")
    r = run("eval", "lm-eval", "--tasks", "piqa", "--checkpoint", ckpts["mdm"], "--limit", "2",
            code=3)  # fmt: skip
    (line,) = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert "could not be fetched from the hub" in line and "--include-path" in line


def test_lm_eval_missing_names_the_extra(ckpts, monkeypatch):
    import sys

    # import lm_eval (and any submodule an earlier test cached) -> ImportError
    for name in ["lm_eval", *(m for m in sys.modules if m.startswith("lm_eval."))]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "mdmctl.evaluation.lm_eval_adapter", raising=False)
    r = run("eval", "lm-eval", "--tasks", "piqa", "--checkpoint", ckpts["mdm"], code=2)
    assert "pip install 'mdmctl[eval]'" in r.stderr


def test_lm_eval_model_args_reach_the_sampler(ckpts, monkeypatch):
    """generate_until decodes with the model_args' decoding rules (strings, as lm-eval passes
    them): the same text as ``generate`` with those rules, and an ARM refuses MDM-only ones."""
    pytest.importorskip("lm_eval")
    from types import SimpleNamespace

    from mdmctl.evaluation.lm_eval_adapter import MdmctlLM
    from mdmctl.sampling import SampleConfig, generate
    from mdmctl.sampling import cache as cache_mod

    windows = []
    real_init = cache_mod.CachedMDM.__init__

    def spy(self, model, mode, window=0, mask_id=None, *rest, **kw):
        windows.append((mode, window))
        real_init(self, model, mode, window, mask_id, *rest, **kw)

    rules = dict(block_length="2", threshold="0.5", cache="dual", cache_window="2",
                 suffix_window="1")  # fmt: skip
    monkeypatch.setattr(cache_mod.CachedMDM, "__init__", spy)
    lm = MdmctlLM(checkpoint=str(ckpts["mdm"]), device="cpu", min_length="3", **rules)
    assert lm.gen_cfg.decoding.min_length == 3 and lm.gen_cfg.decoding.suffix_window == 1
    prompts = ["the cat sat", "a dog"]
    got = lm.generate_until([SimpleNamespace(args=(p, {"until": [], "max_gen_toks": 6}))
                             for p in prompts])  # fmt: skip
    scfg = SampleConfig.create(length=6, steps=6, temperature=0.0, batch_size=32, block_length=2,
                        threshold=0.5, cache="dual", cache_window=2, suffix_window=1,
                        min_length=3)  # fmt: skip
    want = generate(lm.model, lm.tok, lm.info, prompts, scfg, lm._device).texts
    assert got == [w or "" for w in want]
    assert windows == [("dual", 2)] * 2  # generate_until's sampler, then the reference's
    with pytest.raises(ConfigError, match="--cache, --cache-window apply to objective 'mdm'"):
        MdmctlLM(checkpoint=str(ckpts["arm"]), device="cpu", cache="dual", cache_window="2")
