"""Supervised fine-tuning data: prompt/response examples, their formats, and padded batches.

Formats (``--format auto`` picks by the fields of the first line):
- ``prompt-response``: jsonl with prompt / response fields (names set by --prompt-field /
  --response-field); the reversal-curse files (``prompt`` / ``completion``) are this format.
- ``messages``: chat jsonl, ``{"messages": [{"role", "content"}, ...]}``; the prompt is every turn
  before the last assistant turn, rendered ``USER: ...\\nASSISTANT: ``; the response is that turn.
- ``gsm8k``: jsonl ``question`` / ``answer`` (the answer keeps its ``#### N`` line).
- ``gsm8k-equations``: text lines ``question||<<eq>> <<eq>> #### N`` (augmented GSM8K).

Each example becomes ``prompt_ids`` and ``response_ids + [eos]``. In a batch, rows are padded to the
batch's longest row with eos: for the MDM those eos tokens are response positions (noised and
scored), which is how it learns where to stop (SMDM); for the ARM only the first eos is scored.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from mdmctl.errors import DataError

Format = Literal["auto", "prompt-response", "messages", "gsm8k", "gsm8k-equations"]
FORMATS = ("auto", "prompt-response", "messages", "gsm8k", "gsm8k-equations")


@dataclass(frozen=True, slots=True)
class Example:
    prompt: str
    response: str
    source: str  # file:line


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Non-blank lines with their numbers (decoding errors name file:line)."""
    from mdmctl.data.readers import read_lines

    if not path.is_file():
        raise DataError(f"{path}: no such file")
    return ((n, line) for n, line in read_lines(path) if line.strip())


def _field(obj: dict[str, Any], key: str, where: str) -> str:
    if key not in obj:
        raise DataError(f"{where}: missing field '{key}'")
    val = obj[key]
    if not isinstance(val, str):
        raise DataError(f"{where}: field '{key}' expected string, got {type(val).__name__}")
    return val


def _render_chat(messages: Any, where: str) -> tuple[str, str]:
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: 'messages' must be a non-empty list")
    last = max(
        (i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "assistant"),
        default=None,
    )
    if last is None:
        raise DataError(f"{where}: 'messages' has no assistant turn")
    parts = []
    for m in messages[:last]:
        if not isinstance(m, dict):
            raise DataError(f"{where}: each message must be an object with role and content")
        role, content = m.get("role"), m.get("content")
        if not isinstance(content, str):
            raise DataError(f"{where}: message content expected string")
        parts.append(
            f"{'ASSISTANT' if role == 'assistant' else 'SYSTEM' if role == 'system' else 'USER'}: {content}\n"
        )
    content = messages[last].get("content")
    if not isinstance(content, str):
        raise DataError(f"{where}: message content expected string")
    return "".join(parts) + "ASSISTANT: ", content


def detect_format(path: Path, prompt_field: str) -> str:
    if path.suffix == ".txt":
        return "gsm8k-equations"
    for n, line in _lines(path):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{n}: invalid JSON ({e.msg})") from None
        if isinstance(obj, dict):
            if "messages" in obj:
                return "messages"
            if "question" in obj and "answer" in obj and prompt_field not in obj:
                return "gsm8k"
        return "prompt-response"
    raise DataError(f"{path}: no examples (empty file)")


def read_examples(
    path: str | Path,
    fmt: str = "auto",
    prompt_field: str = "prompt",
    response_field: str | None = None,
) -> list[Example]:
    """All examples of a file, each with its ``file:line``; bad lines are DataErrors."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such file")
    if fmt not in FORMATS:
        raise DataError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "auto":
        fmt = detect_format(p, prompt_field)
    out: list[Example] = []
    for n, line in _lines(p):
        where = f"{p}:{n}"
        if fmt == "gsm8k-equations":
            if "||" not in line:
                raise DataError(f"{where}: expected 'question||reasoning #### answer'")
            q, a = line.rstrip("\n").split("||", 1)
            prompt, response = q.strip() + "\n", a.strip()
        else:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: invalid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{where}: expected a JSON object")
            if fmt == "messages":
                prompt, response = _render_chat(obj.get("messages"), where)
            elif fmt == "gsm8k":
                prompt = _field(obj, "question", where).strip() + "\n"
                response = _field(obj, "answer", where).strip()
            else:
                rf = response_field or ("completion" if "completion" in obj else "response")
                prompt, response = _field(obj, prompt_field, where), _field(obj, rf, where)
        if not response.strip():
            raise DataError(f"{where}: empty response")
        out.append(Example(prompt, response, where))
    if not out:
        raise DataError(f"{p}: no examples")
    return out


def is_val(ex: Example, val_fraction: float) -> bool:
    """Deterministic held-out split by the example's text."""
    h = int.from_bytes(
        hashlib.sha1((ex.prompt + "\x00" + ex.response).encode()).digest()[:8], "big"
    )
    return h % 10000 < round(val_fraction * 10000)


@dataclass
class Tokenized:
    prompt: list[int]
    response: list[int]  # ends with eos
    source: str


def tokenize_examples(
    examples: list[Example],
    tok,
    eos_id: int,
    seq_len: int,
    overlong: str = "drop",
    bos: list[int] | None = None,
) -> tuple[list[Tokenized], int]:
    """Token ids per example. Examples longer than ``seq_len`` (prompt + response + eos) are
    dropped and counted, or with ``overlong='error'`` reported with their file:line."""
    out, dropped = [], 0
    tok.encode_special_tokens = True  # user text is literal: '<|mask|>' in it is just text
    ps = tok.encode_batch([e.prompt for e in examples], add_special_tokens=False)
    rs = tok.encode_batch([e.response for e in examples], add_special_tokens=False)
    bos = bos or []
    for ex, p, r in zip(examples, ps, rs, strict=True):
        p_ids = bos + p.ids
        n = len(p_ids) + len(r.ids) + 1
        if n > seq_len:
            if overlong == "error":
                what = (
                    f"prompt is {len(p_ids)} tokens"
                    if len(p_ids) >= seq_len
                    else f"example is {n} tokens"
                )
                raise DataError(f"{ex.source}: {what}; model context is {seq_len}")
            dropped += 1
            continue
        out.append(Tokenized(p_ids, r.ids + [eos_id], ex.source))
    if examples and not out:
        raise DataError(
            f"{examples[0].source.rsplit(':', 1)[0]}: every example is longer than the "
            f"model context of {seq_len} tokens"
        )
    return out, dropped


@dataclass
class SFTBatch:
    x0: torch.Tensor  # (B, L) prompt + response + eos padding
    prompt_mask: torch.Tensor  # (B, L) True at prompt positions
    response_mask: (
        torch.Tensor
    )  # (B, L) True at response positions up to and including the first eos
    real_tokens: int  # prompt + response tokens before padding (for the padding-waste figure)


def collate(examples: list[Tokenized], eos_id: int) -> SFTBatch:
    L = max(len(e.prompt) + len(e.response) for e in examples)
    B = len(examples)
    x0 = torch.full((B, L), eos_id, dtype=torch.long)
    prompt_mask = torch.zeros(B, L, dtype=torch.bool)
    response_mask = torch.zeros(B, L, dtype=torch.bool)
    for b, e in enumerate(examples):
        n_p, n = len(e.prompt), len(e.prompt) + len(e.response)
        x0[b, :n] = torch.tensor(e.prompt + e.response)
        prompt_mask[b, :n_p] = True
        response_mask[b, n_p:n] = True
    real = sum(len(e.prompt) + len(e.response) for e in examples)
    return SFTBatch(x0, prompt_mask, response_mask, real)


class SFTLoader:
    """Epoch-permuted batches; within a window of 32 batches examples are sorted by length so a
    batch holds similar lengths (less padding), then the batches are shuffled. Deterministic per
    (seed, epoch); state is (epoch, consumed), like the pretraining loader."""

    def __init__(self, examples: list[Tokenized], batch_size: int, seed: int, eos_id: int) -> None:
        if len(examples) < batch_size:
            raise DataError(
                f"{len(examples)} training examples, fewer than one batch of {batch_size}; "
                "use a smaller --batch-size"
            )
        self.examples, self.batch_size, self.seed, self.eos_id = examples, batch_size, seed, eos_id
        self.epoch, self.consumed = 0, 0
        self._batches = self._plan(0)

    def _plan(self, epoch: int) -> list[list[int]]:
        from mdmctl.data.batches import mix

        g = torch.Generator().manual_seed(mix(self.seed, epoch))
        perm = torch.randperm(len(self.examples), generator=g).tolist()
        n = len(perm) // self.batch_size * self.batch_size
        window = self.batch_size * 32
        batches = []
        for s in range(0, n, window):
            chunk = sorted(
                perm[s : min(n, s + window)],
                key=lambda i: len(self.examples[i].prompt) + len(self.examples[i].response),
            )
            batches += [
                chunk[j : j + self.batch_size] for j in range(0, len(chunk), self.batch_size)
            ]
        order = torch.randperm(len(batches), generator=g).tolist()
        return [batches[i] for i in order]

    @property
    def batches_per_epoch(self) -> int:
        return len(self._batches)

    def next_batch(self) -> SFTBatch:
        if self.consumed >= len(self._batches):
            self.epoch, self.consumed = self.epoch + 1, 0
            self._batches = self._plan(self.epoch)
        idx = self._batches[self.consumed]
        self.consumed += 1
        return collate([self.examples[i] for i in idx], self.eos_id)

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "consumed": self.consumed,
            "seed": self.seed,
            "global_batch": self.batch_size,
            "examples": len(self.examples),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("examples") != len(self.examples):
            from mdmctl.errors import CompatibilityError

            raise CompatibilityError(
                f"cannot resume: the checkpoint's data had {state.get('examples')} training examples, "
                f"this data has {len(self.examples)}"
            )
        self.epoch, self.consumed = int(state["epoch"]), int(state["consumed"])
        self._batches = self._plan(self.epoch)
