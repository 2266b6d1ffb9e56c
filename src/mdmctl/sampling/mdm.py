"""MDM samplers on a fixed canvas (docs/method.md §5): prompt, then ``length`` mask tokens.

The time grid runs from t = 1 to 0 in ``steps`` steps. At step k (t -> s):
- ``ancestral`` (the true reverse process): each masked position is revealed with probability
  (t - s)/t, its token drawn from the model; at the last step everything left is revealed.
- ``confidence`` (MaskGIT-style): a candidate is drawn for every masked position and the
  highest-scoring are revealed (``remasking``: the candidate's probability, the top-1 minus top-2
  margin, minus the entropy, or a random order), as many as the ``schedule`` says
  (``schedule.py``: SMDM's, LLaDA's or the rounded rule; docs/method.md §5.1); the rest stay
  masked.

Decoding rules from LLaDA and Fast-dLLM (docs/method.md §5.4), all off by default:
- ``block_length``: semi-autoregressive blocks of the generation, decoded left to right, the
  steps spread over the blocks as evenly as possible and each block revealed on its own schedule.
  One block is the plain sampler, token for token.
- ``threshold``: instead of the schedule, reveal every masked token of the block whose probability
  exceeds the threshold, at least one (the highest-scoring) per step; ``factor``: Fast-dLLM's
  rule, the n-th best token is revealed while its probability is at least 1 - factor / (n + 1)
  (``factor_rule``: and, as Fast-dLLM's code does, all of them when only the last fails).
- ``top_k`` / ``top_p`` filter each position's distribution before sampling (and scoring);
  ``min_length`` forbids eos at the first generated positions; with ``stop_at_eos`` a row is
  finished once its first eos is revealed with nothing masked before it. Tokens after a row's
  first eos are cut from its output, so this changes no visible token; they are filled with eos.
  A finished row leaves the batch when that changes no other row's draws: with a random stream
  per row (``RowStreams``, as ``generate`` samples), or deterministic decoding (temperature 0,
  confidence order other than random); with one stream for the batch, the batch otherwise runs
  until every row has finished.
- ``suffix_window`` (DPad's sliding window, Chen et al. 2025, arXiv 2508.14148): with blocks,
  each forward runs the prompt, the blocks up to the current one and only this many of the
  masked positions after it; the rest of the canvas is left out until its block comes. An
  approximation (the model was trained on whole canvases and sees a shorter one), which saves
  the forwards' work on positions that are mostly end-of-text padding to be.

Unsupervised CFG: guided = uncond + (w + 1)(cond - uncond) with the prompt replaced by mask tokens
in the unconditional pass; both passes run as one batched forward. Rows may differ in prompt
length, generation length and steps: each row has its own block schedule, ragged rows are
right-padded and the padding is its own attention segment, so it is never attended and never
generated: a row's sample does not depend on its batch neighbours. The model is time-agnostic,
so a step in which no token changed reuses the previous logits (MDLM's cache) without a forward
pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from mdmctl.errors import ConfigError
from mdmctl.sampling.decoding import Decoding
from mdmctl.sampling.schedule import linear_times, reveal_counts
from mdmctl.sampling.select import (
    RowStreams,
    Streams,
    filter_logits,
    gumbel_argmax,
    remask_score,
    token_confidence,
    uniform,
)

ModelFn = Callable[
    [torch.Tensor, torch.Tensor], torch.Tensor
]  # (x (B, L), doc_ids (B, L)) -> logits


@dataclass
class MDMSampleOutput:
    tokens: torch.Tensor  # (B, max length) generated ids; a shorter row is right-padded
    nfe: int  # forward passes (a CFG step counts one batched pass)
    lengths: list[int]  # each row's generation length

    def rows(self) -> list[list[int]]:
        """Each row's generated ids, without the padding of shorter rows."""
        return [t[:n] for t, n in zip(self.tokens.tolist(), self.lengths, strict=True)]


def cfg_logits(
    model: ModelFn,
    x: torch.Tensor,
    doc_ids: torch.Tensor | None,
    prompt_mask: torch.Tensor,
    mask_id: int,
    cfg: float,
) -> torch.Tensor:
    """Guided logits (B, L, V). ``prompt_mask`` (B, L) marks prompt positions (masked in the
    unconditional pass). cfg = 0 is one plain conditional pass."""
    if cfg == 0 or not bool(prompt_mask.any()):
        return model(x, doc_ids)
    uncond = torch.where(prompt_mask, torch.full_like(x, mask_id), x)
    docs = None if doc_ids is None else torch.cat([doc_ids, doc_ids])
    both = model(torch.cat([x, uncond]), docs)  # (2B, L, V)
    cond, unc = both.chunk(2)
    guided = unc + (cfg + 1.0) * (cond - unc)
    # -inf - -inf is nan at the mask column: keep it -inf (never predicted).
    return torch.where(torch.isinf(cond) & (cond < 0), cond, guided)


@dataclass
class _Canvas:
    x: torch.Tensor  # (B, total) prompt, masks, right padding
    doc_ids: torch.Tensor | None  # (B, total) padding is segment 1; None without padding
    prompt_mask: torch.Tensor  # (B, total)
    gen_pos: torch.Tensor  # (B, total) the generated slots
    rel: torch.Tensor  # (B, total) position relative to the row's first generated slot
    length: torch.Tensor  # (B,) each row's generation length

    def take(self, keep: torch.Tensor) -> _Canvas:
        """The rows where ``keep`` (B,) is true."""
        return _Canvas(*(None if t is None else t[keep] for t in vars(self).values()))


def _canvas(
    prompts: list[list[int]], lengths: list[int], mask_id: int, pad_id: int, device
) -> _Canvas:
    B = len(prompts)
    plens = torch.tensor([len(p) for p in prompts])
    glens = torch.tensor(lengths)
    total = int((plens + glens).max())
    x = torch.full((B, total), pad_id, dtype=torch.long)
    for b, (p, n) in enumerate(zip(prompts, lengths, strict=True)):
        x[b, : len(p)] = torch.tensor(p, dtype=torch.long)
        x[b, len(p) : len(p) + n] = mask_id
    pos = torch.arange(total)
    rel = pos[None, :] - plens[:, None]
    gen_pos = (rel >= 0) & (rel < glens[:, None])
    real = rel < glens[:, None]
    # Padding is its own attention segment. Without padding no mask is built at all, which keeps
    # the attention kernel on its fast maskless path.
    doc_ids = (~real).long().to(device) if bool((~real).any()) else None
    return _Canvas(x.to(device), doc_ids, (rel < 0).to(device), gen_pos.to(device),
                   rel.to(device), glens.to(device))  # fmt: skip


def steps_per_block(steps: int, n_blocks: int) -> list[int]:
    """Steps per block, as even as possible (the first blocks take the remainder); at least 1
    (parallel decoding does not follow the schedule)."""
    return [max(1, steps // n_blocks + (i < steps % n_blocks)) for i in range(n_blocks)]


@dataclass
class _Blocks:
    """Each row's blocks: rows of different lengths (or steps) share one canvas, each on its own
    schedule. All (B,) tensors."""

    size: torch.Tensor  # block length (the whole generation without blocks)
    count: torch.Tensor  # number of blocks
    steps: torch.Tensor  # denoising steps over all blocks

    def step_counts(self, j: int) -> torch.Tensor:
        """(B,) steps of block ``j`` as ``steps_per_block`` gives them; 0 for a row with fewer
        blocks."""
        spread = (self.steps // self.count + (j < self.steps % self.count)).clamp(min=1)
        return torch.where(j < self.count, spread, 0)

    def sizes(self, j: int, length: torch.Tensor) -> torch.Tensor:
        """(B,) tokens in block ``j`` (the last block may be short; 0 past a row's last)."""
        return (length - j * self.size).clamp(min=0).minimum(self.size)

    def take(self, keep: torch.Tensor) -> _Blocks:
        return _Blocks(self.size[keep], self.count[keep], self.steps[keep])


def _blocks(c: _Canvas, steps: list[int], d: Decoding) -> _Blocks:
    size = torch.full_like(c.length, d.block_length) if d.block_length else c.length.clone()
    count = (c.length + size - 1) // size
    st = torch.tensor(steps, device=c.length.device)
    short = (st < count) & (not d.parallel)
    if bool(short.any()):
        b = int(short.nonzero()[0])
        raise ConfigError(
            f"--steps {int(st[b])} is fewer than the {int(count[b])} blocks of --block-length "
            f"{int(size[b])}: each block needs at least one step"
        )
    return _Blocks(size, count, st)


@torch.no_grad()
def sample_mdm(
    model: ModelFn,
    prompts: list[list[int]],
    *,
    length: int | list[int],
    steps: int | list[int],
    mask_id: int,
    pad_id: int,
    generator: Streams,
    decoding: Decoding | None = None,
    device: torch.device | str = "cpu",
) -> MDMSampleOutput:
    """Generate ``length`` tokens after each prompt in ``steps`` steps (each optionally per row:
    one canvas holds rows of any length, the shorter right-padded); returns the generated ids and
    the NFE. ``generator``: one stream for the batch, or ``RowStreams`` (one per row: each row
    draws what it draws alone, whatever the batch)."""
    d = decoding or Decoding()
    lengths = length if isinstance(length, list) else [length] * len(prompts)
    c = _canvas(prompts, lengths, mask_id, pad_id, device)
    blk = _blocks(c, steps if isinstance(steps, list) else [steps] * len(prompts), d)
    out = c.x.clone()  # (B, total) each row's canvas once it is final
    rows = torch.arange(len(prompts), device=c.x.device)  # the rows still decoding
    canvas, x, logits, nfe = c, c.x, None, 0
    # A finished row leaves the batch (its later forwards are skipped) where that changes no
    # other row's draws: deterministic decoding, or a stream per row. Otherwise the batch stops
    # when all have finished.
    quiet = isinstance(generator, RowStreams) or (
        d.temperature == 0 and d.sampler == "confidence" and d.remasking != "random"
    )
    # keep_batch: such a row stays, its masks filled with eos as the output would fill them
    # (nothing left to reveal, so no forward runs for it alone); the shapes hold.
    drop, fill = quiet and not d.keep_batch, quiet and d.keep_batch
    for j in range(int(blk.count.max())):
        # This block's slots, lengths and steps per row (B, total), (B,), (B,)
        in_block, size, block_steps = (
            _in_block(c, blk, j),
            blk.sizes(j, c.length),
            blk.step_counts(j),
        )
        width, docs = _visible(c, blk, j, d.suffix_window)  # the forwards' columns
        if hasattr(model, "begin_block"):  # a KV cache (sampling/cache.py): refill it
            model.begin_block(in_block[:, :width])
            logits = None
        for k in range(int((size if d.parallel else block_steps).max())):
            masked = (x == mask_id) & in_block  # pads and prompt are never mask_id
            if not bool(masked.any()):
                break
            if logits is None:  # (B, width, V): the block's columns are all inside
                xv, pv = x[:, :width], c.prompt_mask[:, :width]
                logits = cfg_logits(model, xv, docs, pv, mask_id, d.cfg)
                nfe += 1
            x, changed = _step(x, logits, masked, c, d, size, (k, block_steps), generator)
            if changed:
                logits = None  # otherwise the same canvas: reuse the logits, no forward pass
            if not (d.stop_at_eos and d.eos_id >= 0):
                continue
            done = _finished(x, c, mask_id, d.eos_id)  # (B,)
            n_done = int(done.sum())  # one device sync per step
            if n_done == len(done) or (drop and n_done):
                # Tokens after a row's first eos are cut from its output: fill them with eos.
                out[rows[done]] = torch.where(x[done] == mask_id, d.eos_id, x[done])
                if n_done == len(done):
                    return _output(out, canvas, nfe)
                keep = ~done
                x, c, blk, rows = x[keep], c.take(keep), blk.take(keep), rows[keep]
                in_block, size, block_steps = in_block[keep], size[keep], block_steps[keep]
                logits = None if logits is None else logits[keep]
                docs = None if docs is None else docs[keep]
                if hasattr(model, "take"):
                    model.take(keep)
                if isinstance(generator, RowStreams):
                    generator = generator.take(keep)
            elif fill and n_done:
                x = torch.where(done[:, None] & (x == mask_id), d.eos_id, x)
    out[rows] = x
    return _output(out, canvas, nfe)


def _visible(
    c: _Canvas, blk: _Blocks, j: int, window: int | None
) -> tuple[int, torch.Tensor | None]:
    """The width of block ``j``'s forwards and their segment ids (B, width). ``window`` None:
    the whole canvas. Otherwise each row runs its prompt, its blocks up to ``j`` and the
    ``window`` positions after block ``j``; its columns beyond, up to the widest row's, are their
    own segment, as padding is: never attended, so a row's logits do not depend on its batch."""
    if window is None:
        return c.x.shape[1], c.doc_ids
    prompt_len = -c.rel[:, 0]  # (B,) rel counts from the first generated slot
    end = prompt_len + torch.minimum((j + 1) * blk.size + window, c.length)  # (B,)
    width = int(end.max())
    beyond = torch.arange(width, device=end.device)[None, :] >= end[:, None]  # (B, width)
    return width, (beyond.long() if bool(beyond.any()) else None)


def _in_block(c: _Canvas, blk: _Blocks, j: int) -> torch.Tensor:
    """(B, total) each row's generated slots in its block ``j``."""
    return c.gen_pos & (c.rel.div(blk.size[:, None], rounding_mode="floor") == j)


def _output(x: torch.Tensor, c: _Canvas, nfe: int) -> MDMSampleOutput:
    # A schedule with steps < 1 per token never leaves masks: the last step reveals all.
    lengths = c.length.tolist()
    out = torch.zeros(x.shape[0], max(lengths), dtype=x.dtype, device=x.device)  # (B, max length)
    for b, n in enumerate(lengths):
        out[b, :n] = x[b, c.gen_pos[b]]
    return MDMSampleOutput(out.cpu(), nfe, lengths)


def _finished(x: torch.Tensor, c: _Canvas, mask_id: int, eos_id: int) -> torch.Tensor:
    """(B,) the row's first generated eos is revealed and no mask precedes it."""
    big = torch.iinfo(c.rel.dtype).max
    first_eos = torch.where(c.gen_pos & (x == eos_id), c.rel, big).min(dim=1).values  # (B,)
    return ~((x == mask_id) & (c.rel < first_eos[:, None])).any(dim=1)


def _step(x, logits, masked, c: _Canvas, d: Decoding, size, step, generator):
    """Reveal this step's tokens among ``masked`` (B, total); ``size`` (B,) each row's block
    length, ``step`` (k, the block's steps (B,)). Returns (new x, anything revealed)."""
    k, block_steps = step
    idx = masked.nonzero(as_tuple=True)
    lg = logits[idx]  # (N, V), a copy: masked positions only
    if d.min_length and d.eos_id >= 0:
        lg[c.rel[idx] < d.min_length, d.eos_id] = float("-inf")
    lg = filter_logits(lg, d.top_k, d.top_p)
    cand = gumbel_argmax(lg, d.temperature, generator, idx[0])  # (N,) candidates at masked slots
    if d.sampler == "ancestral":
        t, s = linear_times(k, block_steps)
        last = (s <= 0)[idx[0]]  # (N,) a row's last step reveals all it has left
        reveal = last.clone()
        if not bool(last.all()):  # each other masked token with probability (t - s) / t
            p = ((t - s) / t.clamp(min=1e-12)).float()[idx[0]]  # fp32, as a Python float compared
            # drawn only where a row is not at its last step: what it draws is its own affair
            reveal[~last] = uniform(generator, idx[0][~last]) < p[~last]
    else:
        score = torch.full(x.shape, float("-inf"), device=x.device)
        score[idx] = remask_score(lg, cand, d.remasking, generator, idx[0])
        rank = _ranks(score)  # (B, total): 0 = revealed first
        if d.parallel:  # the rules compare the candidate's probability (the score, if it is one)
            prob = torch.zeros(x.shape, device=x.device)
            low = d.remasking == "low-confidence"
            prob[idx] = score[idx] if low else token_confidence(lg, cand)
            chosen = parallel_reveal(prob, rank, masked, d)
        else:
            n = reveal_counts(d.reveal_schedule, k, masked.sum(1), size, block_steps)  # (B,)
            chosen = rank < n[:, None]
        reveal = (chosen & masked)[idx]
    new = x.clone()
    new[idx[0][reveal], idx[1][reveal]] = cand[reveal]
    return new, bool(reveal.any())


def _ranks(score: torch.Tensor) -> torch.Tensor:
    """Rank of each position by descending score within its row. score (B, total)."""
    # Stable: ties (probability 1.0 in fp32 is common at temperature 0) go to the earlier position,
    # whatever the canvas width or device.
    order = score.argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    positions = torch.arange(score.shape[1], device=score.device).expand_as(order)
    return rank.scatter_(1, order, positions)


def parallel_reveal(prob: torch.Tensor, rank: torch.Tensor, masked: torch.Tensor, d: Decoding):
    """Threshold or factor rule: which masked positions to reveal (the best-ranked always)."""
    if d.threshold is not None:
        return (prob > d.threshold) | (rank == 0)
    # Factor rule, walking the tokens in rank order: the n-th (from 1) passes while
    # p_n >= 1 - factor / (n + 1); the leading run of passes is revealed (``factor_rule``).
    by_rank = torch.zeros_like(prob).scatter_(1, rank, prob)  # (B, total) probs in rank order
    n = torch.arange(1, prob.shape[1] + 1, device=prob.device, dtype=prob.dtype)
    ok = by_rank >= 1.0 - d.factor / (n + 1.0)
    ok[:, 0] = True
    count = ok.long().cumprod(dim=1).sum(dim=1)  # (B,)
    if d.factor_rule == "fast-dllm":  # as written there: only the last failing reveals it too
        n_masked = masked.sum(dim=1)
        count = torch.where(count == n_masked - 1, n_masked, count)
    return rank < count[:, None]
