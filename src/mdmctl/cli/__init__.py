"""The ``mdmctl`` command line: parse, validate, call one library function, render.

One module per command group, each a thin layer over the library:

- ``common``: the Typer ``app`` and ``eval_app``, ``cli_errors``, ``main``
- ``options``: every option, defined once (from the config dataclasses' fields), in the groups
  commands share, and the ``command`` decorator that gives a command its options
- ``data``: ``tokenize``; ``train``: ``pretrain``, ``finetune``, ``runs`` (``train_report``: their
  progress and summary); ``sample``
- ``eval_ppl``, ``eval_gsm8k``, ``eval_reverse_curse``, ``eval_zero_shot`` (one command per
  benchmark, and ``all``), ``eval_lm_eval``: the ``eval`` subcommands
- ``scaling``: ``scaling plan`` and ``scaling fit`` (IsoFLOP sweeps)
- ``interop``: ``export`` (Hugging Face layout) and ``import`` (HF or SMDM weights)
- ``bench``: ``bench sample`` (sampler speed and quality against the naive sampler and the ARM)

Heavy imports (torch, tokenizers, datasets) happen inside command bodies so ``--help`` stays fast.
User errors become one ``error: ...`` line on stderr and a typed exit code (docs/cli.md).
"""

from __future__ import annotations

from mdmctl.cli.common import app, eval_app, main
from mdmctl.cli.train_report import render_train_summary

# Importing a command module registers its commands; this order is the order of `--help`.
# isort: off
from mdmctl.cli import data, train, sample  # noqa: F401
from mdmctl.cli import eval_ppl, eval_gsm8k, eval_reverse_curse  # noqa: F401
from mdmctl.cli import eval_zero_shot, eval_lm_eval  # noqa: F401
from mdmctl.cli import scaling, interop, bench  # noqa: F401
# isort: on

__all__ = ["app", "eval_app", "main", "render_train_summary"]
