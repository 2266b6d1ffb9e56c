"""Reverse curse (Berglund et al. 2023; docs/method.md §6): fine-tuned on name -> description facts
only, can the model answer description -> name?

Four test files: p2d (name -> description) and d2p (description -> name), each in the direction
seen in training ("same") and the other one ("reverse"). Accuracy: the reference completion
appears in the generation (case-insensitive). Two BLEU scores, averaged, x100:
- ``bleu_smdm``: as SMDM's ``evaluate_reverse.py`` computes it, ``nltk``'s ``sentence_bleu``
  (BLEU-4, no smoothing) called on the stripped, lower-cased raw strings, i.e. over characters;
- ``bleu``: word-level sentence BLEU-4 with add-one smoothing for n > 1 (Lin & Och).
Defaults follow SMDM: confidence sampler, 32 steps, total length 52 (prompt + generation, in
tokens), temperature 0, CFG 0.8.
"""

from __future__ import annotations

import math
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mdmctl.errors import ConfigError, DataError
from mdmctl.evaluation.generation import binomial_stderr, read_jsonl, write_jsonl

SPLITS = {  # name -> (file, direction)
    "p2d_same": ("p2d_prompts_test.jsonl", "name -> description, same as training"),
    "p2d_reverse": ("p2d_reverse_prompts_test.jsonl", "description -> name, reverse"),
    "d2p_same": ("d2p_prompts_test.jsonl", "description -> name, same as training"),
    "d2p_reverse": ("d2p_reverse_prompts_test.jsonl", "name -> description, reverse"),
}


def _tokens(s: str) -> list[str]:
    return re.findall(r"\w+|[^\w\s]", s.lower())


def sentence_bleu(hyp: str, ref: str, max_n: int = 4) -> float:
    """BLEU-4 of one hypothesis against one reference, add-one smoothing for n > 1 (Lin & Och)."""
    h, r = _tokens(hyp), _tokens(ref)
    if not h or not r:
        return 0.0
    logs = []
    for n in range(1, max_n + 1):
        hn = Counter(tuple(h[i : i + n]) for i in range(len(h) - n + 1))
        rn = Counter(tuple(r[i : i + n]) for i in range(len(r) - n + 1))
        match, total = sum((hn & rn).values()), max(sum(hn.values()), 0)
        if n == 1:
            if match == 0:
                return 0.0
            logs.append(math.log(match / total))
        else:
            logs.append(math.log((match + 1) / (total + 1)))
    bp = 1.0 if len(h) > len(r) else math.exp(1 - len(r) / len(h))
    return bp * math.exp(sum(logs) / max_n)


def smdm_bleu(generation: str, reference: str) -> float:
    """SMDM's BLEU: ``nltk.translate.bleu_score.sentence_bleu([ref], hyp)`` on the stripped,
    lower-cased strings, so its n-grams are character n-grams. nltk's rules, reproduced without
    the dependency: clipped n-gram precision for n = 1..4, weights 1/4, brevity penalty
    exp(1 - r/c) when c <= r; 0 without a unigram match; a zero higher-order precision becomes
    the smallest float (method0), so the score is ~1e-77, not 0."""
    hyp, ref = generation.strip().lower(), reference.strip().lower()
    logs = []
    for n in range(1, 5):
        hn = Counter(hyp[i : i + n] for i in range(len(hyp) - n + 1))
        rn = Counter(ref[i : i + n] for i in range(len(ref) - n + 1))
        match, total = sum((hn & rn).values()), max(1, sum(hn.values()))
        if n == 1 and match == 0:
            return 0.0
        logs.append(0.25 * math.log(match / total if match else sys.float_info.min))
    if not hyp:
        return 0.0
    bp = 1.0 if len(hyp) > len(ref) else math.exp(1 - len(ref) / len(hyp))
    return bp * math.exp(math.fsum(logs))


def is_hit(generation: str, reference: str) -> bool:
    return reference.strip().lower() in generation.lower()


@dataclass
class SplitResult:
    split: str
    direction: str
    n: int
    accuracy: float
    stderr: float
    bleu: float
    """Word-level BLEU-4, add-one smoothing, x100."""
    bleu_smdm: float
    """SMDM's BLEU: nltk's sentence_bleu over characters, x100."""
    rank_accuracy: float | None = None
    """Share of prompts whose reference completion scores highest among the file's distinct
    completions (chance = 1 / candidates); MDM: conditional ELBO, ARM: exact likelihood."""
    candidates: int | None = None
    rank_pool: str | None = None
    """What the reference is ranked against: the file's distinct completions (name files), or
    one description per other person (description files; see :func:`rank_candidates`)."""
    rank_stderr: float | None = None


# Name -> description files rank against one description per person: the file's distinct
# completions include 4-5 paraphrases of each person's description, and ranking a reference
# against paraphrases of the same fact measures wording, not knowledge. The paired file (the
# same facts the other way) lists the names that identify each prompt's person.
PAIRED = {"p2d_same": "p2d_reverse", "d2p_reverse": "d2p_same"}


def persons_of(rows: list[dict[str, Any]], names: list[str]) -> list[str] | None:
    """The name each prompt mentions (the longest, if one contains another), or None if some
    prompt mentions none."""
    names = sorted({n.strip() for n in names}, key=len, reverse=True)
    out = []
    for r in rows:
        hit = next((n for n in names if n and n in r["prompt"]), None)
        if hit is None:
            return None
        out.append(hit)
    return out


def rank_candidates(rows: list[dict[str, Any]], persons: list[str] | None) -> list[list[str]]:
    """Each row's candidate completions, its reference first. Without ``persons``: every distinct
    completion of the file. With them: the reference and, for every other person, that person's
    most frequent completion in the file (ties: the first seen)."""
    if persons is None:
        cands = sorted({r["completion"] for r in rows})
        return [[r["completion"]] + [c for c in cands if c != r["completion"]] for r in rows]
    counts: dict[str, Counter] = {}
    for r, p in zip(rows, persons, strict=True):
        counts.setdefault(p, Counter())[r["completion"]] += 1
    rep = {p: c.most_common(1)[0][0] for p, c in counts.items()}  # most_common keeps first-seen
    return [
        [r["completion"]] + [rep[q] for q in counts if q != p]
        for r, p in zip(rows, persons, strict=True)
    ]


def rank_accuracy(
    model,
    tok,
    info,
    rows: list[dict[str, Any]],
    device,
    n_mc: int,
    batch_size: int,
    seed: int,
    persons: list[str] | None = None,
) -> tuple[float, int]:
    """Likelihood ranking: does the reference beat every other candidate (see
    :func:`rank_candidates`)? One call to the likelihood engine (MDM: MC ELBO with ``n_mc``
    stratified t, common random numbers across a prompt's candidates; ARM: exact). Returns the
    accuracy and the number of candidates per prompt (chance = 1 / that)."""
    from mdmctl.evaluation.likelihood import ScoreConfig, loglikelihood
    from mdmctl.tokenizer import encode_literal

    cands = rank_candidates(rows, persons)
    n_cand = len(cands[0])
    if any(len(c) != n_cand for c in cands):
        raise DataError("reverse-curse ranking: persons have different numbers of candidates")
    ids = {c: encode_literal(tok, c) for c in {c for cs in cands for c in cs}}
    pairs = [
        (encode_literal(tok, r["prompt"]), ids[c])
        for r, cs in zip(rows, cands, strict=True)
        for c in cs
    ]
    cfg = ScoreConfig(estimator="mc", mc_samples=n_mc, batch_size=batch_size, seed=seed)
    scores = loglikelihood(model, pairs, cfg, eos_id=info.eos_id, device=device)
    ll = torch.tensor([s.logprob for s in scores]).view(len(rows), n_cand)  # (R, C), ref at 0
    # The reference must beat every other candidate strictly (a tie is a miss).
    wins = (ll[:, :1] > ll[:, 1:]).all(1) if n_cand > 1 else torch.ones(len(rows), dtype=torch.bool)
    return float(wins.float().mean()), n_cand


def evaluate_reverse_curse(
    *,
    data_dir: str,
    checkpoint: str | None,
    sample_cfg: Any,
    total_length: int = 52,
    limit: int | None = None,
    out: str | None = None,
    splits: tuple[str, ...] = tuple(SPLITS),
    rank: bool = False,
    rank_mc: int = 16,
    log=None,
) -> list[SplitResult]:
    from mdmctl.checkpoint import load_model
    from mdmctl.sampling import for_objective, generate
    from mdmctl.tokenizer import encode_literal

    bad = [x for x in splits if x not in SPLITS]
    if bad or not splits:
        raise ConfigError(
            f"--splits: expected names from {', '.join(SPLITS)}, got {', '.join(bad) or 'none'}"
        )
    d = Path(data_dir)
    if not d.is_dir():
        raise DataError(f"{d}: no such folder (the reversal-curse test files)")
    model, tok, info, step_dir, device = load_model(
        checkpoint, sample_cfg.device, sample_cfg.attention, log
    )
    sample_cfg = for_objective(sample_cfg, model.cfg.objective)
    results, all_rows = [], []
    for name in splits:
        fname, direction = SPLITS[name]
        rows = read_jsonl(d / fname)[:limit] if limit else read_jsonl(d / fname)
        if not rows:
            raise DataError(f"{d / fname}: no prompts")
        for r in rows:
            if not isinstance(r.get("prompt"), str) or not isinstance(r.get("completion"), str):
                raise DataError(f"{d / fname}:{r['_line']}: missing field 'prompt' or 'completion'")
        prompts = [r["prompt"] for r in rows]
        plen = [len(encode_literal(tok, p)) for p in prompts]
        # SMDM's "total length 52": prompt + generation; at least 8 generated tokens.
        lengths = [max(8, min(total_length, model.cfg.seq_len) - n) for n in plen]
        lengths = [
            max(1, min(n, model.cfg.seq_len - p)) for n, p in zip(lengths, plen, strict=True)
        ]
        g = generate(model, tok, info, prompts, sample_cfg, device, lengths)
        hits = [is_hit(t, r["completion"]) for t, r in zip(g.texts, rows, strict=True)]
        bleu = [sentence_bleu(t, r["completion"]) for t, r in zip(g.texts, rows, strict=True)]
        cbleu = [smdm_bleu(t, r["completion"]) for t, r in zip(g.texts, rows, strict=True)]
        n, c = len(rows), sum(hits)
        res = SplitResult(
            name,
            direction,
            n,
            c / n,
            binomial_stderr(c, n),
            100 * sum(bleu) / n,
            100 * sum(cbleu) / n,
        )
        if rank:
            persons = None
            if name in PAIRED and (d / SPLITS[PAIRED[name]][0]).is_file():
                names = [r["completion"] for r in read_jsonl(d / SPLITS[PAIRED[name]][0])]
                persons = persons_of(rows, names)
            res.rank_accuracy, res.candidates = rank_accuracy(
                model,
                tok,
                info,
                rows,
                device,
                rank_mc,
                sample_cfg.batch_size * 4,
                sample_cfg.seed,
                persons,
            )
            res.rank_pool = "one description per person" if persons else "distinct completions"
            res.rank_stderr = binomial_stderr(round(res.rank_accuracy * n), n)
        results.append(res)
        all_rows += [
            {
                "split": name,
                "prompt": r["prompt"],
                "reference": r["completion"],
                "generation": t,
                "hit": h,
                "bleu": b,
                "bleu_smdm": cb,
            }
            for r, t, h, b, cb in zip(rows, g.texts, hits, bleu, cbleu, strict=True)
        ]
    if out:
        write_jsonl(out, all_rows)
    return results
