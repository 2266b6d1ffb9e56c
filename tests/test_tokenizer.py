from __future__ import annotations

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from mdmctl.errors import TokenizerError
from mdmctl.tokenizer import EOS_TOKEN, MASK_TOKEN, PAD_TOKEN, fingerprint, prepare, train_bpe

from .conftest import make_docs


def test_trained_bpe_has_special_tokens():
    tok = train_bpe(make_docs(50), 350)
    info = prepare(tok, add_missing=False)
    assert (info.eos_id, info.mask_id, info.pad_id) == (
        tok.token_to_id(EOS_TOKEN),
        tok.token_to_id(MASK_TOKEN),
        tok.token_to_id(PAD_TOKEN),
    )
    assert info.added == ()
    text = "the cat sat on the mat"
    assert tok.decode(tok.encode(text).ids) == text


def _plain_tokenizer(specials):
    tok = Tokenizer(models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(specials)
    return tok


def test_missing_mask_is_added_and_reported():
    tok = _plain_tokenizer(["</s>"])
    info = prepare(tok)
    assert info.added == (MASK_TOKEN,)  # no pad token: pads are eos, nothing added for them
    assert tok.token_to_id(MASK_TOKEN) == info.mask_id and info.pad_id == info.eos_id
    assert info.vocab_size == 5


def test_missing_eos_is_an_error():
    with pytest.raises(TokenizerError, match="no end-of-text token"):
        prepare(_plain_tokenizer([]))
    info = prepare(_plain_tokenizer(["<my_end>"]), eos_token="<my_end>")
    assert info.eos_id == 3


def test_fingerprint_stable_and_sensitive(tmp_path):
    tok = train_bpe(make_docs(50), 350)
    tok.save(str(tmp_path / "t.json"))
    again = Tokenizer.from_file(str(tmp_path / "t.json"))
    assert fingerprint(tok) == fingerprint(again)
    assert fingerprint(train_bpe(make_docs(50), 360)) != fingerprint(tok)
