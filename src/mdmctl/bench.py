"""``mdmctl bench sample``: sampling speed and quality in one table (docs/benchmarks.md).

On the reversal-curse test files in the trained direction (``p2d_same``, ``d2p_same``; SMDM's
canvas: prompt + generation = 52 tokens, temperature 0) a fine-tuned MDM runs

- the naive reference sampler: one token per step, the whole canvas every step, no early stop;
- mdmctl's decoding settings (eos early stop, semi-autoregressive blocks, threshold / factor
  parallel decoding, prefix / dual KV caches, ``torch.compile``),

and a fine-tuned ARM of the same size runs with its KV cache, eager and compiled (compilation
happens in a warm-up outside the timings). Per setting: throughput at a large
batch (prompts/s; returned tokens/s, i.e. the eos-truncated answer plus its eos; forwards per
prompt), latency at batch 1 (seconds per prompt over the first prompts), accuracy (the reference
appears in the answer) with its standard error, its difference to the naive sampler's accuracy on
the same prompts with the paired standard error, and for the MDM the share of answers identical
to the naive sampler's. Speed ratios are to the naive sampler, measured in the same run.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from mdmctl.errors import ConfigError, DataError

SPLITS = ("p2d_same", "d2p_same")
MDM_SETTINGS: dict[str, dict[str, Any]] = {
    "naive (1 token/step, full canvas)": {"stop_at_eos": False},
    "1 token/step, eos stop": {},
    "threshold 0.9": {"threshold": 0.9},
    "blocks 8, threshold 0.9": {"block_length": 8, "threshold": 0.9},
    "blocks 8, threshold 0.9, prefix cache": {
        "block_length": 8,
        "threshold": 0.9,
        "cache": "prefix",
    },
    "blocks 8, threshold 0.9, dual cache": {"block_length": 8, "threshold": 0.9, "cache": "dual"},
    "blocks 8, factor 1": {"block_length": 8, "factor": 1.0},
    "blocks 8, factor 1, dual cache": {"block_length": 8, "factor": 1.0, "cache": "dual"},
    "blocks 8, threshold 0.7, dual cache": {"block_length": 8, "threshold": 0.7, "cache": "dual"},
    "blocks 16, threshold 0.9, dual cache": {
        "block_length": 16,
        "threshold": 0.9,
        "cache": "dual",
    },
}
COMPILED = {"blocks 8, threshold 0.9, dual cache, compiled": {
    "block_length": 8, "threshold": 0.9, "cache": "dual", "compile": True}}  # fmt: skip
NAIVE = next(iter(MDM_SETTINGS))


@dataclass
class BenchRow:
    setting: str
    objective: str
    prompts_per_s: float
    tokens_per_s: float
    nfe_per_prompt: float  # forward passes per answer, at batch 1
    latency_s: float  # batch 1, seconds per prompt
    accuracy: float
    stderr: float
    agreement: float | None  # MDM: answers identical to the naive sampler's
    delta: float = 0.0  # accuracy minus the naive sampler's, on the same prompts
    delta_stderr: float = 0.0  # its paired standard error
    speedup: float = 1.0  # prompts/s over the naive sampler's
    latency_speedup: float = 1.0


def _prompts(data_dir: Path, limit: int | None) -> tuple[list[str], list[str]]:
    from mdmctl.evaluation.generation import read_jsonl
    from mdmctl.evaluation.reverse_curse import SPLITS as FILES

    prompts, refs = [], []
    for name in SPLITS:
        path = data_dir / FILES[name][0]
        if not path.is_file():
            raise DataError(f"{path}: not found (the reversal-curse test files)")
        rows = read_jsonl(path)[:limit] if limit else read_jsonl(path)
        prompts += [r["prompt"] for r in rows]
        refs += [r["completion"] for r in rows]
    return prompts, refs


def _answers(ids: list[list[int]], tok, eos_id: int) -> tuple[list[str], int]:
    """eos-truncated answers and the returned token count (answer plus its eos). ``ids`` may be
    truncated already (``stop_at_eos``: the eos is cut) or not (the naive sampler)."""
    cut = [i[: i.index(eos_id) + 1] if eos_id in i else i for i in ids]
    return [tok.decode(c, skip_special_tokens=True) for c in cut], sum(map(len, cut))


def _measure(loaded, prompts, refs, scfg, latency_prompts: int):
    """(stats, answers, hits) of one setting."""
    from mdmctl.evaluation.generation import binomial_stderr
    from mdmctl.evaluation.reverse_curse import is_hit
    from mdmctl.sampling import encode_literal, generate

    model, tok, info, device = loaded
    # SMDM's canvas: prompt + generation = 52 tokens, at least 8 generated; a prompt too long
    # for the model's context keeps its end.
    L = model.cfg.seq_len
    ids = [encode_literal(tok, p)[-(L - 8) :] for p in prompts]
    lengths = [max(8, min(52, L) - len(i)) for i in ids]
    g = generate(model, tok, info, prompts, scfg, device, lengths, prompt_ids=ids)
    answers, n_tok = _answers(g.ids, tok, info.eos_id)
    if scfg.stop_at_eos:  # generate() cut each stopped answer's eos: count it as the naive row does
        n_tok += sum(g.stopped)
    k = min(latency_prompts, len(prompts))
    t0 = time.perf_counter()
    one = generate(model, tok, info, prompts[:k], replace(scfg, batch_size=1), device, lengths[:k],
                   prompt_ids=ids[:k])  # fmt: skip
    latency = (time.perf_counter() - t0) / k
    hits = [is_hit(a, r) for a, r in zip(answers, refs, strict=True)]
    n = len(prompts)
    stats = dict(prompts_per_s=n / g.seconds, tokens_per_s=n_tok / g.seconds,
                 nfe_per_prompt=one.nfe / k, latency_s=latency, accuracy=sum(hits) / n,
                 stderr=binomial_stderr(sum(hits), n))  # fmt: skip
    return stats, answers, hits


def bench_sample(
    *,
    mdm: str,
    arm: str | None,
    data_dir: str,
    batch_size: int = 64,
    latency_prompts: int = 16,
    limit: int | None = None,
    cfg: float = 0.0,
    repeats: int = 1,
    compile: bool = True,
    device: str = "auto",
    log=lambda msg: None,
) -> list[BenchRow]:
    """One row per setting (the naive sampler first, the ARM last; ``compile``: also the fastest
    MDM setting and the ARM through ``torch.compile``). With ``repeats`` > 1 every
    setting is timed that many times, in rounds over all settings so that a slow spell of a
    shared machine touches them alike, and the fastest time is kept (answers do not change at
    temperature 0)."""
    from mdmctl.sampling import SampleConfig, load_model

    prompts, refs = _prompts(Path(data_dir), limit)
    base = SampleConfig(temperature=0.0, batch_size=batch_size, seed=0, cfg=cfg, device=device)
    settings = {**MDM_SETTINGS, **(COMPILED if compile else {})}
    runs = [(name, mdm, "mdm", replace(base, **kw)) for name, kw in settings.items()]
    if arm:
        runs.append(("ARM, KV cache", arm, "arm", replace(base, cfg=0.0)))
    if arm and compile:
        runs.append(("ARM, KV cache, compiled", arm, "arm", replace(base, cfg=0.0, compile=True)))
    loaded = {}
    for _, path, objective, _ in runs:
        if path not in loaded:
            model, tok, info, _, dev = load_model(path, device)
            _check_objective(model, objective, path)
            loaded[path] = (model, tok, info, dev)
    for _, path, _, scfg in runs:  # compile outside the timings: every shape the run meets
        if scfg.compile:
            _measure(loaded[path], prompts, refs, scfg, latency_prompts)
    best: dict[str, tuple[dict, list[str], list[bool]]] = {}
    for _ in range(repeats):
        for name, path, _, scfg in runs:
            stats, answers, h = _measure(loaded[path], prompts, refs, scfg, latency_prompts)
            if name in best:  # the fastest throughput and latency, each
                old = best[name][0]
                fast = {k: max(old[k], stats[k]) for k in ("prompts_per_s", "tokens_per_s")}
                stats = dict(stats, latency_s=min(old["latency_s"], stats["latency_s"]), **fast)
            best[name] = (stats, answers, h)
            log(f"{name}: {stats['prompts_per_s']:.1f} prompts/s, accuracy {stats['accuracy']:.3f}")
    return _rows(runs, best)


def _rows(runs, best) -> list[BenchRow]:
    from mdmctl.evaluation.generation import paired_difference

    naive_stats, naive_answers, naive_hits = best[NAIVE]
    rows = []
    for name, _, objective, _ in runs:
        stats, answers, h = best[name]
        same = None
        if objective == "mdm":
            same = sum(a == b for a, b in zip(answers, naive_answers, strict=True)) / len(answers)
        delta, delta_se = paired_difference(h, naive_hits)
        rows.append(BenchRow(name, objective, agreement=same, delta=delta, delta_stderr=delta_se,
                             speedup=stats["prompts_per_s"] / naive_stats["prompts_per_s"],
                             latency_speedup=naive_stats["latency_s"] / stats["latency_s"],
                             **stats))  # fmt: skip
    return rows


def _check_objective(model, want: str, path: str) -> None:
    if model.cfg.objective != want:
        raise ConfigError(
            f"--{want} {path}: an {model.cfg.objective.upper()} checkpoint, expected an "
            f"{want.upper()}"
        )


def as_dicts(rows: list[BenchRow]) -> list[dict]:
    return [asdict(r) for r in rows]
