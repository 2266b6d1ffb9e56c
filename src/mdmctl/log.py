"""Console (rich, on stderr so stdout carries only results) and the JSONL metrics writer."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.logging import RichHandler

console = Console(stderr=True)


def setup_logging(verbose: bool = False) -> None:
    logger = logging.getLogger("mdmctl")
    if not logger.handlers:
        h = RichHandler(console=console, show_path=False, show_time=False, markup=False)
        logger.addHandler(h)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
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
