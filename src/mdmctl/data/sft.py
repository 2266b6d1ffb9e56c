"""Supervised fine-tuning data: prompt/response examples, their formats, and padded batches.

Formats (``--format auto`` picks by the fields of the first line):
- ``prompt-response``: jsonl with prompt / response fields (names set by --prompt-field /
  --response-field); the reversal-curse files (``prompt`` / ``completion``) are this format.
- ``messages``: chat jsonl, ``{"messages": [{"role", "content"}, ...]}``; the prompt is every turn
  before the last assistant turn, rendered ``USER: ...\\nASSISTANT: ``; the response is that turn.
- ``gsm8k``: jsonl ``question`` / ``answer`` (the answer ends with its ``#### N`` line).
- ``gsm8k-equations``: text lines ``question||<<eq>> <<eq>> #### N`` (augmented GSM8K).

Both GSM8K formats follow SMDM's ``sft/gsm8k_data.py`` exactly: two examples per problem,
``Question: q`` -> ``Answer: reasoning`` and ``Question: q`` ``Answer: reasoning`` -> ``####answer``
(the text after ``####`` as the file has it, the line's newline included for the .txt), each piece
tokenized on its own as SMDM's ``tokenizer(piece)`` does (with the tokenizer's own special tokens: a
Llama tokenizer adds ``<s>`` to each piece, mdmctl's BPE adds nothing). A problem whose second
example does not fit is dropped whole, as SMDM drops it.

Each example becomes ``prompt_ids`` and ``response_ids + [eos]``. Batches are drawn at random and
padded with eos (SMDM): to the longest row of each micro-batch (its reverse-curse and chat SFT), or
to a fixed length (``pad_to``; its GSM8K SFT pads to 256). For the MDM those eos tokens are response
positions (noised and scored), which is how it learns where an answer ends and to fill the rest of
its canvas with eos; for the ARM only the first eos is scored. Length-sorted batches (``batching=
"sorted"``) cut the padding, and with it that signal: measured on a toy task, an MDM trained on
sorted batches does not learn to stop (tests/test_sft.py). They are harmless for the ARM.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import torch

from mdmctl.config import Batching, SFTFormat
from mdmctl.errors import DataError

FORMATS: tuple[str, ...] = get_args(SFTFormat)
BATCHINGS: tuple[str, ...] = get_args(Batching)


GSM8K_FORMATS = ("gsm8k", "gsm8k-equations")
SMDM_GSM8K_LENGTH = 256
"""SMDM's GSM8K rows: padded, and longer problems dropped, at 256 tokens whatever the model's
context (``finetune_mdm_gsm8k.py``'s ``max_length``)."""


@dataclass(frozen=True, slots=True)
class Example:
    prompt_pieces: tuple[str, ...]  # tokenized one by one, then concatenated
    response: str
    source: str  # file:line
    group: str = ""
    """Examples of one group (the two of a GSM8K problem) share a split and are dropped together."""
    standalone: bool = False
    """Encode each piece as a standalone text, with the tokenizer's own special tokens (SMDM's
    ``tokenizer(piece)``); otherwise the text is encoded literally with none."""

    @property
    def prompt(self) -> str:
        return "".join(self.prompt_pieces)


def smdm_gsm8k_examples(question: str, solution: str, where: str) -> list[Example]:
    """SMDM's two training examples for one problem (``sft/gsm8k_data.py``): ``solution`` is
    ``reasoning####answer``; pieces are kept byte for byte (no stripping), as SMDM keeps them."""
    parts = solution.split("####")
    if len(parts) != 2:
        raise DataError(
            f"{where}: expected exactly one '####' in the solution, found {len(parts) - 1}"
        )
    q, thought, answer = "Question: " + question, "Answer: " + parts[0], "####" + parts[1]
    return [
        Example((q,), thought, where, group=question, standalone=True),
        Example((q, thought), answer, where, group=question, standalone=True),
    ]


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


def resolve_format(path: str | Path, fmt: str, prompt_field: str = "prompt") -> str:
    if fmt not in FORMATS:
        raise DataError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such file")
    return detect_format(p, prompt_field) if fmt == "auto" else fmt


def resolve_pad_to(pad_to: str, fmt: str, seq_len: int) -> int | None:
    """``--pad-to``: a length, ``context`` (the fine-tuning context), ``batch`` (each micro-batch's
    longest row; None) or ``auto``: SMDM's 256 for the GSM8K formats whatever the context
    (``finetune_mdm_gsm8k.py`` cuts every row at ``max_length = 256`` and its data drops longer
    problems; a context under 256 pads to the context), else ``batch`` (SMDM's other SFT
    scripts)."""
    if pad_to == "auto":
        if fmt in GSM8K_FORMATS:
            return min(SMDM_GSM8K_LENGTH, seq_len)
        pad_to = "batch"
    if pad_to == "batch":
        return None
    n = seq_len if pad_to == "context" else int(pad_to)
    if n > seq_len:
        raise DataError(f"--pad-to {n} exceeds the fine-tuning context of {seq_len} tokens")
    return n


def read_examples(
    path: str | Path,
    fmt: str = "auto",
    prompt_field: str = "prompt",
    response_field: str | None = None,
) -> list[Example]:
    """All examples of a file, each with its ``file:line``; bad lines are DataErrors."""
    p = Path(path)
    fmt = resolve_format(p, fmt, prompt_field)
    out: list[Example] = []
    for n, line in _lines(p):
        where = f"{p}:{n}"
        if fmt == "gsm8k-equations":
            if line.count("||") != 1:
                raise DataError(f"{where}: expected 'question||reasoning #### answer'")
            out += smdm_gsm8k_examples(*line.split("||"), where)
            continue
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
                q, a = _field(obj, "question", where), _field(obj, "answer", where)
                out += smdm_gsm8k_examples(q, a, where)
                continue
            else:
                rf = response_field or ("completion" if "completion" in obj else "response")
                prompt, response = _field(obj, prompt_field, where), _field(obj, rf, where)
        if not response.strip():
            raise DataError(f"{where}: empty response")
        out.append(Example((prompt,), response, where))
    if not out:
        raise DataError(f"{p}: no examples")
    return out


def is_val(ex: Example, val_fraction: float) -> bool:
    """Deterministic held-out split by the example's text (by its group when it has one)."""
    key = ex.group or ex.prompt + "\x00" + ex.response
    h = int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big")
    return h % 10000 < round(val_fraction * 10000)


@dataclass
class Tokenized:
    prompt: list[int]
    response: list[int]  # ends with eos
    source: str
    group: str = ""

    def __len__(self) -> int:
        return len(self.prompt) + len(self.response)


def encode_pieces(tok, pieces: list[str], standalone: bool) -> list[list[int]]:
    """Token ids of each piece on its own. ``standalone``: as ``tokenizer(piece)`` encodes a whole
    text (with the tokenizer's own special tokens, SMDM's GSM8K data); otherwise literally, with
    none. Either way a special-token string inside user text (e.g. '<|mask|>') stays text."""
    tok.encode_special_tokens = True
    try:
        return [e.ids for e in tok.encode_batch(pieces, add_special_tokens=standalone)]
    finally:
        tok.encode_special_tokens = False


def tokenize_examples(
    examples: list[Example],
    tok,
    eos_id: int,
    seq_len: int,
    overlong: str = "drop",
    bos: list[int] | None = None,
) -> tuple[list[Tokenized], int]:
    """Token ids per example. Examples longer than ``seq_len`` (prompt + response + eos) are
    dropped with the rest of their group and counted, or with ``overlong='error'`` reported with
    their file:line."""
    bos = bos or []
    toks = []
    for standalone in (False, True):
        idx = [i for i, e in enumerate(examples) if e.standalone == standalone]
        pieces = [p for i in idx for p in (*examples[i].prompt_pieces, examples[i].response)]
        ids = iter(encode_pieces(tok, pieces, standalone))
        for i in idx:
            ex = examples[i]
            p_ids = bos + [t for _ in ex.prompt_pieces for t in next(ids)]
            toks.append((i, Tokenized(p_ids, next(ids) + [eos_id], ex.source, ex.group)))
    toks = [t for _, t in sorted(toks, key=lambda x: x[0])]
    too_long = {t.group or t.source for t in toks if len(t) > seq_len}
    if too_long and overlong == "error":
        t = next(t for t in toks if len(t) > seq_len)
        what = (
            f"prompt is {len(t.prompt)} tokens"
            if len(t.prompt) >= seq_len
            else f"example is {len(t)} tokens"
        )
        raise DataError(f"{t.source}: {what}; model context is {seq_len}")
    out = [t for t in toks if (t.group or t.source) not in too_long]
    if examples and not out:
        raise DataError(
            f"{examples[0].source.rsplit(':', 1)[0]}: every example is longer than the "
            f"model context of {seq_len} tokens"
        )
    return out, len(toks) - len(out)


@dataclass
class SFTBatch:
    x0: torch.Tensor  # (B, L) prompt + response + eos padding
    prompt_mask: torch.Tensor  # (B, L) True at prompt positions
    response_mask: (
        torch.Tensor
    )  # (B, L) True at response positions up to and including the first eos
    lengths: torch.Tensor  # (B,) prompt + response + first eos, i.e. before padding

    @property
    def real_tokens(self) -> int:
        return int(self.lengths.sum())

    @property
    def pad_eos_per_row(self) -> float:
        """Mean number of padding eos after a row's own eos (the MDM's stop signal)."""
        return float(self.x0.shape[1] - self.lengths.float().mean())

    def rows(self, sl: slice, trim: bool) -> SFTBatch:
        """Rows ``sl``; with ``trim`` cut to their longest row, as SMDM cuts each micro-batch."""
        n = int(self.lengths[sl].max()) if trim else self.x0.shape[1]
        return SFTBatch(
            self.x0[sl, :n], self.prompt_mask[sl, :n], self.response_mask[sl, :n], self.lengths[sl]
        )


def collate(examples: list[Tokenized], eos_id: int, pad_to: int | None = None) -> SFTBatch:
    """Rows padded with eos to ``pad_to`` (default: the longest row)."""
    longest = max(len(e) for e in examples)
    L = pad_to or longest
    if longest > L:
        raise DataError(f"an example is {longest} tokens, longer than --pad-to {L}")
    B = len(examples)
    x0 = torch.full((B, L), eos_id, dtype=torch.long)
    prompt_mask = torch.zeros(B, L, dtype=torch.bool)
    response_mask = torch.zeros(B, L, dtype=torch.bool)
    for b, e in enumerate(examples):
        n_p, n = len(e.prompt), len(e)
        x0[b, :n] = torch.tensor(e.prompt + e.response)
        prompt_mask[b, :n_p] = True
        response_mask[b, n_p:n] = True
    lengths = torch.tensor([len(e) for e in examples])
    return SFTBatch(x0, prompt_mask, response_mask, lengths)


class SFTLoader:
    """Epoch-permuted batches, deterministic per (seed, epoch); state is (epoch, consumed), like
    the pretraining loader. ``random`` (default, SMDM): consecutive slices of the permutation, the
    tail dropped (SMDM's ``drop_last``). ``sorted``: within windows of 32 batches, examples sorted
    by length, then the batches shuffled (less padding; see the module docstring)."""

    def __init__(
        self,
        examples: list[Tokenized],
        batch_size: int,
        seed: int,
        eos_id: int,
        *,
        batching: Batching = "random",
        pad_to: int | None = None,
    ) -> None:
        if len(examples) < batch_size:
            raise DataError(
                f"{len(examples)} training examples, fewer than one batch of {batch_size}; "
                "use a smaller --batch-size"
            )
        if batching not in BATCHINGS:
            raise DataError(f"--batching: expected one of {', '.join(BATCHINGS)}, got {batching!r}")
        self.examples, self.batch_size, self.seed, self.eos_id = examples, batch_size, seed, eos_id
        self.batching, self.pad_to = batching, pad_to
        self.epoch, self.consumed = 0, 0
        self._batches = self._plan(0)

    def _plan(self, epoch: int) -> list[list[int]]:
        from mdmctl.data.batches import mix

        g = torch.Generator().manual_seed(mix(self.seed, epoch))
        perm = torch.randperm(len(self.examples), generator=g).tolist()
        n, bs = len(perm) // self.batch_size * self.batch_size, self.batch_size
        if self.batching == "random":
            return [perm[j : j + bs] for j in range(0, n, bs)]
        window = bs * 32
        batches = []
        for s in range(0, n, window):
            chunk = sorted(perm[s : min(n, s + window)], key=lambda i: len(self.examples[i]))
            batches += [chunk[j : j + bs] for j in range(0, len(chunk), bs)]
        order = torch.randperm(len(batches), generator=g).tolist()
        return [batches[i] for i in order]

    @property
    def batches_per_epoch(self) -> int:
        return len(self._batches)

    def mean_pad_eos(self, micro: int) -> float:
        """Mean padding eos per row over this epoch's batches, micro-batches of ``micro`` rows
        (each cut to its longest row unless ``pad_to`` fixes the length)."""
        total = 0
        for idx in self._batches:
            for s in range(0, len(idx), micro):
                lens = [len(self.examples[i]) for i in idx[s : s + micro]]
                total += sum((self.pad_to or max(lens)) - n for n in lens)
        return total / max(1, sum(len(b) for b in self._batches))

    def next_batch(self) -> SFTBatch:
        if self.consumed >= len(self._batches):
            self.epoch, self.consumed = self.epoch + 1, 0
            self._batches = self._plan(self.epoch)
        idx = self._batches[self.consumed]
        self.consumed += 1
        return collate([self.examples[i] for i in idx], self.eos_id, self.pad_to)

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
