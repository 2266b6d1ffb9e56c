"""``sample_from_checkpoint``: load a checkpoint and generate, dispatching on its objective."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch

from mdmctl.config import check_finite
from mdmctl.errors import ConfigError
from mdmctl.memory import check_eval_batch
from mdmctl.progress import report


@dataclass(frozen=True, kw_only=True, slots=True)
class SampleConfig:
    checkpoint: str | None = None
    """Step dir, run dir (its newest valid step) or None (the newest run under runs/)."""
    prompts: tuple[str, ...] = ("",)
    length: int | None = None
    """Tokens to generate per prompt. None: what fits in the context after the prompt, at most
    ``DEFAULT_MAX_LENGTH``."""
    steps: int | None = None
    """Denoising steps (MDM). None: the generation length (one token per step)."""
    sampler: Literal["ancestral", "confidence"] = "confidence"
    temperature: float = 1.0
    cfg: float = 0.0
    seed: int = 0
    num_samples: int = 1
    """Samples per prompt."""
    batch_size: int = 16
    device: str = "auto"
    attention: str = "auto"
    stop_at_eos: bool = True
    # Decoding rules (MDM unless noted; mdmctl.sampling.mdm.Decoding, docs/cli.md).
    remasking: str = "low-confidence"
    block_length: int | None = None
    threshold: float | None = None
    factor: float | None = None
    top_k: int | None = None
    """Both objectives."""
    top_p: float | None = None
    """Both objectives."""
    min_length: int = 0
    """Both objectives: eos is not sampled before this many generated tokens."""
    cache: str = "none"
    """MDM KV cache: none (exact), prefix, dual or delayed (approximations; sampling/cache.py)."""
    cache_window: int = 0
    """Dual cache: positions after the block that run fresh at every step with it."""
    suffix_window: int | None = None
    """Block decoding: masked positions after the block that each forward runs (DPad's sliding
    window; an approximation). None: the whole canvas (exact)."""
    compile: bool = False
    """Both objectives: run the model through ``torch.compile`` (``compile_model``)."""
    cuda_graphs: bool = False
    """Both objectives, on CUDA: replay each forward shape from a recorded CUDA graph
    (sampling/graphs.py)."""
    defaults: frozenset[tuple[str, Any]] = frozenset()
    """(field, value) pairs a recipe set, not the user (e.g. ``eval reverse-curse``'s CFG 0.8):
    for an ARM, ``for_objective`` drops a field still at that value silently, and refuses or
    warns about the rest."""

    def __post_init__(self) -> None:
        check_finite(self, "--")
        for name in ("length", "steps", "num_samples", "batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(
                    f"--{name.replace('_', '-')}: must be >= 1, got {getattr(self, name)}"
                )
        if self.temperature < 0:
            raise ConfigError(f"--temperature: must be >= 0, got {self.temperature}")
        if self.cfg < 0:
            raise ConfigError(f"--cfg: must be >= 0, got {self.cfg}")
        if not 0 <= self.seed < 2**63:
            raise ConfigError(f"--seed: must be in [0, 2**63), got {self.seed}")
        if self.sampler not in ("ancestral", "confidence"):
            raise ConfigError(f"--sampler: expected ancestral or confidence, got {self.sampler!r}")
        _check_decoding(self)


def _check_decoding(c: SampleConfig) -> None:
    """Field-and-rule errors for the decoding options (exit 2)."""
    from mdmctl.sampling.mdm import REMASKING

    if c.remasking not in REMASKING:
        raise ConfigError(
            f"--remasking: expected one of {', '.join(REMASKING)}, got {c.remasking!r}"
        )
    for name in ("block_length", "top_k"):
        if getattr(c, name) is not None and getattr(c, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(c, name)}")
    from mdmctl.sampling.cache import CACHE_MODES

    if c.cache not in CACHE_MODES:
        raise ConfigError(f"--cache: expected one of {', '.join(CACHE_MODES)}, got {c.cache!r}")
    if c.cache_window < 0:
        raise ConfigError(f"--cache-window: must be >= 0, got {c.cache_window}")
    if c.cache_window and c.cache != "dual":
        # prefix already recomputes the whole suffix, none the whole canvas
        raise ConfigError(f"--cache-window applies to --cache dual, not --cache {c.cache}")
    if c.suffix_window is not None and c.suffix_window < 0:
        raise ConfigError(f"--suffix-window: must be >= 0, got {c.suffix_window}")
    if c.suffix_window is not None and c.block_length is None:
        raise ConfigError(
            "--suffix-window needs --block-length: with one block nothing follows the block"
        )
    if c.min_length < 0:
        raise ConfigError(f"--min-length: must be >= 0, got {c.min_length}")
    if c.top_p is not None and not 0 < c.top_p <= 1:
        raise ConfigError(f"--top-p: must be in (0, 1], got {c.top_p}")
    if c.threshold is not None and not 0 <= c.threshold <= 1:
        raise ConfigError(f"--threshold: must be in [0, 1], got {c.threshold}")
    if c.factor is not None and c.factor <= 0:
        raise ConfigError(f"--factor: must be > 0, got {c.factor}")
    if c.threshold is not None and c.factor is not None:
        raise ConfigError("--threshold and --factor are two rules for one choice: pass one")
    if c.sampler == "ancestral" and (
        c.threshold is not None or c.factor is not None or c.remasking != "low-confidence"
    ):
        raise ConfigError(
            "--threshold, --factor and --remasking choose what the confidence sampler reveals; "
            "the ancestral sampler reveals at random by construction"
        )


MDM_ONLY = ("block_length", "threshold", "factor", "suffix_window")


def for_objective(c: SampleConfig, objective: str) -> SampleConfig:
    """``c`` as a checkpoint of ``objective`` uses it. An ARM decodes left to right: a recipe's
    CFG default becomes 0; a chosen ``--steps`` or ``--sampler`` is ignored with one warning (they
    only look as if they changed something); MDM-only options that would change the result are
    refused (ConfigError)."""
    if objective != "arm":
        return c
    recipe = {n for n, v in c.defaults if getattr(c, n) == v}  # still the recipe's value
    if "cfg" in recipe:
        c = replace(c, cfg=0.0)
    _check_arm_options(c)
    chosen = {"steps": c.steps is not None, "sampler": c.sampler != "confidence"}
    ignored = [f"--{n}" for n, set_ in chosen.items() if set_ and n not in recipe]
    if ignored:
        verb = "applies" if len(ignored) == 1 else "apply"
        logging.getLogger("mdmctl").warning(
            "%s %s only to MDM checkpoints; ignored for this ARM checkpoint",
            ", ".join(ignored),
            verb,
        )
    return replace(c, steps=None, sampler="confidence")  # what the ARM runs: neither


def _check_arm_options(c: SampleConfig) -> None:
    """An ARM refuses MDM-only decoding options instead of ignoring them."""
    given = [f"--{n.replace('_', '-')}" for n in MDM_ONLY if getattr(c, n) is not None]
    given += ["--cfg"] if c.cfg != 0 else []
    given += ["--remasking"] if c.remasking != "low-confidence" else []
    given += ["--cache"] if c.cache != "none" else []
    given += ["--cache-window"] if c.cache_window else []
    if given:
        verb = "applies" if len(given) == 1 else "apply"
        raise ConfigError(
            f"{', '.join(given)} {verb} to objective 'mdm'; checkpoint objective is 'arm'"
        )


DEFAULT_MAX_LENGTH = 256
"""Cap of the default generation length: a 2048-token context would otherwise mean 2048 tokens
(and as many MDM steps) for a one-line prompt."""


def fit_length(prompt_len: int, seq_len: int, cap: int = DEFAULT_MAX_LENGTH) -> int:
    """The default generation length: the context left after the prompt, at most ``cap``.

    Both objectives need ``prompt_len + length <= seq_len`` (the ARM never feeds its last token
    back; the MDM's canvas is prompt plus generation)."""
    room = seq_len - prompt_len
    if room < 1:
        raise ConfigError(
            f"prompt is {prompt_len} tokens; model context is {seq_len}: no room to generate, "
            "shorten the prompt"
        )
    return min(room, cap)


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


def load_model(checkpoint: str | None, device: str = "auto", attention: str = "auto", log=None):
    """(model in eval mode, tokenizer, tokenizer info, step dir, device) from a checkpoint."""
    from mdmctl import checkpoint as ckpt
    from mdmctl.attention import resolve_backend
    from mdmctl.device import resolve_device
    from mdmctl.errors import CompatibilityError
    from mdmctl.model import Transformer
    from mdmctl.tokenizer import info_from_file

    step_dir = ckpt.resolve_checkpoint(checkpoint, log=log)
    loaded = ckpt.load_checkpoint(step_dir)
    tok, info = info_from_file(step_dir / "tokenizer.json", loaded.model_cfg.objective == "mdm")
    if info.sha256 != loaded.tokenizer_sha256:
        raise CompatibilityError(
            f"{step_dir}: tokenizer.json ({info.sha256[:12]}) is not the tokenizer the weights "
            f"were trained with ({loaded.tokenizer_sha256[:12]})"
        )
    dev = resolve_device(device)
    model = Transformer(loaded.model_cfg, backend=resolve_backend(attention, dev))
    ckpt.load_weights(model, loaded.state_dict, step_dir / "model.safetensors")
    return model.to(dev).eval(), tok, info, step_dir, dev


@dataclass
class Generation:
    ids: list[list[int]]  # generated ids per prompt (eos-truncated when stop_at_eos)
    texts: list[str]
    nfe: int
    seconds: float
    generated_tokens: int  # output tokens produced (before eos truncation), never prompt tokens
    stopped: list[bool]  # an eos was generated before the canvas end


def encode_literal(tok, text: str) -> list[int]:
    """Token ids of user text, special-token strings (e.g. a literal '<|mask|>') kept as text."""
    tok.encode_special_tokens = True
    try:
        return tok.encode(text, add_special_tokens=False).ids
    finally:
        tok.encode_special_tokens = False


_STREAM = 0x9E3779B97F4A7C15  # odd 64-bit constant: distinct, well-spread seeds per row


def row_seed(seed: int, row: int) -> int:
    """The random stream of the request's ``row``-th sequence (row 0's is the seed itself)."""
    return (seed + row * _STREAM) % 2**63


def decoding(cfg: SampleConfig, eos_id: int):
    """The MDM sampler settings of a SampleConfig (its fields of the same names). With
    eos-truncated output a row stops once it has finished (exact for what is returned)."""
    from dataclasses import fields

    from mdmctl.sampling.mdm import Decoding

    same = {f.name: getattr(cfg, f.name) for f in fields(Decoding) if hasattr(cfg, f.name)}
    return Decoding(**same, eos_id=eos_id)


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
    from mdmctl.sampling.arm import sample_arm
    from mdmctl.sampling.cache import CachedMDM
    from mdmctl.sampling.mdm import sample_mdm
    from mdmctl.sampling.select import RowStreams

    mc = model.cfg
    if mc.objective == "arm":
        _check_arm_options(cfg)
    # device may be given as a string by library callers
    check_eval_batch(
        mc, cfg.batch_size, torch.device(device).type, rows_per_item=2 if cfg.cfg else 1
    )
    ids = prompt_ids or [encode_literal(tok, p) if p else [] for p in prompts]
    lengths = [length] * len(ids) if not isinstance(length, list) else length
    lengths = [cfg.length if n is None else n for n in lengths]
    lengths = [
        fit_length(len(i), mc.seq_len) if n is None else n
        for i, n in zip(ids, lengths, strict=True)
    ]
    for i, n in zip(ids, lengths, strict=True):
        # ARM: eos + prompt + n generated, the last never fed back: len(i) + n positions.
        if len(i) + n > mc.seq_len:
            raise ConfigError(
                f"prompt is {len(i)} tokens; model context is {mc.seq_len} "
                f"(gen length {n}): shorten the prompt or --length"
            )
    net = compile_model(model, device) if cfg.compile else model
    if cfg.cuda_graphs:
        net = graphed_model(model, net, device)
    mdm_fn = (
        (lambda x, d: net(x, doc_ids=d))
        if cfg.cache == "none"
        # Under CUDA graphs the delayed cache's widths come in steps of 8: fewer graphs.
        else CachedMDM(net, cfg.cache, cfg.cache_window, mc.mask_id, 8 if cfg.cuda_graphs else 1)
    )
    t0 = time.perf_counter()
    out_ids: list[list[int]] = [[] for _ in ids]
    nfe = done = 0
    # CUDA graphs replay fixed shapes: finished rows stay in their batch.
    rules = replace(decoding(cfg, info.eos_id), keep_batch=cfg.cuda_graphs)
    for rows in _batches(ids, lengths, cfg.batch_size, mc.objective):
        # Each sequence draws from its own stream, seeded by its place in the request: its tokens
        # do not depend on the batch size, its neighbours, or when they finish.
        gen = RowStreams.seeded([row_seed(cfg.seed, r) for r in rows], device)
        chunk = [ids[r] for r in rows]
        n_gen = [lengths[r] for r in rows]
        if mc.objective == "mdm":
            o = sample_mdm(
                mdm_fn,
                chunk,
                length=n_gen,
                steps=[cfg.steps or n for n in n_gen],
                mask_id=mc.mask_id,
                pad_id=info.pad_id,
                generator=gen,
                decoding=rules,
                device=device,
            )
            got, n = o.rows(), o.nfe
        else:
            got, n = sample_arm(
                net,
                chunk,
                length=n_gen,
                eos_id=info.eos_id,
                generator=gen,
                temperature=cfg.temperature,
                device=device,
                stop_at_eos=cfg.stop_at_eos,
                top_k=cfg.top_k,
                top_p=cfg.top_p,
                min_length=cfg.min_length,
                keep_batch=cfg.cuda_graphs,
            )
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
    if cfg.stop_at_eos:
        out_ids = [o[: o.index(info.eos_id)] if info.eos_id in o else o for o in out_ids]
    texts = [tok.decode(o, skip_special_tokens=True) for o in out_ids]
    return Generation(out_ids, texts, nfe, seconds, generated, stopped)


_COMPILE_ERRORS: dict[str, str | None] = {}


def compile_model(model, device) -> Compiled:
    """``model`` through ``torch.compile`` with dynamic shapes, since batches shrink as rows
    finish and MDM windows and ARM caches change length. The first calls pay the compilation (a
    minute or so on a CPU); compiled code is reused for the same model object. A device where
    torch.compile cannot run (no C++ compiler for CPU code, no Triton for CUDA) is a ConfigError,
    found with a one-op probe before any work is done."""
    kind = torch.device(device).type
    if kind not in _COMPILE_ERRORS:
        try:
            torch.compile(torch.add, dynamic=False)(torch.ones(2, device=device), 1)
            _COMPILE_ERRORS[kind] = None
        except Exception as e:  # a missing compiler shows as one of several exception types
            _COMPILE_ERRORS[kind] = (
                f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
            )
    if _COMPILE_ERRORS[kind] is not None:
        raise ConfigError(f"--compile: torch.compile cannot run on {kind}: {_COMPILE_ERRORS[kind]}")
    return Compiled(model)


class Compiled:
    """A compiled model that otherwise behaves as the model (attributes pass through).

    Traced without duck shaping: by default equal sizes share one symbol, so a batch of 64 rows
    was tied to the head dimension (64) and every other batch size recompiled. A sampler then
    needs a few graphs per model (MDM: whole canvas, window, a window of one row; ARM: prefill
    and decode, with and without left padding, and of one row), and dynamo's default limit of 8
    per function counts every model's graphs together (the MDM and the ARM share
    ``Transformer.forward``): past it the model would silently run uncompiled, hence 64."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.fn = model, torch.compile(model, dynamic=True)

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        import torch._dynamo.config as dynamo_config
        import torch.fx.experimental._config as fx_config

        with fx_config.patch(use_duck_shape=False), dynamo_config.patch(recompile_limit=64):
            return self.fn(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.model, name)


def graphed_model(model, net, device):
    """``net`` (the model, or it compiled) replayed from CUDA graphs (sampling/graphs.py). The
    graphs are kept on the model, so later calls (bench repeats, lm-eval batches) replay the
    shapes earlier ones recorded."""
    from mdmctl.sampling.graphs import GraphedModel

    if torch.device(device).type != "cuda":
        raise ConfigError(
            f"--cuda-graphs needs a CUDA device; this run is on {torch.device(device).type}"
        )
    kept = model.__dict__.setdefault("_cuda_graphs", {})
    if isinstance(net, Compiled) not in kept:
        kept[isinstance(net, Compiled)] = GraphedModel(net)
    return kept[isinstance(net, Compiled)]


def _batches(ids: list[list[int]], lengths: list[int], size: int, objective: str):
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
    model, tok, info, step_dir, device = load_model(cfg.checkpoint, cfg.device, cfg.attention, log)
    cfg = for_objective(cfg, model.cfg.objective)
    prompts = [p for p in cfg.prompts for _ in range(cfg.num_samples)]
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
