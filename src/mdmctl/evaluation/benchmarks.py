"""Zero-shot benchmark definitions: lm-evaluation-harness 0.4.13's formatting of each task.

A task turns a raw dataset row (the field layout of the hub dataset lm-eval loads) into a
:class:`Doc`: the context, the scored continuations and the gold index, byte for byte what
lm-eval sends with ``num_fewshot=0`` (target delimiter " ", no description). Local files in the
format of ``../shared/data/benchmarks`` carry the formatted fields already; a test checks these
formatters against them.

Per-task defaults for the MDM follow the paper (docs/method.md §4): the chain rule for OBQA, PIQA,
BoolQ and LAMBADA, MC elsewhere; CFG 1.1 LAMBADA, 1.6 OBQA and BoolQ, 0.6 PIQA, ARC-e and SIQA,
0.7 RACE and HellaSwag; no CFG where the paper gives no scale (ARC-c, WinoGrande, SciQ).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["choice", "partial", "greedy"]
Estimator = Literal["mc", "mc-count", "mc-dream", "chain-rule"]
ESTIMATORS: tuple[str, ...] = ("mc", "mc-count", "mc-dream", "chain-rule")
"""The MDM likelihood estimators (``evaluation/likelihood.py``), here to stay torch-free."""


@dataclass(frozen=True, slots=True)
class Doc:
    id: Any
    context: str
    choices: list[str]
    """Scored continuations (``choice`` / ``greedy``), each with its leading delimiter space;
    for ``partial`` (WinoGrande) the bare options that complete ``context``."""
    gold: int
    contexts: list[str] | None = None
    """``partial``: one context per option; the shared ``continuation`` is what gets scored."""
    continuation: str | None = None


@dataclass(frozen=True, slots=True)
class Task:
    name: str
    file: str  # name in the shared benchmarks folder
    hub: tuple[str, str | None, str]  # dataset path, config name, split (lm-eval's defaults)
    kind: Kind
    metrics: tuple[str, ...]
    estimator: str  # paper default for an MDM
    cfg: float  # paper default unsupervised-CFG scale for an MDM
    format: Callable[[dict[str, Any], int], Doc]


def _arc(r: dict[str, Any], i: int) -> Doc:
    ch = r["choices"]
    return Doc(
        r.get("id", i),
        f"Question: {r['question']}\nAnswer:",
        [" " + c for c in ch["text"]],
        ch["label"].index(r["answerKey"]),
    )


def _hellaswag_clean(text: str) -> str:
    # lm-eval's hellaswag/utils.py preprocess, artefacts included (see the benchmarks README).
    text = text.strip().replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(r: dict[str, Any], i: int) -> Doc:
    ctx = r["ctx_a"] + " " + r["ctx_b"].capitalize()
    return Doc(
        r.get("ind", i),
        _hellaswag_clean(r["activity_label"] + ": " + ctx),
        [" " + _hellaswag_clean(e) for e in r["endings"]],
        int(r["label"]),
    )


def _piqa(r: dict[str, Any], i: int) -> Doc:
    return Doc(
        i, f"Question: {r['goal']}\nAnswer:", [" " + r["sol1"], " " + r["sol2"]], int(r["label"])
    )


def _social_iqa(r: dict[str, Any], i: int) -> Doc:
    return Doc(
        i,
        f"Q: {r['context']} {r['question']}\nA:",
        [" " + r[k] for k in ("answerA", "answerB", "answerC")],
        int(r["label"]) - 1,
    )


def _openbookqa(r: dict[str, Any], i: int) -> Doc:
    ch = r["choices"]
    return Doc(
        r.get("id", i),
        r["question_stem"],
        [" " + c for c in ch["text"]],
        ch["label"].index(r["answerKey"].lstrip()),
    )


def _boolq(r: dict[str, Any], i: int) -> Doc:
    return Doc(
        r.get("idx", i),
        f"{r['passage']}\nQuestion: {r['question']}?\nAnswer:",
        [" no", " yes"],
        int(r["label"]),
    )


def _winogrande(r: dict[str, Any], i: int) -> Doc:
    s = r["sentence"]
    blank = s.index("_")
    options = [r["option1"], r["option2"]]
    return Doc(
        i,
        s[:blank],
        options,
        {"1": 0, "2": 1}[r["answer"]],
        contexts=[s[:blank] + o for o in options],
        continuation=" " + s[blank + 1 :].strip(),
    )


def _lambada(r: dict[str, Any], i: int) -> Doc:
    words = r["text"].split(" ")
    return Doc(i, " ".join(words[:-1]), [" " + words[-1]], 0)


def _sciq(r: dict[str, Any], i: int) -> Doc:
    keys = ("distractor1", "distractor2", "distractor3", "correct_answer")
    return Doc(
        i,
        f"{r['support'].lstrip()}\nQuestion: {r['question']}\nAnswer:",
        [" " + r[k] for k in keys],
        3,
    )


def _race(r: dict[str, Any], i: int) -> Doc:
    # lm-eval's race/preprocess_race.py: the article, the earlier questions of the article with
    # their answers, then the last question.
    problems = ast.literal_eval(r["problems"]) if isinstance(r["problems"], str) else r["problems"]
    letter = {"A": 0, "B": 1, "C": 2, "D": 3}

    def answer(p: dict[str, Any]) -> str:
        return p["options"][letter[p["answer"]]]

    text = "Article: " + r["article"] + "\n\n"
    for p in problems[:-1]:
        if p["question"][-6:] == "  _  .":
            text += p["question"][:-5] + answer(p) + "\n"
        else:
            text += "Question: " + p["question"] + "\n" + "Answer: " + answer(p) + "\n"
    last = problems[-1]
    text += last["question"]
    return Doc(i, text, [" " + o for o in last["options"][:4]], letter[last["answer"]])


_MC = ("acc", "acc_norm")
TASKS: dict[str, Task] = {
    t.name: t
    for t in [
        Task(
            "arc_easy",
            "arc_easy.jsonl",
            ("allenai/ai2_arc", "ARC-Easy", "test"),
            "choice",
            _MC,
            "mc",
            0.6,
            _arc,
        ),
        Task(
            "arc_challenge",
            "arc_challenge.jsonl",
            ("allenai/ai2_arc", "ARC-Challenge", "test"),
            "choice",
            _MC,
            "mc",
            0.0,
            _arc,
        ),
        Task(
            "hellaswag",
            "hellaswag.jsonl.gz",
            ("Rowan/hellaswag", None, "validation"),
            "choice",
            _MC,
            "mc",
            0.7,
            _hellaswag,
        ),
        Task(
            "piqa",
            "piqa.jsonl",
            ("baber/piqa", None, "validation"),
            "choice",
            _MC,
            "chain-rule",
            0.6,
            _piqa,
        ),
        Task(
            "social_iqa",
            "social_iqa.jsonl",
            ("lighteval/siqa", None, "validation"),
            "choice",
            ("acc",),
            "mc",
            0.6,
            _social_iqa,
        ),
        Task(
            "openbookqa",
            "openbookqa.jsonl",
            ("allenai/openbookqa", "main", "test"),
            "choice",
            _MC,
            "chain-rule",
            1.6,
            _openbookqa,
        ),
        Task(
            "boolq",
            "boolq.jsonl",
            ("aps/super_glue", "boolq", "validation"),
            "choice",
            ("acc",),
            "chain-rule",
            1.6,
            _boolq,
        ),
        Task(
            "winogrande",
            "winogrande.jsonl",
            ("allenai/winogrande", "winogrande_xl", "validation"),
            "partial",
            ("acc",),
            "mc",
            0.0,
            _winogrande,
        ),
        Task(
            "lambada",
            "lambada_openai.jsonl",
            ("EleutherAI/lambada_openai", "default", "test"),
            "greedy",
            ("acc", "perplexity"),
            "chain-rule",
            1.1,
            _lambada,
        ),
        Task("sciq", "sciq.jsonl", ("allenai/sciq", None, "test"), "choice", _MC, "mc", 0.0, _sciq),
        Task(
            "race",
            "race.jsonl",
            ("EleutherAI/race", "high", "test"),
            "choice",
            ("acc",),
            "mc",
            0.7,
            _race,
        ),
    ]
}
