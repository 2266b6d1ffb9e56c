"""Supervised fine-tuning (``mdmctl finetune``): a checkpoint trained on prompt/response examples
as a ``Job`` for the shared loop (``loop.py``): the same checkpoints and resume as pretraining (see
``data/sft.py`` for the batches, docs/method.md §3 for the loss and docs/cli.md for the SMDM
options each setting maps to).

In phases: the checkpoint to start from and the loss it takes (``_start_from``), the examples
split, tokenized and batched (``_examples``), the per-step losses and validation (``SFTSteps``),
then the job.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from mdmctl import checkpoint as ckpt
from mdmctl.autoregressive import arm_sft_nll, arm_train_loss
from mdmctl.config import FinetuneConfig, ModelConfig, RunConfig, TrainConfig
from mdmctl.data.batches import mix
from mdmctl.data.sft import (
    SFTLoader,
    collate,
    is_val,
    read_examples,
    resolve_format,
    resolve_pad_to,
    tokenize_examples,
)
from mdmctl.device import resolve_device
from mdmctl.diffusion import mdm_conditional_elbo, mdm_sft_loss
from mdmctl.errors import CompatibilityError, ConfigError, DataError
from mdmctl.log import info
from mdmctl.model import Transformer
from mdmctl.tokenizer import info_from_file
from mdmctl.train.loop import Job, OnStep, TrainResult, run_job
from mdmctl.train.pretraining import plan_memory, train_config_for_world


def finetune(
    cfg: FinetuneConfig,
    *,
    resume: str = "auto",
    overwrite: bool = False,
    on_step: OnStep | None = None,
    log: Callable[[str], None] = info,
) -> TrainResult:
    """Supervised fine-tuning of a checkpoint on prompt/response examples (see ``data/sft.py``).

    MDM: conditional (prompt never masked) or unconditional loss, optional prompt dropout; ARM:
    cross-entropy on response tokens. Same optimiser, schedule, checkpoints and resume as
    pretraining.
    """
    tc = train_config_for_world(cfg.train, log)
    cfg = replace(cfg, train=tc)
    init, tok, tinfo, model_cfg, objective = _start_from(cfg, log)
    train_tok, val_tok, pad_to, fit = _examples(cfg, tok, tinfo, model_cfg, log)
    loader = SFTLoader(
        train_tok, tc.batch_size, tc.seed, tinfo.eos_id, batching=cfg.batching, pad_to=pad_to
    )
    if cfg.epochs is not None or tc.steps is None:
        total_steps = max(1, math.ceil((cfg.epochs or 1.0) * loader.batches_per_epoch))
    else:
        total_steps = tc.steps
    # Planned at the longest row a micro-batch can have (batches are cut to their longest row).
    tc = plan_memory(tc, replace(model_cfg, seq_len=fit), cfg.device, cfg.dtype, log)
    cfg = replace(cfg, train=tc)
    micro = tc.micro_batch_size or tc.batch_size
    log(
        f"fine-tuning ({objective}) on {len(train_tok)} examples, {len(val_tok)} held out; "
        f"{loader.batches_per_epoch} batches per epoch, {cfg.batching} batches padded with eos to "
        + (f"{pad_to} tokens" if pad_to else "each micro-batch's longest row")
        + f" ({loader.mean_pad_eos(micro):.1f} padding eos per row)"
    )
    steps = SFTSteps(objective, tc, micro, tc.batch_size // micro, pad_to, model_cfg.mask_id,
                     tinfo.eos_id, cfg.cfg_dropout, val_tok,
                     resolve_device(cfg.device))  # fmt: skip
    run_cfg = RunConfig(model=model_cfg, train=tc, data=str(cfg.data), out=cfg.out,
                        device=cfg.device, attention=cfg.attention, dtype=cfg.dtype)  # fmt: skip
    config_dict = {"model": model_cfg.to_dict(), **cfg.to_dict(), "init": str(init)}
    config_dict["sft"] = {k: v for k, v in config_dict["sft"].items() if k not in ("init", "out")}
    job = Job(
        cfg=run_cfg,
        config_dict=config_dict,
        loader=loader,
        step_losses=steps.losses,
        accum=steps.accum,
        validate=steps.validate,
        val_kind=(
            "ARM response CE" if objective.startswith("arm") else "MDM conditional ELBO bound"
        )
        + " per response token",
        tokenizer_path=init / "tokenizer.json",
        tokenizer_sha256=tinfo.sha256,
        data_state={"path": str(cfg.data), "tokenizer_sha256": tinfo.sha256, "sft": True},
        total_steps=total_steps,
        init=init,
        log_extra=steps.log_extra,
    )
    return run_job(job, resume=resume, overwrite=overwrite, on_step=on_step, log=log)


def _start_from(
    cfg: FinetuneConfig, log: Callable[[str], None]
) -> tuple[Path, Any, Any, ModelConfig, str]:
    """(step dir, tokenizer, its info, the fine-tuning model config, the loss): ``conditional``
    or ``unconditional`` (MDM), ``arm`` (response CE) or ``arm-full`` (CE on the whole row)."""
    init = ckpt.resolve_checkpoint(cfg.init, log=log)
    loaded = ckpt.load_checkpoint(init)
    tok, tinfo = info_from_file(init / "tokenizer.json", loaded.model_cfg.objective == "mdm")
    if tinfo.sha256 != loaded.tokenizer_sha256:
        raise CompatibilityError(f"{init}: tokenizer.json does not match the weights' tokenizer")
    base = loaded.model_cfg
    if cfg.seq_len is not None and cfg.seq_len > base.seq_len:
        raise ConfigError(
            f"--seq-len {cfg.seq_len} exceeds the checkpoint's context {base.seq_len}"
        )
    model_cfg = replace(base, seq_len=cfg.seq_len or base.seq_len)
    objective = cfg.objective
    if base.objective == "arm":
        if cfg.cfg_dropout:
            raise ConfigError(
                "--cfg-dropout applies to MDM checkpoints; checkpoint objective is 'arm'"
            )
        # ARM: next-token CE on the response ("conditional") or on the whole sequence.
        objective = "arm-full" if objective == "unconditional" else "arm"
    elif objective == "auto":
        objective = "conditional"
    return init, tok, tinfo, model_cfg, objective


def _examples(
    cfg: FinetuneConfig, tok: Any, tinfo: Any, model_cfg: ModelConfig, log: Callable[[str], None]
) -> tuple[list[Any], list[Any], int | None, int]:
    """(train examples, validation examples, tokenized; the padded length or None for each
    batch's longest row; the length a training row must fit)."""
    fmt = resolve_format(cfg.data, cfg.format, cfg.prompt_field)
    examples = read_examples(cfg.data, fmt, cfg.prompt_field, cfg.response_field)
    pad_to = resolve_pad_to(cfg.pad_to, fmt, model_cfg.seq_len)
    val_ex = [e for e in examples if is_val(e, cfg.val_fraction)]
    train_ex = [e for e in examples if not is_val(e, cfg.val_fraction)]
    if not val_ex:  # tiny files: hold out the last example(s)
        k = max(1, round(len(examples) * cfg.val_fraction))
        train_ex, val_ex = examples[:-k], examples[-k:]
    # ARM: each prompt starts with eos, the document separator it saw in pretraining and the
    # context ``sample_arm`` gives it, so training and generation see the same positions.
    bos = [tinfo.eos_id] if model_cfg.objective == "arm" else []
    fit = pad_to or model_cfg.seq_len
    train_tok, dropped = tokenize_examples(train_ex, tok, tinfo.eos_id, fit, cfg.overlong, bos=bos)
    val_tok, _ = tokenize_examples(
        val_ex, tok, tinfo.eos_id, model_cfg.seq_len, cfg.overlong, bos=bos
    )
    if dropped:
        log(f"dropped {dropped} of {len(train_ex)} examples longer than {fit} tokens")
    if not val_tok:
        raise DataError(f"{cfg.data}: no validation example fits in {model_cfg.seq_len} tokens")
    return train_tok, val_tok, pad_to, fit


@dataclass
class SFTSteps:
    """Fine-tuning's per-step losses, validation and extra metrics (the ``Job``'s callables)."""

    objective: str  # conditional, unconditional, arm or arm-full (``_start_from``)
    tc: TrainConfig
    micro: int  # rows per micro-batch
    accum: int  # micro-batches per step
    pad_to: int | None
    mask_id: int
    eos_id: int
    cfg_dropout: float
    val_tok: list[Any]
    device: torch.device

    def losses(
        self, model: torch.nn.Module, batch: Any, step: int, micro_ids: range
    ) -> Iterator[tuple[torch.Tensor, int]]:
        micro = self.micro
        for m in micro_ids:
            # SMDM cuts each micro-batch to its longest row (unless the length is fixed).
            mb = batch.rows(slice(m * micro, (m + 1) * micro), trim=self.pad_to is None)
            x0, pm, rm = (t.to(self.device) for t in (mb.x0, mb.prompt_mask, mb.response_mask))
            if self.objective in ("arm", "arm-full"):
                scored = rm | pm if self.objective == "arm-full" else rm
                loss = arm_train_loss(model, x0, scored, self.tc.loss_head)
            else:
                gen = torch.Generator().manual_seed(mix(self.tc.seed, step, m + 1))
                loss = mdm_sft_loss(
                    model, x0, pm, self.mask_id, gen, eps=self.tc.eps,
                    conditional=self.objective == "conditional", cfg_dropout=self.cfg_dropout,
                    head=self.tc.loss_head,
                )  # fmt: skip
            yield loss / len(micro_ids), x0.numel()

    @torch.no_grad()
    def validate(self, model: Transformer) -> float:
        """Per response token: -log p(response | prompt) (ARM exact; MDM conditional ELBO)."""
        model.eval()
        tc, device = self.tc, self.device
        gen = torch.Generator().manual_seed(mix(tc.seed, 0x5EED))
        total, count = 0.0, 0
        # Examples of equal length batch together, so no padding enters the score (or leaks the
        # response length to the MDM).
        by_len: dict[int, list[Any]] = {}
        for e in self.val_tok:
            by_len.setdefault(len(e.prompt) + len(e.response), []).append(e)
        for _, group in sorted(by_len.items()):
            for s in range(0, len(group), tc.batch_size):
                b = collate(group[s : s + tc.batch_size], self.eos_id)
                x0, pm, rm = b.x0.to(device), b.prompt_mask.to(device), b.response_mask.to(device)
                if self.objective in ("arm", "arm-full"):
                    total += float(arm_sft_nll(model(x0), x0, rm).sum())
                else:
                    total += float(
                        mdm_conditional_elbo(model, x0, pm, self.mask_id, tc.val_mc, gen).sum()
                    )
                count += int(rm.sum())
        return total / max(count, 1)

    def log_extra(self, batch: Any) -> dict[str, Any]:
        micro, trim = self.micro, self.pad_to is None
        mbs = [batch.rows(slice(m * micro, (m + 1) * micro), trim) for m in range(self.accum)]
        cells = sum(b.x0.numel() for b in mbs)
        return {
            "padding_frac": round(1 - batch.real_tokens / cells, 4),
            "pad_eos_per_row": round(
                sum(b.pad_eos_per_row * len(b.lengths) for b in mbs) / len(batch.lengths), 2
            ),
        }
