"""Memory planning before a run starts: estimate, compare with what the device has, choose.

A training step holds the fp32 weights, their gradients and AdamW's two moments (16 bytes per
parameter), the activations autograd keeps for backward (per token and layer: the block's inputs,
q/k/v, the attention output and the SwiGLU intermediates, about 20·d + 4·d_ff values, plus
the L x L score matrix when attention is not fused), and the logits with their log-softmax and
gradient (3 x vocab values per token, fp32; with ``--loss-head chunked`` two chunks of logits and
the head's input and weight gradients instead, ``linear_ce.py``). Activation checkpointing keeps
one block's worth plus each block's input. The coefficients were checked against measured peak
RSS on CPU (docs/benchmarks.md, "Memory estimate"); the estimate is meant to be on the safe side,
not exact.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mdmctl.config import ModelConfig, TrainConfig
from mdmctl.errors import ConfigError

BASELINE_BYTES = 600 * 2**20
"""The process before any tensor: Python, torch and its kernels (measured RSS, CPU)."""
HEADROOM = 0.85
"""Plan for this share of the available memory: the allocator fragments, the OS needs some."""


@dataclass(frozen=True)
class MemoryEstimate:
    states: int  # weights + gradients + optimizer moments
    activations: int  # per micro-batch
    logits: int  # per micro-batch
    baseline: int

    @property
    def total(self) -> int:
        return self.states + self.activations + self.logits + self.baseline


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def estimate_training(
    cfg: ModelConfig,
    micro_batch: int,
    *,
    act_bytes: int = 4,
    activation_checkpointing: bool = False,
    fused_attention: bool = True,
    shards: int = 1,
    loss_head: str = "full",
) -> MemoryEstimate:
    """Peak memory of one training step at ``micro_batch`` sequences of ``cfg.seq_len`` tokens.

    ``act_bytes``: 4 for fp32 activations, 2 under bf16 autocast. ``shards``: FSDP's world size
    (weights, gradients and moments are split; activations are not). ``loss_head``: ``scored``
    plans like ``full``, since a row drawn at t near 1 has every position masked."""
    params = cfg.n_params_non_embedding + 2 * cfg.vocab_size * cfg.d_model  # + embedding, head
    tokens = micro_batch * cfg.seq_len
    per_layer = 20 * cfg.d_model + 4 * cfg.d_ff  # values kept per token (see the module doc)
    if not fused_attention:
        per_layer += 2 * cfg.n_heads * cfg.seq_len  # scores and their softmax
    # With checkpointing each block keeps only its input; backward recomputes one block at a time.
    kept = (
        cfg.n_layers * cfg.d_model + per_layer
        if activation_checkpointing
        else (cfg.n_layers * per_layer)
    )
    return MemoryEstimate(
        states=16 * params // shards,
        activations=tokens * kept * act_bytes,
        logits=_logits_bytes(cfg, tokens, loss_head),
        baseline=BASELINE_BYTES,
    )


def _logits_bytes(cfg: ModelConfig, tokens: int, loss_head: str) -> int:
    """fp32 bytes the head's output costs: all logits with their log-softmax and gradient, or
    for ``chunked`` one chunk of logits and its softmax in flight plus the gradients of the
    head's input (tokens x d_model) and weight (vocab x d_model) formed in forward."""
    if loss_head != "chunked":
        return 3 * tokens * cfg.vocab_size * 4
    from mdmctl.linear_ce import chunk_rows

    rows = min(tokens, chunk_rows(cfg.vocab_size))
    return (2 * rows * cfg.vocab_size + (tokens + cfg.vocab_size) * cfg.d_model) * 4


def available_bytes(device_type: str, device_index: int | None = None) -> int:
    """Memory a new run can use: free GPU memory on CUDA; on CPU, MemAvailable or the cgroup's
    limit, whichever is lower (containers report the host's memory in /proc/meminfo)."""
    if device_type == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(device_index)
        return int(free)
    avail = _meminfo_available()
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < avail:
            avail = int(text)
    return avail


def _meminfo_available() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:  # not Linux: the physical memory
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 2**62  # unknown: do not refuse


def plan_micro_batch(
    cfg: ModelConfig,
    batch_size: int,
    requested: int | None,
    available: int,
    **estimate_kw,
) -> tuple[int, MemoryEstimate]:
    """The micro-batch to train with and its estimate.

    ``requested`` None ("auto"): the largest divisor of ``batch_size`` whose step fits in
    ``HEADROOM`` x ``available`` (gradient accumulation makes up the rest). A requested size that
    does not fit fails now, with the estimate and the sizes that would fit, instead of meeting
    the kernel's OOM killer minutes later."""
    budget = int(available * HEADROOM)
    divisors = [m for m in range(batch_size, 0, -1) if batch_size % m == 0]
    fits = [m for m in divisors if estimate_training(cfg, m, **estimate_kw).total <= budget]
    if requested is None:
        if not fits:
            est = estimate_training(cfg, 1, **estimate_kw)
            raise ConfigError(
                f"memory: even a micro-batch of 1 needs about {gib(est.total)} "
                f"({_parts(est)}); {gib(budget)} is available to plan with. Use a smaller "
                "--size or --seq-len, --activation-checkpointing, or a device with more memory"
            )
        return fits[0], estimate_training(cfg, fits[0], **estimate_kw)
    est = estimate_training(cfg, requested, **estimate_kw)
    if est.total > budget:
        hint = (
            f"--micro-batch-size {fits[0]} (or auto) would fit"
            if fits
            else "no micro-batch fits: use a smaller --size or --seq-len"
        )
        raise ConfigError(
            f"memory: a micro-batch of {requested} x {cfg.seq_len} tokens needs about "
            f"{gib(est.total)} ({_parts(est)}); {gib(budget)} is available to plan with. "
            f"{hint}; --activation-checkpointing saves most of the activations"
        )
    return requested, est


def _parts(est: MemoryEstimate) -> str:
    return (
        f"weights+grads+AdamW {gib(est.states)}, activations {gib(est.activations)}, "
        f"logits {gib(est.logits)}"
    )


def plan_training(
    tc: TrainConfig,
    model_cfg: ModelConfig,
    *,
    device: str,
    dtype: str,
    world: int,
    log: Callable[[str], None],
) -> TrainConfig:
    """Check (or choose, when ``tc.micro_batch_size`` is None) the micro-batch before any tensor
    exists. Returns ``tc`` with the chosen size; logs the estimate for the run header.

    ``MDMCTL_MEMORY_CHECK=0`` skips the check (an estimate can be wrong; the user decides)."""
    from mdmctl.device import resolve_device, resolve_dtype

    if os.environ.get("MDMCTL_MEMORY_CHECK", "1") == "0":
        return tc
    dev = resolve_device(device)
    kw: dict[str, Any] = dict(
        act_bytes=2 if str(resolve_dtype(dtype, dev)).endswith("bfloat16") else 4,
        activation_checkpointing=tc.activation_checkpointing,
        # CPU SDPA falls back to the unfused kernel for a block-diagonal (document) mask.
        fused_attention=dev.type == "cuda" or not tc.doc_mask,
        shards=world if tc.parallel == "fsdp" else 1,
        loss_head=tc.loss_head,
    )
    avail = available_bytes(dev.type, dev.index)
    # Under torchrun the micro-batch was already set per rank: check it, do not resize it.
    requested = tc.micro_batch_size if tc.micro_batch_size or world > 1 else None
    micro, est = plan_micro_batch(model_cfg, tc.batch_size, requested, avail, **kw)
    log(
        f"memory: about {gib(est.total)} planned per process ({_parts(est)}) for micro-batches "
        f"of {micro} x {model_cfg.seq_len} tokens; {gib(avail)} available on {dev.type}"
    )
    if requested is None and micro != tc.batch_size:
        log(
            f"micro-batch size auto: {micro} (batch {tc.batch_size} in {tc.batch_size // micro} "
            "accumulation steps) to fit in memory"
        )
        return replace(tc, micro_batch_size=micro)
    return tc


def estimate_inference(cfg: ModelConfig, rows: int, *, act_bytes: int = 4) -> int:
    """Peak bytes of one no-grad forward over ``rows`` sequences of ``cfg.seq_len`` tokens: the
    weights (``act_bytes`` each: the model runs in its weights' type), one block's transient
    tensors (nothing is kept for backward), a KV cache (key/value heads only), and the logits
    with their log-softmax (fp32)."""
    tokens = rows * cfg.seq_len
    transient = tokens * (8 * cfg.d_model + 4 * cfg.d_ff) * act_bytes
    kv_cache = 2 * cfg.n_layers * tokens * cfg.kv_heads * cfg.head_dim * act_bytes
    logits = 2 * tokens * cfg.vocab_size * 4
    return act_bytes * cfg.n_params + transient + kv_cache + logits + BASELINE_BYTES


def weight_itemsize(model: Any) -> int:
    """Bytes per weight of the model as it runs (4 for a callable without parameters)."""
    first = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    return 4 if first is None else first.element_size()


def check_weights_fit(cfg: ModelConfig, itemsize: int, device_type: str) -> None:
    """Refuse at once (exit 2), before anything is loaded, a model whose weights alone do not
    fit the device: a 7-8B LLaDA or Dream needs 15-16 GiB in bf16, 30-32 GiB in fp32."""
    if os.environ.get("MDMCTL_MEMORY_CHECK", "1") == "0":
        return
    need = itemsize * cfg.n_params
    budget = int(available_bytes(device_type) * HEADROOM)
    if need <= budget:
        return
    where = "this machine's memory" if device_type == "cpu" else f"the {device_type} device"
    if itemsize > 2 and need // 2 <= budget:
        hint = "--dtype bf16 would fit (half the bytes)"
    elif device_type == "cpu":
        hint = "run it on a GPU (--device cuda) with the weights in bf16"
    else:
        hint = "it needs a device with more memory"
    raise ConfigError(
        f"memory: the {cfg.n_params / 1e9:.2f}B parameters need {gib(need)} at {itemsize} "
        f"bytes each; {where} has {gib(budget)} to plan with: {hint}"
    )


def check_eval_batch(
    cfg: ModelConfig,
    batch_size: int,
    device_type: str,
    *,
    rows_per_item: int = 1,
    weight_bytes: int = 4,
) -> None:
    """Fail at once (exit 2) when ``batch_size`` items (``rows_per_item`` rows each: 2 with CFG)
    would not fit, naming a batch size that would. Not resized silently: the batch can change
    which random draws a row gets, and a result should not depend on the machine's memory."""
    if os.environ.get("MDMCTL_MEMORY_CHECK", "1") == "0":
        return
    budget = int(available_bytes(device_type) * HEADROOM)
    need = estimate_inference(cfg, batch_size * rows_per_item, act_bytes=weight_bytes)
    if need <= budget:
        return
    fits = [b for b in range(batch_size - 1, 0, -1)
            if estimate_inference(cfg, b * rows_per_item, act_bytes=weight_bytes) <= budget]  # fmt: skip
    hint = f"--batch-size {fits[0]} would fit" if fits else "even --batch-size 1 does not fit"
    raise ConfigError(
        f"memory: --batch-size {batch_size} x {cfg.seq_len} tokens needs about {gib(need)}; "
        f"{gib(budget)} is available to plan with. {hint}"
    )
