"""The ``mdmctl`` command line: parse, validate, call one library function, render.

One module per command group, each a thin layer over the library:

- ``common``: the Typer ``app`` and ``eval_app``, shared option enums, ``cli_errors``, ``main``
- ``train_report``: the training progress bar and summary (``pretrain`` and ``finetune``)
- ``tokenize``, ``pretrain``, ``finetune``, ``sample``: the top-level commands
- ``eval_ppl``, ``eval_gsm8k``, ``eval_reverse_curse``, ``eval_zero_shot`` (one command per
  benchmark, and ``all``), ``eval_lm_eval``: the ``eval`` subcommands
- ``scaling``: ``scaling plan`` and ``scaling fit`` (IsoFLOP sweeps)
- ``runs``: ``mdmctl runs`` (list the training runs in a folder)
- ``interop``: ``mdmctl export`` (Hugging Face layout) and ``mdmctl import`` (HF or SMDM weights)
- ``bench``: ``mdmctl bench sample`` (sampler speed and quality against the naive sampler and the ARM)
- ``progress``: progress bars on a terminal, periodic lines in a log file

Heavy imports (torch, tokenizers, datasets) happen inside command bodies so ``--help`` stays fast.
User errors become one ``error: ...`` line on stderr and a typed exit code (docs/cli.md).
"""

from __future__ import annotations

from mdmctl.cli.common import app, eval_app, main
from mdmctl.cli.train_report import render_train_summary

# Importing a command module registers its commands; this order is the order of `--help`.
# isort: off
from mdmctl.cli import tokenize, pretrain, finetune, sample  # noqa: F401
from mdmctl.cli import eval_ppl, eval_gsm8k, eval_reverse_curse  # noqa: F401
from mdmctl.cli import eval_zero_shot, eval_lm_eval  # noqa: F401
from mdmctl.cli import scaling, runs, interop, bench  # noqa: F401
# isort: on

__all__ = ["render_train_summary", "app", "eval_app", "main"]
