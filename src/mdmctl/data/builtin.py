"""The built-in corpus: docstrings of the running Python's standard library, extracted at run time.

Real human-written English present on every machine, with no third-party text stored in the
repository. Sources are parsed with ``ast`` (never imported, so no side effects); one document per
module: the module docstring followed by its classes' and functions' docstrings. The text depends
on the Python version, so ``corpus.json`` records the version and the text's sha256.
"""

from __future__ import annotations

import ast
import os
import sysconfig
from collections.abc import Iterator
from pathlib import Path

# Packages skipped: tests (code-heavy, huge), IDLE/turtle demos and vendored or GUI code.
_SKIP_DIRS = {
    "site-packages",
    "dist-packages",
    "test",
    "tests",
    "idlelib",
    "__pycache__",
    "lib2to3",
    "turtledemo",
    "ensurepip",
    "tkinter",
    "venv",
    "config-3.11-x86_64-linux-gnu",
}

BUILTIN_NAME = "builtin:python-stdlib-docstrings"


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def iter_builtin_documents(root: Path | None = None) -> Iterator[tuple[str, str]]:
    """Yield (text, source) per stdlib module, in a fixed (sorted) order."""
    root = root or stdlib_root()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        for fn in sorted(filenames):
            if not fn.endswith(".py"):
                continue
            path = Path(dirpath) / fn
            try:
                tree = ast.parse(path.read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError, OSError, ValueError):
                continue
            parts = []
            for node in ast.walk(tree):
                if isinstance(
                    node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef
                ):
                    doc = ast.get_docstring(node)
                    if doc and len(doc) > 20:
                        parts.append(doc.strip())
            if parts:
                yield "\n\n".join(parts) + "\n", str(path.relative_to(root))
