"""``SampleConfig``: what to generate, from which checkpoint, with which ``Decoding``; and how an
ARM checkpoint takes a config written for an MDM (``for_objective``). Torch-free.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields, replace
from typing import Any, Literal, get_args

from mdmctl.config import check_finite, option
from mdmctl.errors import ConfigError
from mdmctl.sampling.decoding import (
    CACHE_MODES,
    FACTOR_RULES,
    REMASKING,
    SAMPLERS,
    SCHEDULES,
    CacheMode,
    Decoding,
)

SAMPLE_DECODING = Decoding(temperature=1.0, stop_at_eos=True)
"""``mdmctl sample``'s decoding: sampled at temperature 1, each output cut at its first eos (the
samplers' own defaults are the deterministic plain sampler)."""

DECODING_FIELDS = frozenset(f.name for f in fields(Decoding))

DEFAULT_MAX_LENGTH = 256
"""Cap of the default generation length: a 2048-token context would otherwise mean 2048 tokens
(and as many MDM steps) for a one-line prompt."""


Preset = Literal["llada", "dream"]
PRESET_NAMES: tuple[str, ...] = get_args(Preset)
PRESETS: dict[str, dict[str, Any]] = {
    # LLaDA's generate.py, as its main() calls generate(): gen_length 128, steps 128,
    # block_length 32, temperature 0, cfg_scale 0, remasking low_confidence; its count rule.
    "llada": dict(length=128, steps=128, block_length=32, temperature=0.0, cfg=0.0,
                  sampler="confidence", remasking="low-confidence", schedule="llada"),
    # Dream's README, its diffusion_generate call: max_new_tokens 512, steps 512, temperature
    # 0.2, top_p 0.95, alg entropy, alg_temp 0 (confidence order, not sampled); its count rule.
    "dream": dict(length=512, steps=512, temperature=0.2, top_p=0.95, sampler="confidence",
                  remasking="entropy", schedule="dream"),
}  # fmt: skip
"""Each family's sampling defaults as its project ships them (``--preset``): fields of
``SampleConfig`` and ``Decoding`` by name."""


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
    seed: int = 0
    num_samples: int = 1
    """Samples per prompt."""
    batch_size: int = option(16, "Sequences generated together in one batch.", min=1)
    device: str = "auto"
    attention: str = "auto"
    decoding: Decoding = SAMPLE_DECODING
    """How the canvas is revealed (``Decoding``); ``eos_id`` comes from the checkpoint."""
    cache: CacheMode = option(
        "none",
        "MDM KV cache: none (exact: the whole canvas every step); for block decoding "
        "(Fast-dLLM) prefix (the positions before the block reuse keys and values from the "
        "block's first step) or dual (the positions after it too); delayed (dKV-Cache, blocks "
        "or not: only the positions masked at the previous step run, decided tokens reuse "
        "theirs). All but none are approximations: a bidirectional model's keys change with "
        "every revealed token.",
    )
    cache_window: int = option(
        0,
        "With --cache dual: the positions right after the block also run at every step (their "
        "keys and values fresh), this many of them; only the suffix beyond uses kept ones. On "
        "one reverse-curse MDM it recovered most of what the dual cache lost at a fraction of "
        "the prefix cache's cost (docs/benchmarks.md).",
        default_help="0 (Fast-dLLM's dual cache)",
        min=0,
    )
    dtype: Literal["fp32", "bf16"] = option(
        "fp32",
        "The weights' type while the model runs: fp32, or bf16 (half the memory: a 7-8B LLaDA "
        "or Dream in 15-16 GiB; logits stay fp32). On a CPU bf16 is slower.",
    )
    chat: bool = option(
        False,
        "Wrap each prompt in the checkpoint's chat template as one user turn, with the "
        "assistant's turn opened (an imported instruct model: its tokenizer_config.json's "
        "chat_template, as transformers' apply_chat_template renders it). The prompt's own "
        "text is encoded literally; the template's special tokens as special tokens.",
        default_help="off",
    )
    compile: bool = option(
        False,
        "Run the model through torch.compile (both objectives; dynamic shapes). The first "
        "batches pay the compilation, about a minute on a CPU.",
        default_help="off",
    )
    cuda_graphs: bool = option(
        False,
        "On a CUDA device (both objectives, with or without --compile): record each forward "
        "shape once as a CUDA graph and replay it, one launch instead of hundreds per step.",
        default_help="off",
    )
    preset: Preset | None = option(
        None,
        "Sampling defaults of an MDM family as its project ships them; options given as well "
        "override them. llada (LLaDA's generate.py): --length 128 --steps 128 --block-length "
        "32 --temperature 0 --remasking low-confidence --schedule llada. dream (Dream's "
        "diffusion_generate example): --length 512 --steps 512 --temperature 0.2 --top-p 0.95 "
        "--remasking entropy --schedule dream.",
        default_help="none (mdmctl's own defaults)",
    )
    defaults: frozenset[tuple[str, Any]] = frozenset()
    """(field, value) pairs a recipe set, not the user (e.g. ``eval reverse-curse``'s CFG 0.8):
    for an ARM, ``for_objective`` drops a field still at that value silently, and refuses or
    warns about the rest."""

    @classmethod
    def create(cls, **values: Any) -> SampleConfig:
        """A config from flat fields: ``Decoding``'s (``cfg=1.5``, ``threshold=0.9``) go into
        ``decoding``, over ``SAMPLE_DECODING``. With ``preset``, its values fill the fields
        not given."""
        preset = values.get("preset")
        if preset is not None:
            if preset not in PRESETS:
                raise ConfigError(
                    f"--preset: expected one of {', '.join(PRESET_NAMES)}, got {preset!r}"
                )
            values = {**PRESETS[preset], **values}
        return cls().evolve(**values)

    def evolve(self, **values: Any) -> SampleConfig:
        """``dataclasses.replace`` that also takes ``Decoding``'s fields by name."""
        rules = {k: values.pop(k) for k in list(values) if k in DECODING_FIELDS}
        decoding = values.pop("decoding", self.decoding)
        return replace(self, decoding=replace(decoding, **rules), **values)

    def get(self, name: str) -> Any:
        """A field of the config or of its ``Decoding``, by name."""
        return getattr(self.decoding if name in DECODING_FIELDS else self, name)

    def __post_init__(self) -> None:
        check_finite(self, "--")
        check_finite(self.decoding, "--")
        for name in ("length", "steps", "num_samples", "batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(
                    f"--{name.replace('_', '-')}: must be >= 1, got {getattr(self, name)}"
                )
        d = self.decoding
        if d.temperature < 0:
            raise ConfigError(f"--temperature: must be >= 0, got {d.temperature}")
        if d.cfg < 0:
            raise ConfigError(f"--cfg: must be >= 0, got {d.cfg}")
        if not 0 <= self.seed < 2**63:
            raise ConfigError(f"--seed: must be in [0, 2**63), got {self.seed}")
        # In this order, so that of several wrong options the same one is named as before.
        _check_choices(d)
        _check_cache(self)
        _check_rules(d)


def _check_choices(d: Decoding) -> None:
    """Field-and-rule errors for the decoding options (exit 2): choices and counts."""
    if d.sampler not in SAMPLERS:
        raise ConfigError(f"--sampler: expected ancestral or confidence, got {d.sampler!r}")
    if d.remasking not in REMASKING:
        raise ConfigError(
            f"--remasking: expected one of {', '.join(REMASKING)}, got {d.remasking!r}"
        )
    if d.schedule is not None and d.schedule not in SCHEDULES:
        raise ConfigError(f"--schedule: expected one of {', '.join(SCHEDULES)}, got {d.schedule!r}")
    if d.factor_rule not in FACTOR_RULES:
        raise ConfigError(
            f"--factor-rule: expected one of {', '.join(FACTOR_RULES)}, got {d.factor_rule!r}"
        )
    for name in ("block_length", "top_k"):
        if getattr(d, name) is not None and getattr(d, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(d, name)}")


def _check_rules(d: Decoding) -> None:
    """Field-and-rule errors for the decoding options (exit 2): values and combinations."""
    if d.suffix_window is not None and d.suffix_window < 0:
        raise ConfigError(f"--suffix-window: must be >= 0, got {d.suffix_window}")
    if d.suffix_window is not None and d.block_length is None:
        raise ConfigError(
            "--suffix-window needs --block-length: with one block nothing follows the block"
        )
    if d.min_length < 0:
        raise ConfigError(f"--min-length: must be >= 0, got {d.min_length}")
    if d.top_p is not None and not 0 < d.top_p <= 1:
        raise ConfigError(f"--top-p: must be in (0, 1], got {d.top_p}")
    if d.threshold is not None and not 0 <= d.threshold <= 1:
        raise ConfigError(f"--threshold: must be in [0, 1], got {d.threshold}")
    if d.factor is not None and d.factor <= 0:
        raise ConfigError(f"--factor: must be > 0, got {d.factor}")
    if d.threshold is not None and d.factor is not None:
        raise ConfigError("--threshold and --factor are two rules for one choice: pass one")
    if d.sampler == "ancestral" and (
        d.parallel or d.remasking != "low-confidence" or d.schedule is not None
    ):
        raise ConfigError(
            "--threshold, --factor, --remasking and --schedule choose what the confidence "
            "sampler reveals; the ancestral sampler reveals at random by construction"
        )
    if d.parallel and d.schedule is not None:
        raise ConfigError(
            "--schedule sets how many tokens a step reveals; with --threshold or --factor the "
            "model's confidence does: pass one"
        )
    if d.factor_rule != "fast-dllm" and d.factor is None:
        raise ConfigError("--factor-rule applies with --factor")


def _check_cache(c: SampleConfig) -> None:
    if c.cache not in CACHE_MODES:
        raise ConfigError(f"--cache: expected one of {', '.join(CACHE_MODES)}, got {c.cache!r}")
    if c.cache_window < 0:
        raise ConfigError(f"--cache-window: must be >= 0, got {c.cache_window}")
    if c.cache_window and c.cache != "dual":
        # prefix already recomputes the whole suffix, none the whole canvas
        raise ConfigError(f"--cache-window applies to --cache dual, not --cache {c.cache}")


MDM_ONLY = ("schedule", "block_length", "threshold", "factor", "suffix_window")


def for_objective(c: SampleConfig, objective: str) -> SampleConfig:
    """``c`` as a checkpoint of ``objective`` uses it. An ARM decodes left to right: a recipe's
    CFG default becomes 0; a chosen ``--steps`` or ``--sampler`` is ignored with one warning (they
    only look as if they changed something); MDM-only options that would change the result are
    refused (ConfigError)."""
    if objective != "arm":
        return c
    recipe = {n for n, v in c.defaults if c.get(n) == v}  # still the recipe's value
    if "cfg" in recipe:
        c = c.evolve(cfg=0.0)
    check_arm_options(c)
    chosen = {"steps": c.steps is not None, "sampler": c.decoding.sampler != "confidence"}
    ignored = [f"--{n}" for n, set_ in chosen.items() if set_ and n not in recipe]
    if ignored:
        verb = "applies" if len(ignored) == 1 else "apply"
        logging.getLogger("mdmctl").warning(
            "%s %s only to MDM checkpoints; ignored for this ARM checkpoint",
            ", ".join(ignored),
            verb,
        )
    return c.evolve(steps=None, sampler="confidence")  # what the ARM runs: neither


def check_arm_options(c: SampleConfig) -> None:
    """An ARM refuses MDM-only decoding options instead of ignoring them."""
    d = c.decoding
    given = [f"--{n.replace('_', '-')}" for n in MDM_ONLY if getattr(d, n) is not None]
    given += ["--cfg"] if d.cfg != 0 else []
    given += ["--remasking"] if d.remasking != "low-confidence" else []
    given += ["--cache"] if c.cache != "none" else []
    given += ["--cache-window"] if c.cache_window else []
    if given:
        verb = "applies" if len(given) == 1 else "apply"
        raise ConfigError(
            f"{', '.join(given)} {verb} to objective 'mdm'; checkpoint objective is 'arm'"
        )


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
