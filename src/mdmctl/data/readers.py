"""Corpus readers: local .txt / .jsonl(.gz) / .parquet files or folders, a ``datasets`` hub id, or the
built-in corpus. Each yields ``(text, source)`` documents in a fixed order.

Our own line reader handles .txt and .jsonl so that every error names ``file:line``; parquet and hub
datasets go through ``datasets`` (imported lazily, streamed so memory stays bounded).
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from mdmctl.errors import DataError

SUFFIXES = (".txt", ".jsonl", ".jsonl.gz", ".txt.gz", ".parquet")


@dataclass(frozen=True, slots=True)
class CorpusSpec:
    """Where the documents come from. ``paths`` empty and ``dataset`` None: the built-in corpus."""

    paths: tuple[str, ...] = ()
    dataset: str | None = None
    config: str | None = None
    split: str = "train"
    text_field: str = "text"

    @property
    def description(self) -> str:
        if self.dataset:
            return (
                f"hf:{self.dataset}" + (f"/{self.config}" if self.config else "") + f":{self.split}"
            )
        if self.paths:
            return ",".join(self.paths)
        from mdmctl.data.builtin import BUILTIN_NAME

        return BUILTIN_NAME


def expand_paths(paths: Sequence[str]) -> list[Path]:
    """Files as given, folders expanded to their supported files (sorted)."""
    files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.name.endswith(SUFFIXES))
            if not found:
                raise DataError(f"{p}: folder has no {'/'.join(SUFFIXES)} files")
            files.extend(found)
        elif p.is_file():
            if not p.name.endswith(SUFFIXES):
                raise DataError(f"{p}: unsupported file type (expected {', '.join(SUFFIXES)})")
            files.append(p)
        else:
            raise DataError(f"{p}: no such file or folder")
    return files


def read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, decoded line) with strict UTF-8; bad bytes give file:line and offset."""
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    yield lineno, raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(
                        f"{path}:{lineno}: invalid UTF-8 at byte offset {e.start} of the line"
                    ) from None
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read ({e})") from None


def read_txt(path: Path) -> Iterator[tuple[str, str]]:
    """One document per .txt file (decoded line by line so errors carry file:line)."""
    text = "".join(line for _, line in read_lines(path))
    if text.strip():
        yield text, str(path)


def read_jsonl(path: Path, text_field: str) -> Iterator[tuple[str, str]]:
    for lineno, line in read_lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
        if not isinstance(obj, dict) or text_field not in obj:
            raise DataError(f"{path}:{lineno}: missing key '{text_field}' (set --text-field)")
        text = obj[text_field]
        if not isinstance(text, str):
            raise DataError(
                f"{path}:{lineno}: '{text_field}' expected string, got {type(text).__name__}"
            )
        if text:
            yield text, f"{path}:{lineno}"


def read_parquet(path: Path, text_field: str) -> Iterator[tuple[str, str]]:
    import datasets

    try:
        ds = datasets.load_dataset("parquet", data_files=str(path), split="train", streaming=True)
        for i, row in enumerate(ds):
            if text_field not in row:
                raise DataError(
                    f"{path}: row {i}: missing column '{text_field}' (set --text-field)"
                )
            text = row[text_field]
            if isinstance(text, str) and text:
                yield text, f"{path}#{i}"
    except DataError:
        raise
    except Exception as e:  # pyarrow / datasets raise many types for a bad file
        raise DataError(f"{path}: cannot read parquet ({type(e).__name__}: {e})") from None


def read_hub(spec: CorpusSpec) -> Iterator[tuple[str, str]]:
    import datasets

    try:
        ds = datasets.load_dataset(spec.dataset, spec.config, split=spec.split, streaming=True)
        for i, row in enumerate(ds):
            if spec.text_field not in row:
                raise DataError(
                    f"hf:{spec.dataset}: no column '{spec.text_field}' "
                    f"(columns: {', '.join(row)}); set --text-field"
                )
            text = row[spec.text_field]
            if isinstance(text, str) and text:
                yield text, f"hf:{spec.dataset}#{i}"
    except DataError:
        raise
    except Exception as e:  # offline, missing dataset, bad split: datasets raises many types
        raise DataError(
            f"hf:{spec.dataset} (config {spec.config}, split {spec.split}) could not be loaded: "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}; "
            "offline? pass local files instead"
        ) from None


def iter_documents(spec: CorpusSpec) -> Iterator[tuple[str, str]]:
    """All documents of the corpus, in a fixed order."""
    if spec.dataset:
        yield from read_hub(spec)
        return
    if not spec.paths:
        from mdmctl.data.builtin import iter_builtin_documents

        yield from iter_builtin_documents()
        return
    for path in expand_paths(spec.paths):
        name = path.name
        if name.endswith((".jsonl", ".jsonl.gz")):
            yield from read_jsonl(path, spec.text_field)
        elif name.endswith(".parquet"):
            yield from read_parquet(path, spec.text_field)
        else:
            yield from read_txt(path)
