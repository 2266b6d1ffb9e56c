"""Typed, user-facing errors and their exit codes (see docs/cli.md, "Exit codes").

Anything a user can cause raises an ``MdmctlError`` subclass; the CLI prints one ``error: ...`` line on
stderr and exits with the class's code. Everything else is a bug (exit 1).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class MdmctlError(Exception):
    exit_code = 1


class ConfigError(MdmctlError):
    """Bad option, config field or usage."""

    exit_code = 2


class DataError(MdmctlError):
    """Bad input data (file:line where known)."""

    exit_code = 3


class TokenizerError(DataError):
    """Tokenizer lacks what mdmctl needs (mask / eos / pad)."""


class CorpusIntegrityError(DataError):
    """A tokenized corpus is corrupt: shard hash, header, size or token range disagrees with
    ``corpus.json``, or ``corpus.json`` lacks a field. Still a ``DataError`` for callers, but
    exit 4: the input is a damaged artifact (like a corrupt checkpoint), not a bad source text."""

    exit_code = 4


class CheckpointError(MdmctlError):
    """Missing, truncated, corrupt or unreadable checkpoint."""

    exit_code = 4


class CompatibilityError(CheckpointError):
    """Checkpoint does not match the requested architecture, tokenizer or data."""


class OutputError(CheckpointError):
    """An output file (run config, corpus shard, tokenizer, manifest) could not be written: no space
    left, quota or I/O error. Nothing half-written is left behind."""


class RunLockedError(ConfigError):
    """Another live process holds the run directory's lock (two runs on one ``--out``)."""


class DivergenceError(MdmctlError):
    """Non-finite loss or gradient."""

    exit_code = 5


def suggest(name: str, choices: Iterable[str]) -> str:
    """'; did you mean X?' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else ""
