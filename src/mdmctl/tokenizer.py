"""Tokenizers: train a byte-level BPE or load one (a ``tokenizer.json``, a folder in the Hugging
Face layout, or a hub name); resolve mask / eos / pad ids.

The mask id is always explicit: the id of the tokenizer's mask token (added when missing, and said
so), never something derived from the vocabulary size at run time. A tokenizer without a pad token
pads with eos (HF's convention; SMDM pads with eos too): pads are only canvas filler that attention
never sees, and adding a token would change the vocabulary that released weights were trained
with. The fingerprint is the sha256 of the canonical tokenizer JSON; corpora and checkpoints record
it and refuse to mix tokenizers.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from mdmctl.errors import TokenizerError

MASK_TOKEN = "<|mask|>"
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"

# Names other tokenizers use for the same roles, tried in order when loading a tokenizer.json.
MASK_NAMES = (MASK_TOKEN, "[MASK]", "<mask>", "<|mdm_mask|>", "<MASK>")
EOS_NAMES = (EOS_TOKEN, "</s>", "<eos>", "[EOS]", "<|eot_id|>", "<|end_of_text|>", "[SEP]")
PAD_NAMES = (PAD_TOKEN, "[PAD]", "<pad>", "<|finetune_right_pad_id|>")


@dataclass(frozen=True, slots=True)
class TokenizerInfo:
    vocab_size: int
    mask_id: int
    """-1: none (an imported ARM's tokenizer)."""
    eos_id: int
    pad_id: int
    """The pad token, or eos when the tokenizer has none."""
    sha256: str
    added: tuple[str, ...] = ()
    """Special tokens mdmctl had to add to a loaded tokenizer."""


def train_bpe(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Byte-level BPE with eos, mask and pad as special tokens (ids 0, 1, 2)."""
    if vocab_size < 300:
        raise TokenizerError(f"--vocab-size {vocab_size}: byte-level BPE needs at least 300")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, MASK_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_nonempty(texts), trainer=trainer)
    return tok


def _nonempty(texts: Iterable[str]) -> Iterator[str]:
    for t in texts:
        if t:
            yield t


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A ``tokenizer.json``, or a folder holding one (the Hugging Face layout)."""
    return Tokenizer.from_file(str(tokenizer_file(path)))


def tokenizer_file(spec: str | Path) -> Path:
    """The ``tokenizer.json`` a ``--tokenizer`` value names: a file, a folder holding one, or a
    Hugging Face hub name (``TinyLlama/TinyLlama_v1.1``; downloaded once into the HF cache)."""
    p = Path(spec)
    if p.is_dir():
        p = p / "tokenizer.json"
        if not p.is_file():
            raise TokenizerError(
                f"{p}: not found (mdmctl reads tokenizer.json; a folder with only a SentencePiece "
                "tokenizer.model needs converting: "
                "AutoTokenizer.from_pretrained(dir).save_pretrained(dir))"
            )
    elif not p.exists() and _HUB_NAME.fullmatch(str(spec)) and not str(spec).endswith(".json"):
        p = _download(str(spec))
    if not p.is_file():
        raise TokenizerError(f"{p}: tokenizer file not found")
    try:
        Tokenizer.from_file(str(p))
    except Exception as e:  # tokenizers raises plain Exception subclasses
        raise TokenizerError(f"{p}: not a valid tokenizer.json ({e})") from e
    return p


_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _download(repo_id: str) -> Path:
    """``tokenizer.json`` of a hub model, through huggingface_hub (honours HF_HUB_OFFLINE and the
    cache, so an offline machine uses a copy downloaded earlier)."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id, "tokenizer.json"))
    except Exception as e:  # offline, unknown repo, gated repo, no tokenizer.json: one message
        raise TokenizerError(
            f"--tokenizer {repo_id}: no local file or folder of that name, and the Hugging Face "
            f"hub did not provide its tokenizer.json ({type(e).__name__}: {str(e).splitlines()[0]})"
        ) from None


def _find(tok: Tokenizer, names: Iterable[str]) -> int | None:
    for name in names:
        i = tok.token_to_id(name)
        if i is not None:
            return i
    return None


def prepare(
    tok: Tokenizer,
    *,
    eos_token: str | None = None,
    mask_token: str | None = None,
    add_missing: bool = True,
    need_mask: bool = True,
) -> TokenizerInfo:
    """Resolve (and if allowed add) the special tokens mdmctl needs; mutates ``tok``.

    eos is required: it separates packed documents and ends samples. A missing mask token is added
    as a new special token when ``add_missing`` (a tokenizer file given by the user); without
    ``need_mask`` (an ARM's tokenizer) a missing one is left out (mask_id -1). No pad token: eos.
    """
    added: list[str] = []
    eos_id = _find(tok, [eos_token] if eos_token else EOS_NAMES)
    if eos_id is None:
        want = eos_token or " / ".join(EOS_NAMES[:4])
        raise TokenizerError(
            f"tokenizer has no end-of-text token ({want}); name it with --eos-token"
        )
    mask_id = _find(tok, [mask_token] if mask_token else MASK_NAMES)
    if mask_id is None and need_mask:
        if not add_missing:
            raise TokenizerError("tokenizer has no mask token; re-run 'mdmctl tokenize' to add one")
        tok.add_special_tokens([mask_token or MASK_TOKEN])
        mask_id = tok.token_to_id(mask_token or MASK_TOKEN)
        added.append(mask_token or MASK_TOKEN)
    pad_id = _find(tok, PAD_NAMES)
    return TokenizerInfo(
        vocab_size=tok.get_vocab_size(with_added_tokens=True),
        mask_id=-1 if mask_id is None else mask_id,
        eos_id=eos_id,
        pad_id=eos_id if pad_id is None else pad_id,
        sha256=fingerprint(tok),
        added=tuple(added),
    )


def fingerprint(tok: Tokenizer) -> str:
    """sha256 of the canonical (sorted-key) tokenizer JSON."""
    canon = json.dumps(json.loads(tok.to_str()), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()


def info_from_file(path: str | Path, need_mask: bool = True) -> tuple[Tokenizer, TokenizerInfo]:
    """Load a tokenizer that mdmctl wrote (corpus or checkpoint); nothing is added. An imported
    ARM's tokenizer may lack a mask token (``need_mask=False``)."""
    tok = load_tokenizer(path)
    return tok, prepare(tok, add_missing=False, need_mask=need_mask)


def encode_literal(tok: Tokenizer, text: str) -> list[int]:
    """Token ids of user text, special-token strings (e.g. a literal '<|mask|>') kept as text."""
    tok.encode_special_tokens = True
    try:
        return tok.encode(text, add_special_tokens=False).ids
    finally:
        tok.encode_special_tokens = False
