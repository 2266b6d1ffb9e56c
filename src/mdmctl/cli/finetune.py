"""``mdmctl finetune``: a thin layer over ``mdmctl.train.finetune``."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from mdmctl.cli.common import (
    AC_HELP,
    OVERWRITE_HELP,
    PARALLEL_HELP,
    RESUME_HELP,
    WARMUP_HELP,
    Attention,
    Parallel,
    app,
    attention_option,
    cli_errors,
    device_option,
    dtype_option,
    finite_option,
    json_option,
    log_info,
    seed_option,
)
from mdmctl.cli.train_report import after_training, render_train_summary, with_train_progress


class SFTObjective(str, Enum):
    auto = "auto"
    conditional = "conditional"
    unconditional = "unconditional"


class SFTFormat(str, Enum):
    auto = "auto"
    prompt_response = "prompt-response"
    messages = "messages"
    gsm8k = "gsm8k"
    gsm8k_equations = "gsm8k-equations"


@app.command()
def finetune(
    init: Path = typer.Option(
        ..., "--init", help="Checkpoint to start from (step dir or run dir)."
    ),
    data: Path = typer.Option(
        ...,
        "--data",
        help="Examples: jsonl (prompt/response, prompt/completion, messages, question/answer) or GSM8K equations .txt.",
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Run directory. Default: runs/<init run>-sft-<data file stem>."
    ),
    sft_objective: SFTObjective = typer.Option(
        SFTObjective.auto,
        "--sft-objective",
        help="MDM: conditional (prompt never masked) or unconditional (whole sequence); auto is "
        "conditional. ARM checkpoints: cross-entropy on the response (unconditional: on the whole "
        "sequence).",
    ),
    cfg_dropout: float = typer.Option(
        0.0,
        "--cfg-dropout",
        help="Standard-CFG baseline: mask the whole prompt with this probability (MDM).",
        callback=finite_option,
    ),
    fmt: SFTFormat = typer.Option(
        SFTFormat.auto,
        "--format",
        help="Data format; auto: gsm8k-equations for a .txt file, else by the first line's fields.",
    ),
    prompt_field: str = typer.Option(
        "prompt", "--prompt-field", help="Field holding the prompt (prompt-response jsonl)."
    ),
    response_field: str | None = typer.Option(
        None,
        "--response-field",
        help="Field holding the response (prompt-response jsonl). Default: 'completion' if "
        "present, else 'response'.",
    ),
    val_fraction: float = typer.Option(
        0.05,
        "--val-fraction",
        help="Share of examples held out for the conditional validation loss.",
        callback=finite_option,
    ),
    epochs: float | None = typer.Option(
        None,
        "--epochs",
        help="Passes over the examples (instead of --steps). Default: 1.",
        callback=finite_option,
    ),
    steps: int | None = typer.Option(
        None,
        "--steps",
        min=1,
        help="Optimizer steps (instead of --epochs). Default: one epoch's worth.",
    ),
    batch_size: int = typer.Option(
        32,
        "--batch-size",
        min=1,
        help="Examples per optimizer step (SMDM: 64 reverse curse, 256 GSM8K).",
    ),
    micro_batch_size: int | None = typer.Option(
        None,
        "--micro-batch-size",
        min=1,
        help="Examples per forward (gradient accumulation). Default: --batch-size (under "
        "torchrun: --batch-size / processes).",
    ),
    lr: float | None = typer.Option(
        None,
        "--lr",
        help="Peak learning rate. Default: 3e-3 for checkpoints of the CPU sizes (tiny, mini, "
        "small), 2e-4 (SMDM's) otherwise.",
        callback=finite_option,
    ),
    warmup_steps: int | None = typer.Option(
        None,
        "--warmup-steps",
        min=0,
        help=WARMUP_HELP,
    ),
    seq_len: int | None = typer.Option(
        None,
        "--seq-len",
        min=8,
        help="Context for fine-tuning (at most the checkpoint's). Default: the checkpoint's.",
    ),
    overlong: str = typer.Option(
        "drop",
        "--overlong",
        help="Examples longer than the context: drop (counted and reported) or error.",
    ),
    batching: str = typer.Option(
        "random",
        "--batching",
        help="random (SMDM; the MDM learns to stop from the eos padding) or sorted (less padding; ARM).",
    ),
    pad_to: str = typer.Option(
        "auto",
        "--pad-to",
        help="Pad rows with eos to N tokens, 'context', or 'batch' (each micro-batch's longest row). auto: context for GSM8K formats (SMDM: 256), else batch.",
    ),
    val_every: int = typer.Option(
        200, "--val-every", min=1, help="Validate every N steps (and at the end)."
    ),
    save_every: int = typer.Option(
        500, "--save-every", min=1, help="Save a checkpoint every N steps (and at the end)."
    ),
    keep_last: int = typer.Option(2, "--keep-last", min=2, help="Checkpoints kept."),
    seed: int = seed_option("Batch order and every masking draw derive from it."),
    device: str = device_option(),
    dtype: str = dtype_option(),
    attention: Attention = attention_option(),
    parallel: Parallel = typer.Option(Parallel.auto, "--parallel", help=PARALLEL_HELP),
    activation_checkpointing: bool = typer.Option(
        False, "--activation-checkpointing", help=AC_HELP
    ),
    resume: str = typer.Option("auto", "--resume", help=RESUME_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    json_out: bool = json_option("Print the summary as JSON on stdout."),
) -> None:
    """Fine-tune a checkpoint on prompt/response data (SFT)."""
    with cli_errors():
        from mdmctl.config import FinetuneConfig, TrainConfig

        train = TrainConfig.from_dict(
            {
                k: v
                for k, v in dict(
                    steps=steps,
                    batch_size=batch_size,
                    micro_batch_size=micro_batch_size,
                    lr=lr,
                    warmup_steps=warmup_steps,
                    val_every=val_every,
                    save_every=save_every,
                    keep_last=keep_last,
                    seed=seed,
                    parallel=parallel.value,
                    activation_checkpointing=activation_checkpointing,
                ).items()
                if v is not None
            }
        )
        run_name = (
            init.parent.parent.name if init.name.startswith("step-") else init.name
        ) or "run"
        fcfg = FinetuneConfig(
            init=str(init),
            data=str(data),
            # The data's name too: two fine-tunes of one model on different data do not collide.
            out=str(out or Path("runs") / f"{run_name}-sft-{data.stem}"),
            train=train,
            objective=sft_objective.value,
            cfg_dropout=cfg_dropout,
            format=fmt.value,
            prompt_field=prompt_field,
            response_field=response_field,
            val_fraction=val_fraction,
            epochs=epochs,
            overlong=overlong,
            batching=batching,
            pad_to=pad_to,
            seq_len=seq_len,
            device=device,
            attention=attention.value,
            dtype=dtype,
        )
        from mdmctl.train import finetune as lib_finetune

        result = with_train_progress(
            lambda on_step: lib_finetune(
                fcfg, resume=resume, overwrite=overwrite, on_step=on_step, log=log_info
            )
        )
        render_train_summary(result, [], json_out)
        after_training(result, json_out)
