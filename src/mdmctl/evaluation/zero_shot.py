"""``mdmctl eval TASK``: zero-shot benchmarks scored by the likelihood engine, lm-eval's metrics.

- ``choice`` tasks: ``acc`` = argmax of the continuation log-likelihoods; ``acc_norm`` = argmax of
  log-likelihood / the choice's length in characters without the delimiter (lm-eval 0.4.13).
- WinoGrande (``partial``): each option completes the context, the shared rest is scored.
- LAMBADA (``greedy``): ``acc`` = greedy decoding reproduces the last word; ``perplexity`` =
  exp(-mean log-likelihood) per word, as lm-eval aggregates it (for an MDM with ``mc`` a bound).
Standard errors: sqrt(p(1-p)/(n-1)) for accuracies (lm-eval's), the delta method for perplexity.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mdmctl.errors import ConfigError, DataError
from mdmctl.evaluation.benchmarks import TASKS, Doc, Task
from mdmctl.evaluation.generation import binomial_stderr, read_jsonl, write_jsonl
from mdmctl.evaluation.hub import load_hub_split
from mdmctl.evaluation.likelihood import ScoreConfig, encode_pair, loglikelihood


@dataclass(frozen=True, kw_only=True, slots=True)
class ZeroShotConfig:
    checkpoint: str | None = None
    data: str | None = None
    """A task file, or a folder holding the files under their shared names; None: the hub."""
    limit: int | None = None
    estimator: str | None = None
    """None: the task's paper default (MDM)."""
    mc_samples: int = 128
    cfg: float | None = None
    """None: the task's paper default (MDM); ARM checkpoints use none."""
    batch_size: int = 32
    seed: int = 0
    device: str = "auto"
    attention: str = "auto"
    dtype: str = "fp32"
    """The weights' type (``checkpoint.WEIGHT_DTYPES``): bf16 for a 7-8B imported model."""

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit: must be >= 1, got {self.limit}")
        ScoreConfig(  # validates the shared fields with the engine's own rules
            estimator=self.estimator or "mc",
            mc_samples=self.mc_samples,
            cfg=self.cfg or 0.0,
            batch_size=self.batch_size,
        )


@dataclass
class TaskResult:
    task: str
    n: int
    metrics: dict[str, float]
    stderr: dict[str, float]
    objective: str
    estimator: str
    cfg: float
    mc_samples: int | None
    requests: int
    truncated: int
    seconds: float
    data: str
    checkpoint: str
    docs: list[dict[str, Any]] = field(default_factory=list, repr=False)

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "docs"}
        d["requests_per_s"] = self.requests_per_s
        return d


def _doc_from_row(task: Task, r: dict[str, Any], where: str) -> Doc:
    line = r.get("_line", "?")
    need = ["context", "choices", "gold"] + (
        ["contexts", "continuation"] if task.kind == "partial" else []
    )
    for k in need:
        if k not in r:
            raise DataError(
                f"{where}:{line}: missing field {k!r} ({task.name} rows need {', '.join(need)})"
            )
    ch = r["choices"]
    if (
        not isinstance(r["context"], str)
        or not isinstance(ch, list)
        or not ch
        or not all(isinstance(c, str) and c for c in ch)
    ):
        raise DataError(
            f"{where}:{line}: 'context' must be a string and 'choices' a non-empty "
            "list of non-empty strings"
        )
    if not isinstance(r["gold"], int) or not 0 <= r["gold"] < len(ch):
        raise DataError(
            f"{where}:{line}: 'gold' must be an index into 'choices' "
            f"(0..{len(ch) - 1}), got {r['gold']!r}"
        )
    if task.kind == "partial" and (len(r["contexts"]) != len(ch) or not r["continuation"]):
        raise DataError(
            f"{where}:{line}: 'contexts' needs one entry per choice and "
            "'continuation' must be non-empty"
        )
    return Doc(
        r.get("id", line), r["context"], ch, r["gold"], r.get("contexts"), r.get("continuation")
    )


def load_docs(task: Task, data: str | None, limit: int | None) -> tuple[list[Doc], str]:
    """The task's documents and where they came from."""
    if data is None:
        path, name, split = task.hub
        rows = load_hub_split(
            path,
            name,
            split,
            f"pass --data with the task file (e.g. ../shared/data/benchmarks/{task.file})",
        )
        docs = [task.format(r, i) for i, r in enumerate(rows[:limit] if limit else rows)]
        return docs, f"hub:{path}{'/' + name if name else ''}:{split}"
    p = Path(data)
    if p.is_dir():
        p = p / task.file
        if not p.is_file():
            raise DataError(f"{data}: no {task.file} for task {task.name}")
    rows = read_jsonl(p)
    if limit:
        rows = rows[:limit]
    docs = [_doc_from_row(task, r, str(p)) for r in rows]
    if not docs:
        raise DataError(f"{p}: no documents")
    return docs, str(p)


def task_requests(task: Task, docs: list[Doc]) -> list[tuple[str, str]]:
    if task.kind == "partial":
        return [(c, d.continuation or "") for d in docs for c in d.contexts or []]
    return [(d.context, c) for d in docs for c in d.choices]


def _argmax(xs: list[float]) -> int:
    return max(range(len(xs)), key=lambda i: (xs[i], -i))  # first of ties, as numpy's argmax


def score_task(
    model,
    tok,
    info,
    task: Task,
    docs: list[Doc],
    cfg: ZeroShotConfig,
    device,
    checkpoint: str,
    where: str,
) -> TaskResult:
    mdm = model.cfg.objective == "mdm"
    estimator = (cfg.estimator or task.estimator) if mdm else "exact"
    w = (task.cfg if cfg.cfg is None else cfg.cfg) if mdm else 0.0
    if not mdm and cfg.cfg:
        raise ConfigError("--cfg applies to objective 'mdm'; checkpoint objective is 'arm'")
    texts = task_requests(task, docs)
    reqs = [encode_pair(tok, c, x) for c, x in texts]
    t0 = time.perf_counter()
    scores = loglikelihood(
        model,
        reqs,
        ScoreConfig(
            estimator=estimator if mdm else "mc",
            mc_samples=cfg.mc_samples,
            cfg=w,
            greedy=task.kind == "greedy",
            batch_size=cfg.batch_size,
            seed=cfg.seed,
        ),
        eos_id=info.eos_id,
        device=device,
    )
    seconds = time.perf_counter() - t0
    per_doc, k = [], 0
    for d in docs:
        n = len(d.choices)
        s = scores[k : k + n]
        k += n
        lls = [x.logprob for x in s]
        rec: dict[str, Any] = {"id": d.id, "gold": d.gold, "logprobs": lls}
        if mdm and estimator == "mc":
            rec["stderrs"] = [x.stderr for x in s]
        if task.kind == "greedy":
            rec["acc"] = int(bool(s[0].is_greedy))
        else:
            rec["pred"] = _argmax(lls)
            rec["acc"] = int(rec["pred"] == d.gold)
            if "acc_norm" in task.metrics:
                # lm-eval 0.4.13: the choice's length in characters, delimiter not counted.
                norm = [ll / max(1, len(c) - 1) for ll, c in zip(lls, d.choices, strict=True)]
                rec["pred_norm"] = _argmax(norm)
                rec["acc_norm"] = int(rec["pred_norm"] == d.gold)
        per_doc.append(rec)
    n = len(per_doc)
    metrics, stderr = {}, {}
    for m in task.metrics:
        if m == "perplexity":
            lls = [r["logprobs"][0] for r in per_doc]
            mean = sum(lls) / n
            sd = math.sqrt(sum((x - mean) ** 2 for x in lls) / (n - 1)) if n > 1 else 0.0
            metrics[m] = math.exp(-mean)
            stderr[m] = metrics[m] * sd / math.sqrt(n)
        else:
            hits = sum(r[m] for r in per_doc)
            metrics[m], stderr[m] = hits / n, binomial_stderr(hits, n)
    return TaskResult(
        task=task.name,
        n=n,
        metrics=metrics,
        stderr=stderr,
        objective=model.cfg.objective,
        estimator=estimator,
        cfg=w,
        mc_samples=cfg.mc_samples if mdm and estimator == "mc" else None,
        requests=len(reqs),
        truncated=sum(x.truncated for x in scores),
        seconds=seconds,
        data=where,
        checkpoint=checkpoint,
        docs=per_doc,
    )


def resolve_tasks(names: list[str]) -> list[Task]:
    bad = [n for n in names if n not in TASKS]
    if bad:
        raise ConfigError(f"unknown task {bad[0]!r}; tasks: {', '.join(TASKS)}")
    return [TASKS[n] for n in names]


def evaluate_tasks(
    names: list[str], cfg: ZeroShotConfig, *, out: str | None = None, log=None
) -> list[TaskResult]:
    """Load the checkpoint once and score each task; ``out``: per-document jsonl (one task) or
    one results JSON holding every task's metrics and per-document scores (several tasks)."""
    import json

    from mdmctl.checkpoint import load_model

    tasks = resolve_tasks(names)
    loaded = [(t, *load_docs(t, cfg.data, cfg.limit)) for t in tasks]  # fail early on bad data
    model, tok, info, step_dir, device = load_model(
        cfg.checkpoint, cfg.device, cfg.attention, log, cfg.dtype
    )
    results = []
    for task, docs, where in loaded:
        if log:
            log(f"{task.name}: {len(docs)} documents from {where}")
        r = score_task(model, tok, info, task, docs, cfg, device, str(step_dir), where)
        results.append(r)
    if out:
        p = Path(out)
        if len(results) == 1 and p.suffix == ".jsonl":
            write_jsonl(p, results[0].docs)
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            tmp = p.with_suffix(p.suffix + ".tmp")
            tmp.write_text(
                json.dumps(
                    {
                        "results": [r.to_dict() for r in results],
                        "samples": {r.task: r.docs for r in results},
                    },
                    indent=1,
                )
            )
            tmp.replace(p)
    return results
