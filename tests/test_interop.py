"""mdmctl export / import: the Hugging Face layout both ways, SMDM's released layout, tokenizers.

All weights are synthetic or from the tiny session checkpoints: no download."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers

from mdmctl.checkpoint import load_model
from mdmctl.errors import CheckpointError, CompatibilityError, ConfigError, TokenizerError
from mdmctl.interop import export_hf, import_model
from mdmctl.interop.files import parse_size, read_weights
from mdmctl.interop.keys import smdm_qkv_to_stacked
from mdmctl.tokenizer import MASK_TOKEN, prepare, tokenizer_file

from .conftest import run

transformers = pytest.importorskip("transformers", reason="transformers is a test-only extra")


def _logits(step_dir, idx):
    model, *_ = load_model(str(step_dir), device="cpu", attention="sdpa")
    with torch.no_grad():
        return model(idx)


def _idx(vocab: int, shape=(2, 12)) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("objective", ["mdm", "arm"])
def test_round_trip_is_bit_identical(ckpts, tmp_path, objective):
    src = ckpts[objective]
    hf_dir = export_hf(str(src), tmp_path / "hf").out
    back = import_model(hf_dir, tmp_path / "back")
    assert back.step_dir.name == src.name  # the step travels in config.json
    for name in ("model.safetensors", "tokenizer.json"):
        assert (back.step_dir / name).read_bytes() == (src / name).read_bytes(), name


def test_export_layout_and_sharding(ckpts, tmp_path):
    out = export_hf(str(ckpts["mdm"]), tmp_path / "one").out
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
                 "tokenizer_config.json", "special_tokens_map.json"):  # fmt: skip
        assert (out / name).is_file(), name
    conf = json.loads((out / "config.json").read_text())
    assert conf["model_type"] == "llama" and conf["is_causal"] is False
    assert conf["mask_token_id"] == conf["mdmctl"]["model_config"]["mask_id"]
    assert "LlamaModel" in conf["mdmctl"]["how_to_load"]
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["mask_token_id"] == conf["mask_token_id"] and gen["sampler"] == "confidence"
    sharded = export_hf(str(ckpts["mdm"]), tmp_path / "shards", max_shard_size="60KB").out
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert not (sharded / "model.safetensors").exists()
    one, many = read_weights(out), read_weights(sharded)
    assert index["metadata"]["total_size"] == sum(t.numel() * 4 for t in one.values())
    assert one.keys() == many.keys() and all(torch.equal(one[k], many[k]) for k in one)
    back = import_model(sharded, tmp_path / "back")
    assert (back.step_dir / "model.safetensors").read_bytes() == (
        ckpts["mdm"] / "model.safetensors"
    ).read_bytes()


def test_exported_arm_is_llama_for_causal_lm(ckpts, tmp_path):
    out = export_hf(str(ckpts["arm"]), tmp_path / "hf").out
    llama = transformers.LlamaForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    idx = _idx(llama.config.vocab_size)
    with torch.no_grad():
        theirs = llama(idx).logits
    torch.testing.assert_close(theirs, _logits(ckpts["arm"], idx), atol=1e-5, rtol=1e-5)
    # The tokenizer files load as a fast tokenizer with the same ids.
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    ours = Tokenizer.from_file(str(out / "tokenizer.json"))
    text = "the cat sat on the mat."
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == ours.encode(text).ids
    assert hf_tok.eos_token_id == llama.config.eos_token_id


def test_lm_evals_hflm_scores_the_exported_arm_as_mdmctl_does(ckpts, tmp_path):
    """lm-eval's own HFLM loads an exported ARM (the eval and test extras carry accelerate,
    which it needs) and gives a request the log-likelihood mdmctl's ARM gives the same ids."""
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    out = export_hf(str(ckpts["arm"]), tmp_path / "hf").out
    lm = HFLM(pretrained=str(out), device="cpu", batch_size=1)
    context, continuation = "the cat", " sat on the mat"
    [(theirs, _)] = lm.loglikelihood([Instance("loglikelihood", {}, (context, continuation), 0)])
    ctx, cont = lm.tok_encode(context), lm.tok_encode(continuation)
    logp = _logits(ckpts["arm"], torch.tensor([ctx + cont])).log_softmax(-1)[0]
    ours = sum(float(logp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont))
    assert theirs == pytest.approx(ours, abs=1e-4)


def test_exported_mdm_through_llama_model_with_a_bidirectional_mask(ckpts, tmp_path):
    out = export_hf(str(ckpts["mdm"]), tmp_path / "hf").out
    conf = json.loads((out / "config.json").read_text())
    body = transformers.LlamaModel.from_pretrained(out, attn_implementation="eager").eval()
    head = read_weights(out)["lm_head.weight"]
    idx = _idx(conf["vocab_size"])
    idx[:, 3:7] = conf["mask_token_id"]
    full = torch.zeros(idx.shape[0], 1, idx.shape[1], idx.shape[1])  # attend everywhere
    with torch.no_grad():
        theirs = body(idx, attention_mask=full).last_hidden_state @ head.T
        plain = body(idx).last_hidden_state @ head.T
    for t in (theirs, plain):
        t[..., conf["mask_token_id"]] = float("-inf")
    ours = _logits(ckpts["mdm"], idx)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)  # right under every version
    # Without the mask: transformers 5 reads the export's `is_causal: false` and attends both ways
    # (docs/interop.md); releases that ignore it apply a causal mask, which changes the logits.
    reads_is_causal = int(transformers.__version__.split(".")[0]) >= 5
    assert conf["is_causal"] is False
    assert torch.allclose(plain, ours, atol=1e-5) == reads_is_causal


def test_import_plain_hf_llama(tmp_path, ckpts):
    """A Llama written by transformers (tied embeddings, no mdmctl block) imports as an ARM."""
    src = ckpts["arm"]
    vocab = Tokenizer.from_file(str(src / "tokenizer.json")).get_vocab_size()
    cfg = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=48, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(3)
    llama = transformers.LlamaForCausalLM(cfg).eval()
    llama.save_pretrained(tmp_path / "llama")
    (tmp_path / "llama" / "tokenizer.json").write_bytes((src / "tokenizer.json").read_bytes())
    r = import_model(tmp_path / "llama", tmp_path / "imported")
    assert r.model["objective"] == "arm" and r.model["seq_len"] == 48 and r.added_rows == 0
    idx = _idx(vocab)
    with torch.no_grad():
        theirs = llama(idx).logits
    torch.testing.assert_close(_logits(r.step_dir, idx), theirs, atol=1e-5, rtol=1e-5)
    # The same weights as the start of an MDM: the tokenizer keeps its mask, no row is added.
    m = import_model(tmp_path / "llama", tmp_path / "as-mdm", objective="mdm")
    assert m.model["objective"] == "mdm" and m.model["mask_id"] >= 0


def test_grouped_query_llama_both_ways(tmp_path, ckpts):
    """A Llama with grouped-query attention (4 query heads, 2 key/value heads) written by
    transformers imports with transformers' logits, and exports back to the same tensors."""
    src = ckpts["arm"]
    vocab = Tokenizer.from_file(str(src / "tokenizer.json")).get_vocab_size()
    cfg = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=48,
        tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(4)
    llama = transformers.LlamaForCausalLM(cfg).eval()
    llama.save_pretrained(tmp_path / "gqa")
    (tmp_path / "gqa" / "tokenizer.json").write_bytes((src / "tokenizer.json").read_bytes())
    r = import_model(tmp_path / "gqa", tmp_path / "imported")
    assert r.model["n_kv_heads"] == 2
    idx = _idx(vocab)
    with torch.no_grad():
        theirs = llama(idx).logits
    torch.testing.assert_close(_logits(r.step_dir, idx), theirs, atol=1e-5, rtol=1e-5)
    out = export_hf(str(r.step_dir), tmp_path / "again").out
    assert json.loads((out / "config.json").read_text())["num_key_value_heads"] == 2
    again = read_weights(out)
    for name, t in llama.state_dict().items():
        assert torch.equal(again[name], t), name


def test_import_refuses_what_mdmctl_cannot_run(tmp_path, ckpts):
    out = export_hf(str(ckpts["arm"]), tmp_path / "hf").out
    conf = json.loads((out / "config.json").read_text())
    del conf["mdmctl"]
    for field, value, match in [
        ("num_key_value_heads", 3, "must divide num_attention_heads"),
        ("model_type", "mistral", "model_type"),
        ("mlp_bias", True, "biases"),
        ("rope_scaling", {"rope_type": "llama3", "factor": 8.0}, "rope_type"),
    ]:
        (out / "config.json").write_text(json.dumps({**conf, field: value}))
        with pytest.raises(CompatibilityError, match=match):
            import_model(out, tmp_path / f"x-{field}")
        assert not (tmp_path / f"x-{field}").exists()


# --- SMDM ----------------------------------------------------------------------------------------

V, D, H, FF, LAYERS = 40, 32, 4, 64, 2  # a custom SMDM-shaped MDM: embedding V + 1 rows, head V


def _smdm_state(mdm: bool = True) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)

    def w(*shape):
        return torch.randn(*shape, generator=g) * 0.2

    sm = {"transformer.wte.weight": w(V + mdm, D), "transformer.ln_f.weight": 1 + w(D),
          "lm_head.weight": w(V, D)}  # fmt: skip
    for i in range(LAYERS):
        p = f"transformer.h.{i}."
        sm |= {p + "norm_1.weight": 1 + w(D), p + "attn.attn.weight": w(3 * D, D),
               p + "attn.proj.weight": w(D, D), p + "norm_2.weight": 1 + w(D),
               p + "mlp.swiglu.w1.weight": w(FF, D), p + "mlp.swiglu.w2.weight": w(FF, D),
               p + "mlp.swiglu.w3.weight": w(D, FF)}  # fmt: skip
    return sm


def _smdm_forward(sm, idx, causal=False, eps=1e-5, base=10000.0):
    """SMDM's TransEncoder written out: the fused QKV viewed per query group (groups = heads, so
    (H, q_per_kv + 2 = 3, hs)), flash-attn's non-interleaved rotary, xformers' SwiGLU."""
    B, T = idx.shape
    hs = D // H
    inv = 1.0 / base ** (torch.arange(0, hs, 2).float() / hs)
    ang = torch.outer(torch.arange(T).float(), inv)[None, :, None]  # (1, T, 1, hs/2)

    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    def rope(t):
        a, b = t[..., : hs // 2], t[..., hs // 2 :]
        return torch.cat([a * ang.cos() - b * ang.sin(), a * ang.sin() + b * ang.cos()], -1)

    x = sm["transformer.wte.weight"][idx]
    for i in range(LAYERS):
        p = f"transformer.h.{i}."
        qkv = (rms(x, sm[p + "norm_1.weight"]) @ sm[p + "attn.attn.weight"].T).view(B, T, H, 3, hs)
        q, k, v = rope(qkv[..., 0, :]), rope(qkv[..., 1, :]), qkv[..., 2, :]
        s = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(hs)
        if causal:
            s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        y = torch.einsum("bhqk,bkhd->bqhd", s.softmax(-1), v).reshape(B, T, D)
        x = x + y @ sm[p + "attn.proj.weight"].T
        h = rms(x, sm[p + "norm_2.weight"])
        gate, up = h @ sm[p + "mlp.swiglu.w1.weight"].T, h @ sm[p + "mlp.swiglu.w2.weight"].T
        x = x + (F.silu(gate) * up) @ sm[p + "mlp.swiglu.w3.weight"].T
    return rms(x, sm["transformer.ln_f.weight"]) @ sm["lm_head.weight"].T


def _llama_like_tokenizer(tmp_path):
    """V tokens with Llama-2's specials and no mask token (the mask becomes id V, as in SMDM)."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, V)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    tok.save(str(tmp_path / "tokenizer.json"))
    return tmp_path / "tokenizer.json"


@pytest.mark.parametrize("mdm", [True, False])
def test_smdm_import_matches_a_forward_written_the_smdm_way(tmp_path, mdm):
    sm = _smdm_state(mdm)
    save_file(sm, str(tmp_path / "smdm.safetensors"))
    tok = _llama_like_tokenizer(tmp_path)
    r = import_model(tmp_path / "smdm.safetensors", tmp_path / "run", tokenizer=str(tok),
                     n_heads=H, seq_len=32)  # fmt: skip
    assert r.layout == "smdm" and r.model["objective"] == ("mdm" if mdm else "arm")
    assert r.model["mask_id"] == (V if mdm else -1) and r.model["vocab_size"] == V + mdm
    assert r.added_tokens == ([MASK_TOKEN] if mdm else []) and r.added_rows == 0
    idx = _idx(V, (2, 16))
    if mdm:
        idx[:, 4:9] = V  # the mask id
    ours = _logits(r.step_dir, idx)
    torch.testing.assert_close(ours[..., :V], _smdm_forward(sm, idx, causal=not mdm),
                               atol=1e-4, rtol=1e-4)  # fmt: skip
    if mdm:
        assert torch.isneginf(ours[..., V]).all()


def test_smdm_qkv_is_per_head_not_three_blocks():
    # Row r of head h's q / k / v slice holds the value 100·h + 10·j + r, j = 0, 1, 2 for q, k, v.
    heads, hs = 2, 2
    rows = [100 * h + 10 * j + r for h in range(heads) for j in range(3) for r in range(hs)]
    w = torch.tensor(rows, dtype=torch.float32)[:, None].expand(-1, heads * hs)
    stacked = smdm_qkv_to_stacked(w, heads)[:, 0].tolist()
    assert stacked == [0, 1, 100, 101, 10, 11, 110, 111, 20, 21, 120, 121]
    with pytest.raises(CompatibilityError, match="grouped-query"):
        smdm_qkv_to_stacked(torch.zeros(10, 4), 2)


def test_smdm_import_errors(tmp_path):
    save_file(_smdm_state(), str(tmp_path / "smdm.safetensors"))
    tok = str(_llama_like_tokenizer(tmp_path))
    with pytest.raises(ConfigError, match="no SMDM size; pass --n-heads"):
        import_model(tmp_path / "smdm.safetensors", tmp_path / "a", tokenizer=tok)
    with pytest.raises(ConfigError, match="pass --tokenizer"):
        import_model(tmp_path / "smdm.safetensors", tmp_path / "b", n_heads=H)
    with pytest.raises(ConfigError, match="holds an SMDM MDM"):
        import_model(tmp_path / "smdm.safetensors", tmp_path / "c", tokenizer=tok, n_heads=H,
                     objective="arm")  # fmt: skip
    (tmp_path / "w.bin").write_bytes(b"\x80\x04")
    with pytest.raises(CheckpointError, match="pickle"):
        import_model(tmp_path / "w.bin", tmp_path / "d", tokenizer=tok)


def test_smdm_family_sizes_are_recognised():
    from mdmctl.config import SMDM_SIZES
    from mdmctl.interop.hf import smdm_size_name

    for name, (n_layers, d, _, ff) in SMDM_SIZES.items():
        assert smdm_size_name(n_layers, d, ff) == name
    assert smdm_size_name(3, 32, 64) == "custom"


# --- tokenizers, sizes, CLI ----------------------------------------------------------------------


def test_tokenizer_spec_file_folder_and_hub(tmp_path, monkeypatch):
    tok = _llama_like_tokenizer(tmp_path)
    assert tokenizer_file(tok) == tok and tokenizer_file(tmp_path) == tok
    (tmp_path / "empty").mkdir()
    with pytest.raises(TokenizerError, match="tokenizer.model needs converting"):
        tokenizer_file(tmp_path / "empty")
    # A hub name goes through huggingface_hub (offline here: a typed error, not a traceback) ...
    with pytest.raises(TokenizerError, match="did not provide its tokenizer.json"):
        tokenizer_file("no-such-org/no-such-model")
    # ... and uses the file it returns.
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo, name: str(tok))
    assert tokenizer_file("TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T") == tok


def test_missing_pad_is_eos_and_only_the_mask_is_added(tmp_path):
    tok = Tokenizer.from_file(str(_llama_like_tokenizer(tmp_path)))
    info = prepare(tok)
    assert info.added == (MASK_TOKEN,) and info.mask_id == V and info.pad_id == info.eos_id == 2
    arm = prepare(Tokenizer.from_file(str(tmp_path / "tokenizer.json")), need_mask=False)
    assert arm.added == () and arm.mask_id == -1 and arm.vocab_size == V


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9 and parse_size("2GiB") == 2 * 2**30
    assert parse_size("1.5MB") == 1_500_000 and parse_size("4096") == 4096
    with pytest.raises(ConfigError, match="--max-shard-size"):
        parse_size("lots")


def test_cli_export_import(ckpts, tmp_path):
    r = run("export", "--checkpoint", ckpts["mdm"], "--out", tmp_path / "hf", "--json")
    assert json.loads(r.stdout)["objective"] == "mdm"
    run("export", "--checkpoint", ckpts["mdm"], "--out", tmp_path / "hf", code=2)  # exists
    r = run("import", tmp_path / "hf", "--out", tmp_path / "back", "--json")
    assert json.loads(r.stdout)["layout"] == "hf"
    before = (tmp_path / "back" / "config.json").read_bytes()
    # A failed import over an existing run leaves it as it was.
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    run("import", tmp_path / "bad", "--out", tmp_path / "back", "--overwrite", code=4)
    assert (tmp_path / "back" / "config.json").read_bytes() == before
    run("sample", "--checkpoint", tmp_path / "back", "--length", "4", "--device", "cpu")
    r = run("runs", tmp_path, "--json")
    assert {x["kind"] for x in json.loads(r.stdout)} == {"import"}


def test_out_never_replaces_the_source(ckpts, tmp_path):
    run_dir = ckpts["mdm"].parent.parent
    with pytest.raises(ConfigError, match="holds the source"):
        export_hf(str(ckpts["mdm"]), run_dir, overwrite=True)
    assert (ckpts["mdm"] / "model.safetensors").is_file()
    out = export_hf(str(ckpts["mdm"]), tmp_path / "hf").out
    with pytest.raises(ConfigError, match="holds the source"):
        import_model(out, tmp_path, overwrite=True)
    save_file(_smdm_state(), str(tmp_path / "smdm.safetensors"))
    with pytest.raises(ConfigError, match="even head size"):
        import_model(tmp_path / "smdm.safetensors", tmp_path / "x", n_heads=3,
                     tokenizer=str(_llama_like_tokenizer(tmp_path)))  # fmt: skip


# --- LLaDA and Dream (their own layouts, written here from their published modeling code) -------

FV, FD, FH, FFF = 48, 32, 4, 64  # vocabulary (embedding rows), width, heads, MLP width
F_MASK = 44


def _family_tokenizer(tmp_path, mask_name: str):
    """A WordLevel tokenizer with the family's end-of-text and mask tokens (mask at F_MASK)."""
    vocab = {f"w{i}": i for i in range(FV - 4)}
    vocab.update({"<|endoftext|>": FV - 5, mask_name: F_MASK})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<|endoftext|>", mask_name])
    tok.save(str(tmp_path / "tokenizer.json"))


def _w(g, *shape):
    return torch.randn(*shape, generator=g) * 0.2


def _reference_forward(idx, emb, layers, norm, head, *, theta, kv_heads, shift):
    """Bidirectional pre-norm transformer, rotate-half RoPE, key/value head h // (H / Hkv), SwiGLU;
    ``layers``: per block (attn_norm, wq, wk, wv, bq, bk, bv, wo, mlp_norm, gate, up, down)."""
    B, T = idx.shape
    hs = FD // FH

    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * w

    inv = 1.0 / theta ** (torch.arange(0, hs, 2).float() / hs)
    ang = torch.arange(T).float()[:, None] * inv
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)

    def rope(t):  # (B, T, h, hs)
        return (
            t * cos[:, None] + torch.cat([-t[..., hs // 2 :], t[..., : hs // 2]], -1) * sin[:, None]
        )

    x = emb[idx]
    for an, wq, wk, wv, bq, bk, bv, wo, mn, gate, up, down in layers:
        h = rms(x, an)
        q = rope((h @ wq.T + bq).view(B, T, FH, hs))
        k = rope((h @ wk.T + bk).view(B, T, kv_heads, hs))
        v = (h @ wv.T + bv).view(B, T, kv_heads, hs)
        k, v = (t.repeat_interleave(FH // kv_heads, dim=2) for t in (k, v))
        s = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(hs)
        x = x + torch.einsum("bhqk,bkhd->bqhd", s.softmax(-1), v).reshape(B, T, FD) @ wo.T
        m = rms(x, mn)
        x = x + (F.silu(m @ gate.T) * (m @ up.T)) @ down.T
    logits = rms(x, norm) @ head.T
    return torch.cat([logits[:, :1], logits[:, :-1]], 1) if shift else logits


def _assert_round_trip(folder, imported, state, tmp_path):
    """Export back to the family's layout: its tensors, names and config; imported again, the
    same checkpoint bytes."""
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ x }}"}))
    first = import_model(folder, tmp_path / "first")
    assert (first.step_dir / "model.safetensors").read_bytes() == (
        imported.step_dir / "model.safetensors"
    ).read_bytes()
    back = export_hf(str(first.step_dir), tmp_path / "back")
    theirs = read_weights(back.out)
    assert sorted(theirs) == sorted(state)
    for name, t in state.items():
        assert torch.equal(theirs[name], t), name
    for name in ("config.json", "tokenizer_config.json"):
        assert json.loads((back.out / name).read_text()) == json.loads((folder / name).read_text())
    again = import_model(back.out, tmp_path / "again")
    assert (again.step_dir / "model.safetensors").read_bytes() == (
        first.step_dir / "model.safetensors"
    ).read_bytes()


def test_llada_layout_imports_with_its_forward(tmp_path):
    g = torch.Generator().manual_seed(11)
    P, layers, state = "model.transformer.", [], {}
    for i in range(2):
        b = f"{P}blocks.{i}."
        t = {n: _w(g, *s) for n, s in [
            ("q_proj.weight", (FD, FD)), ("k_proj.weight", (FD, FD)), ("v_proj.weight", (FD, FD)),
            ("attn_out.weight", (FD, FD)), ("ff_proj.weight", (FFF, FD)),
            ("up_proj.weight", (FFF, FD)), ("ff_out.weight", (FD, FFF))]}  # fmt: skip
        t["attn_norm.weight"], t["ff_norm.weight"] = 1 + _w(g, FD), 1 + _w(g, FD)
        state.update({b + n: v for n, v in t.items()})
        z = torch.zeros(FD)
        layers.append((t["attn_norm.weight"], t["q_proj.weight"], t["k_proj.weight"],
                       t["v_proj.weight"], z, z, z, t["attn_out.weight"], t["ff_norm.weight"],
                       t["ff_proj.weight"], t["up_proj.weight"], t["ff_out.weight"]))  # fmt: skip
    state.update({P + "wte.weight": _w(g, FV, FD), P + "ln_f.weight": 1 + _w(g, FD),
                  P + "ff_out.weight": _w(g, FV, FD)})  # fmt: skip
    folder = tmp_path / "llada"
    folder.mkdir()
    save_file(state, str(folder / "model.safetensors"))
    conf = {"model_type": "llada", "architectures": ["LLaDAModelLM"], "d_model": FD,
            "n_heads": FH, "n_kv_heads": FH, "n_layers": 2, "mlp_hidden_size": FFF,
            "embedding_size": FV, "vocab_size": FV, "rope_theta": 500000.0, "rms_norm_eps": 1e-5,
            "block_type": "llama", "activation_type": "silu", "include_bias": False,
            "weight_tying": False, "max_sequence_length": 64, "mask_token_id": F_MASK}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(conf))
    _family_tokenizer(folder, "<|mdm_mask|>")
    r = import_model(folder, tmp_path / "run")
    assert r.layout == "llada" and r.model["mask_id"] == F_MASK and r.model["seq_len"] == 64
    assert r.model["rope_base"] == 500000.0 and r.model["vocab_size"] == FV
    idx = _idx(FV - 5, (2, 16))
    idx[:, 3:8] = F_MASK
    ours = _logits(r.step_dir, idx)
    ref = _reference_forward(idx, state[P + "wte.weight"], layers, state[P + "ln_f.weight"],
                             state[P + "ff_out.weight"], theta=500000.0, kv_heads=FH,
                             shift=False)  # fmt: skip
    keep = torch.arange(FV) != F_MASK
    torch.testing.assert_close(ours[..., keep], ref[..., keep], atol=1e-5, rtol=1e-5)
    _assert_round_trip(folder, r, state, tmp_path)
    (folder / "config.json").write_text(json.dumps({**conf, "include_qkv_bias": True}))
    with pytest.raises(CompatibilityError, match="include_qkv_bias"):
        import_model(folder, tmp_path / "refused")
    with pytest.raises(ConfigError, match="holds a llada MDM"):
        import_model(folder, tmp_path / "arm", objective="arm")


def test_dream_layout_imports_with_its_forward(tmp_path):
    """Dream: Qwen2 names, q/k/v biases, 2 key/value heads for 4 query heads, shifted logits."""
    g = torch.Generator().manual_seed(12)
    kv, hs, layers, state = 2, FD // FH, [], {}
    for i in range(2):
        b = f"model.layers.{i}."
        t = {n: _w(g, *s) for n, s in [
            ("self_attn.q_proj.weight", (FD, FD)), ("self_attn.k_proj.weight", (kv * hs, FD)),
            ("self_attn.v_proj.weight", (kv * hs, FD)), ("self_attn.q_proj.bias", (FD,)),
            ("self_attn.k_proj.bias", (kv * hs,)), ("self_attn.v_proj.bias", (kv * hs,)),
            ("self_attn.o_proj.weight", (FD, FD)), ("mlp.gate_proj.weight", (FFF, FD)),
            ("mlp.up_proj.weight", (FFF, FD)), ("mlp.down_proj.weight", (FD, FFF))]}  # fmt: skip
        t["input_layernorm.weight"] = 1 + _w(g, FD)
        t["post_attention_layernorm.weight"] = 1 + _w(g, FD)
        state.update({b + n: v for n, v in t.items()})
        a = "self_attn."
        layers.append((t["input_layernorm.weight"], t[a + "q_proj.weight"], t[a + "k_proj.weight"],
                       t[a + "v_proj.weight"], t[a + "q_proj.bias"], t[a + "k_proj.bias"],
                       t[a + "v_proj.bias"], t[a + "o_proj.weight"],
                       t["post_attention_layernorm.weight"], t["mlp.gate_proj.weight"],
                       t["mlp.up_proj.weight"], t["mlp.down_proj.weight"]))  # fmt: skip
    state.update({"model.embed_tokens.weight": _w(g, FV, FD), "model.norm.weight": 1 + _w(g, FD),
                  "lm_head.weight": _w(g, FV, FD)})  # fmt: skip
    folder = tmp_path / "dream"
    folder.mkdir()
    save_file(state, str(folder / "model.safetensors"))
    conf = {"model_type": "Dream", "architectures": ["DreamModel"], "hidden_size": FD,
            "num_attention_heads": FH, "num_key_value_heads": kv, "num_hidden_layers": 2,
            "intermediate_size": FFF, "vocab_size": FV, "rope_theta": 1000000.0,
            "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "hidden_act": "silu",
            "max_position_embeddings": 131072, "mask_token_id": F_MASK}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(conf))
    _family_tokenizer(folder, "<|mask|>")
    r = import_model(folder, tmp_path / "run")
    assert r.layout == "dream" and r.model["n_kv_heads"] == kv and r.model["qkv_bias"]
    assert r.model["shift_logits"] and r.model["seq_len"] == 4096  # capped, not 131072
    idx = _idx(FV - 5, (2, 16))
    idx[:, 3:8] = F_MASK
    ours = _logits(r.step_dir, idx)
    ref = _reference_forward(idx, state["model.embed_tokens.weight"], layers,
                             state["model.norm.weight"], state["lm_head.weight"],
                             theta=1000000.0, kv_heads=kv, shift=True)  # fmt: skip
    keep = torch.arange(FV) != F_MASK
    torch.testing.assert_close(ours[..., keep], ref[..., keep], atol=1e-5, rtol=1e-5)
    _assert_round_trip(folder, r, state, tmp_path)
    del state["model.layers.1.self_attn.k_proj.bias"]
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(CompatibilityError, match="q/k/v biases missing"):
        import_model(folder, tmp_path / "refused")
