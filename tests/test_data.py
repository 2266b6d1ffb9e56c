from __future__ import annotations

import json

import pytest
import torch

from mdmctl.data.batches import TokenWindows, TrainLoader
from mdmctl.data.readers import CorpusSpec, iter_documents
from mdmctl.data.shards import TokenizeConfig, read_manifest, tokenize_corpus
from mdmctl.errors import DataError
from mdmctl.tokenizer import load_tokenizer

from .conftest import make_docs


def _spec(p, **kw):
    return CorpusSpec(paths=(str(p),), **kw)


def test_bad_jsonl_line_names_file_and_line(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text('{"text": "ok"}\n{"text": "fine"}\n{oops\n')
    with pytest.raises(DataError, match=r"c\.jsonl:3: invalid JSON"):
        list(iter_documents(_spec(p)))
    p.write_text('{"text": "ok"}\n{"body": "x"}\n')
    with pytest.raises(DataError, match=r"c\.jsonl:2: missing key 'text'"):
        list(iter_documents(_spec(p)))
    p.write_text('{"text": 5}\n')
    with pytest.raises(DataError, match="expected string, got int"):
        list(iter_documents(_spec(p)))


def test_undecodable_line(tmp_path):
    p = tmp_path / "c.txt"
    p.write_bytes(b"good line\nbad \xff\xfe line\n")
    with pytest.raises(DataError, match=r"c\.txt:2: invalid UTF-8 at byte offset 4"):
        list(iter_documents(_spec(p)))


def test_empty_and_missing_corpus(tmp_path):
    p = tmp_path / "empty.jsonl"
    p.write_text("\n\n")
    with pytest.raises(DataError, match="corpus is empty"):
        tokenize_corpus(TokenizeConfig(corpus=_spec(p), out=str(tmp_path / "o"), vocab_size=300))
    with pytest.raises(DataError, match="no such file"):
        list(iter_documents(_spec(tmp_path / "nope.jsonl")))


def test_shards_round_trip(tmp_path, corpus_file):
    out = tmp_path / "d"
    m = tokenize_corpus(
        TokenizeConfig(
            corpus=_spec(corpus_file),
            out=str(out),
            vocab_size=400,
            val_fraction=0.1,
            shard_tokens=2000,
        )
    )
    meta = json.loads((out / "corpus.json").read_text())
    assert meta["dtype"] == "uint16"
    assert len(meta["splits"]["train"]["shards"]) > 1  # sharded, documents never split
    assert m.tokens["train"] + m.tokens["val"] == sum(
        s["tokens"] for sp in meta["splits"].values() for s in sp["shards"]
    )
    tok = load_tokenizer(out)
    from safetensors.torch import load_file

    docs = {d for d in make_docs(400)}
    decoded = set()
    for split in ("train", "val"):
        for s in meta["splits"][split]["shards"]:
            t = load_file(str(out / s["file"]))
            ids, offs = t["tokens"].to(torch.int64), t["doc_offsets"].tolist() + [len(t["tokens"])]
            for a, b in zip(offs[:-1], offs[1:], strict=True):
                assert ids[b - 1] == meta["tokenizer"]["eos_id"]
                decoded.add(tok.decode(ids[a : b - 1].tolist()))
    assert decoded == docs
    assert 0 < meta["splits"]["val"]["docs"] < 100


def test_split_is_deterministic(tmp_path, corpus_file):
    a = tokenize_corpus(
        TokenizeConfig(corpus=_spec(corpus_file), out=str(tmp_path / "a"), vocab_size=400)
    )
    b = tokenize_corpus(
        TokenizeConfig(corpus=_spec(corpus_file), out=str(tmp_path / "b"), vocab_size=400)
    )
    assert (
        a.meta["splits"]["val"]["shards"][0]["sha256"]
        == b.meta["splits"]["val"]["shards"][0]["sha256"]
    )
    assert a.meta["tokenizer"]["sha256"] == b.meta["tokenizer"]["sha256"]


def test_tiny_corpus_still_gets_a_val_split(tmp_path):
    p = tmp_path / "one.txt"
    p.write_text(make_docs(1)[0])
    m = tokenize_corpus(TokenizeConfig(corpus=_spec(p), out=str(tmp_path / "o"), vocab_size=300))
    assert m.tokens["val"] >= 1 and m.tokens["train"] > m.tokens["val"]


def test_parquet_matches_jsonl(tmp_path, corpus_file):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = [json.loads(line)["text"] for line in corpus_file.read_text().splitlines()]
    pq.write_table(pa.table({"text": docs}), tmp_path / "c.parquet")
    assert [t for t, _ in iter_documents(_spec(tmp_path / "c.parquet"))] == docs


def test_hub_offline_is_a_data_error():
    with pytest.raises(DataError, match="could not be loaded"):
        list(iter_documents(CorpusSpec(dataset="no-such-user/no-such-dataset")))


def test_builtin_corpus_is_real_and_deterministic():
    from mdmctl.data.builtin import iter_builtin_documents

    a = list(iter_builtin_documents())
    assert len(a) > 100 and sum(len(t) for t, _ in a) > 500_000
    assert a[:20] == list(iter_builtin_documents())[:20]


def test_windows_and_loader_state(corpus_dir):
    m = read_manifest(corpus_dir)
    w = TokenWindows(m, "train", 32)
    x, doc = w.window(3)
    assert x.shape == (32,) and doc[0] == 0 and bool((doc.diff() >= 0).all())
    a = TrainLoader(w, 4, seed=1)
    for _ in range(5):
        a.next_indices()
    state = a.state_dict()
    expect = [a.next_indices() for _ in range(3)]
    b = TrainLoader(w, 4, seed=1)
    b.load_state_dict(state)
    assert [b.next_indices() for _ in range(3)] == expect
    # one epoch visits each window at most once
    c = TrainLoader(w, 4, seed=2)
    seen = [i for _ in range(c.batches_per_epoch) for i in c.next_indices()]
    assert len(seen) == len(set(seen))


def test_corpus_smaller_than_batch(corpus_dir):
    w = TokenWindows(read_manifest(corpus_dir), "train", 32)
    with pytest.raises(DataError, match="fewer than one global batch"):
        TrainLoader(w, len(w) + 1, seed=0)


def test_corrupt_gzip_is_a_data_error(tmp_path):
    p = tmp_path / "c.jsonl.gz"
    p.write_bytes(b"\x1f\x8b\x08\x00" + b"garbage" * 10)
    with pytest.raises(DataError, match="cannot read"):
        list(iter_documents(_spec(p)))


def test_tokenize_keeps_foreign_files_and_literal_special_tokens(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"not ours")
    p = tmp_path / "c.jsonl"
    docs = make_docs(30) + ["the cat <|mask|> sat on the mat."]
    p.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    m = tokenize_corpus(TokenizeConfig(corpus=_spec(p), out=str(out), vocab_size=300))
    assert (out / "model.safetensors").read_bytes() == b"not ours"
    from safetensors.torch import load_file

    mask_id = m.meta["tokenizer"]["mask_id"]
    for split in ("train", "val"):
        for s in m.meta["splits"][split]["shards"]:
            assert not (load_file(str(out / s["file"]))["tokens"].to(torch.int64) == mask_id).any()


def test_loader_refuses_state_of_another_corpus(corpus_dir):
    from mdmctl.errors import CompatibilityError

    w = TokenWindows(read_manifest(corpus_dir), "train", 32)
    state = TrainLoader(w, 4, seed=1).state_dict()
    state["windows"] += 1
    with pytest.raises(CompatibilityError, match="training windows"):
        TrainLoader(w, 4, seed=1).load_state_dict(state)


def _copy_corpus(corpus_dir, tmp_path):
    import shutil

    out = tmp_path / "c"
    shutil.copytree(corpus_dir, out)
    return out


def _rewrite_shard(path, edit):
    """Rewrite a shard's tokens with ``edit`` and record the new sha256, as a foreign tool might."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from mdmctl.fileio import sha256_file

    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = f.metadata()
    edit(tensors["tokens"])
    save_file(tensors, str(path), metadata=meta)
    cj = path.parent / "corpus.json"
    m = json.loads(cj.read_text())
    for s in m["splits"]["train"]["shards"]:
        if s["file"] == path.name:
            s["sha256"] = sha256_file(path)
    cj.write_text(json.dumps(m))


def test_flipped_byte_in_a_shard_fails_the_hash(tmp_path, corpus_dir):
    from mdmctl.data.shards import verify_corpus
    from mdmctl.errors import CorpusIntegrityError

    out = _copy_corpus(corpus_dir, tmp_path)
    shard = out / "train-00000.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[:-7] + bytes([data[-7] ^ 1]) + data[-6:])
    m = read_manifest(out)  # cheap checks pass: header and sizes are intact
    with pytest.raises(
        CorpusIntegrityError, match=r"train-00000\.safetensors: sha256 mismatch"
    ) as e:
        verify_corpus(m)
    assert e.value.exit_code == 4 and isinstance(e.value, DataError)


def test_out_of_vocabulary_id_is_caught(tmp_path, corpus_dir):
    from mdmctl.data.shards import verify_corpus
    from mdmctl.errors import CorpusIntegrityError

    out = _copy_corpus(corpus_dir, tmp_path)
    vocab = json.loads((out / "corpus.json").read_text())["tokenizer"]["vocab_size"]
    _rewrite_shard(out / "train-00000.safetensors", lambda t: t.__setitem__(5, vocab + 3))
    m = read_manifest(out)
    verify_corpus(m)  # the hash matches the rewritten shard
    with pytest.raises(CorpusIntegrityError, match=f"token id {vocab + 3} at position 5"):
        verify_corpus(m, full=True)
    # without --verify-data the batch that holds it fails typed, not with an IndexError
    with pytest.raises(CorpusIntegrityError, match="outside the vocabulary"):
        TokenWindows(m, "train", 32).window(0)


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda d: d[: len(d) // 2], "unreadable or truncated shard"),
        (lambda d: b"\xff" * 8 + d[8:], "unreadable or truncated shard"),
    ],
    ids=["truncated", "bad-header"],
)
def test_truncated_or_bad_header_shard(tmp_path, corpus_dir, damage, message):
    from mdmctl.errors import CorpusIntegrityError

    out = _copy_corpus(corpus_dir, tmp_path)
    shard = out / "val-00000.safetensors"
    shard.write_bytes(damage(shard.read_bytes()))
    with pytest.raises(CorpusIntegrityError, match=rf"val-00000\.safetensors: {message}") as e:
        read_manifest(out)
    assert e.value.exit_code == 4


def test_shard_of_another_length_or_dtype(tmp_path, corpus_dir):
    from mdmctl.errors import CorpusIntegrityError

    out = _copy_corpus(corpus_dir, tmp_path)
    m = json.loads((out / "corpus.json").read_text())
    m["splits"]["train"]["shards"][0]["tokens"] += 1
    m["splits"]["train"]["tokens"] += 1
    (out / "corpus.json").write_text(json.dumps(m))
    with pytest.raises(CorpusIntegrityError, match="header does not match corpus.json"):
        read_manifest(out)


@pytest.mark.parametrize("field", ["splits", "tokenizer", "dtype"])
def test_corpus_json_missing_a_field(tmp_path, corpus_dir, field):
    from mdmctl.errors import CorpusIntegrityError

    out = _copy_corpus(corpus_dir, tmp_path)
    m = json.loads((out / "corpus.json").read_text())
    del m[field]
    (out / "corpus.json").write_text(json.dumps(m))
    with pytest.raises(CorpusIntegrityError, match=f"missing or invalid field '{field}'") as e:
        read_manifest(out)
    assert e.value.exit_code == 4 and "corpus.json" in str(e.value)
