"""The Hugging Face layout's JSON files, written from and read back into mdmctl's model config.

``config.json`` is a ``LlamaConfig`` (``model_type: llama``) plus what a masked diffusion model
needs and Llama has no field for: ``mask_token_id``, the objective, ``is_causal: false`` and an
``mdmctl`` block holding the exact mdmctl model config (so an import restores it bit for bit) and
how to load the model. Peers (LLaDA, Dream, SDAR) put ``mask_token_id`` in the same place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from mdmctl.config import SMDM_SIZES, ModelConfig
from mdmctl.errors import CompatibilityError
from mdmctl.tokenizer import TokenizerInfo

FORMAT_VERSION = 1
BOS_NAMES = ("<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>")
UNK_NAMES = ("<unk>", "[UNK]")
MDM_LOADING = (
    "Bidirectional masked diffusion model: load the body with transformers' LlamaModel, call it "
    "with a 4D all-zero float attention mask of shape (B, 1, L, L) (no causal mask), then "
    "logits = hidden_states @ lm_head.weight.T with logits[..., mask_token_id] = -inf. "
    "AutoModelForCausalLM would apply a causal mask, which is wrong for this model. "
    "'mdmctl import' reads this folder back."
)


@dataclass(frozen=True)
class SpecialTokens:
    """Token strings and ids for the tokenizer and generation files (None: not in the tokenizer)."""

    eos: tuple[str, int]
    pad: tuple[str, int]
    mask: tuple[str, int] | None
    bos: tuple[str, int] | None
    unk: tuple[str, int] | None

    @classmethod
    def of(cls, tok: Tokenizer, info: TokenizerInfo) -> SpecialTokens:
        def named(i: int) -> tuple[str, int]:
            return tok.id_to_token(i), i

        def first(names: tuple[str, ...]) -> tuple[str, int] | None:
            return next(((n, i) for n in names if (i := tok.token_to_id(n)) is not None), None)

        mask = named(info.mask_id) if info.mask_id >= 0 else None
        return cls(named(info.eos_id), named(info.pad_id), mask, first(BOS_NAMES), first(UNK_NAMES))


def config_json(
    cfg: ModelConfig, special: SpecialTokens, *, dtype: str, step: int, tokenizer_sha256: str
) -> dict[str, Any]:
    """HF ``config.json`` for an mdmctl model (transformers 4.x reads ``rope_theta``, 5.x
    ``rope_parameters``; both are written)."""
    mdm = cfg.objective == "mdm"
    out: dict[str, Any] = {
        "architectures": ["LlamaModel"] if mdm else ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_base,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_base},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "bos_token_id": special.bos[1] if special.bos else None,
        "eos_token_id": special.eos[1],
        "pad_token_id": special.pad[1],
        "torch_dtype": dtype,
        "is_causal": not mdm,
        "objective": cfg.objective,
    }
    if mdm:
        out["mask_token_id"] = cfg.mask_id
    out["mdmctl"] = {
        "format_version": FORMAT_VERSION,
        "objective": cfg.objective,
        "model_config": cfg.to_dict(),
        "step": step,
        "tokenizer_sha256": tokenizer_sha256,
        **(
            {
                "attention": "bidirectional",
                "noise_schedule": "linear (alpha_t = 1 - t)",
                "shift": False,
                "how_to_load": MDM_LOADING,
            }
            if mdm
            else {"attention": "causal"}
        ),
    }
    return out


def generation_config_json(cfg: ModelConfig, special: SpecialTokens) -> dict[str, Any]:
    """``generation_config.json``: ids and the sampler defaults of ``mdmctl sample``."""
    out: dict[str, Any] = {
        "eos_token_id": special.eos[1],
        "pad_token_id": special.pad[1],
        "do_sample": True,
        "temperature": 1.0,
        "max_new_tokens": min(256, cfg.seq_len),
    }
    if special.bos:
        out["bos_token_id"] = special.bos[1]
    if cfg.objective == "mdm":
        # Read by mdmctl (and by peers' samplers under these names); ignored by HF generate().
        out.update(mask_token_id=cfg.mask_id, steps=None, sampler="confidence", cfg_scale=0.0)
        out["steps_note"] = "steps: null means one token per step (steps = max_new_tokens)"
    return out


def tokenizer_files(cfg: ModelConfig, special: SpecialTokens) -> tuple[dict, dict]:
    """(``tokenizer_config.json``, ``special_tokens_map.json``) for a PreTrainedTokenizerFast."""
    roles = {"eos_token": special.eos, "pad_token": special.pad, "mask_token": special.mask,
             "bos_token": special.bos, "unk_token": special.unk}  # fmt: skip
    tokens = {role: v[0] for role, v in roles.items() if v is not None}
    conf = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": cfg.seq_len,
        "clean_up_tokenization_spaces": False,
        **tokens,
    }
    return conf, tokens


def model_config_from_hf(
    conf: dict[str, Any], path: Path, *, objective: str, seq_len: int | None
) -> ModelConfig:
    """An HF Llama ``config.json`` as an mdmctl model config (vocabulary and mask set later).

    Written by mdmctl: its exact config. Otherwise every field is checked against what mdmctl's
    network is (multi-head attention, SiLU, no biases, plain RoPE): anything else is refused by
    name instead of loading into a different function."""
    if "mdmctl" in conf and "model_config" in conf["mdmctl"]:
        cfg = ModelConfig.from_dict(conf["mdmctl"]["model_config"])
        return (
            cfg if seq_len is None else ModelConfig.from_dict({**cfg.to_dict(), "seq_len": seq_len})
        )

    def need(field: str) -> Any:
        if field not in conf:
            raise CompatibilityError(f"{path}: missing field '{field}'")
        return conf[field]

    def refuse(field: str, value: Any, rule: str) -> None:
        raise CompatibilityError(f"{path}: {field}={value!r}: {rule}")

    if conf.get("model_type") != "llama":
        refuse("model_type", conf.get("model_type"), "only 'llama' (mdmctl's architecture) imports")
    d, heads = int(need("hidden_size")), int(need("num_attention_heads"))
    if heads % (kv := int(conf.get("num_key_value_heads") or heads)):
        refuse("num_key_value_heads", kv, f"must divide num_attention_heads={heads}")
    if conf.get("head_dim") not in (None, d // heads):
        refuse("head_dim", conf["head_dim"], f"must be hidden_size / heads = {d // heads}")
    for field in ("attention_bias", "mlp_bias"):
        if conf.get(field):
            refuse(field, conf[field], "mdmctl's layers have no biases")
    if conf.get("hidden_act", "silu") != "silu":
        refuse("hidden_act", conf["hidden_act"], "mdmctl's MLP is SwiGLU (silu)")
    rope = conf.get("rope_parameters") or {}
    scaling = conf.get("rope_scaling") or {}
    for kind in (rope.get("rope_type"), scaling.get("rope_type"), scaling.get("type")):
        if kind not in (None, "default"):
            refuse("rope_type", kind, "only plain RoPE (rope_type 'default') is supported")
    return ModelConfig(
        name=smdm_size_name(int(need("num_hidden_layers")), d, int(need("intermediate_size"))),
        objective=objective,  # type: ignore[arg-type]
        n_layers=int(need("num_hidden_layers")),
        d_model=d,
        n_heads=heads,
        n_kv_heads=kv if kv != heads else None,
        d_ff=int(need("intermediate_size")),
        seq_len=seq_len or int(conf.get("max_position_embeddings", 2048)),
        rope_base=float(conf.get("rope_theta") or rope.get("rope_theta") or 10000.0),
        norm_eps=float(conf.get("rms_norm_eps", 1e-6)),
    )


def smdm_size_name(n_layers: int, d_model: int, d_ff: int) -> str:
    """The SMDM family name with these shapes ('1028M'), or 'custom'."""
    return next(
        (n for n, (nl, d, _, ff) in SMDM_SIZES.items() if (nl, d, ff) == (n_layers, d_model, d_ff)),
        "custom",
    )
