"""``mdmctl pretrain``, ``mdmctl finetune`` and ``mdmctl runs``: thin layers over
``mdmctl.train`` and ``mdmctl.run_summary``."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mdmctl.cli.common import app, cli_errors, launch_rank, log_info, print_json
from mdmctl.cli.data import tokenize_with_progress
from mdmctl.cli.options import (
    CADENCE,
    MODEL_SHAPE,
    OPTIMIZER,
    RUN,
    SFT,
    SFT_DATA,
    Opt,
    Options,
    argument,
    command,
    from_field,
    json_out,
    train_options,
)
from mdmctl.cli.train_report import after_training, render_train_summary, with_train_progress
from mdmctl.config import (
    DEFAULT_DATA,
    SFT_BATCH_SIZE,
    TINY_SIZES,
    FinetuneConfig,
    ModelConfig,
    TrainConfig,
)

PRETRAIN_ONLY = ("var_len_prob", "eps", "doc_mask", "max_nonfinite_skips")
# How a step is computed, not what it computes (may change on resume).
EXECUTION = ("parallel", "activation_checkpointing", "loss_head", "compile")
TRAIN_FLAGS = ("steps", "tokens", "flops", "flops_convention", "batch_size", *OPTIMIZER, *CADENCE,
               *PRETRAIN_ONLY, "seed", *EXECUTION)  # fmt: skip


@command(
    app,
    "pretrain",
    objective=from_field(ModelConfig, "objective", given_default=True,
                         said="the --config file's [model] objective, else mdm"),
    size=Opt(("--size",), str | None, None,
             f"Named size: {', '.join(TINY_SIZES)} (CPU sizes) or an SMDM size (6M ... 2121M). "
             "Default: tiny (or the --config file's [model] name)."),
    config=Opt(("--config",), Path | None, None,
               "TOML run file with [model] and [train] sections; options given override it. "
               "Default: none."),
    data=Opt(("--data",), Path | None, None,
             f"Tokenized corpus (mdmctl tokenize). Default: {DEFAULT_DATA}, the built-in corpus "
             "(tokenized there on first use)."),
    out=Opt(("--out",), Path | None, None,
            "Run directory. Default: runs/<objective>-<size>-<data folder name>."),
    **train_options("steps", "tokens", "flops", "flops_convention", "batch_size",
                    "micro_batch_size"),
    **MODEL_SHAPE,
    **train_options("lr", "warmup_steps", "var_len_prob", "eps"),
    doc_mask=from_field(TrainConfig, "doc_mask", "--doc-mask/--no-doc-mask", given_default=True),
    **train_options("val_every", "save_every", "keep_last", "max_nonfinite_skips"),
    **{k: v for k, v in RUN.items() if k != "json_out"},
    verify_data=Opt(("--verify-data",), bool, False,
                    "Also read every token and check it against the vocabulary (shards are "
                    "always checked against corpus.json's sha256 once per run)."),
    show_samples=Opt(("--show-samples",), int, 3, "Samples printed in the summary.", min=0),
    **json_out("Print the summary as JSON on stdout."),
)  # fmt: skip
def pretrain(o: Options) -> None:
    """Train an MDM (or the ARM baseline) from scratch.

    Model and training options not given take the --config file's value if it sets one, else
    the default in their help.
    """
    with cli_errors():
        from mdmctl.config import pretrain_config
        from mdmctl.data.shards import ensure_builtin_corpus
        from mdmctl.train import pretrain as lib_pretrain

        run = pretrain_config(
            config_file=o.config, size=o.size, data=o.data, out=o.out,
            model=o.pick("objective", *MODEL_SHAPE), train=o.pick(*TRAIN_FLAGS),
            device=o.device, attention=o.attention, dtype=o.dtype,
        )  # fmt: skip
        if o.data is None:
            ensure_builtin_corpus(tokenize_with_progress, log=log_info)
        result = with_train_progress(
            lambda on_step: lib_pretrain(
                run, resume=o.resume, overwrite=o.overwrite, verify_data=o.verify_data,
                on_step=on_step, log=log_info,
            )
        )  # fmt: skip
        samples = summary_samples(result, o.show_samples) if launch_rank() == 0 else []
        render_train_summary(result, samples, o.json_out)
        after_training(result, o.json_out)


def summary_samples(result: Any, n: int) -> list[str]:
    """A few samples from the run's last checkpoint for the summary (none for n = 0)."""
    from mdmctl.sampling import SampleConfig, sample_from_checkpoint

    if not n or result.checkpoint is None:
        return []
    length = min(64, result.seq_len - 1)
    res = sample_from_checkpoint(
        SampleConfig.create(
            checkpoint=str(result.checkpoint), num_samples=n, length=length, steps=length,
            defaults=frozenset({("steps", length)}),  # an ARM: none
            # Confidence order (mdmctl sample's default): on the Quick start's model, 80% of the
            # generated words are corpus words, against 59% with ancestral sampling
            # (docs/benchmarks.md, "First run").
            sampler="confidence", temperature=1.0, device=result.device,
        )
    )  # fmt: skip
    return [s.text for s in res.samples]


FINETUNE_TRAIN = train_options(
    "steps", "batch_size", *OPTIMIZER, *CADENCE,
    steps={"help": "Optimizer steps (instead of --epochs).", "said": "one epoch's worth"},
    batch_size={"help": "Examples per optimizer step.",
                "said": f"{SFT_BATCH_SIZE} (SMDM: 64 reverse curse, 256 GSM8K)"},
    micro_batch_size={"help": "Examples per forward (gradient accumulation)."},
)  # fmt: skip


@command(
    app,
    "finetune",
    init=from_field(FinetuneConfig, "init", type=Path),
    data=from_field(FinetuneConfig, "data", type=Path),
    out=from_field(FinetuneConfig, "out", type=Path | None, default=None),
    sft_objective=from_field(FinetuneConfig, "objective", "--sft-objective"),
    **SFT,
    **{k: v for k, v in FINETUNE_TRAIN.items() if k not in CADENCE},
    seq_len=from_field(FinetuneConfig, "seq_len"),
    **SFT_DATA,
    **{k: v for k, v in FINETUNE_TRAIN.items() if k in CADENCE},
    **RUN,
)  # fmt: skip
def finetune(o: Options) -> None:
    """Fine-tune a checkpoint on prompt/response data (SFT)."""
    with cli_errors():
        from mdmctl.config import finetune_config
        from mdmctl.train import finetune as lib_finetune

        cfg = finetune_config(
            init=o.init, data=o.data, out=o.out,
            train=o.pick(*FINETUNE_TRAIN, "seed", *EXECUTION),
            objective=o.sft_objective, seq_len=o.seq_len,
            **o.pick(*SFT, *SFT_DATA, "device", "attention", "dtype"),
        )  # fmt: skip
        result = with_train_progress(
            lambda on_step: lib_finetune(
                cfg, resume=o.resume, overwrite=o.overwrite, on_step=on_step, log=log_info
            )
        )
        render_train_summary(result, [], o.json_out)
        after_training(result, o.json_out)


@command(
    app,
    "runs",
    root=argument(Path, Path("runs"), "Folder holding run folders."),
    **json_out("Print the runs as JSON on stdout."),
)
def runs(o: Options) -> None:
    """List training runs: objective, size, steps, best validation loss, newest checkpoint."""
    with cli_errors():
        from rich.table import Table

        from mdmctl.log import results_console
        from mdmctl.run_summary import find_runs

        found = find_runs(o.root)
        if o.json_out:
            print_json([asdict(r) for r in found])
            return
        if not found:
            results_console().print(f"no runs under {o.root}")
            return
        t = Table(title=f"runs under {o.root} (newest first)")
        for col in ("run", "kind", "objective", "size", "N", "steps", "best val (step)",
                    "newest checkpoint", "updated"):  # fmt: skip
            t.add_column(col)
        for r in found:
            steps = f"{r.steps_done:,}" + (f"/{r.steps_total:,}" if r.steps_total else "")
            best = "" if r.best_val_loss is None else f"{r.best_val_loss:.4f} ({r.best_val_step})"
            n = "" if r.n_params_non_embedding is None else f"{r.n_params_non_embedding / 1e6:.2f}M"
            ckpt = Path(r.newest_checkpoint).name if r.newest_checkpoint else "none"
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.updated))
            kind = f"{r.kind} ({r.problem})" if r.problem else r.kind
            t.add_row(r.path, kind, r.objective, r.size, n, steps, best, ckpt, when)
        results_console().print(t)
