"""What every ``mdmctl`` command module shares: the Typer apps, error handling, logging.

Heavy imports (torch, tokenizers, datasets) happen inside command bodies so ``--help`` stays fast.
User errors become one ``error: ...`` line on stderr and a typed exit code (docs/cli.md).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

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

_debug = False


def launch_rank() -> int:
    """This process's rank under torchrun (0 otherwise); read from the environment, no torch."""
    return int(os.environ.get("RANK", "0"))


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


def log_info(msg: str) -> None:
    from mdmctl.log import info

    info(msg)


def print_json(value: Any, indent: int | None = 2) -> None:
    """A command's result as JSON on stdout (``--json``)."""
    import json

    print(json.dumps(value, indent=indent, default=str))


def main() -> None:
    try:
        app()
    except MdmctlError as e:  # raised outside a command body (should not happen)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
