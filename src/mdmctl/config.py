"""Run configuration: frozen dataclasses, named model sizes, TOML run files. No torch import here.

Resolution order: dataclass defaults < size preset < ``--config FILE.toml`` < explicit CLI flags.
Unknown keys and wrong types are errors (``ConfigError``, exit 2) with a suggestion.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from mdmctl.errors import ConfigError, suggest

Objective = Literal["mdm", "arm"]
AttentionBackend = Literal["auto", "xformers", "sdpa"]
FlopsConvention = Literal["paper", "full"]
Parallel = Literal["auto", "none", "ddp", "fsdp"]
LossHead = Literal["full", "scored", "chunked"]
PARALLEL_CHOICES: tuple[str, ...] = ("auto", "none", "ddp", "fsdp")

# SMDM's model family (lit_gpt/config.py, "Diff_LLaMA_<N>M"), named by non-embedding parameters:
# name -> (n_layers, d_model, n_heads, d_ff). Context 2048 in SMDM; Llama-2 tokenizer there.
SMDM_SIZES: dict[str, tuple[int, int, int, int]] = {
    "6M": (6, 256, 4, 1024),
    "19M": (8, 384, 6, 1536),
    "34M": (8, 512, 8, 2048),
    "48M": (9, 576, 9, 2304),
    "66M": (10, 640, 10, 2560),
    "75M": (16, 640, 8, 1600),
    "85M": (13, 640, 10, 2560),
    "113M": (12, 768, 12, 3072),
    "142M": (15, 768, 12, 3072),
    "170M": (18, 768, 12, 3072),
    "180M": (14, 896, 14, 3584),
    "206M": (16, 896, 14, 3584),
    "231M": (18, 896, 14, 3584),
    "268M": (16, 1024, 16, 4096),
    "302M": (18, 1024, 16, 4096),
    "336M": (20, 1024, 16, 4096),
    "472M": (18, 1280, 10, 5120),
    "551M": (21, 1280, 10, 5120),
    "571M": (18, 1408, 11, 5632),
    "629M": (24, 1280, 10, 5120),
    "666M": (21, 1408, 11, 5632),
    "717M": (19, 1536, 12, 6144),
    "761M": (24, 1408, 11, 5632),
    "831M": (22, 1536, 12, 6144),
    "944M": (25, 1536, 12, 6144),
    "1028M": (20, 1792, 14, 7168),
    "1233M": (24, 1792, 14, 7168),
    "1476M": (22, 2048, 16, 8192),
    "1678M": (25, 2048, 16, 8192),
    "2121M": (28, 2176, 17, 8704),
}

# CPU-sized presets (not in SMDM): for tests, smoke runs and the built-in default.
TINY_SIZES: dict[str, tuple[int, int, int, int, int]] = {
    # name -> (n_layers, d_model, n_heads, d_ff, seq_len)
    "tiny": (2, 64, 2, 256, 64),
    "mini": (4, 128, 4, 512, 256),
    "small": (6, 192, 6, 768, 256),
}

MODEL_SIZES: tuple[str, ...] = tuple(TINY_SIZES) + tuple(SMDM_SIZES)

# Defaults that depend on the size: the CPU sizes train longer at a higher rate than SMDM's (whose
# code uses 2e-4).
CPU_STEPS, SMDM_STEPS = 2000, 1000
CPU_LR, SMDM_LR = 3e-3, 2e-4


def suggest_size(name: str) -> str:
    """'; did you mean X?' for an unknown size. A parameter count ('20M', '1.2B') gets the SMDM
    size nearest in log-parameters (19M, not the string-closest 206M); other names get the
    closest spelling."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([mMbB])\s*", name)
    if m is None:
        return suggest(name, MODEL_SIZES)
    millions = float(m.group(1)) * (1000.0 if m.group(2) in "bB" else 1.0)
    if millions <= 0:
        return ""
    nearest = min(SMDM_SIZES, key=lambda s: abs(math.log(int(s[:-1]) / millions)))
    return f"; did you mean '{nearest}'?"


def option(default: Any, help: str, **cli: Any) -> Any:
    """A config field that is also a command-line option: its help (and ``min``, ``max``, and
    ``default_help`` where the default is computed) live with the field, and ``cli/options.py``
    builds the option from them, so an option's default and help exist in one place. A default
    of ``...`` makes the field (and the option) required."""
    if default is ...:
        return field(metadata={"help": help, **cli})
    return field(default=default, metadata={"help": help, **cli})


def check_finite(obj: Any, prefix: str) -> None:
    """Reject inf and nan in every float field of a config dataclass, naming the field.

    Range checks written as ``x > 0`` let ``inf`` through (and ``nan`` through ``x < 0``); an
    infinite lr then fails only at the first save, and writes ``Infinity`` into metrics.jsonl.
    ``prefix`` is ``"train."``-style for config sections, ``"--"`` for command-line options.
    """
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            name = f.name.replace("_", "-") if prefix == "--" else f.name
            raise ConfigError(f"{prefix}{name}: must be a finite number, got {value}")


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelConfig:
    """LLaMA-style transformer shared by the MDM and the ARM (docs/method.md §2)."""

    name: str = "custom"
    objective: Objective = option("mdm", "mdm (masked diffusion) or arm (autoregressive baseline).")
    n_layers: int = option(2, "Transformer blocks.", min=1, default_help="the size's")
    d_model: int = option(64, "Model width.", min=1, default_help="the size's")
    n_heads: int = option(2, "Attention heads.", min=1, default_help="the size's")
    d_ff: int = option(256, "MLP hidden width.", min=1, default_help="the size's")
    seq_len: int = option(
        64,
        "Context length.",
        min=8,
        default_help="the size's ("
        + ", ".join(f"{n} {s[4]}" for n, s in TINY_SIZES.items())
        + ", SMDM sizes 2048)",
    )
    vocab_size: int = 0
    """Embedding rows: the tokenizer's vocabulary (which contains the mask token, if any)."""
    mask_id: int = -1
    """Mask token id (MDM); the output head never predicts it. -1 for an ARM."""
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    n_kv_heads: int | None = None
    """Key/value heads (grouped-query attention, Dream: 28 query heads, 4 key/value heads at 7B);
    None: one per query head."""
    qkv_bias: bool = False
    """Biases on the query, key and value projections (Dream, after Qwen2)."""
    shift_logits: bool = False
    """The output at position i predicts token i+1 (Dream, initialised from an autoregressive
    model): the logits of position i are read from position i-1's hidden state (position 0 reads
    its own)."""

    def __post_init__(self) -> None:
        check_finite(self, "model.")
        if self.objective not in ("mdm", "arm"):
            raise ConfigError(f"model.objective: expected 'mdm' or 'arm', got {self.objective!r}")
        for name in ("n_layers", "d_model", "n_heads", "d_ff", "seq_len"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name}: must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"model.n_heads: {self.n_heads} does not divide model.d_model={self.d_model}"
            )
        if self.n_kv_heads is not None and (self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads):
            raise ConfigError(
                f"model.n_kv_heads: {self.n_kv_heads} must be >= 1 and divide "
                f"model.n_heads={self.n_heads}"
            )
        if (self.d_model // self.n_heads) % 2:
            raise ConfigError(f"model: head dim {self.d_model // self.n_heads} must be even (RoPE)")
        if self.vocab_size and self.objective == "mdm" and not 0 <= self.mask_id < self.vocab_size:
            raise ConfigError(
                f"model.mask_id: {self.mask_id} is not a token id below vocab_size={self.vocab_size}"
            )

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        """Key/value heads: ``n_kv_heads``, or one per query head."""
        return self.n_kv_heads or self.n_heads

    @property
    def n_params_non_embedding(self) -> int:
        """SMDM's count: L·(4d² + 3·d·ffn + 2d) + d (attention, MLP, the two norms, final norm),
        with grouped-query attention's smaller key/value projections and the q/k/v biases where
        the model has them."""
        d, kv = self.d_model, self.kv_heads * self.head_dim
        attention = 2 * d * d + 2 * d * kv + ((d + 2 * kv) if self.qkv_bias else 0)
        return self.n_layers * (attention + 3 * d * self.d_ff + 2 * d) + d

    @property
    def n_params(self) -> int:
        """All parameters: non-embedding plus input embedding and untied output head."""
        return self.n_params_non_embedding + 2 * self.vocab_size * self.d_model

    def flops_per_token(self, with_attention: bool = True) -> float:
        """Training FLOPs per token: 6·N (non-embedding) + the head, plus attention scores."""
        f = 6.0 * (self.n_params_non_embedding + self.vocab_size * self.d_model)
        if with_attention:
            f += 12.0 * self.n_layers * self.d_model * self.seq_len
        return f

    def train_flops_per_token(self, convention: str = "paper") -> float:
        """Training FLOPs per token as a compute budget counts them: ``paper``, 6·N with N the
        non-embedding parameters (the paper's and SMDM's count), or ``full`` (also the output
        head and the attention scores, ``flops_per_token``)."""
        if convention == "full":
            return self.flops_per_token()
        return 6.0 * self.n_params_non_embedding

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        return cls(**_checked(cls, d, "model"))

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> ModelConfig:
        """A named size (SMDM family or a CPU preset) with field-by-field overrides."""
        if name in TINY_SIZES:
            n_layers, d_model, n_heads, d_ff, seq_len = TINY_SIZES[name]
        elif name in SMDM_SIZES:
            n_layers, d_model, n_heads, d_ff = SMDM_SIZES[name]
            seq_len = 2048
        else:
            raise ConfigError(
                f"unknown model size {name!r}{suggest_size(name)} (valid: {', '.join(MODEL_SIZES)})"
            )
        base = dict(
            name=name,
            n_layers=n_layers,
            d_model=d_model,
            n_heads=n_heads,
            d_ff=d_ff,
            seq_len=seq_len,
        )
        base.update({k: v for k, v in _checked(cls, overrides, "model").items() if v is not None})
        return cls(**base)


@dataclass(frozen=True, kw_only=True, slots=True)
class TrainConfig:
    """Optimisation and bookkeeping for pretraining (docs/method.md §3)."""

    steps: int | None = option(
        None,
        "Optimizer steps.",
        min=1,
        default_help=f"{CPU_STEPS} for the CPU sizes ({', '.join(TINY_SIZES)}) and shapes given "
        f"by their dimensions, {SMDM_STEPS} for the SMDM sizes",
    )
    """Exactly one of steps / tokens / flops decides the run length."""
    tokens: int | None = option(
        None, "Training tokens, rounded up to whole steps (instead of --steps).", min=1
    )
    flops: float | None = option(
        None,
        "Compute budget C (instead of --steps), counted by --flops-convention: 6·N·D, N "
        "non-embedding parameters, by default.",
    )
    """SMDM's accounting by default (``flops_convention``)."""
    flops_convention: FlopsConvention = option(
        "paper",
        "How compute is counted for --flops (and scaling plan / fit): paper (6·N·D, N "
        "non-embedding parameters, as the paper and SMDM count) or full (also the output head "
        "and the attention scores: equal compute at micro scale, where the head dominates).",
    )
    batch_size: int = option(64, "Global batch in sequences.", min=1)
    """Each of seq_len tokens (fine-tuning: examples, ``SFT_BATCH_SIZE``)."""
    micro_batch_size: int | None = option(
        None,
        "Sequences per forward (gradient accumulation).",
        min=1,
        default_help="--batch-size (under torchrun: --batch-size / processes)",
    )
    """batch_size / micro_batch_size is the accumulation."""
    lr: float | None = option(
        None,
        "Peak learning rate.",
        default_help=f"{CPU_LR:.0e} for the CPU sizes ({', '.join(TINY_SIZES)}) and shapes given "
        f"by their dimensions, {SMDM_LR:.0e} (SMDM's) for the SMDM sizes".replace("e-0", "e-"),
    )
    min_lr_ratio: float = 0.1
    warmup_steps: int | None = option(
        None,
        "Linear warmup, then cosine decay to 0.1·lr.",
        min=0,
        default_help="1% of the steps, at least min(100, steps / 10)",
    )
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eps: float = option(1e-3, "MDM: minimum masking probability, p = (1 - eps)·t + eps.")
    var_len_prob: float = option(0.01, "MDM: probability of a variable-length batch.", min=0, max=1)
    """A variable-length batch is cut to a length drawn from U{1..seq_len}."""
    val_every: int = option(200, "Validate every N steps (and at the end).", min=1)
    val_batches: int = 4
    val_mc: int = 8
    """MDM validation: stratified t samples per sequence."""
    save_every: int = option(500, "Save a checkpoint every N steps (and at the end).", min=1)
    keep_last: int = option(2, "Checkpoints kept.", min=2)
    log_every: int = 10
    seed: int = option(0, "Data order and every masking draw derive from it.")
    doc_mask: bool = option(False, "Block-diagonal attention over packed documents.")
    """So packed documents do not attend to each other."""
    max_nonfinite_skips: int = option(
        0,
        "Skip up to N steps with a non-finite loss or gradient instead of stopping (exit 5).",
        min=0,
    )
    parallel: Parallel = option(
        "auto",
        "Multi-process training under torchrun: ddp, fsdp (FSDP2) or none; auto is none for one "
        "process, ddp for more (docs/distributed.md).",
    )
    """``ddp`` (DistributedDataParallel), ``fsdp`` (FSDP2 ``fully_shard`` per block, then the
    root)."""
    activation_checkpointing: bool = option(
        False, "Recompute each block's activations in backward: less memory, one more forward."
    )
    """``torch.utils.checkpoint``, non-reentrant; same results."""
    loss_head: LossHead = option(
        "chunked",
        "Where the output head and the loss run: chunked (only at the positions the loss scores, "
        "head and cross-entropy fused over row chunks), scored (there, all logits at once) or "
        "full (every position: the reference).",
    )
    """The MDM scores its masked positions, the ARM its targets (``linear_ce.py``); equal losses
    and gradients up to summation order, ``full`` byte-identical to earlier mdmctl."""
    compile: bool = option(
        False, "torch.compile each transformer block (a one-off compile at the start)."
    )

    def __post_init__(self) -> None:
        check_finite(self, "train.")
        if self.parallel not in PARALLEL_CHOICES:
            raise ConfigError(
                f"train.parallel: expected one of {', '.join(PARALLEL_CHOICES)}, "
                f"got {self.parallel!r}"
            )
        given = [n for n in ("steps", "tokens", "flops") if getattr(self, n) is not None]
        if len(given) > 1:
            raise ConfigError(f"train: give only one of steps / tokens / flops (got {given})")
        for name in (
            "steps",
            "tokens",
            "batch_size",
            "micro_batch_size",
            "val_every",
            "val_batches",
            "val_mc",
            "save_every",
            "log_every",
        ):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"train.{name}: must be >= 1, got {v}")
        if self.flops is not None and not self.flops > 0:
            raise ConfigError(f"train.flops: must be > 0, got {self.flops}")
        if self.loss_head not in get_args(LossHead):
            raise ConfigError(
                f"train.loss_head: expected one of {', '.join(get_args(LossHead))}, "
                f"got {self.loss_head!r}"
            )
        if self.flops_convention not in get_args(FlopsConvention):
            raise ConfigError(
                f"train.flops_convention: expected paper or full, got {self.flops_convention!r}"
            )
        if self.micro_batch_size is not None and self.batch_size % self.micro_batch_size:
            raise ConfigError(
                f"train.batch_size={self.batch_size} is not divisible by "
                f"train.micro_batch_size={self.micro_batch_size}"
            )
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"train.lr: must be > 0, got {self.lr}")
        if not 0 < self.eps < 1:
            raise ConfigError(f"train.eps: must be in (0, 1), got {self.eps}")
        if not 0 <= self.var_len_prob <= 1:
            raise ConfigError(f"train.var_len_prob: must be in [0, 1], got {self.var_len_prob}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"train.min_lr_ratio: must be in [0, 1], got {self.min_lr_ratio}")
        if self.keep_last < 2:
            raise ConfigError(
                f"train.keep_last: must be >= 2 (the newest may be mid-save), got {self.keep_last}"
            )
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ConfigError(f"train.warmup_steps: must be >= 0, got {self.warmup_steps}")
        if self.max_nonfinite_skips < 0:
            raise ConfigError("train.max_nonfinite_skips: must be >= 0")
        if not 0 <= self.seed < 2**63:
            raise ConfigError(f"train.seed: must be in [0, 2**63), got {self.seed}")

    def resolve_steps(self, model: ModelConfig) -> int:
        """Optimizer steps implied by steps / tokens / flops (default 1000 steps)."""
        tokens_per_step = self.batch_size * model.seq_len
        if self.steps is not None:
            return self.steps
        if self.tokens is not None:
            return max(1, math.ceil(self.tokens / tokens_per_step))
        if self.flops is not None:
            per_token = model.train_flops_per_token(self.flops_convention)
            per_step = per_token * tokens_per_step
            steps = int(self.flops // per_step)
            if steps < 1:
                raise ConfigError(
                    f"train.flops: budget {self.flops:.3g} is smaller than one optimizer step "
                    f"({per_step:.3g} FLOPs = {per_token:.4g} per token ({self.flops_convention} "
                    f"count) x {tokens_per_step} tokens)"
                )
            return steps
        return SMDM_STEPS if model.name in SMDM_SIZES else CPU_STEPS

    def resolve_lr(self, model: ModelConfig) -> float:
        if self.lr is not None:
            return self.lr
        return SMDM_LR if model.name in SMDM_SIZES else CPU_LR

    def resolve_warmup(self, steps: int) -> int:
        if self.warmup_steps is not None:
            return min(self.warmup_steps, steps)
        return max(steps // 100, min(100, steps // 10))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return cls(**_checked(cls, d, "train"))


@dataclass(frozen=True, kw_only=True, slots=True)
class RunConfig:
    """Everything ``pretrain`` needs; saved as ``runs/<name>/config.json``."""

    model: ModelConfig
    train: TrainConfig = field(default_factory=TrainConfig)
    data: str = ""
    """Tokenized corpus directory (``mdmctl tokenize`` output)."""
    out: str = ""
    device: str = option("auto", "auto (cuda if available, else cpu), cpu, cuda or cuda:N.")
    attention: AttentionBackend = option(
        "auto", "Attention kernel; auto: xformers where it can run, else PyTorch SDPA."
    )
    dtype: Literal["auto", "fp32", "bf16"] = option(
        "auto", "auto (bf16 on CUDA, fp32 on CPU), fp32 or bf16 (CUDA only)."
    )

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.to_dict(),
            "train": self.train.to_dict(),
            "data": self.data,
            "out": self.out,
            "device": self.device,
            "attention": self.attention,
            "dtype": self.dtype,
        }


_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "str": (str,),
    "bool": (bool,),
}


def _checked(cls: type, d: dict[str, Any], section: str) -> dict[str, Any]:
    """Reject unknown keys (with a suggestion) and values of the wrong type; no coercion."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    for key, value in d.items():
        if key not in fields:
            raise ConfigError(f"unknown key '{section}.{key}'{suggest(key, fields)}")
        if value is None:
            out[key] = None
            continue
        ftype = str(fields[key].type)
        base = ftype.split("|")[0].strip()
        if base.startswith("Literal") or base in ("Objective", "AttentionBackend", "Parallel"):
            out[key] = value
            continue
        allowed = _TYPES.get(base)
        ok = allowed is None or (
            isinstance(value, allowed) and not (isinstance(value, bool) and base != "bool")
        )
        if not ok:
            raise ConfigError(f"{section}.{key}: expected {base}, got {type(value).__name__}")
        if base == "float" and not math.isfinite(value):  # TOML has inf and nan literals
            raise ConfigError(f"{section}.{key}: must be a finite number, got {value}")
        out[key] = float(value) if base == "float" else value
    return out


def load_toml(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read a run file with sections [model] and [train]; unknown sections are errors."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"--config {p}: is a folder; expected a TOML run file")
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--config {p}: cannot read ({e})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: {e}") from e
    sections = ("model", "train")
    for key, value in raw.items():
        if key not in sections or not isinstance(value, dict):
            raise ConfigError(f"{p}: unknown section '{key}'{suggest(key, sections)}")
    # validate keys early so the file name is in the message
    try:
        _checked(ModelConfig, raw.get("model", {}), "model")
        _checked(TrainConfig, raw.get("train", {}), "train")
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from e
    return {s: dict(raw.get(s, {})) for s in sections}


SFTObjective = Literal["auto", "conditional", "unconditional"]
SFT_OBJECTIVES: tuple[str, ...] = get_args(SFTObjective)
SFTFormat = Literal["auto", "prompt-response", "messages", "gsm8k", "gsm8k-equations"]
Batching = Literal["random", "sorted"]
Overlong = Literal["drop", "error"]
SFT_BATCH_SIZE = 32
"""Fine-tuning's global batch, in examples per optimizer step (SMDM: 64 for the reverse curse,
256 for GSM8K)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class FinetuneConfig:
    """Supervised fine-tuning from a checkpoint (docs/method.md §3, §6)."""

    init: str = option(..., "Checkpoint to start from (step dir or run dir).")
    data: str = option(
        ...,
        "Examples: jsonl (prompt/response, prompt/completion, messages, question/answer) or "
        "GSM8K equations .txt.",
    )
    out: str = option("", "Run directory.", default_help="runs/<init run>-sft-<data file stem>")
    train: TrainConfig = field(default_factory=TrainConfig)
    """``finetune_config`` fills it with fine-tuning's defaults (``SFT_BATCH_SIZE``)."""
    objective: SFTObjective = option(
        "auto",
        "MDM: conditional (prompt never masked) or unconditional (whole sequence); auto is "
        "conditional. ARM checkpoints: cross-entropy on the response (unconditional: on the "
        "whole sequence).",
    )
    cfg_dropout: float = option(
        0.0, "Standard-CFG baseline: mask the whole prompt with this probability (MDM)."
    )
    format: SFTFormat = option(
        "auto",
        "Data format; auto: gsm8k-equations for a .txt file, else by the first line's fields.",
    )
    prompt_field: str = option("prompt", "Field holding the prompt (prompt-response jsonl).")
    response_field: str | None = option(
        None,
        "Field holding the response (prompt-response jsonl).",
        default_help="'completion' if present, else 'response'",
    )
    val_fraction: float = option(
        0.05, "Share of examples held out for the conditional validation loss."
    )
    epochs: float | None = option(
        None, "Passes over the examples (instead of --steps).", default_help="1"
    )
    """Run length in passes over the training examples (instead of train.steps)."""
    overlong: Overlong = option(
        "drop", "Examples longer than the context: drop (counted and reported) or error."
    )
    batching: Batching = option(
        "random",
        "random (SMDM; the MDM learns to stop from the eos padding) or sorted (less padding; ARM).",
    )
    """random (SMDM): batches drawn at random, so a row sits beside longer ones and learns to
    fill its canvas with eos after its answer. sorted: length-sorted batches, less padding."""
    pad_to: str = option(
        "auto",
        "Pad rows with eos to N tokens, 'context', or 'batch' (each micro-batch's longest row). "
        "auto: SMDM's 256 for the GSM8K formats whatever the context (the context if shorter), "
        "else batch.",
    )
    seq_len: int | None = option(
        None,
        "Context for fine-tuning (at most the checkpoint's).",
        min=8,
        default_help="the checkpoint's",
    )
    device: str = "auto"
    attention: AttentionBackend = "auto"
    dtype: Literal["auto", "fp32", "bf16"] = "auto"

    def __post_init__(self) -> None:
        check_finite(self, "--")
        if self.objective not in SFT_OBJECTIVES:
            raise ConfigError(
                f"--sft-objective: expected one of {', '.join(SFT_OBJECTIVES)}, got {self.objective!r}"
            )
        if not 0 <= self.cfg_dropout <= 1:
            raise ConfigError(f"--cfg-dropout: must be in [0, 1], got {self.cfg_dropout}")
        if not 0 < self.val_fraction < 0.5:
            raise ConfigError(f"--val-fraction: must be in (0, 0.5), got {self.val_fraction}")
        if self.epochs is not None and not self.epochs > 0:
            raise ConfigError(f"--epochs: must be > 0, got {self.epochs}")
        if self.epochs is not None and self.train.steps is not None:
            raise ConfigError("give --epochs or --steps, not both")
        if self.train.tokens is not None or self.train.flops is not None:
            raise ConfigError("finetune: run length is --epochs or --steps (not tokens / flops)")
        if self.batching not in get_args(Batching):
            raise ConfigError(f"--batching: expected random or sorted, got {self.batching!r}")
        if self.pad_to not in ("auto", "batch", "context") and not (
            self.pad_to.isdigit() and int(self.pad_to) >= 2
        ):
            raise ConfigError(
                f"--pad-to: expected auto, batch, context or a length >= 2, got {self.pad_to!r}"
            )
        if self.overlong not in get_args(Overlong):
            raise ConfigError(f"--overlong: expected drop or error, got {self.overlong!r}")

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "train"}
        return {"sft": d, "train": self.train.to_dict()}


DEFAULT_DATA = "data/builtin"
"""Where the built-in corpus is tokenized on first use (``mdmctl pretrain`` without --data)."""


def pretrain_config(
    *,
    config_file: str | Path | None = None,
    size: str | None = None,
    model: dict[str, Any] | None = None,
    train: dict[str, Any] | None = None,
    data: str | Path | None = None,
    out: str | Path | None = None,
    device: str = "auto",
    attention: AttentionBackend = "auto",
    dtype: Literal["auto", "fp32", "bf16"] = "auto",
) -> RunConfig:
    """A pretraining run's config. Each field takes, in this order of precedence, the value given
    here (``None`` is not given), the ``--config`` file's, the size preset's, the default.

    ``model`` and ``train`` hold ModelConfig / TrainConfig fields; a run length given here
    (steps, tokens or flops) replaces the file's. The run folder defaults to
    ``runs/<objective>-<size>-<data folder name>``: everything that names a natural run, so a
    second run on other data gets its own folder."""
    file_cfg = load_toml(config_file) if config_file else {"model": {}, "train": {}}
    model_over = {**file_cfg["model"], **_given(model)}
    model_over.setdefault("objective", "mdm")
    preset = model_over.pop("name", None)
    model_cfg = ModelConfig.from_name(size or preset or "tiny", **model_over)
    shape = ("n_layers", "d_model", "n_heads", "d_ff")
    if not (size or preset) and any(k in model_over for k in shape):
        # A shape given by its dimensions alone is named by them, not after the default preset.
        model_cfg = dataclasses.replace(model_cfg, name=f"{model_cfg.n_layers}x{model_cfg.d_model}")
    train_over, flags = dict(file_cfg["train"]), _given(train)
    if any(k in flags for k in ("steps", "tokens", "flops")):
        for k in ("steps", "tokens", "flops"):
            train_over.pop(k, None)
    data_dir = Path(data or DEFAULT_DATA)
    run_dir = out or Path("runs") / f"{model_cfg.objective}-{model_cfg.name}-{data_dir.name}"
    return RunConfig(
        model=model_cfg,
        train=TrainConfig.from_dict({**train_over, **flags}),
        data=str(data_dir),
        out=str(run_dir),
        device=device,
        attention=attention,
        dtype=dtype,
    )


def finetune_config(
    *, init: str | Path, data: str | Path, out: str | Path | None = None,
    train: dict[str, Any] | None = None, **sft: Any,
) -> FinetuneConfig:  # fmt: skip
    """A fine-tuning run's config: ``train`` fields given (not ``None``) over fine-tuning's
    defaults (``SFT_BATCH_SIZE``), ``sft`` the other FinetuneConfig fields. The run folder
    defaults to ``runs/<init run>-sft-<data file stem>``: two fine-tunes of one model on
    different data do not collide."""
    init, data = Path(init), Path(data)
    run_name = (init.parent.parent.name if init.name.startswith("step-") else init.name) or "run"
    return FinetuneConfig(
        init=str(init),
        data=str(data),
        out=str(out or Path("runs") / f"{run_name}-sft-{data.stem}"),
        train=TrainConfig.from_dict({"batch_size": SFT_BATCH_SIZE, **_given(train)}),
        **sft,
    )


def _given(values: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (values or {}).items() if v is not None}
