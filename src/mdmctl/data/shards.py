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
import platform
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from mdmctl import __version__
from mdmctl.config import check_finite
from mdmctl.data.readers import CorpusSpec, iter_documents
from mdmctl.errors import ConfigError, CorpusIntegrityError, DataError
from mdmctl.fileio import atomic_write, atomic_write_text, make_out_dir, sha256_file
from mdmctl.tokenizer import TokenizerInfo, fingerprint, load_tokenizer, prepare, train_bpe

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
        check_finite(self, "--")
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
        tensors = {"tokens": torch.from_numpy(tokens), "doc_offsets": torch.from_numpy(offsets)}
        # One metadata key: safetensors orders a multi-key header arbitrarily, and shard bytes
        # (and their sha256) must be reproducible.
        meta = {"mdmctl": json.dumps({"format": "mdmctl-tokens", "format_version": FORMAT_VERSION})}
        atomic_write(self.out / name, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
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
    created = not out.exists()
    make_out_dir(out)
    (out / "corpus.json").unlink(missing_ok=True)  # invalid until the new one is written last
    for old in [*out.glob("train-*.safetensors"), *out.glob("val-*.safetensors")]:
        old.unlink()  # only our own shard names: --out may be a folder that holds other files
    writers = {s: _ShardWriter(out, s, dtype, cfg.shard_tokens) for s in ("train", "val")}
    try:
        return _write_corpus(cfg, tok, info, dtype, writers, progress, t0)
    except BaseException:
        # A bad line or a full disk mid-way: no corpus.json was written, so what this run wrote
        # is an orphan that only holds space. A folder this run created goes whole.
        if created:
            shutil.rmtree(out, ignore_errors=True)
        else:
            for w in writers.values():
                for shard in w.shards:
                    (out / shard["file"]).unlink(missing_ok=True)
        raise


def _write_corpus(
    cfg: TokenizeConfig,
    tok: Tokenizer,
    info: TokenizerInfo,
    dtype: np.dtype,
    writers: dict[str, _ShardWriter],
    progress: Callable[[int, int], None] | None,
    t0: float,
) -> CorpusManifest:
    """Encode, write the shards, the tokenizer and (last) corpus.json; see ``tokenize_corpus``."""
    out = Path(cfg.out)
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

    atomic_write(out / "tokenizer.json", lambda tmp: tok.save(str(tmp)))
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
    atomic_write_text(out / "corpus.json", json.dumps(meta, indent=2) + "\n")
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
    """Read and check ``corpus.json`` and its shards' headers (cheap: no token is read).

    Checks: the file exists and is a known version (else ``DataError``, exit 3); every field mdmctl
    reads is present, every shard exists, opens, and holds ``tokens`` of the recorded dtype and
    length and ``doc_offsets`` of the recorded count (else ``CorpusIntegrityError``, exit 4). The
    contents are checked by ``verify_corpus``.
    """
    p = Path(path)
    mpath = p / "corpus.json" if p.is_dir() or not p.name.endswith(".json") else p
    if not mpath.is_file():
        raise DataError(f"{mpath}: no corpus.json (run 'mdmctl tokenize' first)")
    try:
        meta = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise CorpusIntegrityError(f"{mpath}:{e.lineno}: invalid JSON ({e.msg})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{mpath}: cannot read ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != "mdmctl-corpus":
        raise DataError(f"{mpath}: not an mdmctl corpus manifest")
    if meta.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"{mpath}: corpus format_version {meta.get('format_version')} "
            f"(made by mdmctl {meta.get('mdmctl_version')}); this is mdmctl {__version__}"
        )
    _check_fields(meta, mpath)
    for split in ("train", "val"):
        for shard in meta["splits"][split]["shards"]:
            _check_shard_header(mpath.parent / shard["file"], shard, meta["dtype"])
    return CorpusManifest(mpath.parent, meta)


# Fields read by training and evaluation, with their JSON types: (path, type).
_REQUIRED_FIELDS: tuple[tuple[str, type | tuple[type, ...]], ...] = (
    ("dtype", str),
    ("tokenizer", dict),
    ("tokenizer.sha256", str),
    ("tokenizer.vocab_size", int),
    ("tokenizer.mask_id", int),
    ("tokenizer.eos_id", int),
    ("tokenizer.pad_id", int),
    ("splits", dict),
    ("splits.train", dict),
    ("splits.val", dict),
    ("splits.train.tokens", int),
    ("splits.val.tokens", int),
    ("splits.train.shards", list),
    ("splits.val.shards", list),
)
_SHARD_FIELDS: tuple[tuple[str, type], ...] = (
    ("file", str),
    ("tokens", int),
    ("docs", int),
    ("sha256", str),
)
_DTYPES = {"uint16": "U16", "uint32": "U32"}  # corpus.json name -> safetensors header name


def _check_fields(meta: dict[str, Any], mpath: Path) -> None:
    """Every field mdmctl reads is present with its type: a typed error, not a later KeyError."""
    for dotted, kind in _REQUIRED_FIELDS:
        node: Any = meta
        for key in dotted.split("."):
            node = node.get(key) if isinstance(node, dict) else None
        if not isinstance(node, kind) or isinstance(node, bool):
            raise CorpusIntegrityError(
                f"{mpath}: missing or invalid field '{dotted}'; re-run 'mdmctl tokenize'"
            )
    if meta["dtype"] not in _DTYPES:
        raise CorpusIntegrityError(f"{mpath}: unknown token dtype {meta['dtype']!r}")
    for split in ("train", "val"):
        shards = meta["splits"][split]["shards"]
        for i, shard in enumerate(shards):
            for key, kind in _SHARD_FIELDS:
                if not isinstance(shard, dict) or not isinstance(shard.get(key), kind):
                    raise CorpusIntegrityError(
                        f"{mpath}: missing or invalid field 'splits.{split}.shards[{i}].{key}'"
                    )
        recorded = meta["splits"][split]["tokens"]
        if sum(s["tokens"] for s in shards) != recorded:
            raise CorpusIntegrityError(
                f"{mpath}: splits.{split}.tokens is {recorded} but its shards hold "
                f"{sum(s['tokens'] for s in shards)}"
            )


def _check_shard_header(path: Path, entry: dict[str, Any], dtype: str) -> None:
    """The shard opens (safetensors checks that its header covers the file exactly, so truncation
    is caught here) and its tensors have the dtype and sizes corpus.json records."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise CorpusIntegrityError(f"{path}: shard listed in corpus.json is missing")
    try:
        with safe_open(str(path), framework="numpy") as f:
            keys = set(f.keys())
            if not {"tokens", "doc_offsets"} <= keys:
                raise CorpusIntegrityError(
                    f"{path}: shard lacks 'tokens' or 'doc_offsets' (has {sorted(keys)})"
                )
            tokens, offsets = f.get_slice("tokens"), f.get_slice("doc_offsets")
            got = (tokens.get_dtype(), tokens.get_shape(), offsets.get_dtype(), offsets.get_shape())
    except (SafetensorError, OSError, ValueError) as e:
        raise CorpusIntegrityError(
            f"{path}: unreadable or truncated shard ({e}); re-run 'mdmctl tokenize'"
        ) from None
    want = (_DTYPES[dtype], [entry["tokens"]], "I64", [entry["docs"]])
    if got != want:
        raise CorpusIntegrityError(
            f"{path}: shard header does not match corpus.json (tokens {got[0]}{got[1]}, "
            f"doc_offsets {got[2]}{got[3]}; expected tokens {want[0]}{want[1]}, "
            f"doc_offsets {want[2]}{want[3]})"
        )


def verify_corpus(
    manifest: CorpusManifest,
    *,
    full: bool = False,
    splits: tuple[str, ...] = ("train", "val"),
    log: Callable[[str], None] = lambda m: None,
) -> None:
    """Check the corpus's tokenizer.json against corpus.json's fingerprint and hash every shard
    of ``splits`` (a flipped token trains or scores silently otherwise); with ``full`` also read
    every token and check it is below the vocabulary size and that document offsets are ordered.
    Raises ``CorpusIntegrityError`` (exit 4) naming the file."""
    t0 = time.perf_counter()
    vocab = manifest.meta["tokenizer"]["vocab_size"]
    _check_tokenizer(manifest)
    n = 0
    for split in splits:
        for shard in manifest.meta["splits"][split]["shards"]:
            path = manifest.path / shard["file"]
            actual = sha256_file(path)
            if actual != shard["sha256"]:
                raise CorpusIntegrityError(
                    f"{path}: sha256 mismatch (corpus.json has {shard['sha256'][:16]}…, file is "
                    f"{actual[:16]}…): the shard is corrupt; re-run 'mdmctl tokenize'"
                )
            if full:
                _check_shard_contents(path, vocab)
            n += 1
    what = "sha256, token ids < vocab size, document offsets" if full else "sha256"
    log(f"verified {n} corpus shards ({what}) in {time.perf_counter() - t0:.1f}s")


def _check_tokenizer(manifest: CorpusManifest) -> None:
    """The tokenizer.json beside the shards is the one they were written with."""
    recorded = manifest.meta["tokenizer"]
    path = manifest.path / str(recorded.get("file", "tokenizer.json"))
    try:
        actual = fingerprint(load_tokenizer(path))
    except Exception as e:  # a missing file (TokenizerError) or tokenizers' own parse errors
        raise CorpusIntegrityError(f"{path}: unreadable tokenizer ({e})") from None
    if actual != recorded["sha256"]:
        raise CorpusIntegrityError(
            f"{path}: not the tokenizer the shards were written with (fingerprint "
            f"{actual[:12]}, corpus.json has {recorded['sha256'][:12]}); re-run 'mdmctl tokenize'"
        )


def _check_shard_contents(path: Path, vocab_size: int) -> None:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        tokens, offsets = f.get_tensor("tokens"), f.get_tensor("doc_offsets")
    if tokens.size and int(tokens.max()) >= vocab_size:
        bad = int(np.argmax(tokens >= vocab_size))
        raise CorpusIntegrityError(
            f"{path}: token id {int(tokens[bad])} at position {bad} is outside the vocabulary "
            f"(size {vocab_size})"
        )
    if offsets.size and (
        offsets[0] != 0 or offsets[-1] >= max(tokens.size, 1) or (np.diff(offsets) <= 0).any()
    ):
        raise CorpusIntegrityError(f"{path}: document offsets are not increasing from 0")


def tokenizer_info(manifest: CorpusManifest) -> TokenizerInfo:
    """The corpus's tokenizer ids (fields checked by ``read_manifest``)."""
    t = manifest.meta["tokenizer"]
    return TokenizerInfo(t["vocab_size"], t["mask_id"], t["eos_id"], t["pad_id"], t["sha256"])


def ensure_builtin_corpus(
    tokenize: Callable[[TokenizeConfig], CorpusManifest] = tokenize_corpus,
    log: Callable[[str], None] = lambda msg: None,
) -> None:
    """Tokenize the built-in corpus into ``DEFAULT_DATA`` unless it is there (``mdmctl pretrain``
    without --data, the Quick start). ``tokenize``: ``tokenize_corpus`` or a caller's wrapper of
    it (the CLI's shows progress)."""
    import os

    from mdmctl.config import DEFAULT_DATA

    if (Path(DEFAULT_DATA) / "corpus.json").is_file():
        return
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Every rank would tokenize into the same folder at once.
        raise ConfigError(
            f"no --data and no {DEFAULT_DATA}/corpus.json: under torchrun, run "
            "'mdmctl tokenize' (or one 'mdmctl pretrain') first, or pass --data"
        )
    log(f"no --data: tokenizing the built-in corpus into {DEFAULT_DATA} (once)")
    tokenize(TokenizeConfig(out=DEFAULT_DATA))
