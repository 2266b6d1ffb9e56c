"""How an MDM's canvas is revealed (docs/method.md §5): one ``Decoding`` definition, torch-free.

``SampleConfig`` holds one; the samplers (``mdm.py``, and ``arm.py`` for the options both
objectives share) read it; the command line builds its decoding options from its fields, whose
help lives here (``config.option``), so an option, its default and its help exist once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from mdmctl.config import option

Sampler = Literal["ancestral", "confidence"]
SAMPLERS: tuple[str, ...] = get_args(Sampler)
Remasking = Literal["low-confidence", "margin", "entropy", "random"]
REMASKING: tuple[str, ...] = get_args(Remasking)
Schedule = Literal["smdm", "llada", "rounded", "dream"]
SCHEDULES: tuple[str, ...] = get_args(Schedule)
FactorRule = Literal["fast-dllm", "leading"]
FACTOR_RULES: tuple[str, ...] = get_args(FactorRule)
CacheMode = Literal["none", "prefix", "dual", "delayed"]
CACHE_MODES: tuple[str, ...] = get_args(CacheMode)


@dataclass(frozen=True, kw_only=True)
class Decoding:
    """How the canvas is revealed; the defaults are the plain samplers of docs/method.md §5.1."""

    sampler: Sampler = option(
        "confidence",
        "MDM reveal order: confidence (the most confident tokens first) or ancestral (the true "
        "reverse process).",
    )
    temperature: float = option(0.0, "Sampling temperature; 0 = argmax.", min=0)
    cfg: float = option(0.0, "Unsupervised classifier-free guidance scale (MDM).", min=0)
    remasking: Remasking = option(
        "low-confidence",
        "MDM confidence sampler: which masked tokens are revealed first. low-confidence: the "
        "chosen token's probability (LLaDA low_confidence, Dream maskgit_plus); margin: top-1 "
        "minus top-2 probability (Dream topk_margin); entropy: the lowest entropy; random (LLaDA "
        "random).",
    )
    schedule: Schedule | None = option(
        None,
        "MDM confidence sampler: how many tokens each step reveals. smdm (SMDM's diff_sample): "
        "int(n * (1 - s/t)) of the n still masked on its grid from 1 to 1e-5, all the rest at "
        "the last step (10 tokens in 4 steps: 2,2,2,4); llada (LLaDA's generate): the block's "
        "tokens split evenly over its steps, the remainder to the first (3,3,2,2); rounded: "
        "round(size * s) stay masked after each step (2,3,3,2; mdmctl's rule before these); "
        "dream (Dream's diffusion_generate): smdm's rule on Dream's grid from 1 to 1e-3.",
        default_help="smdm without --block-length, llada with it",
    )
    block_length: int | None = option(
        None,
        "MDM semi-autoregressive decoding (LLaDA block_length): blocks of this many generated "
        "tokens, left to right, the steps spread evenly over them.",
        default_help="one block",
        min=1,
    )
    threshold: float | None = option(
        None,
        "MDM parallel decoding (Fast-dLLM threshold): each step reveals every masked token of "
        "the block whose probability exceeds this, at least one; the model, not --steps, sets "
        "the step count.",
        default_help="off",
        min=0,
        max=1,
    )
    factor: float | None = option(
        None,
        "MDM parallel decoding, Fast-dLLM's factor rule: the n-th most confident token is "
        "revealed while its probability is at least 1 - factor / (n + 1).",
        default_help="off",
        min=0,
    )
    factor_rule: FactorRule = option(
        "fast-dllm",
        "With --factor: fast-dllm reveals the leading run of tokens that pass, and all of them "
        "when only the last fails (Fast-dLLM's get_transfer_index_dynamic as written); leading "
        "reveals the leading run only (one more forward per block, typically).",
    )
    top_k: int | None = option(
        None, "Sample among the k most likely tokens.", min=1, default_help="all"
    )  # both objectives
    top_p: float | None = option(
        None,
        "Nucleus sampling: among the fewest tokens whose probability reaches p.",
        default_help="1 (all)",
        min=0,
        max=1,
    )  # both objectives
    min_length: int = option(
        0, "No end-of-text before this many generated tokens.", min=0
    )  # both objectives
    suffix_window: int | None = option(
        None,
        "MDM block decoding (DPad's sliding window): each forward runs the prompt, the blocks "
        "so far and only this many masked positions after the current block; the rest of the "
        "canvas waits for its block. An approximation: less work where the canvas is mostly "
        "end-of-text to be (docs/benchmarks.md).",
        default_help="the whole canvas",
        min=0,
    )
    stop_at_eos: bool = option(False, "Truncate at end-of-text.")
    """A row is finished once its first eos is revealed with nothing masked before it, and its
    output is cut there; the batch stops once every row has finished (``mdm.py``)."""
    eos_id: int = -1
    """For ``min_length`` and ``stop_at_eos`` (the checkpoint's tokenizer sets it)."""
    keep_batch: bool = False
    """Finished rows stay in the batch even when decoding is deterministic: the forwards keep
    their shapes, which CUDA graphs replay (sampling/graphs.py). The output is the same."""

    @property
    def parallel(self) -> bool:
        return self.threshold is not None or self.factor is not None

    @property
    def reveal_schedule(self) -> Schedule:
        """The schedule in force: the one chosen, else SMDM's on one block and LLaDA's on
        blocks (the references the two ways of decoding come from)."""
        return self.schedule or ("llada" if self.block_length else "smdm")
