"""``tokenize_corpus``: documents -> packed token shards (safetensors) plus ``corpus.json``.

Each shard holds ``tokens`` (1-D uint16 when the vocabulary fits, else uint32: every document
followed by eos) and ``doc_offsets`` (int64 start of each document in the shard). Documents never
span shards. The split is deterministic: a document goes to validation iff
``sha1(text) mod 10000 < val_fraction·10000``. Memory is bounded by one shard buffer; shards are
written under temporary names and renamed, and ``corpus.json`` is written last, so a failed run never
leaves a manifest that points at partial shards.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mdmctl import __version__
from mdmctl.data.readers import CorpusSpec, iter_documents
from mdmctl.errors import ConfigError, DataError
from mdmctl.fileio import sha256_file
from mdmctl.tokenizer import TokenizerInfo, load_tokenizer, prepare, train_bpe

FORMAT_VERSION = 1
ENCODE_BATCH = 256


@dataclass(frozen=True, kw_only=True, slots=True)
class TokenizeConfig:
    corpus: CorpusSpec = field(default_factory=CorpusSpec)
    out: str = "data/builtin"
    tokenizer: str | None = None
    """Existing tokenizer.json (or folder holding one); None trains a byte-level BPE."""
    vocab_size: int | None = None
    """BPE size when training; default 1024 for the built-in corpus (1.5 MB of text), else 4096."""
    eos_token: str | None = None
    val_fraction: float = 0.01
    shard_tokens: int = 50_000_000
    max_docs: int | None = None

    def __post_init__(self) -> None:
        if not 0 < self.val_fraction < 0.5:
            raise ConfigError(f"--val-fraction: must be in (0, 0.5), got {self.val_fraction}")
        if self.shard_tokens < 1024:
            raise ConfigError(f"--shard-tokens: must be >= 1024, got {self.shard_tokens}")


@dataclass(frozen=True, slots=True)
class CorpusManifest:
    path: Path
    meta: dict[str, Any]

    @property
    def tokens(self) -> dict[str, int]:
        return {s: self.meta["splits"][s]["tokens"] for s in ("train", "val")}


def _is_val(text: str, val_fraction: float) -> bool:
    h = int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[:8], "big")
    return h % 10000 < round(val_fraction * 10000)


class _ShardWriter:
    """Buffers documents and writes ``{split}-{i:05d}.safetensors`` at a document boundary."""

    def __init__(self, out: Path, split: str, dtype: np.dtype, shard_tokens: int) -> None:
        self.out, self.split, self.dtype, self.shard_tokens = out, split, dtype, shard_tokens
        self.buf: list[np.ndarray] = []
        self.n_buf = 0
        self.shards: list[dict[str, Any]] = []
        self.tokens = 0
        self.docs = 0

    def add(self, ids: np.ndarray) -> None:
        self.buf.append(ids)
        self.n_buf += len(ids)
        self.tokens += len(ids)
        self.docs += 1
        if self.n_buf >= self.shard_tokens:
            self.flush()

    def flush(self) -> None:
        if not self.buf:
            return
        import torch
        from safetensors.torch import save_file

        lengths = np.array([len(b) for b in self.buf], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        tokens = np.concatenate(self.buf).astype(self.dtype)
        name = f"{self.split}-{len(self.shards):05d}.safetensors"
        tmp = self.out / f".tmp-{name}"
        save_file(
            {"tokens": torch.from_numpy(tokens), "doc_offsets": torch.from_numpy(offsets)},
            str(tmp),
            # One metadata key: safetensors orders a multi-key header arbitrarily, and shard bytes
            # (and their sha256) must be reproducible.
            metadata={
                "mdmctl": json.dumps({"format": "mdmctl-tokens", "format_version": FORMAT_VERSION})
            },
        )
        os.replace(tmp, self.out / name)
        self.shards.append(
            {
                "file": name,
                "tokens": int(len(tokens)),
                "docs": int(len(lengths)),
                "sha256": sha256_file(self.out / name),
            }
        )
        self.buf, self.n_buf = [], 0


def _docs(cfg: TokenizeConfig) -> Iterator[tuple[str, str]]:
    n = 0
    for text, source in iter_documents(cfg.corpus):
        if cfg.max_docs is not None and n >= cfg.max_docs:
            return
        if text.strip():
            n += 1
            yield text, source


def tokenize_corpus(
    cfg: TokenizeConfig,
    progress: Callable[[int, int], None] | None = None,
    log: Callable[[str], None] = lambda msg: None,
) -> CorpusManifest:
    """Tokenize ``cfg.corpus`` into ``cfg.out``; returns the written manifest.

    ``progress(docs, tokens)`` is called after each encoded batch.
    """
    t0 = time.perf_counter()
    out = Path(cfg.out)
    if cfg.tokenizer:
        tok = load_tokenizer(cfg.tokenizer)
        info = prepare(tok, eos_token=cfg.eos_token)
        for name in info.added:
            log(f"tokenizer had no {name!r}: added it as id {tok.token_to_id(name)}")
    else:
        # Training streams the documents once; encoding streams them again (bounded memory).
        n_seen = 0

        def texts() -> Iterator[str]:
            nonlocal n_seen
            for text, _ in _docs(cfg):
                n_seen += 1
                yield text

        builtin = not cfg.corpus.paths and not cfg.corpus.dataset
        vocab_size = cfg.vocab_size or (1024 if builtin else 4096)
        tok = train_bpe(texts(), vocab_size)
        if n_seen == 0:
            raise DataError(f"{cfg.corpus.description}: corpus is empty (0 documents)")
        info = prepare(tok, add_missing=False)
        log(f"trained byte-level BPE: {info.vocab_size} tokens on {n_seen} documents")

    dtype = np.dtype(np.uint16) if info.vocab_size <= 2**16 else np.dtype(np.uint32)
    out.mkdir(parents=True, exist_ok=True)
    (out / "corpus.json").unlink(missing_ok=True)  # invalid until the new one is written last
    for old in [*out.glob("train-*.safetensors"), *out.glob("val-*.safetensors")]:
        old.unlink()  # only our own shard names: --out may be a folder that holds other files
    writers = {s: _ShardWriter(out, s, dtype, cfg.shard_tokens) for s in ("train", "val")}
    text_hash = hashlib.sha256()
    n_docs = 0

    def encode(batch: list[str]) -> None:
        nonlocal n_docs
        tok.encode_special_tokens = True  # corpus text is literal: '<|mask|>' in it is just text
        for text, enc in zip(batch, tok.encode_batch(batch, add_special_tokens=False), strict=True):
            ids = np.asarray(enc.ids + [info.eos_id], dtype=np.int64)
            writers["val" if _is_val(text, cfg.val_fraction) else "train"].add(ids)
        n_docs += len(batch)
        if progress:
            progress(n_docs, writers["train"].tokens + writers["val"].tokens)

    batch: list[str] = []
    for text, _ in _docs(cfg):
        text_hash.update(text.encode("utf-8"))
        batch.append(text)
        if len(batch) == ENCODE_BATCH:
            encode(batch)
            batch = []
    if batch:
        encode(batch)
    if n_docs == 0:
        raise DataError(f"{cfg.corpus.description}: corpus is empty (0 documents)")
    if writers["train"].tokens + writers["val"].tokens == n_docs:
        raise DataError(f"{cfg.corpus.description}: corpus has 0 tokens besides end-of-text")
    if writers["val"].docs == 0:
        _carve_val(writers, cfg.val_fraction)
    for w in writers.values():
        w.flush()
    if writers["train"].tokens == 0:
        raise DataError(f"{cfg.corpus.description}: every document landed in validation")

    tok.save(str(out / "tokenizer.json"))
    meta: dict[str, Any] = {
        "format": "mdmctl-corpus",
        "format_version": FORMAT_VERSION,
        "mdmctl_version": __version__,
        "source": cfg.corpus.description,
        "text_sha256": text_hash.hexdigest(),
        "python_version": platform.python_version(),
        "documents": n_docs,
        "dtype": dtype.name,
        "tokenizer": {
            "file": "tokenizer.json",
            "sha256": info.sha256,
            "vocab_size": info.vocab_size,
            "mask_id": info.mask_id,
            "eos_id": info.eos_id,
            "pad_id": info.pad_id,
        },
        "val_fraction": cfg.val_fraction,
        "splits": {
            s: {"tokens": w.tokens, "docs": w.docs, "shards": w.shards} for s, w in writers.items()
        },
        "seconds": round(time.perf_counter() - t0, 2),
    }
    tmp = out / ".tmp-corpus.json"
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, out / "corpus.json")
    return CorpusManifest(out, meta)


def _carve_val(writers: dict[str, _ShardWriter], val_fraction: float) -> None:
    """No document hashed into validation (a small corpus): move the tail of the train buffer."""
    train, val = writers["train"], writers["val"]
    if not train.buf:
        return
    stream = np.concatenate(train.buf)
    n_val = max(1, math.ceil(val_fraction * len(stream)))
    n_val = min(n_val, len(stream) - 1) if len(stream) > 1 else 0
    if n_val == 0:
        return
    train.buf, train.n_buf = [stream[:-n_val]], len(stream) - n_val
    train.tokens -= n_val
    val.buf, val.n_buf, val.tokens, val.docs = [stream[-n_val:]], n_val, n_val, 1


def read_manifest(path: str | Path) -> CorpusManifest:
    """Read and check ``corpus.json`` (exists, known version, shards present)."""
    p = Path(path)
    mpath = p / "corpus.json" if p.is_dir() or not p.name.endswith(".json") else p
    if not mpath.is_file():
        raise DataError(f"{mpath}: no corpus.json (run 'mdmctl tokenize' first)")
    try:
        meta = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{mpath}:{e.lineno}: invalid JSON ({e.msg})") from None
    if meta.get("format") != "mdmctl-corpus":
        raise DataError(f"{mpath}: not an mdmctl corpus manifest")
    if meta.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"{mpath}: corpus format_version {meta.get('format_version')} "
            f"(made by mdmctl {meta.get('mdmctl_version')}); this is mdmctl {__version__}"
        )
    for split in ("train", "val"):
        for shard in meta["splits"][split]["shards"]:
            if not (mpath.parent / shard["file"]).is_file():
                raise DataError(
                    f"{mpath.parent / shard['file']}: shard listed in corpus.json is missing"
                )
    return CorpusManifest(mpath.parent, meta)


def tokenizer_info(manifest: CorpusManifest) -> TokenizerInfo:
    t = manifest.meta["tokenizer"]
    return TokenizerInfo(t["vocab_size"], t["mask_id"], t["eos_id"], t["pad_id"], t["sha256"])
