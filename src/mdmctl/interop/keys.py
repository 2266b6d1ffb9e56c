"""Parameter names and layouts: mdmctl <-> Hugging Face Llama <-> SMDM (lit_gpt).

All three are the same network (pre-norm RMSNorm, rotate-half RoPE, SwiGLU, untied head); only names
and the packing of q, k and v differ:

- mdmctl: one ``wqkv`` whose rows are three stacked blocks [q; k; v], (H·Dh, D) for q and
  (Hkv·Dh, D) for k and v (Hkv = H unless the model has grouped-query attention).
- HF Llama: separate ``q_proj``, ``k_proj``, ``v_proj``. Both use rotate-half RoPE, so no row
  permutation is needed (the permutation in Meta -> HF conversions is for Meta's interleaved RoPE).
- SMDM: one fused ``attn.attn`` laid out per query group: its model views the (B, T, 3D) projection
  as (B, T, groups, q_per_kv + 2, Dh), so the rows run head by head, each head's q, k, v in turn.
  Every SMDM size is multi-head (groups = heads), i.e. rows (H, 3, Dh).

SwiGLU: mdmctl's and SMDM's ``w3(silu(w1 x) * w2 x)`` is HF's ``down(silu(gate x) * up x)``.
"""

from __future__ import annotations

import torch

from mdmctl.errors import CompatibilityError

Tensor = torch.Tensor

# mdmctl name -> HF name, outside and inside the blocks (qkv handled apart).
HF_TOP = {
    "tok_emb.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "head.weight": "lm_head.weight",
}
HF_LAYER = {
    "attn_norm.weight": "input_layernorm.weight",
    "wo.weight": "self_attn.o_proj.weight",
    "mlp_norm.weight": "post_attention_layernorm.weight",
    "w1.weight": "mlp.gate_proj.weight",
    "w2.weight": "mlp.up_proj.weight",
    "w3.weight": "mlp.down_proj.weight",
}
HF_QKV = ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight")

SMDM_TOP = {
    "tok_emb.weight": "transformer.wte.weight",
    "norm.weight": "transformer.ln_f.weight",
    "head.weight": "lm_head.weight",
}
SMDM_LAYER = {
    "attn_norm.weight": "norm_1.weight",
    "wo.weight": "attn.proj.weight",
    "mlp_norm.weight": "norm_2.weight",
    "w1.weight": "mlp.swiglu.w1.weight",
    "w2.weight": "mlp.swiglu.w2.weight",
    "w3.weight": "mlp.swiglu.w3.weight",
}
SMDM_QKV = "attn.attn.weight"


def count_layers(keys, prefix: str) -> int:
    """Number of blocks named ``<prefix><i>.`` (0 .. n-1 must all be present)."""
    idx = {int(k[len(prefix) :].split(".", 1)[0]) for k in keys if k.startswith(prefix)}
    n = len(idx)
    if idx != set(range(n)):
        raise CompatibilityError(f"layers {sorted(set(range(max(idx) + 1)) - idx)} are missing")
    return n


def to_hf(state: dict[str, Tensor], n_layers: int) -> dict[str, Tensor]:
    """mdmctl state dict -> HF Llama names, in model order (embedding, layers, norm, head)."""
    out = {HF_TOP["tok_emb.weight"]: state["tok_emb.weight"]}
    for i in range(n_layers):
        ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
        for name, t in zip(HF_QKV, split_qkv(state[ours + "wqkv.weight"]), strict=True):
            out[theirs + name] = t
        for a, b in HF_LAYER.items():
            out[theirs + b] = state[ours + a]
    out[HF_TOP["norm.weight"]] = state["norm.weight"]
    out[HF_TOP["head.weight"]] = state["head.weight"]
    return {k: v.contiguous() for k, v in out.items()}


def split_qkv(w: Tensor, width: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """``wqkv``'s weight (D + 2·Hkv·Dh, D), or its bias with ``width`` D, as (q, k, v)."""
    d = w.shape[1] if width is None else width
    kv = (w.shape[0] - d) // 2
    q, k, v = w.split([d, kv, kv], dim=0)
    return q, k, v


def from_hf(
    hf: dict[str, Tensor], n_layers: int, layout: str = "Hugging Face Llama"
) -> dict[str, Tensor]:
    """HF Llama names -> mdmctl. A tied model (no ``lm_head.weight``) gets the embedding as head.
    ``layout`` names the source in errors."""
    hf = {k: v for k, v in hf.items() if not k.endswith("rotary_emb.inv_freq")}  # old buffers
    if HF_TOP["head.weight"] not in hf and HF_TOP["tok_emb.weight"] in hf:
        hf = {**hf, HF_TOP["head.weight"]: hf[HF_TOP["tok_emb.weight"]]}
    want = [*HF_TOP.values()] + [
        f"model.layers.{i}.{n}" for i in range(n_layers) for n in (*HF_QKV, *HF_LAYER.values())
    ]
    check_keys(hf, want, layout)
    out = {a: hf[b] for a, b in HF_TOP.items()}
    for i in range(n_layers):
        ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
        out[ours + "wqkv.weight"] = torch.cat([hf[theirs + n] for n in HF_QKV], dim=0)
        for a, b in HF_LAYER.items():
            out[ours + a] = hf[theirs + b]
    return out


def check_smdm(sm: dict[str, Tensor], n_layers: int) -> None:
    """Every SMDM name present for ``n_layers`` blocks, and nothing else."""
    want = [*SMDM_TOP.values()] + [
        f"transformer.h.{i}.{n}" for i in range(n_layers) for n in (SMDM_QKV, *SMDM_LAYER.values())
    ]
    check_keys(sm, want, "SMDM")


def from_smdm(sm: dict[str, Tensor], n_layers: int, n_heads: int) -> dict[str, Tensor]:
    """SMDM (lit_gpt) names -> mdmctl, unpacking the per-head fused QKV into [q; k; v]."""
    check_smdm(sm, n_layers)
    out = {a: sm[b] for a, b in SMDM_TOP.items()}
    for i in range(n_layers):
        ours, theirs = f"blocks.{i}.", f"transformer.h.{i}."
        out[ours + "wqkv.weight"] = smdm_qkv_to_stacked(sm[theirs + SMDM_QKV], n_heads)
        for a, b in SMDM_LAYER.items():
            out[ours + a] = sm[theirs + b]
    return out


def smdm_qkv_to_stacked(w: Tensor, n_heads: int) -> Tensor:
    """(3D, D) rows ordered (head, q|k|v, Dh) -> rows ordered (q|k|v, head, Dh)."""
    three_d, d = w.shape
    if three_d != 3 * d:
        raise CompatibilityError(
            f"fused QKV has {three_d} rows for width {d}: grouped-query attention (fewer key/value "
            "heads than query heads) is not supported; every SMDM size uses one per query head"
        )
    head_dim = d // n_heads
    return w.view(n_heads, 3, head_dim, d).transpose(0, 1).reshape(3 * d, d).contiguous()


def check_keys(state: dict[str, Tensor], want: list[str], layout: str) -> None:
    missing = [k for k in want if k not in state]
    extra = sorted(set(state) - set(want))
    if missing or extra:
        parts = [f"missing {len(missing)}: {missing[:4]}"] if missing else []
        parts += [f"unexpected {len(extra)}: {extra[:4]}"] if extra else []
        raise CompatibilityError(f"not a {layout} state dict as expected ({'; '.join(parts)})")
