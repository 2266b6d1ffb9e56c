"""``pretrain``: the training loop for the MDM (default) and the ARM baseline, shared with
``finetune.py`` (a job: loader, per-step losses, validation; this module runs it).

AdamW (0.9, 0.95), cosine schedule with warmup to ``min_lr_ratio``·lr (a pure function of the step),
gradient accumulation, grad clipping, bf16 autocast on CUDA. Randomness: the data order comes from
the loader's (epoch, consumed) state, and every step's masking / time / length draws come from a
generator seeded by ``mix(seed, step, micro)``, so resume is exact without replaying anything.
Checkpoints follow ``checkpoint.py``; SIGINT/SIGTERM save at the next step boundary and exit.

Under torchrun (``distributed.py``, docs/distributed.md) every rank reads the same global batch and
computes its own block of micro-batches; rank 0 alone holds the run lock, logs, writes metrics and
checkpoints; stop and skip decisions are all-reduced so every rank takes them at the same step.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from mdmctl import checkpoint as ckpt
from mdmctl import distributed, runlock
from mdmctl.attention import resolve_backend
from mdmctl.autoregressive import arm_loss, arm_nll
from mdmctl.config import ModelConfig, RunConfig, TrainConfig
from mdmctl.data.batches import TokenWindows, TrainLoader, mix
from mdmctl.data.shards import read_manifest, tokenizer_info, verify_corpus
from mdmctl.diffusion import mdm_elbo, mdm_loss
from mdmctl.errors import (
    CheckpointError,
    CompatibilityError,
    ConfigError,
    DataError,
    DivergenceError,
    MdmctlError,
)
from mdmctl.fileio import atomic_write_text, make_out_dir
from mdmctl.log import MetricsWriter, info, truncate_metrics
from mdmctl.model import Transformer
from mdmctl.runtime import autocast, peak_flops, peak_rss_mb, resolve_device, resolve_dtype

# Fields that may change between a run and its resume (tunables); everything else must match.
RESUMABLE_CHANGES = {
    "steps",
    "tokens",
    "flops",
    "lr",
    "min_lr_ratio",
    "warmup_steps",
    "val_every",
    "val_batches",
    "val_mc",
    "save_every",
    "keep_last",
    "log_every",
    "max_nonfinite_skips",
    "micro_batch_size",
    # How the same maths is spread over processes: a run may resume at another world size.
    "parallel",
    "activation_checkpointing",
}


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
    """Steps whose update was skipped for a non-finite loss or gradient (``max_nonfinite_skips``)."""
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


def unigram_entropy(windows: TokenWindows, vocab_size: int) -> float:
    """Entropy (nats/token) of the split's unigram distribution: the loss a context-free model gets."""
    counts = torch.zeros(vocab_size, dtype=torch.float64)
    for f in windows._files:  # noqa: SLF001 (same package)
        n = f.get_shape()[0]
        for s in range(0, n, 1 << 22):
            counts += torch.bincount(
                f[s : s + (1 << 22)].to(torch.int64), minlength=vocab_size
            ).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum())


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


@torch.no_grad()
def validate(model: Transformer, windows: TokenWindows, tc: TrainConfig, device) -> float:
    """Mean per-token loss on a fixed slice of the validation split (same slice every time).

    MDM: the ELBO bound with ``val_mc`` stratified t per sequence; ARM: next-token CE.
    """
    model.eval()
    n = min(len(windows), tc.val_batches * tc.batch_size)
    total, count = 0.0, 0
    gen = torch.Generator().manual_seed(mix(tc.seed, 0x5EED))
    for s in range(0, n, tc.batch_size):
        b = windows.batch(list(range(s, min(n, s + tc.batch_size))))
        x0 = b.x0.to(device)
        doc = b.doc_ids.to(device) if tc.doc_mask else None
        if model.cfg.objective == "mdm":
            bound, _ = mdm_elbo(
                lambda xt: model(xt, doc_ids=doc), x0, model.cfg.mask_id, tc.val_mc, gen, tc.eps
            )
            total += float(bound.sum())
            count += x0.numel()
        else:
            total += float(arm_nll(model(x0, doc_ids=doc), x0).sum())
            count += x0.shape[0] * (x0.shape[1] - 1)
    return total / count


@dataclass
class _Job:
    """What differs between pretraining and fine-tuning; the loop in ``_train`` is shared."""

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


def _prepare_run_dir(run_dir: Path, resume: str, overwrite: bool) -> bool:
    """Check or clear the (locked) ``run_dir``; returns whether it holds checkpoint steps."""
    # The lock file is ours: it neither makes the folder "non-empty" nor goes with --overwrite.
    contents = [p for p in run_dir.iterdir() if p.name != runlock.LOCK_NAME]
    if resume == "never" and contents and not overwrite:
        raise ConfigError(
            f"refusing to write into non-empty run dir {run_dir}: pass --resume auto to continue, "
            "--overwrite to start over, or another --out"
        )
    if overwrite:
        import shutil

        for p in contents:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
    if (run_dir / "checkpoints").is_dir():
        ckpt.clean_stale_tmp(run_dir)
    return bool(ckpt.list_steps(run_dir))


def _set_aside(ckpt_root: Path, name: str) -> Path:
    """Rename an unverifiable step to a fresh ``invalid-<name>[.k]`` (never deleted, never
    clobbered: a step set aside before keeps its name, and a rename onto it would fail)."""
    aside = ckpt_root / f"invalid-{name}"
    k = 0
    while aside.exists():
        k += 1
        aside = ckpt_root / f"invalid-{name}.{k}"
    (ckpt_root / name).rename(aside)
    return aside


def _check_resume(saved: dict[str, Any], current: dict[str, Any], run_dir: Path) -> None:
    diffs = []
    for section, fields in current.items():
        if not isinstance(fields, dict):
            continue
        for f, v in fields.items():
            if (
                section == "train"
                and f in RESUMABLE_CHANGES
                or (section == "model" and f == "name")
                or (section == "sft" and f in ("epochs", "device", "dtype", "attention"))
            ):
                continue
            old = saved.get(section, {}).get(f)
            if old != v:
                diffs.append(f"{section}.{f}: checkpoint={old}, requested={v}")
    if diffs:
        raise CompatibilityError(
            f"{run_dir} holds a run with another setup ({'; '.join(diffs)}): cannot resume it; "
            "train into another --out, or pass --overwrite to replace it"
        )


def _train(
    job: _Job,
    *,
    resume: str,
    overwrite: bool,
    on_step: Callable[[int, int, dict[str, Any]], None] | None,
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

            def lock() -> str:
                make_out_dir(run_dir)
                held.enter_context(runlock.hold(run_dir, log))
                return ""

            d.main_decides(lock)
            return _train_locked(
                job, run_dir, d, resume=resume, overwrite=overwrite, on_step=on_step, log=log
            )


def _quiet(msg: str) -> None:
    """The log of ranks other than 0."""


def _select_resume(run_dir: Path, resume: str, overwrite: bool, log: Callable[[str], None]) -> str:
    """Check or clear ``run_dir`` and pick the checkpoint to resume from ("" for none)."""
    has_steps = _prepare_run_dir(run_dir, resume, overwrite)
    resume_dir: Path | None = None
    if resume not in ("auto", "never"):
        resume_dir = ckpt.resolve_checkpoint(resume, log=log)
    elif resume == "auto" and has_steps:
        resume_dir = ckpt.find_latest(run_dir, log=log)
    if resume_dir is None:
        return ""
    newer = [
        p.name
        for p in ckpt.list_steps(run_dir)
        if p.resolve().parent == resume_dir.resolve().parent and p.name > resume_dir.name
    ]
    if newer and resume == "auto":
        # Newer steps that failed verification: set them aside (never deleted) so retention,
        # which keeps the highest step numbers, cannot drop the new trajectory instead.
        for name in newer:
            aside = _set_aside(run_dir / "checkpoints", name)
            log(f"moved unverifiable {name} to {aside.name}")
    elif newer:
        # Retention keeps the highest step numbers: continuing from an older step here would
        # delete the new trajectory's checkpoints and keep the abandoned ones.
        raise ConfigError(
            f"{run_dir} has checkpoints newer than {resume_dir.name} ({', '.join(newer)}); "
            "resume into another --out, or delete them first"
        )
    return str(resume_dir)


def _start_files(
    run_dir: Path,
    config_dict: dict[str, Any],
    resolved: dict[str, Any],
    start_step: int,
    log: Callable[[str], None],
) -> str:
    # "resolved": the values this run actually uses where the request left them to a default
    # (steps from --tokens/--flops, the size's lr, warm-up, device). Not part of the resume
    # check: those fields may legitimately change on resume.
    text = json.dumps({**config_dict, "resolved": resolved}, indent=2) + "\n"
    atomic_write_text(run_dir / "config.json", text)
    # Steps after the resumed one (or all, on a fresh start) were lost with the kill and are
    # trained again: drop their old records so every step appears once.
    truncate_metrics(run_dir / "metrics.jsonl", start_step, log)
    return ""


def _train_locked(
    job: _Job,
    run_dir: Path,
    d: distributed.Dist,
    *,
    resume: str,
    overwrite: bool,
    on_step: Callable[[int, int, dict[str, Any]], None] | None,
    log: Callable[[str], None],
) -> TrainResult:
    t_start = time.perf_counter()
    cfg, tc, model_cfg = job.cfg, job.cfg.train, job.cfg.model
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    backend = resolve_backend(cfg.attention, device)
    total_steps = job.total_steps
    warmup = tc.resolve_warmup(total_steps)
    peak_lr = tc.resolve_lr(model_cfg)
    # Rank 0 checks the folder and picks the step; the others read the same files after it.
    chosen = d.main_decides(lambda: _select_resume(run_dir, resume, overwrite, log))
    resume_dir = Path(chosen) if chosen else None

    torch.manual_seed(tc.seed)
    model = Transformer(model_cfg, backend=backend)
    model.activation_checkpointing = tc.activation_checkpointing
    if job.init is not None:
        loaded = ckpt.load_checkpoint(job.init)
        ckpt.load_weights(model, loaded.state_dict, loaded.path)
    model.to(device)
    start_step, tokens_seen, skips, resumed_from = 0, 0, 0, None
    elapsed_before = 0.0  # training seconds of the run before this process (resume)
    if resume_dir is not None:
        state = ckpt.read_train_state(resume_dir)
        try:
            _ = state["config"], state["data"], state["loop"]["step"], state["loop"]["tokens_seen"]
        except (KeyError, TypeError) as e:
            raise CheckpointError(f"{resume_dir}/train_state.json: missing {e}") from None
        _check_resume(state["config"], job.config_dict, run_dir)
        # Rank 0 verified the hashes when it chose the step; the others only check sizes.
        loaded = ckpt.load_checkpoint(resume_dir, check_hash=d.is_main)
        if loaded.tokenizer_sha256 != job.tokenizer_sha256:
            raise CompatibilityError(
                f"tokenizer mismatch: checkpoint {resume_dir} has {loaded.tokenizer_sha256[:12]}, "
                f"the data has {job.tokenizer_sha256[:12]}"
            )
        # Full weights on every rank before wrapping: DDP starts from them, FSDP2 shards them.
        ckpt.load_weights(model, loaded.state_dict, loaded.path)
        job.loader.load_state_dict(state["data"])
        start_step, tokens_seen = state["loop"]["step"], state["loop"]["tokens_seen"]
        skips = state["loop"].get("nonfinite_skips", 0)
        elapsed_before = float(state["loop"].get("elapsed_s", 0.0))
        resumed_from = start_step
    train_model = distributed.wrap(model, d, device)
    # After wrapping: FSDP2 replaces the parameters by sharded ones (same names).
    names = {p: n for n, p in model.named_parameters()}
    params = {n: p for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(
        _param_groups(model, tc.weight_decay),
        lr=peak_lr,
        betas=(tc.beta1, tc.beta2),
        fused=device.type == "cuda",
    )
    if resume_dir is not None:
        distributed.load_optimizer(model, opt, d, ckpt.read_optimizer(resume_dir), params)
        log(f"resuming from {resume_dir} (step {start_step})")
    resolved = {
        "steps": total_steps,
        "lr": peak_lr,
        "warmup_steps": warmup,
        "micro_batch_size": tc.batch_size // job.accum,
        "device": device.type,
        "dtype": str(dtype).removeprefix("torch."),
        "attention": backend,
        "world_size": d.world,
    }
    d.main_decides(lambda: _start_files(run_dir, job.config_dict, resolved, start_step, log))
    metrics = MetricsWriter(run_dir / "metrics.jsonl")
    log(
        f"{model_cfg.objective.upper()} {model_cfg.name}: {model_cfg.n_params_non_embedding / 1e6:.2f}M "
        f"non-embedding params, {total_steps} steps x batch {tc.batch_size} (seq_len "
        f"{model_cfg.seq_len}) on {device.type} ({str(dtype).removeprefix('torch.')}, "
        f"attention {backend})"
        + (f", {d.world} processes ({d.parallel})" if d.active else "")
        + (", activation checkpointing" if tc.activation_checkpointing else "")
    )

    def save(step: int) -> Path:
        # Every rank: FSDP2 gathers the full state to rank 0 here (a collective).
        weights, opt_tensors = distributed.full_state(model, opt, d, names)

        def write() -> str:
            train_state = {
                "config": job.config_dict,
                "data": job.loader.state_dict(),
                "loop": {
                    "step": step,
                    "tokens_seen": tokens_seen,
                    "nonfinite_skips": skips,
                    "elapsed_s": elapsed_before + time.perf_counter() - t_start,
                },
                "corpus": job.data_state,
            }
            return str(
                ckpt.save_checkpoint(
                    run_dir,
                    step,
                    model=model,
                    weights=weights,
                    model_cfg=model_cfg,
                    tokenizer_path=job.tokenizer_path,
                    tokenizer_sha256=job.tokenizer_sha256,
                    train_state=train_state,
                    optimizer=opt_tensors,
                    keep_last=tc.keep_last,
                    manifest_extra={"world_size": d.world, "parallel": d.parallel},
                )
            )

        # Rank 0 writes; the others wait for the commit (or get its error) at the broadcast.
        return Path(d.main_decides(write))

    peak = peak_flops(device)
    if peak:
        peak *= d.world  # tokens below are global: MFU over all devices
    mine = distributed.rank_micro_batches(job.accum, d.world, d.rank)
    # Validation runs on rank 0 only, except under FSDP2, whose forward is a collective.
    validates = d.is_main or d.parallel == "fsdp"
    flops_per_token = model_cfg.flops_per_token()
    last_ckpt: Path | None = resume_dir
    train_loss: float | None = None
    val_loss: float | None = None
    timed_tokens, timed_s = 0, 0.0
    model.train()
    step = start_step
    with _SignalFlag() as sig:
        while step < total_steps:
            t0 = time.perf_counter()
            lr = lr_at(step, total_steps, warmup, peak_lr, tc.min_lr_ratio)
            for g in opt.param_groups:
                g["lr"] = lr
            batch = job.loader.next_batch()
            loss_sum, n_tok = 0.0, 0
            with autocast(device, dtype):
                micro = job.step_losses(train_model, batch, step, mine)
                for i in range(len(mine)):
                    # Gradients are reduced across ranks after the last micro-batch only; the
                    # context must hold the forward too, which runs inside next().
                    with distributed.grad_sync(train_model, d, enabled=i == len(mine) - 1):
                        loss, n = next(micro)
                        loss.backward()
                    loss_sum += float(loss.detach())
                    n_tok += n
            grad_norm = distributed.clip_grad_norm(model, d, tc.grad_clip)
            finite = math.isfinite(loss_sum) and math.isfinite(grad_norm)
            if d.active:
                # Each rank's loss is its share divided by its micro-batch count: the mean over
                # ranks is the global loss. A non-finite value anywhere stops or skips everywhere.
                (loss_total, tok_total), (bad,) = (
                    d.all_sum(loss_sum, n_tok),
                    d.all_max(int(not finite)),
                )
                loss_sum, n_tok, finite = loss_total / d.world, int(tok_total), not bad
            if not finite:
                opt.zero_grad(set_to_none=True)
                if skips >= tc.max_nonfinite_skips:
                    raise DivergenceError(
                        f"non-finite loss ({loss_sum}) or grad norm ({grad_norm}) at step {step + 1}; "
                        f"no update applied, last checkpoint {last_ckpt or '(none)'} left as it is"
                    )
                skips += 1
                log(
                    f"step {step + 1}: non-finite loss/grad, update skipped ({skips}/{tc.max_nonfinite_skips})"
                )
            else:
                opt.step()
                opt.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            step += 1
            tokens_seen += n_tok
            timed_tokens += n_tok
            timed_s += dt
            train_loss = loss_sum
            record: dict[str, Any] = {
                "step": step,
                "loss": round(loss_sum, 5),
                "lr": lr,
                "grad_norm": round(grad_norm, 4),
                "tokens": tokens_seen,
                "tokens_per_s": round(n_tok / dt, 1),
                # Wall clock, and the run's training seconds across resumes (loss-vs-time plots).
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "elapsed_s": round(elapsed_before + time.perf_counter() - t_start, 3),
            }
            if job.log_extra:
                record.update(job.log_extra(batch))
            if peak:
                record["mfu"] = round(flops_per_token * n_tok / dt / peak, 4)
            if (step % tc.val_every == 0 or step == total_steps) and validates:
                with autocast(device, dtype):
                    val_loss = job.validate(model)
                model.train()
                record["val_loss"] = round(val_loss, 5)
            if d.is_main and (
                step % tc.log_every == 0 or "val_loss" in record or step == total_steps
            ):
                metrics.write(record)
            if on_step:
                on_step(step, total_steps, record)
            # Under torchrun the flag is agreed (MAX over ranks): all save and stop together.
            signum = (d.all_max(sig.signum or 0)[0] or None) if d.active else sig.signum
            if step % tc.save_every == 0 or step == total_steps or signum is not None:
                last_ckpt = save(step)
                if not d.active:
                    signum = sig.signum  # one process: a signal during that save is honoured now
            if signum is not None:
                raise Interrupted(signum, last_ckpt)

    if val_loss is None and validates:  # resumed a finished run: nothing trained, still report
        with autocast(device, dtype):
            val_loss = job.validate(model)
    return TrainResult(
        run_dir=run_dir,
        checkpoint=last_ckpt,
        steps=step,
        tokens=tokens_seen,
        val_loss=val_loss,
        val_loss_kind=job.val_kind,
        unigram_entropy=job.unigram() if job.unigram and d.is_main else None,
        train_loss=train_loss,
        tokens_per_s=timed_tokens / timed_s if timed_s else 0.0,
        seconds=time.perf_counter() - t_start,
        peak_rss_mb=peak_rss_mb(),
        n_params_non_embedding=model_cfg.n_params_non_embedding,
        device=str(device),
        attention=backend,
        resumed_from=resumed_from,
        seq_len=model_cfg.seq_len,
        nonfinite_skips=skips,
        rank=d.rank,
        world_size=d.world,
        parallel=d.parallel,
    )


def pretrain(
    cfg: RunConfig,
    *,
    resume: str = "auto",
    overwrite: bool = False,
    verify_data: bool = False,
    on_step: Callable[[int, int, dict[str, Any]], None] | None = None,
    log: Callable[[str], None] = info,
) -> TrainResult:
    """Train ``cfg.model`` on the corpus at ``cfg.data``; write ``cfg.out``. See module docstring.

    The corpus's shards are hashed against ``corpus.json`` once per run; ``verify_data`` also
    checks every token id against the vocabulary (reads the whole corpus).
    """
    tc = cfg.train
    manifest = read_manifest(cfg.data)
    verify_corpus(manifest, full=verify_data, log=log)
    tok = tokenizer_info(manifest)
    model_cfg = replace(
        cfg.model,
        vocab_size=tok.vocab_size,
        mask_id=tok.mask_id if cfg.model.objective == "mdm" else -1,
    )
    tc = _train_config_for_world(tc, log)
    tc = _plan_memory(tc, model_cfg, cfg.device, cfg.dtype, log)
    cfg = replace(cfg, model=model_cfg, train=tc)
    micro = tc.micro_batch_size or tc.batch_size
    accum = tc.batch_size // micro
    train_windows = TokenWindows(manifest, "train", model_cfg.seq_len)
    val_windows = TokenWindows(manifest, "val", model_cfg.seq_len)
    if len(val_windows) == 0:
        raise DataError(
            f"{manifest.path}: validation split has {manifest.tokens['val']} tokens, fewer than one "
            f"sequence of seq_len={model_cfg.seq_len}; use a smaller --seq-len or a larger --val-fraction"
        )
    loader = TrainLoader(train_windows, tc.batch_size, tc.seed)
    device = resolve_device(cfg.device)

    def step_losses(
        model: torch.nn.Module, batch: Any, step: int, micro_ids: range
    ) -> Iterator[tuple[torch.Tensor, int]]:
        gen = torch.Generator().manual_seed(mix(tc.seed, step))
        L = model_cfg.seq_len
        if model_cfg.objective == "mdm" and torch.rand(1, generator=gen).item() < tc.var_len_prob:
            # Variable length (SMDM): fixes the train/test length mismatch of a bidirectional model.
            L = int(torch.randint(1, model_cfg.seq_len + 1, (1,), generator=gen).item())
        x0_all, doc_all = batch.x0[:, :L].to(device), batch.doc_ids[:, :L].to(device)
        for m in micro_ids:
            x0 = x0_all[m * micro : (m + 1) * micro]
            doc = doc_all[m * micro : (m + 1) * micro] if tc.doc_mask else None
            if model_cfg.objective == "mdm":
                mgen = torch.Generator().manual_seed(mix(tc.seed, step, m + 1))
                loss = mdm_loss(
                    lambda xt: model(xt, doc_ids=doc), x0, model_cfg.mask_id, mgen, tc.eps
                )
            else:
                loss = arm_loss(model(x0, doc_ids=doc), x0)
            # Each micro-batch keeps its own normalisation; dividing by this process's count
            # (not the global accumulation) is undone by the gradient averaging over ranks.
            yield loss / len(micro_ids), x0.numel()

    job = _Job(
        cfg=cfg,
        config_dict=cfg.to_dict(),
        loader=loader,
        step_losses=step_losses,
        accum=accum,
        validate=lambda model: validate(model, val_windows, tc, device),
        val_kind="MDM ELBO bound" if model_cfg.objective == "mdm" else "ARM cross-entropy",
        tokenizer_path=manifest.path / "tokenizer.json",
        tokenizer_sha256=tok.sha256,
        data_state={"path": str(manifest.path), "tokenizer_sha256": tok.sha256},
        total_steps=tc.resolve_steps(model_cfg),
        unigram=lambda: unigram_entropy(train_windows, model_cfg.vocab_size),
    )
    return _train(job, resume=resume, overwrite=overwrite, on_step=on_step, log=log)


def _train_config_for_world(tc: TrainConfig, log: Callable[[str], None]) -> TrainConfig:
    """Under torchrun without --micro-batch-size: one micro-batch per rank, recorded in the run's
    config so the split (and with it every noise draw) is explicit. One process: unchanged."""
    world = distributed.env_world_size()
    micro = distributed.micro_batch_for_world(tc.batch_size, tc.micro_batch_size, world)
    if micro == tc.micro_batch_size:
        return tc
    if distributed.env_rank() == 0:
        log(
            f"{world} processes: micro-batch size {micro} (batch {tc.batch_size} / world); a "
            f"single process reproduces this run with --micro-batch-size {micro}"
        )
    return replace(tc, micro_batch_size=micro)


def _plan_memory(
    tc: TrainConfig, model_cfg: ModelConfig, device: str, dtype: str, log: Callable[[str], None]
) -> TrainConfig:
    """The micro-batch checked (or chosen, when not given) against the device's memory."""
    from mdmctl.memory import plan_training

    quiet = distributed.env_rank() != 0
    return plan_training(
        tc,
        model_cfg,
        device=device,
        dtype=dtype,
        world=distributed.env_world_size(),
        log=(lambda m: None) if quiet else log,
    )
