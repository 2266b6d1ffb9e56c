"""What every ``mdmctl`` command module shares: the Typer apps, option enums, error handling.

Heavy imports (torch, tokenizers, datasets) happen inside command bodies so ``--help`` stays fast.
User errors become one ``error: ...`` line on stderr and a typed exit code (docs/cli.md).
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Any

import typer

from mdmctl.errors import MdmctlError

app = typer.Typer(
    name="mdmctl",
    help="Masked diffusion language models: tokenize, pretrain, sample, evaluate.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
eval_app = typer.Typer(help="Evaluate a checkpoint.", no_args_is_help=True)
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


def launch_rank() -> int:
    """This process's rank under torchrun (0 otherwise); read from the environment, no torch."""
    import os

    return int(os.environ.get("RANK", "0"))


class SamplerName(str, Enum):
    ancestral = "ancestral"
    confidence = "confidence"


@contextlib.contextmanager
def cli_errors() -> Iterator[None]:
    """MdmctlError -> 'error: ...' + its exit code; Ctrl-C -> 130. Tracebacks only with --debug."""
    from mdmctl.log import console

    try:
        yield
    except MdmctlError as e:
        if _debug:
            raise
        console.print(f"[bold red]error:[/] {e}", markup=True, highlight=False, soft_wrap=True)
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


def _finite(value: float | None) -> float | None:
    """Typer callback for float options: ``inf`` and ``nan`` parse as floats and pass Typer's
    ``min=`` checks (``nan < 0`` is false), then fail far from the option (``--lr inf``)."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"must be a finite number, got {value}")
    return value


def _log(msg: str) -> None:
    from mdmctl.log import info

    info(msg)


def _tokenize_with_progress(cfg: Any) -> Any:
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from mdmctl.data.shards import tokenize_corpus
    from mdmctl.log import console

    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task(f"tokenizing {cfg.corpus.description}")

        def progress(docs: int, tokens: int) -> None:
            bar.update(task, description=f"tokenizing: {docs:,} documents, {tokens:,} tokens")

        return tokenize_corpus(cfg, progress=progress, log=_log)


def main() -> None:
    try:
        app()
    except MdmctlError as e:  # raised outside a command body (should not happen)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
