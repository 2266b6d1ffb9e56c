"""GSM8K: generate answers as SMDM does, extract the final number, score exact match
(docs/method.md §6).

Prompts and decoding follow SMDM's ``evaluate_gsm8k.py`` and the examples its ``sft/gsm8k_data.py``
trains on (see ``data/sft.py``): stage 1 generates ``Answer: reasoning`` after ``Question: q``;
stage 2 gets the question and the stage-1 text tokenized exactly as its training example was (each
piece on its own) and writes ``####answer`` itself. Lengths are SMDM's: ``total_length`` (its
``--length 256``) is the whole canvas, prompt plus generation, at each stage. Grading is in
``gsm8k_grade.py``. Format compliance is reported beside accuracy: the share of generations that
stopped (eos before the canvas end) and that contain the ``####`` marker.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from mdmctl.errors import ConfigError, DataError
from mdmctl.evaluation.generation import binomial_stderr, read_jsonl, write_jsonl
from mdmctl.evaluation.gsm8k_grade import extract_answer, smdm_correct
from mdmctl.evaluation.hub import load_hub_split

HUB_ID = "openai/gsm8k"
QUESTION, ANSWER = "Question: ", "Answer: "  # SMDM's prompt and reasoning prefixes


@dataclass(frozen=True, slots=True)
class Problem:
    question: str
    answer: str  # normalised reference
    source: str
    target: str = ""  # the reference's text after its last '#### ' (SMDM's ``target``)


def load_problems(path: str | None, limit: int | None = None) -> list[Problem]:
    """From a local jsonl (question / answer with '#### N'), or the hub's test split online."""
    if path is None:
        rows = load_hub_split(
            HUB_ID, "main", "test", "pass --data FILE.jsonl (e.g. ../shared/data/gsm8k/test.jsonl)"
        )
        where = HUB_ID
    else:
        rows = read_jsonl(path)
        where = str(path)
    out = []
    for i, r in enumerate(rows):
        line = f"{where}:{r.get('_line', i + 1)}"
        for key in ("question", "answer"):
            if not isinstance(r.get(key), str):
                raise DataError(f"{line}: missing field '{key}'")
        ref = extract_answer(r["answer"])
        if ref is None:
            raise DataError(f"{line}: answer has no final number ('#### N')")
        target = r["answer"].split("####")[-1].strip()
        out.append(Problem(r["question"], ref, line, target))  # unstripped: SMDM's prompt is raw
    if not out:
        raise DataError(f"{where}: no problems")
    return out[:limit] if limit else out


MIN_GEN = 32  # fewer generated tokens than this cannot hold a worked answer


def fit_to_context(
    ids: list[list[int]], length: int, seq_len: int
) -> tuple[list[list[int]], list[int], int, int]:
    """Per problem: generation length min(length, room left), and when less than MIN_GEN tokens
    of room are left, the prompt cut from the left to leave min(length, MIN_GEN). With
    ``length == seq_len`` (a canvas) every prompt fills the rest of the canvas."""
    out, lengths, shortened, truncated = [], [], 0, 0
    for p in ids:
        n = min(length, seq_len - len(p))
        if n < min(length, MIN_GEN):
            n = min(length, MIN_GEN, seq_len - 1)
            p = p[len(p) - (seq_len - n) :]
            truncated += 1
        elif n < length:
            shortened += 1
        out.append(p)
        lengths.append(n)
    return out, lengths, shortened, truncated


@dataclass
class GSM8KResult:
    accuracy: float
    stderr: float
    n: int
    correct: int
    seconds_per_problem: float | None
    predictions_path: str | None
    settings: dict[str, Any]
    compliance: dict[str, float | None]
    """Share of problems whose reasoning stopped (eos before the canvas end), whose answer stage
    stopped, and whose graded text holds the '####' marker. Low accuracy: look here first."""
    correct_smdm: int = 0
    """Correct by SMDM's rule (the paper's; ``gsm8k_grade.smdm_correct``)."""

    @property
    def accuracy_smdm(self) -> float:
        return self.correct_smdm / self.n

    @property
    def stderr_smdm(self) -> float:
        return binomial_stderr(self.correct_smdm, self.n)


def score(
    problems: list[Problem], generations: list[str], reasoning: list[str] | None = None
) -> list[dict[str, Any]]:
    """Each problem's verdicts by both rules. SMDM greps the whole decoded text, so with two
    stages its rule reads the reasoning and the answer together."""
    rows = []
    for i, (p, g) in enumerate(zip(problems, generations, strict=True)):
        pred = extract_answer(g)
        whole = g if reasoning is None else reasoning[i] + g
        rows.append(
            {
                "question": p.question,
                "reference": p.answer,
                "generation": g,
                "prediction": pred,
                "correct": pred == p.answer,
                "correct_smdm": smdm_correct(whole, p.target),
            }
        )
    return rows


def rescore(problems: list[Problem], predictions: str) -> tuple[list[str], list[str] | None]:
    """Generations from a jsonl (one line per problem, in order; 'generation' or 'text'), and
    the stage-1 'reasoning' where every line has one (a two-stage run's output)."""
    rows = read_jsonl(predictions)
    if len(rows) != len(problems):
        raise DataError(f"{predictions}: {len(rows)} lines but the problem set has {len(problems)}")
    out = []
    for p, r in zip(problems, rows, strict=True):
        text = r.get("generation", r.get("text"))
        if not isinstance(text, str):
            raise DataError(f"{predictions}:{r['_line']}: missing 'generation' (or 'text')")
        if "question" in r and r["question"].strip() != p.question.strip():
            raise DataError(
                f"{predictions}:{r['_line']}: question does not match problem {p.source}"
            )
        out.append(text)
    reasoning = [r.get("reasoning") for r in rows]
    return out, reasoning if all(isinstance(t, str) for t in reasoning) else None


def stage_contexts(
    tok, questions: list[str], reasoning: list[str] | None = None, prefix: str = ""
) -> list[list[int]]:
    """Token ids of each stage's context, exactly as the training examples tokenize them:
    stage 1 ``tok(Question: q)``; stage 2 that plus ``tok(reasoning)``, where ``reasoning`` is the
    stage-1 text (it starts with ``Answer: `` when the model follows its training format)."""
    from mdmctl.data.sft import encode_pieces

    q_ids = encode_pieces(tok, [prefix + QUESTION + q for q in questions], standalone=True)
    if reasoning is None:
        return q_ids
    r_ids = encode_pieces(tok, reasoning, standalone=True)
    return [q + r for q, r in zip(q_ids, r_ids, strict=True)]


@dataclass
class _Stage:
    texts: list[str]
    stopped: list[bool]
    nfe: int
    truncated: int


def _generate_stage(model, tok, info, ids, sample_cfg, device, canvas, length) -> _Stage:
    """One stage: ``length`` tokens after each context, or (``length`` None) the rest of a
    ``canvas``-token canvas (SMDM); prompts that leave less than MIN_GEN are cut from the left."""
    from mdmctl.sampling import generate

    seq_len = model.cfg.seq_len
    if length is None:
        ids, lengths, _, truncated = fit_to_context(ids, min(canvas, seq_len), min(canvas, seq_len))
    else:
        ids, lengths, _, truncated = fit_to_context(ids, length, seq_len)
    g = generate(model, tok, info, [""] * len(ids), sample_cfg, device, lengths, prompt_ids=ids)
    return _Stage(g.texts, g.stopped, g.nfe, truncated)


def _fewshot_prefix(fewshot: int, fewshot_data: str | None) -> str:
    """Worked problems in the training format, before the question."""
    if not fewshot:
        return ""
    if fewshot_data is None:
        raise ConfigError("--fewshot needs --fewshot-data (e.g. the train split)")
    rows = read_jsonl(fewshot_data)[:fewshot]
    out = []
    for r in rows:
        if not isinstance(r.get("answer"), str) or r["answer"].count("####") != 1:
            raise DataError(f"{fewshot_data}:{r['_line']}: answer needs exactly one '####'")
        thought, answer = r["answer"].split("####")
        out.append(f"{QUESTION}{r['question']}{ANSWER}{thought}####{answer}\n\n")
    return "".join(out)


def evaluate_gsm8k(
    *,
    data: str | None,
    checkpoint: str | None = None,
    predictions: str | None = None,
    out: str | None = None,
    limit: int | None = None,
    fewshot: int = 0,
    fewshot_data: str | None = None,
    sample_cfg: Any = None,
    total_length: int = 256,
    length: int | None = None,
    two_stage: bool = True,
    answer_length: int | None = None,
    answer_cfg: float | None = None,
    log=None,
) -> GSM8KResult:
    """Accuracy with format compliance. ``total_length``: each stage's canvas, prompt plus
    generation (SMDM's ``--length``, capped at the model context); ``length``: a fixed number of
    generated tokens instead; ``answer_length``: a fixed length for stage 2 only; ``answer_cfg``:
    stage 2's CFG scale (SMDM's ``--cfg2``; default: the sampler's, SMDM's ``--cfg1``)."""
    problems = load_problems(data, limit)
    if predictions is not None:
        gens, reasoning = rescore(problems, predictions)
        rows = score(problems, gens, reasoning)
        compliance = {"stopped": None, "answer_stopped": None, "marker": _share(gens)}
        return _result(rows, None, out, {"predictions": predictions}, compliance)
    from mdmctl.checkpoint import load_model
    from mdmctl.sampling import for_objective

    model, tok, info, step_dir, device = load_model(
        checkpoint, sample_cfg.device, sample_cfg.attention, log, sample_cfg.dtype
    )
    sample_cfg = for_objective(sample_cfg, model.cfg.objective)
    questions = [p.question for p in problems]
    prefix = _fewshot_prefix(fewshot, fewshot_data)
    t0 = time.perf_counter()
    s1 = _generate_stage(
        model,
        tok,
        info,
        stage_contexts(tok, questions, prefix=prefix),
        sample_cfg,
        device,
        total_length,
        length,
    )
    reasoning, graded, nfe, s2 = s1.texts, s1.texts, s1.nfe, None
    if two_stage:
        ids2 = stage_contexts(tok, questions, reasoning, prefix=prefix)
        cfg2 = sample_cfg if answer_cfg is None else sample_cfg.evolve(cfg=answer_cfg)
        s2 = _generate_stage(
            model, tok, info, ids2, cfg2, device, total_length, answer_length or length
        )
        graded, nfe = s2.texts, nfe + s2.nfe
    seconds = (time.perf_counter() - t0) / len(problems)
    if log and (s1.truncated or (s2 and s2.truncated)):
        log(
            f"context {model.cfg.seq_len}: {s1.truncated} stage-1 and "
            f"{s2.truncated if s2 else 0} stage-2 prompts were cut from the left to leave "
            f"{MIN_GEN} generated tokens (lm-eval's convention)"
        )
    rows = score(problems, graded, reasoning if two_stage else None)
    for i, r in enumerate(rows):
        r["stopped"] = s1.stopped[i]
        if s2:
            r["reasoning"], r["answer_stopped"] = reasoning[i], s2.stopped[i]
    compliance = {
        "stopped": sum(s1.stopped) / len(rows),
        "answer_stopped": sum(s2.stopped) / len(rows) if s2 else None,
        "marker": _share(graded),
    }
    settings = {
        "checkpoint": str(step_dir),
        "sampler": sample_cfg.decoding.sampler,
        "steps": sample_cfg.steps,
        "total_length": None if length else total_length,
        "length": length,
        "temperature": sample_cfg.decoding.temperature,
        "cfg": sample_cfg.decoding.cfg,
        "answer_cfg": (sample_cfg.decoding.cfg if answer_cfg is None else answer_cfg)
        if two_stage
        else None,
        "batch_size": sample_cfg.batch_size,
        "fewshot": fewshot,
        "two_stage": two_stage,
        "answer_length": answer_length if two_stage else None,
        "nfe": nfe,
        "truncated_prompts": s1.truncated + (s2.truncated if s2 else 0),
    }
    return _result(rows, seconds, out, settings, compliance)


def _share(texts: list[str]) -> float:
    return sum("####" in t for t in texts) / len(texts)


def _result(rows, seconds, out, settings, compliance) -> GSM8KResult:
    correct = sum(r["correct"] for r in rows)
    if out:
        write_jsonl(out, rows)
    n = len(rows)
    return GSM8KResult(correct / n, binomial_stderr(correct, n), n, correct, seconds, out,
                       settings, compliance, sum(r["correct_smdm"] for r in rows))  # fmt: skip
