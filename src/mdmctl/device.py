"""Device, precision and hardware facts shared by training, sampling and evaluation."""

from __future__ import annotations

import contextlib
import os
import resource
import sys

import torch

from mdmctl.errors import ConfigError

# Dense bf16 peak FLOP/s by card, for MFU. Spec-sheet values (dense, no sparsity).
_PEAK_BF16 = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 70e12,
    "L4": 121e12,
    "RTX 4090": 165e12,
    "A6000": 155e12,
}


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: cuda if available, else cpu. Under torchrun (``LOCAL_RANK`` set) ``auto`` and
    ``cuda`` mean this process's own device, ``cuda:LOCAL_RANK``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
        if name == "cpu":
            return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda: CUDA requested but torch.cuda.is_available() is False")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise ConfigError(f"--device: expected auto, cpu or cuda[:N], got {name!r}")
    if name == "cuda" and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name == "bf16":
        if device.type != "cuda":
            raise ConfigError("--dtype bf16: supported on cuda; use fp32 on cpu")
        return torch.bfloat16
    if name == "fp32":
        return torch.float32
    raise ConfigError(f"--dtype: expected auto, fp32 or bf16, got {name!r}")


def autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, val in _PEAK_BF16.items():
        if key in name:
            return val
    return None


def hardware(device: torch.device) -> str:
    """What a measurement ran on, for the record: the card, or the CPU's model, cores and
    threads; torch's version (and CUDA's)."""
    if device.type == "cuda":
        card = torch.cuda.get_device_name(device)
        return f"{card}, torch {torch.__version__} (CUDA {torch.version.cuda})"
    model = "CPU"
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        model = names[0] if names else model
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"{model}, {cpus} CPUs usable, {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}")  # fmt: skip


def peak_rss_mb() -> float:
    """Peak resident memory of this process (ru_maxrss is KiB on Linux, bytes on macOS)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024
