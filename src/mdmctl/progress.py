"""A progress hook for long library loops (scoring, generation, perplexity), without a UI.

The library reports ``report(label, done, total)``; nothing happens unless a caller installed a
hook with ``reporting(fn)`` (the CLI shows a bar or periodic lines). A context variable, so
library signatures need no progress argument and nested calls report to the same hook.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar

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
