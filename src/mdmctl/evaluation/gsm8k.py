"""GSM8K: generate answers, extract the final number, score exact match (method.md §6).

Extraction: the number after the last ``####``; without one, the last number in the text.
Normalisation: commas, currency and percent signs, a trailing period and trailing ``.0`` removed,
so ``$1,200.00`` and ``1200`` agree. Accuracy is reported with its binomial standard error.

Two-stage generation (the paper's procedure, on by default): stage 1 generates the reasoning; the
text before any ``####`` is kept, the answer marker is appended (`` #### `` after equation-style
reasoning ``<<...>>``, else a new line and ``#### ``, the two SFT formats), and stage 2 generates a
short answer after it. Without it, the answer is read from the single generation.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from mdmctl.errors import ConfigError, DataError
from mdmctl.evaluation.generation import binomial_stderr, read_jsonl, write_jsonl
from mdmctl.evaluation.hub import load_hub_split

_NUMBER = re.compile(r"[-+]?[$€£]?\s?\d[\d,]*(?:\.\d+)?|[-+]?\.\d+")
HUB_ID = "openai/gsm8k"


def normalize_number(s: str) -> str | None:
    """Canonical text of a number: '$1,200.00' -> '1200', '-3.50' -> '-3.5', '7.' -> '7'."""
    s = s.strip().rstrip(".").replace(",", "").replace("$", "").replace("€", "").replace("£", "")
    s = s.replace("%", "").replace(" ", "")
    if s.startswith("+"):
        s = s[1:]
    try:
        v = float(s)
    except ValueError:
        return None
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return repr(v).rstrip("0").rstrip(".")


def extract_answer(text: str) -> str | None:
    """The number after the last '####', else the last number in the text (normalised)."""
    if "####" in text:
        tail = text.rsplit("####", 1)[1]
        m = _NUMBER.search(tail)
        if m:
            return normalize_number(m.group())
    nums = _NUMBER.findall(text)
    return normalize_number(nums[-1]) if nums else None


@dataclass(frozen=True, slots=True)
class Problem:
    question: str
    answer: str  # normalised reference
    source: str


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
        out.append(Problem(r["question"].strip(), ref, line))
    if not out:
        raise DataError(f"{where}: no problems")
    return out[:limit] if limit else out


MIN_GEN = 32  # fewer generated tokens than this cannot hold a worked answer


def fit_to_context(
    ids: list[list[int]], length: int, seq_len: int
) -> tuple[list[list[int]], list[int], int, int]:
    """Per problem: generation length min(length, room left), and when less than MIN_GEN tokens
    of room are left, the prompt cut from the left to leave min(length, MIN_GEN)."""
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


def score(problems: list[Problem], generations: list[str]) -> list[dict[str, Any]]:
    rows = []
    for p, g in zip(problems, generations, strict=True):
        pred = extract_answer(g)
        rows.append(
            {
                "question": p.question,
                "reference": p.answer,
                "generation": g,
                "prediction": pred,
                "correct": pred == p.answer,
            }
        )
    return rows


def rescore(problems: list[Problem], predictions: str) -> list[str]:
    """Generations from a jsonl (one line per problem, in order; 'generation' or 'text')."""
    rows = read_jsonl(predictions)
    if len(rows) != len(problems):
        raise DataError(f"{predictions}: {len(rows)} lines but the problem set has {len(problems)}")
    out = []
    for p, r in zip(problems, rows, strict=True):
        text = r.get("generation", r.get("text"))
        if not isinstance(text, str):
            raise DataError(f"{predictions}:{r['_line']}: missing 'generation' (or 'text')")
        if "question" in r and r["question"].strip() != p.question:
            raise DataError(
                f"{predictions}:{r['_line']}: question does not match problem {p.source}"
            )
        out.append(text)
    return out


def answer_marker(reasoning: str) -> str:
    """The text between the reasoning and the answer, as the two SFT formats write it."""
    return " #### " if "<<" in reasoning else "\n#### "


def _answer_stage(model, tok, info, prompts, gens, sample_cfg, device, answer_length):
    """Stage 2: the reasoning before any '####', the marker, then ``answer_length`` tokens."""
    import dataclasses

    from mdmctl.sampling import encode_literal, generate

    reasoning = [g.split("####")[0].rstrip() for g in gens]
    heads = [r + answer_marker(r) for r in reasoning]
    room = model.cfg.seq_len - answer_length
    ids = [encode_literal(tok, p + h)[-room:] for p, h in zip(prompts, heads, strict=True)]
    cfg2 = dataclasses.replace(sample_cfg, length=answer_length, steps=answer_length)
    g = generate(model, tok, info, prompts, cfg2, device, answer_length, prompt_ids=ids)
    return [h + a for h, a in zip(heads, g.texts, strict=True)], g.nfe


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
    two_stage: bool = True,
    answer_length: int = 16,
    log=None,
) -> GSM8KResult:
    problems = load_problems(data, limit)
    if predictions is not None:
        gens = rescore(problems, predictions)
        seconds = None
        settings: dict[str, Any] = {"predictions": predictions}
    else:
        from mdmctl.sampling import generate, load_model

        model, tok, info, step_dir, device = load_model(
            checkpoint, sample_cfg.device, sample_cfg.attention, log
        )
        prefix = ""
        if fewshot:
            if fewshot_data is None:
                raise ConfigError("--fewshot needs --fewshot-data (e.g. the train split)")
            shots = load_problems(fewshot_data, fewshot)
            raw = read_jsonl(fewshot_data)[:fewshot]
            prefix = "".join(
                f"{s.question}\n{r['answer'].strip()}\n\n" for s, r in zip(shots, raw, strict=True)
            )
        from mdmctl.sampling import encode_literal

        prompts = [prefix + p.question + "\n" for p in problems]  # the SFT prompt format
        ids, lengths, shortened, truncated = fit_to_context(
            [encode_literal(tok, p) for p in prompts], sample_cfg.length, model.cfg.seq_len
        )
        if (shortened or truncated) and log:
            log(
                f"context {model.cfg.seq_len}: {shortened} problems get a shorter generation, "
                f"{truncated} prompts were cut from the left (lm-eval's convention)"
            )
        t0 = time.perf_counter()
        g = generate(model, tok, info, prompts, sample_cfg, device, lengths, prompt_ids=ids)
        gens, nfe = g.texts, g.nfe
        if two_stage:
            gens, n2 = _answer_stage(
                model, tok, info, prompts, gens, sample_cfg, device, answer_length
            )
            nfe += n2
        seconds = (time.perf_counter() - t0) / len(problems)
        settings = {
            "checkpoint": str(step_dir),
            "sampler": sample_cfg.sampler,
            "steps": sample_cfg.steps,
            "length": sample_cfg.length,
            "temperature": sample_cfg.temperature,
            "cfg": sample_cfg.cfg,
            "batch_size": sample_cfg.batch_size,
            "fewshot": fewshot,
            "two_stage": two_stage,
            "answer_length": answer_length if two_stage else None,
            "nfe": nfe,
            "shortened_generations": shortened,
            "truncated_prompts": truncated,
        }
    rows = score(problems, gens)
    correct = sum(r["correct"] for r in rows)
    if out:
        write_jsonl(out, rows)
    return GSM8KResult(
        correct / len(rows),
        binomial_stderr(correct, len(rows)),
        len(rows),
        correct,
        seconds,
        out,
        settings,
    )
