"""Generation from a checkpoint, one code path for both objectives: ``generate`` (the prompts
of a request, batched; used by ``sample``, the generation tasks, lm-eval and ``bench``) and
``sample_from_checkpoint`` (``mdmctl sample``).

Each sequence of a request draws from its own random stream, seeded by ``--seed`` and its place
in the request (``row_seed``), so no sample depends on the batch size or its neighbours.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from mdmctl.checkpoint import load_model
from mdmctl.errors import ConfigError
from mdmctl.memory import check_eval_batch, weight_itemsize
from mdmctl.progress import report
from mdmctl.sampling.chat import chat_ids
from mdmctl.sampling.compiled import compile_model, graphed_model
from mdmctl.sampling.config import (
    DEFAULT_MAX_LENGTH,
    SampleConfig,
    check_arm_options,
    fit_length,
    for_objective,
)
from mdmctl.tokenizer import encode_literal


@dataclass
class Sample:
    prompt: str
    text: str
    token_ids: list[int]


@dataclass
class SampleResult:
    samples: list[Sample]
    checkpoint: Path
    objective: str
    nfe: int
    seconds: float
    generated_tokens: int

    @property
    def tokens_per_s(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds else 0.0


@dataclass
class Generation:
    ids: list[list[int]]  # generated ids per prompt (eos-truncated when stop_at_eos)
    texts: list[str]
    nfe: int
    seconds: float
    generated_tokens: int  # output tokens produced (before eos truncation), never prompt tokens
    stopped: list[bool]  # an eos was generated before the canvas end


_STREAM = 0x9E3779B97F4A7C15  # odd 64-bit constant: distinct, well-spread seeds per row


def row_seed(seed: int, row: int) -> int:
    """The random stream of the request's ``row``-th sequence (row 0's is the seed itself)."""
    return (seed + row * _STREAM) % 2**63


def generate(
    model,
    tok,
    info,
    prompts: list[str],
    cfg: SampleConfig,
    device,
    length: int | list[int] | None = None,
    prompt_ids: list[list[int]] | None = None,
) -> Generation:
    """Generate after each prompt with ``cfg``'s sampler settings (one code path for ``sample``
    and the generation tasks). ``length`` overrides ``cfg.length``, optionally per prompt;
    ``prompt_ids`` gives the prompts already tokenized (e.g. truncated to fit)."""
    from mdmctl.sampling.select import RowStreams

    mc = model.cfg
    if mc.objective == "arm":
        check_arm_options(cfg)
    # device may be given as a string by library callers
    check_eval_batch(mc, cfg.batch_size, torch.device(device).type,
                     rows_per_item=2 if cfg.decoding.cfg else 1,
                     weight_bytes=weight_itemsize(model))  # fmt: skip
    ids = prompt_ids or [encode_literal(tok, p) if p else [] for p in prompts]
    lengths = _lengths(ids, length, cfg.length, mc.seq_len)
    sample_rows = _row_sampler(model, info, cfg, device)
    t0 = time.perf_counter()
    out_ids: list[list[int]] = [[] for _ in ids]
    nfe = done = 0
    for rows in _batches(ids, lengths, cfg.batch_size, mc.objective):
        # Each sequence draws from its own stream, seeded by its place in the request: its tokens
        # do not depend on the batch size, its neighbours, or when they finish.
        gen = RowStreams.seeded([row_seed(cfg.seed, r) for r in rows], device)
        got, n = sample_rows([ids[r] for r in rows], [lengths[r] for r in rows], gen)
        for r, t in zip(rows, got, strict=True):
            out_ids[r] = t
        nfe += n
        done += len(rows)
        report("generating", done, len(ids))
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    generated = sum(len(o) for o in out_ids)
    stopped = [info.eos_id in o for o in out_ids]
    if cfg.decoding.stop_at_eos:
        out_ids = [o[: o.index(info.eos_id)] if info.eos_id in o else o for o in out_ids]
    texts = [tok.decode(o, skip_special_tokens=True) for o in out_ids]
    return Generation(out_ids, texts, nfe, seconds, generated, stopped)


def _lengths(
    ids: list[list[int]], length: int | list[int] | None, default: int | None, seq_len: int
) -> list[int]:
    """Each prompt's generation length: ``length`` (one for all, or per prompt), else the
    config's, else what fits after the prompt; checked against the context."""
    lengths = [length] * len(ids) if not isinstance(length, list) else length
    lengths = [default if n is None else n for n in lengths]
    lengths = [
        fit_length(len(i), seq_len) if n is None else n for i, n in zip(ids, lengths, strict=True)
    ]
    for i, n in zip(ids, lengths, strict=True):
        # ARM: eos + prompt + n generated, the last never fed back: len(i) + n positions.
        if len(i) + n > seq_len:
            raise ConfigError(
                f"prompt is {len(i)} tokens; model context is {seq_len} "
                f"(gen length {n}): shorten the prompt or --length"
            )
    return lengths


RowSampler = Callable[[list[list[int]], list[int], Any], tuple[list[list[int]], int]]
"""(prompt ids, generation lengths, the rows' random streams) -> (generated ids, forwards)."""


def _row_sampler(model: Any, info: Any, cfg: SampleConfig, device: Any) -> RowSampler:
    """The sampler of one batch of rows: the model as ``cfg`` runs it (compiled, from CUDA
    graphs, behind an MDM KV cache) and the objective's sampler with ``cfg.decoding``."""
    from mdmctl.sampling.arm import sample_arm
    from mdmctl.sampling.cache import CachedMDM
    from mdmctl.sampling.mdm import sample_mdm

    mc, d = model.cfg, cfg.decoding
    net = compile_model(model, device) if cfg.compile else model
    if cfg.cuda_graphs:
        net = graphed_model(model, net, device)
    mdm_fn = (
        (lambda x, doc: net(x, doc_ids=doc))
        if cfg.cache == "none"
        # Under CUDA graphs the delayed cache's widths come in steps of 8: fewer graphs.
        else CachedMDM(
            net,
            cfg.cache,
            cfg.cache_window,
            mc.mask_id,
            8 if cfg.cuda_graphs else 1,
            shift=mc.shift_logits,
        )  # fmt: skip
    )
    # CUDA graphs replay fixed shapes: finished rows stay in their batch.
    rules = replace(d, eos_id=info.eos_id, keep_batch=cfg.cuda_graphs)

    def sample_rows(
        chunk: list[list[int]], n_gen: list[int], gen: Any
    ) -> tuple[list[list[int]], int]:
        if mc.objective == "mdm":
            o = sample_mdm(mdm_fn, chunk, length=n_gen, steps=[cfg.steps or n for n in n_gen],
                           mask_id=mc.mask_id, pad_id=info.pad_id, generator=gen, decoding=rules,
                           device=device)  # fmt: skip
            return o.rows(), o.nfe
        return sample_arm(net, chunk, length=n_gen, eos_id=info.eos_id, generator=gen,
                          temperature=d.temperature, device=device, stop_at_eos=d.stop_at_eos,
                          top_k=d.top_k, top_p=d.top_p, min_length=d.min_length,
                          keep_batch=cfg.cuda_graphs)  # fmt: skip

    return sample_rows


def _batches(
    ids: list[list[int]], lengths: list[int], size: int, objective: str
) -> Iterator[list[int]]:
    """Rows of each generation batch. A batch holds rows of any prompt and generation length
    (MDM: right-padded canvases; ARM: left-padded prompts; the padding is its own attention
    segment either way), so rows of similar widths go together: less padding. A row's result
    does not depend on its batch (each row has its own random stream)."""
    if objective == "mdm":  # the canvas: prompt + generation
        order = sorted(range(len(ids)), key=lambda i: (len(ids[i]) + lengths[i], len(ids[i])))
    else:  # the prompt is padded; each row stops at its own length
        order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), lengths[i]))
    for s in range(0, len(order), size):
        yield order[s : s + size]


def sample_from_checkpoint(cfg: SampleConfig, log=None) -> SampleResult:
    model, tok, info, step_dir, device = load_model(
        cfg.checkpoint, cfg.device, cfg.attention, log, cfg.dtype
    )
    cfg = for_objective(cfg, model.cfg.objective)
    prompts = [p for p in cfg.prompts for _ in range(cfg.num_samples)]
    if cfg.chat:
        ids = chat_ids(tok, step_dir, prompts)
    else:
        ids = [encode_literal(tok, p) if p else [] for p in prompts]
    lengths = [cfg.length or fit_length(len(i), model.cfg.seq_len) for i in ids]
    _explain_lengths(cfg, ids, lengths, model.cfg, log or (lambda m: None))
    g = generate(model, tok, info, prompts, cfg, device, length=lengths, prompt_ids=ids)
    samples = [
        Sample(prompt=p, text=t, token_ids=i)
        for p, t, i in zip(prompts, g.texts, g.ids, strict=True)
    ]
    return SampleResult(
        samples, step_dir, model.cfg.objective, g.nfe, g.seconds, g.generated_tokens
    )


def _explain_lengths(cfg: SampleConfig, ids, lengths: list[int], mc, log) -> None:
    """Say what the defaults chose, and when --steps cannot all be used."""
    if cfg.length is None:
        longest = max(len(i) for i in ids)
        capped = (
            f" (capped at {DEFAULT_MAX_LENGTH}; pass --length for more)"
            if any(mc.seq_len - len(i) > DEFAULT_MAX_LENGTH for i in ids)
            else ""
        )
        log(
            f"--length not given: generating up to {max(lengths)} tokens{capped}, the room the "
            f"context ({mc.seq_len}) leaves after the prompt ({longest} tokens at most)"
        )
    if mc.objective == "mdm" and cfg.steps is not None and cfg.steps > min(lengths):
        # A step that reveals no token costs no forward pass: the work is at most one pass per
        # generated token, whatever --steps says.
        log(
            f"--steps {cfg.steps} exceeds the {min(lengths)} tokens to generate: a step that "
            f"reveals nothing costs no forward pass, so at most {min(lengths)} passes are made"
        )
