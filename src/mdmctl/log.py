"""Console (rich, on stderr so stdout carries only results) and the JSONL metrics writer."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.logging import RichHandler

console = Console(stderr=True)


def results_console() -> Console:
    """A console for results (tables, summaries) on stdout, bound to the current ``sys.stdout``.

    On a terminal it wraps to the terminal's width; into a file or a pipe (which has no width)
    nothing is wrapped or cut, so ``mdmctl eval ... > results.txt`` keeps full paths and numbers.
    """
    import sys

    tty = sys.stdout.isatty()
    return Console(width=None if tty else 100_000, soft_wrap=not tty, highlight=False)


def setup_logging(verbose: bool = False) -> None:
    logger = logging.getLogger("mdmctl")
    if not logger.handlers:
        h = RichHandler(console=console, show_path=False, show_time=False, markup=False)
        logger.addHandler(h)
    level = logging.DEBUG if verbose else logging.INFO
    if int(os.environ.get("RANK", "0")) != 0:
        level = logging.WARNING  # under torchrun, rank 0 alone logs progress
    logger.setLevel(level)
    logger.propagate = False


def info(msg: str) -> None:
    logging.getLogger("mdmctl").info(msg)


class MetricsWriter:
    """Appends one JSON object per line; a write failure warns once and training goes on."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._warned = False

    def write(self, record: dict[str, Any]) -> None:
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:
            if not self._warned:
                logging.getLogger("mdmctl").warning(
                    "cannot write %s (%s); continuing", self.path, e
                )
                self._warned = True


def truncate_metrics(path: Path, last_step: int, log: Callable[[str], None] = info) -> int:
    """Keep only the records of ``path`` with ``step <= last_step``; returns how many were dropped.

    Called when a run starts from ``last_step`` (0: fresh): the records after it belong to steps
    that a kill threw away and that will be trained, and logged, again. A torn last line (killed
    mid-write) is dropped too. The file is replaced atomically, so a crash here loses nothing; a
    failure to rewrite it only warns, like any metrics write.
    """
    from mdmctl.errors import OutputError
    from mdmctl.fileio import atomic_write_text

    if not path.is_file():
        return 0
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
    steps = [_record_step(ln) for ln in lines]
    kept = [ln for ln, st in zip(lines, steps, strict=True) if st is not None and st <= last_step]
    dropped = len(lines) - len(kept)
    if dropped == 0:
        return 0
    try:
        atomic_write_text(path, "".join(ln if ln.endswith("\n") else ln + "\n" for ln in kept))
    except OutputError as e:
        logging.getLogger("mdmctl").warning("cannot truncate %s (%s); continuing", path, e)
        return 0
    log(f"{path.name}: dropped {dropped} records after step {last_step} (they will be redone)")
    return dropped


def _record_step(line: str) -> int | None:
    try:
        step = json.loads(line).get("step")
    except (ValueError, AttributeError):
        return None
    return step if isinstance(step, int) else None
