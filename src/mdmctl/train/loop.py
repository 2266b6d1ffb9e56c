"""The training loop shared by pretraining and fine-tuning: a ``Job`` says what differs (data,
per-step losses, validation), ``run_job`` runs it in phases (open the run, train steps, save,
report).

AdamW (0.9, 0.95), cosine schedule with warmup to ``min_lr_ratio``·lr (a pure function of the step),
gradient accumulation, grad clipping, bf16 autocast on CUDA. Randomness: the data order comes from
the loader's (epoch, consumed) state and the masking draws from generators the job seeds per step,
so resume is exact without replaying anything. Checkpoints follow ``checkpoint.py`` and the run
folder's rules ``run_dir.py``; SIGINT/SIGTERM save at the next step boundary and exit.

Under torchrun (``distributed.py``, docs/distributed.md) every rank reads the same global batch and
computes its own block of micro-batches; rank 0 alone holds the run lock, logs, writes metrics and
checkpoints; stop and skip decisions are all-reduced so every rank takes them at the same step.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mdmctl import checkpoint as ckpt
from mdmctl import distributed
from mdmctl.attention import resolve_backend
from mdmctl.config import RunConfig
from mdmctl.device import autocast, peak_flops, peak_rss_mb, resolve_device, resolve_dtype
from mdmctl.errors import CompatibilityError, DivergenceError, MdmctlError
from mdmctl.fileio import make_out_dir
from mdmctl.log import MetricsWriter
from mdmctl.model import Transformer
from mdmctl.tokenizer import fingerprint, load_tokenizer
from mdmctl.train import lock
from mdmctl.train.run_dir import check_resume, select_resume, write_start_files

OnStep = Callable[[int, int, dict[str, Any]], None]
"""(step, total steps, the step's metrics record): progress for a caller (rank 0 only)."""


class Interrupted(MdmctlError):
    """SIGINT (130) or SIGTERM (143) after a successful save."""

    def __init__(self, signum: int, path: Path | None) -> None:
        super().__init__(
            f"interrupted by {signal.Signals(signum).name}; checkpoint saved at {path}"
        )
        self.exit_code = 128 + signum


@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path | None
    steps: int
    tokens: int
    val_loss: float | None
    val_loss_kind: str
    unigram_entropy: float | None
    train_loss: float | None
    tokens_per_s: float
    seconds: float
    peak_rss_mb: float
    n_params_non_embedding: int
    device: str
    attention: str
    resumed_from: int | None
    seq_len: int
    nonfinite_skips: int = 0
    """Steps whose update was skipped for a non-finite loss or gradient
    (``max_nonfinite_skips``)."""
    rank: int = 0
    """This process's rank; only rank 0's result carries validation and unigram numbers."""
    world_size: int = 1
    parallel: str = "none"


def lr_at(step: int, total: int, warmup: int, lr: float, min_ratio: float) -> float:
    """Linear warmup over ``warmup`` steps, then cosine decay to min_ratio·lr at ``total``."""
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


class _SignalFlag:
    """Handlers only record the signal; the loop saves at the next step boundary."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _SignalFlag:
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, no save
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


@dataclass
class Job:
    """What differs between pretraining and fine-tuning; ``run_job`` runs it."""

    cfg: RunConfig  # resolved: vocab size and mask id from the tokenizer
    config_dict: dict[str, Any]  # saved in train_state.json, compared on resume
    loader: Any  # next_batch(), state_dict(), load_state_dict()
    step_losses: Callable[[torch.nn.Module, Any, int, range], Iterator[tuple[torch.Tensor, int]]]
    """(model, batch, step, micro-batch indices) -> per micro-batch (loss / len(indices), tokens
    processed). Indices are global: one process passes range(accum), a rank its block of it."""
    accum: int  # micro-batches per global batch
    validate: Callable[[Transformer], float]
    val_kind: str
    tokenizer_path: Path
    tokenizer_sha256: str
    data_state: dict[str, Any]
    total_steps: int
    init: Path | None = None  # fine-tuning: weights to start from
    unigram: Callable[[], float] | None = None
    log_extra: Callable[[Any], dict[str, Any]] | None = None


def run_job(
    job: Job,
    *,
    resume: str,
    overwrite: bool,
    on_step: OnStep | None,
    log: Callable[[str], None],
) -> TrainResult:
    """Run ``job`` holding ``--out``'s lock, so a second run on the same folder is refused.

    Under torchrun, rank 0 alone takes the lock, logs and reports progress (``on_step``)."""
    run_dir = Path(job.cfg.out)
    device = resolve_device(job.cfg.device)
    with distributed.session(job.cfg.train.parallel, device) as d:
        if not d.is_main:
            log, on_step = _quiet, None
        with contextlib.ExitStack() as held:

            def take_lock() -> str:
                make_out_dir(run_dir)
                held.enter_context(lock.hold(run_dir, log))
                return ""

            d.main_decides(take_lock)
            run = _open_run(job, run_dir, d, resume=resume, overwrite=overwrite, log=log)
            _train_steps(run, on_step, log)
            return _result(run)


def _quiet(msg: str) -> None:
    """The log of ranks other than 0."""


@dataclass
class _Run:
    """One process's view of a run in progress: the set-up pieces and the loop's counters."""

    job: Job
    run_dir: Path
    d: distributed.Dist
    device: torch.device
    dtype: torch.dtype
    backend: str
    model: Transformer
    train_model: torch.nn.Module  # the model as wrapped for DDP / FSDP2
    opt: torch.optim.Optimizer
    names: dict[Any, str]  # parameter -> name, for gathering full state
    peak_lr: float
    warmup: int
    t_start: float
    step: int = 0
    tokens_seen: int = 0
    skips: int = 0
    elapsed_before: float = 0.0  # training seconds of the run before this process (resume)
    resumed_from: int | None = None
    last_ckpt: Path | None = None
    train_loss: float | None = None
    val_loss: float | None = None
    timed: list[float] = field(default_factory=lambda: [0.0, 0.0])  # tokens, seconds


def _open_run(
    job: Job,
    run_dir: Path,
    d: distributed.Dist,
    *,
    resume: str,
    overwrite: bool,
    log: Callable[[str], None],
) -> _Run:
    """Phase 1: pick the step to resume from, build (and load) the model and the optimizer, write
    the run's start files."""
    t_start = time.perf_counter()
    cfg, tc = job.cfg, job.cfg.train
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    backend = resolve_backend(cfg.attention, device)
    # Rank 0 checks the folder and picks the step; the others read the same files after it.
    chosen = d.main_decides(lambda: select_resume(run_dir, resume, overwrite, log))
    resume_dir = Path(chosen) if chosen else None

    torch.manual_seed(tc.seed)
    model = Transformer(cfg.model, backend=backend)
    model.activation_checkpointing = tc.activation_checkpointing
    if job.init is not None:
        loaded = ckpt.load_checkpoint(job.init)
        ckpt.load_weights(model, loaded.state_dict, loaded.path)
    model.to(device)
    if tc.compile:
        # Per block, in place (torchtitan's choice): parameter names stay as they are, and the
        # head and the loss, whose row counts change every step, stay eager.
        for block in model.blocks:
            block.compile()
    state = _load_resume(job, run_dir, d, resume_dir, model) if resume_dir else None
    train_model = distributed.wrap(model, d, device)
    # After wrapping: FSDP2 replaces the parameters by sharded ones (same names).
    names = {p: n for n, p in model.named_parameters()}
    peak_lr = tc.resolve_lr(cfg.model)
    opt = torch.optim.AdamW(
        _param_groups(model, tc.weight_decay),
        lr=peak_lr,
        betas=(tc.beta1, tc.beta2),
        fused=device.type == "cuda",
    )
    run = _Run(
        job, run_dir, d, device, dtype, backend, model, train_model, opt, names, peak_lr,
        tc.resolve_warmup(job.total_steps), t_start, last_ckpt=resume_dir,
    )  # fmt: skip
    if resume_dir is not None:
        params = {n: p for n, p in model.named_parameters()}
        distributed.load_optimizer(model, opt, d, ckpt.read_optimizer(resume_dir), params)
        loop = state["loop"]
        run.step, run.tokens_seen = loop["step"], loop["tokens_seen"]
        run.skips = loop.get("nonfinite_skips", 0)
        run.elapsed_before = float(loop.get("elapsed_s", 0.0))
        run.resumed_from = run.step
        log(f"resuming from {resume_dir} (step {run.step})")
    _start(run, log)
    return run


def _load_resume(
    job: Job, run_dir: Path, d: distributed.Dist, resume_dir: Path, model: Transformer
) -> dict[str, Any]:
    """The resumed step's train state, checked against this job; its weights into ``model`` and
    its data position into the loader."""
    state = ckpt.read_train_state(resume_dir)
    ckpt.check_train_state(state, resume_dir / "train_state.json")
    check_resume(state["config"], job.config_dict, run_dir)
    # Rank 0 verified the hashes when it chose the step; the others only check sizes.
    loaded = ckpt.load_checkpoint(resume_dir, check_hash=d.is_main)
    # The weights' own record (a manifest rewritten to match its files says nothing about them):
    # the tokenizer they were trained with, the one saved beside them, and their architecture.
    saved_tok = fingerprint(load_tokenizer(resume_dir / "tokenizer.json"))
    for what, sha in (("weights", loaded.tokenizer_sha256), ("tokenizer.json", saved_tok)):
        if sha != job.tokenizer_sha256:
            raise CompatibilityError(
                f"tokenizer mismatch: checkpoint {resume_dir} ({what}) has {sha[:12]}, the data "
                f"has {job.tokenizer_sha256[:12]}"
            )
    ckpt.check_compatible(loaded.model_cfg, job.cfg.model)
    # Full weights on every rank before wrapping: DDP starts from them, FSDP2 shards them.
    ckpt.load_weights(model, loaded.state_dict, loaded.path)
    job.loader.load_state_dict(state["data"])
    return state


def _start(run: _Run, log: Callable[[str], None]) -> None:
    """config.json (with what this run resolved), metrics trimmed to the start step, a log
    line."""
    job, d, tc, model_cfg = run.job, run.d, run.job.cfg.train, run.job.cfg.model
    dtype = str(run.dtype).removeprefix("torch.")
    resolved = {
        "steps": job.total_steps,
        "lr": run.peak_lr,
        "warmup_steps": run.warmup,
        "micro_batch_size": tc.batch_size // job.accum,
        "device": run.device.type,
        "dtype": dtype,
        "attention": run.backend,
        "world_size": d.world,
    }
    d.main_decides(lambda: write_start_files(run.run_dir, job.config_dict, resolved, run.step, log))
    log(
        f"{model_cfg.objective.upper()} {model_cfg.name}: "
        f"{model_cfg.n_params_non_embedding / 1e6:.2f}M non-embedding params, "
        f"{job.total_steps} steps x batch {tc.batch_size} (seq_len "
        f"{model_cfg.seq_len}) on {run.device.type} ({dtype}, attention {run.backend})"
        + (f", {d.world} processes ({d.parallel})" if d.active else "")
        + (", activation checkpointing" if tc.activation_checkpointing else "")
        + (", compiled blocks" if tc.compile else "")
        + f", loss head {tc.loss_head}"
    )


def _train_steps(run: _Run, on_step: OnStep | None, log: Callable[[str], None]) -> None:
    """Phase 2: optimizer steps until the total, validating, logging and saving on cadence; a
    signal saves at the next step boundary and raises ``Interrupted``."""
    job, d, tc = run.job, run.d, run.job.cfg.train
    metrics = MetricsWriter(run.run_dir / "metrics.jsonl")
    peak = peak_flops(run.device)
    if peak:
        peak *= d.world  # tokens below are global: MFU over all devices
    mine = distributed.rank_micro_batches(job.accum, d.world, d.rank)
    # Validation runs on rank 0 only, except under FSDP2, whose forward is a collective.
    validates = d.is_main or d.parallel == "fsdp"
    flops_per_token = job.cfg.model.flops_per_token()
    run.model.train()
    with _SignalFlag() as sig:
        while run.step < job.total_steps:
            t0 = time.perf_counter()
            lr = lr_at(run.step, job.total_steps, run.warmup, run.peak_lr, tc.min_lr_ratio)
            for g in run.opt.param_groups:
                g["lr"] = lr
            batch = job.loader.next_batch()
            loss_sum, n_tok, grad_norm = _optimizer_step(run, batch, mine, log)
            if run.device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            run.step += 1
            run.tokens_seen += n_tok
            run.timed[0] += n_tok
            run.timed[1] += dt
            run.train_loss = loss_sum
            record = _record(run, loss_sum, lr, grad_norm, n_tok, dt)
            if job.log_extra:
                record.update(job.log_extra(batch))
            if peak:
                record["mfu"] = round(flops_per_token * n_tok / dt / peak, 4)
            if (run.step % tc.val_every == 0 or run.step == job.total_steps) and validates:
                with autocast(run.device, run.dtype):
                    run.val_loss = job.validate(run.model)
                run.model.train()
                record["val_loss"] = round(run.val_loss, 5)
            if d.is_main and (
                run.step % tc.log_every == 0 or "val_loss" in record or run.step == job.total_steps
            ):
                metrics.write(record)
            if on_step:
                on_step(run.step, job.total_steps, record)
            _save_or_stop(run, sig)
    if run.val_loss is None and validates:  # resumed a finished run: nothing trained, still report
        with autocast(run.device, run.dtype):
            run.val_loss = job.validate(run.model)


def _optimizer_step(
    run: _Run, batch: Any, mine: range, log: Callable[[str], None]
) -> tuple[float, int, float]:
    """Forward and backward over this process's micro-batches, then one update (or a skip, for a
    non-finite loss or gradient). Returns (loss, tokens, grad norm), summed over ranks."""
    job, d, tc, opt = run.job, run.d, run.job.cfg.train, run.opt
    loss_sum, n_tok = 0.0, 0
    with autocast(run.device, run.dtype):
        micro = job.step_losses(run.train_model, batch, run.step, mine)
        for i in range(len(mine)):
            # Gradients are reduced across ranks after the last micro-batch only; the
            # context must hold the forward too, which runs inside next().
            with distributed.grad_sync(run.train_model, d, enabled=i == len(mine) - 1):
                loss, n = next(micro)
                loss.backward()
            loss_sum += float(loss.detach())
            n_tok += n
    grad_norm = distributed.clip_grad_norm(run.model, d, tc.grad_clip)
    finite = math.isfinite(loss_sum) and math.isfinite(grad_norm)
    if d.active:
        # Each rank's loss is its share divided by its micro-batch count: the mean over
        # ranks is the global loss. A non-finite value anywhere stops or skips everywhere.
        (loss_total, tok_total), (bad,) = (d.all_sum(loss_sum, n_tok), d.all_max(int(not finite)))
        loss_sum, n_tok, finite = loss_total / d.world, int(tok_total), not bad
    if not finite:
        opt.zero_grad(set_to_none=True)
        if run.skips >= tc.max_nonfinite_skips:
            raise DivergenceError(
                f"non-finite loss ({loss_sum}) or grad norm ({grad_norm}) at step {run.step + 1}; "
                f"no update applied, last checkpoint {run.last_ckpt or '(none)'} left as it is"
            )
        run.skips += 1
        log(
            f"step {run.step + 1}: non-finite loss/grad, update skipped "
            f"({run.skips}/{tc.max_nonfinite_skips})"
        )
    else:
        opt.step()
        opt.zero_grad(set_to_none=True)
    return loss_sum, n_tok, grad_norm


def _record(
    run: _Run, loss_sum: float, lr: float, grad_norm: float, n_tok: int, dt: float
) -> dict[str, Any]:
    """The step's metrics.jsonl record."""
    return {
        "step": run.step,
        "loss": round(loss_sum, 5),
        "lr": lr,
        "grad_norm": round(grad_norm, 4),
        "tokens": run.tokens_seen,
        "tokens_per_s": round(n_tok / dt, 1),
        # Wall clock, and the run's training seconds across resumes (loss-vs-time plots).
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "elapsed_s": round(run.elapsed_before + time.perf_counter() - run.t_start, 3),
    }


def _save_or_stop(run: _Run, sig: _SignalFlag) -> None:
    """Save on the cadence, at the end, or on a signal; after a signal's save, stop."""
    d, tc = run.d, run.job.cfg.train
    # Under torchrun the flag is agreed (MAX over ranks): all save and stop together.
    signum = (d.all_max(sig.signum or 0)[0] or None) if d.active else sig.signum
    if run.step % tc.save_every == 0 or run.step == run.job.total_steps or signum is not None:
        run.last_ckpt = _save(run)
        if not d.active:
            signum = sig.signum  # one process: a signal during that save is honoured now
    if signum is not None:
        raise Interrupted(signum, run.last_ckpt)


def _save(run: _Run) -> Path:
    """Phase 3: a checkpoint of this step (rank 0 writes; the others wait for the commit)."""
    job, d = run.job, run.d
    # Every rank: FSDP2 gathers the full state to rank 0 here (a collective).
    weights, opt_tensors = distributed.full_state(run.model, run.opt, d, run.names)

    def write() -> str:
        train_state = {
            "config": job.config_dict,
            "data": job.loader.state_dict(),
            "loop": {
                "step": run.step,
                "tokens_seen": run.tokens_seen,
                "nonfinite_skips": run.skips,
                "elapsed_s": run.elapsed_before + time.perf_counter() - run.t_start,
            },
            "corpus": job.data_state,
        }
        return str(
            ckpt.save_checkpoint(
                run.run_dir,
                run.step,
                model=run.model,
                weights=weights,
                model_cfg=job.cfg.model,
                tokenizer_path=job.tokenizer_path,
                tokenizer_sha256=job.tokenizer_sha256,
                train_state=train_state,
                optimizer=opt_tensors,
                keep_last=job.cfg.train.keep_last,
                manifest_extra={"world_size": d.world, "parallel": d.parallel},
            )
        )

    # Rank 0 writes; the others wait for the commit (or get its error) at the broadcast.
    return Path(d.main_decides(write))


def _result(run: _Run) -> TrainResult:
    """Phase 4: what the run did, for the caller's summary."""
    job, d, model_cfg = run.job, run.d, run.job.cfg.model
    tokens, seconds = run.timed
    return TrainResult(
        run_dir=run.run_dir,
        checkpoint=run.last_ckpt,
        steps=run.step,
        tokens=run.tokens_seen,
        val_loss=run.val_loss,
        val_loss_kind=job.val_kind,
        unigram_entropy=job.unigram() if job.unigram and d.is_main else None,
        train_loss=run.train_loss,
        tokens_per_s=tokens / seconds if seconds else 0.0,
        seconds=time.perf_counter() - run.t_start,
        peak_rss_mb=peak_rss_mb(),
        n_params_non_embedding=model_cfg.n_params_non_embedding,
        device=str(run.device),
        attention=run.backend,
        resumed_from=run.resumed_from,
        seq_len=model_cfg.seq_len,
        nonfinite_skips=run.skips,
        rank=d.rank,
        world_size=d.world,
        parallel=d.parallel,
    )
