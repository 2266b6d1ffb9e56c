"""What every ``mdmctl`` command module shares: the Typer apps, option enums, error handling.

Heavy imports (torch, tokenizers, datasets) happen inside command bodies so ``--help`` stays fast.
User errors become one ``error: ...`` line on stderr and a typed exit code (docs/cli.md).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import sys
from collections.abc import Callable, Iterator
from enum import Enum
from pathlib import Path
from typing import Any, get_type_hints

import typer
from typer.core import TyperGroup

from mdmctl.errors import MdmctlError


def canonical_name(name: str) -> str:
    """Eval subcommand, task and split names: '-' and '_' are one (arc-easy = arc_easy)."""
    return name.replace("-", "_")


class EvalGroup(TyperGroup):
    """``mdmctl eval``: a subcommand is found under either spelling (``arc-easy``, ``arc_easy``;
    ``lm_eval``, ``lm-eval``); ``--help`` lists only the registered name."""

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is None:
            key = canonical_name(cmd_name)
            cmd = next((c for n, c in self.commands.items() if canonical_name(n) == key), None)
        return cmd

    def resolve_command(self, ctx: Any, args: list[str]) -> tuple[str | None, Any, list[str]]:
        name, cmd, rest = super().resolve_command(ctx, args)
        # Usage lines and errors name the registered spelling.
        return (cmd.name if cmd is not None else name), cmd, rest


app = typer.Typer(
    name="mdmctl",
    help="Masked diffusion language models: tokenize, pretrain, sample, evaluate.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
    rich_markup_mode=None,
)
eval_app = typer.Typer(
    cls=EvalGroup,
    help="Evaluate a checkpoint. In subcommand names and in task and split lists, '-' and '_' "
    "are interchangeable (arc-easy = arc_easy, reverse_curse = reverse-curse, lm-eval --tasks "
    "lambada-openai = lambada_openai).",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(eval_app, name="eval")

DEFAULT_DATA = Path("data/builtin")
_debug = False


class Objective(str, Enum):
    mdm = "mdm"
    arm = "arm"


class Attention(str, Enum):
    auto = "auto"
    xformers = "xformers"
    sdpa = "sdpa"


class Parallel(str, Enum):
    auto = "auto"
    none = "none"
    ddp = "ddp"
    fsdp = "fsdp"


PARALLEL_HELP = (
    "Multi-process training under torchrun: ddp, fsdp (FSDP2) or none; auto is none for one "
    "process, ddp for more (docs/distributed.md)."
)
AC_HELP = "Recompute each block's activations in backward: less memory, one more forward."

# Help of the options several commands share (verified against the library: runtime.resolve_device,
# runtime.resolve_dtype, attention.resolve_backend, sampling/mdm.py, train._select_resume).
CHECKPOINT_HELP = (
    "Step dir, or run dir (its newest valid checkpoint). Default: the newest run under runs/."
)
DEVICE_HELP = "auto (cuda if available, else cpu), cpu, cuda or cuda:N."
DTYPE_HELP = "auto (bf16 on CUDA, fp32 on CPU), fp32 or bf16 (CUDA only)."
ATTENTION_HELP = "Attention kernel; auto: xformers where it can run, else PyTorch SDPA."
SAMPLER_HELP = (
    "MDM reveal order: confidence (the most confident tokens first) or ancestral (the true "
    "reverse process)."
)
GEN_BATCH_HELP = "Sequences generated together in one batch."
RESUME_HELP = "auto (continue the run in --out if any), never, or a checkpoint path."
OVERWRITE_HELP = "Delete an existing run in --out first."
WARMUP_HELP = (
    "Linear warmup, then cosine decay to 0.1·lr. Default: 1% of the steps, at least "
    "min(100, steps / 10)."
)


def device_option() -> Any:
    return typer.Option("auto", "--device", help=DEVICE_HELP)


def dtype_option() -> Any:
    return typer.Option("auto", "--dtype", help=DTYPE_HELP)


def attention_option() -> Any:
    return typer.Option(Attention.auto, "--attention", help=ATTENTION_HELP)


def seed_option(help: str = "Random seed.") -> Any:
    return typer.Option(0, "--seed", help=help)


def json_option(help: str) -> Any:
    return typer.Option(False, "--json", help=help)


def checkpoint_option(help: str = CHECKPOINT_HELP) -> Any:
    return typer.Option(None, "--checkpoint", help=help)


def launch_rank() -> int:
    """This process's rank under torchrun (0 otherwise); read from the environment, no torch."""
    import os

    return int(os.environ.get("RANK", "0"))


class SamplerName(str, Enum):
    ancestral = "ancestral"
    confidence = "confidence"


class CacheName(str, Enum):
    none = "none"
    prefix = "prefix"
    dual = "dual"
    delayed = "delayed"


class RemaskingName(str, Enum):
    low_confidence = "low-confidence"
    margin = "margin"
    entropy = "entropy"
    random = "random"


def decoding_options() -> dict[str, Any]:
    """The decoding-rule options shared by ``sample``, ``eval gsm8k`` and ``eval reverse-curse``
    (mdmctl.sampling.mdm.Decoding, and ``--compile``), by parameter name: fresh option objects
    per command."""
    return {
        "remasking": typer.Option(
            RemaskingName.low_confidence,
            "--remasking",
            help="MDM confidence sampler: which masked tokens are revealed first. "
            "low-confidence: the chosen token's probability (LLaDA low_confidence, Dream "
            "maskgit_plus); margin: top-1 minus top-2 probability (Dream topk_margin); entropy: "
            "the lowest entropy; random (LLaDA random).",
        ),
        "block_length": typer.Option(
            None,
            "--block-length",
            min=1,
            help="MDM semi-autoregressive decoding (LLaDA block_length): blocks of this many "
            "generated tokens, left to right, the steps spread evenly over them. Default: one "
            "block.",
        ),
        "threshold": typer.Option(
            None,
            "--threshold",
            min=0,
            max=1,
            help="MDM parallel decoding (Fast-dLLM threshold): each step reveals every masked "
            "token of the block whose probability exceeds this, at least one; the model, not "
            "--steps, sets the step count. Default: off.",
        ),
        "factor": typer.Option(
            None,
            "--factor",
            min=0,
            help="MDM parallel decoding, Fast-dLLM's factor rule: the n-th most confident token "
            "is revealed while its probability is at least 1 - factor / (n + 1). Default: off.",
        ),
        "top_k": typer.Option(
            None, "--top-k", min=1, help="Sample among the k most likely tokens. Default: all."
        ),
        "top_p": typer.Option(
            None,
            "--top-p",
            min=0,
            max=1,
            help="Nucleus sampling: among the fewest tokens whose probability reaches p. "
            "Default: 1 (all).",
        ),
        "min_length": typer.Option(
            0, "--min-length", min=0, help="No end-of-text before this many generated tokens."
        ),
        "cache": typer.Option(
            CacheName.none,
            "--cache",
            help="MDM KV cache: none (exact: the whole canvas every step); for block decoding "
            "(Fast-dLLM) prefix (the positions before the block reuse keys and values from the "
            "block's first step) or dual (the positions after it too); delayed (dKV-Cache, "
            "blocks or not: only the positions masked at the previous step run, decided tokens "
            "reuse theirs). All but none are approximations: a bidirectional model's keys "
            "change with every revealed token.",
        ),
        "cache_window": typer.Option(
            0,
            "--cache-window",
            min=0,
            help="With --cache dual: the positions right after the block also run at every "
            "step (their keys and values fresh), this many of them; only the suffix beyond "
            "uses kept ones. On one reverse-curse MDM it recovered most of what the dual cache "
            "lost at a fraction of the prefix cache's cost (docs/benchmarks.md). Default: 0 (Fast-dLLM's dual cache).",
        ),
        "suffix_window": typer.Option(
            None,
            "--suffix-window",
            min=0,
            help="MDM block decoding (DPad's sliding window): each forward runs the prompt, the "
            "blocks so far and only this many masked positions after the current block; the "
            "rest of the canvas waits for its block. An approximation: less work where the "
            "canvas is mostly end-of-text to be (docs/benchmarks.md). Default: the whole canvas.",
        ),
        "compile": typer.Option(
            False,
            "--compile",
            help="Run the model through torch.compile (both objectives; dynamic shapes). The "
            "first batches pay the compilation, about a minute on a CPU. Default: off.",
        ),
        "cuda_graphs": typer.Option(
            False,
            "--cuda-graphs",
            help="On a CUDA device (both objectives, with or without --compile): record each "
            "forward shape once as a CUDA graph and replay it, one launch instead of hundreds "
            "per step. Default: off.",
        ),
    }


DECODING_TYPES: dict[str, Any] = {
    "remasking": RemaskingName,
    "block_length": int | None,
    "threshold": float | None,
    "factor": float | None,
    "top_k": int | None,
    "top_p": float | None,
    "min_length": int,
    "cache": CacheName,
    "cache_window": int,
    "suffix_window": int | None,
    "compile": bool,
    "cuda_graphs": bool,
}


def with_decoding_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give ``command`` the shared decoding options in place of its ``decoding`` parameter,
    which then receives them as SampleConfig fields: one definition for every generating
    command, and Typer still sees plain parameters (so --help and the flag tests see them)."""
    hints = {k: v for k, v in get_type_hints(command).items() if k != "decoding"}
    options = decoding_options()
    params: list[inspect.Parameter] = []
    for p in inspect.signature(command, eval_str=True).parameters.values():
        params += [p] if p.name != "decoding" else [
            inspect.Parameter(n, p.POSITIONAL_OR_KEYWORD, default=o, annotation=DECODING_TYPES[n])
            for n, o in options.items()
        ]  # fmt: skip

    @functools.wraps(command)
    def run(**kwargs: Any) -> None:
        chosen = {n: kwargs.pop(n) for n in options}
        enums = {n: v.value for n, v in chosen.items() if isinstance(v, Enum)}
        command(decoding={**chosen, **enums}, **kwargs)

    run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    run.__annotations__ = {**hints, **DECODING_TYPES}
    return run


@contextlib.contextmanager
def cli_errors() -> Iterator[None]:
    """MdmctlError -> 'error: ...' + its exit code; Ctrl-C -> 130. Tracebacks only with --debug."""
    from rich.markup import escape

    from mdmctl.log import console

    try:
        yield
    except MdmctlError as e:
        if _debug:
            raise
        # escape: a message may hold square brackets ("pip install 'mdmctl[eval]'", a TOML
        # [section]) that rich would take for markup and drop.
        console.print(
            f"[bold red]error:[/] {escape(str(e))}", markup=True, highlight=False, soft_wrap=True
        )
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        console.print("interrupted")
        raise typer.Exit(130) from None


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="More logging."),
) -> None:
    global _debug
    _debug = debug
    from mdmctl.log import setup_logging

    setup_logging(verbose)


def finite_option(value: float | None) -> float | None:
    """Typer callback for float options: ``inf`` and ``nan`` parse as floats and pass Typer's
    ``min=`` checks (``nan < 0`` is false), then fail far from the option (``--lr inf``)."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"must be a finite number, got {value}")
    return value


def recipe_defaults(ctx: typer.Context, **values: Any) -> frozenset[tuple[str, Any]]:
    """The (option, value) pairs of ``values`` the user left at their defaults
    (``SampleConfig.defaults``: a recipe's MDM settings, which an ARM checkpoint drops
    silently)."""
    # By name: newer Typer releases carry their own copy of click and of its enum.
    left = ("DEFAULT", "DEFAULT_MAP")
    return frozenset((n, v) for n, v in values.items() if ctx.get_parameter_source(n).name in left)


def log_info(msg: str) -> None:
    from mdmctl.log import info

    info(msg)


def tokenize_with_progress(cfg: Any) -> Any:
    from mdmctl.data.shards import tokenize_corpus
    from mdmctl.progress import ProgressReporter

    with ProgressReporter(f"tokenizing {cfg.corpus.description}") as bar:

        def progress(docs: int, tokens: int) -> None:
            bar.update(docs, status=f"documents, {tokens:,} tokens")

        return tokenize_corpus(cfg, progress=progress, log=log_info)


def main() -> None:
    try:
        app()
    except MdmctlError as e:  # raised outside a command body (should not happen)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
