"""One likelihood engine (method.md §4): log p(continuation | context) for MDM and ARM checkpoints.

Every scorer goes through :func:`loglikelihood`: the zero-shot tasks, ``reverse-curse --rank``
and the lm-eval adapter. Estimators:

- MDM ``mc``: for each of n samples draw t (stratified across the samples, t_i = (u + i/n) mod 1),
  mask each continuation token with probability t, keep the context clean, and score
  Σ_masked log p(x0_i | xt) / t. The mean is the ELBO, a *lower bound* on log p in expectation;
  its standard error is reported (the plain formula, which is conservative under stratification).
- MDM ``chain-rule``: log p = Σ_j log p(x_j | context, x_<j, masks after j), one forward per
  continuation token. Exact for the model's left-to-right factorisation.
- MDM greedy check (``is_greedy``): start with the continuation fully masked, unmask the most
  confident position with its argmax each step; true iff that reproduces the continuation.
- ARM: exact, one forward; greedy iff every next-token argmax is the continuation token.

Both MDM estimators accept unsupervised CFG (``cfg``; w = 0 is one plain pass).

Speed without changing results: every (request, sample) row is collected first, identical rows are
forwarded once (a short continuation has few distinct mask patterns: 128 samples of a one-token
continuation need one forward), rows of all requests are batched together sorted by length, the
head runs only at the scored positions, and padding is its own attention segment. The random
numbers of a request depend only on the seed and its context tokens, never on its batch or
position in the request list, so results do not depend on batching; the choices of one question
share them (common random numbers: less variance in the difference that picks the answer).
"""

from __future__ import annotations

import math
import zlib
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from mdmctl.data.batches import mix
from mdmctl.diffusion import stratified_t
from mdmctl.errors import ConfigError
from mdmctl.sampling.mdm import cfg_logits

Estimator = Literal["mc", "chain-rule"]
ESTIMATORS: tuple[str, ...] = ("mc", "chain-rule")
TokenRequest = tuple[Sequence[int], Sequence[int]]  # (context ids, continuation ids)


@dataclass(frozen=True, kw_only=True, slots=True)
class ScoreConfig:
    estimator: Estimator = "mc"
    """MDM estimator; an ARM is always scored exactly."""
    mc_samples: int = 128
    cfg: float = 0.0
    """Unsupervised CFG scale w for the MDM (0: none)."""
    greedy: bool = False
    """Also compute ``is_greedy`` (MDM: one forward per revealed token, stops at the first miss)."""
    batch_size: int = 64
    """Rows per forward pass (a CFG row counts once; it runs as two)."""
    seed: int = 0
    eps: float = 1e-3
    """MC times lie in [eps, 1], as in training."""

    def __post_init__(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise ConfigError(
                f"--estimator: expected one of {', '.join(ESTIMATORS)}, got {self.estimator!r}"
            )
        for name in ("mc_samples", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(
                    f"--{name.replace('_', '-')}: must be >= 1, got {getattr(self, name)}"
                )
        if not (self.cfg >= 0 and math.isfinite(self.cfg)):
            raise ConfigError(f"--cfg: must be a finite number >= 0, got {self.cfg}")


@dataclass(frozen=True, slots=True)
class Score:
    logprob: float
    """log p(continuation | context) in nats; MDM ``mc``: the ELBO estimate (a lower bound)."""
    stderr: float
    """Monte Carlo standard error of ``logprob``; 0 where it is exact."""
    is_greedy: bool | None
    """Greedy decoding reproduces the continuation; None unless asked for (MDM)."""
    tokens: int
    """Continuation tokens scored."""
    truncated: bool
    """The context (or the continuation's start) was cut on the left to fit the model."""


@dataclass
class _Row:
    """One distinct model input and the positions whose log-probs its consumers need."""

    x: tuple[int, ...]
    prompt_len: int  # clean context positions (masked in CFG's unconditional pass)
    positions: dict[int, int]  # position -> column in this row's block of selected logits


@dataclass
class _Use:
    """A consumer: Σ_k weight · log p(targets[k] at positions[k]) into accumulator ``slot``."""

    row: int
    positions: list[int]
    targets: list[int]
    weight: float
    slot: int


class _Rows:
    """Distinct rows and the uses that read them."""

    def __init__(self) -> None:
        self.rows: list[_Row] = []
        self.uses: list[_Use] = []
        self._index: dict[tuple[tuple[int, ...], int], int] = {}

    def add(self, x: list[int], prompt_len: int, positions: list[int], targets: list[int],
            weight: float, slot: int) -> None:
        key = (tuple(x), prompt_len)
        r = self._index.get(key)
        if r is None:
            r = self._index[key] = len(self.rows)
            self.rows.append(_Row(key[0], prompt_len, {}))
        cols = self.rows[r].positions
        for p in positions:
            cols.setdefault(p, len(cols))
        self.uses.append(_Use(r, positions, targets, weight, slot))


def _fit(ctx: Sequence[int], cont: Sequence[int], room: int) -> tuple[list[int], list[int], bool]:
    """Cut the context on the left (then the continuation's start, which becomes context) so that
    context + continuation fits ``room`` tokens; at least one continuation token is kept."""
    ids = list(ctx) + list(cont)
    if len(ids) <= room:
        return list(ctx), list(cont), False
    n_cont = min(len(cont), room)
    ids = ids[-room:]
    return ids[: room - n_cont], ids[room - n_cont :], True


def _forward_logprobs(model, rows: list[_Row], *, mask_id: int, cfg: float, device) -> torch.Tensor:
    """Log-probs (N, V) at every row's selected positions, rows in order, positions in column
    order. Rows are right-padded; the padding is its own attention segment (MDM)."""
    L = max(len(r.x) for r in rows)
    B = len(rows)
    x = torch.full((B, L), mask_id, dtype=torch.long)
    select = torch.zeros(B, L, dtype=torch.bool)
    prompt = torch.zeros(B, L, dtype=torch.bool)
    ragged = any(len(r.x) != L for r in rows)
    docs = torch.zeros(B, L, dtype=torch.long) if ragged else None
    order = []  # (row, position) in the row-major order the model returns selected logits
    for b, r in enumerate(rows):
        x[b, : len(r.x)] = torch.tensor(r.x)
        prompt[b, : r.prompt_len] = True
        if docs is not None:
            docs[b, len(r.x) :] = 1
        for p in sorted(r.positions):
            select[b, p] = True
        order.append(sorted(r.positions, key=r.positions.__getitem__))
    x, select, prompt = x.to(device), select.to(device), prompt.to(device)
    docs = None if docs is None else docs.to(device)
    if model.cfg.objective == "arm" or cfg == 0 or not bool(prompt.any()):
        logits = model(x, doc_ids=docs, select=select)
    else:
        sel2 = torch.cat([select, select])
        logits = cfg_logits(
            lambda xx, dd: model(xx, doc_ids=dd, select=sel2), x, docs, prompt, mask_id, cfg
        )
    logp = torch.log_softmax(logits, dim=-1)  # (N, V), N in (row, ascending position) order
    # Reorder each row's block from ascending positions to its column order.
    perm, start = [], 0
    for b, r in enumerate(rows):
        asc = sorted(r.positions)
        rank = {p: i for i, p in enumerate(asc)}
        perm.extend(start + rank[p] for p in order[b])
        start += len(asc)
    return logp[torch.tensor(perm, device=logp.device)]


def _run(model, rows: _Rows, n_slots: int, *, mask_id: int, cfg: float, batch_size: int,
         device) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ weight · log p per slot (float64), whether every target of the slot was the argmax),
    all rows batched by length."""
    acc = torch.zeros(n_slots, dtype=torch.float64)
    misses = torch.zeros(n_slots, dtype=torch.long)
    uses_of: list[list[_Use]] = [[] for _ in rows.rows]
    for u in rows.uses:
        uses_of[u.row].append(u)
    order = sorted(range(len(rows.rows)), key=lambda i: len(rows.rows[i].x))
    for s in range(0, len(order), batch_size):
        chunk = order[s : s + batch_size]
        logp = _forward_logprobs(
            model, [rows.rows[i] for i in chunk], mask_id=mask_id, cfg=cfg, device=device
        ).cpu()
        idx, tgt, slot, w = [], [], [], []
        offset = 0
        for i in chunk:
            cols = rows.rows[i].positions
            for u in uses_of[i]:
                idx.extend(offset + cols[p] for p in u.positions)
                tgt.extend(u.targets)
                slot.extend([u.slot] * len(u.positions))
                w.extend([u.weight] * len(u.positions))
            offset += len(cols)
        idx_t, tgt_t, slot_t = torch.tensor(idx), torch.tensor(tgt), torch.tensor(slot)
        lp = logp[idx_t, tgt_t].double()
        acc.index_add_(0, slot_t, lp * torch.tensor(w, dtype=torch.float64))
        misses.index_add_(0, slot_t, (logp[idx_t].argmax(-1) != tgt_t).long())
    return acc, misses == 0


def _context_key(seed: int, ctx: Sequence[int]) -> int:
    return mix(seed, zlib.crc32(array("q", ctx).tobytes()), len(ctx))


def _mdm_greedy(model, reqs: list[tuple[list[int], list[int]]], *, mask_id: int, cfg: float,
                batch_size: int, device) -> list[bool]:
    """Reveal the most confident masked position (its argmax) each step, all requests batched;
    a request stops at its first miss, so a weak model costs about one forward per request."""
    canvas = [ctx + [mask_id] * len(cont) for ctx, cont in reqs]
    alive = list(range(len(reqs)))
    result = [True] * len(reqs)
    while alive:
        nxt = []
        alive.sort(key=lambda i: len(canvas[i]))
        for s in range(0, len(alive), batch_size):
            chunk = alive[s : s + batch_size]
            rows = []
            for i in chunk:
                n_ctx = len(reqs[i][0])
                masked = [p for p in range(n_ctx, len(canvas[i])) if canvas[i][p] == mask_id]
                rows.append(_Row(tuple(canvas[i]), n_ctx, {p: k for k, p in enumerate(masked)}))
            logp = _forward_logprobs(model, rows, mask_id=mask_id, cfg=cfg, device=device).cpu()
            conf, arg = logp.max(dim=-1)
            start = 0
            for i, r in zip(chunk, rows, strict=True):
                n = len(r.positions)
                k = int(conf[start : start + n].argmax())
                pos = next(p for p, c in r.positions.items() if c == k)
                target = reqs[i][1][pos - len(reqs[i][0])]
                start += n
                if int(arg[start - n + k]) != target:
                    result[i] = False
                    continue
                canvas[i][pos] = target
                if n > 1:
                    nxt.append(i)
        alive = nxt
    return result


@torch.no_grad()
def loglikelihood(
    model, requests: Sequence[TokenRequest], cfg: ScoreConfig, *, eos_id: int, device
) -> list[Score]:
    """Score each (context ids, continuation ids) request; see the module docstring."""
    mc = model.cfg
    arm = mc.objective == "arm"
    fitted = []
    for ctx, cont in requests:
        if len(cont) == 0:
            raise ConfigError("a request has an empty continuation (nothing to score)")
        if arm:
            # The ARM always sees a leading eos (as in training and sampling): an empty context
            # still conditions on "start of document".
            c, x, cut = _fit([eos_id, *ctx], cont, mc.seq_len)
        else:
            c, x, cut = _fit(ctx, cont, mc.seq_len)
        fitted.append((c, x, cut))
    rows = _Rows()
    if arm:
        for r, (c, x, _) in enumerate(fitted):
            # Position i predicts token i + 1.
            rows.add(c + x, len(c), list(range(len(c) - 1, len(c) + len(x) - 1)), x, 1.0, r)
        n_slots = len(fitted)
    elif cfg.estimator == "chain-rule":
        for r, (c, x, _) in enumerate(fitted):
            for j in range(len(x)):
                xt = c + x[:j] + [mc.mask_id] * (len(x) - j)
                rows.add(xt, len(c), [len(c) + j], [x[j]], 1.0, r)
        n_slots = len(fitted)
    else:
        n = cfg.mc_samples
        t_all = []
        for r, (c, x, _) in enumerate(fitted):
            g = torch.Generator().manual_seed(_context_key(cfg.seed, c))
            t = stratified_t(n, g, cfg.eps)  # (n,)
            # One uniform per (sample, position) over the whole context window, so choices of
            # different lengths share the masks of the positions they have in common.
            u = torch.rand(n, mc.seq_len, generator=g)[:, : len(x)]
            masked = (u < t[:, None]).tolist()
            t_all.append(t)
            for s in range(n):
                pos = [j for j in range(len(x)) if masked[s][j]]
                if not pos:
                    continue  # nothing masked: this sample contributes 0
                xt = list(c) + [mc.mask_id if m else tok for m, tok in zip(masked[s], x)]
                rows.add(xt, len(c), [len(c) + j for j in pos], [x[j] for j in pos],
                         1.0 / float(t[s]), r * n + s)
        n_slots = len(fitted) * n
    acc, all_argmax = _run(model, rows, n_slots, mask_id=mc.mask_id, cfg=0.0 if arm else cfg.cfg,
                           batch_size=cfg.batch_size, device=device)
    greedy: list[bool | None] = [None] * len(fitted)
    if arm:
        greedy = all_argmax.tolist()
    elif cfg.greedy:
        greedy = list(_mdm_greedy(model, [(c, x) for c, x, _ in fitted], mask_id=mc.mask_id,
                                  cfg=cfg.cfg, batch_size=cfg.batch_size, device=device))
    out = []
    for r, (_, x, cut) in enumerate(fitted):
        if arm or cfg.estimator == "chain-rule":
            out.append(Score(float(acc[r]), 0.0, greedy[r], len(x), cut))
        else:
            v = acc[r * cfg.mc_samples : (r + 1) * cfg.mc_samples]
            se = float(v.std() / math.sqrt(len(v))) if len(v) > 1 else float("nan")
            out.append(Score(float(v.mean()), se, greedy[r], len(x), cut))
    return out
