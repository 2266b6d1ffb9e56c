"""Progress: the hook long library loops report to, and the displays the CLI installs.

- The library reports ``report(label, done, total)`` (scoring, generation, perplexity); nothing
  happens unless a caller installed a hook with ``reporting(fn)``. A context variable, so library
  signatures need no progress argument and nested calls report to the same hook.
- ``ProgressReporter``: a rich bar on a terminal, plain periodic lines elsewhere. A rich bar
  redraws one line in place; written to a log file (nohup, CI, a scheduler) it leaves nothing
  between the first and the last line of a long run, so when stderr is not a terminal the reporter
  prints one line every ``MDMCTL_PROGRESS_EVERY`` seconds (default 30) instead, plus the first and
  the last update. rich is imported only when a display starts.
- ``library_progress()``: shows the library's reports with a ``ProgressReporter`` (commands).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from types import TracebackType
from typing import Any

Hook = Callable[[str, int, int], None]
_hook: ContextVar[Hook | None] = ContextVar("mdmctl_progress_hook", default=None)


def report(label: str, done: int, total: int) -> None:
    """``done`` of ``total`` items of the loop called ``label`` are finished."""
    hook = _hook.get()
    if hook is not None:
        hook(label, done, total)


@contextlib.contextmanager
def reporting(hook: Hook) -> Iterator[None]:
    token = _hook.set(hook)
    try:
        yield
    finally:
        _hook.reset(token)


def _clock(seconds: float) -> str:
    s = int(seconds)
    return (
        f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
    )


class ProgressReporter:
    """``update(done, total, status)`` from a loop; use as a context manager."""

    def __init__(self, label: str, total: int | None = None) -> None:
        from mdmctl.log import console

        self.label, self.total = label, total
        self.console = console
        self.plain = not console.is_terminal
        self.every = float(os.environ.get("MDMCTL_PROGRESS_EVERY", "30"))
        self._bar: Any = None
        self._t0 = self._last = 0.0
        self._done0: int | None = None  # a resumed run starts part-way: rate from here on

    def __enter__(self) -> ProgressReporter:
        self._t0 = time.perf_counter()
        self._last = -float("inf")
        if not self.plain:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn(f"[bold]{self.label}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task(self.label, total=self.total, status="")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.__exit__(exc_type, exc, tb)

    def update(self, done: int, total: int | None = None, status: str = "") -> None:
        if total is not None:
            self.total = total
        if self._bar is not None:
            self._bar.update(self._task, completed=done, total=self.total, status=status)
            return
        now = time.perf_counter()
        if self._done0 is None:
            self._done0 = done
        finished = self.total is not None and done >= self.total
        if now - self._last < self.every and not finished and self._last > -float("inf"):
            return
        self._last = now
        self.console.print(
            self._line(done, status, now - self._t0), highlight=False, soft_wrap=True
        )

    def _line(self, done: int, status: str, elapsed: float) -> str:
        parts = [self.label]
        if self.total:
            parts.append(f"{done:,}/{self.total:,} ({done / self.total:.0%})")
        else:
            parts.append(f"{done:,}")
        if status:
            parts.append(status)
        parts.append(f"elapsed {_clock(elapsed)}")
        gained = done - (self._done0 or 0)
        if self.total and gained > 0 and done < self.total:
            parts.append(f"ETA {_clock(elapsed / gained * (self.total - done))}")
        return "  ".join(parts)


@contextlib.contextmanager
def library_progress() -> Iterator[None]:
    """Show the library's long loops (``mdmctl.progress.report``: scoring, generating,
    perplexity windows) while the block runs, one loop at a time: a loop with a new label, or
    one that starts over, closes the previous display (rich allows one live display)."""
    state: dict[str, Any] = {"bar": None, "label": None, "done": 0}

    def close() -> None:
        if state["bar"] is not None:
            state["bar"].__exit__(None, None, None)
            state["bar"] = None

    def hook(label: str, done: int, total: int) -> None:
        if state["bar"] is None or label != state["label"] or done < state["done"]:
            close()
            state["bar"] = ProgressReporter(label, total).__enter__()
            state["label"] = label
        state["done"] = done
        state["bar"].update(done, total)

    with reporting(hook):
        try:
            yield
        finally:
            close()
