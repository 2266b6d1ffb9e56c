"""Multi-process training under ``torchrun``: process group, DDP / FSDP2 wrapping, agreement.

One process per device, launched by ``torchrun`` (which sets ``RANK``, ``LOCAL_RANK`` and
``WORLD_SIZE``). Backend nccl on CUDA (device ``cuda:LOCAL_RANK``), gloo on CPU.

Invariants this module keeps (docs/distributed.md):

- **Same maths at any world size.** Every rank reads the same global batch; rank r computes the
  contiguous micro-batches ``[r·k, (r+1)·k)`` of it (k = accumulation / world), each with the same
  per-micro-batch generator and normalisation as one process would use, and divides by k instead of
  by the accumulation: DDP and FSDP2 *average* gradients over ranks, so the result is the
  single-process gradient of the same global batch and micro-batch size.
- **Decisions are collective.** Non-finite checks and the signal flag are all-reduced (MAX), so
  every rank skips, stops or saves at the same step. Rank-0-only work (the run lock, run-folder
  checks, resume selection, writing a checkpoint) ends in a broadcast of its outcome, so a failure
  there becomes the same typed error on every rank instead of a hang.
- **No pickle.** Strings and exit codes travel as integer tensors; object collectives are not used.
- **Checkpoints are world-size independent.** The full (unsharded) model and optimizer state is
  gathered to rank 0 and written in the single-process format (FSDP2: the
  ``torch.distributed.checkpoint.state_dict`` functions with ``full_state_dict=True``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from mdmctl.config import PARALLEL_CHOICES
from mdmctl.errors import ConfigError, MdmctlError

# Generous: rank 0 may validate or write a large checkpoint while the others wait at a collective.
_TIMEOUT = timedelta(minutes=30)


class PeerFailed(MdmctlError):
    """Another rank (rank 0) failed; this rank stops with the same exit code."""

    def __init__(self, exit_code: int) -> None:
        super().__init__(f"rank 0 failed (exit {exit_code}); its error is in its log")
        self.exit_code = exit_code


def env_world_size() -> int:
    """World size of this launch: the process group's, else torchrun's ``WORLD_SIZE``, else 1."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_rank() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def resolve_parallel(parallel: str, world: int) -> str:
    """``auto``: none for one process, ddp for more (mdmctl's sizes fit on one device)."""
    if parallel not in PARALLEL_CHOICES:
        raise ConfigError(
            f"--parallel: expected one of {', '.join(PARALLEL_CHOICES)}, got {parallel!r}"
        )
    if parallel == "auto":
        return "ddp" if world > 1 else "none"
    if parallel == "none" and world > 1:
        raise ConfigError(
            f"--parallel none: {world} processes were launched; use ddp or fsdp (or auto)"
        )
    return parallel


def rank_micro_batches(accum: int, world: int, rank: int) -> range:
    """The global micro-batch indices rank ``rank`` computes: a contiguous block of
    ``accum / world``, i.e. rows ``[r·G/W, (r+1)·G/W)`` of the global batch
    (docs/distributed.md)."""
    if accum % world:
        raise ConfigError(
            f"{accum} micro-batches per step cannot be split over {world} processes; make "
            "batch_size a multiple of micro_batch_size x world size"
        )
    k = accum // world
    return range(rank * k, (rank + 1) * k)


def micro_batch_for_world(batch_size: int, micro: int | None, world: int) -> int | None:
    """The micro-batch size a run uses at ``world`` processes: as given, or (when not given and
    world > 1) one micro-batch per rank, ``batch_size / world``. One process: unchanged."""
    if world == 1:
        return micro
    if micro is None:
        if batch_size % world:
            raise ConfigError(
                f"--batch-size {batch_size} is not divisible by the world size {world}"
            )
        micro = batch_size // world
    rank_micro_batches(batch_size // micro, world, 0)  # validates the split
    return micro


@dataclass
class Dist:
    """This process's place in the run. ``active``: a process group exists (world > 1, or ddp /
    fsdp asked for explicitly); every collective below is a no-op otherwise."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    parallel: str = "none"
    active: bool = False
    mesh: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ---------------------------------------------------------------- agreement
    def all_sum(self, *values: float) -> list[float]:
        """Sum of each value over ranks (float64; token counts stay exact below 2**53)."""
        if not self.active:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def all_max(self, *values: int) -> list[int]:
        """Max of each integer over ranks (int64: nccl reduces integers, not bool)."""
        if not self.active:
            return list(values)
        t = torch.tensor(values, dtype=torch.int64, device=self._comm_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [int(v) for v in t.tolist()]

    def main_decides(self, fn: Callable[[], str]) -> str:
        """Run ``fn`` on rank 0 only and hand its string result to every rank.

        A failure on rank 0 is re-raised there and becomes ``PeerFailed`` (same exit code) on the
        others, so rank-0-only work (lock, folder checks, resume selection, checkpoint writes) can
        never leave the other ranks waiting at a collective. The broadcast is also the barrier
        that keeps the other ranks from reading a checkpoint before it is committed.
        """
        if not self.active:
            return fn()
        result, code, error = "", 0, None
        if self.is_main:
            try:
                result = fn()
            except BaseException as e:  # noqa: B036 (re-raised below, after telling the others)
                code = getattr(e, "exit_code", 1) or 1
                error = e
        data = torch.tensor(list(result.encode()), dtype=torch.int64)
        head = torch.tensor([code, len(data)], dtype=torch.int64, device=self._comm_device())
        dist.broadcast(head, src=0)
        code, n = (int(v) for v in head.tolist())
        if error is not None:
            raise error
        if code:
            raise PeerFailed(code)
        buf = data.to(self._comm_device()) if self.is_main else self._empty(n)
        if n:
            dist.broadcast(buf, src=0)
        return bytes(buf.cpu().tolist()).decode()

    def _empty(self, n: int) -> torch.Tensor:
        return torch.empty(n, dtype=torch.int64, device=self._comm_device())

    def _comm_device(self) -> torch.device:
        # nccl moves CUDA tensors only (on this process's device, set by ``session``); gloo CPU.
        if dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


@contextlib.contextmanager
def session(parallel: str, device: torch.device) -> Iterator[Dist]:
    """Join (or create) the process group for the run's duration; destroyed on exit if we made it.

    A group made by the caller (``torch.multiprocessing.spawn`` tests, a host program) is used
    as is and left alone. One process with ``--parallel ddp|fsdp`` gets a private one-rank group,
    so the wrapped code paths also run without torchrun.
    """
    world = env_world_size()
    mode = resolve_parallel(parallel, world)
    ours = False
    if (world > 1 or mode != "none") and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"backend": backend, "timeout": _TIMEOUT}
        if backend == "nccl":
            torch.cuda.set_device(device)
            kwargs["device_id"] = device
        if world == 1 and "MASTER_ADDR" not in os.environ:  # no launcher: an in-memory store
            kwargs.update(store=dist.HashStore(), rank=0, world_size=1)
        dist.init_process_group(**kwargs)
        ours = True
    active = dist.is_initialized()
    d = Dist(
        rank=dist.get_rank() if active else 0,
        world=dist.get_world_size() if active else 1,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        parallel=mode,
        active=active,
    )
    if mode == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh

        d.mesh = init_device_mesh(device.type, (d.world,))
    try:
        yield d
    finally:
        if ours:
            dist.destroy_process_group()


def wrap(model: torch.nn.Module, d: Dist, device: torch.device) -> torch.nn.Module:
    """The module to train through: ``model`` itself (none), a DDP wrapper, or ``model`` sharded
    in place by FSDP2 (each block, then the root; parameter names are unchanged)."""
    if d.parallel == "ddp":
        import inspect

        from torch.nn.parallel import DistributedDataParallel as DDP

        # The only buffers are the RoPE tables, identical on every rank by construction:
        # broadcasting them before every forward would be a wasted collective. (Newer torch
        # renames the switch and deprecates the old one.)
        sync = "forward_sync_buffers"
        if sync not in inspect.signature(DDP.__init__).parameters:
            sync = "broadcast_buffers"
        return DDP(
            model, device_ids=[device.index] if device.type == "cuda" else None, **{sync: False}
        )
    if d.parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks:
            fully_shard(block, mesh=d.mesh)
        fully_shard(model, mesh=d.mesh)
    return model


@contextlib.contextmanager
def grad_sync(train_model: torch.nn.Module, d: Dist, enabled: bool) -> Iterator[None]:
    """Gradient reduction on (last micro-batch) or off (the others): accumulating locally first
    avoids one all-reduce (DDP) or reduce-scatter (FSDP2) per micro-batch. Must wrap the forward
    as well as the backward."""
    if d.parallel == "ddp" and not enabled:
        with train_model.no_sync():
            yield
        return
    if d.parallel == "fsdp":
        train_model.set_requires_gradient_sync(enabled)
    yield


def clip_grad_norm(model: torch.nn.Module, d: Dist, max_norm: float) -> float:
    """Clip to ``max_norm``; returns the global norm before clipping (same on every rank)."""
    if d.parallel != "fsdp":
        # DDP gradients are already averaged, identical on every rank: a local norm is global.
        return float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
    from torch.distributed.tensor import DTensor

    params = [p for p in model.parameters() if p.grad is not None]
    total = torch.nn.utils.get_total_norm([p.grad for p in params])
    if isinstance(total, DTensor):
        # Each rank holds the norm of its shards (a Partial placement): reduce it (torchtitan).
        total = total.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return float(total)


def full_state(
    model: torch.nn.Module, opt: torch.optim.Optimizer, d: Dist, names: dict[Any, str]
) -> tuple[dict[str, torch.Tensor] | None, dict[str, torch.Tensor]]:
    """(weights, optimizer tensors) to save, in the single-process format (``checkpoint.py``).

    Weights None means: take ``model.state_dict()`` (one process, DDP: the unwrapped module's
    tensors are complete on every rank). FSDP2 gathers full tensors to rank 0's CPU (collective:
    every rank calls it; the others get empty dicts back).
    """
    from mdmctl import checkpoint as ckpt

    if d.parallel != "fsdp":
        return None, ckpt.optimizer_tensors(opt, names)
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=opts)
    osd = get_optimizer_state_dict(model, opt, options=opts)
    flat = {
        f"{key}/{fqn}": val.detach().cpu().contiguous()
        for fqn, st in osd.get("state", {}).items()
        for key, val in st.items()
        if torch.is_tensor(val)
    }
    return weights, flat


def load_optimizer(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    d: Dist,
    tensors: dict[str, torch.Tensor],
    params: dict[str, torch.nn.Parameter],
) -> None:
    """Load saved optimizer tensors (full, name-keyed) into ``opt`` at any world size."""
    from mdmctl import checkpoint as ckpt

    if d.parallel != "fsdp":
        ckpt.load_optimizer_tensors(opt, tensors, params)
        return
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    full = StateDictOptions(full_state_dict=True)
    # The param_groups in the layout set_optimizer_state_dict expects (parameter names per
    # group); every rank holds the full tensors (read from the checkpoint) and keeps its shard.
    osd = get_optimizer_state_dict(model, opt, options=full)
    state: dict[str, dict[str, torch.Tensor]] = {}
    for key, val in tensors.items():
        kind, name = key.split("/", 1)
        state.setdefault(name, {})[kind] = val
    osd["state"] = state
    set_optimizer_state_dict(model, opt, optim_state_dict=osd, options=full)
