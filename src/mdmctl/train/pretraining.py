"""Pretraining (``mdmctl pretrain``): an MDM (default) or the ARM baseline trained from scratch on a
tokenized corpus, as a ``Job`` for the shared loop (``loop.py``).

Per step (docs/method.md §3): with probability ``var_len_prob`` the MDM's batch is cut to a length
drawn from U{1..seq_len}; each micro-batch's masking draws come from a generator seeded by
``mix(seed, step, micro)``, so resume is exact without replaying anything.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import partial
from typing import Any

import torch

from mdmctl import distributed
from mdmctl.autoregressive import arm_nll, arm_train_loss
from mdmctl.config import ModelConfig, RunConfig, TrainConfig
from mdmctl.data.batches import TokenWindows, TrainLoader, mix
from mdmctl.data.shards import read_manifest, tokenizer_info, verify_corpus
from mdmctl.device import resolve_device
from mdmctl.diffusion import mdm_elbo, mdm_loss
from mdmctl.errors import DataError
from mdmctl.log import info
from mdmctl.model import Transformer
from mdmctl.train.loop import Job, OnStep, TrainResult, run_job


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


def unigram_entropy(windows: TokenWindows) -> float:
    """Entropy (nats/token) of the split's unigram distribution: the loss a context-free model
    gets."""
    counts = windows.token_counts()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum())


def pretrain(
    cfg: RunConfig,
    *,
    resume: str = "auto",
    overwrite: bool = False,
    verify_data: bool = False,
    on_step: OnStep | None = None,
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
    tc = train_config_for_world(tc, log)
    tc = plan_memory(tc, model_cfg, cfg.device, cfg.dtype, log)
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
            on_docs = partial(model, doc_ids=doc)
            if model_cfg.objective == "mdm":
                mgen = torch.Generator().manual_seed(mix(tc.seed, step, m + 1))
                loss = mdm_loss(on_docs, x0, model_cfg.mask_id, mgen, tc.eps, head=tc.loss_head)
            else:
                loss = arm_train_loss(on_docs, x0, head=tc.loss_head)
            # Each micro-batch keeps its own normalisation; dividing by this process's count
            # (not the global accumulation) is undone by the gradient averaging over ranks.
            yield loss / len(micro_ids), x0.numel()

    job = Job(
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
        unigram=lambda: unigram_entropy(train_windows),
    )
    return run_job(job, resume=resume, overwrite=overwrite, on_step=on_step, log=log)


def train_config_for_world(tc: TrainConfig, log: Callable[[str], None]) -> TrainConfig:
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


def plan_memory(
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
