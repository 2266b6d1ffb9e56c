"""The open MDM families in their own layouts: LLaDA (GSAI-ML/LLaDA-8B-*) and Dream
(Dream-org/Dream-v0-*-7B), read into mdmctl's model (docs/interop.md).

Both are mdmctl's network with other names:

- LLaDA (OLMo-style code, ``model_type: llada``): ``model.transformer.wte``,
  ``blocks.N.{attn_norm, q_proj, k_proj, v_proj, attn_out, ff_norm, ff_proj, up_proj, ff_out}``,
  ``ln_f``, head ``model.transformer.ff_out``; the MLP is ``ff_out(silu(ff_proj x) * up_proj x)``;
  bidirectional attention, RoPE base 500,000, mask id 126336.
- Dream (Qwen2-style, ``model_type: Dream``): Llama's names plus biases on ``q_proj``, ``k_proj``,
  ``v_proj`` (not ``o_proj``), grouped-query attention (28 query, 4 key/value heads at 7B),
  bidirectional attention, RoPE base 1,000,000, mask id 151666, and shifted logits (position i
  is predicted from position i-1's output).

Anything else a config says (fused projections, biases elsewhere, tied embeddings, ALiBi, scaled
RoPE) is refused by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mdmctl.config import ModelConfig
from mdmctl.errors import CompatibilityError
from mdmctl.interop import keys

Tensor = torch.Tensor

DEFAULT_MAX_SEQ_LEN = 4096
"""Context given to an imported model when --seq-len is not: Dream's config allows 131,072, and
the RoPE tables are sized by it."""

LLADA_TOP = {
    "tok_emb.weight": "model.transformer.wte.weight",
    "norm.weight": "model.transformer.ln_f.weight",
    "head.weight": "model.transformer.ff_out.weight",
}
LLADA_LAYER = {
    "attn_norm.weight": "attn_norm.weight",
    "wo.weight": "attn_out.weight",
    "mlp_norm.weight": "ff_norm.weight",
    "w1.weight": "ff_proj.weight",  # the gate: silu(ff_proj x) * up_proj x
    "w2.weight": "up_proj.weight",
    "w3.weight": "ff_out.weight",
}
LLADA_QKV = ("q_proj.weight", "k_proj.weight", "v_proj.weight")
DREAM_QKV_BIAS = ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias")


def family(conf: dict[str, Any]) -> str | None:
    """'llada', 'dream' or None (another layout) from ``model_type`` and ``architectures``."""
    kind = str(conf.get("model_type", "")).lower()
    arch = " ".join(conf.get("architectures") or []).lower()
    if kind == "llada" or "llada" in arch:
        return "llada"
    if kind == "dream" or "dreammodel" in arch:
        return "dream"
    return None


def _need(conf: dict[str, Any], path: Path, field: str) -> Any:
    if field not in conf:
        raise CompatibilityError(f"{path}: missing field '{field}'")
    return conf[field]


def _refuse(path: Path, field: str, value: Any, rule: str) -> None:
    raise CompatibilityError(f"{path}: {field}={value!r}: {rule}")


def llada_config(conf: dict[str, Any], path: Path, seq_len: int | None) -> ModelConfig:
    """LLaDA's ``config.json`` as an mdmctl MDM config (vocabulary set from the weights)."""
    for field, want in [("block_type", "llama"), ("activation_type", "silu"),
                        ("layer_norm_type", "rms"), ("rope", True)]:  # fmt: skip
        if conf.get(field, want) != want:
            _refuse(path, field, conf[field], f"mdmctl reads LLaDA's {want!r} only")
    for field in ("include_bias", "include_qkv_bias", "bias_for_layer_norm", "alibi",
                  "attention_layer_norm", "scale_logits", "weight_tying"):  # fmt: skip
        if conf.get(field):
            _refuse(path, field, conf[field], "not in mdmctl's network (LLaDA 8B has it off)")
    d, heads = int(_need(conf, path, "d_model")), int(_need(conf, path, "n_heads"))
    kv = int(conf.get("n_kv_heads") or heads)
    d_ff = conf.get("mlp_hidden_size") or int(conf.get("mlp_ratio", 4)) * d
    return ModelConfig(
        name="custom",
        objective="mdm",
        n_layers=int(_need(conf, path, "n_layers")),
        d_model=d,
        n_heads=heads,
        n_kv_heads=kv if kv != heads else None,
        d_ff=int(d_ff),
        seq_len=seq_len or min(int(conf.get("max_sequence_length", 4096)), DEFAULT_MAX_SEQ_LEN),
        rope_base=float(conf.get("rope_theta", 10000.0)),
        norm_eps=float(conf.get("rms_norm_eps", 1e-5)),
        mask_id=int(conf.get("mask_token_id", 126336)),
    )


def dream_config(conf: dict[str, Any], path: Path, seq_len: int | None) -> ModelConfig:
    """Dream's (Qwen2-style) ``config.json`` as an mdmctl MDM config."""
    if conf.get("tie_word_embeddings"):
        _refuse(path, "tie_word_embeddings", True, "tied embeddings are not supported yet")
    if conf.get("use_sliding_window"):
        _refuse(path, "use_sliding_window", True, "mdmctl's attention has no sliding window")
    if conf.get("hidden_act", "silu") != "silu":
        _refuse(path, "hidden_act", conf["hidden_act"], "mdmctl's MLP is SwiGLU (silu)")
    if conf.get("rope_scaling"):
        _refuse(path, "rope_scaling", conf["rope_scaling"], "only plain RoPE is supported")
    d = int(_need(conf, path, "hidden_size"))
    heads = int(_need(conf, path, "num_attention_heads"))
    kv = int(conf.get("num_key_value_heads") or heads)
    max_len = int(conf.get("max_position_embeddings", DEFAULT_MAX_SEQ_LEN))
    return ModelConfig(
        name="custom",
        objective="mdm",
        n_layers=int(_need(conf, path, "num_hidden_layers")),
        d_model=d,
        n_heads=heads,
        n_kv_heads=kv if kv != heads else None,
        d_ff=int(_need(conf, path, "intermediate_size")),
        seq_len=seq_len or min(max_len, DEFAULT_MAX_SEQ_LEN),
        rope_base=float(conf.get("rope_theta", 10000.0)),
        norm_eps=float(conf.get("rms_norm_eps", 1e-6)),
        mask_id=int(conf.get("mask_token_id", 151666)),
        qkv_bias=True,
        shift_logits=True,
    )


def from_llada(state: dict[str, Tensor], n_layers: int) -> dict[str, Tensor]:
    """LLaDA names -> mdmctl: q, k, v stacked into ``wqkv``."""
    want = [*LLADA_TOP.values()] + [
        f"model.transformer.blocks.{i}.{n}"
        for i in range(n_layers)
        for n in (*LLADA_QKV, *LLADA_LAYER.values())
    ]
    keys.check_keys(state, want, "LLaDA")
    out = {a: state[b] for a, b in LLADA_TOP.items()}
    for i in range(n_layers):
        ours, theirs = f"blocks.{i}.", f"model.transformer.blocks.{i}."
        out[ours + "wqkv.weight"] = torch.cat([state[theirs + n] for n in LLADA_QKV], dim=0)
        for a, b in LLADA_LAYER.items():
            out[ours + a] = state[theirs + b]
    return out


def from_dream(state: dict[str, Tensor], n_layers: int) -> dict[str, Tensor]:
    """Dream (Qwen2) names -> mdmctl: Llama's, plus the q/k/v biases stacked into ``wqkv.bias``."""
    biases = {
        f"blocks.{i}.wqkv.bias": torch.cat(
            [state[f"model.layers.{i}.{n}"] for n in DREAM_QKV_BIAS], dim=0
        )
        for i in range(n_layers)
        if all(f"model.layers.{i}.{n}" in state for n in DREAM_QKV_BIAS)
    }
    if len(biases) != n_layers:
        raise CompatibilityError("not a Dream state dict as expected (q/k/v biases missing)")
    rest = {k: v for k, v in state.items() if not k.endswith(DREAM_QKV_BIAS)}
    return {**keys.from_hf(rest, n_layers, layout="Dream"), **biases}


def read(kind: str, conf: dict[str, Any], path: Path, state: dict[str, Tensor],
         seq_len: int | None) -> tuple[ModelConfig, dict[str, Tensor]]:  # fmt: skip
    """(config, mdmctl state dict) of a LLaDA or Dream folder's config and weights."""
    if kind == "llada":
        cfg = llada_config(conf, path, seq_len)
        return cfg, from_llada(state, cfg.n_layers)
    cfg = dream_config(conf, path, seq_len)
    return cfg, from_dream(state, cfg.n_layers)


def to_llada(state: dict[str, Tensor], n_layers: int) -> dict[str, Tensor]:
    """mdmctl -> LLaDA names (``from_llada`` reversed)."""
    out = {b: state[a] for a, b in LLADA_TOP.items()}
    for i in range(n_layers):
        ours, theirs = f"blocks.{i}.", f"model.transformer.blocks.{i}."
        for name, t in zip(LLADA_QKV, keys.split_qkv(state[ours + "wqkv.weight"]), strict=True):
            out[theirs + name] = t
        for a, b in LLADA_LAYER.items():
            out[theirs + b] = state[ours + a]
    return {k: v.contiguous() for k, v in out.items()}


def to_dream(state: dict[str, Tensor], n_layers: int) -> dict[str, Tensor]:
    """mdmctl -> Dream names (``from_dream`` reversed)."""
    weights = {k: v for k, v in state.items() if not k.endswith("wqkv.bias")}
    out = keys.to_hf(weights, n_layers)
    for i in range(n_layers):
        parts = keys.split_qkv(state[f"blocks.{i}.wqkv.bias"], width=state["norm.weight"].numel())
        for name, t in zip(DREAM_QKV_BIAS, parts, strict=True):
            out[f"model.layers.{i}.{name}"] = t.contiguous()
    return out


def write(kind: str, state: dict[str, Tensor], n_layers: int) -> dict[str, Tensor]:
    """The family's state dict of an mdmctl one."""
    return to_llada(state, n_layers) if kind == "llada" else to_dream(state, n_layers)
