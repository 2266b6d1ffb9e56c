"""Shared pieces of the generation tasks (GSM8K, reverse curse): loading a checkpoint once,
generating in batches with the sampler settings, writing per-example jsonl."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from mdmctl.errors import DataError


def binomial_stderr(correct: int, n: int) -> float:
    """Standard error of an accuracy over n items (lm-eval's formula, with n - 1)."""
    if n < 2:
        return 0.0
    p = correct / n
    return math.sqrt(p * (1 - p) / (n - 1))


def paired_difference(a: list[bool], b: list[bool]) -> tuple[float, float]:
    """Accuracy of ``a`` minus that of ``b`` on the same items, and its paired standard error
    (of the per-item differences): far tighter than two independent errors when both agree on
    most items."""
    n = len(a)
    d = [float(x) - float(y) for x, y in zip(a, b, strict=True)]
    mean = sum(d) / n
    if n < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1) / n)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """JSON objects of a jsonl file, each with its line number in ``_line``."""
    from mdmctl.data.readers import read_lines

    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such file")
    rows = []
    for n, line in read_lines(p):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{p}:{n}: invalid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{p}:{n}: expected a JSON object")
        obj["_line"] = n
        rows.append(obj)
    return rows


def write_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    tmp.replace(p)
