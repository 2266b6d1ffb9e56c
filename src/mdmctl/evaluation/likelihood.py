"""One likelihood engine (docs/method.md §4): log p(continuation | context) for MDM and ARM
checkpoints.

Every scorer goes through :func:`loglikelihood`: the zero-shot tasks, ``reverse-curse --rank``
and the lm-eval adapter. Estimators:

- MDM ``mc``: for each of n samples draw t (stratified across the samples, t_i = (u + i/n) mod 1),
  mask each continuation token with probability t, keep the context clean, and score
  Σ_masked log p(x0_i | xt) / t. The mean is the ELBO, a *lower bound* on log p in expectation;
  its standard error is reported (the plain formula, which is conservative under stratification).
- MDM ``mc-count`` (LLaDA's estimator, its eval_llada.py): each sample masks exactly k of the C
  continuation tokens, k stratified over 1..C, and weights the masked log-probs by C/k. The same
  expectation as ``mc`` (the ELBO), with no sample wasted on a clean continuation.
- MDM ``mc-dream`` (Dream's estimator, its eval/eval.py): ``mc`` with the canvas's first and
  last positions never masked, so the continuation's last token is never scored (and its first,
  with no context). Not the ELBO of the whole continuation: it reproduces Dream's numbers.
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

import torch

from mdmctl.data.batches import mix
from mdmctl.diffusion import stratified_t
from mdmctl.errors import ConfigError
from mdmctl.evaluation.benchmarks import ESTIMATORS, Estimator
from mdmctl.progress import report
from mdmctl.sampling.mdm import cfg_logits

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
    batch_size: int = 32
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
    """One distinct model input and the positions whose log-probs are read from it."""

    x: tuple[int, ...]
    prompt_len: int  # clean context positions (masked in CFG's unconditional pass)
    positions: dict[int, int]  # position -> column in this row's block of selected logits


class _Rows:
    """Distinct rows, and distinct sums read from them ("slots"): Σ_k log p(targets[k] at
    positions[k]). Identical rows are forwarded once and identical sums computed once, so the
    cost follows the number of distinct mask patterns, not the number of samples."""

    def __init__(self) -> None:
        self.rows: list[_Row] = []
        self.slots: list[tuple[int, tuple[int, ...], tuple[int, ...]]] = []  # row, pos, targets
        self._row_index: dict[tuple[tuple[int, ...], int], int] = {}
        self._slot_index: dict[tuple[int, tuple[int, ...], tuple[int, ...]], int] = {}

    def add(
        self, x: Sequence[int], prompt_len: int, positions: Sequence[int], targets: Sequence[int]
    ) -> int:
        """The slot of Σ log p(targets at positions | x)."""
        key = (tuple(x), prompt_len)
        r = self._row_index.get(key)
        if r is None:
            r = self._row_index[key] = len(self.rows)
            self.rows.append(_Row(key[0], prompt_len, {}))
        skey = (r, tuple(positions), tuple(targets))
        slot = self._slot_index.get(skey)
        if slot is None:
            slot = self._slot_index[skey] = len(self.slots)
            self.slots.append(skey)
            cols = self.rows[r].positions
            for p in positions:
                cols.setdefault(p, len(cols))
        return slot


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
    """Log-probs (N, V) at every row's selected positions: rows in order, each row's positions in
    its column order. Rows are right-padded; the padding is its own attention segment."""
    L = max(len(r.x) for r in rows)
    B = len(rows)
    # Padding uses id 0 (a valid id for every model; never attended, never read).
    x = torch.tensor([r.x + (0,) * (L - len(r.x)) for r in rows])  # (B, L)
    lengths = torch.tensor([len(r.x) for r in rows])
    pos = torch.arange(L)
    docs = None
    if bool((lengths != L).any()):
        docs = (pos[None, :] >= lengths[:, None]).long().to(device)  # (B, L): 1 = padding
    prompt = (pos[None, :] < torch.tensor([r.prompt_len for r in rows])[:, None]).to(device)
    # Selected positions in column order, as flat indices into (B, L).
    flat = torch.tensor([b * L + p for b, r in enumerate(rows) for p in r.positions])
    select = torch.zeros(B * L, dtype=torch.bool)
    select[flat] = True
    select = select.view(B, L).to(device)
    x = x.to(device)
    if model.cfg.objective == "arm" or cfg == 0 or not bool(prompt.any()):
        logits = model(x, doc_ids=docs, select=select)
    else:
        sel2 = torch.cat([select, select])
        logits = cfg_logits(
            lambda xx, dd: model(xx, doc_ids=dd, select=sel2), x, docs, prompt, mask_id, cfg
        )
    # The model returns ascending flat order; map each column-ordered entry to its rank.
    rank = torch.empty(B * L, dtype=torch.long)
    rank[flat.sort().values] = torch.arange(len(flat))
    return torch.log_softmax(logits, dim=-1)[rank[flat].to(logits.device)]  # (N, V)


def _batches(rows: list[_Row], batch_size: int) -> list[list[int]]:
    """Row indices grouped by length (equal lengths need no padding mask), then chunked."""
    by_len: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        by_len.setdefault(len(r.x), []).append(i)
    out, carry = [], []
    for _, idx in sorted(by_len.items()):
        # Leftovers smaller than a batch ride along with the next length (padded, masked).
        idx = carry + idx
        full = len(idx) - len(idx) % batch_size
        out.extend(idx[s : s + batch_size] for s in range(0, full, batch_size))
        carry = idx[full:]
    if carry:
        out.append(carry)
    return out


def _run(
    model, rows: _Rows, *, mask_id: int, cfg: float, batch_size: int, device, argmax: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Each slot's Σ log p (float64); with ``argmax``, whether all its targets were the argmax."""
    n = len(rows.slots)
    acc = torch.zeros(n, dtype=torch.float64)
    misses = torch.zeros(n, dtype=torch.long) if argmax else None
    slots_of: list[list[int]] = [[] for _ in rows.rows]
    for k, (r, _, _) in enumerate(rows.slots):
        slots_of[r].append(k)
    for chunk in _batches(rows.rows, batch_size):
        idx, tgt, slot = [], [], []
        offset = 0
        for i in chunk:
            cols = rows.rows[i].positions
            for k in slots_of[i]:
                _, pos, targets = rows.slots[k]
                idx.extend(offset + cols[p] for p in pos)
                tgt.extend(targets)
                slot.extend([k] * len(pos))
            offset += len(cols)
        logp = _forward_logprobs(
            model, [rows.rows[i] for i in chunk], mask_id=mask_id, cfg=cfg, device=device
        )  # (N, V) on the device; only the scored entries come back
        idx_t, tgt_t = torch.tensor(idx, device=logp.device), torch.tensor(tgt, device=logp.device)
        slot_t = torch.tensor(slot)
        acc.index_add_(0, slot_t, logp[idx_t, tgt_t].double().cpu())
        if misses is not None:
            miss = (logp[idx_t].argmax(-1) != tgt_t).long().cpu()
            misses.index_add_(0, slot_t, miss)
    return acc, (None if misses is None else misses == 0)


def _context_key(seed: int, ctx: Sequence[int]) -> int:
    return mix(seed, zlib.crc32(array("q", ctx).tobytes()), len(ctx))


def _mdm_greedy(
    model,
    reqs: list[tuple[list[int], list[int]]],
    *,
    mask_id: int,
    cfg: float,
    batch_size: int,
    device,
) -> list[bool]:
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
    from mdmctl.memory import check_eval_batch, weight_itemsize

    mc = model.cfg
    arm = mc.objective == "arm"
    # device may be given as a string by library callers
    check_eval_batch(mc, cfg.batch_size, torch.device(device).type,
                     rows_per_item=2 if cfg.cfg else 1,
                     weight_bytes=weight_itemsize(model))  # fmt: skip
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
    out: list[Score] = []
    # Requests in chunks, so memory stays bounded on full benchmarks (10k documents x 4 choices x
    # 128 samples); a chunk's rows do not depend on the others, so neither do the results.
    for s in range(0, len(fitted), CHUNK_REQUESTS):
        out.extend(_score_chunk(model, fitted[s : s + CHUNK_REQUESTS], cfg, device))
        report("scoring requests", len(out), len(fitted))
    return out


CHUNK_REQUESTS = 512


def _mc_masks(
    cfg: ScoreConfig, key: int, C: int, seq_len: int, bare: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """The MC samples' masks of a C-token continuation (n, C) and their weights (n,) float64.

    ``mc``: t stratified in [eps, 1], each token masked with probability t, weight 1/t. One
    uniform per (sample, position) over the whole context window, so choices of different
    lengths share the masks of the positions they have in common.
    ``mc-dream`` (Dream's eval/eval.py): ``mc``, but the canvas's first and last positions are
    never masked (there it keeps "bos and eos" clean): the continuation's last token, and its
    first when the context is empty (``bare``), never count.
    ``mc-count`` (LLaDA's eval_llada.py): exactly k of the C tokens masked, at random places,
    k stratified over 1..C from a uniform start, weight C/k; never an all-clean sample."""
    n, g = cfg.mc_samples, torch.Generator().manual_seed(key)
    if cfg.estimator in ("mc", "mc-dream"):
        t = stratified_t(n, g, cfg.eps)  # (n,)
        u = torch.rand(n, seq_len, generator=g)[:, :C]
        masked = u < t[:, None]
        if cfg.estimator == "mc-dream":  # the canvas's last position stays clean
            masked[:, -1] = False
            if bare:  # and its first: the continuation starts the canvas
                masked[:, 0] = False
        return masked, 1.0 / t.double()
    k0 = int(torch.randint(1, C + 1, (), generator=g))
    k = torch.round(torch.linspace(float(k0), k0 + (n - 1) * (C / n), n)).long()
    k = (k - 1) % C + 1  # (n,) in 1..C
    order = torch.rand(n, C, generator=g).argsort(dim=1)  # a random permutation per sample
    masked = order < k[:, None]  # (n, C) exactly k[i] masked in row i
    return masked, C / k.double()


def _score_chunk(model, fitted, cfg: ScoreConfig, device) -> list[Score]:
    mc = model.cfg
    arm = mc.objective == "arm"
    rows = _Rows()
    if arm or cfg.estimator == "chain-rule":
        slots = []  # per request, the slots whose sum is its log-likelihood
        for c, x, _ in fitted:
            if arm:  # one row; position i predicts token i + 1
                slots.append([rows.add(c + x, len(c), range(len(c) - 1, len(c) + len(x) - 1), x)])
            else:  # one row per token: earlier tokens clean, this one and later ones masked
                slots.append(
                    [
                        rows.add(
                            c + x[:j] + [mc.mask_id] * (len(x) - j), len(c), [len(c) + j], [x[j]]
                        )
                        for j in range(len(x))
                    ]
                )
        acc, all_argmax = _run(
            model,
            rows,
            mask_id=mc.mask_id,
            cfg=0.0 if arm else cfg.cfg,
            batch_size=cfg.batch_size,
            device=device,
            argmax=arm,
        )
        values = [acc[torch.tensor(sl)].sum()[None] for sl in slots]
    else:
        sample_slot, weight = [], []  # (R, n) slot per sample (-1: nothing masked), weights
        for c, x, _ in fitted:
            masked, w = _mc_masks(
                cfg, _context_key(cfg.seed, c), len(x), mc.seq_len, not c
            )  # (n, C)
            patterns, inverse = torch.unique(masked, dim=0, return_inverse=True)
            pslot = []
            for pat in patterns.tolist():
                pos = [j for j, m in enumerate(pat) if m]
                if not pos:
                    pslot.append(-1)  # nothing masked: the sample contributes 0
                    continue
                xt = c + [mc.mask_id if m else tok for m, tok in zip(pat, x, strict=True)]
                pslot.append(rows.add(xt, len(c), [len(c) + j for j in pos], [x[j] for j in pos]))
            sample_slot.append(torch.tensor(pslot)[inverse])
            weight.append(w)
        acc, _ = _run(
            model, rows, mask_id=mc.mask_id, cfg=cfg.cfg, batch_size=cfg.batch_size, device=device
        )
        acc = torch.cat([acc, torch.zeros(1, dtype=torch.float64)])  # slot -1 reads 0
        values = [acc[sl] * w for sl, w in zip(sample_slot, weight, strict=True)]  # (n,) each
    greedy: list[bool | None] = [None] * len(fitted)
    if arm:
        greedy = [bool(all_argmax[sl[0]]) for sl in slots]
    elif cfg.greedy:
        greedy = list(
            _mdm_greedy(
                model,
                [(c, x) for c, x, _ in fitted],
                mask_id=mc.mask_id,
                cfg=cfg.cfg,
                batch_size=cfg.batch_size,
                device=device,
            )
        )
    out = []
    for (_, x, cut), v, gr in zip(fitted, values, greedy, strict=True):
        se = float(v.std() / math.sqrt(len(v))) if len(v) > 1 else 0.0
        if len(v) == 1 and not (arm or cfg.estimator == "chain-rule"):
            se = float("nan")  # one MC sample: the error is unknown, not zero
        out.append(Score(float(v.mean()), se, gr, len(x), cut))
    return out


def encode_pair(tok, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's tokenisation of a (context, continuation) pair: trailing whitespace of the context
    moves to the continuation, the pair is encoded whole and the continuation is what follows the
    context's own token count, so the boundary tokenises as in running text."""
    from mdmctl.tokenizer import encode_literal

    n_space = len(context) - len(context.rstrip())
    if n_space:
        context, continuation = context[:-n_space], context[-n_space:] + continuation
    ctx = encode_literal(tok, context) if context else []
    whole = encode_literal(tok, context + continuation)
    cont = whole[len(ctx) :]
    if not cont:  # the continuation merged into the context's last token: score it on its own
        cont = encode_literal(tok, continuation)
    return ctx, cont
